"""The sampler and pruner a study is given, and Optuna's public APIs where vtune used private ones."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.study.test_worker import fake_trial, make_settings
from vtune.study._baselines import InSpaceSampler
from vtune.study._pruner import NoiseAwarePruner
from vtune.study._storage import heartbeat_interval_s, make_storage, recover_stale_trials, wait_for_running
from vtune.study._study import open_study, prepare_study, run_study, run_worker

ROOT = Path(__file__).resolve().parents[2]


class SpySampler(optuna.samplers.RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.sampled: list[int] = []

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        self.sampled.append(trial.number)
        return super().sample_independent(study, trial, param_name, param_distribution)


class SpyPruner(optuna.pruners.BasePruner):
    def __init__(self) -> None:
        self.asked: list[int] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.asked.append(trial.number)
        return False


def stepping_trial(cfg: Any, workload: Any, run_dir: Path, *, on_step: Any = None, **kw: Any) -> Any:
    """The fake trial, reporting one load step (so the pruner is asked)."""
    rec = fake_trial(cfg, workload, run_dir, **kw)
    if on_step is not None:
        on_step(0, rec.result)
    return rec


def test_run_study_and_run_worker_use_the_sampler_and_pruner_they_are_given(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, name="given")
    sampler, pruner = SpySampler(), SpyPruner()
    summary = run_study(settings, n_trials=5, trial_fn=stepping_trial, quiet=True, export=False,
                        max_concurrent_trials=1, sampler=sampler, pruner=pruner)
    assert summary.finished_trials == 5
    sampled = {n for n in range(5)} - {0, 1, 2}  # the baselines are enqueued: nothing to sample
    assert set(sampler.sampled) == sampled and set(pruner.asked) == set(range(5))
    worker_sampler, worker_pruner = SpySampler(), SpyPruner()
    before = (list(sampler.sampled), list(pruner.asked))
    _, _, _, url = prepare_study(settings, n_trials=8)
    run_worker("given", url, studies_dir=settings.studies_dir, trial_fn=stepping_trial, quiet=True,
               max_concurrent_trials=1, target=settings.target, sampler=worker_sampler, pruner=worker_pruner)
    assert set(worker_sampler.sampled) == {5, 6, 7} and set(worker_pruner.asked) == {5, 6, 7}
    assert (sampler.sampled, pruner.asked) == before


def test_default_sampler_is_tpe_with_constant_liar_kept_from_off_space_trials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, name="dflt")
    study = open_study(settings, f"sqlite:///{tmp_path / 'dflt.db'}")
    assert isinstance(study.sampler, InSpaceSampler) and isinstance(study.pruner, NoiseAwarePruner)
    assert isinstance(study.sampler.sampler, optuna.samplers.TPESampler)
    assert study.sampler.sampler._constant_liar


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_trial_left_running_by_a_dead_process_is_failed_with_its_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    study = optuna.create_study(study_name="dead", storage=make_storage(url))
    trial = study.ask()
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": 1.0})
    study.ask().set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "started": None})
    assert recover_stale_trials(study) == [trial.number]
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [trial.number]
    assert failed[0].user_attrs["failure"]["kind"] == "interrupted"
    assert "died while this trial ran" in failed[0].user_attrs["failure"]["message"]


def test_heartbeat_interval_from_the_storage(tmp_path: Path) -> None:
    rdb = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval_s=7,
                                                   grace_period_s=20))
    assert heartbeat_interval_s(rdb) == 7.0
    plain = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 'no.db'}", heartbeat=False))
    journal = optuna.create_study(storage=make_storage(f"journal:{tmp_path / 'j.log'}"))
    assert heartbeat_interval_s(plain) is None and heartbeat_interval_s(journal) is None
    wait_for_running(journal, quiet=True)  # no heartbeats: returns at once


def test_private_optuna_apis_only_behind_their_helpers() -> None:
    """``study._storage`` and ``_trial_id`` only in the helpers of _storage.py; no private Optuna modules."""
    private_modules = re.compile(r"optuna\.(study|storages|samplers|trial)\._\w+|_get_pareto_front_trials")
    for path in sorted((ROOT / "vtune").rglob("*.py")):
        text = path.read_text()
        assert not private_modules.search(text), path
        uses = [line.strip() for line in text.splitlines() if re.search(r"\w\._storage\b|\w\._trial_id\b", line)]
        uses = [u for u in uses if not u.startswith(("from ", "import ", "#", '"')) and "``" not in u]  # code, not docs
        # (lines starting with a quote are the lazy table of vtune/study/__init__.py: module names)
        if path.name == "_storage.py" and path.parent.name == "study":
            assert uses == ["return study._storage",
                            "_study_storage(study).set_trial_user_attr(trial._trial_id, key, value)"], uses
        else:
            assert uses == [], (path, uses)
