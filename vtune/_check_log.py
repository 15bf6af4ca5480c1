"""The memory model against one real engine start: ``vtune estimate --check-log server.log``.

:func:`check_startup_log` parses a ``vllm serve`` log with the startup-log parser
(:func:`vtune.engines.parse_startup_log`), rebuilds the configuration from its
``non-default args: {...}`` line, estimates that configuration for the log's vLLM release
on the log's GPU (its total memory), and lines up, term by term, what the engine logged
and what the model predicts (:class:`LogCheck`, :func:`format_log_check`).

What the logs of different releases print is made comparable first (:func:`observed_terms`):
from 0.27 the summary gives weights + non-torch as one "consumed" amount (non-torch is
consumed - weights) and its "peak activation" includes the CUDA-graph estimate taken out of
the KV cache (0.18 too); that estimate is subtracted again so that the activation is the
profile run's peak on every release.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError
from vtune._memory import GPU_CATALOG, Calibration, Gpu, MemoryEstimate, estimate_memory
from vtune._model_shape import ModelShape
from vtune._serve_config import ServeConfig
from vtune._vllm_versions import VersionRules, parse_version, rules_for
from vtune.engines import StartupNumbers, parse_startup_log

__all__ = [
    "TERMS",
    "LogCheck",
    "TermRow",
    "check_startup_log",
    "config_from_log",
    "format_log_check",
    "observed_terms",
]

#: (key, label, unit) of the compared terms, in the order vLLM computes them.
TERMS: tuple[tuple[str, str, str], ...] = (
    ("weights_gib", "weights", "GiB"),
    ("activation_peak_gib", "activation peak", "GiB"),
    ("non_torch_gib", "non-torch", "GiB"),
    ("cudagraph_reserved_gib", "CUDA graphs reserved", "GiB"),
    ("cudagraph_gib", "CUDA graphs (captured)", "GiB"),
    ("kv_cache_gib", "KV cache", "GiB"),
    ("kv_cache_tokens", "KV cache tokens", "tokens"),
    ("max_concurrency", "max concurrency", "x"),
)

_ARGS_RE = re.compile(r"non-default args: (\{.*\})\s*$")
_CONFIG_FIELDS = {f.name for f in fields(ServeConfig)} - {"model", "extra_args", "env", "served_model_name"}


@dataclass(frozen=True)
class TermRow:
    """One term: logged, estimated and their difference (estimated / logged - 1, in %)."""

    key: str
    label: str
    unit: str
    logged: float | None
    estimated: float | None

    @property
    def diff_pct(self) -> float | None:
        """100 x (estimated / logged - 1); None when either is missing or the logged value is 0."""
        if self.logged is None or self.estimated is None or abs(self.logged) < 1e-9:
            return None
        return 100.0 * (self.estimated / self.logged - 1.0)


@dataclass
class LogCheck:
    """The model against one log.

    Attributes:
        path: The log's file name (or ``<text>``).
        vllm_version: The release the estimate followed (``X.Y.Z``).
        logged_version: The version the log names (None when it names none).
        device: ``gpu`` or ``cpu``.
        gpu: The GPU the estimate assumed (its total memory from the log when printed).
        config: The configuration rebuilt from the log's non-default args.
        estimate: The model's estimate.
        observed: The logged terms, made comparable across releases (:func:`observed_terms`).
        rows: One :class:`TermRow` per entry of :data:`TERMS`.
        notes: What was assumed or could not be compared.
    """

    path: str
    vllm_version: str
    logged_version: str | None
    device: str
    gpu: Gpu | None
    config: ServeConfig
    estimate: MemoryEstimate
    observed: dict[str, Any]
    rows: list[TermRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> TermRow:
        """The row of one term key."""
        return next(r for r in self.rows if r.key == key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "path": self.path, "vllm_version": self.vllm_version, "logged_version": self.logged_version,
            "device": self.device, "gpu": self.gpu.name if self.gpu else None,
            "gpu_memory_gib": round(self.gpu.memory_gib, 4) if self.gpu else None,
            "flags": self.config.to_flags_line(),
            "terms": [{"key": r.key, "label": r.label, "unit": r.unit, "logged": r.logged, "estimated": r.estimated,
                       "diff_pct": None if r.diff_pct is None else round(r.diff_pct, 3)} for r in self.rows],
            "notes": list(self.notes),
        }


def config_from_log(text: str, *, source: str = "the log") -> ServeConfig:
    """The configuration of a start, from its ``non-default args: {...}`` line.

    Engine arguments that are :class:`ServeConfig` fields are kept (the model path too); the
    rest (host, port, ...) are dropped.

    Raises:
        VtuneError: The log has no readable non-default args line.
    """
    for line in text.splitlines():
        m = _ARGS_RE.search(line)
        if not m:
            continue
        try:
            args = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError):
            continue
        if not isinstance(args, dict):
            continue
        kept = {k: v for k, v in args.items() if k in _CONFIG_FIELDS and v is not None}
        compilation = args.get("compilation_config")
        if isinstance(compilation, dict) and compilation.get("max_cudagraph_capture_size"):
            kept.setdefault("max_cudagraph_capture_size", int(compilation["max_cudagraph_capture_size"]))
        cfg = ServeConfig.from_dict(kept)
        cfg.model = str(args.get("model") or args.get("model_tag") or "")
        return cfg
    raise VtuneError(f"{source}: no 'non-default args: {{...}}' line (vLLM prints it at the start of "
                     "`vllm serve`); give the whole server log")


def observed_terms(numbers: StartupNumbers, rules: VersionRules) -> dict[str, Any]:
    """The logged terms, comparable across releases (keys of :data:`TERMS`).

    * ``non_torch_gib``: logged, else (0.27 on) consumed - weights;
    * ``activation_peak_gib``: the profile run's peak; where the release adds the CUDA-graph
      estimate to the printed figure (0.18, 0.27 on) and the log says it was taken out, it is
      subtracted;
    * ``cudagraph_reserved_gib``: the estimate when the log says it was taken out, else 0.
    """
    out: dict[str, Any] = {k: getattr(numbers, k, None) for k, _, _ in TERMS if hasattr(numbers, k)}
    nt = numbers.non_torch_gib
    if nt is None and numbers.consumed_gib is not None and numbers.weights_gib is not None:
        nt = round(numbers.consumed_gib - numbers.weights_gib, 4)
    out["non_torch_gib"] = nt
    # The worker logs "CUDA graph memory profiling is enabled ..." whenever its estimate is > 0 and it was
    # taken out (vllm/v1/worker/gpu_worker.py, 0.20 on; 0.18-0.19 only with the variable set): no such
    # line means nothing was reserved (the V2 runner estimates 0).
    reserved = 0.0
    if rules.cudagraph_estimate_logged and numbers.cudagraph_estimate_reserved:
        reserved = numbers.cudagraph_estimate_gib or 0.0
    out["cudagraph_reserved_gib"] = reserved
    act = numbers.activation_peak_gib
    if act is not None and rules.logged_activation_includes_cudagraph_estimate and reserved:
        act = round(act - reserved, 4)
    out["activation_peak_gib"] = act
    return out


def _gpu_from_log(numbers: StartupNumbers) -> Gpu | None:
    total = numbers.total_memory_gib
    if total is None:
        return None
    near = sorted(GPU_CATALOG, key=lambda k: abs(GPU_CATALOG[k] - total))
    name = near[0] if abs(GPU_CATALOG[near[0]] - total) < 0.6 else f"{total:g}GiB"
    # The log rounds to 0.01 GiB: the catalog's exact size when it is the one printed.
    exact = GPU_CATALOG[name] if name in GPU_CATALOG and abs(GPU_CATALOG[name] - total) <= 0.005 else float(total)
    return Gpu(name, exact)


def check_startup_log(
    text: str,
    shape: ModelShape,
    *,
    path: str = "<text>",
    gpu: Gpu | None = None,
    version: str | None = None,
    calibration: Calibration | None = None,
    config: ServeConfig | None = None,
) -> LogCheck:
    """Estimates the configuration of a logged start and lines up every term with the log.

    Args:
        text: The server log (stdout + stderr of ``vllm serve``).
        shape: The served model's architecture.
        path: Name of the log, for messages.
        gpu: The GPU (default: one of the log's total memory, else H100-80GB).
        version: The vLLM release to follow (default: the one the log names).
        calibration: Corrections to apply (none by default: the check is of the model itself).
        config: The configuration (default: the log's non-default args).

    Raises:
        VtuneError: No version in the log and none given, a version outside 0.15-0.33, no
            configuration line, or a log without the KV cache lines of a started engine.
    """
    numbers = parse_startup_log(text)
    source = Path(path).name
    asked = version or numbers.vllm_version
    if asked is None:
        raise VtuneError(f"{source}: the log names no vLLM version; give it with --vllm-version X.Y.Z")
    full = parse_version(asked, flag=f"{source}: vLLM" if version is None else "--vllm-version")
    rules = rules_for(full)
    if numbers.kv_cache_tokens is None and numbers.kv_cache_gib is None:
        raise VtuneError(f"{source}: no KV cache lines (the engine did not get that far); "
                         "give the log of a start that reached 'Available KV cache memory'")
    cfg = config if config is not None else config_from_log(text, source=source)
    device = "cpu" if numbers.device == "cpu" else "gpu"
    notes: list[str] = []
    if numbers.vllm_version and version and parse_version(numbers.vllm_version, flag=source) != full:
        notes.append(f"the log is of vLLM {numbers.vllm_version}; estimated for {full} as asked")
    kw: dict[str, Any] = {}
    if device == "cpu":
        gpu = None
        kw["cpu_kv_cache_gib"] = numbers.kv_cache_gib
        notes.append("CPU engine: the KV cache space is an input (VLLM_CPU_KVCACHE_SPACE), taken from the log; "
                     "tokens and concurrency check the block arithmetic")
    else:
        gpu = gpu or _gpu_from_log(numbers)
        if gpu is None:
            notes.append("the log does not print the GPU's total memory: H100-80GB assumed (give --gpu)")
    est = estimate_memory(shape, cfg, gpu, device=device, calibration=calibration, version=full, **kw)
    observed = observed_terms(numbers, rules)
    rows = []
    for key, label, unit in TERMS:
        logged = observed.get(key)
        estimated = getattr(est, key)
        if device == "cpu" and key not in ("weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency"):
            estimated = None  # the CPU engine has no such term
        rows.append(TermRow(key, label, unit, None if logged is None else float(logged),
                            None if estimated is None else float(estimated)))
    if rules.non_kv_from_free_memory and numbers.consumed_gib is not None:
        notes.append(f"vLLM {rules.series} logs weights + non-torch as one amount ({numbers.consumed_gib:.2f} GiB "
                     "consumed); non-torch is that less the weights")
    notes.extend(est.notes)
    return LogCheck(path=source, vllm_version=full, logged_version=numbers.vllm_version, device=device, gpu=gpu,
                    config=cfg, estimate=est, observed=observed, rows=rows, notes=notes)


def format_log_check(check: LogCheck) -> str:
    """The check as a text table: term, logged, estimated, difference."""
    where = (f"{check.gpu.name} ({check.gpu.memory_gib:.2f} GiB)" if check.gpu else
             ("the vLLM CPU engine" if check.device == "cpu" else "H100-80GB"))
    lines = [f"{check.path}: vLLM {check.logged_version or '?'} on {where}; estimated with the rules of "
             f"{check.vllm_version}",
             f"  flags: {check.config.to_flags_line() or '(vLLM defaults)'}", ""]
    header = f"{'term':<30}{'logged':>14}{'estimated':>14}{'diff':>10}"
    lines += [header, "-" * len(header)]
    for r in check.rows:
        def fmt(v: float | None, unit: str = r.unit) -> str:
            if v is None:
                return "-"
            return f"{v:,.0f}" if unit == "tokens" else f"{v:.2f}" + ("x" if unit == "x" else "")
        diff = "" if r.diff_pct is None else f"{r.diff_pct:+.2f}%"
        lines.append(f"{r.label + (' (GiB)' if r.unit == 'GiB' else ''):<30}{fmt(r.logged):>14}"
                     f"{fmt(r.estimated):>14}{diff:>10}")
    for note in check.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
