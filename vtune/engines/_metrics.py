"""Samples vLLM's Prometheus ``/metrics`` while load runs.

The gauges and counters that tell whether a configuration is starved of KV cache
are read here. Their names moved between vLLM versions, so each quantity is looked
up under every name it has had:

================== ==================================================================
quantity           metric names (first present wins)
================== ==================================================================
KV cache usage     ``vllm:kv_cache_usage_perc`` (a fraction 0..1 despite the name),
                   ``vllm:gpu_cache_usage_perc`` (older releases)
running requests   ``vllm:num_requests_running``
waiting requests   ``vllm:num_requests_waiting``
preemptions        ``vllm:num_preemptions_total``, ``vllm:num_preemptions``
generated tokens   ``vllm:generation_tokens_total``
prompt tokens      ``vllm:prompt_tokens_total``
prefix cache       ``vllm:prefix_cache_queries_total`` and ``vllm:prefix_cache_hits_total``
                   (prompt tokens looked up in / found in the prefix cache; vLLM 0.7+),
                   ``vllm:gpu_prefix_cache_queries_total`` / ``..._hits_total`` (older)
================== ==================================================================

The prefix-cache hit rate of a window (:meth:`MetricsSampler.summary`'s
``prefix_cache_hit_rate``, 0 to 1) is hits over queries between its first and last
reading; None when the server exports no such counters or nothing was looked up
(prefix caching off).

With data parallelism one API server exports one series per engine (label
``engine="0"``, ``"1"``, ...). Counts (running, waiting, preemptions, tokens) are
summed over engines; KV usage is averaged (each replica has its own cache of the
same size), and the busiest engine's usage is kept as well.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from vtune.engines import _http

__all__ = ["MetricsSample", "MetricsSampler", "fetch_metrics", "parse_metrics", "parse_prometheus_text",
           "prefix_hit_rate"]

KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING_NAMES = ("vllm:num_requests_running",)
WAITING_NAMES = ("vllm:num_requests_waiting",)
PREEMPTION_NAMES = ("vllm:num_preemptions_total", "vllm:num_preemptions")
GENERATION_TOKEN_NAMES = ("vllm:generation_tokens_total",)
PROMPT_TOKEN_NAMES = ("vllm:prompt_tokens_total",)
PREFIX_QUERY_NAMES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HIT_NAMES = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')

Series = list[tuple[dict[str, str], float]]


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_prometheus_text(text: str) -> dict[str, Series]:
    """Parses the Prometheus text exposition format.

    Args:
        text: A ``/metrics`` response body.

    Returns:
        ``{metric name: [(labels, value), ...]}`` for every sample line;
        comments and malformed lines are skipped.
    """
    out: dict[str, Series] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(match.group("labels") or "")}
        out.setdefault(match.group("name"), []).append((labels, value))
    return out


@dataclass
class MetricsSample:
    """One reading of ``/metrics``, aggregated over engines.

    Attributes:
        time_s: ``time.monotonic()`` when the reading was taken.
        engines: Engine series seen (data-parallel replicas); 0 if none.
        kv_cache_usage: Mean KV cache usage over engines, fraction 0..1.
        kv_cache_usage_max_engine: The busiest engine's KV cache usage.
        num_requests_running: Requests running, summed over engines.
        num_requests_waiting: Requests waiting, summed over engines.
        num_preemptions: Preemptions counter since start, summed over engines.
        generation_tokens: Generated-tokens counter, summed over engines.
        prompt_tokens: Prompt-tokens counter, summed over engines.
        prefix_cache_queries: Prompt tokens looked up in the prefix cache (counter).
        prefix_cache_hits: Of those, tokens found there (counter).
    """

    time_s: float
    engines: int = 0
    kv_cache_usage: float | None = None
    kv_cache_usage_max_engine: float | None = None
    num_requests_running: float | None = None
    num_requests_waiting: float | None = None
    num_preemptions: float | None = None
    generation_tokens: float | None = None
    prompt_tokens: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


def _first(metrics: dict[str, Series], names: Sequence[str]) -> Series | None:
    for name in names:
        series = metrics.get(name)
        if series:
            return [(labels, v) for labels, v in series if not math.isnan(v)]
    return None


def _sum(series: Series | None) -> float | None:
    return None if not series else float(sum(v for _, v in series))


def parse_metrics(text: str, *, time_s: float | None = None) -> MetricsSample:
    """Turns a ``/metrics`` body into a :class:`MetricsSample`.

    Args:
        text: The Prometheus text.
        time_s: Timestamp to record; default ``time.monotonic()``.

    Returns:
        The sample; quantities the server does not export are None.
    """
    metrics = parse_prometheus_text(text)
    kv = _first(metrics, KV_USAGE_NAMES)
    running = _first(metrics, RUNNING_NAMES)
    engines = {labels.get("engine", "") for labels, _ in (kv or running or [])}
    return MetricsSample(
        time_s=time.monotonic() if time_s is None else time_s,
        engines=len(engines),
        kv_cache_usage=None if not kv else sum(v for _, v in kv) / len(kv),
        kv_cache_usage_max_engine=None if not kv else max(v for _, v in kv),
        num_requests_running=_sum(running),
        num_requests_waiting=_sum(_first(metrics, WAITING_NAMES)),
        num_preemptions=_sum(_first(metrics, PREEMPTION_NAMES)),
        generation_tokens=_sum(_first(metrics, GENERATION_TOKEN_NAMES)),
        prompt_tokens=_sum(_first(metrics, PROMPT_TOKEN_NAMES)),
        prefix_cache_queries=_sum(_first(metrics, PREFIX_QUERY_NAMES)),
        prefix_cache_hits=_sum(_first(metrics, PREFIX_HIT_NAMES)),
    )


def _metrics_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else url + "/metrics"


def fetch_metrics(url: str, *, timeout_s: float = 5.0) -> MetricsSample:
    """Reads ``/metrics`` once.

    Args:
        url: The server's base URL (``http://host:port``) or its ``/metrics`` URL.
        timeout_s: HTTP time-out.

    Returns:
        The parsed sample.

    Raises:
        OSError: The server did not answer, or not with 200. Proxies are never
            used (see :mod:`vtune.engines._http`).
    """
    body = _http.get(_metrics_url(url), timeout_s=timeout_s).decode("utf-8", errors="replace")
    return parse_metrics(body)


def _values(samples: Sequence[MetricsSample], attr: str) -> list[float]:
    return [v for v in (getattr(s, attr) for s in samples) if v is not None]


@dataclass
class MetricsSampler:
    """Reads ``/metrics`` every ``interval_s`` on a background thread.

    Use as a context manager around the load, or call :meth:`start` and
    :meth:`stop`. A reading is taken at start and at stop, so counter deltas cover
    the whole window. Failed reads are counted, never raised.

    Args:
        url: The server's base URL or its ``/metrics`` URL.
        interval_s: Seconds between readings.
        timeout_s: HTTP time-out of one reading.
    """

    url: str
    interval_s: float = 2.0
    timeout_s: float = 5.0
    samples: list[MetricsSample] = field(default_factory=list, init=False)
    fetch_errors: int = field(default=0, init=False)
    last_error: str | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _started_s: float | None = field(default=None, init=False, repr=False)
    _stopped_s: float | None = field(default=None, init=False, repr=False)

    def _read_once(self) -> None:
        try:
            sample = fetch_metrics(self.url, timeout_s=self.timeout_s)
        except (OSError, ValueError) as exc:  # HttpError is an OSError
            with self._lock:
                self.fetch_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.samples.append(sample)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read_once()
            self._stop.wait(self.interval_s)

    def start(self) -> MetricsSampler:
        """Starts sampling (the first reading is taken at once)."""
        if self._thread is not None:
            raise RuntimeError("MetricsSampler already started")
        self._stop.clear()
        self._started_s = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="vtune-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops sampling after one last reading; safe to call twice."""
        thread = self._thread
        if thread is None or self._stopped_s is not None:
            return
        self._stop.set()
        thread.join(timeout=self.timeout_s + self.interval_s + 1.0)
        self._read_once()
        self._stopped_s = time.monotonic()

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def snapshot(self) -> list[MetricsSample]:
        """A copy of the samples so far (safe while sampling runs)."""
        with self._lock:
            return list(self.samples)

    def summary(self) -> dict[str, Any]:
        """Aggregates of the window.

        Returns:
            ``samples``, ``fetch_errors``, ``duration_s``, ``engines``,
            ``kv_cache_usage_max``, ``kv_cache_usage_mean``,
            ``kv_cache_usage_max_engine``, ``num_requests_running_max``,
            ``num_requests_running_mean``, ``num_requests_waiting_max``,
            ``num_preemptions_delta``, ``generation_tokens_delta``,
            ``prefix_cache_queries_delta``, ``prefix_cache_hits_delta`` and
            ``prefix_cache_hit_rate`` (hits / queries, 0 to 1; None when nothing
            was looked up); a quantity never read is None.
        """
        samples = self.snapshot()
        kv = _values(samples, "kv_cache_usage")
        kv_engine = _values(samples, "kv_cache_usage_max_engine")
        running = _values(samples, "num_requests_running")
        waiting = _values(samples, "num_requests_waiting")

        def delta(attr: str) -> float | None:
            values = _values(samples, attr)
            return values[-1] - values[0] if values else None

        end_s = self._stopped_s if self._stopped_s is not None else time.monotonic()
        queries, hits = delta("prefix_cache_queries"), delta("prefix_cache_hits")
        return {
            "samples": len(samples),
            "fetch_errors": self.fetch_errors,
            "duration_s": None if self._started_s is None else end_s - self._started_s,
            "engines": max((s.engines for s in samples), default=0),
            "kv_cache_usage_max": max(kv) if kv else None,
            "kv_cache_usage_mean": sum(kv) / len(kv) if kv else None,
            "kv_cache_usage_max_engine": max(kv_engine) if kv_engine else None,
            "num_requests_running_max": max(running) if running else None,
            "num_requests_running_mean": sum(running) / len(running) if running else None,
            "num_requests_waiting_max": max(waiting) if waiting else None,
            "num_preemptions_delta": delta("num_preemptions"),
            "generation_tokens_delta": delta("generation_tokens"),
            "prefix_cache_queries_delta": queries,
            "prefix_cache_hits_delta": hits,
            "prefix_cache_hit_rate": prefix_hit_rate(queries, hits),
        }


def prefix_hit_rate(queries: float | None, hits: float | None) -> float | None:
    """Hits over queries, clipped to [0, 1]; None when either is unknown or nothing was looked up."""
    if queries is None or hits is None or queries <= 0:
        return None
    return min(1.0, max(0.0, hits / queries))
