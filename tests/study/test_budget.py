"""The trial budget: interrupted, lost and load-tool trials do not spend --n-trials; interrupted baselines run again."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.study.test_worker import fake_trial, make_settings
from vtune._errors import VtuneError
from vtune._trial import TrialRecord
from vtune.engines._failures import Failure
from vtune.study._budget import BudgetSpent, counts_toward_budget
from vtune.study._runner import count_done, count_started
from vtune.study._storage import make_storage
from vtune.study._study import prepare_study, run_study

BASELINES = ["memory-model-guess", "vllm-defaults", "size-preset"]


def frozen(state: TrialState, failure_kind: str | None = None) -> optuna.trial.FrozenTrial:
    t0 = dt.datetime(2025, 1, 1)
    return optuna.trial.FrozenTrial(
        number=0, state=state, value=1.0 if state == TrialState.COMPLETE else None, datetime_start=t0,
        datetime_complete=None if state == TrialState.RUNNING else t0, params={}, distributions={},
        user_attrs={"failure": {"kind": failure_kind}} if failure_kind else {}, system_attrs={},
        intermediate_values={}, trial_id=0)


@pytest.mark.parametrize(("state", "kind", "counts"), [
    (TrialState.COMPLETE, None, True),
    (TrialState.PRUNED, None, True),
    (TrialState.RUNNING, None, True),
    (TrialState.WAITING, None, False),
    (TrialState.FAIL, "crash", True),
    (TrialState.FAIL, "out_of_memory", True),
    (TrialState.FAIL, None, True),  # no recorded reason: counted, so nothing can loop forever on it
    (TrialState.FAIL, "interrupted", False),
    (TrialState.FAIL, "worker_lost", False),
    (TrialState.FAIL, "load_error", False),
    (TrialState.FAIL, "load_stalled", False),
])
def test_which_trials_spend_the_budget(state, kind, counts):
    assert counts_toward_budget(frozen(state, kind)) is counts


def _interrupting(calls: list[int]) -> Any:
    """The fake trial function, whose first call is interrupted (Ctrl-C while it measures)."""

    def fn(*args: Any, **kw: Any) -> TrialRecord:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return fake_trial(*args, **kw)

    return fn


def _baselines_by_state(study: optuna.Study) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in study.get_trials():
        if t.user_attrs.get("baseline"):
            out.setdefault(t.user_attrs["baseline"], []).append(t.state.name)
    return out


def test_two_ctrl_c_then_resume_measures_every_baseline(tmp_path):
    settings = make_settings(tmp_path, name="ctrlc")
    for _ in range(2):  # each run is interrupted in its first trial (a baseline)
        with pytest.raises(KeyboardInterrupt) as info:
            run_study(settings, n_trials=3, trial_fn=_interrupting([]), quiet=True, export=False)
        assert getattr(info.value, "signal_name", None) == "SIGINT" and len(info.value.trials) == 1
    summary = run_study(settings, n_trials=3, trial_fn=fake_trial, quiet=True, export=False)
    study = optuna.load_study(study_name="ctrlc", storage=make_storage(summary.storage, heartbeat=False))
    states = _baselines_by_state(study)
    assert states == {"memory-model-guess": ["FAIL", "COMPLETE"], "vllm-defaults": ["FAIL", "COMPLETE"],
                      "size-preset": ["COMPLETE"]}  # each interrupted baseline was enqueued again
    interrupted = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert [t.number for t in interrupted] == [0, 1]
    assert [t.user_attrs["failure"]["kind"] for t in interrupted] == ["interrupted", "interrupted"]
    assert all(t.user_attrs["failure"]["signal"] == "SIGINT" for t in interrupted)
    requeued = {t.user_attrs["baseline"]: t.user_attrs["requeued_from"] for t in study.get_trials()
                if "requeued_from" in t.user_attrs}
    assert requeued == {"memory-model-guess": 0, "vllm-defaults": 1}
    assert count_done(study) == 3 and summary.finished_trials == 3


def _dead_worker() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return {"host": socket.gethostname(), "pid": int(proc.stdout), "started": 1.0}


def test_a_trial_left_running_by_a_killed_process_does_not_spend_the_budget(tmp_path):
    settings = make_settings(tmp_path, name="killed")
    study, _, _, url = prepare_study(settings, n_trials=3, check_flags=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()  # what the killed process had claimed: the first baseline
    assert trial.user_attrs["baseline"] == "memory-model-guess"
    trial.set_user_attr("worker", _dead_worker())
    summary = run_study(settings, storage_url=url, n_trials=3, trial_fn=fake_trial, quiet=True, export=False)
    assert summary.recovered == [trial.number]
    study = optuna.load_study(study_name="killed", storage=make_storage(url, heartbeat=False))
    states = _baselines_by_state(study)
    assert states["memory-model-guess"] == ["FAIL", "COMPLETE"]
    assert states["vllm-defaults"] == ["COMPLETE"] and states["size-preset"] == ["COMPLETE"]
    assert study.get_trials()[trial.number].user_attrs["failure"]["kind"] == "interrupted"
    assert count_done(study) == 3


def test_worker_lost_trials_do_not_spend_the_budget(tmp_path):
    settings = make_settings(tmp_path, name="lost")
    study, _, _, url = prepare_study(settings, n_trials=4, check_flags=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lost = study.ask()
    lost.set_user_attr("failure", {"kind": "worker_lost", "message": "no heartbeat"})
    study.tell(lost, state=TrialState.FAIL)
    run_study(settings, storage_url=url, n_trials=4, trial_fn=fake_trial, quiet=True, export=False)
    study = optuna.load_study(study_name="lost", storage=make_storage(url, heartbeat=False))
    assert len(study.get_trials()) == 5 and count_done(study) == 4
    assert _baselines_by_state(study)["memory-model-guess"] == ["FAIL", "COMPLETE"]


def _load_error(*args: Any, **kw: Any) -> TrialRecord:
    rec = fake_trial(*args, **kw)
    rec.status, rec.result = "failed", None
    rec.failure = Failure(kind="crash", message="GuideLLM load failed: boom", log_line=None, exit_code=None)
    rec.failure.kind = "load_error"  # what run_trial records when the load tool fails
    return rec


def test_load_tool_failures_do_not_spend_the_budget_and_stop_after_three_in_a_row(tmp_path):
    settings = make_settings(tmp_path, name="load")
    with pytest.raises(VtuneError, match="the load tool failed 3 trials in a row .*GuideLLM load failed: boom"):
        run_study(settings, n_trials=2, trial_fn=_load_error, quiet=True, export=False)
    study = optuna.load_study(study_name="load", storage=make_storage(f"sqlite:///{tmp_path}/studies/load.db",
                                                                      heartbeat=False))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 3 and count_started(study) == 0
    assert {t.user_attrs["failure"]["kind"] for t in failed} == {"load_error"}


def test_the_storage_starts_no_trial_over_the_budget(tmp_path):
    settings = make_settings(tmp_path, name="gate")
    study, _, _, _ = prepare_study(settings, n_trials=2, check_flags=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = study.ask(), study.ask()  # two of the three enqueued baselines
        with pytest.raises(BudgetSpent):
            study.ask()  # neither the third baseline nor a new trial
        assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
        first.set_user_attr("failure", {"kind": "interrupted"})
        study.tell(first, state=TrialState.FAIL)  # does not count: one more may start
        third = study.ask()
        assert third.user_attrs["baseline"] == "size-preset"
        with pytest.raises(BudgetSpent):
            study.ask()
    study.tell(second, 1.0)
    study.tell(third, 1.0)
    assert count_started(study) == 2
    assert Path(tmp_path / "studies" / "gate.db").is_file()
