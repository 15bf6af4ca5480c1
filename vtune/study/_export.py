"""Export and summary: the best config under ``configs/``, ``best --format json``, the study summary.

The best configuration is shown by the mean of its measurements, with their number and
trial numbers, everywhere (:mod:`vtune.study._selection`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vtune._objectives import objective_summary
from vtune._serve_config import ServeConfig
from vtune.study._runner import count_done
from vtune.study._selection import Configuration, describe_measurements, pick_configuration
from vtune.study._settings import StudySettings

__all__ = ["StudySummary", "best_record", "capacity_record", "dump_json", "export_best", "json_safe",
           "mean_result_dict", "summarize", "target_rate_line"]


@dataclass
class StudySummary:
    """What a study run did.

    Attributes:
        best_trial: The trial standing for the best configuration (its latest measurement).
        best_values: The best configuration's objective values, the mean of its measurements.
        best_measurements: How many measurements that mean is over.
        best_trials: Their trial numbers.
        best_text: One line: the mean values and the measurements they come from.
        remeasured: Trials whose configuration was measured again at the end.
        remeasure_skipped: Why re-measurements were left out (``"time budget"``), else None.
        best_capacity_streams: A capacity study's best capacity in streams (latest
            measurement), else None.
        target_rate_rps: The study's target rate, else None.
        target_rate_line: ``R req/s needs N x <flags> = G GPUs`` for the best, else None.
    """

    name: str
    storage: str
    finished_trials: int
    launches: int
    pruned_before_launch: int
    stopped_early: int
    failed: int
    gpu_seconds_saved: float
    best_trial: int | None
    best_values: list[float] | None
    best_flags: str | None
    exported: list[str]
    recovered: list[int]
    ran_here: list[int] = field(default_factory=list)
    max_concurrent_trials: int = 1
    best_measurements: int = 0
    best_trials: list[int] = field(default_factory=list)
    best_text: str | None = None
    remeasured: list[int] = field(default_factory=list)
    remeasure_skipped: str | None = None
    best_capacity_streams: int | None = None
    target_rate_rps: float | None = None
    target_rate_line: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)

def _describe(conf: Configuration, settings: StudySettings) -> str:
    return f"{objective_summary(settings.objectives, list(conf.values))} ({describe_measurements(conf)})"

def export_best(study: optuna.Study, settings: StudySettings, pick: str | None = None) -> list[str]:
    """Writes ``configs/<name>.yaml``, ``.flags`` and ``.env`` for the best configuration.

    The header line gives the mean of the configuration's measurements and their trials.
    """
    conf = pick_configuration(study, settings, pick)
    if conf is None:
        return []
    trial = conf.trial
    cfg = ServeConfig.from_dict(trial.user_attrs["config"])
    settings.configs_dir.mkdir(parents=True, exist_ok=True)
    stem = settings.configs_dir / settings.name
    yaml_cfg = cfg.replace(env={})
    header = (f"# vtune study {settings.name}, trial {trial.number}: {_describe(conf, settings)}\n"
              f"# workload {settings.workload.name}; {settings.target.describe()}\n")
    if cfg.env:
        header += f"# environment: see {stem.name}.env ({' '.join(f'{k}={v}' for k, v in cfg.env.items())})\n"
    # Appended, not Path.with_suffix: a study name like qwen3-1.7b-chatbot has a dot of its own.
    paths = [stem.parent / f"{stem.name}{ext}" for ext in (".yaml", ".flags", ".env")]
    paths[0].write_text(header + yaml_cfg.to_yaml())
    paths[1].write_text(cfg.to_flags_line() + "\n")
    paths[2].write_text("".join(f"{k}={v}\n" for k, v in sorted(cfg.env.items())))
    return [str(p) for p in paths]

def mean_result_dict(group: list[FrozenTrial] | tuple[FrozenTrial, ...]) -> dict[str, Any] | None:
    """The ``result`` user attribute averaged over a configuration's measurements.

    Every number (percentiles included) is the mean over the measurements that have it;
    anything else is the latest one's.
    """
    results = [t.user_attrs.get("result") for t in group]
    results = [r for r in results if isinstance(r, dict)]
    if not results:
        return None
    return _mean_tree(results)

def _mean_tree(items: list[Any]) -> Any:
    last = items[-1]
    if isinstance(last, dict):
        keys = list(dict.fromkeys(k for d in items if isinstance(d, dict) for k in d))
        return {k: _mean_tree([d[k] for d in items if isinstance(d, dict) and k in d]) for k in keys}
    nums = [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    if isinstance(last, int | float) and not isinstance(last, bool) and nums:
        return sum(nums) / len(nums)
    return last

def capacity_record(conf: Configuration, target_rate_rps: float | None = None) -> dict[str, Any] | None:
    """The ``capacity`` object of ``best --format json`` for one configuration (None: it measured none).

    :func:`vtune._trial.capacity_summary` of its latest measurement (``concurrency`` in
    streams, ``requests_per_second``, ``output_tokens_per_second``, ``slo_attainment``,
    ``probes``, ...), plus ``mean_requests_per_second`` over its ``measurements``; with
    a target rate, ``target_rate_rps`` and the ``replicas`` and ``gpus`` it needs by its
    mean capacity (as the selection ranks; None when its capacity is 0).
    """
    from vtune._trial import capacity_summary
    from vtune.study._capacity import rate_answer, trial_capacity, trial_gpus

    measured = [(t, r) for t in conf.trials if (r := trial_capacity(t)) is not None]
    if not measured:
        return None
    latest, cap = measured[-1]
    out = capacity_summary(cap, num_gpus=trial_gpus(latest))
    out["trial"] = latest.number
    out["measurements"] = len(measured)
    out["mean_requests_per_second"] = sum(r.requests_per_second for _, r in measured) / len(measured)
    out["mean_concurrency"] = sum(r.capacity_streams for _, r in measured) / len(measured)
    if target_rate_rps is not None:
        answer = rate_answer(conf, target_rate_rps)
        out["target_rate_rps"] = target_rate_rps
        out["replicas"], out["gpus"] = answer if answer is not None else (None, None)
    return out

def target_rate_line(conf: Configuration, target_rate_rps: float) -> str:
    """``R req/s needs N x <flags> = G GPUs`` for one configuration (or why it cannot)."""
    from vtune.study._capacity import rate_answer

    answer = rate_answer(conf, target_rate_rps)
    if answer is None:
        return (f"{target_rate_rps:g} req/s cannot be served by {conf.key}: it met the SLOs at no load "
                "(capacity 0)")
    servers, gpus = answer
    return f"{target_rate_rps:g} req/s needs {servers} x {conf.key} = {gpus} GPU{'s' if gpus != 1 else ''}"

def best_record(study: optuna.Study, settings: StudySettings, pick: str | None = None,
                target_rate_rps: float | None = None) -> dict[str, Any] | None:
    """What ``vtune best --format json`` prints (None: nothing measured yet).

    Keys: ``trial`` (the trial standing for the configuration), ``trials`` and
    ``measurements`` (the measurements the means are over), ``values`` (the mean
    objective values), ``trial_values`` (each measurement's), ``objectives``,
    ``config``, ``flags``, ``env``, ``result`` (the mean result, :func:`mean_result_dict`),
    ``capacity`` (:func:`capacity_record`; None in a fixed-load study); with a target rate
    (``target_rate_rps``, else the study's) also ``target_rate_rps`` and
    ``target_rate_line``.

    Raises:
        VtuneError: A malformed ``pick`` or none meeting it.
    """
    from vtune.study._capacity import study_target_rate

    rate = target_rate_rps if target_rate_rps is not None else study_target_rate(study)
    conf = pick_configuration(study, settings, pick, rate)
    if conf is None:
        return None
    cfg = ServeConfig.from_dict(conf.trial.user_attrs["config"])
    extra: dict[str, Any] = {"capacity": capacity_record(conf, rate)}
    if rate is not None and extra["capacity"] is not None:
        extra["target_rate_rps"] = rate
        extra["target_rate_line"] = target_rate_line(conf, rate)
    return {
        "schema_version": 1,
        "description": "the best configuration of a vtune study; values and result are means over its "
                       "measurements (trials)",
        "trial": conf.trial.number, "trials": conf.numbers, "measurements": len(conf.trials),
        "values": list(conf.values), "trial_values": {str(t.number): list(t.values) for t in conf.trials},
        "objectives": [o.name for o in settings.objectives], "config": cfg.to_dict(), "flags": cfg.to_flags_line(),
        "env": cfg.env, "result": mean_result_dict(conf.trials), **extra,
    }

def summarize(study: optuna.Study, settings: StudySettings, url: str, exported: list[str],
              recovered: list[int]) -> StudySummary:
    """Counts of what the study did, and its best configuration by the mean of its measurements."""
    trials = study.get_trials(deepcopy=False)
    pruned_before = [t for t in trials if t.user_attrs.get("pruned_by") in ("memory_model", "invalid_config")]
    early = [t for t in trials if t.user_attrs.get("pruned_by") == "early_stopping"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    launches = [t for t in trials if t.user_attrs.get("run_dir")]
    from vtune.study._capacity import study_target_rate, trial_capacity

    best = pick_configuration(study, settings)
    rate = study_target_rate(study)
    caps = [r for t in best.trials if (r := trial_capacity(t)) is not None] if best else []
    return StudySummary(
        name=settings.name, storage=url,
        finished_trials=count_done(study), launches=len(launches), pruned_before_launch=len(pruned_before),
        stopped_early=len(early), failed=len(failed),
        gpu_seconds_saved=sum(float(t.user_attrs.get("gpu_seconds_saved", 0.0)) for t in early),
        best_trial=best.trial.number if best else None,
        best_values=list(best.values) if best else None,
        best_flags=best.trial.user_attrs.get("flags") if best else None, exported=exported, recovered=recovered,
        best_measurements=len(best.trials) if best else 0, best_trials=best.numbers if best else [],
        best_text=_describe(best, settings) if best else None,
        best_capacity_streams=caps[-1].capacity_streams if caps else None,
        target_rate_rps=rate if caps else None,
        target_rate_line=target_rate_line(best, rate) if best is not None and caps and rate is not None else None,
    )

def json_safe(obj: Any) -> Any:
    """``obj`` with infinities and NaN as None (JSON has neither), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj

def dump_json(obj: Any) -> str:
    """JSON text with non-finite floats as null."""
    return json.dumps(json_safe(obj), indent=2, default=str)
