"""Tests of vtune.loads._results and ._guidellm_report against GuideLLM 0.8.1 reports recorded from real runs.

The fixtures in tests/data/guidellm/ are described in the README there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vtune._errors import VtuneError
from vtune._workload import Slo, SloTarget
from vtune.loads._guidellm_report import read_guidellm_report, trial_result_from_reports
from vtune.loads._results import (
    SCHEMA_VERSION,
    Percentiles,
    TrialResult,
    percentile,
    summarize,
)

DATA = Path(__file__).parents[1] / "data" / "guidellm"
STEP0 = DATA / "chatbot-step-00.json"
STEP1 = DATA / "chatbot-step-01.json"
CLI = DATA / "cli-concurrent8.json"

# The chatbot workload's objectives.
CHATBOT_SLO = Slo(
    ttft_ms=SloTarget(90, 500),
    itl_ms=SloTarget(90, 50),
    e2e_ms=SloTarget(90, 5000),
)
LOOSE_SLO = Slo(ttft_ms=SloTarget(99, 1e9), itl_ms=SloTarget(99, 1e9))
IMPOSSIBLE_SLO = Slo(ttft_ms=SloTarget(50, 0.001), itl_ms=SloTarget(50, 1e9))


def _bench(path: Path) -> dict:
    return json.loads(path.read_text())["benchmarks"][0]


def _ended_in_window(bench: dict) -> list[dict]:
    sched = bench["scheduler_metrics"]
    lo, hi = sched["measure_start_time"], sched["measure_end_time"]
    return [r for r in bench["requests"]["successful"] if lo <= r["request_end_time"] <= hi]


def _window_ok(bench: dict) -> list[dict]:
    """Completed requests GuideLLM counts (partial overlap with the measured window)."""
    sched = bench["scheduler_metrics"]
    lo, hi = sched["measure_start_time"], sched["measure_end_time"]
    out = []
    for r in bench["requests"]["successful"]:
        start = r["request_start_time"] if r["request_start_time"] is not None else r["request_end_time"]
        if r["request_end_time"] >= lo and start <= hi:
            out.append(r)
    return out


def test_single_step_matches_recorded_numbers() -> None:
    res = trial_result_from_reports([STEP0], CHATBOT_SLO)
    assert res.schema_version == SCHEMA_VERSION
    assert res.steps == 1
    assert res.sampled is False
    assert res.successful_requests == 27
    assert res.errored_requests == 0
    assert res.incomplete_requests == 0
    assert res.duration_s == pytest.approx(3.0158872604370117)
    assert res.output_tokens_per_second == pytest.approx(537.6351650205131)
    # 19 of the 27 ended inside the window, 14 of those met every objective.
    assert res.requests_per_second == pytest.approx(19 / 3.0158872604370117)
    assert res.goodput_requests_per_second == pytest.approx(14 / 3.0158872604370117)
    assert res.ttft_ms.p50 == pytest.approx(215.6832218170166)
    assert res.ttft_ms.p90 == pytest.approx(727.0433902740479)
    assert res.ttft_ms.p99 == pytest.approx(733.0381870269775)
    assert res.slo_met == {"ttft_ms": False, "itl_ms": True, "e2e_ms": True}
    assert res.slo_observed_ms["ttft_ms"] == pytest.approx(727.0433902740479)
    assert res.slo_attainment == pytest.approx(22 / 27)
    assert res.raw_report_paths == [str(STEP0)]


@pytest.mark.parametrize("path", [STEP0, STEP1, CLI], ids=lambda p: p.name)
def test_counts_and_percentiles_agree_with_guidellm(path: Path) -> None:
    bench = _bench(path)
    metrics = bench["metrics"]
    res = trial_result_from_reports([path], CHATBOT_SLO)
    assert res.successful_requests == metrics["request_totals"]["successful"]
    assert res.errored_requests == metrics["request_totals"]["errored"]
    assert res.incomplete_requests == metrics["request_totals"]["incomplete"]
    ttft = metrics["time_to_first_token_ms"]["successful"]
    assert res.ttft_ms.p50 == pytest.approx(ttft["percentiles"]["p50"])
    assert res.ttft_ms.p90 == pytest.approx(ttft["percentiles"]["p90"])
    assert res.ttft_ms.p99 == pytest.approx(ttft["percentiles"]["p99"])
    assert res.ttft_ms.mean == pytest.approx(ttft["mean"])
    lat = metrics["request_latency"]["successful"]
    assert res.e2e_latency_ms.p50 == pytest.approx(1000 * lat["percentiles"]["p50"])
    assert res.e2e_latency_ms.p99 == pytest.approx(1000 * lat["percentiles"]["p99"])
    assert res.e2e_latency_ms.mean == pytest.approx(1000 * lat["mean"])
    # Rates count events inside the window, as GuideLLM's rate distributions do.
    assert res.requests_per_second == pytest.approx(metrics["requests_per_second"]["successful"]["mean"])
    assert res.output_tokens_per_second == pytest.approx(
        metrics["output_tokens_per_second"]["successful"]["mean"], rel=0.01
    )
    for p in (res.ttft_ms, res.itl_ms, res.tpot_ms, res.e2e_latency_ms):
        assert p.p50 <= p.p90 <= p.p99


def test_goodput_is_computed_per_request() -> None:
    bench = _bench(STEP0)
    ok = _ended_in_window(bench)
    good = [
        r
        for r in ok
        if r["time_to_first_token_ms"] <= 500
        and (r["inter_token_latency_ms"] is None or r["inter_token_latency_ms"] <= 50)
        and 1000 * r["request_latency"] <= 5000
    ]
    duration = bench["scheduler_metrics"]["measure_end_time"] - bench["scheduler_metrics"]["measure_start_time"]
    res = trial_result_from_reports([STEP0], CHATBOT_SLO)
    assert 0 < len(good) < len(ok)
    assert res.goodput_requests_per_second == pytest.approx(len(good) / duration)
    assert res.goodput_requests_per_second < res.requests_per_second


def test_goodput_bounds() -> None:
    loose = trial_result_from_reports([STEP0], LOOSE_SLO)
    assert loose.goodput_requests_per_second == pytest.approx(loose.requests_per_second)
    assert loose.slo_attainment == 1.0
    assert loose.all_slos_met
    none = trial_result_from_reports([STEP0], IMPOSSIBLE_SLO)
    assert none.goodput_requests_per_second == 0.0
    assert none.slo_attainment == 0.0
    assert none.slo_met["ttft_ms"] is False
    assert not none.all_slos_met


def test_optional_objectives_count() -> None:
    tight_tpot = Slo(ttft_ms=SloTarget(90, 1e9), itl_ms=SloTarget(90, 1e9), tpot_ms=SloTarget(90, 10.0))
    res = trial_result_from_reports([STEP0], tight_tpot)
    ok = _ended_in_window(_bench(STEP0))
    n_good = sum(1 for r in ok if r["time_per_output_token_ms"] <= 10.0)
    assert res.goodput_requests_per_second == pytest.approx(n_good / res.duration_s)
    assert "tpot_ms" in res.slo_met
    tight_e2e = Slo(ttft_ms=SloTarget(90, 1e9), itl_ms=SloTarget(90, 1e9), e2e_ms=SloTarget(50, 700.0))
    res = trial_result_from_reports([STEP0], tight_e2e)
    n_good = sum(1 for r in ok if 1000 * r["request_latency"] <= 700.0)
    assert res.goodput_requests_per_second == pytest.approx(n_good / res.duration_s)


def test_steps_combine_by_pooling_requests() -> None:
    a = trial_result_from_reports([STEP0], CHATBOT_SLO)
    b = trial_result_from_reports([STEP1], CHATBOT_SLO)
    both = trial_result_from_reports([STEP0, STEP1], CHATBOT_SLO)
    assert both.steps == 2
    assert both.raw_report_paths == [str(STEP0), str(STEP1)]
    assert both.duration_s == pytest.approx(a.duration_s + b.duration_s)
    assert both.successful_requests == a.successful_requests + b.successful_requests == 48
    assert both.incomplete_requests == 1
    done = a.requests_per_second * a.duration_s + b.requests_per_second * b.duration_s
    assert both.requests_per_second * both.duration_s == pytest.approx(done) == 39
    tokens = a.output_tokens_per_second * a.duration_s + b.output_tokens_per_second * b.duration_s
    assert both.output_tokens_per_second == pytest.approx(tokens / both.duration_s)
    assert both.output_tokens_per_second == pytest.approx(488.61405104436517)
    good = a.goodput_requests_per_second * a.duration_s + b.goodput_requests_per_second * b.duration_s
    assert both.goodput_requests_per_second == pytest.approx(good / both.duration_s)
    pooled = [r["time_to_first_token_ms"] for p in (STEP0, STEP1) for r in _window_ok(_bench(p))]
    assert both.ttft_ms.p90 == pytest.approx(percentile(pooled, 90))
    assert both.ttft_ms.mean == pytest.approx(sum(pooled) / len(pooled))
    assert both.ttft_ms.p50 <= both.ttft_ms.p90 <= both.ttft_ms.p99
    # Same as summarizing the parsed benchmarks directly.
    direct = summarize(read_guidellm_report(STEP0) + read_guidellm_report(STEP1), CHATBOT_SLO)
    assert direct == both


def test_sampled_report_is_scaled(tmp_path: Path) -> None:
    data = json.loads(STEP0.read_text())
    bench = data["benchmarks"][0]
    full = len(_window_ok(bench))
    bench["requests"]["successful"] = bench["requests"]["successful"][::3]
    kept = len(_window_ok(bench))
    weight = full / kept
    ended = len(_ended_in_window(bench))
    sampled_path = tmp_path / "sampled.json"
    sampled_path.write_text(json.dumps(data))
    res = trial_result_from_reports([sampled_path], LOOSE_SLO)
    assert res.sampled is True
    assert kept < full
    assert res.successful_requests == full
    assert res.requests_per_second == pytest.approx(weight * ended / res.duration_s)
    assert res.goodput_requests_per_second == pytest.approx(res.requests_per_second)
    unsampled = trial_result_from_reports([STEP0], LOOSE_SLO)
    assert res.output_tokens_per_second == pytest.approx(unsampled.output_tokens_per_second, rel=0.3)


def test_percentile_rule_matches_guidellm() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == 5.0
    assert percentile(values, 20) == 1.0
    assert percentile(values, 21) == 2.0
    assert percentile(values, 100) == 5.0
    assert percentile([1.0, 2.0], 50, weights=[3, 1]) == 1.0
    assert math.isnan(percentile([], 50))
    empty = Percentiles.from_values([])
    assert math.isnan(empty.p50) and math.isnan(empty.mean)


def test_round_trip_and_nan(tmp_path: Path) -> None:
    res = trial_result_from_reports([STEP0, STEP1], CHATBOT_SLO)
    again = TrialResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res
    nan = Percentiles.from_values([])
    d = nan.to_dict()
    assert d == {"p50": None, "p90": None, "p99": None, "mean": None}
    assert math.isnan(Percentiles.from_dict(d).p99)


def test_from_dict_rejects_other_versions() -> None:
    d = trial_result_from_reports([STEP0], CHATBOT_SLO).to_dict()
    d["schema_version"] = 99
    with pytest.raises(VtuneError, match="schema_version"):
        TrialResult.from_dict(d)
    d["schema_version"] = SCHEMA_VERSION
    del d["duration_s"]
    with pytest.raises(VtuneError, match="duration_s"):
        TrialResult.from_dict(d)


def test_bad_reports(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="cannot read"):
        read_guidellm_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(VtuneError, match="not valid JSON"):
        read_guidellm_report(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(VtuneError, match="not a GuideLLM"):
        read_guidellm_report(other)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"benchmarks": [{"requests": {}}]}))
    with pytest.raises(VtuneError, match="unexpected GuideLLM report layout"):
        read_guidellm_report(broken)


def test_no_requests_gives_zero_rates(tmp_path: Path) -> None:
    data = json.loads(STEP0.read_text())
    bench = data["benchmarks"][0]
    for status in ("successful", "errored", "incomplete"):
        bench["requests"][status] = []
    bench["metrics"]["request_totals"] = {"successful": 0, "errored": 0, "incomplete": 0, "total": 0}
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(data))
    res = trial_result_from_reports([path], CHATBOT_SLO)
    assert res.successful_requests == 0
    assert res.output_tokens_per_second == 0.0
    assert res.goodput_requests_per_second == 0.0
    assert res.slo_met == {"ttft_ms": False, "itl_ms": False, "e2e_ms": False}
    assert res.slo_observed_ms["ttft_ms"] is None
    json.dumps(res.to_dict(), allow_nan=False)
