"""Selection: configurations and their means, the best ones, ``--pick``, measured noise.

A configuration (one flags line) measured several times counts with the mean of its
measurements everywhere: ranking, feasibility (the mean of each SLO constraint, as a trial
that reuses earlier measurements records it), the Pareto front, the progress line, the
export header, ``best --format json``, the study summary and the report. Trials that reused
earlier measurements (no launch) are not measurements.

A single-objective capacity study with a target rate (``--target-rate``, study user
attribute ``target_rate_rps``) ranks instead by the GPUs each configuration needs to serve
that rate within the SLOs, fewest first, ties by capacity per GPU
(:func:`vtune.study._capacity.target_rate_order`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune._objectives import objective_summary
from vtune.study._settings import StudySettings

__all__ = [
    "Configuration", "best_configurations", "best_trials", "config_groups", "config_key", "config_measurements",
    "configurations", "describe_measurements", "is_feasible", "mean_result", "mean_values", "measured_noise",
    "pick_configuration", "pick_trial",
]


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint of a trial is met (trials without constraints are)."""
    return all(v <= 0 for v in trial.constraints.values())

def config_groups(trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """Trials grouped by configuration (their flags line), in trial order.

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

def _measured(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The measurements among ``trials``: completed, with values, not reused."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
            and not t.user_attrs.get("reused_from")]

def config_measurements(trials: list[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    """The measurements of ``trial``'s configuration (it included), in trial order."""
    return config_groups(_measured(trials)).get(config_key(trial)) or [trial]

def mean_result(group: list[FrozenTrial], metric: str) -> float | None:
    """Mean of one result metric (e.g. ``goodput_requests_per_second``) over a configuration's measurements."""
    vals = [float(v) for t in group if (v := (t.user_attrs.get("result") or {}).get(metric)) is not None]
    return sum(vals) / len(vals) if vals else None

def mean_values(group: list[FrozenTrial]) -> list[float]:
    """Objective values averaged over a configuration's measurements."""
    return [sum(float(t.values[i]) for t in group) / len(group) for i in range(len(group[0].values))]

@dataclass(frozen=True)
class Configuration:
    """One configuration and its measurements.

    Attributes:
        key: Its flags line (:func:`config_key`).
        trials: Its measurements, in trial order (at least one).
        values: Objective values averaged over them.
        constraints: Each SLO constraint averaged over them (<= 0: met).
    """

    key: str
    trials: tuple[FrozenTrial, ...]
    values: tuple[float, ...]
    constraints: dict[str, float]

    @property
    def trial(self) -> FrozenTrial:
        """The trial that stands for the configuration: its latest measurement."""
        return self.trials[-1]

    @property
    def numbers(self) -> list[int]:
        """Trial numbers of the measurements."""
        return [t.number for t in self.trials]

    @property
    def feasible(self) -> bool:
        """Whether the mean of every constraint is met."""
        return all(v <= 0 for v in self.constraints.values())

def configurations(trials: list[FrozenTrial]) -> list[Configuration]:
    """The measured configurations among ``trials``, each with its means, in order of first measurement."""
    out = []
    for key, group in config_groups(_measured(trials)).items():
        names = sorted({name for t in group for name in t.constraints})
        constraints = {n: sum(float(t.constraints.get(n, 0.0)) for t in group) / len(group) for n in names}
        out.append(Configuration(key, tuple(group), tuple(mean_values(group)), constraints))
    return out

def describe_measurements(conf: Configuration) -> str:
    """``1 measurement: trial 3`` or ``mean of 2 measurements: trials 5, 6``."""
    if len(conf.trials) == 1:
        return f"1 measurement: trial {conf.trial.number}"
    return f"mean of {len(conf.trials)} measurements: trials {', '.join(str(n) for n in conf.numbers)}"

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
    as_trials = {str(t.user_attrs["remeasure_of"]) for t in trials if t.user_attrs.get("remeasure_of") is not None}
    for number, vals in (remeasurements or {}).items():
        if number in as_trials:
            continue  # recorded as a trial too (since the re-measurements became trials): counted above
        pos = [float(v) for v in vals if v and v > 0]
        if len(pos) > 1:
            samples.append(pos)
    if not samples:
        return None
    num = sum(sum((math.log(v) - sum(map(math.log, vs)) / len(vs)) ** 2 for v in vs) for vs in samples)
    dof = sum(len(vs) - 1 for vs in samples)
    return math.sqrt(num / dof) if dof else None

def best_configurations(study: optuna.Study, target_rate_rps: float | None = None) -> list[Configuration]:
    """The best configurations by their means: ranked (one objective) or the Pareto front (several).

    Only feasible configurations (every mean constraint met) count, unless none is. A
    single-objective capacity study with a target rate (``target_rate_rps``, else the
    study's) ranks by the GPUs needed for it (module docstring).
    """
    from vtune.study._capacity import capacity_objective, study_target_rate, target_rate_order

    confs = configurations(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    confs = [c for c in confs if c.feasible] or confs
    if not confs:
        return []
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    if len(signs) == 1:
        ranked = sorted(confs, key=lambda c: -signs[0] * c.values[0])
        rate = target_rate_rps if target_rate_rps is not None else study_target_rate(study)
        names = (study.user_attrs.get("vtune") or {}).get("objectives") or []
        if rate is not None and capacity_objective(names) is not None:
            return target_rate_order(ranked, rate)
        return ranked
    return _pareto_front(confs, signs)

def _pareto_front(confs: list[Configuration], signs: list[float]) -> list[Configuration]:
    """The configurations no other one dominates (by their means), in order of first measurement."""
    scored = [[s * v for s, v in zip(signs, c.values, strict=True)] for c in confs]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))

    return [c for c, a in zip(confs, scored, strict=True) if not any(dominates(b, a) for b in scored)]

def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials standing for :func:`best_configurations` (each one's latest measurement)."""
    return [c.trial for c in best_configurations(study)]

def pick_configuration(study: optuna.Study, settings: StudySettings, pick: str | None = None,
                       target_rate_rps: float | None = None) -> Configuration | None:
    """The best configuration; with ``pick`` (e.g. ``ttft_p99<500``), the best of the front meeting it.

    The first objective's mean ranks the candidates (one objective: the order of
    :func:`best_configurations`, the target rate's when there is one); ``pick`` filters
    them by another objective's mean.

    Raises:
        VtuneError: A malformed ``--pick`` or no configuration meeting it.
    """
    import re

    front = best_configurations(study, target_rate_rps)
    if not front:
        return None
    ranked = _rank_front(front, settings)
    if not pick:
        return ranked[0]
    m = re.match(r"^\s*([a-z0-9_]+)\s*(<=|<|>=|>)\s*([0-9.]+)\s*$", pick)
    names = [o.name for o in settings.objectives]
    if not m or m.group(1) not in names:
        raise VtuneError(f"--pick {pick}: write OBJECTIVE<VALUE with an objective of the study ({', '.join(names)})")
    idx, op, bound = names.index(m.group(1)), m.group(2), float(m.group(3))
    ok = {"<": lambda v: v < bound, "<=": lambda v: v <= bound, ">": lambda v: v > bound,
          ">=": lambda v: v >= bound}[op]
    chosen = [c for c in ranked if ok(float(c.values[idx]))]
    if not chosen:
        raise VtuneError(f"--pick {pick}: no configuration on the Pareto front meets it")
    return chosen[0]

def pick_trial(study: optuna.Study, settings: StudySettings, pick: str | None = None) -> FrozenTrial | None:
    """The trial standing for :func:`pick_configuration`'s choice (None: nothing measured yet)."""
    conf = pick_configuration(study, settings, pick)
    return conf.trial if conf else None

def _rank_front(front: list[Configuration], settings: StudySettings) -> list[Configuration]:
    if len(settings.objectives) == 1:
        return front  # already ranked by best_configurations
    first = settings.objectives[0]
    return sorted(front, key=lambda c: -float(c.values[0]) if first.maximize else float(c.values[0]))

def _best_text(study: optuna.Study, settings: StudySettings) -> str:
    """The progress line's ``best ...`` text: the best configuration's means and its measurements."""
    conf = pick_configuration(study, settings)
    if conf is None:
        return ""
    return f"{objective_summary(settings.objectives, list(conf.values))} ({describe_measurements(conf)})"
