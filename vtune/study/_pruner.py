"""The noise-aware early-stopping pruner (fixed-load steps and capacity probes)."""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from vtune.loads._capacity import Probe
from vtune.study._selection import configurations, is_feasible, measured_noise

__all__ = ["NoiseAwarePruner"]


class NoiseAwarePruner(BasePruner):
    """Stops a trial whose load is clearly worse than the best configuration so far.

    A trial's load runs in equal steps and reports the cumulative objective
    after each. The trial is stopped when even an optimistic reading of it is
    worse than the best *configuration*: the best mean over the measurements of
    one configuration whose mean SLO constraints are met (a single lucky
    measurement does not set the bar). Optimistic means
    ``mean x (1 + noise) + z x stderr`` when maximizing, where ``stderr`` comes from the trial's own step values and
    ``noise`` is the larger of ``noise_rel`` and two standard deviations of the
    run-to-run noise measured in this study (configurations measured more than
    once, re-measurements). A replay of a landscape recorded on a shared 2-core
    machine measured a log-sd of 0.34: there the pruner allows ~70%, where a
    fixed 15% cut three in four trials, the best among them. Baseline and
    multi-objective trials are never pruned.

    A capacity trial has no steps: :meth:`prune_capacity` judges each probe of its
    search instead.

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
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        finished = [t for t in done if t.value is not None and is_feasible(t)]
        if len(finished) < self.n_startup_trials:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        means = [c.values[0] for c in configurations(done) if c.feasible]
        if not means:
            return False
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

    def prune_capacity(self, study: optuna.Study, trial: optuna.Trial | FrozenTrial, probe: Probe, *,
                       num_gpus: int = 1, per_gpu: bool = False) -> bool:
        """Whether a capacity trial should stop at ``probe``: it shows the trial cannot beat the best.

        True at a probe that failed the SLOs while serving fewer requests/s than the best
        configuration's capacity (the mean of its measurements, in the objective's unit:
        requests/s, per GPU for ``capacity_per_gpu`` with this trial's rate divided by
        ``num_gpus``) less the noise allowance (the larger of ``noise_rel`` and two standard
        deviations of the study's measured noise, as for steps). In a closed loop the rate
        served grows with the load, so the trial's capacity (a lower load that passes)
        serves at most that probe's rate: below the best beyond the noise. Compared in
        requests/s, not streams: a faster configuration reaches its capacity at fewer
        streams. A probe that failed on errors rather than on the SLOs does not count.
        Passing probes never stop a trial, nor do baselines, multi-objective studies, or a
        study with fewer than ``n_startup_trials`` finished trials.

        Args:
            study: The study.
            trial: The running trial (its ``baseline`` user attribute is read).
            probe: The probe just measured.
            num_gpus: GPUs one server of the trial's configuration uses.
            per_gpu: Compare streams per GPU (a ``capacity_per_gpu`` study).
        """
        from vtune.study._capacity import best_capacity_value

        if probe.slo_met or probe.fail_reason != "slo" or len(study.directions) > 1 \
                or trial.user_attrs.get("baseline"):
            return False
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        finished = [t for t in done if t.value is not None and is_feasible(t)]
        if len(finished) < self.n_startup_trials:
            return False
        best = best_capacity_value(study)
        if best is None:
            return False
        sd = measured_noise(finished, study.user_attrs.get("remeasurements"))
        noise = max(self.noise_rel, 2 * sd) if sd is not None else self.noise_rel
        rate = probe.requests_per_second / max(1, num_gpus) if per_gpu else probe.requests_per_second
        return rate < best * (1 - noise)
