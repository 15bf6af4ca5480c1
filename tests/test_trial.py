"""Tests of vtune._trial.run_trial with a fake engine and a fake load tool (no vLLM, no GuideLLM)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import vtune._trial as trial_mod
from vtune._cli import main as cli_main
from vtune._errors import VtuneError
from vtune._serve_config import ServeConfig
from vtune._trial import TrialRecord, run_trial
from vtune._workload import load_workload
from vtune.engines import Engine, EngineFailure, Failure, StartupNumbers, TeardownReport
from vtune.loads import LoadFailure, LoadGenerator, LoadResult, StepHook, StepResult, trial_result_from_reports

REPORT = Path(__file__).parent / "data" / "guidellm" / "chatbot-step-00.json"


class FakeEngine(Engine):
    """Starts at once; ``dead`` makes every check fail as a crashed engine's would."""

    def __init__(self) -> None:
        self.dead = False
        self.calls: list[str] = []

    @property
    def url(self) -> str:
        return "http://127.0.0.1:9"

    def start(self) -> None:
        self.calls.append("start")

    def wait_ready(self) -> StartupNumbers:
        self.calls.append("wait_ready")
        self.start_s, self.served_model_name = 0.25, "served-name"
        self.startup = StartupNumbers(kv_cache_tokens=4096, device="cpu")
        return self.startup

    def check(self, *, probe_http: bool = False) -> None:
        self.calls.append("check+http" if probe_http else "check")
        if self.dead:
            self.failure = Failure("crash", "vLLM was killed by signal 9", exit_code=-9)
            raise EngineFailure(self.failure)

    def stop(self, grace_s: float = 20.0) -> TeardownReport:
        self.calls.append("stop")
        if self.teardown is None:
            self.teardown = TeardownReport(signal_sent="SIGTERM", exit_code=-15)
        return self.teardown


class FakeLoad(LoadGenerator):
    """Runs ``behaviour(on_step, check_target)``: returns a LoadResult or raises."""

    def __init__(self, behaviour: Callable[[StepHook | None, Callable[[], None] | None], LoadResult]) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []

    def prepare(self, target_url: str) -> None:
        self.calls.append(f"prepare {target_url}")

    def run(
        self,
        served_model: str,
        *,
        on_step: StepHook | None = None,
        check_target: Callable[[], None] | None = None,
    ) -> LoadResult:
        self.calls.append(f"run {served_model}")
        return self.behaviour(on_step, check_target)

    def cancel(self) -> None:
        self.calls.append("cancel")


def _result(tmp_path: Path, *, retries: int = 0, on_step: StepHook | None = None) -> LoadResult:
    wl = load_workload("chatbot")
    res = trial_result_from_reports([REPORT], wl.slo)
    step = StepResult(index=0, report_path=REPORT, step=res, cumulative=res, gap_s=None, vtune_overhead_s=0.01)
    if on_step is not None:
        on_step(0, step)
    return LoadResult(result=res, steps=[step], stopped_early=False, workload=wl.name, out_dir=tmp_path,
                      startup_s=1.0, wall_s=2.0, retries=retries, stalls=["stalled once"] * retries)


def _raise(exc: BaseException) -> Callable[..., LoadResult]:
    def behaviour(on_step: Any, check_target: Any) -> LoadResult:
        raise exc

    return behaviour


def _run(tmp_path: Path, engine: FakeEngine, load: FakeLoad) -> TrialRecord:
    cfg = ServeConfig(model=str(tmp_path / "model"), max_num_seqs=8)
    return run_trial(cfg, load_workload("chatbot"), tmp_path / "trial", engine=engine, load=load)


def _saved(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "trial" / "trial.json").read_text()))


def test_a_broken_load_is_recorded_as_load_error(tmp_path: Path) -> None:
    # Before, the trial built Failure("load_error"), which Failure refused: vtune exited 1, failure: null.
    engine, load = FakeEngine(), FakeLoad(_raise(VtuneError("GuideLLM load failed: boom; see guidellm.log")))
    rec = _run(tmp_path, engine, load)
    assert rec.status == "failed" and rec.failure is not None
    assert rec.failure.kind == "load_error" and not rec.failure.blames_config
    assert "boom" in rec.failure.message
    saved = _saved(tmp_path)
    assert saved["failure"]["kind"] == "load_error" and saved["failure"]["blames_config"] is False
    assert saved["teardown"]["signal_sent"] == "SIGTERM"
    assert engine.calls == ["start", "wait_ready", "check+http", "stop"]
    assert load.calls == ["prepare http://127.0.0.1:9", "run served-name"]  # run() ended the tool: no cancel


def test_a_load_that_stalled_twice_is_recorded_as_load_stalled(tmp_path: Path) -> None:
    stalled = LoadFailure("load_stalled", "GuideLLM load stalled again after a fresh start: ...", steps_done=1)
    rec = _run(tmp_path, FakeEngine(), FakeLoad(_raise(stalled)))
    assert rec.failure is not None and rec.failure.kind == "load_stalled"
    assert rec.failure.blames_config is False
    assert TrialRecord.from_dict(_saved(tmp_path)).failure == rec.failure


def test_a_dead_engine_behind_a_broken_load_is_the_failure(tmp_path: Path) -> None:
    engine = FakeEngine()

    def die_then_break(on_step: Any, check_target: Any) -> LoadResult:
        engine.dead = True
        raise LoadFailure("load_stalled", "GuideLLM finished no request for 30 s")

    rec = _run(tmp_path, engine, FakeLoad(die_then_break))
    assert rec.failure is not None and rec.failure.kind == "crash" and rec.failure.blames_config


def test_the_load_probes_the_engine_before_a_retry_and_retries_are_recorded(tmp_path: Path) -> None:
    engine = FakeEngine()

    def stall_once(on_step: StepHook | None, check_target: Callable[[], None] | None) -> LoadResult:
        assert check_target is not None
        check_target()  # what the load does before it runs a stalled step again
        return _result(tmp_path, retries=1, on_step=on_step)

    rec = _run(tmp_path, engine, FakeLoad(stall_once))
    assert rec.status == "ok" and rec.failure is None
    assert rec.load_retries == 1 and len(rec.step_results) == 1
    assert engine.calls == ["start", "wait_ready", "check+http", "check", "check+http", "stop"]
    saved = _saved(tmp_path)
    assert saved["load_retries"] == 1
    assert TrialRecord.from_dict(saved).load_retries == 1


def test_an_engine_that_never_starts_cancels_the_prepared_load(tmp_path: Path) -> None:
    class NeverReady(FakeEngine):
        def wait_ready(self) -> StartupNumbers:
            raise EngineFailure(Failure("timeout", "vLLM did not become ready"))

    load = FakeLoad(lambda on_step, check: _result(tmp_path))
    rec = _run(tmp_path, NeverReady(), load)
    assert rec.failure is not None and rec.failure.kind == "timeout"
    assert load.calls == ["prepare http://127.0.0.1:9", "cancel"]


@pytest.mark.parametrize("as_json", [False, True])
def test_bench_prints_one_line_and_exits_2_on_a_stalled_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    stalled = LoadFailure("load_stalled", "GuideLLM load stalled again after a fresh start: no request for 30 s")
    monkeypatch.setattr(trial_mod, "run_trial", functools.partial(
        trial_mod.run_trial, engine=FakeEngine(), load=FakeLoad(_raise(stalled))))
    (tmp_path / "model").mkdir()
    argv = ["bench", "--model", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run"), "--duration-s", "5"]
    code = cli_main([*argv, "--json"] if as_json else argv)
    out = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out.err
    if as_json:
        failure = json.loads(out.out)["failure"]
        assert failure["kind"] == "load_stalled" and failure["blames_config"] is False
    else:
        lines = [ln for ln in out.out.splitlines() if "failed (load_stalled)" in ln]
        assert lines == ["#0 failed (load_stalled): " + str(stalled)]


# --- the capacity path ---------------------------------------------------------------------


class FakePrepared:
    """What prepare_capacity_search returns: records whether it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
def fake_capacity(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """run_trial's capacity search replaced: ``seen['behaviour'](kwargs)`` runs in its place."""
    from tests.capacity_fakes import fake_search
    from vtune.loads import _capacity, _capacity_probe

    seen: dict[str, Any] = {"prepared": [], "calls": [], "true_streams": 12}

    def prepare(url: str, tok: Path, workload: Any, out_dir: Path) -> FakePrepared:
        seen["prepared"].append(FakePrepared())
        seen["out_dir"] = out_dir
        return seen["prepared"][-1]

    def search(url: str, served: str, tok: Path, workload: Any, out_dir: Path, **kw: Any) -> Any:
        seen["calls"].append({"served": served, **kw})
        if "raise" in seen:
            raise seen["raise"]
        opts = trial_mod.CapacityOptions(start_streams=kw["start_streams"], max_streams=kw["max_streams"],
                                         tolerance=kw["tolerance"], on_probe=kw["on_probe"])
        return fake_search(seen["true_streams"], opts)

    monkeypatch.setattr(_capacity_probe, "prepare_capacity_search", prepare)
    monkeypatch.setattr(_capacity, "run_capacity_search", search)
    return seen


def _run_capacity(tmp_path: Path, engine: FakeEngine, options: trial_mod.CapacityOptions,
                  duration_s: float | None = None) -> TrialRecord:
    cfg = ServeConfig(model=str(tmp_path / "model"), max_num_seqs=8)
    load = FakeLoad(_raise(AssertionError("a capacity trial runs no fixed load")))
    return run_trial(cfg, load_workload("chatbot"), tmp_path / "trial", engine=engine, load=load, capacity=options,
                     duration_s=duration_s)


def test_capacity_trial_keeps_every_probe_and_the_probe_at_capacity(
        tmp_path: Path, fake_capacity: dict[str, Any]) -> None:
    engine = FakeEngine()
    seen_probes: list[int] = []
    options = trial_mod.CapacityOptions(start_streams=4, max_streams=32, tolerance=0.1,
                                        on_probe=lambda p: seen_probes.append(p.streams) is None)
    rec = _run_capacity(tmp_path, engine, options, duration_s=7.0)
    assert rec.status == "ok" and rec.failure is None
    assert rec.capacity is not None and rec.capacity.capacity_streams == 12
    assert seen_probes == [p.streams for p in rec.capacity.probes] == [4, 8, 16, 12, 14, 13]
    # the engine is checked after every probe, then probed over HTTP once at the end
    assert engine.calls == ["start", "wait_ready", *["check"] * 6, "check+http", "stop"]
    assert fake_capacity["calls"][0]["probe_s"] == 7.0  # duration_s is each probe's measured seconds
    assert fake_capacity["calls"][0]["prepared"] is fake_capacity["prepared"][0]  # the child started early
    assert fake_capacity["out_dir"] == tmp_path / "trial" / "capacity"
    assert rec.result is not None and rec.result.requests_per_second == rec.capacity.requests_per_second == 6.0
    saved = _saved(tmp_path)
    assert [p["streams"] for p in saved["capacity"]["probes"]] == [4, 8, 16, 12, 14, 13]
    again = TrialRecord.from_dict(saved)
    assert again.capacity == rec.capacity
    assert not fake_capacity["prepared"][0].cancelled  # the search ended its child


def test_capacity_trial_stopped_by_its_probe_callback(tmp_path: Path, fake_capacity: dict[str, Any]) -> None:
    options = trial_mod.CapacityOptions(start_streams=4, max_streams=32, on_probe=lambda p: p.slo_met)
    rec = _run_capacity(tmp_path, FakeEngine(), options)
    assert rec.status == "stopped_early" and rec.capacity is not None
    assert rec.capacity.bounded_by == "stopped" and [p.streams for p in rec.capacity.probes] == [4, 8, 16]


def test_an_engine_dying_mid_search_fails_the_trial_classified(tmp_path: Path,
                                                                 fake_capacity: dict[str, Any]) -> None:
    engine = FakeEngine()

    def kill_after_two(p: Any) -> bool:
        engine.dead = p.index >= 0  # dead from the next check on
        return True

    rec = _run_capacity(tmp_path, engine, trial_mod.CapacityOptions(start_streams=4, max_streams=32,
                                                                    on_probe=kill_after_two))
    assert rec.status == "failed" and rec.failure is not None and rec.failure.kind == "crash"
    assert rec.capacity is None  # an unfinished search is no measurement


@pytest.mark.parametrize("exc, kind", [
    (LoadFailure("load_stalled", "GuideLLM did not finish capacity probe 1"), "load_stalled"),
    (LoadFailure("load_error", "GuideLLM exited (code 1) during capacity probe 0"), "load_error"),
    (VtuneError("something else broke"), "load_error"),
])
def test_load_tool_failures_of_the_search_are_classified(tmp_path: Path, fake_capacity: dict[str, Any],
                                                         exc: Exception, kind: str) -> None:
    fake_capacity["raise"] = exc
    rec = _run_capacity(tmp_path, FakeEngine(), trial_mod.CapacityOptions())
    assert rec.failure is not None and rec.failure.kind == kind and not rec.failure.blames_config


def test_an_engine_that_never_starts_cancels_the_prepared_search(tmp_path: Path,
                                                                 fake_capacity: dict[str, Any]) -> None:
    class NeverReady(FakeEngine):
        def wait_ready(self) -> StartupNumbers:
            raise EngineFailure(Failure("timeout", "vLLM did not become ready"))

    rec = _run_capacity(tmp_path, NeverReady(), trial_mod.CapacityOptions())
    assert rec.failure is not None and rec.failure.kind == "timeout"
    assert fake_capacity["prepared"][0].cancelled and fake_capacity["calls"] == []


@pytest.mark.parametrize("target_rate", [None, 20.0])
def test_bench_objective_capacity_json_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fake_capacity: dict[str, Any], target_rate: float | None,
) -> None:
    monkeypatch.setattr(trial_mod, "run_trial", functools.partial(trial_mod.run_trial, engine=FakeEngine()))
    (tmp_path / "model").mkdir()
    argv = ["bench", "--model", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run"), "--objective",
            "capacity", *(["--target-rate", str(target_rate)] if target_rate else [])]
    engine_flags = ["--", "--max-num-seqs", "16"]
    assert cli_main([*argv, "--json", *engine_flags]) == 0
    out = json.loads(capsys.readouterr().out)
    cap = out["capacity"]
    call = fake_capacity["calls"][-1]
    assert (call["start_streams"], call["max_streams"]) == (8, 32)  # the workload's 8 streams, 2 x max-num-seqs
    assert cap["concurrency"] == 12 and cap["requests_per_second"] == 6.0 and cap["num_gpus"] == 1
    assert [p["streams"] for p in cap["probes"]] == [8, 16, 12, 14]  # the CPU engine bisects to 25%
    if target_rate:
        assert (cap["target_rate_rps"], cap["replicas"], cap["gpus"]) == (20.0, 4, 4)  # ceil(20 / 6)
    else:
        assert "replicas" not in cap
    assert cli_main([*argv, *engine_flags]) == 0
    table = capsys.readouterr().out
    assert "8+ 16- 12+ 14-" in table and "streams" in table and "TTFT p90 ms" in table


def test_bench_target_rate_needs_capacity(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "--target-rate", "5"]) == 2
    assert "--target-rate needs --objective capacity" in capsys.readouterr().err
