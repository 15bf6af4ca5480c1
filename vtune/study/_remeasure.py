"""The re-measurements at the end of a study: the best few configurations measured once more.

They show the run-to-run noise (the report's spread, the pruner's allowance) and run only
while the time left under ``--timeout`` covers one more measurement, so the time budget bounds
the whole study.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from vtune._objectives import slo_constraints
from vtune._serve_config import ServeConfig
from vtune.study._runner import _Runner, count_done
from vtune.study._selection import best_configurations
from vtune.study._settings import StudySettings

__all__ = ["Remeasured", "remeasure"]


@dataclass
class Remeasured:
    """What :func:`remeasure` did.

    Attributes:
        remeasured: Trials whose configuration was measured again (this call).
        skipped: Why some were left out: ``"time budget"`` when the time left under
            ``--timeout`` did not cover one more measurement; None otherwise.
    """

    remeasured: list[int] = field(default_factory=list)
    skipped: str | None = None

def _measurement_s(study: optuna.Study, trial: FrozenTrial) -> float:
    """Seconds one more measurement of ``trial``'s configuration takes.

    Its own recorded ``timings.total_s``, else the median over the study's launched trials
    (0: none recorded).
    """
    own = (trial.user_attrs.get("timings") or {}).get("total_s")
    if own:
        return float(own)
    spans = sorted(float(s) for t in study.get_trials(deepcopy=False)
                   if (s := (t.user_attrs.get("timings") or {}).get("total_s")))
    return spans[len(spans) // 2] if spans else 0.0

def remeasure(study: optuna.Study, settings: StudySettings, runner: _Runner, *, deadline_s: float | None = None,
              clock: Callable[[], float] = time.monotonic) -> Remeasured:
    """Re-measures the best few configurations once each (kept in the study's user attrs).

    Args:
        study: The study.
        settings: Its settings (``remeasure_top_k`` of them).
        runner: Runs the measurement (the study's trial function and resources).
        deadline_s: ``clock()`` reading by which the study must end (``--timeout``): a
            re-measurement starts only if the time left covers it (its configuration's
            recorded ``timings.total_s``); None: no limit.
        clock: The clock ``deadline_s`` is read on.

    Returns:
        The trials re-measured, and why any were skipped.
    """
    out = Remeasured()
    k = settings.remeasure_top_k
    if k <= 0:
        return out
    done: dict[str, list[float]] = dict(study.user_attrs.get("remeasurements") or {})
    top = best_configurations(study)[:k]
    for conf in top:
        t = conf.trial
        if any(str(x.number) in done or x.user_attrs.get("remeasure_of") is not None for x in conf.trials):
            continue  # re-measured already (a resumed study)
        cfg = ServeConfig.from_dict(t.user_attrs["config"]).replace(model=settings.model)
        if runner.resource_problem(cfg):
            continue  # measured on a bigger worker than this machine
        if deadline_s is not None:
            need_s, left_s = _measurement_s(study, t), deadline_s - clock()
            if left_s <= 0 or need_s > left_s:
                runner.progress.line(count_done(study), t.number, "re-measure",
                                     f"skipped: one measurement takes about {need_s:.0f}s, {max(0.0, left_s):.0f}s "
                                     "of the time budget left", 0)
                out.skipped = "time budget"
                break
        run_dir = settings.study_dir / "remeasure" / str(t.number)
        runner.progress.line(count_done(study), t.number, "re-measure", "launching", 0)
        # The same resources as the trials had (one lease of the pool when they were packed).
        gpus, cores, lease = runner.lease(cfg)
        extra: dict[str, Any] = {"cpu_cores": cores} if cores is not None else {}
        options = runner.capacity_options(cfg)  # a capacity study re-measures capacity (never stopped early)
        if options is not None:
            extra["capacity"] = options
        try:
            rec = runner.trial_fn(cfg, settings.workload, run_dir, gpus=gpus, duration_s=settings.duration_s,
                                  cache_dir=runner.cache_dir, **extra)
        finally:
            runner.release(lease)
        if rec.result is None or rec.failure is not None or (options is not None and rec.capacity is None):
            continue  # a failed measurement is no measurement of the configuration
        values = runner.values_of(rec, cfg)
        _add_measurement(study, settings, runner, t, rec, values)
        done[str(t.number)] = [float(t.values[0]), values[0]]
        study.set_user_attr("remeasurements", done)
        out.remeasured.append(t.number)
    return out


class _Attrs:
    """Collects what the runner records on a trial, for a trial added afterwards."""

    def __init__(self) -> None:
        self.user_attrs: dict[str, Any] = {}

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def _add_measurement(study: optuna.Study, settings: StudySettings, runner: _Runner, of: FrozenTrial, rec: Any,
                     values: list[float]) -> None:
    """Records a re-measurement as a completed trial of the same configuration.

    So that it counts everywhere a measurement counts (the configuration's mean, its spread,
    ``best``, the report's curves from its probes), with ``remeasure_of`` naming the trial it repeats.
    """
    attrs = _Attrs()
    runner._record(attrs, rec, None)  # type: ignore[arg-type]  # the same attributes as a trial's
    # Not "baseline": a baseline names one trial (the report and the resumed study look for it by name).
    keep = ("config", "flags", "num_gpus", "off_space", "prediction", "gpus", "cpu_cores")
    user_attrs = {**{k: of.user_attrs[k] for k in keep if k in of.user_attrs}, **attrs.user_attrs,
                  "remeasure_of": of.number}
    constraints = None
    if of.constraints and rec.result is not None:  # a fixed-load study's SLO constraints, as its trials have
        constraints = slo_constraints(rec.result, settings.workload.slo)
    trial = optuna.trial.create_trial(values=values, params=of.params, distributions=of.distributions,
                                      user_attrs=user_attrs, constraints=constraints)
    if trial.datetime_complete is not None and rec.total_s:  # its wall time counts (``--timeout`` on resume)
        trial.datetime_start = trial.datetime_complete - datetime.timedelta(seconds=float(rec.total_s))
    study.add_trial(trial)
