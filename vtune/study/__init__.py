"""The study: an Optuna search over vLLM flags, measured on real engines.

Modules by concern: :mod:`._settings` (what defines a study), :mod:`._storage` (storages,
heartbeats, stale trials), :mod:`._baselines` (and what the sampler learns from them),
:mod:`._runner` (one trial), :mod:`._packing` (trials at once on disjoint GPUs/cores),
:mod:`._selection` (configuration means, best, pick), :mod:`._pruner`, :mod:`._remeasure`
(the end-of-study re-measurements, inside the time budget), :mod:`._export` (configs/ files,
``best`` JSON, summary), :mod:`._submit` (Slurm/PBS), and :mod:`._study` (run_study, run_worker).
"""

from __future__ import annotations

from vtune.study._baselines import (
    InSpaceSampler,
    baseline_configs,
    baseline_params,
    dimension_value,
    enqueue_baselines,
    in_dimension,
    is_off_space,
    suggest_baseline,
    vllm_default_values,
)
from vtune.study._export import (
    StudySummary,
    best_record,
    dump_json,
    export_best,
    json_safe,
    mean_result_dict,
    summarize,
)
from vtune.study._packing import (
    CPU_TRIAL_OVERHEAD_GIB,
    ResourcePool,
    cpu_trial_memory_gib,
    default_concurrency,
    layout_sizes,
    pick_positions,
)
from vtune.study._pruner import NoiseAwarePruner
from vtune.study._remeasure import Remeasured, remeasure
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
    Configuration,
    best_configurations,
    best_trials,
    config_groups,
    config_key,
    config_measurements,
    configurations,
    describe_measurements,
    is_feasible,
    mean_result,
    mean_values,
    measured_noise,
    pick_configuration,
    pick_trial,
)
from vtune.study._settings import (
    ATTR,
    SCHEMA_VERSION,
    StudySettings,
    build_settings,
    default_study_name,
    load_settings,
)
from vtune.study._storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    default_storage,
    heartbeat_interval_s,
    make_storage,
    recover_stale_trials,
    wait_for_running,
)
from vtune.study._study import open_study, prepare_study, run_study, run_worker, worker_target
from vtune.study._submit import walltime_hms, worker_job_script

__all__ = [
    "ATTR", "CPU_TRIAL_OVERHEAD_GIB", "Configuration", "GPU_MEMORY_TOLERANCE_MIB", "GPU_MEMORY_WAIT_S",
    "GRACE_PERIOD_S", "GpuMemoryNotBack", "HEARTBEAT_INTERVAL_S", "InSpaceSampler", "NoiseAwarePruner", "REUSE_AFTER",
    "Remeasured", "ResourcePool", "SCHEMA_VERSION", "STRICT_SEQS_FACTOR", "StudySettings", "StudySummary",
    "TrialFailed", "baseline_configs", "baseline_params", "best_configurations", "best_record", "best_trials",
    "build_settings", "config_groups", "config_key", "config_measurements", "config_problem", "configurations",
    "count_done", "count_started", "cpu_trial_memory_gib", "default_concurrency", "default_storage",
    "default_study_name", "describe_measurements", "dimension_value", "dump_json", "elapsed_s", "enqueue_baselines",
    "export_best", "heartbeat_interval_s", "in_dimension", "is_feasible", "is_off_space", "json_safe", "layout_sizes",
    "load_settings", "make_storage", "mean_result", "mean_result_dict", "mean_values", "measured_noise", "open_study",
    "pick_configuration", "pick_positions", "pick_trial", "prepare_study", "recover_stale_trials", "remeasure",
    "run_study", "run_worker", "suggest_baseline", "summarize", "vllm_default_values", "wait_for_running",
    "walltime_hms", "worker_job_script", "worker_target"
]
