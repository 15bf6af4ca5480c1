"""Replays search strategies on a recorded landscape: how many engine launches each needs.

A landscape (``benchmarks/landscape.py``: a CSV of real trials plus its JSON header)
stands in for the engines. Every strategy asks a table lookup instead of
launching: the lookup returns a :class:`vtune._trial.TrialRecord` carrying the
recorded metrics, or a failure record with the recorded failure class for a
configuration that could not start.

* **vtune** runs through vtune's own study code, unchanged:
  ``run_study(settings, trial_fn=<lookup>, export=False, quiet=True)`` with a
  temporary journal storage: its sampler, its validity check and memory-model
  pruning (both before launch: they cost no launch), its enqueued baselines and
  its noise-aware early stopping (the lookup reports the recorded per-step
  results). Re-measurement at the end is off (``remeasure_top_k=0``).
* **vtune-no-prior** (ablation): the same study code with the baselines, the validity
  check and the memory-model pruning switched off (patched out for the run), so every
  sampled configuration is launched: what vtune's prior adds, sampler and early
  stopping being equal.
* **tpe**, **gp**: Optuna's ``TPESampler`` / ``GPSampler`` as shipped, without the
  prior: no baselines, no pruning; a configuration that cannot start costs a launch
  and is told to Optuna as FAIL. (**gp** needs scipy.)
* **random**: the grid's points in a random order (no repeats).
* **grid**: vLLM's ``benchmarks/auto_tune/auto_tune.sh`` order: first find the
  highest memory setting that starts (``gpu_memory_utilization``, on the CPU
  engine ``VLLM_CPU_KVCACHE_SPACE``; from the largest grid value down, each probe
  a launch with the last ``max_num_seqs`` and ``max_num_batched_tokens`` values,
  no load; without a memory dimension in the grid, one probe at the fixed setting), then
  ``for max_num_seqs: for max_num_batched_tokens:`` in the grid's order. Other grid
  dimensions (layout, dtype) are outer loops, one auto_tune run each.
* **preset:<name>**: one launch of one of vtune's baselines (vLLM's defaults, the
  size preset, the memory model's guess).

The search space is the table's grid (one categorical dimension per grid
dimension), so every sampled configuration is a grid point. Configurations built
elsewhere (vtune's baselines) are resolved to grid points: an unset flag takes the
value vLLM uses (the header's ``defaults``), a value between grid values snaps to
the nearest one (log scale), flags that are not grid dimensions are ignored. Every
snap is counted in the output.

**Objective.** What is scored is the table's own value (``--objective`` picks another):
``goodput`` (requests/s meeting the SLOs at the workload's fixed load, ``goodput_rps``)
for a table measured at a fixed load; ``capacity`` (requests/s at the highest load that
met the SLOs, ``capacity_rps``) for a table of capacity searches (``landscape.py
--objective capacity``), or ``capacity_per_gpu`` (that divided by the GPUs the layout
uses). On a capacity table the lookup answers with the recorded search: the record's
``capacity`` is the row's :class:`~vtune.loads._capacity.CapacityResult` with every
probe and its ``result`` the probe at capacity, as a capacity trial returns them; a probe
callback (``on_probe=``, or the ``on_probe`` of ``capacity=`` options) sees the recorded
probes in order and can stop the search there (``stopped_early``, the pruner's cut). The
recorded probe sequence is replayed as it was measured (the study's own start level is
not re-simulated), and a launch costs its engine start plus the probes' wall seconds.
The vtune strategies need the study's ``capacity`` objective; without it they are skipped
with a note.

Noise is real: a point measured several times answers with one of its recorded
repeats, drawn at random; a point measured once answers with its value times a
log-normal factor whose spread is the table's own (the pooled standard deviation
of the log value over the repeated points; on a capacity table the factor scales every
probe's rates, streams and latencies are kept).

Scores (each strategy, each seed; median and interquartile range across seeds):

* launches until the configuration the strategy would pick (its best *observed*
  value so far) is within 5% of the table's best, judged by the table's mean
  values (pruned-before-launch trials cost nothing);
* the picked configuration's mean value, as % of the table's best, after 25% of
  the grid's size in launches;
* launches wasted on configurations that could not start (until the 5% target,
  or in the whole budget if never reached).

Usage::

    python benchmarks/replay.py benchmarks/results/landscape-cpu.csv --seeds 20 \
        --out benchmarks/results/replay-cpu
    python benchmarks/replay.py tests/data/capacity/landscape-capacity.csv --objective capacity_per_gpu

(One script of about 1,000 lines: the table, the lookup, the strategies and the scores share
one reading of a row, and a replay result is read as a whole.)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository root holds vtune and benchmarks
    sys.path.insert(0, str(ROOT))

from benchmarks.landscape import attach_capacity, capacity_result_of, grid_space, row_capacity  # noqa: E402
from vtune._errors import VtuneError  # noqa: E402
from vtune._serve_config import ServeConfig  # noqa: E402
from vtune._space import layout_name  # noqa: E402
from vtune._trial import TrialRecord  # noqa: E402
from vtune.engines import Failure, StartupNumbers  # noqa: E402
from vtune.loads._results import Percentiles, TrialResult  # noqa: E402

SCHEMA_VERSION = 1
TARGET_FRAC = 0.95
EARLY_FRAC = 0.25
#: Spread used when a table has no repeated point to measure its own.
FALLBACK_SIGMA = 0.05
MEMORY_DIMS = ("gpu_memory_utilization", "VLLM_CPU_KVCACHE_SPACE")
DEFAULT_STRATEGIES = ("vtune", "vtune-no-prior", "tpe", "gp", "random", "grid", "preset:vllm-defaults",
                      "preset:size-preset", "preset:memory-model-guess")


def _scalar(text: Any) -> Any:
    """Normalizes a grid value: ``"4"`` -> 4, ``"0.9"`` -> 0.9, ``"true"`` -> True, text stays text."""
    if isinstance(text, bool | int | float):
        return text
    s = str(text).strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    for kind in (int, float):
        try:
            return kind(s)
        except ValueError:
            pass
    return s


def _f(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)  # type: ignore[arg-type]


def point_key(values: dict[str, Any]) -> str:
    """Same as ``landscape.point_id``."""
    return "&".join(f"{k}={v}" for k, v in values.items())


# ------------------------------------------------------------------------- the table
#: What a replay can score: the value of a row (see :meth:`Table.row_value`).
OBJECTIVES = ("goodput", "capacity", "capacity_per_gpu")
#: Unit of each objective.
UNITS = {"goodput": "req/s", "capacity": "req/s", "capacity_per_gpu": "req/s per GPU"}


@dataclass
class Table:
    """A recorded landscape.

    Attributes:
        path: The CSV.
        header: The JSON header.
        dims: Grid dimensions (name -> values, grid order).
        rows: Rows per point id (every repeat).
        defaults: Per dimension, the value vLLM uses when the flag is unset.
        objective: What the replay scores (:data:`OBJECTIVES`): ``goodput`` (``goodput_rps``),
            ``capacity`` (``capacity_rps``, a capacity table's) or ``capacity_per_gpu``
            (``capacity_rps / num_gpus``).
    """

    path: Path
    header: dict[str, Any]
    dims: dict[str, list[Any]]
    rows: dict[str, list[dict[str, str]]]
    defaults: dict[str, Any] = field(default_factory=dict)
    objective: str = "goodput"

    @property
    def is_capacity(self) -> bool:
        """Whether the table was measured by the capacity search (its rows carry every probe)."""
        return self.header.get("objective") == "capacity"

    def row_value(self, row: dict[str, str]) -> float | None:
        """The objective's value of one measurement (None: it failed or measured nothing)."""
        if row["status"] == "failed":
            return None
        if self.objective == "goodput":
            return _f(row.get("goodput_rps"))
        rps = _f(row.get("capacity_rps"))
        if rps is None:
            return None
        return rps / max(1, int(row.get("num_gpus") or 1)) if self.objective == "capacity_per_gpu" else rps

    @property
    def points(self) -> list[dict[str, Any]]:
        """Every grid point, first dimension outermost."""
        names = list(self.dims)
        return [dict(zip(names, c, strict=True)) for c in itertools.product(*self.dims.values())]

    @property
    def point_ids(self) -> list[str]:
        """Ids of :attr:`points`."""
        return [point_key(p) for p in self.points]

    def failed(self, pid: str) -> bool:
        """Whether every recorded measurement of the point failed."""
        return all(r["status"] == "failed" for r in self.rows[pid])

    def values(self, pid: str) -> list[float]:
        """The objective's value of each of the point's measurements that served."""
        return [v for r in self.rows[pid] if (v := self.row_value(r)) is not None]

    def mean_value(self, pid: str) -> float:
        """Mean of the objective over the point's measurements (0 for a point that never served)."""
        vals = self.values(pid)
        return sum(vals) / len(vals) if vals else 0.0

    @property
    def best(self) -> tuple[str, float]:
        """The point with the highest mean value, and that value."""
        pid = max(self.rows, key=self.mean_value)
        return pid, self.mean_value(pid)

    def noise_sigma(self) -> float:
        """Pooled standard deviation of the log value within repeated points (the table's relative noise)."""
        ss, dof = 0.0, 0
        for pid in self.rows:
            vals = [math.log(v) for v in self.values(pid) if v > 0]
            if len(vals) > 1:
                m = sum(vals) / len(vals)
                ss += sum((v - m) ** 2 for v in vals)
                dof += len(vals) - 1
        return math.sqrt(ss / dof) if dof else FALLBACK_SIGMA

    def resolve(self, cfg: ServeConfig) -> tuple[str, list[str]]:
        """The grid point a configuration runs as, and the dimensions that had to be snapped."""
        values: dict[str, Any] = {}
        snapped: list[str] = []
        for name, choices in self.dims.items():
            raw = _config_value(cfg, name)
            if raw is None or raw == "auto":
                raw = self.defaults.get(name)
            value = _scalar(raw) if raw is not None else None
            norm = [_scalar(c) for c in choices]
            if value in norm and not (isinstance(value, bool) != isinstance(norm[norm.index(value)], bool)):
                values[name] = choices[norm.index(value)]
                continue
            snapped.append(name)
            nums = [(c, n) for c, n in zip(choices, norm, strict=True)
                    if isinstance(n, int | float) and not isinstance(n, bool) and n > 0]
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and nums:
                values[name] = min(nums, key=lambda cn: abs(math.log(cn[1]) - math.log(value)))[0]
            else:
                values[name] = choices[0]
        return point_key(values), snapped


def _config_value(cfg: ServeConfig, name: str) -> Any:
    if name == "parallel_layout":
        return layout_name(cfg.tp, cfg.pp, cfg.dp)
    if name.isupper():
        return cfg.env.get(name)
    if name.startswith("--"):
        args = list(cfg.extra_args)
        for i, a in enumerate(args):
            if a == name:
                return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
            if a == "--no-" + name[2:]:
                return False
        return None
    return getattr(cfg, name, None)


def load_table(csv_path: str | Path, objective: str | None = None) -> Table:
    """Reads a landscape (CSV and its JSON header).

    Args:
        csv_path: The CSV (its ``.json`` header beside it).
        objective: What to score (:data:`OBJECTIVES`); None: the table's own (``capacity`` for a
            capacity table, else ``goodput``).

    Raises:
        VtuneError: Missing files, an unknown layout version, points missing from the CSV, or a
            capacity objective asked of a goodput table.
    """
    path = Path(csv_path)
    header_path = path.with_suffix(".json")
    if not path.is_file() or not header_path.is_file():
        raise VtuneError(f"{path}: need the CSV and its header {header_path.name}; record one with landscape.py")
    header = json.loads(header_path.read_text())
    if header.get("schema_version") != 1:
        raise VtuneError(f"{header_path}: schema_version {header.get('schema_version')!r} is not supported (1)")
    dims = {k: list(v) for k, v in header["grid"]["dimensions"].items()}
    with path.open(newline="") as f:
        all_rows = list(csv.DictReader(f))
    rows: dict[str, list[dict[str, str]]] = {}
    for r in all_rows:
        rows.setdefault(r["point_id"], []).append(r)
    own = header.get("objective") or "goodput"
    objective = objective or own
    if objective not in OBJECTIVES:
        raise VtuneError(f"--objective {objective}: use one of {', '.join(OBJECTIVES)}")
    if objective.startswith("capacity") and own != "capacity":
        raise VtuneError(f"--objective {objective}: {path.name} is a {own} table (no capacity search); record one "
                         "with landscape.py --objective capacity, or replay it with --objective goodput")
    table = Table(path=path, header=header, dims=dims, rows=rows, defaults=dict(header.get("defaults") or {}),
                  objective=objective)
    missing = [p for p in table.point_ids if p not in rows]
    if missing:
        raise VtuneError(f"{path}: {len(missing)} grid point(s) not measured yet (e.g. {missing[0]}); "
                         "finish the landscape (re-run landscape.py) before replaying it")
    return table


# ------------------------------------------------------------------------- the lookup
@dataclass
class Event:
    """One trial a strategy ran.

    Attributes:
        pid: The grid point.
        launched: Whether an engine was launched (False: pruned before launch).
        observed: The value the strategy saw (None: failed, a probe, or stopped early).
        failed: The engine did not start (or died).
        device_s: Engine seconds the launch cost (start plus the load it ran).
        snapped: Dimensions snapped to the grid for this configuration.
        label: A baseline's name, ``probe``, or empty.
    """

    pid: str
    launched: bool = True
    observed: float | None = None
    failed: bool = False
    device_s: float = 0.0
    snapped: list[str] = field(default_factory=list)
    label: str = ""


def _pct(row: dict[str, str], metric: str) -> Percentiles:
    def g(s: str) -> float:
        v = _f(row.get(f"{metric}_{s}_ms"))
        return math.nan if v is None else v

    return Percentiles(p50=g("p50"), p90=g("p90"), p99=g("p99"), mean=g("mean"))


def row_result(row: dict[str, str], factor: float = 1.0, step: int | None = None) -> TrialResult:
    """A :class:`TrialResult` from a recorded row (rates times ``factor``; ``step``: the cumulative result then)."""
    rates = {"goodput": _f(row["goodput_rps"]) or 0.0, "tok": _f(row["output_tok_s"]) or 0.0,
             "rps": _f(row["requests_per_s"]) or 0.0}
    steps = int(row.get("steps") or 0) or 1
    if step is not None:
        for key, col in (("goodput", "step_goodput_rps"), ("tok", "step_output_tok_s"), ("rps", "step_requests_per_s")):
            series = json.loads(row.get(col) or "[]")
            if step < len(series) and series[step] is not None:
                rates[key] = float(series[step])
    measured = (_f(row.get("measured_s")) or 0.0) * ((step + 1) / steps if step is not None else 1.0)
    return TrialResult(
        output_tokens_per_second=rates["tok"] * factor, requests_per_second=rates["rps"] * factor,
        goodput_requests_per_second=rates["goodput"] * factor,
        ttft_ms=_pct(row, "ttft"), itl_ms=_pct(row, "itl"), tpot_ms=_pct(row, "tpot"), e2e_latency_ms=_pct(row, "e2e"),
        successful_requests=int(row.get("successful_requests") or 0),
        errored_requests=int(row.get("errored_requests") or 0),
        incomplete_requests=int(row.get("incomplete_requests") or 0),
        duration_s=measured, slo_attainment=_f(row.get("slo_attainment")) or 0.0,
        slo_met={k: bool(v) for k, v in json.loads(row.get("slo_met") or "{}").items()},
        slo_observed_ms={k: (None if v is None else float(v))
                         for k, v in json.loads(row.get("slo_observed_ms") or "{}").items()},
        steps=(step + 1) if step is not None else steps,
    )


class Lookup:
    """The replay's trial function: same signature and result as :func:`vtune._trial.run_trial`.

    Args:
        table: The landscape.
        rng: Draws the repeats and the noise (seeded: a replay is deterministic).
        budget: Launches allowed; beyond it :class:`BudgetSpent` is raised.
    """

    def __init__(self, table: Table, rng: random.Random, budget: int | None = None) -> None:
        self.table = table
        self.rng = rng
        self.sigma = table.noise_sigma()
        self.budget = budget
        self.events: list[Event] = []

    @property
    def launches(self) -> int:
        """Launches so far."""
        return sum(1 for e in self.events if e.launched)

    def measure(self, pid: str, *, on_step: Callable[[int, TrialResult], bool] | None = None,
                probe: bool = False, snapped: Sequence[str] = (), label: str = "",
                cfg: ServeConfig | None = None, run_dir: str = "",
                on_probe: Callable[[Any], bool] | None = None) -> TrialRecord:
        """One launch of a grid point (``probe``: start only, no load).

        On a capacity table the record carries the recorded capacity search (``capacity``, every
        probe) and its result at capacity (``result``); ``on_probe`` sees the recorded probes in
        order and, returning False, stops the search there (``stopped_early``, as a study's pruner).
        """
        if self.budget is not None and self.launches >= self.budget:
            raise BudgetSpent()
        rows = self.table.rows[pid]
        row = rows[self.rng.randrange(len(rows))] if len(rows) > 1 else rows[0]
        factor = 1.0 if len(rows) > 1 else math.exp(self.rng.gauss(0.0, self.sigma))
        flags = cfg.to_flags_line() if cfg else row["flags"]
        rec = TrialRecord(config=cfg.to_dict() if cfg else {"point": pid}, flags_line=flags, status="failed",
                          run_dir=run_dir or f"replay:{pid}", log_path="")
        start_s = _f(row.get("engine_start_s")) or 0.0
        rec.engine_start_s = start_s
        if row.get("startup"):
            rec.startup = StartupNumbers.from_dict(json.loads(row["startup"]))
        event = Event(pid=pid, snapped=list(snapped), label="probe" if probe else label)
        self.events.append(event)
        if row["status"] == "failed":
            kind = row.get("failure_kind") or "crash"
            rec.failure = Failure(kind=kind, message=f"(replayed) {row.get('failure_message', '')}",
                                  exit_code=int(row["exit_code"]) if row.get("exit_code") else None)
            rec.total_s = event.device_s = start_s
            event.failed = True
            return rec
        if probe:
            rec.status, rec.total_s = "ok", start_s
            event.device_s = start_s
            return rec
        if self.table.is_capacity:
            return self._measure_capacity(row, factor, rec, event, on_probe)
        steps = int(row.get("steps") or 0) or 1
        load_s = _f(row.get("load_s")) or 0.0
        stopped_at = None
        for i in range(steps):
            cumulative = row_result(row, factor, step=i)
            rec.step_results.append(cumulative)
            if on_step is not None and not on_step(i, cumulative) and i < steps - 1:
                stopped_at = i
                break
        if stopped_at is None:
            rec.result, rec.status = row_result(row, factor), "ok"
            event.observed = self.table.row_value(row)
            if event.observed is not None:
                event.observed *= factor
            rec.load_s = load_s
        else:
            rec.result, rec.status = rec.step_results[-1], "stopped_early"
            rec.load_s = load_s * (stopped_at + 1) / steps
        rec.total_s = event.device_s = start_s + (rec.load_s or 0.0)
        return rec

    def _measure_capacity(self, row: dict[str, str], factor: float, rec: TrialRecord, event: Event,
                          on_probe: Callable[[Any], bool] | None) -> TrialRecord:
        """The recorded capacity search of one measurement, its rates times ``factor``."""
        cap = row_capacity(row)
        if cap is None:
            raise VtuneError(f"{self.table.path.name}: row {row['point_id']} repeat {row['repeat']} has no capacity "
                             "result although the table is a capacity table; re-measure it")
        cap = scale_capacity(cap, factor)
        stopped = None
        if on_probe is not None:
            for i, probe in enumerate(cap.probes):
                if not on_probe(probe) and i < len(cap.probes) - 1:
                    stopped = i
                    break
        if stopped is not None:
            cap = truncate_capacity(cap, stopped + 1)
        attach_capacity(rec, cap)
        rec.result = capacity_result_of(cap)
        rec.status = "ok" if stopped is None else "stopped_early"
        rec.load_s = sum(q.wall_s or (q.seconds + cap.warmup_s) for q in cap.probes)
        if stopped is None:
            if self.table.objective == "goodput":  # the goodput at capacity
                event.observed = rec.result.goodput_requests_per_second if rec.result is not None else 0.0
            else:
                per = max(1, int(row.get("num_gpus") or 1)) if self.table.objective == "capacity_per_gpu" else 1
                event.observed = float(cap.requests_per_second) / per
        rec.total_s = event.device_s = (rec.engine_start_s or 0.0) + rec.load_s
        return rec

    def __call__(self, cfg: ServeConfig, workload: Any, run_dir: Path, **kw: Any) -> TrialRecord:
        """The ``trial_fn`` of :func:`vtune.study._study.run_study`.

        On a capacity table a probe callback is taken from ``on_probe=`` or from the
        ``capacity=`` options' ``on_probe`` attribute, whichever the study passes.
        """
        pid, snapped = self.table.resolve(cfg)
        on_probe = kw.get("on_probe") or getattr(kw.get("capacity"), "on_probe", None)
        return self.measure(pid, on_step=kw.get("on_step"), snapped=snapped, cfg=cfg, run_dir=str(run_dir),
                            on_probe=on_probe)


def scale_capacity(cap: Any, factor: float) -> Any:
    """A capacity result with every rate (its own and each probe's) times ``factor``; streams and latencies kept."""
    import dataclasses

    if factor == 1.0:
        return cap

    def rates(x: Any) -> dict[str, float]:
        return {k: getattr(x, k) * factor for k in ("requests_per_second", "output_tokens_per_second",
                                                     "goodput_requests_per_second")}

    return dataclasses.replace(cap, probes=[dataclasses.replace(q, **rates(q)) for q in cap.probes], **rates(cap))


def truncate_capacity(cap: Any, n: int) -> Any:
    """The search as it stood after its first ``n`` probes (``bounded_by`` ``stopped``)."""
    import dataclasses

    probes = list(cap.probes[:n])
    passing = [q for q in probes if q.slo_met]
    at = max(passing, key=lambda q: q.streams) if passing else None
    nan = Percentiles(math.nan, math.nan, math.nan, math.nan)
    return dataclasses.replace(
        cap, probes=probes, bounded_by="stopped", capacity_streams=at.streams if at else 0,
        requests_per_second=at.requests_per_second if at else 0.0,
        output_tokens_per_second=at.output_tokens_per_second if at else 0.0,
        goodput_requests_per_second=at.goodput_requests_per_second if at else 0.0,
        ttft_ms=at.ttft_ms if at else nan, itl_ms=at.itl_ms if at else nan, tpot_ms=at.tpot_ms if at else nan,
        e2e_latency_ms=at.e2e_latency_ms if at else nan, slo_attainment=at.slo_attainment if at else 0.0,
        wall_s=sum(q.wall_s for q in probes),
    )


class BudgetSpent(Exception):
    """The launch budget is spent."""


# ------------------------------------------------------------------------- strategies
def replay_settings(table: Table, work_dir: Path, seed: int, objective: str | None = None) -> Any:
    """vtune's study settings for a replay of ``table`` (the model is its recorded ``config.json``).

    Args:
        table: The landscape.
        work_dir: A scratch folder.
        seed: The sampler's seed.
        objective: The study's objective (default: the table's :attr:`Table.objective`).

    Raises:
        VtuneError: The installed vtune has no such objective (``capacity`` before the study's
            capacity objective is in).
    """
    from vtune._memory import Gpu
    from vtune._objectives import parse_objectives
    from vtune._target import Target
    from vtune._workload import Workload
    from vtune.study._settings import StudySettings

    h = table.header
    model_dir = work_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(h["model"]["config_json"]))
    hw = h["hardware"]
    gpu = Gpu(hw["gpu"], float(hw["gpu_memory_gib"])) if hw.get("gpu") else None
    target = Target(device=hw["device"], gpus=tuple(hw.get("gpus") or ()), gpu=gpu,
                    gpu_names=tuple(hw.get("gpu_names") or ()), nvlink=hw.get("nvlink"),
                    cpu_cores=tuple(hw.get("cpu_cores") or ()))
    workload = Workload.from_dict(h["workload"], source=h.get("workload_source", "<table>"))
    base = ServeConfig.from_dict(h["base"]).replace(model=str(model_dir))
    return StudySettings(
        name=f"replay-{seed}", model=str(model_dir), workload=workload, space=grid_space(table.dims), base=base,
        objectives=parse_objectives(objective or table.objective), target=target,
        duration_s=float(h["workload"]["duration_s"]), remeasure_top_k=0, seed=seed,
        studies_dir=work_dir / "studies", configs_dir=work_dir / "configs",
    )


def run_vtune(table: Table, seed: int, budget: int, work_dir: Path) -> Lookup:
    """vtune as shipped, through :func:`vtune.study._study.run_study`, until ``budget`` launches."""
    from vtune.study._study import run_study

    settings = replay_settings(table, work_dir, seed)
    lookup = Lookup(table, random.Random(f"{seed}:vtune"))
    url = f"journal:{work_dir / 'study.log'}"
    n = budget
    while True:
        run_study(settings, storage_url=url, n_trials=n, quiet=True, trial_fn=lookup, export=False,
                  max_concurrent_trials=1)
        short = budget - lookup.launches
        if short <= 0 or n >= 10 * budget:
            break
        n += short  # trials pruned before launch count in n_trials: add what is missing
    return lookup


@contextlib.contextmanager
def without_prior() -> Iterator[None]:
    """vtune's study code with its prior switched off: no baselines, no validity or memory check.

    An ablation, not vtune as shipped: it patches three names in ``vtune.study._study`` for the
    duration (the study code has no switch for them), so that every sampled configuration
    is launched, as a plain optimizer would.
    """
    import dataclasses

    import vtune.study._runner as runner_mod
    import vtune.study._study as study_mod

    saved = {k: getattr(runner_mod, k) for k in ("precheck", "estimate_memory")}
    saved_enqueue = study_mod.enqueue_baselines
    real_estimate = saved["estimate_memory"]

    def fits(*a: Any, **kw: Any) -> Any:
        return dataclasses.replace(real_estimate(*a, **kw), fits=True, reason=None)

    study_mod.enqueue_baselines = lambda *a, **kw: 0  # type: ignore[assignment]
    runner_mod.precheck = lambda *a, **kw: []  # type: ignore[assignment]
    runner_mod.estimate_memory = fits  # type: ignore[assignment]
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(runner_mod, k, v)
        study_mod.enqueue_baselines = saved_enqueue  # type: ignore[assignment]


def run_optuna(table: Table, seed: int, budget: int, sampler: Any, name: str) -> Lookup:
    """A plain Optuna loop over the grid's space: no baselines, no pruning, failures told as FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lookup = Lookup(table, random.Random(f"{seed}:{name}"), budget)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = grid_space(table.dims)
    while lookup.launches < budget:
        trial = study.ask()
        values = {d.name: trial.suggest_categorical(d.name, list(d.choices or [])) for d in space.dimensions}
        rec = lookup.measure(point_key(values))
        observed = lookup.events[-1].observed
        if rec.result is None or observed is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, observed)
    return lookup


def run_random(table: Table, seed: int, budget: int) -> Lookup:
    """The grid's points in a random order, each once."""
    rng = random.Random(f"{seed}:random-order")
    order = table.point_ids
    rng.shuffle(order)
    lookup = Lookup(table, random.Random(f"{seed}:random"), budget)
    for pid in order[:budget]:
        lookup.measure(pid)
    return lookup


def autotune_plan(dims: dict[str, list[Any]]) -> tuple[str | None, str | None, str | None, list[str]]:
    """The memory, max_num_seqs and max_num_batched_tokens dimensions, and the other (outer) ones."""
    mem = next((d for d in MEMORY_DIMS if d in dims), None)
    seqs = "max_num_seqs" if "max_num_seqs" in dims else None
    tokens = "max_num_batched_tokens" if "max_num_batched_tokens" in dims else None
    others = [d for d in dims if d not in (mem, seqs, tokens)]
    return mem, seqs, tokens, others


def run_grid(table: Table, seed: int, budget: int | None = None) -> Lookup:
    """vLLM auto_tune.sh's order (see the module docstring)."""
    lookup = Lookup(table, random.Random(f"{seed}:grid"), budget)
    dims = table.dims
    mem, seqs, tokens, others = autotune_plan(dims)
    order = list(dims)

    def pid(values: dict[str, Any]) -> str:
        return point_key({k: values[k] for k in order})

    try:
        for combo in itertools.product(*(dims[o] for o in others)):
            fixed = dict(zip(others, combo, strict=True))
            # auto_tune probes from gpu-memory-utilization 0.98 down; without a memory dimension in the
            # grid the memory setting is fixed and the probe is one start at it.
            found = None
            levels: list[Any] = sorted(dims[mem], key=lambda v: -float(v)) if mem else [None]
            for value in levels:
                probe = dict(fixed) if mem is None else {**fixed, mem: value}
                if seqs:
                    probe[seqs] = dims[seqs][-1]
                if tokens:
                    probe[tokens] = dims[tokens][-1]
                if lookup.measure(pid(probe), probe=True).failure is None:
                    found = (value,)
                    break
            if found is None:
                continue  # auto_tune gives up on this run: nothing starts
            if mem is not None:
                fixed[mem] = found[0]
            for s in dims[seqs] if seqs else [None]:
                for t in dims[tokens] if tokens else [None]:
                    values = dict(fixed)
                    if seqs:
                        values[seqs] = s
                    if tokens:
                        values[tokens] = t
                    lookup.measure(pid(values))
    except BudgetSpent:
        pass
    return lookup


def run_preset(table: Table, seed: int, name: str, work_dir: Path) -> Lookup:
    """One launch of one of vtune's enqueued baselines."""
    from vtune._model_shape import load_model_shape
    from vtune.study._baselines import baseline_configs

    settings = replay_settings(table, work_dir, seed, objective="goodput")  # the baselines do not depend on it
    configs = dict(baseline_configs(settings, load_model_shape(settings.model)))
    if name not in configs:
        raise VtuneError(f"preset:{name}: vtune has no such baseline here (it has {', '.join(configs)})")
    lookup = Lookup(table, random.Random(f"{seed}:preset:{name}"))
    pid, snapped = table.resolve(configs[name])
    lookup.measure(pid, snapped=snapped, label=name, cfg=configs[name])
    return lookup


def run_strategy(table: Table, name: str, seed: int, budget: int) -> Lookup:
    """Runs one strategy for one seed.

    Raises:
        VtuneError: An unknown strategy.
    """
    import optuna

    with tempfile.TemporaryDirectory(prefix="vtune-replay-") as tmp:
        work = Path(tmp)
        if name == "vtune":
            return run_vtune(table, seed, budget, work)
        if name == "vtune-no-prior":
            with without_prior():
                return run_vtune(table, seed, budget, work)
        if name == "tpe":
            return run_optuna(table, seed, budget, optuna.samplers.TPESampler(seed=seed), name)
        if name == "gp":
            return run_optuna(table, seed, budget, optuna.samplers.GPSampler(seed=seed), name)
        if name == "random":
            return run_random(table, seed, budget)
        if name == "grid":
            return run_grid(table, seed, budget)
        if name.startswith("preset:"):
            return run_preset(table, seed, name.split(":", 1)[1], work)
    raise VtuneError(f"unknown strategy {name!r}; use {', '.join(DEFAULT_STRATEGIES)}")


# ------------------------------------------------------------------------- scores
@dataclass
class RunScore:
    """One strategy's run for one seed.

    Attributes:
        launches_to_target: Launches until the picked configuration is within the target (None: never).
        launches_to_any_target: Launches until any launched configuration is within the target, picked
            or not (an oracle's view, blind to noise; None: never).
        best_at_early_pct: The picked configuration's mean value as % of the table's best after the
            early launch budget (0: nothing measured by then).
        failed_launches: Launches of configurations that could not start, until the target (or in all).
        device_s_to_target: Engine seconds until the target (or in all).
        launches: Launches in all.
        final_pct: The picked configuration's mean value as % of the table's best at the end.
        snapped: Lookups that had to snap a dimension to the grid.
        picked: The configuration picked at the end.
    """

    launches_to_target: int | None
    launches_to_any_target: int | None
    best_at_early_pct: float
    failed_launches: int
    device_s_to_target: float
    launches: int
    final_pct: float
    snapped: int
    picked: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


def score(events: Iterable[Event], true_value: Callable[[str], float], best: float, early_launches: int,
          target_frac: float = TARGET_FRAC) -> RunScore:
    """Scores a sequence of trials (see the module docstring for the definitions)."""
    launches = failed = 0
    device_s = 0.0
    incumbent: tuple[float, str] | None = None
    reached: int | None = None
    any_reached: int | None = None
    at_early: float | None = None
    failed_at_target = device_at_target = None
    snapped = 0
    for e in events:
        snapped += bool(e.snapped)
        if not e.launched:
            continue
        launches += 1
        failed += e.failed
        device_s += e.device_s
        if any_reached is None and not e.failed and e.label != "probe" and true_value(e.pid) >= target_frac * best:
            any_reached = launches
        if e.observed is not None and (incumbent is None or e.observed > incumbent[0]):
            incumbent = (e.observed, e.pid)
        pct = 100.0 * true_value(incumbent[1]) / best if incumbent and best > 0 else 0.0
        if launches == early_launches:
            at_early = pct
        if reached is None and incumbent is not None and true_value(incumbent[1]) >= target_frac * best:
            reached, failed_at_target, device_at_target = launches, failed, device_s
    final = 100.0 * true_value(incumbent[1]) / best if incumbent and best > 0 else 0.0
    if at_early is None:  # fewer launches than the early budget: what it had at the end
        at_early = final
    return RunScore(
        launches_to_target=reached, launches_to_any_target=any_reached, best_at_early_pct=at_early,
        failed_launches=failed if failed_at_target is None else failed_at_target,
        device_s_to_target=device_s if device_at_target is None else device_at_target,
        launches=launches, final_pct=final, snapped=snapped, picked=incumbent[1] if incumbent else None,
    )


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile that keeps infinities (a never-reached target) as infinity."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or xs[lo] == xs[hi]:
        return xs[lo]
    if math.isinf(xs[hi]):
        return math.inf if pos > lo else xs[lo]
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize_scores(scores: list[RunScore]) -> dict[str, Any]:
    """Median and quartiles across seeds of each score."""
    def stats(vals: list[float]) -> dict[str, float]:
        return {"median": quantile(vals, 0.5), "q25": quantile(vals, 0.25), "q75": quantile(vals, 0.75)}

    return {
        "seeds": len(scores),
        "reached": sum(s.launches_to_target is not None for s in scores),
        "launches_to_target": stats([math.inf if s.launches_to_target is None else s.launches_to_target
                                     for s in scores]),
        "launches_to_any_target": stats([math.inf if s.launches_to_any_target is None else s.launches_to_any_target
                                         for s in scores]),
        "best_at_early_pct": stats([s.best_at_early_pct for s in scores]),
        "failed_launches": stats([float(s.failed_launches) for s in scores]),
        "device_s_to_target": stats([s.device_s_to_target for s in scores]),
        "final_pct": stats([s.final_pct for s in scores]),
        "launches": stats([float(s.launches) for s in scores]),
        "snapped_lookups": sum(s.snapped for s in scores),
    }


def _fmt(st: dict[str, float], digits: int = 0, unit: str = "") -> str:
    def one(v: float) -> str:
        if math.isinf(v):
            return "never"
        return f"{v:.{digits}f}{unit}"

    return f"{one(st['median'])} [{one(st['q25'])}-{one(st['q75'])}]"


# ------------------------------------------------------------------------- main
def has_objective(name: str) -> bool:
    """Whether this vtune's study knows the objective ``name`` (``capacity`` needs the study's capacity objective)."""
    from vtune._objectives import parse_objectives

    try:
        parse_objectives(name)
    except VtuneError:
        return False
    return True


def table_summary(table: Table, target_frac: float = TARGET_FRAC) -> dict[str, Any]:
    """The landscape's numbers: best point, failures, spread of repeats (of the objective's values)."""
    best_pid, best = table.best
    spreads = {}
    for pid in table.rows:
        vals = table.values(pid)
        if len(vals) > 1:
            m = sum(vals) / len(vals)
            spreads[pid] = {"values": vals, "mean": m, "min_max_pct_of_mean": [100 * min(vals) / m,
                                                                               100 * max(vals) / m]}
    near = [p for p in table.point_ids if table.mean_value(p) >= target_frac * best]
    out = {
        "points": len(table.point_ids), "measurements": sum(len(r) for r in table.rows.values()),
        "failed_points": [p for p in table.point_ids if table.failed(p)],
        "failure_kinds": sorted({r["failure_kind"] for rows in table.rows.values() for r in rows
                                 if r["failure_kind"]}),
        "objective": table.objective, "unit": UNITS[table.objective],
        "best_point": best_pid, "best_value": best, "points_within_target": near,
        "noise_sigma_log": table.noise_sigma(), "repeats": spreads,
    }
    if table.objective == "goodput":
        out["best_goodput_rps"] = best  # the name before capacity tables
    if table.is_capacity:
        probes = [int(r.get("probes") or 0) for rows in table.rows.values() for r in rows if r["status"] != "failed"]
        out["probes_per_search"] = {"median": quantile([float(n) for n in probes], 0.5),
                                    "min": min(probes, default=0), "max": max(probes, default=0)}
    return out


def render_markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown report."""
    t = result["table"]
    objective = t.get("objective", "goodput")
    best = t.get("best_value", t.get("best_goodput_rps"))
    what = {"goodput": "goodput", "capacity": "capacity (requests/s within the SLOs at the highest passing load)",
            "capacity_per_gpu": "capacity per GPU"}[objective]
    probes = t.get("probes_per_search")
    lines = [
        f"# Search efficiency on `{result['table_path']}`", "",
        f"Command: `{result['command']}`", "",
        f"Objective: {what}.", "",
        f"Landscape: {t['points']} grid points ({len(t['failed_points'])} cannot start: "
        f"{', '.join(t['failure_kinds']) or 'none'}), {t['measurements']} measurements; best "
        f"`{t['best_point']}` at {best:.2f} {t.get('unit', 'req/s')} {objective}; {len(t['points_within_target'])} "
        f"point(s) within {100 - 100 * result['target_frac']:.0f}% of it; noise (pooled sd of log {objective} over "
        f"repeated points) {t['noise_sigma_log']:.3f}."
        + (f" Capacity searches: {probes['median']:.0f} probes each in the median ({probes['min']}-{probes['max']})."
           if probes else ""), "",
        f"{result['seeds']} seeds; budget {result['budget']} launches; early budget {result['early_launches']} "
        f"launches (25% of the grid). Median [IQR] across seeds.", "",
        f"| strategy | launches to {100 * result['target_frac']:.0f}% of best | reached | "
        f"best after {result['early_launches']} launches (% of best) | failed launches (to target) | "
        "engine-minutes to target | picked at end (% of best) | launches until one within target was run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, agg in result["strategies"].items():
        dev = {k: v / 60 for k, v in agg["device_s_to_target"].items()}
        lines.append(f"| {name} | {_fmt(agg['launches_to_target'])} | {agg['reached']}/{agg['seeds']} | "
                     f"{_fmt(agg['best_at_early_pct'])} | {_fmt(agg['failed_launches'])} | {_fmt(dev, 1)} | "
                     f"{_fmt(agg['final_pct'])} | {_fmt(agg['launches_to_any_target'])} |")
    lines += ["", "Definitions: see the docstring of `benchmarks/replay.py`. \"never\": the target was not reached "
              "within the budget in at least that quantile of seeds."]
    if any(agg["snapped_lookups"] for agg in result["strategies"].values()):
        snaps = ", ".join(f"{n}: {a['snapped_lookups']}" for n, a in result["strategies"].items()
                          if a["snapped_lookups"])
        lines += ["", f"Configurations resolved to the nearest grid point (lookups, all seeds): {snaps}."]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", help="the landscape CSV (its .json header beside it)")
    p.add_argument("--seeds", type=int, default=20, help="seeds per strategy (default 20)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated strategies")
    p.add_argument("--budget", type=int, help="launches per run (default: twice the grid's points)")
    p.add_argument("--target-frac", type=float, default=TARGET_FRAC,
                   help=f"the target: this fraction of the table's best mean value (default {TARGET_FRAC})")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="what to score: goodput, capacity or capacity_per_gpu (default: the table's own; the "
                        "capacity ones need a capacity table)")
    p.add_argument("--out", help="write OUT.md and OUT.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """Replays every strategy over every seed, prints the table, writes the files."""
    args = _parser().parse_args(argv)
    try:
        table = load_table(args.table, args.objective)
    except VtuneError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    n_points = len(table.point_ids)
    budget = args.budget or 2 * n_points
    early = max(1, math.ceil(EARLY_FRAC * n_points))
    _best_pid, best = table.best
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if "gp" in strategies:
        try:
            import scipy  # noqa: F401
        except ImportError:
            print("gp: scipy is not installed; skipping Optuna's GPSampler", file=sys.stderr)
            strategies.remove("gp")
    study_ones = [s for s in strategies if s in ("vtune", "vtune-no-prior")]
    if study_ones and not has_objective(table.objective):
        print(f"{', '.join(study_ones)}: this vtune's study has no {table.objective} objective; skipped",
              file=sys.stderr)
        strategies = [s for s in strategies if s not in study_ones]
    results: dict[str, Any] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    index = {pid: i for i, pid in enumerate(table.point_ids)}
    for name in strategies:
        t0 = time.monotonic()
        scores = []
        for seed in seeds:
            lookup = run_strategy(table, name, seed, budget)
            s = score(lookup.events, table.mean_value, best, early, args.target_frac)
            scores.append(s)
            raw.setdefault(name, []).append({"seed": seed, **s.to_dict(), "sequence": " ".join(
                (f"{e.label}:" if e.label else "") + str(index[e.pid]) + ("!" if e.failed else "")
                + ("" if e.observed is not None or e.failed or e.label else "~") for e in lookup.events)})
        results[name] = summarize_scores(scores)
        print(f"{name}: {_fmt(results[name]['launches_to_target'])} launches to target "
              f"({results[name]['reached']}/{len(seeds)} reached) in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    out = {
        "schema_version": SCHEMA_VERSION,
        "description": "vtune replay: search strategies on a recorded landscape; fields described in 'fields'",
        "fields": {
            "table": "the landscape's numbers (best point, failed points, spread of repeated points)",
            "strategies": "per strategy: median/q25/q75 across seeds of launches_to_target (null: never), "
                          "launches_to_any_target (a configuration within the target was launched, picked or not), "
                          "best_at_early_pct, failed_launches, device_s_to_target, final_pct, launches; "
                          "reached: seeds that reached the target; snapped_lookups: lookups resolved to a grid point",
            "runs": "per strategy and seed: the scores and every launch in order as 'sequence': the point's index "
                    "in point_ids, '!' could not start, '~' stopped early, 'probe:' a start without load, "
                    "'<preset>:' a preset",
            "point_ids": "the grid's points in grid order (first dimension outermost)",
            "target_frac": "the target: this fraction of the table's best mean value (table.objective: goodput, "
                           "capacity or capacity_per_gpu, in table.unit)",
            "early_launches": "launches after which best_at_early_pct is taken (25% of the grid's points)",
            "budget": "launches per run",
        },
        "command": shlex.join(["python", "benchmarks/replay.py", *(argv if argv is not None else sys.argv[1:])]),
        "table_path": str(args.table), "table_header_command": table.header.get("command"),
        "table": table_summary(table, args.target_frac), "seeds": len(seeds), "budget": budget,
        "early_launches": early, "target_frac": args.target_frac, "strategies": results,
        "point_ids": table.point_ids, "runs": raw,
    }
    md = render_markdown(out)
    print(md)
    if args.out:
        base = Path(args.out)
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".md").write_text(md)
        from vtune.study._export import json_safe

        base.with_suffix(".json").write_text(json.dumps(json_safe(out), indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
