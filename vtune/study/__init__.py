"""The study: an Optuna search over vLLM flags, measured on real engines.

Modules by concern: :mod:`._settings` (what defines a study), :mod:`._storage` (storages,
heartbeats, stale trials), :mod:`._baselines`, :mod:`._runner` (one trial), :mod:`._packing`
(trials at once on disjoint GPUs/cores), :mod:`._selection` (configuration means, best, pick),
:mod:`._pruner`, :mod:`._export` (configs/ files, summary), :mod:`._submit` (Slurm/PBS),
and :mod:`._study` (run_study, run_worker).

Names load on first use, so importing a submodule (``vtune.study._submit``) does not
import Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtune.study._baselines import baseline_configs, enqueue_baselines
    from vtune.study._export import StudySummary, dump_json, export_best, json_safe, summarize
    from vtune.study._packing import (
        CPU_TRIAL_OVERHEAD_GIB,
        ResourcePool,
        cpu_trial_memory_gib,
        default_concurrency,
        layout_sizes,
        pick_positions,
    )
    from vtune.study._pruner import NoiseAwarePruner
    from vtune.study._runner import (
        GPU_MEMORY_TOLERANCE_MIB,
        GPU_MEMORY_WAIT_S,
        REUSE_AFTER,
        STRICT_SEQS_FACTOR,
        GpuMemoryNotBack,
        TrialFailed,
        config_problem,
        count_done,
        count_started,
        elapsed_s,
    )
    from vtune.study._selection import (
        best_trials,
        config_groups,
        config_key,
        config_measurements,
        is_feasible,
        mean_result,
        mean_values,
        measured_noise,
        pick_trial,
    )
    from vtune.study._settings import ATTR, SCHEMA_VERSION, StudySettings, load_settings
    from vtune.study._storage import (
        GRACE_PERIOD_S,
        HEARTBEAT_INTERVAL_S,
        default_storage,
        make_storage,
        recover_stale_trials,
        wait_for_running,
    )
    from vtune.study._study import open_study, prepare_study, remeasure, run_study, run_worker, worker_target
    from vtune.study._submit import walltime_hms, worker_job_script

_HOME = {
    "ATTR": "vtune.study._settings",
    "CPU_TRIAL_OVERHEAD_GIB": "vtune.study._packing",
    "GPU_MEMORY_TOLERANCE_MIB": "vtune.study._runner",
    "GPU_MEMORY_WAIT_S": "vtune.study._runner",
    "GRACE_PERIOD_S": "vtune.study._storage",
    "GpuMemoryNotBack": "vtune.study._runner",
    "HEARTBEAT_INTERVAL_S": "vtune.study._storage",
    "NoiseAwarePruner": "vtune.study._pruner",
    "REUSE_AFTER": "vtune.study._runner",
    "ResourcePool": "vtune.study._packing",
    "SCHEMA_VERSION": "vtune.study._settings",
    "STRICT_SEQS_FACTOR": "vtune.study._runner",
    "StudySettings": "vtune.study._settings",
    "StudySummary": "vtune.study._export",
    "TrialFailed": "vtune.study._runner",
    "baseline_configs": "vtune.study._baselines",
    "best_trials": "vtune.study._selection",
    "config_groups": "vtune.study._selection",
    "config_key": "vtune.study._selection",
    "config_measurements": "vtune.study._selection",
    "config_problem": "vtune.study._runner",
    "count_done": "vtune.study._runner",
    "count_started": "vtune.study._runner",
    "cpu_trial_memory_gib": "vtune.study._packing",
    "default_concurrency": "vtune.study._packing",
    "default_storage": "vtune.study._storage",
    "dump_json": "vtune.study._export",
    "elapsed_s": "vtune.study._runner",
    "enqueue_baselines": "vtune.study._baselines",
    "export_best": "vtune.study._export",
    "is_feasible": "vtune.study._selection",
    "json_safe": "vtune.study._export",
    "layout_sizes": "vtune.study._packing",
    "load_settings": "vtune.study._settings",
    "make_storage": "vtune.study._storage",
    "mean_result": "vtune.study._selection",
    "mean_values": "vtune.study._selection",
    "measured_noise": "vtune.study._selection",
    "open_study": "vtune.study._study",
    "pick_positions": "vtune.study._packing",
    "pick_trial": "vtune.study._selection",
    "prepare_study": "vtune.study._study",
    "recover_stale_trials": "vtune.study._storage",
    "remeasure": "vtune.study._study",
    "run_study": "vtune.study._study",
    "run_worker": "vtune.study._study",
    "summarize": "vtune.study._export",
    "wait_for_running": "vtune.study._storage",
    "walltime_hms": "vtune.study._submit",
    "worker_job_script": "vtune.study._submit",
    "worker_target": "vtune.study._study",
}
__all__ = [
    "ATTR", "CPU_TRIAL_OVERHEAD_GIB", "GPU_MEMORY_TOLERANCE_MIB", "GPU_MEMORY_WAIT_S", "GRACE_PERIOD_S",
    "GpuMemoryNotBack", "HEARTBEAT_INTERVAL_S", "NoiseAwarePruner", "REUSE_AFTER", "ResourcePool", "SCHEMA_VERSION",
    "STRICT_SEQS_FACTOR", "StudySettings", "StudySummary", "TrialFailed", "baseline_configs", "best_trials",
    "config_groups", "config_key", "config_measurements", "config_problem", "count_done", "count_started",
    "cpu_trial_memory_gib", "default_concurrency", "default_storage", "dump_json", "elapsed_s", "enqueue_baselines",
    "export_best", "is_feasible", "json_safe", "layout_sizes", "load_settings", "make_storage", "mean_result",
    "mean_values", "measured_noise", "open_study", "pick_positions", "pick_trial", "prepare_study",
    "recover_stale_trials", "remeasure", "run_study", "run_worker", "summarize", "wait_for_running", "walltime_hms",
    "worker_job_script", "worker_target",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'vtune.study' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
