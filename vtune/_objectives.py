"""What a study optimizes, the SLO constraints, and the noise-aware pruner.

Objective names (``--objectives``, comma-separated for a Pareto study):

* ``goodput``: requests/s meeting every per-request SLO (maximize; the default);
* ``throughput``: output tokens/s (maximize);
* ``requests``: completed requests/s (maximize);
* ``<metric>_p<N>`` with metric ``ttft``, ``itl``, ``tpot`` or ``e2e`` and N in
  50/90/99, e.g. ``ttft_p99``: that latency percentile in ms (minimize).

SLO violations are Optuna constraints (``trial.set_constraint``), one per SLO:
``observed / limit - 1`` at the SLO's percentile; a trial is feasible when all
are <= 0. They are not folded into the objective.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune._workload import Slo
from vtune.loads._results import TrialResult

__all__ = ["NoiseAwarePruner", "Objective", "parse_objectives", "slo_constraints"]

_LATENCY = re.compile(r"^(ttft|itl|tpot|e2e)_p(50|90|99)$")
_LATENCY_FIELD = {"ttft": "ttft_ms", "itl": "itl_ms", "tpot": "tpot_ms", "e2e": "e2e_latency_ms"}


@dataclass(frozen=True)
class Objective:
    """One optimization target.

    Attributes:
        name: As given on the command line.
        direction: ``maximize`` or ``minimize``.
        unit: For display.
    """

    name: str
    direction: str
    unit: str

    def value(self, result: TrialResult) -> float:
        """The objective's value from a measured result (NaN-free)."""
        if self.name == "goodput":
            return float(result.goodput_requests_per_second)
        if self.name == "throughput":
            return float(result.output_tokens_per_second)
        if self.name == "requests":
            return float(result.requests_per_second)
        m = _LATENCY.match(self.name)
        assert m is not None
        pct = getattr(result, _LATENCY_FIELD[m.group(1)])
        v = getattr(pct, "p" + m.group(2))
        return float(v) if v is not None and math.isfinite(v) else 1e12

    @property
    def maximize(self) -> bool:
        """Whether higher is better."""
        return self.direction == "maximize"


def parse_objectives(text: str | None) -> list[Objective]:
    """Parses ``--objectives``.

    Raises:
        VtuneError: An unknown name.
    """
    names = [n.strip() for n in (text or "goodput").split(",") if n.strip()]
    out = []
    for name in names:
        if name == "goodput":
            out.append(Objective(name, "maximize", "req/s"))
        elif name == "throughput":
            out.append(Objective(name, "maximize", "tok/s"))
        elif name == "requests":
            out.append(Objective(name, "maximize", "req/s"))
        elif _LATENCY.match(name):
            out.append(Objective(name, "minimize", "ms"))
        else:
            raise VtuneError(
                f"--objectives {text}: unknown objective {name!r}; use goodput, throughput, requests or a latency "
                "percentile like ttft_p99, itl_p90, e2e_p50"
            )
    if len({o.name for o in out}) != len(out):
        raise VtuneError(f"--objectives {text}: an objective is listed twice")
    return out


def slo_constraints(result: TrialResult, slo: Slo) -> dict[str, float]:
    """``observed / limit - 1`` per SLO at its percentile (<= 0 is met)."""
    out = {}
    for key, target in slo.items():
        observed = result.slo_observed_ms.get(key)
        if observed is None or not math.isfinite(observed):
            out[key] = 1.0  # nothing measured: treat as violated
        else:
            out[key] = observed / target.max_ms - 1.0
    return out


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


class NoiseAwarePruner(BasePruner):
    """Stops a trial whose load is clearly worse than the best configuration so far.

    A trial's load runs in equal steps and reports the cumulative objective
    after each. The trial is stopped when even an optimistic reading of it is
    worse than the best *configuration*: the best mean over the finished
    feasible trials of one configuration (a single lucky measurement does not
    set the bar). Optimistic means ``mean x (1 + noise) + z x stderr`` when
    maximizing, where ``stderr`` comes from the trial's own step values and
    ``noise`` is the larger of ``noise_rel`` and two standard deviations of the
    run-to-run noise measured in this study (configurations measured more than
    once, re-measurements). A replay of a landscape recorded on a shared 2-core
    machine measured a log-sd of 0.34: there the pruner allows ~70%, where a
    fixed 15% cut three in four trials, the best among them. Baseline and
    multi-objective trials are never pruned.

    Args:
        noise_rel: Smallest relative noise allowed for.
        z: Standard errors of the step values added on top.
        n_startup_trials: Finished trials needed before pruning starts.
        min_steps: Steps a trial runs before it can be pruned.
    """

    def __init__(self, noise_rel: float = 0.15, z: float = 2.0, n_startup_trials: int = 2, min_steps: int = 1):
        self.noise_rel = noise_rel
        self.z = z
        self.n_startup_trials = n_startup_trials
        self.min_steps = min_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Decides after each reported step."""
        if len(study.directions) > 1 or trial.user_attrs.get("baseline"):
            return False
        steps = sorted(trial.intermediate_values)
        if len(steps) < self.min_steps:
            return False
        finished = [
            t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and is_feasible(t)
        ]
        if len(finished) < self.n_startup_trials:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        means = [sum(float(t.values[0]) for t in g) / len(g) for g in config_groups(finished).values()]
        best = max(means) if maximize else min(means)
        sd = measured_noise(finished, study.user_attrs.get("remeasurements"))
        noise = max(self.noise_rel, 2 * sd) if sd is not None else self.noise_rel
        cumulative = [trial.intermediate_values[s] for s in steps]
        # Recover per-step values from the cumulative means of equal-length steps.
        per_step = [cumulative[0]] + [
            (k + 1) * cumulative[k] - k * cumulative[k - 1] for k in range(1, len(cumulative))
        ]
        mean = cumulative[-1]
        stderr = 0.0
        if len(per_step) > 1:
            m = sum(per_step) / len(per_step)
            var = sum((x - m) ** 2 for x in per_step) / (len(per_step) - 1)
            stderr = math.sqrt(var / len(per_step))
        if maximize:
            return mean * (1 + noise) + self.z * stderr < best
        return mean * max(0.0, 1 - noise) - self.z * stderr > best


def objective_summary(objectives: list[Objective], values: Any) -> str:
    """``goodput 5.20 req/s`` style text."""
    vals = list(values) if isinstance(values, list | tuple) else [values]
    return ", ".join(f"{o.name} {v:.2f} {o.unit}" for o, v in zip(objectives, vals, strict=False))


__all__ += ["config_groups", "is_feasible", "measured_noise", "objective_summary"]
