"""Selection by configuration means: ranking, feasibility, the Pareto front, --pick and the progress text."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import create_trial

from tests.study.test_worker import make_settings
from vtune._errors import VtuneError
from vtune._objectives import parse_objectives
from vtune.study._selection import (
    _best_text,
    best_configurations,
    best_trials,
    config_measurements,
    configurations,
    pick_trial,
)


def measured(values: float | list[float], flags: str, **constraints: float) -> optuna.trial.FrozenTrial:
    vals = values if isinstance(values, list) else [values]
    return create_trial(values=vals, params={}, distributions={}, user_attrs={"flags": flags, "result": {"x": 1}},
                        constraints=constraints or None)


def study_of(trials: list[optuna.trial.FrozenTrial], directions: list[str] | None = None) -> optuna.Study:
    s = optuna.create_study(directions=directions or ["maximize"])
    s.add_trials(trials)
    return s


def test_one_objective_ranks_configurations_by_their_mean() -> None:
    s = study_of([measured(10.0, "A"), measured(4.0, "A"), measured(8.0, "B")])
    assert [c.key for c in best_configurations(s)] == ["B", "A"]
    a = best_configurations(s)[1]
    assert a.values == (7.0,) and a.numbers == [0, 1] and a.trial.number == 1
    assert [t.number for t in best_trials(s)] == [2, 1]


def test_feasibility_is_judged_on_the_mean_of_each_constraint() -> None:
    # A met its SLO once (value 100) and missed it badly once: on average it misses it.
    s = study_of([measured(100.0, "A", ttft_ms=-0.5), measured(90.0, "A", ttft_ms=2.0),
                  measured(50.0, "B", ttft_ms=-0.1)])
    confs = {c.key: c for c in configurations(s.trials)}
    assert confs["A"].constraints == {"ttft_ms": pytest.approx(0.75)} and not confs["A"].feasible
    assert [c.key for c in best_configurations(s)] == ["B"]
    # With nothing feasible, all configurations are ranked by their means.
    s = study_of([measured(100.0, "A", ttft_ms=1.0), measured(50.0, "B", ttft_ms=1.0)])
    assert [c.key for c in best_configurations(s)] == ["A", "B"]


def test_the_pareto_front_is_made_of_configuration_means() -> None:
    # Maximize goodput, minimize p99 TTFT. A's lucky draw (10, 50) would dominate B (8, 50),
    # but A's mean (7, 50) is dominated by B; C (5, 20) trades goodput for latency.
    trials = [measured([10.0, 50.0], "A"), measured([4.0, 50.0], "A"), measured([8.0, 50.0], "B"),
              measured([5.0, 20.0], "C")]
    s = study_of(trials, ["maximize", "minimize"])
    assert sorted(c.key for c in best_configurations(s)) == ["B", "C"]
    settings = make_settings(Path("/tmp"))
    settings.objectives = parse_objectives("goodput,ttft_p99")
    assert pick_trial(s, settings).number == 2  # B: the best goodput of the front
    assert pick_trial(s, settings, "ttft_p99<30").number == 3
    with pytest.raises(VtuneError, match="no configuration on the Pareto front meets it"):
        pick_trial(s, settings, "ttft_p99<10")


def test_reused_trials_and_unfinished_ones_are_not_measurements() -> None:
    trials = [measured(10.0, "A"), measured(6.0, "A"), measured(8.0, "A")]
    trials[2].user_attrs["reused_from"] = [0, 1]
    running = create_trial(state=optuna.trial.TrialState.RUNNING, params={}, distributions={},
                           user_attrs={"flags": "A"})
    s = study_of([*trials, running])
    assert [len(c.trials) for c in configurations(s.trials)] == [2]
    assert [t.number for t in config_measurements(s.trials, s.trials[1])] == [0, 1]


def test_progress_text_gives_the_mean_and_its_measurements() -> None:
    settings = make_settings(Path("/tmp"))
    s = study_of([measured(10.0, "A"), measured(4.0, "A"), measured(3.0, "B")])
    assert _best_text(s, settings) == "goodput 7.00 req/s (mean of 2 measurements: trials 0, 1)"
    s = study_of([measured(3.0, "B")])
    assert _best_text(s, settings) == "goodput 3.00 req/s (1 measurement: trial 0)"
