"""``--timeout`` bounds the whole study: re-measurements run only while the time left covers one more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vtune.study._study as study_mod
from tests.study.test_export import add_measurement
from tests.study.test_worker import fake_trial, make_settings
from vtune._cli import main
from vtune._model_shape import load_model_shape
from vtune.study._remeasure import remeasure
from vtune.study._runner import _Progress, _Runner
from vtune.study._study import open_study, run_study


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_remeasure_stops_when_the_time_left_does_not_cover_one_more_measurement(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, name="rem")
    settings.remeasure_top_k = 3
    study = open_study(settings, f"sqlite:///{tmp_path / 'rem.db'}")
    for value, seqs in ((9.0, 16), (8.0, 32), (7.0, 64)):
        add_measurement(study, settings, value, seqs, 100.0)  # each recorded timings.total_s = 60 s
    clock = FakeClock()
    calls: list[int] = []

    def measuring_60_s(cfg: Any, *args: Any, **kw: Any) -> Any:
        calls.append(cfg.max_num_seqs)
        clock.now_s += 60.0
        return fake_trial(cfg, *args, **kw)

    runner = _Runner(settings, load_model_shape(settings.model), study, _Progress(3, settings.objectives, quiet=True),
                     trial_fn=measuring_60_s)
    # 130 s left: the first re-measurement (60 s) fits, the second (60 s with 70 s left) too, the third not.
    out = remeasure(study, settings, runner, deadline_s=clock() + 130.0, clock=clock)
    assert calls == [16, 32] and out.remeasured == [0, 1] and out.skipped == "time budget"
    assert sorted(study.user_attrs["remeasurements"]) == ["0", "1"]
    # No deadline: the one left is measured.
    out = remeasure(study, settings, runner, clock=clock)
    assert calls == [16, 32, 64] and out.remeasured == [2] and out.skipped is None


def test_remeasurements_are_measurements_of_their_configuration(tmp_path: Path) -> None:
    """A re-measurement is a trial of its configuration: it enters the mean and ``best``, and is not repeated."""
    from vtune.study._budget import counts_toward_budget
    from vtune.study._selection import best_configurations

    settings = make_settings(tmp_path, name="remt")
    settings.remeasure_top_k = 1
    study = open_study(settings, f"sqlite:///{tmp_path / 'remt.db'}")
    add_measurement(study, settings, 9.0, 16, 100.0)
    add_measurement(study, settings, 8.0, 32, 100.0)
    calls: list[int] = []

    def measuring(cfg: Any, *args: Any, **kw: Any) -> Any:
        calls.append(cfg.max_num_seqs)
        rec = fake_trial(cfg, *args, **kw)
        rec.total_s = 42.0
        return rec

    runner = _Runner(settings, load_model_shape(settings.model), study, _Progress(2, settings.objectives, quiet=True),
                     trial_fn=measuring)
    assert remeasure(study, settings, runner).remeasured == [0]
    added = study.trials[-1]
    assert (added.datetime_complete - added.datetime_start).total_seconds() == pytest.approx(42.0)  # for --timeout
    assert len(study.trials) == 3 and added.user_attrs["remeasure_of"] == 0 and calls == [16]
    assert added.user_attrs["flags"] == study.trials[0].user_attrs["flags"] and added.user_attrs["result"]
    assert not counts_toward_budget(added)  # beyond --n-trials
    conf = next(c for c in best_configurations(study) if 0 in c.numbers)
    assert conf.numbers == [0, 2] and conf.values[0] == pytest.approx((9.0 + added.values[0]) / 2)
    assert remeasure(study, settings, runner).remeasured == [] and calls == [16]  # resumed: not measured again


def slow_trial(total_s: float):
    """A fake trial that records ``total_s`` as its duration (it takes a fraction of a second)."""

    def fn(*args: Any, **kw: Any) -> Any:
        rec = fake_trial(*args, **kw)
        rec.total_s = total_s
        return rec

    return fn


@pytest.mark.parametrize("recorded_s, skipped", [(1000.0, "time budget"), (0.01, None)])
def test_run_study_keeps_remeasurements_inside_the_timeout(tmp_path: Path, recorded_s: float,
                                                            skipped: str | None) -> None:
    settings = make_settings(tmp_path, name=f"t{int(recorded_s)}")
    settings.remeasure_top_k = 2
    summary = run_study(settings, n_trials=3, timeout_s=300, trial_fn=slow_trial(recorded_s), quiet=True,
                        export=False, max_concurrent_trials=1)
    assert summary.finished_trials == 3 and summary.remeasure_skipped == skipped
    remeasured_dirs = sorted(p.name for p in (settings.study_dir / "remeasure").glob("*"))
    if skipped:  # a trial took ~1000 s: with < 300 s left no re-measurement starts
        assert summary.remeasured == [] and remeasured_dirs == []
    else:
        assert len(summary.remeasured) == 2 and remeasured_dirs == sorted(str(n) for n in summary.remeasured)
    # Without --timeout nothing bounds them.
    again = make_settings(tmp_path / "b", name="nolimit")
    again.remeasure_top_k = 1
    summary = run_study(again, n_trials=3, trial_fn=slow_trial(1000.0), quiet=True, export=False,
                        max_concurrent_trials=1)
    assert len(summary.remeasured) == 1 and summary.remeasure_skipped is None


def test_the_cli_says_when_remeasurement_was_skipped_for_time(tmp_path: Path, monkeypatch, capsys) -> None:
    real = study_mod.run_study
    monkeypatch.setattr(study_mod, "run_study",
                        lambda settings, **kw: real(settings, trial_fn=slow_trial(1000.0), **kw))
    code = main(["study", "--study", "cli", "--n-trials", "3", "--timeout", "5m", "--remeasure", "1",
                 "--objectives", "goodput",  # the fake trial measures a fixed load
                 "--max-concurrent-trials", "1", "--studies-dir", str(tmp_path / "studies"),
                 "--configs-dir", str(tmp_path / "configs"), "--duration-s", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "re-measurement skipped (time budget): the time left under --timeout would not cover" in out
    best = next(line for line in out.splitlines() if line.startswith("best: "))
    assert "measurement" in best and "trial" in best  # the mean and the measurements it is over


def test_a_failed_remeasurement_is_not_a_measurement(tmp_path: Path) -> None:
    from vtune.engines import Failure

    settings = make_settings(tmp_path, name="remf")
    settings.remeasure_top_k = 1
    study = open_study(settings, f"sqlite:///{tmp_path / 'remf.db'}")
    add_measurement(study, settings, 9.0, 16, 100.0)

    def dying(cfg: Any, *args: Any, **kw: Any) -> Any:
        rec = fake_trial(cfg, *args, **kw)
        rec.failure = Failure(kind="crash", message="engine died after the load")  # the result is still there
        return rec

    runner = _Runner(settings, load_model_shape(settings.model), study, _Progress(1, settings.objectives, quiet=True),
                     trial_fn=dying)
    assert remeasure(study, settings, runner).remeasured == [] and len(study.trials) == 1
