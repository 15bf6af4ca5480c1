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
