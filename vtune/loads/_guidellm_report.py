"""GuideLLM 0.8 JSON reports read into :class:`~vtune.loads._results.BenchmarkSamples`.

Where GuideLLM 0.8.1 keeps per-request data: ``benchmarks[i].requests`` holds, by
status (``successful``, ``errored``, ``incomplete``), one record per request with its
timings and the derived ``time_to_first_token_ms``, ``inter_token_latency_ms``,
``time_per_output_token_ms``, ``request_latency`` (seconds), ``prompt_tokens`` and
``output_tokens``. With the default ``sample_size`` (None) and with 0 (which vtune
uses: it strips prompts and outputs) every request is listed. With ``sample_size=N``
GuideLLM keeps a reservoir sample of N requests a status; each listed request is
then weighted by ``metrics.request_totals[status] / listed`` so counts, rates and
goodput are scaled back to the whole benchmark and percentiles stay unbiased.
Requests overlapping the window ``[measure_start_time, measure_end_time]`` are kept
(GuideLLM's rule); :func:`vtune.loads._results.summarize` does the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError
from vtune._workload import Slo
from vtune.loads._results import BenchmarkSamples, RequestSample, TrialResult, _opt_float, _opt_int, summarize

__all__ = ["read_guidellm_report", "trial_result_from_reports"]

_STATUSES = ("successful", "errored", "incomplete")


def _sample(status: str, req: Mapping[str, Any], weight: float) -> RequestSample:
    latency_s = req.get("request_latency")
    timings = (req.get("info") or {}).get("timings") or {}
    return RequestSample(
        status=status,
        ttft_ms=_opt_float(req.get("time_to_first_token_ms")),
        itl_ms=_opt_float(req.get("inter_token_latency_ms")),
        tpot_ms=_opt_float(req.get("time_per_output_token_ms")),
        e2e_latency_ms=None if latency_s is None else 1000.0 * float(latency_s),
        prompt_tokens=_opt_int(req.get("prompt_tokens")),
        output_tokens=_opt_int(req.get("output_tokens")),
        weight=weight,
        end_s=_opt_float(req.get("request_end_time")),
        first_token_s=_opt_float(timings.get("first_token_iteration")),
        last_token_s=_opt_float(timings.get("last_token_iteration")),
    )


def _in_window(req: Mapping[str, Any], start_s: float, end_s: float) -> bool:
    """GuideLLM's partial-overlap rule (``get_within_range`` with ``closed=False``)."""
    end = req.get("request_end_time")
    if end is None:
        return False
    begin = req.get("request_start_time")
    begin = end if begin is None else begin
    return bool(end >= start_s and begin <= end_s)


def _parse_benchmark(path: str, index: int, bench: Mapping[str, Any]) -> BenchmarkSamples:
    sched = bench["scheduler_metrics"]
    start_s = float(sched["measure_start_time"])
    end_s = float(sched["measure_end_time"])
    requests = bench.get("requests") or {}
    totals = (bench.get("metrics") or {}).get("request_totals") or {}
    strategy = ((bench.get("config") or {}).get("strategy") or {}).get("type_", "unknown")
    out = BenchmarkSamples(
        report_path=path, benchmark_index=index, strategy=str(strategy), measure_start_s=start_s, measure_end_s=end_s
    )
    for status in _STATUSES:
        listed = [r for r in (requests.get(status) or []) if _in_window(r, start_s, end_s)]
        expected = totals.get(status)
        weight = 1.0
        if listed and isinstance(expected, int | float) and expected > len(listed):
            weight = float(expected) / len(listed)
            out.sampled = True
        out.requests.extend(_sample(status, r, weight) for r in listed)
    return out


def read_guidellm_report(path: str | Path) -> list[BenchmarkSamples]:
    """Reads the per-request data of every benchmark in a GuideLLM 0.8 JSON report.

    Raises:
        VtuneError: If the file is missing, not JSON, or not a GuideLLM report.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise VtuneError(f"cannot read GuideLLM report {path}: {exc.strerror}; check the path") from None
    except ValueError:
        raise VtuneError(f"GuideLLM report {path} is not valid JSON; rerun the load") from None
    benches = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benches, list):
        raise VtuneError(f"{path} has no 'benchmarks' list: not a GuideLLM JSON report; pass the --output json file")
    try:
        return [_parse_benchmark(str(path), i, b) for i, b in enumerate(benches)]
    except (KeyError, TypeError, ValueError) as exc:
        raise VtuneError(f"{path}: unexpected GuideLLM report layout ({exc!r}); use a guidellm 0.8 report") from None


def trial_result_from_reports(paths: Iterable[str | Path], slo: Slo) -> TrialResult:
    """Reads GuideLLM JSON reports and combines all their benchmarks into one result."""
    benches: list[BenchmarkSamples] = []
    for path in paths:
        benches.extend(read_guidellm_report(path))
    return summarize(benches, slo)
