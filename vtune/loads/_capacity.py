"""Capacity search: the highest load at which a configuration still meets the workload's SLOs.

(One module of about 790 lines: the SLO rule, the probe and result types, the search
state machine and its driver change together, since a result records the rule and the
search settings it came from; the GuideLLM child lives apart in ``_capacity_probe``.)

One trial used to measure a configuration at one load the user had to guess (the
workload's streams, sized for the CPU engine); on a large GPU every configuration then
ties. :func:`run_capacity_search` instead asks the running engine how much traffic it
serves within the objectives (DistServe's goodput: the highest load whose SLO
attainment holds; vLLM's ``auto_tune.sh`` lowers the request rate until its P99 limit
holds). The answer is a :class:`CapacityResult`: the capacity in concurrent streams,
the requests/s, output tokens/s and latencies at that load, and every probe.

**Load.** Probes are closed-loop: ``n`` streams, each sending its next request when the
last one ends (GuideLLM's ``concurrent`` profile). Every level has a steady state,
whereas an open-loop rate above capacity builds a backlog whose latencies describe
the backlog. Only the workload's prompts, output lengths and objectives are used, not
its load kind, so the same workload file serves the CPU engine and an H200.

**Search.** Doubling from ``start_streams`` until a probe fails (or halving down from it
when the first fails), then bisection between the highest passing and the lowest
failing level until ``failing - passing <= max(1, tolerance * passing)``. It also stops
at ``max_streams`` (all passed: a lower bound), after ``max_probes``, when ``on_probe``
returns False, or at a probe that only got errors (the engine does not serve).
:class:`CapacitySearch` is that state machine alone; :attr:`CapacityResult.bounded_by`
says which of ``slo``, ``errors``, ``max_streams``, ``max_probes``, ``stopped`` ended it.

**SLO rule** (:func:`judge`). Default, ``attainment_target=None``: each objective at its
own percentile, as the workload file states it (``ttft_ms: {percentile: 90, max_ms:
500}``: the p90 TTFT is at most 500 ms), over the probe's finished requests; an errored
request counts as violating every objective (it delivered nothing in time), a request
of at most one output token meets the ITL objective (it has no gap), incomplete
requests (cancelled at the probe's end) are left out. The percentile is the smallest
value whose cumulative weight reaches it, the project's one rule
(:func:`vtune.loads._results.percentile`: exact at the boundaries, so p90 of 10 values is
the 9th, where GuideLLM's float sums return the 10th). A value equal to ``max_ms`` passes. Alternative,
``attainment_target=0.9``: DistServe's and GuideLLM's form, the fraction of finished
requests meeting every objective at once (:meth:`RequestSample.meets`) must be at
least the target; stricter than the default when objectives fail on different requests.

**Why not GuideLLM's own ``goodput`` profile.** GuideLLM 0.8.1 has one (doubling from
``initial_streams``, bisection to a relative ``tolerance``, ``max_streams``,
``max_probes``, a Wilson interval per probe); its ``knee`` profile looks for a
throughput knee, not for objectives. It was run against the CPU engine (tiny model,
``--max-num-seqs 32``, chatbot prompts, 10 s probes after 2 s warmup, ``target_attainment
0.9``): probes at 4 (attainment 0.951, pass), 8 (0.769, fail), 6 (0.909, pass), 7
(0.773, fail), capacity 6 streams in 59.5 s; vtune's ``slo_attainment`` on the same
reports is identical on every probe (``tests/loads/test_capacity.py`` replays them). It
works, but is unfit as vtune's search because (1) it decides only by combined
attainment, so it cannot apply the workload's per-objective percentiles, vtune's
``tpot_ms`` objective (its ``tpot_ms`` is vtune's ITL, first token excluded) nor
vtune's rule for one-token requests (left undetermined there); (2) its verdicts never
reach the per-probe report (each benchmark's ``config.profile`` holds only the
arguments, as seen in the recorded report; the search trace is written once, in
``conclusions``, after the last probe), so a pruner would have to re-derive them anyway.
Running the search here costs nothing extra: each probe is the same GuideLLM
benchmark (a new Benchmarker run, 2.1-2.6 s between probes in both designs).

**Cost.** On the CPU engine (2 shared cores, tiny model, chatbot prompts, 8 s probes
after 2 s warmup, tolerance 0.25) a probe took 12-15 s wall; ``--max-num-seqs 32`` from
8 streams took 5 probes in 67 s (capacity 16), ``--max-num-seqs 2`` from 2 streams 3
probes in 39 s (capacity 2), see ``tests/loads/test_e2e_capacity.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError
from vtune._workload import Slo, Workload
from vtune.loads._capacity_probe import PreparedCapacitySearch, prepare_capacity_search
from vtune.loads._guidellm_report import read_guidellm_report
from vtune.loads._results import BenchmarkSamples, Percentiles, TrialResult, percentile, summarize

__all__ = [
    "BOUNDS",
    "SCHEMA_VERSION",
    "CapacityPerGpu",
    "CapacityResult",
    "CapacitySearch",
    "Probe",
    "Verdict",
    "capacity_per_gpu",
    "gpus_for_rate",
    "judge",
    "probes_from_report",
    "read_capacity_result",
    "replicas_for_rate",
    "run_capacity_search",
]

#: Version of the :class:`CapacityResult` / :class:`Probe` dictionary layout.
SCHEMA_VERSION = 1
#: What can end a search (:attr:`CapacityResult.bounded_by`).
BOUNDS = ("slo", "errors", "max_streams", "max_probes", "stopped")
DEFAULT_MAX_STREAMS = 1024
DEFAULT_START_STREAMS = 4  # for workloads that name no streams
_RESULT_NAME = "capacity_result.json"
_REL_EPS = 1e-9
_METRIC_OF = {"ttft_ms": "ttft_ms", "itl_ms": "itl_ms", "tpot_ms": "tpot_ms", "e2e_ms": "e2e_latency_ms"}


def _clean(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


# ----------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Verdict:
    """Whether one probe met the objectives.

    Attributes:
        slo_met: The probe passes.
        slo_attainment: Fraction of finished requests meeting every objective.
        observed_ms: Per objective, its value at its percentile over finished requests
            (None when nothing finished or errors reach that percentile).
        fail_reason: None when passed; ``errors`` when errored requests alone exceed
            what the rule allows; ``slo`` otherwise.
        error_fraction: Errored share of the finished requests.
    """

    slo_met: bool
    slo_attainment: float
    observed_ms: dict[str, float | None]
    fail_reason: str | None
    error_fraction: float


def _exact_percentile(pairs: list[tuple[float, float]], pct: float) -> float:
    """Smallest value whose cumulative weight reaches ``pct`` percent (NaN when empty): the project's one rule."""
    if not pairs:
        return math.nan
    return percentile([v for v, _ in pairs], pct, [w for _, w in pairs])


def judge(benches: Sequence[BenchmarkSamples], slo: Slo, attainment_target: float | None = None) -> Verdict:
    """Applies the SLO rule (module docstring) to a probe's requests.

    Args:
        benches: The probe's benchmark(s), as :func:`read_guidellm_report` returns them.
        slo: The workload's objectives.
        attainment_target: None for each objective at its percentile; a fraction in
            (0, 1) for the attainment form.
    """
    finished = [r for b in benches for r in b.requests if r.status in ("successful", "errored")]
    weight = sum(r.weight for r in finished)
    errored = sum(r.weight for r in finished if r.status == "errored")
    good = sum(r.weight for r in finished if r.meets(slo))
    attainment = good / weight if weight > 0 else 0.0
    error_fraction = errored / weight if weight > 0 else 0.0
    observed: dict[str, float | None] = {}
    each_met = True
    for name, target in slo.items():
        pairs = []
        for r in finished:
            value = getattr(r, _METRIC_OF[name]) if r.status == "successful" else None
            if value is None:
                value = 0.0 if (name == "itl_ms" and r.status == "successful") else math.inf
            pairs.append((float(value), r.weight))
        at = _exact_percentile(pairs, target.percentile)
        observed[name] = _clean(at)
        each_met = each_met and not math.isnan(at) and at <= target.max_ms
    if attainment_target is None:
        passed = weight > 0 and each_met
        allowed = 1.0 - max(t.percentile for _, t in slo.items()) / 100.0
    else:
        passed = weight > 0 and attainment >= attainment_target * (1.0 - _REL_EPS)
        allowed = 1.0 - attainment_target
    reason = None
    if not passed:
        only_errors = errored > 0 and errored == weight
        reason = "errors" if only_errors or error_fraction > allowed + _REL_EPS else "slo"
    return Verdict(passed, attainment, observed, reason, error_fraction)


# ----------------------------------------------------------------------------- types

#: How :func:`_read_fields` reads a field, by its annotation.
_READERS: dict[str, Callable[[Any], Any]] = {
    "int": int, "float": float, "bool": bool, "str": str,
    "str | None": lambda v: None if v is None else str(v),
    "float | None": lambda v: None if v is None else float(v),
    "Percentiles": lambda v: Percentiles.from_dict(v),
    "dict[str, float | None]": lambda v: {str(k): None if x is None else float(x) for k, x in v.items()},
    "dict[str, dict[str, float]]": lambda v: {str(k): {str(a): float(b) for a, b in x.items()} for k, x in v.items()},
    "list[Probe]": lambda v: [Probe.from_dict(p) for p in v],
}


def _read_fields(cls: Any, data: Mapping[str, Any], *, skip: Sequence[str] = (),
                 required: Sequence[str] = ()) -> dict[str, Any]:
    """The dataclass ``cls``'s fields read from ``data`` by their annotations (:data:`_READERS`).

    A field with a default may be missing (the default then applies), unless ``required``
    names it; one without is required (KeyError). Bad values raise TypeError/ValueError.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if optional and f.name not in data and f.name not in required:
            continue
        out[f.name] = _READERS[str(f.type)](data[f.name])
    return out



@dataclass(frozen=True)
class Probe:
    """One constant-concurrency probe of the search.

    Attributes:
        index: Probe number, from 0.
        streams: Concurrent streams (closed loop).
        slo_met: Whether it met the objectives (:func:`judge`).
        fail_reason: None, ``slo`` or ``errors``.
        slo_attainment: Fraction of finished requests meeting every objective (0-1).
        slo_observed_ms: Per objective, its value at its percentile (None: unmeasurable).
        requests_per_second: Requests completed in the measured window per second.
        output_tokens_per_second: Output tokens that arrived in the window per second.
        goodput_requests_per_second: Completed requests meeting every objective per second.
        ttft_ms: Time to first token of completed requests (p50/p90/p99/mean).
        itl_ms: Per-request mean inter-token latency.
        tpot_ms: Per-request mean time per output token (first token included).
        e2e_latency_ms: End-to-end latency.
        requests: Completed requests in the window.
        errored_requests: Requests that failed.
        incomplete_requests: Requests cancelled at the probe's end.
        seconds: Measured seconds (warmup excluded).
        wall_s: Seconds the probe took from command to report (warmup, drain, workers).
        report_path: The probe's raw GuideLLM JSON report.
    """

    index: int
    streams: int
    slo_met: bool
    fail_reason: str | None
    slo_attainment: float
    slo_observed_ms: dict[str, float | None]
    requests_per_second: float
    output_tokens_per_second: float
    goodput_requests_per_second: float
    ttft_ms: Percentiles
    itl_ms: Percentiles
    tpot_ms: Percentiles
    e2e_latency_ms: Percentiles
    requests: int
    errored_requests: int
    incomplete_requests: int
    seconds: float
    wall_s: float = 0.0
    report_path: str = ""

    @classmethod
    def from_benchmarks(
        cls,
        benches: Sequence[BenchmarkSamples],
        *,
        index: int,
        streams: int,
        slo: Slo,
        attainment_target: float | None = None,
        wall_s: float = 0.0,
    ) -> Probe:
        """Measures and judges one probe's benchmark(s)."""
        res = summarize(benches, slo)
        verdict = judge(benches, slo, attainment_target)
        return cls(
            index=index,
            streams=streams,
            slo_met=verdict.slo_met,
            fail_reason=verdict.fail_reason,
            slo_attainment=verdict.slo_attainment,
            slo_observed_ms=verdict.observed_ms,
            requests_per_second=res.requests_per_second,
            output_tokens_per_second=res.output_tokens_per_second,
            goodput_requests_per_second=res.goodput_requests_per_second,
            ttft_ms=res.ttft_ms,
            itl_ms=res.itl_ms,
            tpot_ms=res.tpot_ms,
            e2e_latency_ms=res.e2e_latency_ms,
            requests=res.successful_requests,
            errored_requests=res.errored_requests,
            incomplete_requests=res.incomplete_requests,
            seconds=res.duration_s,
            wall_s=wall_s,
            report_path=res.raw_report_paths[0] if res.raw_report_paths else "",
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping (NaN as null)."""
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            out[key] = value.to_dict() if isinstance(value, Percentiles) else value
        out["slo_observed_ms"] = dict(self.slo_observed_ms)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        """Reads a mapping written by :meth:`to_dict` (KeyError/TypeError/ValueError if bad)."""
        return cls(**_read_fields(cls, data))


_DESCRIPTION = {
    "capacity_streams": "highest concurrent streams (closed loop) that met the objectives; 0 if none did",
    "requests_per_second": "completed requests/s at capacity (what one such server sustains within the SLOs)",
    "output_tokens_per_second": "output tokens/s at capacity",
    "goodput_requests_per_second": "completed requests/s meeting every objective at capacity",
    "ttft_ms, itl_ms, tpot_ms, e2e_latency_ms": "latency percentiles at capacity {p50, p90, p99, mean} in ms",
    "slo_attainment": "fraction of finished requests meeting every objective at capacity (0-1)",
    "bounded_by": "what ended the search: slo (converged on an SLO failure), errors (failures from "
    "errored requests), max_streams (all passed up to the cap: a lower bound), max_probes, stopped (on_probe)",
    "slo_rule": "percentile (each objective at its percentile) or attainment (fraction >= attainment_target)",
    "slo": "the workload's objectives {metric: {percentile, max_ms}}",
    "probes": "every probe in order: index, streams, slo_met, fail_reason, slo_attainment, slo_observed_ms, "
    "rates, latency percentiles, requests, errored/incomplete requests, seconds (measured), wall_s, report_path",
    "start_streams, max_streams, tolerance, max_probes, probe_s, warmup_s": "the search's settings",
    "wall_s": "seconds the whole search took",
}


@dataclass(frozen=True)
class CapacityResult:
    """The outcome of a capacity search (see the module docstring).

    Attributes:
        capacity_streams: Highest streams that met the objectives (0 if none did).
        requests_per_second: Completed requests/s at that load.
        output_tokens_per_second: Output tokens/s at that load.
        goodput_requests_per_second: Requests/s meeting every objective at that load.
        ttft_ms: TTFT percentiles at that load (NaN when capacity is 0).
        itl_ms: ITL percentiles at that load.
        tpot_ms: TPOT percentiles at that load.
        e2e_latency_ms: End-to-end latency percentiles at that load.
        slo_attainment: Attainment at that load.
        bounded_by: One of :data:`BOUNDS`.
        probes: Every probe, in order.
        workload: The workload's name.
        slo: The objectives, as the workload file writes them.
        slo_rule: ``percentile`` or ``attainment``.
        attainment_target: The target of the attainment form, else None.
        start_streams: First probe's streams.
        max_streams: The cap.
        tolerance: Relative bracket width at which bisection stopped.
        max_probes: Probe budget.
        probe_s: Measured seconds a probe.
        warmup_s: Unmeasured seconds before each probe's window.
        wall_s: Seconds the search took.
        schema_version: Layout version of :meth:`to_dict`.
    """

    capacity_streams: int
    requests_per_second: float
    output_tokens_per_second: float
    goodput_requests_per_second: float
    ttft_ms: Percentiles
    itl_ms: Percentiles
    tpot_ms: Percentiles
    e2e_latency_ms: Percentiles
    slo_attainment: float
    bounded_by: str
    probes: list[Probe] = field(default_factory=list)
    workload: str = ""
    slo: dict[str, dict[str, float]] = field(default_factory=dict)
    slo_rule: str = "percentile"
    attainment_target: float | None = None
    start_streams: int = 0
    max_streams: int = 0
    tolerance: float = 0.0
    max_probes: int = 0
    probe_s: float = 0.0
    warmup_s: float = 0.0
    wall_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def converged(self) -> bool:
        """True when a failing probe bounds the capacity (not a lower bound only)."""
        return self.bounded_by in ("slo", "errors")

    @property
    def capacity_probe(self) -> Probe | None:
        """The passing probe at :attr:`capacity_streams` (None when nothing passed)."""
        found = [p for p in self.probes if p.slo_met and p.streams == self.capacity_streams]
        return found[-1] if found else None

    def to_trial_result(self) -> TrialResult | None:
        """The fixed-load result of the probe at capacity (what a trial's ``result`` holds).

        When no probe met the SLOs it is the probe at the fewest streams (what the
        configuration served at the lightest load tried); None when the search ran no
        probe. A latency objective of a capacity study reads it: the latency at capacity.
        """
        probe = self.capacity_probe or (min(self.probes, key=lambda q: q.streams) if self.probes else None)
        if probe is None:
            return None
        limits = {k: float(v.get("max_ms", math.inf)) for k, v in (self.slo or {}).items()}
        met = {k: v is not None and v <= limits.get(k, math.inf) for k, v in probe.slo_observed_ms.items()}
        return TrialResult(
            output_tokens_per_second=probe.output_tokens_per_second, requests_per_second=probe.requests_per_second,
            goodput_requests_per_second=probe.goodput_requests_per_second, ttft_ms=probe.ttft_ms,
            itl_ms=probe.itl_ms, tpot_ms=probe.tpot_ms, e2e_latency_ms=probe.e2e_latency_ms,
            successful_requests=probe.requests, errored_requests=probe.errored_requests,
            incomplete_requests=probe.incomplete_requests, duration_s=probe.seconds,
            slo_attainment=probe.slo_attainment, slo_met=met, slo_observed_ms=dict(probe.slo_observed_ms),
            raw_report_paths=[probe.report_path] if probe.report_path else [], steps=1,
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping (the content of ``capacity_result.json``)."""
        out: dict[str, Any] = {"schema_version": self.schema_version, "description": dict(_DESCRIPTION)}
        for key in self.__dataclass_fields__:
            if key == "schema_version":
                continue
            value = getattr(self, key)
            if isinstance(value, Percentiles):
                value = value.to_dict()
            elif key == "probes":
                value = [p.to_dict() for p in value]
            out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CapacityResult:
        """Reads a mapping written by :meth:`to_dict`.

        Raises:
            VtuneError: If the layout version is unknown or a field is missing or bad.
        """
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise VtuneError(f"capacity result has schema_version {version!r}, expected {SCHEMA_VERSION}; "
                             "rerun the capacity search")
        try:
            return cls(**_read_fields(cls, data, skip=("schema_version",), required=("probes",)),
                       schema_version=int(version))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VtuneError(f"capacity result is missing or has a bad field ({exc!r}); "
                             "rerun the capacity search") from None


def read_capacity_result(path: str | Path) -> CapacityResult:
    """Reads a ``capacity_result.json``.

    Raises:
        VtuneError: If the file is missing, not JSON, or not a capacity result.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise VtuneError(f"cannot read capacity result {path}: {exc.strerror}; check the path") from None
    except ValueError:
        raise VtuneError(f"capacity result {path} is not valid JSON; rerun the capacity search") from None
    if not isinstance(data, dict):
        raise VtuneError(f"{path} is not a capacity result (no mapping); rerun the capacity search")
    return CapacityResult.from_dict(data)


@dataclass(frozen=True)
class CapacityPerGpu:
    """Capacity divided by the GPUs one server uses.

    Attributes:
        streams: Concurrent streams per GPU.
        requests_per_second: Requests/s within the SLOs per GPU.
        output_tokens_per_second: Output tokens/s at capacity per GPU.
    """

    streams: float
    requests_per_second: float
    output_tokens_per_second: float


def _check_gpus(num_gpus: int) -> None:
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise VtuneError(f"num_gpus must be a positive integer, got {num_gpus!r}; give the GPUs one server uses")


def capacity_per_gpu(result: CapacityResult, num_gpus: int) -> CapacityPerGpu:
    """Capacity per GPU of a server that uses ``num_gpus`` GPUs (TP x PP x DP; 1 on the CPU engine).

    Raises:
        VtuneError: ``num_gpus`` is not a positive integer.
    """
    _check_gpus(num_gpus)
    return CapacityPerGpu(
        streams=result.capacity_streams / num_gpus,
        requests_per_second=result.requests_per_second / num_gpus,
        output_tokens_per_second=result.output_tokens_per_second / num_gpus,
    )


def replicas_for_rate(result: CapacityResult, target_rate_rps: float) -> int:
    """Servers of the measured configuration needed for ``target_rate_rps`` requests/s within the SLOs.

    ``ceil(target_rate_rps / result.requests_per_second)``; a quotient within 1e-9 of
    an integer counts as that integer. A server uses its configuration's GPUs, so the
    GPUs needed are ``replicas * num_gpus`` (:func:`gpus_for_rate`).

    Raises:
        VtuneError: The target is negative or not finite, or the configuration met the
            objectives at no load (capacity 0).
    """
    if isinstance(target_rate_rps, bool) or not isinstance(target_rate_rps, int | float) or not (
        math.isfinite(target_rate_rps) and target_rate_rps >= 0
    ):
        raise VtuneError(f"target_rate_rps must be a finite number >= 0, got {target_rate_rps!r}; give requests/s")
    if target_rate_rps == 0:
        return 0
    if result.capacity_streams <= 0 or result.requests_per_second <= 0:
        raise VtuneError(
            f"the configuration met the SLOs at no load (capacity {result.capacity_streams} streams, "
            f"{result.requests_per_second:g} req/s), so no number of replicas serves {target_rate_rps:g} req/s; "
            "loosen the workload's slo or pick another configuration"
        )
    quotient = target_rate_rps / result.requests_per_second
    nearest = round(quotient)
    if abs(quotient - nearest) <= _REL_EPS * max(1.0, quotient):
        return max(1, int(nearest))
    return math.ceil(quotient)


def gpus_for_rate(result: CapacityResult, target_rate_rps: float, num_gpus: int) -> int:
    """GPUs needed for ``target_rate_rps``: :func:`replicas_for_rate` x ``num_gpus``.

    Raises:
        VtuneError: As :func:`replicas_for_rate`, or ``num_gpus`` is not a positive integer.
    """
    _check_gpus(num_gpus)
    return replicas_for_rate(result, target_rate_rps) * num_gpus


# ----------------------------------------------------------------------------- the search


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VtuneError(f"{name} must be an integer >= 1, got {value!r}; raise it")
    return value


class CapacitySearch:
    """Doubling, then bisection, over concurrent streams: the search without any load.

    Ask :attr:`next_streams`, probe it, :meth:`record` the verdict; None means done
    and :attr:`bounded_by` says why. Every probe lies strictly inside the current
    bracket, so no level is probed twice.

    Args:
        start_streams: First level (capped at ``max_streams``).
        max_streams: Highest level probed.
        tolerance: Stop bisecting once ``failing - passing <= max(1, tolerance * passing)``.
        max_probes: Probe budget.

    Raises:
        VtuneError: A setting is out of range (named).
    """

    def __init__(self, *, start_streams: int, max_streams: int, tolerance: float = 0.1, max_probes: int = 15) -> None:
        _positive_int("start_streams", start_streams)
        self.max_streams = _positive_int("max_streams", max_streams)
        self.max_probes = _positive_int("max_probes", max_probes)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance <= 1:
            raise VtuneError(f"tolerance must be in (0, 1], got {tolerance!r}; use e.g. 0.1 (10%)")
        self.tolerance = float(tolerance)
        self.start_streams = min(start_streams, max_streams)
        self.passing: int | None = None
        self.failing: int | None = None
        self.failing_reason = "slo"
        self.probed: list[tuple[int, bool]] = []
        self.bounded_by: str | None = None
        self._next: int | None = self.start_streams

    @property
    def done(self) -> bool:
        """Whether the search has ended."""
        return self.bounded_by is not None

    @property
    def next_streams(self) -> int | None:
        """The level to probe next, or None when done."""
        return None if self.done else self._next

    @property
    def capacity_streams(self) -> int:
        """Highest passing level so far (0 if none)."""
        return self.passing or 0

    def stop(self, reason: str = "stopped") -> None:
        """Ends the search early (``stopped`` by a caller; kept if already done)."""
        if not self.done:
            self.bounded_by = reason

    def record(self, streams: int, passed: bool, *, reason: str | None = None, fatal: bool = False) -> None:
        """Takes the verdict on the level :attr:`next_streams` named.

        Args:
            streams: The level probed.
            passed: Whether it met the objectives.
            reason: Why it failed (``slo`` or ``errors``).
            fatal: The probe got nothing but errors: end with ``errors``.
        """
        if self.done or streams != self._next:
            raise RuntimeError(f"CapacitySearch.record({streams}) but the search asked for {self.next_streams}")
        self.probed.append((streams, passed))
        if passed:
            self.passing = max(self.passing or 0, streams)
        elif self.failing is None or streams < self.failing:
            self.failing = streams
            self.failing_reason = reason or "slo"
        if fatal and not passed:
            self.bounded_by = "errors"
            return
        self._advance()
        if not self.done and len(self.probed) >= self.max_probes:
            self.bounded_by = "max_probes"

    def _advance(self) -> None:
        best, worst = self.passing, self.failing
        if worst is None:
            assert best is not None
            if best >= self.max_streams:
                self.bounded_by = "max_streams"
            else:
                self._next = min(best * 2, self.max_streams)
        elif best is None:
            if worst <= 1:
                self.bounded_by = self.failing_reason
            else:
                self._next = worst // 2
        elif worst - best <= max(1.0, self.tolerance * best):
            self.bounded_by = self.failing_reason
        else:
            self._next = (best + worst) // 2


def probes_from_report(path: str | Path, slo: Slo, *, attainment_target: float | None = None) -> list[Probe]:
    """Judges every concurrent benchmark of a GuideLLM report as a probe (streams read from the report).

    Raises:
        VtuneError: Not a GuideLLM report, or a benchmark that is not ``concurrent``.
    """
    benches = read_guidellm_report(path)
    raw = json.loads(Path(path).read_text())["benchmarks"]
    probes = []
    for i, (bench, data) in enumerate(zip(benches, raw, strict=True)):
        streams = ((data.get("config") or {}).get("strategy") or {}).get("streams")
        if not isinstance(streams, int):
            raise VtuneError(f"{path}: benchmark {i} is not a concurrent benchmark; give a capacity probe report")
        probes.append(Probe.from_benchmarks([bench], index=i, streams=streams, slo=slo,
                                            attainment_target=attainment_target))
    return probes


def _result(search: CapacitySearch, probes: list[Probe], workload: Workload, attainment_target: float | None,
            probe_s: float, warmup_s: float, wall_s: float) -> CapacityResult:
    at = [p for p in probes if p.slo_met and p.streams == search.capacity_streams]
    cap = at[-1] if at else None
    nan = Percentiles(math.nan, math.nan, math.nan, math.nan)
    return CapacityResult(
        capacity_streams=search.capacity_streams,
        requests_per_second=cap.requests_per_second if cap else 0.0,
        output_tokens_per_second=cap.output_tokens_per_second if cap else 0.0,
        goodput_requests_per_second=cap.goodput_requests_per_second if cap else 0.0,
        ttft_ms=cap.ttft_ms if cap else nan,
        itl_ms=cap.itl_ms if cap else nan,
        tpot_ms=cap.tpot_ms if cap else nan,
        e2e_latency_ms=cap.e2e_latency_ms if cap else nan,
        slo_attainment=cap.slo_attainment if cap else 0.0,
        bounded_by=search.bounded_by or "stopped",
        probes=list(probes),
        workload=workload.name,
        slo=workload.slo.to_dict(),
        slo_rule="percentile" if attainment_target is None else "attainment",
        attainment_target=attainment_target,
        start_streams=search.start_streams,
        max_streams=search.max_streams,
        tolerance=search.tolerance,
        max_probes=search.max_probes,
        probe_s=probe_s,
        warmup_s=warmup_s,
        wall_s=wall_s,
    )


def _checked_search(workload: Workload, start_streams: int | None, max_streams: int | None, tolerance: float,
                    max_probes: int, probe_s: float | None, warmup_s: float | None,
                    attainment_target: float | None) -> tuple[CapacitySearch, float, float]:
    """The search and its probe and warmup seconds, every setting checked (VtuneError naming the bad one)."""
    start = (workload.load.streams or DEFAULT_START_STREAMS) if start_streams is None else start_streams
    cap = DEFAULT_MAX_STREAMS if max_streams is None else max_streams
    search = CapacitySearch(start_streams=start, max_streams=cap, tolerance=tolerance, max_probes=max_probes)
    seconds = workload.step_duration_s if probe_s is None else probe_s
    warm = workload.warmup_s if warmup_s is None else warmup_s
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 1:
        raise VtuneError(f"probe_s must be at least 1 s, got {probe_s!r}; raise it")
    if isinstance(warm, bool) or not isinstance(warm, int | float) or not math.isfinite(warm) or warm < 0:
        raise VtuneError(f"warmup_s must be >= 0, got {warmup_s!r}; use 0 or more")
    if attainment_target is not None and not (
        isinstance(attainment_target, int | float) and not isinstance(attainment_target, bool)
        and 0 < attainment_target < 1
    ):
        raise VtuneError(f"attainment_target must be in (0, 1), got {attainment_target!r}; use e.g. 0.9 or None")
    return search, float(seconds), float(warm)


def run_capacity_search(
    target_url: str,
    served_model: str,
    tokenizer_dir: Path,
    workload: Workload,
    out_dir: Path,
    *,
    start_streams: int | None = None,
    max_streams: int | None = None,
    probe_s: float | None = None,
    warmup_s: float | None = None,
    tolerance: float = 0.1,
    max_probes: int = 15,
    attainment_target: float | None = None,
    on_probe: Callable[[Probe], bool] | None = None,
    prepared: PreparedCapacitySearch | None = None,
) -> CapacityResult:
    """Finds the highest concurrency at which a running server meets the workload's SLOs.

    Args:
        target_url: Server base URL, e.g. ``http://127.0.0.1:8000`` (``/v1`` optional).
        served_model: Model name the server serves.
        tokenizer_dir: Local folder of the served model's tokenizer (no downloads).
        workload: Prompts, output lengths and objectives (its load kind is not used).
        out_dir: Folder for the probe reports, GuideLLM's log and ``capacity_result.json``.
        start_streams: First probe; default the workload's streams, else 4. A study
            passes what it knows: the best capacity so far, the memory model's KV
            concurrency, the configuration's max-num-seqs.
        max_streams: Highest level probed (default 1024), e.g. max-num-seqs x replicas
            x 2 or the KV bound.
        probe_s: Measured seconds a probe; default the workload's step duration.
        warmup_s: Unmeasured seconds before each probe's window; default the workload's.
        tolerance: Relative bracket width at which bisection stops.
        max_probes: Probe budget (doubling from 8 to 1024 and bisecting to 10% takes 12).
        attainment_target: None: each objective at its percentile (default); a fraction
            in (0, 1): attainment form.
        on_probe: Called with each :class:`Probe`; False ends the search
            (``bounded_by`` ``stopped``), e.g. a pruner at a probe that shows the
            configuration cannot beat the best.
        prepared: A child started ahead by :func:`prepare_capacity_search` (GuideLLM's
            import then overlapped the engine's start-up); its workload's prompts and
            its folder are used (``out_dir`` is then ignored).

    Returns:
        The result, also saved as ``out_dir/capacity_result.json``.

    Raises:
        VtuneError: A setting is out of range (named), no tokenizer files, or GuideLLM
            failed or hung.
    """
    t0 = time.monotonic()
    try:
        search, seconds, warm = _checked_search(workload, start_streams, max_streams, tolerance, max_probes,
                                                probe_s, warmup_s, attainment_target)
    except VtuneError:
        if prepared is not None:
            prepared.close()  # handed over by the caller: a bad setting must not leave its GuideLLM child behind
        raise
    if prepared is None:
        prepared = prepare_capacity_search(target_url, tokenizer_dir, workload, out_dir)
    out = prepared.out_dir
    probes: list[Probe] = []
    clean = False
    try:
        prepared.go(served_model)
        while (streams := search.next_streams) is not None:
            index = len(probes)
            begin = time.monotonic()
            path = prepared.probe(index, streams, float(seconds), float(warm))
            probe = Probe.from_benchmarks(
                read_guidellm_report(path), index=index, streams=streams, slo=workload.slo,
                attainment_target=attainment_target, wall_s=time.monotonic() - begin,
            )
            probes.append(probe)
            fatal = probe.requests == 0 and probe.errored_requests > 0
            search.record(streams, probe.slo_met, reason=probe.fail_reason, fatal=fatal)
            if on_probe is not None and not on_probe(probe):
                search.stop("stopped")
        clean = True
    finally:
        prepared.close(clean=clean)
    result = _result(search, probes, workload, attainment_target, float(seconds), float(warm), time.monotonic() - t0)
    tmp = out / (_RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    os.replace(tmp, out / _RESULT_NAME)
    return result
