"""Study settings: everything that defines a study, stored with it so that workers can join."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from vtune._errors import VtuneError
from vtune._objectives import Objective
from vtune._serve_config import ServeConfig
from vtune._space import SearchSpace
from vtune._target import Target
from vtune._workload import Workload

__all__ = ["ATTR", "SCHEMA_VERSION", "StudySettings", "load_settings"]


SCHEMA_VERSION = 1

ATTR = "vtune"  # study user attribute holding the settings

@dataclass
class StudySettings:
    """Everything that defines a study (stored with it, so workers can join).

    Attributes:
        name: Study name (file names under ``studies/`` and ``configs/``).
        model: Model folder (or hub id) served by every trial.
        workload: The workload (load shape and SLOs).
        space: The search space.
        base: Fixed flags applied to every trial (``-- <flags>``).
        objectives: What to optimize.
        target: The hardware.
        duration_s: Measured load seconds per trial (None: the workload's).
        strict_memory: Also prune max-num-seqs far above the predicted KV concurrency.
        remeasure_top_k: Best configs re-measured at the end.
        enqueue: Extra configurations (flag lists) enqueued at the start.
        seed: Sampler seed.
        studies_dir: Folder of the study's artifacts.
        configs_dir: Folder the best config is exported to.
    """

    name: str
    model: str
    workload: Workload
    space: SearchSpace
    base: ServeConfig
    objectives: list[Objective]
    target: Target
    duration_s: float | None = None
    strict_memory: bool = False
    remeasure_top_k: int = 2
    enqueue: list[list[str]] = field(default_factory=list)
    seed: int | None = None
    studies_dir: Path = Path("studies")
    configs_dir: Path = Path("configs")

    @property
    def study_dir(self) -> Path:
        """``studies/<name>/``."""
        return self.studies_dir / self.name

    def to_attr(self) -> dict[str, Any]:
        """The study user attribute."""
        return {
            "schema_version": SCHEMA_VERSION,
            "description": "vtune study settings; fields: vtune.study.StudySettings",
            "model": self.model,
            "workload": self.workload.to_dict(),
            "workload_source": self.workload.source,
            "space": self.space.to_dict(),
            "base": self.base.to_dict(),
            "objectives": [o.name for o in self.objectives],
            "target": self.target.to_dict(),
            "duration_s": self.duration_s,
            "strict_memory": self.strict_memory,
            "remeasure_top_k": self.remeasure_top_k,
        }

def load_settings(study: optuna.Study, *, studies_dir: Path, configs_dir: Path) -> StudySettings:
    """Rebuilds a study's settings from its storage (for workers, best, report).

    Raises:
        VtuneError: The study was not created by vtune.
    """
    from vtune._hardware import cpu_cores
    from vtune._memory import Gpu
    from vtune._objectives import parse_objectives

    data = study.user_attrs.get(ATTR)
    if not data:
        raise VtuneError(f"study {study.study_name!r} has no vtune settings; it was not created by `vtune study`")
    wl = Workload.from_dict(data["workload"], source=data.get("workload_source", "<study>"))
    t = data["target"]
    gpu = Gpu(t["gpu"], t["gpu_memory_gib"]) if t.get("gpu") else None
    target = Target(device=t["device"], gpus=tuple(t.get("gpus") or ()), gpu=gpu,
                    gpu_names=tuple(t.get("gpu_names") or ()), nvlink=t.get("nvlink"),
                    cpu_cores=tuple(cpu_cores()))
    return StudySettings(
        name=study.study_name, model=data["model"], workload=wl, space=SearchSpace.from_dict(data["space"]),
        base=ServeConfig.from_dict(data["base"]), objectives=parse_objectives(",".join(data["objectives"])),
        target=target, duration_s=data.get("duration_s"), strict_memory=bool(data.get("strict_memory")),
        remeasure_top_k=int(data.get("remeasure_top_k", 2)), studies_dir=studies_dir, configs_dir=configs_dir,
    )
