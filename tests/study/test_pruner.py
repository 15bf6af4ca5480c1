"""The noise-aware pruner, configuration means and result reuse."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.study.test_worker import fake_trial, make_settings
from vtune.study._pruner import NoiseAwarePruner
from vtune.study._selection import best_trials, config_groups, measured_noise
from vtune.study._study import run_study


def done(value: float, flags: str, **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(value=value, params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)},
                        user_attrs={"flags": flags, **attrs})


def running(steps: list[float]) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.RUNNING, params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)},
                     user_attrs={"flags": "candidate"})
    t.intermediate_values = dict(enumerate(steps))
    return t


def study_with(trials) -> optuna.Study:
    s = optuna.create_study(direction="maximize")
    for t in trials:
        s.add_trial(t)
    return s


def test_bar_is_the_best_configuration_mean_not_a_lucky_draw():
    # Config A measured 10.0 (lucky) and 5.0: mean 7.5. Config B measured once: 7.0.
    s = study_with([done(10.0, "A"), done(5.0, "A"), done(7.0, "B")])
    # Noise measured on A: log-sd of (10, 5) = ln2/sqrt(2) = 0.49 -> allowance 2 x 0.49 = 0.98.
    assert measured_noise(s.trials) == pytest.approx(math.log(2) / math.sqrt(2))
    pruner = NoiseAwarePruner()
    assert not pruner.prune(s, running([5.0]))  # 5 x 1.98 > 7.5
    assert pruner.prune(s, running([3.0]))  # 3 x 1.98 < 7.5


def test_fixed_noise_floor_without_repeats():
    s = study_with([done(10.0, "A"), done(9.0, "B")])
    assert measured_noise(s.trials) is None
    pruner = NoiseAwarePruner(noise_rel=0.15)
    assert pruner.prune(s, running([8.0]))  # 8 x 1.15 < 10
    assert not pruner.prune(s, running([9.0]))  # 9 x 1.15 > 10


def test_step_noise_widens_the_allowance():
    s = study_with([done(10.0, "A"), done(9.0, "B")])
    # Steps 4 then 12 (cumulative mean 8): per-step stderr 4 -> optimistic 8 x 1.15 + 2 x 4 > 10.
    assert not NoiseAwarePruner().prune(s, running([4.0, 8.0]))


def test_baselines_are_never_pruned():
    s = study_with([done(10.0, "A"), done(9.0, "B")])
    t = running([1.0])
    t.user_attrs["baseline"] = "size-preset"
    assert not NoiseAwarePruner().prune(s, t)


def test_reused_trials_do_not_count_as_measurements():
    trials = [done(10.0, "A"), done(6.0, "A"), done(8.0, "A", reused_from=[0, 1])]
    assert [len(g) for g in config_groups(trials).values()] == [2]


def test_a_configuration_measured_twice_is_reused_without_a_launch(tmp_path):
    # A space of one point: after two measurements, every further trial reuses their mean.
    settings = make_settings(tmp_path)
    for dim in settings.space.dimensions:
        if dim.active:
            dim.fixed = dim.choices[0] if dim.kind == "categorical" else dim.low
    launches = []

    def counting_trial(*args, **kw):
        launches.append(1)
        return fake_trial(*args, **kw)

    summary = run_study(settings, n_trials=7, trial_fn=counting_trial, quiet=True, export=False,
                        max_concurrent_trials=1)
    assert summary.finished_trials == 7
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'studies' / 'w.db'}")
    sampled = [t for t in study.trials if not t.user_attrs.get("baseline")]
    reused = [t for t in sampled if t.user_attrs.get("reused_from")]
    assert reused and all(len(t.user_attrs["reused_from"]) == 2 for t in reused)
    assert len(launches) == summary.launches == 7 - len(reused)
    assert best_trials(study)[0].user_attrs.get("reused_from") is None
