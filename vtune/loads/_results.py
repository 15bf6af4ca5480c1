"""Trial results: per-request records of a load reduced to the numbers an optimizer compares.

A load tool's report is read into :class:`BenchmarkSamples`, one per measured step:
the step's window and one :class:`RequestSample` per request, with a weight (more
than 1 when the tool listed only a sample of its requests). GuideLLM's reports are
read by :func:`vtune.loads._guidellm_report.read_guidellm_report`; nothing here
depends on GuideLLM.

Every number is computed here from those per-request records, over the same
measurement window the tool uses, so that several steps (several benchmarks, possibly
in several reports) combine exactly: requests and events are pooled and measured
seconds are summed. Latency percentiles and request counts cover the requests that
overlap the window ``[measure_start_time, measure_end_time]`` (GuideLLM's rule);
rates count what happened inside it: requests that ended in it, and output tokens
that arrived in it (the first at its arrival, the rest spread evenly up to the last
token, as GuideLLM spreads them), so edge effects of short steps do not inflate them.
Percentiles use GuideLLM's rule (smallest value whose cumulative weight reaches the
percentile), so single-step TTFT and latency percentiles equal GuideLLM's own. ITL
and TPOT percentiles are taken over requests (each request's mean), as vLLM's
``benchmark_serving`` does, while GuideLLM weights those two by tokens.

Goodput follows DistServe and vLLM's ``benchmark_serving``: completed requests per
second that meet every per-request objective (TTFT, the request's mean ITL, TPOT and
end-to-end latency, each at most its ``max_ms``). A request with at most one output
token has no inter-token gap and meets the ITL objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vtune._errors import VtuneError
from vtune._workload import Slo

__all__ = [
    "SCHEMA_VERSION",
    "BenchmarkSamples",
    "Percentiles",
    "RequestSample",
    "TrialResult",
    "percentile",
    "summarize",
]

#: Version of the :class:`TrialResult` dictionary layout.
SCHEMA_VERSION = 1


def _clean(value: float) -> float | None:
    """Maps NaN to None for JSON."""
    return None if math.isnan(value) else value


def _unclean(value: Any) -> float:
    """Maps None back to NaN."""
    return math.nan if value is None else float(value)


def percentile(values: Sequence[float], pct: float, weights: Sequence[float] | None = None) -> float:
    """Returns the smallest value whose cumulative weight reaches ``pct`` percent.

    This is GuideLLM's rule (inverse of the empirical CDF, no interpolation), with
    the boundary exact: the cumulative weight is compared with ``pct`` percent of
    the total in the weights' own units, with a 1e-9 relative tolerance, so p90 of
    10 values is the 9th (summing 0.1 nine times gives 0.8999..., below 0.9, and
    would pick the 10th, as GuideLLM's float cumsum does).

    Args:
        values: Observations.
        pct: Percentile in [0, 100].
        weights: Weight of each observation (default 1 each).

    Returns:
        The percentile, or NaN when there are no observations.
    """
    if not values:
        return math.nan
    w = [1.0] * len(values) if weights is None else [float(x) for x in weights]
    pairs = sorted(zip(values, w, strict=True), key=lambda vw: vw[0])
    total = sum(x for _, x in pairs)
    if total <= 0:
        return math.nan
    target = pct / 100.0 * total - 1e-9 * total
    cum = 0.0
    for value, weight in pairs:
        cum += weight
        if cum >= target:
            return float(value)
    return float(pairs[-1][0])


@dataclass(frozen=True)
class Percentiles:
    """Summary of one latency metric across requests (milliseconds).

    Attributes:
        p50: Median.
        p90: 90th percentile.
        p99: 99th percentile.
        mean: Mean. All are NaN when no request measured the metric.
    """

    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def from_values(cls, values: Sequence[float], weights: Sequence[float] | None = None) -> Percentiles:
        """Summarizes observations (optionally weighted)."""
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan)
        w = [1.0] * len(values) if weights is None else list(weights)
        total = sum(w)
        mean = sum(v * x for v, x in zip(values, w, strict=True)) / total if total > 0 else math.nan
        return cls(
            p50=percentile(values, 50, w),
            p90=percentile(values, 90, w),
            p99=percentile(values, 99, w),
            mean=mean,
        )

    def to_dict(self) -> dict[str, float | None]:
        """Returns the summary as a JSON-ready mapping (NaN as null)."""
        return {"p50": _clean(self.p50), "p90": _clean(self.p90), "p99": _clean(self.p99), "mean": _clean(self.mean)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Percentiles:
        """Reads a summary written by :meth:`to_dict`."""
        return cls(
            p50=_unclean(data.get("p50")),
            p90=_unclean(data.get("p90")),
            p99=_unclean(data.get("p99")),
            mean=_unclean(data.get("mean")),
        )


@dataclass(frozen=True)
class RequestSample:
    """The numbers of one request of a load.

    Attributes:
        status: ``successful``, ``errored`` or ``incomplete``.
        ttft_ms: Time to first token, or None.
        itl_ms: Mean inter-token latency after the first token, or None (<= 1 token).
        tpot_ms: Mean time per output token including the first, or None.
        e2e_latency_ms: End-to-end latency, or None.
        prompt_tokens: Prompt tokens, or None.
        output_tokens: Output tokens, or None.
        weight: How many requests this record stands for (1 unless GuideLLM sampled).
        end_s: When the request ended (Unix seconds), or None.
        first_token_s: When its first token arrived (Unix seconds), or None.
        last_token_s: When its last token arrived (Unix seconds), or None.
    """

    status: str
    ttft_ms: float | None
    itl_ms: float | None
    tpot_ms: float | None
    e2e_latency_ms: float | None
    prompt_tokens: int | None
    output_tokens: int | None
    weight: float = 1.0
    end_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None

    def tokens_within(self, start_s: float, end_s: float) -> float:
        """Output tokens that arrived inside ``[start_s, end_s]``.

        As GuideLLM does, the first token counts at its arrival and the others are
        spread evenly up to the last token; without token timings all count at the end.
        """
        n = self.output_tokens or 0
        if n <= 0:
            return 0.0
        first, last = self.first_token_s, self.last_token_s
        if first is None or last is None or n == 1 or last <= first:
            at = last if last is not None else self.end_s
            return float(n) if at is not None and start_s <= at <= end_s else 0.0
        tokens = 1.0 if start_s <= first <= end_s else 0.0
        overlap = max(0.0, min(last, end_s) - max(first, start_s))
        return tokens + (n - 1) * overlap / (last - first)

    def meets(self, slo: Slo) -> bool:
        """Tells whether this request meets every per-request objective of ``slo``."""
        if self.status != "successful":
            return False
        if self.ttft_ms is None or self.ttft_ms > slo.ttft_ms.max_ms:
            return False
        if self.itl_ms is not None and self.itl_ms > slo.itl_ms.max_ms:
            return False
        if slo.tpot_ms is not None and (self.tpot_ms is None or self.tpot_ms > slo.tpot_ms.max_ms):
            return False
        if slo.e2e_ms is not None and (self.e2e_latency_ms is None or self.e2e_latency_ms > slo.e2e_ms.max_ms):
            return False
        return True


@dataclass
class BenchmarkSamples:
    """The requests of one measured step (one GuideLLM benchmark) inside its window.

    Attributes:
        report_path: The raw report it came from.
        benchmark_index: Index of the benchmark in that report.
        strategy: The load tool's strategy name, e.g. GuideLLM's ``concurrent``.
        measure_start_s: Start of the measured window (Unix seconds).
        measure_end_s: End of the measured window (Unix seconds).
        requests: Requests overlapping the window.
        sampled: Whether the tool listed only a sample (weights then exceed 1).
    """

    report_path: str
    benchmark_index: int
    strategy: str
    measure_start_s: float
    measure_end_s: float
    requests: list[RequestSample] = field(default_factory=list)
    sampled: bool = False

    @property
    def duration_s(self) -> float:
        """Measured seconds."""
        return max(0.0, self.measure_end_s - self.measure_start_s)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class TrialResult:
    """What one load run measured, over all its steps.

    Attributes:
        output_tokens_per_second: Output tokens of completed requests that arrived in
            the measured windows, per measured second.
        requests_per_second: Requests completed in the measured windows per second.
        goodput_requests_per_second: Of those, the ones meeting every objective, per second.
        ttft_ms: Time to first token across completed requests.
        itl_ms: Per-request mean inter-token latency across completed requests.
        tpot_ms: Per-request mean time per output token (first token included).
        e2e_latency_ms: End-to-end request latency across completed requests.
        successful_requests: Completed requests in the measured windows.
        errored_requests: Requests that failed.
        incomplete_requests: Requests cancelled when a step ended.
        duration_s: Measured seconds (sum over steps).
        slo_attainment: Fraction of finished (completed or errored) requests meeting
            every objective.
        slo_met: Per objective (``ttft_ms``, ``itl_ms``, ...), whether its percentile
            is within its limit.
        slo_observed_ms: Per objective, the measured value at its percentile (None if
            nothing was measured).
        raw_report_paths: The GuideLLM JSON reports this was computed from.
        steps: Number of benchmarks (steps) combined.
        sampled: Whether any report listed only a sample of its requests.
        schema_version: Layout version of :meth:`to_dict`.
        prefix_cache_hit_rate: Prompt tokens served from the server's prefix cache
            over prompt tokens looked up there, 0 to 1, during the load (from vLLM's
            ``/metrics``); None when not measured or prefix caching was off.
    """

    output_tokens_per_second: float
    requests_per_second: float
    goodput_requests_per_second: float
    ttft_ms: Percentiles
    itl_ms: Percentiles
    tpot_ms: Percentiles
    e2e_latency_ms: Percentiles
    successful_requests: int
    errored_requests: int
    incomplete_requests: int
    duration_s: float
    slo_attainment: float
    slo_met: dict[str, bool]
    slo_observed_ms: dict[str, float | None] = field(default_factory=dict)
    raw_report_paths: list[str] = field(default_factory=list)
    steps: int = 0
    sampled: bool = False
    schema_version: int = SCHEMA_VERSION
    prefix_cache_hit_rate: float | None = None

    @property
    def all_slos_met(self) -> bool:
        """True when every objective is met at its percentile."""
        return bool(self.slo_met) and all(self.slo_met.values())

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping (NaN as null)."""
        return {
            "schema_version": self.schema_version,
            "output_tokens_per_second": self.output_tokens_per_second,
            "requests_per_second": self.requests_per_second,
            "goodput_requests_per_second": self.goodput_requests_per_second,
            "ttft_ms": self.ttft_ms.to_dict(),
            "itl_ms": self.itl_ms.to_dict(),
            "tpot_ms": self.tpot_ms.to_dict(),
            "e2e_latency_ms": self.e2e_latency_ms.to_dict(),
            "successful_requests": self.successful_requests,
            "errored_requests": self.errored_requests,
            "incomplete_requests": self.incomplete_requests,
            "duration_s": self.duration_s,
            "slo_attainment": self.slo_attainment,
            "slo_met": dict(self.slo_met),
            "slo_observed_ms": dict(self.slo_observed_ms),
            "raw_report_paths": list(self.raw_report_paths),
            "steps": self.steps,
            "sampled": self.sampled,
            "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
        }

    def with_server_metrics(self, metrics: Mapping[str, Any] | None) -> TrialResult:
        """A copy carrying what the server's ``/metrics`` told of the load (the prefix-cache hit rate).

        Args:
            metrics: :meth:`vtune.engines.MetricsSampler.summary` of the load's window.
        """
        rate = _opt_float((metrics or {}).get("prefix_cache_hit_rate"))
        return replace(self, prefix_cache_hit_rate=rate)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """Reads a mapping written by :meth:`to_dict`.

        Raises:
            VtuneError: If the layout version is unknown or a field is missing.
        """
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise VtuneError(f"trial result has schema_version {version!r}, expected {SCHEMA_VERSION}; rerun the trial")
        try:
            return cls(
                output_tokens_per_second=float(data["output_tokens_per_second"]),
                requests_per_second=float(data["requests_per_second"]),
                goodput_requests_per_second=float(data["goodput_requests_per_second"]),
                ttft_ms=Percentiles.from_dict(data["ttft_ms"]),
                itl_ms=Percentiles.from_dict(data["itl_ms"]),
                tpot_ms=Percentiles.from_dict(data["tpot_ms"]),
                e2e_latency_ms=Percentiles.from_dict(data["e2e_latency_ms"]),
                successful_requests=int(data["successful_requests"]),
                errored_requests=int(data["errored_requests"]),
                incomplete_requests=int(data["incomplete_requests"]),
                duration_s=float(data["duration_s"]),
                slo_attainment=float(data["slo_attainment"]),
                slo_met={str(k): bool(v) for k, v in data["slo_met"].items()},
                slo_observed_ms={str(k): _opt_float(v) for k, v in (data.get("slo_observed_ms") or {}).items()},
                raw_report_paths=[str(p) for p in data.get("raw_report_paths", [])],
                steps=int(data.get("steps", 0)),
                sampled=bool(data.get("sampled", False)),
                schema_version=int(version),
                prefix_cache_hit_rate=_opt_float(data.get("prefix_cache_hit_rate")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VtuneError(f"trial result is missing or has a bad field ({exc!r}); rerun the trial") from None


def summarize(benchmarks: Iterable[BenchmarkSamples], slo: Slo) -> TrialResult:
    """Combines benchmarks (steps) into one result: requests pooled, seconds summed.

    Args:
        benchmarks: Parsed steps, e.g. from
            :func:`vtune.loads._guidellm_report.read_guidellm_report`.
        slo: Objectives for goodput, attainment and ``slo_met``.
    """
    benches = list(benchmarks)
    duration_s = sum(b.duration_s for b in benches)
    reqs = [r for b in benches for r in b.requests]
    ok = [r for r in reqs if r.status == "successful"]

    def weighted(metric: str) -> tuple[list[float], list[float]]:
        vals, wts = [], []
        for r in ok:
            v = getattr(r, metric)
            if v is not None:
                vals.append(float(v))
                wts.append(r.weight)
        return vals, wts

    def count(status: str) -> int:
        return round(sum(r.weight for r in reqs if r.status == status))

    # Rates count events inside each step's window: requests that ended in it and
    # output tokens that arrived in it (latencies cover every overlapping request).
    done_weight = 0.0
    good_done_weight = 0.0
    out_tokens = 0.0
    for b in benches:
        lo, hi = b.measure_start_s, b.measure_end_s
        for r in b.requests:
            if r.status != "successful":
                continue
            out_tokens += r.weight * r.tokens_within(lo, hi)
            if r.end_s is not None and lo <= r.end_s <= hi:
                done_weight += r.weight
                if r.meets(slo):
                    good_done_weight += r.weight
    ok_weight = sum(r.weight for r in ok)
    good_weight = sum(r.weight for r in ok if r.meets(slo))
    finished_weight = ok_weight + sum(r.weight for r in reqs if r.status == "errored")
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: 0.0)

    slo_met: dict[str, bool] = {}
    observed: dict[str, float | None] = {}
    metric_of = {"ttft_ms": "ttft_ms", "itl_ms": "itl_ms", "tpot_ms": "tpot_ms", "e2e_ms": "e2e_latency_ms"}
    for name, target in slo.items():
        vals, wts = weighted(metric_of[name])
        value = percentile(vals, target.percentile, wts)
        observed[name] = _clean(value)
        slo_met[name] = (not math.isnan(value)) and value <= target.max_ms

    return TrialResult(
        output_tokens_per_second=per_s(out_tokens),
        requests_per_second=per_s(done_weight),
        goodput_requests_per_second=per_s(good_done_weight),
        ttft_ms=Percentiles.from_values(*weighted("ttft_ms")),
        itl_ms=Percentiles.from_values(*weighted("itl_ms")),
        tpot_ms=Percentiles.from_values(*weighted("tpot_ms")),
        e2e_latency_ms=Percentiles.from_values(*weighted("e2e_latency_ms")),
        successful_requests=count("successful"),
        errored_requests=count("errored"),
        incomplete_requests=count("incomplete"),
        duration_s=duration_s,
        slo_attainment=good_weight / finished_weight if finished_weight > 0 else 0.0,
        slo_met=slo_met,
        slo_observed_ms=observed,
        raw_report_paths=list(dict.fromkeys(b.report_path for b in benches)),
        steps=len(benches),
        sampled=any(b.sampled for b in benches),
    )
