"""A trial whose GPUs do not get their memory back holds them, then stops the study with a clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

import vtune._hardware as hardware
import vtune.study._runner as study_mod
from tests.study.test_worker import fake_trial, make_settings
from vtune._memory import resolve_gpu
from vtune._target import Target
from vtune.study._runner import GpuMemoryNotBack
from vtune.study._study import run_study

H100 = resolve_gpu("H100-80GB")


def leaky_trial(*args: Any, **kw: Any):
    rec = fake_trial(*args, **kw)
    rec.teardown = {"gpu_memory_back": False, "gpu_memory_before_mib": {str(g): 500 for g in kw["gpus"]}}
    return rec


def settings(tmp_path: Path):
    s = make_settings(tmp_path, target=Target(device="gpu", gpus=(0,), gpu=H100, gpu_names=("H100",)))
    s.space.get("parallel_layout").choices = ["tp1-pp1-dp1"]
    return s


def test_memory_that_comes_back_lets_the_study_go_on(tmp_path, monkeypatch):
    readings = iter([{0: 9000 << 20}, {0: 9000 << 20}] + [{0: 600 << 20}] * 100)
    monkeypatch.setattr(hardware, "gpu_memory_used_bytes", lambda gpus=None: next(readings))
    monkeypatch.setattr(study_mod.time, "sleep", lambda s: None)
    summary = run_study(settings(tmp_path), n_trials=2, trial_fn=leaky_trial, quiet=True, export=False,
                        max_concurrent_trials=1)
    assert summary.finished_trials == 2 and summary.failed == 0


def test_memory_that_stays_stops_the_study_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "gpu_memory_used_bytes", lambda gpus=None: {0: 9000 << 20})
    monkeypatch.setattr(study_mod, "GPU_MEMORY_WAIT_S", 0.0)
    with pytest.raises(GpuMemoryNotBack) as info:
        run_study(settings(tmp_path), n_trials=3, trial_fn=leaky_trial, quiet=True, export=False,
                  max_concurrent_trials=1)
    message = str(info.value)
    assert "\n" not in message and "GPU 0: 8,500 MiB more" in message and "re-run the same command" in message
    db = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'studies' / 'w.db'}")
    first = db.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs["gpu_memory_not_back_mib"] == {"0": 8500}
    # No other trial ran on the half-full GPU: the other enqueued baselines still wait.
    assert [t.state for t in db.trials[1:]] == [optuna.trial.TrialState.WAITING] * (len(db.trials) - 1)
