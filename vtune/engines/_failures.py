"""Say why a vLLM engine did not come up, or stopped: :func:`classify_failure`.

:func:`classify_failure` turns the log of an engine that did not come up into a
:class:`Failure` of one of :data:`FAILURE_KINDS`, with a one-line message that
says what to change (log lines are split as :mod:`vtune.engines._startup_log`
does). Failures that are not the engine's but of the measurement around it are of
the same type: ``load_error`` and ``load_stalled`` (the load tool broke or stopped
making progress), ``interrupted`` (Ctrl-C, SIGTERM, or vtune died) and
``worker_lost`` (a study worker stopped sending heartbeats). They are listed in
:data:`NOT_CONFIG_FAULTS`: a study must not count them against the configuration
(:attr:`Failure.blames_config` is False for them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtune.engines._startup_log import _GIB, _NUMBER, LogLine, _split_lines

__all__ = ["FAILURE_KINDS", "NOT_CONFIG_FAULTS", "Failure", "classify_failure"]

#: Failures that are not the configuration's fault: the measurement broke around it.
NOT_CONFIG_FAULTS: frozenset[str] = frozenset({"interrupted", "worker_lost", "load_stalled", "load_error"})

FAILURE_KINDS: tuple[str, ...] = (
    "out_of_memory",
    "kv_cache_too_small",
    "invalid_argument",
    "model_load_error",
    "port_in_use",
    "timeout",
    "crash",
    "load_error",
    "load_stalled",
    "interrupted",
    "worker_lost",
)

@dataclass
class Failure:
    """Why a trial's engine did not come up (or stopped), or why its measurement broke.

    Attributes:
        kind: One of :data:`FAILURE_KINDS`.
        message: One line: what happened and what to change.
        log_line: The log line that shows it (colour codes removed), or None.
        exit_code: The process exit code (negative: killed by that signal), or
            None while it still ran.
    """

    kind: str
    message: str
    log_line: str | None = None
    exit_code: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {self.kind!r}; use one of {', '.join(FAILURE_KINDS)}")

    @property
    def blames_config(self) -> bool:
        """Whether the configuration caused it (False for the kinds in :data:`NOT_CONFIG_FAULTS`)."""
        return self.kind not in NOT_CONFIG_FAULTS

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of the four fields and ``blames_config``."""
        return {
            "kind": self.kind,
            "message": self.message,
            "log_line": self.log_line,
            "exit_code": self.exit_code,
            "blames_config": self.blames_config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        """Build from :meth:`to_dict` output.

        Args:
            data: A dict with ``kind`` and ``message``, optionally ``log_line`` and
                ``exit_code`` (``blames_config`` and other keys are ignored).

        Returns:
            The failure.
        """
        code = data.get("exit_code")
        line = data.get("log_line")
        return cls(
            kind=str(data["kind"]),
            message=str(data["message"]),
            log_line=None if line is None else str(line),
            exit_code=None if code is None else int(code),
        )


_MAX_DETAIL_CHARS = 300

_KV_TOO_SMALL_V1_RE = re.compile(
    r"To serve at least one request with the models?'s max seq len \((\d+)\), \("
    + _GIB
    + r" GiB KV cache is needed, which is larger than the available KV cache memory \("
    + _GIB
    + r" GiB\)"
)
_KV_ESTIMATE_RE = re.compile(r"the estimated maximum model length is (\d+)")
_KV_TOO_SMALL_V0_RE = re.compile(
    r"The model's max seq len \((\d+)\) is larger than the maximum number of tokens that can be stored in "
    r"KV cache \((\d+)\)"
)
_NO_KV_MEMORY_RE = re.compile(r"No available memory for the cache blocks")
_UTIL_TOO_HIGH_RE = re.compile(
    r"(?:Free memory on device(?: [\w:]+)?|Available memory on node \d+) \("
    + _GIB
    + r"/"
    + _GIB
    + r" GiB\) on startup is less than desired (GPU|CPU) memory utilization \("
    + _NUMBER
    + r", "
    + _GIB
    + r" GiB\)"
)
_CPU_KV_ALLOC_RE = re.compile(r"on kv cache allocation is less than requested memory for kv")
_DEVICE_OOM_RE = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|HIP out of memory|"
    r"Failed to load model - not enough GPU memory|CUBLAS_STATUS_ALLOC_FAILED|XPU out of memory"
)
_HOST_OOM_RE = re.compile(
    r"^MemoryError\b|std::bad_alloc|Cannot allocate memory|\[Errno 12\]|DefaultCPUAllocator: not enough memory|"
    r"^Killed$|died unexpectedly \(exit code: -9\)|died with exit code -9|exitcode=-9|"
    r"killed by signal 9|terminated by signal SIGKILL"
)
_ARGPARSE_RE = re.compile(r"^[\w.\- ]{1,60}: error: (.+)$")
_MODEL_LOAD_RE = re.compile(
    r"Invalid repository ID or local directory|Repo id must be in the form|does not appear to have a file named|"
    r"No such file or directory: '[^']*(?:config|\.json|safetensors|\.bin|\.pt|\.gguf|tokenizer|model|weight)|"
    r"SafetensorError|Error while deserializing header|Cannot find any model weights|"
    r"No supported config format found|RepositoryNotFoundError|Repository Not Found|GatedRepoError|"
    r"LocalEntryNotFoundError|couldn't connect to 'https://huggingface\.co'|Can't load the configuration of|"
    r"Unrecognized model in|are not supported for now|does not recognize this architecture|"
    r"HFValidationError"
)
_DIVISIBLE_RE = re.compile(r"must be divisible by")
_VALIDATION_RE = re.compile(r"\bValidationError\b.*validation errors? for (\w+)")
_VALUE_ERROR_LINE_RE = re.compile(r"^Value error, (.+)$")
_PYDANTIC_DETAIL_RE = re.compile(r"^(.+?)\s*\[type=")
_PORT_RE = re.compile(r"Address already in use|\[Errno 98\]|address already in use", re.IGNORECASE)
_ARGS_LINE_RE = re.compile(r"^args: Namespace\(|non-default args: \{")
_PORT_ARG_RE = re.compile(r"(?:\bport=|'port': )(\d+)")
_EXCEPTION_RE = re.compile(
    r"^(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure))(?::\s*(?P<text>.*))?$"
)
_GENERIC_EXCEPTION_RE = re.compile(
    r"See root cause above|See stack trace|initialization failed|EngineDeadError|EngineCore encountered an issue|"
    r"died unexpectedly|Engine core proc .* died|Failed core proc"
)


def _clip(text: str) -> str:
    text = " ".join(text.split()).rstrip(".;, ")
    if len(text) <= _MAX_DETAIL_CHARS:
        return text
    return text[: _MAX_DETAIL_CHARS - 3].rstrip() + "..."


def _detail(ln: LogLine) -> str:
    """The message of a line without a leading ``SomeError:`` class name."""
    m = _EXCEPTION_RE.match(ln.message.strip())
    if m and m.group("text"):
        return _clip(m.group("text"))
    return _clip(ln.message)


def _is_code(lines: list[LogLine], i: int) -> bool:
    """Whether line ``i`` is a traceback frame, its source line or a ``^^^`` marker."""
    text = lines[i].message.strip()
    if text.startswith('File "') or (text and set(text) <= set("^~ ")):
        return True
    if not lines[i].message[:1].isspace() and _EXCEPTION_RE.match(text):
        return False  # the exception line itself (after a frame without source, e.g. Cython)
    for j in range(i - 1, max(i - 3, -1), -1):
        prev = lines[j].message.strip()
        if prev.startswith('File "'):
            return True
        if not (prev and set(prev) <= set("^~ ")):
            break
    return False


def _first(lines: list[LogLine], pattern: re.Pattern[str]) -> tuple[LogLine, re.Match[str]] | None:
    for i, ln in enumerate(lines):
        if ln.errorish and not _is_code(lines, i):
            m = pattern.search(ln.message.strip())
            if m:
                return ln, m
    return None


def _kv_too_small(lines: list[LogLine]) -> tuple[str, LogLine] | None:
    hit = _first(lines, _KV_TOO_SMALL_V1_RE)
    if hit:
        ln, m = hit
        est = _KV_ESTIMATE_RE.search(ln.message)
        estimate = f" (vLLM estimates that {est.group(1)} tokens would fit)" if est else ""
        return (
            f"KV cache too small: one request of max_model_len {m.group(1)} needs {m.group(2)} GiB of KV cache "
            f"but only {m.group(3)} GiB is available{estimate}; lower --max-model-len or give the KV cache more "
            "memory (raise --gpu-memory-utilization or --kv-cache-memory-bytes; on the CPU "
            "VLLM_CPU_KVCACHE_SPACE)",
            ln,
        )
    hit = _first(lines, _KV_TOO_SMALL_V0_RE)
    if hit:
        ln, m = hit
        return (
            f"KV cache too small: max_model_len {m.group(1)} is more than the {m.group(2)} tokens the KV cache "
            "can hold; lower --max-model-len or raise --gpu-memory-utilization",
            ln,
        )
    hit = _first(lines, _NO_KV_MEMORY_RE)
    if hit:
        return (
            "no memory left for the KV cache after the weights and activations; raise "
            "--gpu-memory-utilization, add tensor parallelism, or use a smaller or quantized model",
            hit[0],
        )
    return None


def _out_of_memory(lines: list[LogLine]) -> tuple[str, LogLine] | None:
    hit = _first(lines, _UTIL_TOO_HIGH_RE)
    if hit:
        ln, m = hit
        what = "device" if m.group(3) == "GPU" else "NUMA node"
        return (
            f"not enough free memory at start-up: {m.group(1)} of {m.group(2)} GiB free on the {what}, less "
            f"than the {m.group(5)} GiB that --gpu-memory-utilization {m.group(4)} asks for; lower "
            "--gpu-memory-utilization or stop the other processes using that memory",
            ln,
        )
    hit = _first(lines, _CPU_KV_ALLOC_RE)
    if hit:
        return (
            f"not enough free host memory for the KV cache ({_detail(hit[0])}); lower --kv-cache-memory-bytes "
            "or VLLM_CPU_KVCACHE_SPACE, or free host memory",
            hit[0],
        )
    hit = _first(lines, _DEVICE_OOM_RE)
    if hit:
        return (
            f"GPU out of memory ({_detail(hit[0])}); lower --gpu-memory-utilization, --max-num-seqs or "
            "--max-num-batched-tokens, or raise --tensor-parallel-size",
            hit[0],
        )
    hit = _first(lines, _HOST_OOM_RE)
    if hit:
        return (
            f"host memory exhausted ({_detail(hit[0])}); a process was killed or could not allocate: lower the "
            "KV cache size (VLLM_CPU_KVCACHE_SPACE / --kv-cache-memory-bytes), --max-num-seqs, or run fewer "
            "engines at once",
            hit[0],
        )
    return None


def _argparse_error(lines: list[LogLine]) -> tuple[str, LogLine] | None:
    for ln in lines:
        if ln.level is None:
            m = _ARGPARSE_RE.match(ln.message.strip())
            if m and not m.group(0).split(":", 1)[0].endswith(("Error", "Exception")):
                detail = _clip(m.group(1))
                hint = (
                    "remove the flag or check its spelling for this vLLM version"
                    if detail.startswith("unrecognized arguments")
                    else "fix the flag's value"
                )
                return f"vLLM rejected the command line: {detail}; {hint}", ln
    return None


def _model_load_error(lines: list[LogLine]) -> tuple[str, LogLine] | None:
    hit = _first(lines, _MODEL_LOAD_RE)
    if hit:
        ln = hit[0]
        detail = _detail(ln)
        if detail.startswith("Value error, "):
            detail = detail[len("Value error, ") :]
        return (
            f"the model failed to load: {detail}; check --model (a local directory needs config.json, the "
            "tokenizer and readable weight files; a hub name needs the files cached when offline) and "
            "--load-format",
            ln,
        )
    return None


def _invalid_value(lines: list[LogLine]) -> tuple[str, LogLine] | None:
    hit = _first(lines, _DIVISIBLE_RE)
    if hit:
        return (
            f"vLLM rejected the parallel layout: {_detail(hit[0])}; choose sizes that divide the model's dimensions",
            hit[0],
        )
    for i, ln in enumerate(lines):
        if not ln.errorish:
            continue
        m = _VALIDATION_RE.search(ln.message)
        if not m:
            continue
        config = m.group(1)
        for j in range(i + 1, min(i + 6, len(lines))):
            text = lines[j].message.strip()
            v = _VALUE_ERROR_LINE_RE.match(text)
            if v:
                detail = re.sub(r"\s*\[type=.*$", "", v.group(1))
                return (
                    f"vLLM rejected a configuration value ({config}): {_clip(detail)}; fix that setting",
                    lines[j],
                )
            d = _PYDANTIC_DETAIL_RE.match(text)
            if d and j > i + 1:
                field_name = lines[j - 1].message.strip()
                return (
                    f"vLLM rejected a configuration value ({config}.{field_name}): {_clip(d.group(1))}; fix "
                    "that setting",
                    lines[j],
                )
        return f"vLLM rejected a configuration value: {_detail(ln)}; fix that setting", ln
    return None


def _port_in_use(lines: list[LogLine]) -> tuple[str, LogLine] | None:
    hit = _first(lines, _PORT_RE)
    if hit:
        port = ""
        for ln in lines:
            m = _PORT_ARG_RE.search(ln.message)
            if m and _ARGS_LINE_RE.search(ln.message):
                port = f" {m.group(1)}"
        return (
            f"port{port} is already in use: another process listens on it; stop that process or choose another --port",
            hit[0],
        )
    return None


_CHECKS: tuple[tuple[str, Callable[[list[LogLine]], tuple[str, LogLine] | None]], ...] = (
    ("kv_cache_too_small", _kv_too_small),
    ("out_of_memory", _out_of_memory),
    ("invalid_argument", _argparse_error),
    ("model_load_error", _model_load_error),
    ("invalid_argument", _invalid_value),
    ("port_in_use", _port_in_use),
)


def _root_exception(lines: list[LogLine]) -> LogLine | None:
    """The first specific exception line, else the last generic one, else the last ERROR line."""
    generic: LogLine | None = None
    for i, ln in enumerate(lines):
        if not ln.errorish or _is_code(lines, i):
            continue
        m = _EXCEPTION_RE.match(ln.message.strip())
        if not m:
            continue
        if _GENERIC_EXCEPTION_RE.search(ln.message):
            generic = ln
            continue
        return ln
    if generic is not None:
        return generic
    for ln in reversed(lines):
        if ln.level in ("ERROR", "CRITICAL") and ln.message.strip():
            return ln
    return None


def _last_line(lines: list[LogLine]) -> LogLine | None:
    for ln in reversed(lines):
        if ln.raw.strip():
            return ln
    return None


def _describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "vLLM stopped before it became ready"
    if exit_code < 0 or exit_code > 128:
        sig = -exit_code if exit_code < 0 else exit_code - 128
        if sig == 9:
            return (
                "vLLM was killed by signal 9 (SIGKILL); if vtune did not kill it, the kernel's OOM killer may "
                "have (check dmesg and host memory)"
            )
        return f"vLLM was killed by signal {sig}"
    return f"vLLM exited with code {exit_code}"


def classify_failure(log_text: str, *, exit_code: int | None, timed_out: bool) -> Failure:
    """Say why a vLLM server failed, from its log.

    The checks run in this order, the first hit wins: KV cache too small, out
    of memory (device or host; a child process killed by SIGKILL counts), a
    command-line (argparse) error, a model load error, an invalid configuration
    value, a busy port. Only lines at ERROR/CRITICAL level or outside vLLM's
    logger (tracebacks, argparse) are looked at, so warnings never decide.
    ``timed_out`` wins over all of them (a hint names what the log shows); an
    unrecognized log is a ``crash`` described by its root exception line.

    Args:
        log_text: stdout and stderr of the server.
        exit_code: Its exit code (negative: the signal that killed it), or None
            while it still runs.
        timed_out: Whether it failed to become ready within the start-up timeout.

    Returns:
        The failure, with a one-line message that includes a fix hint.
    """
    lines = _split_lines(log_text)
    found: tuple[str, str, LogLine] | None = None
    for kind, check in _CHECKS:
        hit = check(lines)
        if hit is not None:
            found = (kind, hit[0], hit[1])
            break

    if timed_out:
        last = _last_line(lines)
        message = (
            "vLLM did not become ready within the start-up timeout; raise the timeout (a first start compiles "
            "and loads slowly) or look for a hang in the log"
        )
        if found is not None:
            message += f"; the log shows: {found[1]}"
            return Failure("timeout", message, found[2].raw, exit_code)
        if last is not None:
            message += f"; its last line: {_clip(last.message) or _clip(last.raw)}"
        return Failure("timeout", message, last.raw if last else None, exit_code)

    if found is not None:
        return Failure(found[0], found[1], found[2].raw, exit_code)

    root = _root_exception(lines)
    message = _describe_exit(exit_code)
    if root is not None:
        message += f": {_clip(root.message)}"
    message += "; see the server log for the full traceback"
    return Failure("crash", message, root.raw if root else None, exit_code)
