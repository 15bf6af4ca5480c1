"""Export and summary: the best config under ``configs/``, the study summary, JSON output."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from vtune._objectives import objective_summary
from vtune._serve_config import ServeConfig
from vtune.study._runner import count_done
from vtune.study._selection import config_measurements, mean_values, pick_trial
from vtune.study._settings import StudySettings

__all__ = ["StudySummary", "dump_json", "export_best", "json_safe", "summarize"]


@dataclass
class StudySummary:
    """What a study run did."""

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

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)

def export_best(study: optuna.Study, settings: StudySettings, pick: str | None = None) -> list[str]:
    """Writes ``configs/<name>.yaml``, ``.flags`` and ``.env`` for the best trial."""
    trial = pick_trial(study, settings, pick)
    if trial is None:
        return []
    cfg = ServeConfig.from_dict(trial.user_attrs["config"])
    settings.configs_dir.mkdir(parents=True, exist_ok=True)
    stem = settings.configs_dir / settings.name
    yaml_cfg = cfg.replace(env={})
    header = (f"# vtune study {settings.name}, trial {trial.number}: "
              f"{objective_summary(settings.objectives, trial.values)}\n"
              f"# workload {settings.workload.name}; {settings.target.describe()}\n")
    if cfg.env:
        header += f"# environment: see {stem.name}.env ({' '.join(f'{k}={v}' for k, v in cfg.env.items())})\n"
    paths = [stem.with_suffix(".yaml"), stem.with_suffix(".flags"), stem.with_suffix(".env")]
    paths[0].write_text(header + yaml_cfg.to_yaml())
    paths[1].write_text(cfg.to_flags_line() + "\n")
    paths[2].write_text("".join(f"{k}={v}\n" for k, v in sorted(cfg.env.items())))
    return [str(p) for p in paths]

def summarize(study: optuna.Study, settings: StudySettings, url: str, exported: list[str],
              recovered: list[int]) -> StudySummary:
    """Counts of what the study did."""
    trials = study.get_trials(deepcopy=False)
    pruned_before = [t for t in trials if t.user_attrs.get("pruned_by") in ("memory_model", "invalid_config")]
    early = [t for t in trials if t.user_attrs.get("pruned_by") == "early_stopping"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    launches = [t for t in trials if t.user_attrs.get("run_dir")]
    best = pick_trial(study, settings)
    return StudySummary(
        name=settings.name, storage=url,
        finished_trials=count_done(study), launches=len(launches), pruned_before_launch=len(pruned_before),
        stopped_early=len(early), failed=len(failed),
        gpu_seconds_saved=sum(float(t.user_attrs.get("gpu_seconds_saved", 0.0)) for t in early),
        best_trial=best.number if best else None,
        best_values=mean_values(config_measurements(trials, best)) if best else None,
        best_flags=best.user_attrs.get("flags") if best else None, exported=exported, recovered=recovered,
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
