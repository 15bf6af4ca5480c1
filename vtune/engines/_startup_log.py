"""Read the numbers a vLLM server prints at start-up: :func:`parse_startup_log`.

:func:`parse_startup_log` turns the stdout+stderr of ``vllm serve`` into a
:class:`StartupNumbers`: model weights, activation peak, CUDA graph and KV cache
memory, KV cache capacity in tokens, maximum concurrency, load / compile /
capture times and the vLLM version. :func:`split_log_line` (shared with
:mod:`vtune.engines._failures`, which says why an engine failed) splits a line
into process tag, level and message.

Why one module of about 700 lines: the table of wordings below, the rules that
match them (one small function per wording, registered in order) and the
combination of values from several engines and workers are one piece; split, the
rules' ranks and the combiner's per-field policies would have to be read across
files.

Wordings covered (format strings read from the vLLM sources of each release):

* V0 engine, 0.6.x: ``Loading model weights took 14.9888 GB``,
  ``# GPU blocks: 27798, # CPU blocks: 2048``, ``# CPU blocks: 4096`` (CPU
  executor), ``Maximum concurrency for 8192 tokens per request: 54.29x``,
  ``Graph capturing finished in 14 secs.`` / ``..., took 0.45 GiB``.
* 0.6.6 - 0.10 (V0 worker): the three-line ``Memory profiling takes 4.91 seconds``
  / ``the current vLLM instance can use total_gpu_memory (79.19GiB) x
  gpu_memory_utilization (0.90) = 71.27GiB`` / ``model weights take 14.99GiB;
  non_torch_memory takes 0.15GiB; PyTorch activation peak memory takes 1.23GiB;
  the rest of the memory reserved for KV Cache is 55.0GiB.``, and
  ``# cuda blocks: 28345, # CPU blocks: 2048``.
* V1 engine, 0.8 - 0.3x: ``Model loading took 7.12 GiB and 3.4 seconds`` (0.13
  on: ``... GiB memory and ... seconds``), ``Available KV cache memory: 61.42
  GiB``, ``GPU KV cache size: 503,152 tokens`` (0.32: ``CPU KV cache size:
  262,144 tokens, Maximum concurrency for 2,048 tokens per request: 128.00x`` on
  one line), ``Graph capturing finished in 12 secs, took 0.62 GiB``,
  ``torch.compile takes 26.10 s in total`` / ``torch.compile took ...``,
  ``Compiling a graph for general shape / dynamic shape / shape 8 / compile
  range (1, 8192) takes 3.21 s``, ``init engine (profile, create kv cache, warmup
  model) took 52.3 seconds`` / ``... took 71.2 s (compilation: 26.1 s)``, the
  0.10 - 0.2x summary (DEBUG level in 0.11) ``Free memory on device (78.66/79.18
  GiB) on startup. Desired
  GPU memory utilization is (0.95, 75.22 GiB). Actual usage is 15.0 GiB for
  weight, ... Current kv cache memory in use is 58.89 GiB.`` (0.10: ``... is
  63235466854 bytes.``), and the 0.2x CUDA graph estimate lines ``Estimated CUDA
  graph memory: 0.98 GiB total`` and ``CUDA graph pool memory: 0.96 GiB (actual),
  0.98 GiB (estimated), ...``; 0.27 on, the summary reads ``Actual usage is 15.5 GiB for
  consumed memory (weights + non-torch), 2.1 GiB for peak activation, and 0.96 GiB for
  CUDAGraph memory`` (the activation includes the CUDA-graph estimate taken out of the KV
  cache: ``consumed_gib``, ``cudagraph_estimate_gib`` and ``cudagraph_estimate_reserved`` keep
  what is needed to split it), and ``CUDA graph memory profiling is enabled`` (0.18 on) says
  the estimate was taken out.
* CPU engine: ``Explicitly set (1.0/7.46) GiB for KV cache on node 0.``, ``Auto
  set (2.47/10.21) GiB for KV cache on node 0, with 3.06 GiB requested memory for
  the worker. ...`` (0.2x - 0.3x) and ``VLLM_CPU_KVCACHE_SPACE not set. Using 5.0
  GiB for KV cache.`` (0.13 - 0.18).
* Version: ``vLLM API server version 0.10.2``, ``vLLM server version 0.22.0,
  serving model ...``, the 0.2x logo line ``... version 0.32.0``, and
  ``Initializing a V1 LLM engine (v0.32.0) with config: ...``.

Log lines may carry a process tag (``(EngineCore_DP0 pid=1234) ``), a level, a
date and a ``[file.py:123]`` (0.8 on) or ``file.py:123]`` (0.6 - 0.7) source marker, and
ANSI colour codes; all are ignored when matching. Evidence lines are kept as the
log printed them, minus colour codes and trailing white space.

Several processes report the same quantity when the engine is parallel:

* Every engine core (one per data-parallel rank) logs its own KV cache size.
  They are kept per engine in ``kv_cache_tokens_per_engine`` (told apart by the
  process tag; an untagged line counts as a new engine) and ``kv_cache_tokens``
  is the **minimum**: each request is served by one engine, so the engine with
  the least room is the one that limits what a request can count on (the total
  is the sum of the list). ``max_concurrency`` comes from that same engine.
* Every tensor-parallel worker logs its own memory numbers (weights of its
  shard, KV cache memory, graph memory). ``kv_cache_gib`` is the **minimum** over
  workers (vLLM sizes every worker's cache to the smallest), the other memory
  amounts and all durations are the **maximum** (the worst device, the slowest
  worker). When one process logs several torch.compile totals (one per compiled
  model part, e.g. ``[backbone]`` and ``[encoder]``) they are added first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "LogLine",
    "StartupNumbers",
    "parse_startup_log",
    "split_log_line",
]

_BYTES_PER_GIB = float(1 << 30)

# --------------------------------------------------------------------------- lines

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Timestamps that container runtimes put in front of every line.
_RUNTIME_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\s+")
# "(EngineCore_DP0 pid=1234) ", "(VllmWorkerProcess pid=5) ", "(RayWorkerWrapper pid=5, ip=10.0.0.1) "
_PROC_TAG_RE = re.compile(r"^(?:[^(\s]*\s*)?\((?P<tag>[^()]*\bpid=\d+[^()]*)\)\s*")
# "INFO 11-22 17:00:01 [gpu_worker.py:123] " (0.8 on), "INFO 10-17 13:39:17 worker.py:123] " (0.6 - 0.7),
# "INFO [kv_cache_utils.py:2327] " (no date).
_LEVEL_RE = re.compile(
    r"^(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+"
    r"(?:\d{2,4}-\d{2}(?:-\d{2})?\s+\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\s+)?"
    r"(?:\[[^\]]*:\d+\]|[\w.\-]+:\d+\])\s?"
)


@dataclass(frozen=True)
class LogLine:
    """One log line, split into its parts.

    Attributes:
        index: 0-based line number in the log.
        raw: The line as printed, without ANSI colour codes and trailing space.
        tag: The process tag without parentheses, e.g. ``EngineCore_DP0 pid=1234``,
            or None.
        level: ``INFO``, ``WARNING``, ``ERROR``, ... or None for lines that did not
            come through vLLM's logger (tracebacks, argparse, warnings).
        message: The text after the tag, level, date and source marker.
    """

    index: int
    raw: str
    tag: str | None
    level: str | None
    message: str

    @property
    def errorish(self) -> bool:
        """Whether the line may show an error: ERROR/CRITICAL level, or no level."""
        return self.level is None or self.level in ("ERROR", "CRITICAL")


def split_log_line(raw: str, index: int = 0) -> LogLine:
    """Split one line of a vLLM server log into tag, level and message.

    Args:
        raw: The line, with or without ANSI colour codes.
        index: Its 0-based line number, kept in the result.

    Returns:
        The parts; ``message`` is the whole line when no prefix is recognized.
    """
    text = _ANSI_RE.sub("", raw).rstrip()
    rest = _RUNTIME_TS_RE.sub("", text, count=1)
    tag = None
    m = _PROC_TAG_RE.match(rest)
    if m:
        tag = m.group("tag").strip()
        rest = rest[m.end() :]
    level = None
    m = _LEVEL_RE.match(rest)
    if m:
        level = m.group("level")
        if level == "WARN":
            level = "WARNING"
        rest = rest[m.end() :]
    return LogLine(index=index, raw=text, tag=tag, level=level, message=rest)


def _split_lines(text: str) -> list[LogLine]:
    return [split_log_line(raw, i) for i, raw in enumerate(text.splitlines())]


def _int(text: str) -> int:
    return int(text.replace(",", ""))


# ------------------------------------------------------------------ StartupNumbers


@dataclass
class StartupNumbers:
    """The numbers a vLLM server reported while starting; every field may be None.

    Memory amounts are GiB (2**30 bytes) per device (per worker); see the module
    docstring for how several engines or workers are combined.

    Attributes:
        device: ``gpu`` or ``cpu`` (``tpu``/``xpu``/``hpu`` for those platforms).
        weights_gib: Memory taken by the model weights (of one worker's shard).
        activation_peak_gib: Peak activation memory of the profiling run.
        non_torch_gib: Memory allocated outside PyTorch (NCCL, CUDA context, ...).
        cudagraph_gib: Memory of the captured CUDA graphs; vLLM's pre-capture
            estimate when no capture amount was printed.
        kv_cache_gib: Memory available to the KV cache (the smallest worker's).
        kv_cache_tokens: Tokens the KV cache holds (the smallest engine's). Where
            only V0 block counts are printed: blocks x ``block_size``, or None
            when the block size is unknown.
        kv_cache_blocks: V0 only: number of device KV blocks.
        block_size: Tokens per KV block, from the logged CLI arguments, else
            (V0) worked out from blocks, max_model_len and the concurrency when
            they agree on a power of two.
        max_concurrency: Requests of ``max_model_len`` tokens that fit at once.
        max_model_len: The "tokens per request" of the concurrency line.
        total_memory_gib: Total memory of the device (CPU: of the NUMA node).
        requested_memory_gib: total x ``gpu_memory_utilization``.
        gpu_memory_utilization: The fraction vLLM used.
        model_load_s: Time to load the model (the slowest worker); where only
            ``Loading weights took`` is printed, the weight loading time alone.
        graph_capture_s: Time to capture CUDA graphs.
        torch_compile_s: Time spent in torch.compile.
        engine_init_s: "init engine (profile, create kv cache, warmup model)" time.
        num_engines: How many engine cores reported a KV cache size.
        kv_cache_tokens_per_engine: KV cache tokens of each engine, in log order.
        vllm_version: The vLLM version the log names.
        consumed_gib: 0.27 on: weights + non-torch memory as one amount (the free-memory drop).
        cudagraph_estimate_gib: The CUDA-graph memory estimated before the KV cache was sized
            (``Estimated CUDA graph memory``, 0.18 on).
        cudagraph_estimate_reserved: True when the log says CUDA-graph memory profiling is
            enabled (the estimate was taken out of the KV cache), False when it says disabled.
        evidence: Field name -> the log line the value came from (lines joined by
            a newline where a value adds several lines).
    """

    device: str | None = None
    weights_gib: float | None = None
    activation_peak_gib: float | None = None
    non_torch_gib: float | None = None
    cudagraph_gib: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    kv_cache_blocks: int | None = None
    block_size: int | None = None
    max_concurrency: float | None = None
    max_model_len: int | None = None
    total_memory_gib: float | None = None
    requested_memory_gib: float | None = None
    gpu_memory_utilization: float | None = None
    model_load_s: float | None = None
    graph_capture_s: float | None = None
    torch_compile_s: float | None = None
    engine_init_s: float | None = None
    num_engines: int | None = None
    kv_cache_tokens_per_engine: list[int] = field(default_factory=list)
    vllm_version: str | None = None
    consumed_gib: float | None = None
    cudagraph_estimate_gib: float | None = None
    cudagraph_estimate_reserved: bool | None = None
    evidence: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of all fields (lists and dicts copied)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartupNumbers:
        """Build from :meth:`to_dict` output; unknown keys are ignored.

        Args:
            data: A dict as written by :meth:`to_dict`.

        Returns:
            The numbers, with ints and floats restored to their field types.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for name in _INT_FIELDS:
            if kwargs.get(name) is not None:
                kwargs[name] = int(kwargs[name])
        for name in _FLOAT_FIELDS:
            if kwargs.get(name) is not None:
                kwargs[name] = float(kwargs[name])
        kwargs["kv_cache_tokens_per_engine"] = [int(v) for v in kwargs.get("kv_cache_tokens_per_engine") or []]
        kwargs["evidence"] = {str(k): str(v) for k, v in (kwargs.get("evidence") or {}).items()}
        return cls(**kwargs)


_INT_FIELDS = ("kv_cache_tokens", "kv_cache_blocks", "block_size", "max_model_len", "num_engines")
_FLOAT_FIELDS = (
    "weights_gib",
    "activation_peak_gib",
    "non_torch_gib",
    "cudagraph_gib",
    "kv_cache_gib",
    "max_concurrency",
    "total_memory_gib",
    "requested_memory_gib",
    "gpu_memory_utilization",
    "model_load_s",
    "graph_capture_s",
    "torch_compile_s",
    "engine_init_s",
    "consumed_gib",
    "cudagraph_estimate_gib",
)


# ------------------------------------------------------------------- observations


@dataclass(frozen=True)
class _Obs:
    """One value for one field, read from one line.

    ``rank`` orders sources of the same field: the lowest rank present wins and
    values of other ranks are ignored.
    """

    name: str
    value: Any
    rank: int
    line: LogLine


# How values of the winning rank from several lines are combined.
_MIN_FIELDS = frozenset({"kv_cache_gib"})
_SUM_THEN_MAX_FIELDS = frozenset({"torch_compile_s"})
_LAST_FIELDS = frozenset({"device", "vllm_version", "block_size", "gpu_memory_utilization",
                          "cudagraph_estimate_reserved"})

_GIB = r"(-?\d+(?:\.\d+)?)"
_NUMBER = r"(\d+(?:\.\d+)?)"


def _device_name(word: str) -> str:
    w = word.strip().lower()
    if w in ("gpu", "cuda", "rocm"):
        return "gpu"
    return w


_Rule = Callable[[re.Match[str], LogLine], Iterable[_Obs]]
_RULES: list[tuple[re.Pattern[str], _Rule]] = []


def _rule(pattern: str) -> Callable[[_Rule], _Rule]:
    def register(fn: _Rule) -> _Rule:
        _RULES.append((re.compile(pattern), fn))
        return fn

    return register


@_rule(
    r"(?:Model loading|Loading model weights) took "
    + _GIB
    + r" (?:GiB|GB)(?: memory)?(?: and "
    + _NUMBER
    + r" seconds)?"
)
def _model_loading(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("weights_gib", float(m.group(1)), 0, ln)
    if m.group(2) is not None:
        yield _Obs("model_load_s", float(m.group(2)), 0, ln)


@_rule(r"^Loading weights took " + _NUMBER + r" seconds")
def _loading_weights(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("model_load_s", float(m.group(1)), 1, ln)


@_rule(r"Available KV cache memory: " + _GIB + r" GiB")
def _available_kv(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("kv_cache_gib", float(m.group(1)), 0, ln)
    yield _Obs("device", "gpu", 2, ln)


@_rule(
    r"(?:Explicitly|Auto) set \(" + _GIB + r"/" + _GIB + r"\) GiB for KV cache on node \d+"
    r"(?:, with " + _GIB + r" GiB requested memory)?"
)
def _cpu_kv_set(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("kv_cache_gib", float(m.group(1)), 0, ln)
    yield _Obs("total_memory_gib", float(m.group(2)), 1, ln)
    if m.group(3) is not None:
        yield _Obs("requested_memory_gib", float(m.group(3)), 1, ln)
    yield _Obs("device", "cpu", 1, ln)


@_rule(r"VLLM_CPU_KVCACHE_SPACE not set\. Using " + _GIB + r" GiB for KV cache")
def _cpu_kv_default(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("kv_cache_gib", float(m.group(1)), 1, ln)
    yield _Obs("device", "cpu", 1, ln)


@_rule(r"total_gpu_memory \(" + _GIB + r" ?GiB\) x gpu_memory_utilization \(" + _NUMBER + r"\) = " + _GIB + r" ?GiB")
def _v0_profile_budget(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("total_memory_gib", float(m.group(1)), 0, ln)
    yield _Obs("gpu_memory_utilization", float(m.group(2)), 0, ln)
    yield _Obs("requested_memory_gib", float(m.group(3)), 0, ln)
    yield _Obs("device", "gpu", 2, ln)


@_rule(
    r"model weights take "
    + _GIB
    + r" ?GiB; non_torch_memory takes "
    + _GIB
    + r" ?GiB; PyTorch activation peak memory takes "
    + _GIB
    + r" ?GiB; the rest of the memory reserved for KV Cache is "
    + _GIB
    + r" ?GiB"
)
def _v0_profile_usage(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("weights_gib", float(m.group(1)), 1, ln)
    yield _Obs("non_torch_gib", float(m.group(2)), 0, ln)
    yield _Obs("activation_peak_gib", float(m.group(3)), 0, ln)
    yield _Obs("kv_cache_gib", float(m.group(4)), 0, ln)


@_rule(r"Free memory on device(?: [\w:]+)? \(" + _GIB + r"/" + _GIB + r" GiB\) on startup")
def _free_on_startup(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("total_memory_gib", float(m.group(2)), 0, ln)
    yield _Obs("device", "gpu", 2, ln)


@_rule(
    r"(?:Desired GPU memory utilization is|less than desired GPU memory utilization) \("
    + _NUMBER
    + r", "
    + _GIB
    + r" GiB\)"
)
def _desired_util(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("gpu_memory_utilization", float(m.group(1)), 0, ln)
    yield _Obs("requested_memory_gib", float(m.group(2)), 0, ln)


@_rule(
    r"Available memory on node \d+ \(" + _GIB + r"/" + _GIB + r" GiB\) on startup is less than desired "
    r"CPU memory utilization \(" + _NUMBER + r", " + _GIB + r" GiB\)"
)
def _cpu_desired_util(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("total_memory_gib", float(m.group(2)), 1, ln)
    yield _Obs("gpu_memory_utilization", float(m.group(3)), 0, ln)
    yield _Obs("requested_memory_gib", float(m.group(4)), 1, ln)
    yield _Obs("device", "cpu", 1, ln)


@_rule(
    r"Actual usage is "
    + _GIB
    + r" GiB for weight, "
    + _GIB
    + r" GiB for peak activation, "
    + _GIB
    + r" GiB for non-torch memory, and "
    + _GIB
    + r" GiB for CUDAGraph memory"
)
def _actual_usage(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("weights_gib", float(m.group(1)), 1, ln)
    yield _Obs("activation_peak_gib", float(m.group(2)), 0, ln)
    yield _Obs("non_torch_gib", float(m.group(3)), 0, ln)
    yield _Obs("cudagraph_gib", float(m.group(4)), 0, ln)


@_rule(
    r"Actual usage is "
    + _GIB
    + r" GiB for consumed memory \(weights \+ non-torch\), "
    + _GIB
    + r" GiB for peak activation, and "
    + _GIB
    + r" GiB for CUDAGraph memory"
)
def _actual_usage_consumed(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    # 0.27 on (vllm/v1/worker/gpu_worker.py): the activation includes the applied CUDA-graph estimate.
    yield _Obs("consumed_gib", float(m.group(1)), 0, ln)
    yield _Obs("activation_peak_gib", float(m.group(2)), 0, ln)
    yield _Obs("cudagraph_gib", float(m.group(3)), 0, ln)


@_rule(r"CUDA graph memory profiling is (enabled|disabled)")
def _cg_profiling_state(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("cudagraph_estimate_reserved", m.group(1) == "enabled", 0, ln)


@_rule(r"Current kv cache memory in use is (?:" + _GIB + r" GiB|(\d+) bytes)")
def _current_kv(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    if m.group(1) is not None:
        yield _Obs("kv_cache_gib", float(m.group(1)), 0, ln)
    else:
        yield _Obs("kv_cache_gib", round(int(m.group(2)) / _BYTES_PER_GIB, 2), 0, ln)


@_rule(r"torch peak memory increase: " + _GIB + r" ?GiB;.*weights memory: " + _GIB + r" ?GiB")
def _debug_profile(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("activation_peak_gib", float(m.group(1)), 1, ln)
    yield _Obs("weights_gib", float(m.group(2)), 2, ln)


@_rule(r"Graph capturing finished in " + _NUMBER + r" secs?(?:, took " + _GIB + r" GiB)?")
def _graph_capture(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("graph_capture_s", float(m.group(1)), 0, ln)
    if m.group(2) is not None:
        yield _Obs("cudagraph_gib", float(m.group(2)), 0, ln)
    yield _Obs("device", "gpu", 2, ln)


@_rule(r"CUDA graph pool memory: " + _GIB + r" GiB \(actual\)")
def _graph_pool(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("cudagraph_gib", float(m.group(1)), 0, ln)


@_rule(r"Estimated CUDA graph memory: " + _GIB + r" GiB total")
def _graph_estimate(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("cudagraph_gib", float(m.group(1)), 1, ln)
    yield _Obs("cudagraph_estimate_gib", float(m.group(1)), 0, ln)
    yield _Obs("device", "gpu", 2, ln)


@_rule(r"The current --gpu-memory-utilization=" + _NUMBER + r" is equivalent")
def _cg_profiling_util(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("gpu_memory_utilization", float(m.group(1)), 1, ln)


@_rule(r"(?:^|\] )torch\.compile (?:takes|took) " + _NUMBER + r" s in total")
def _torch_compile(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("torch_compile_s", float(m.group(1)), 0, ln)


@_rule(
    r"init engine \(profile, create kv cache, warmup model\) took "
    + _NUMBER
    + r" (?:s|seconds)(?: \(compilation: "
    + _NUMBER
    + r" s)?"
)
def _init_engine(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("engine_init_s", float(m.group(1)), 0, ln)
    if m.group(2) is not None:
        yield _Obs("torch_compile_s", float(m.group(2)), 1, ln)


@_rule(r"torch\.compile and initial profiling/warmup run together took " + _NUMBER + r" s in total")
def _compile_and_warmup(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("torch_compile_s", float(m.group(1)), 2, ln)


@_rule(r"Compiling a graph for (?:general shape|dynamic shape|shape \S+|compile range .+?) takes " + _NUMBER + r" s")
def _compile_graph(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("torch_compile_s", float(m.group(1)), 3, ln)


@_rule(r"vLLM (?:API )?server version ([\w.+\-]+)")
def _server_version(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("vllm_version", m.group(1).rstrip(".,"), 0, ln)


@_rule(r"█\s+version\s+(\d[\w.+\-]*)\s*$")
def _logo_version(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("vllm_version", m.group(1), 0, ln)


@_rule(r"Initializing an? (?:V\d )?LLM engine \(v([\w.+\-]+)\) with config")
def _engine_version(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("vllm_version", m.group(1), 1, ln)


@_rule(r"Automatically detected platform (\w+)\.")
def _platform(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    yield _Obs("device", _device_name(m.group(1)), 1, ln)


@_rule(r"^args: Namespace\(|non-default args: \{")
def _cli_args(m: re.Match[str], ln: LogLine) -> Iterable[_Obs]:
    text = ln.message
    bs = re.search(r"(?:\bblock_size=|'block_size': )(\d+)", text)
    if bs:
        yield _Obs("block_size", int(bs.group(1)), 0, ln)
    util = re.search(r"(?:\bgpu_memory_utilization=|'gpu_memory_utilization': )" + _NUMBER, text)
    if util:
        yield _Obs("gpu_memory_utilization", float(util.group(1)), 2, ln)


# KV capacity lines are collected per engine, not as plain observations.
_KV_TOKENS_RE = re.compile(r"\b([A-Za-z]+(?: \+ host)?) KV cache size: ([\d,]+) tokens")
_CONCURRENCY_RE = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: " + _NUMBER + "x")
_BLOCKS_RE = re.compile(r"# (\w+) blocks: (\d+)(?:, # CPU blocks: (\d+))?")
_VALID_BLOCK_SIZES = frozenset(2**k for k in range(11))


@dataclass
class _EngineKV:
    """The KV capacity lines of one engine core."""

    tokens: int | None = None
    tokens_line: LogLine | None = None
    blocks: int | None = None
    blocks_line: LogLine | None = None
    max_model_len: int | None = None
    concurrency: float | None = None
    concurrency_line: LogLine | None = None


class _Engines:
    """Groups KV capacity lines by engine: by process tag, else one per size line."""

    def __init__(self) -> None:
        self.by_key: dict[str, _EngineKV] = {}
        self._last_untagged: str | None = None

    def _get(self, ln: LogLine, *, starts_report: bool) -> _EngineKV:
        if ln.tag is not None:
            key = ln.tag
        elif starts_report or self._last_untagged is None:
            key = f"#{ln.index}"
            self._last_untagged = key
        else:
            key = self._last_untagged
        return self.by_key.setdefault(key, _EngineKV())

    def add(self, ln: LogLine, devices: list[_Obs]) -> None:
        text = ln.message
        m = _KV_TOKENS_RE.search(text)
        if m:
            eng = self._get(ln, starts_report=True)
            eng.tokens, eng.tokens_line = _int(m.group(2)), ln
            devices.append(_Obs("device", _device_name(m.group(1).split()[0]), 0, ln))
        else:
            m = _BLOCKS_RE.search(text)
            if m:
                eng = self._get(ln, starts_report=True)
                eng.blocks, eng.blocks_line = int(m.group(2)), ln
                devices.append(_Obs("device", _device_name(m.group(1)), 0, ln))
        c = _CONCURRENCY_RE.search(text)
        if c:
            eng = self._get(ln, starts_report=False)
            eng.max_model_len, eng.concurrency, eng.concurrency_line = _int(c.group(1)), float(c.group(2)), ln

    def reports(self) -> list[_EngineKV]:
        return [e for e in self.by_key.values() if e.tokens is not None or e.blocks is not None]


def _combine(name: str, obs: list[_Obs]) -> tuple[Any, str]:
    """Combine the observations of the best rank into one value and its evidence."""
    best = min(o.rank for o in obs)
    chosen = [o for o in obs if o.rank == best]
    if name in _LAST_FIELDS:
        o = chosen[-1]
        return o.value, o.line.raw
    if name in _MIN_FIELDS:
        o = min(chosen, key=lambda x: x.value)
        return o.value, o.line.raw
    if name in _SUM_THEN_MAX_FIELDS:
        per_proc: dict[str, list[_Obs]] = {}
        for o in chosen:
            per_proc.setdefault(o.line.tag or "", []).append(o)
        group = max(per_proc.values(), key=lambda g: sum(x.value for x in g))
        total = round(sum(x.value for x in group), 6)
        return total, "\n".join(x.line.raw for x in group)
    o = max(chosen, key=lambda x: x.value)
    return o.value, o.line.raw


def _infer_block_size(eng: _EngineKV) -> int | None:
    """Block size from a V0 concurrency line: concurrency = blocks x block size / max_model_len."""
    if not eng.blocks or eng.concurrency is None or not eng.max_model_len:
        return None
    exact = eng.concurrency * eng.max_model_len / eng.blocks
    guess = round(exact)
    # The concurrency is printed with two decimals.
    slack = 0.005 * eng.max_model_len / eng.blocks + 1e-9
    if guess in _VALID_BLOCK_SIZES and math.isclose(exact, guess, abs_tol=slack):
        return guess
    return None


def parse_startup_log(text: str) -> StartupNumbers:
    """Parse the start-up numbers out of a vLLM server log.

    Args:
        text: stdout and stderr of ``vllm serve`` (any vLLM version from 0.6 on,
            GPU or CPU engine), possibly with ANSI colour codes.

    Returns:
        The numbers found; fields the log does not show stay None (``[]`` for
        ``kv_cache_tokens_per_engine``). ``evidence`` names the line of each.
    """
    obs: list[_Obs] = []
    engines = _Engines()
    for ln in _split_lines(text):
        if not ln.message:
            continue
        for pattern, rule in _RULES:
            m = pattern.search(ln.message)
            if m:
                obs.extend(rule(m, ln))
        engines.add(ln, obs)

    out = StartupNumbers()
    by_name: dict[str, list[_Obs]] = {}
    for o in obs:
        by_name.setdefault(o.name, []).append(o)
    for name, group in by_name.items():
        value, line = _combine(name, group)
        setattr(out, name, value)
        out.evidence[name] = line

    reports = engines.reports()
    if reports:
        _fill_kv_capacity(out, reports)
    return out


def _fill_kv_capacity(out: StartupNumbers, reports: list[_EngineKV]) -> None:
    out.num_engines = len(reports)
    out.evidence["num_engines"] = "\n".join(
        line.raw for e in reports if (line := e.tokens_line or e.blocks_line) is not None
    )
    if out.block_size is None:
        for eng in reports:
            inferred = _infer_block_size(eng)
            if inferred is not None and eng.concurrency_line is not None:
                out.block_size = inferred
                out.evidence["block_size"] = eng.concurrency_line.raw
                break
    for eng in reports:
        if eng.tokens is None and eng.blocks is not None and out.block_size is not None:
            eng.tokens, eng.tokens_line = eng.blocks * out.block_size, eng.blocks_line
    with_tokens = [e for e in reports if e.tokens is not None]
    out.kv_cache_tokens_per_engine = [int(e.tokens) for e in with_tokens if e.tokens is not None]
    if with_tokens:
        smallest = min(with_tokens, key=lambda e: e.tokens or 0)
        out.kv_cache_tokens = smallest.tokens
        if smallest.tokens_line is not None:
            out.evidence["kv_cache_tokens"] = smallest.tokens_line.raw
        out.evidence["kv_cache_tokens_per_engine"] = out.evidence["num_engines"]
    else:
        smallest = reports[0]
    with_blocks = [e for e in reports if e.blocks is not None]
    if with_blocks:
        fewest = min(with_blocks, key=lambda e: e.blocks or 0)
        out.kv_cache_blocks = fewest.blocks
        if fewest.blocks_line is not None:
            out.evidence["kv_cache_blocks"] = fewest.blocks_line.raw
    source = (
        smallest if smallest.concurrency is not None else next((e for e in reports if e.concurrency is not None), None)
    )
    if source is not None and source.concurrency_line is not None:
        out.max_concurrency = source.concurrency
        out.max_model_len = source.max_model_len
        out.evidence["max_concurrency"] = source.concurrency_line.raw
        out.evidence["max_model_len"] = source.concurrency_line.raw
