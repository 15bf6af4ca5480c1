"""Selection: configuration groups and means, the best trials, ``--pick``, measured noise.

A configuration measured several times counts with the mean of its measurements everywhere
(ranking, the progress line, the export header, ``best --format json``, the report).
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune._objectives import objective_summary
from vtune.study._settings import StudySettings

__all__ = [
    "best_trials", "config_groups", "config_key", "config_measurements", "is_feasible", "mean_result",
    "mean_values", "measured_noise", "pick_trial",
]


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint of a trial is met (trials without constraints are)."""
    return all(v <= 0 for v in trial.constraints.values())

def config_groups(trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """Measured trials grouped by configuration (their flags line), in trial order.

    Trials that reused earlier measurements (no launch) are left out.
    """
    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if t.user_attrs.get("reused_from"):
            continue
        groups.setdefault(config_key(t), []).append(t)
    return groups

def config_key(trial: FrozenTrial) -> str:
    """What makes two trials the same configuration: their flags line (else their parameters)."""
    return trial.user_attrs.get("flags") or repr(sorted(trial.params.items()))

def config_measurements(trials: list[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    """The completed, measured trials of ``trial``'s configuration (it included), in trial order."""
    done = [t for t in trials if t.values is not None and t.user_attrs.get("result")
            and not t.user_attrs.get("reused_from")]
    return config_groups(done).get(config_key(trial)) or [trial]

def mean_result(group: list[FrozenTrial], metric: str) -> float | None:
    """Mean of one result metric (e.g. ``goodput_requests_per_second``) over a configuration's measurements."""
    vals = [float(v) for t in group if (v := (t.user_attrs.get("result") or {}).get(metric)) is not None]
    return sum(vals) / len(vals) if vals else None

def measured_noise(trials: list[FrozenTrial], remeasurements: dict[str, list[float]] | None = None) -> float | None:
    """Pooled standard deviation of log(value) over configurations measured more than once.

    Repeats come from the sampler proposing a configuration again, from the
    end-of-study re-measurements, and (in a replay) from a landscape's repeats.
    None when nothing was measured twice.
    """
    samples: list[list[float]] = []
    for group in config_groups(trials).values():
        vals = [float(t.values[0]) for t in group if t.values and t.values[0] > 0]
        if len(vals) > 1:
            samples.append(vals)
    for vals in (remeasurements or {}).values():
        pos = [float(v) for v in vals if v and v > 0]
        if len(pos) > 1:
            samples.append(pos)
    if not samples:
        return None
    num = sum(sum((math.log(v) - sum(map(math.log, vs)) / len(vs)) ** 2 for v in vs) for vs in samples)
    dof = sum(len(vs) - 1 for vs in samples)
    return math.sqrt(num / dof) if dof else None

def mean_values(group: list[FrozenTrial]) -> list[float]:
    """Objective values averaged over a configuration's measurements."""
    return [sum(float(t.values[i]) for t in group) / len(group) for i in range(len(group[0].values))]

def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible best trials: the best one, or the Pareto front (multi-objective)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None]
    feasible = [t for t in done if is_feasible(t)] or done
    if not feasible:
        return []
    if len(study.directions) == 1:
        # Rank configurations by the mean of their measurements (a configuration the sampler
        # proposed twice is not judged by its luckier draw); each is represented by its latest trial.
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        groups = config_groups(feasible).values()
        ranked = sorted(groups, key=lambda g: -sign * sum(float(t.values[0]) for t in g) / len(g))
        return [g[-1] for g in ranked]
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    return _get_pareto_front_trials_by_trials(feasible, study.directions)

def pick_trial(study: optuna.Study, settings: StudySettings, pick: str | None = None) -> FrozenTrial | None:
    """The best trial; with ``pick`` (e.g. ``ttft_p99<500``), the best of the front meeting it.

    The first objective ranks the candidates; ``pick`` filters them by another
    objective's bound.

    Raises:
        VtuneError: A malformed ``--pick`` or no trial meeting it.
    """
    import re

    front = best_trials(study)
    if not front:
        return None
    if not pick:
        return front[0] if len(study.directions) == 1 else _rank_front(front, settings)[0]
    m = re.match(r"^\s*([a-z0-9_]+)\s*(<=|<|>=|>)\s*([0-9.]+)\s*$", pick)
    names = [o.name for o in settings.objectives]
    if not m or m.group(1) not in names:
        raise VtuneError(f"--pick {pick}: write OBJECTIVE<VALUE with an objective of the study ({', '.join(names)})")
    idx, op, bound = names.index(m.group(1)), m.group(2), float(m.group(3))
    ok = {"<": lambda v: v < bound, "<=": lambda v: v <= bound, ">": lambda v: v > bound,
          ">=": lambda v: v >= bound}[op]
    chosen = [t for t in _rank_front(front, settings) if ok(float(t.values[idx]))]
    if not chosen:
        raise VtuneError(f"--pick {pick}: no trial on the Pareto front meets it")
    return chosen[0]

def _rank_front(front: list[FrozenTrial], settings: StudySettings) -> list[FrozenTrial]:
    first = settings.objectives[0]
    return sorted(front, key=lambda t: -float(t.values[0]) if first.maximize else float(t.values[0]))

def _best_text(study: optuna.Study, settings: StudySettings) -> str:
    best = best_trials(study)
    if not best:
        return ""
    t = best[0]
    group = config_measurements(study.get_trials(deepcopy=False), t)
    if len(group) == 1:
        return f"{objective_summary(settings.objectives, t.values)} (trial {t.number})"
    return (f"{objective_summary(settings.objectives, mean_values(group))} (mean of trials "
            f"{', '.join(str(g.number) for g in group)})")
