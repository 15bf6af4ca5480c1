"""The study: an Optuna search over vLLM flags, measured on real engines.

Modules by concern: :mod:`._settings` (what defines a study), :mod:`._storage` (storages,
heartbeats, stale trials), :mod:`._baselines`, :mod:`._runner` (one trial), :mod:`._packing`
(trials at once on disjoint GPUs/cores), :mod:`._selection` (configuration means, best, pick),
:mod:`._pruner`, :mod:`._export` (configs/ files, summary), :mod:`._submit` (Slurm/PBS),
:mod:`._budget` (which trials spend ``--n-trials``), :mod:`._signals` (SIGINT/SIGTERM/SIGHUP stop
a study cleanly), :mod:`._locks` (machine-wide GPU/core leases) and :mod:`._study` (run_study,
run_worker).
"""

from __future__ import annotations

from vtune.study._baselines import baseline_configs, enqueue_baselines
from vtune.study._budget import (
    LOAD_FAILURES,
    MAX_LOAD_FAILURES_IN_A_ROW,
    NOT_COUNTED_FAILURES,
    BudgetSpent,
    counts_toward_budget,
    requeue_baselines,
)
from vtune.study._export import StudySummary, dump_json, export_best, json_safe, summarize
from vtune.study._locks import LOCK_DIR_ENV, UnitLocks, lock_dir
from vtune.study._packing import (
    CPU_TRIAL_OVERHEAD_GIB,
    LeaseAborted,
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
from vtune.study._signals import EXIT_CODES, STOP_SIGNALS, StopSignals, StudyInterrupted, stop_trial_processes
from vtune.study._storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    claim,
    default_storage,
    make_storage,
    recover_stale_trials,
    wait_for_running,
)
from vtune.study._study import (
    check_fixed_flags,
    open_study,
    prepare_study,
    remeasure,
    run_study,
    run_worker,
    worker_target,
)
from vtune.study._submit import walltime_hms, worker_job_script

__all__ = [
    "ATTR", "BudgetSpent", "CPU_TRIAL_OVERHEAD_GIB", "EXIT_CODES", "GPU_MEMORY_TOLERANCE_MIB", "GPU_MEMORY_WAIT_S",
    "GRACE_PERIOD_S", "GpuMemoryNotBack", "HEARTBEAT_INTERVAL_S", "LOAD_FAILURES", "LOCK_DIR_ENV", "LeaseAborted",
    "MAX_LOAD_FAILURES_IN_A_ROW", "NOT_COUNTED_FAILURES", "NoiseAwarePruner", "REUSE_AFTER", "ResourcePool",
    "SCHEMA_VERSION", "STOP_SIGNALS", "STRICT_SEQS_FACTOR", "StopSignals", "StudyInterrupted", "StudySettings",
    "StudySummary", "TrialFailed", "UnitLocks", "baseline_configs", "best_trials", "check_fixed_flags", "claim",
    "config_groups", "config_key", "config_measurements", "config_problem", "count_done", "count_started",
    "counts_toward_budget", "cpu_trial_memory_gib", "default_concurrency", "default_storage", "dump_json",
    "elapsed_s", "enqueue_baselines", "export_best", "is_feasible", "json_safe", "layout_sizes", "load_settings",
    "lock_dir", "make_storage", "mean_result", "mean_values", "measured_noise", "open_study", "pick_positions",
    "pick_trial", "prepare_study", "recover_stale_trials", "remeasure", "requeue_baselines", "run_study",
    "run_worker", "stop_trial_processes", "summarize", "wait_for_running", "walltime_hms", "worker_job_script",
    "worker_target",
]
