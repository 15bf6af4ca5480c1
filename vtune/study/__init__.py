"""The study: an Optuna search over vLLM flags, measured on real engines.

Modules by concern: :mod:`._settings` (what defines a study, ``build_settings``),
:mod:`._storage` (storages, heartbeats, stale trials, the claim lock), :mod:`._baselines`
(and what the sampler learns from them), :mod:`._runner` (one trial), :mod:`._packing`
(trials at once on disjoint GPUs/cores), :mod:`._locks` (machine-wide GPU/core leases),
:mod:`._budget` (which trials spend ``--n-trials``), :mod:`._capacity` (a capacity study's search
bounds, early-stop savings and target rate), :mod:`._signals` (SIGINT/SIGTERM/SIGHUP
stop a study cleanly), :mod:`._selection` (configuration means, best, pick), :mod:`._pruner`,
:mod:`._remeasure` (the end-of-study re-measurements, inside the time budget),
:mod:`._export` (configs/ files, ``best`` JSON, summary), :mod:`._submit` (Slurm/PBS), and
:mod:`._study` (run_study, run_worker).

Names load on first use, so importing a submodule (``vtune.study._submit``) does not
import Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from vtune.study._budget import (
        LOAD_FAILURES,
        MAX_LOAD_FAILURES_IN_A_ROW,
        NOT_COUNTED_FAILURES,
        BudgetSpent,
        counts_toward_budget,
        requeue_baselines,
    )
    from vtune.study._capacity import (
        best_capacity_streams,
        capacity_options,
        gpu_seconds_saved,
        mean_capacity,
        rate_answer,
        search_bounds,
        target_rate_order,
    )
    from vtune.study._export import (
        StudySummary,
        best_record,
        capacity_record,
        dump_json,
        export_best,
        json_safe,
        mean_result_dict,
        summarize,
        target_rate_line,
    )
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
    from vtune.study._remeasure import Remeasured, remeasure
    from vtune.study._runner import (
        GPU_MEMORY_TOLERANCE_MIB,
        GPU_MEMORY_WAIT_S,
        REUSE_AFTER,
        GpuMemoryNotBack,
        TrialFailed,
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
        check_target_rate,
        default_study_name,
        load_settings,
    )
    from vtune.study._signals import EXIT_CODES, STOP_SIGNALS, StopSignals, StudyInterrupted, stop_trial_processes
    from vtune.study._storage import (
        GRACE_PERIOD_S,
        HEARTBEAT_INTERVAL_S,
        claim,
        default_storage,
        heartbeat_interval_s,
        make_storage,
        recover_stale_trials,
        wait_for_running,
    )
    from vtune.study._study import (
        check_fixed_flags,
        open_study,
        prepare_study,
        run_study,
        run_worker,
        worker_target,
    )
    from vtune.study._submit import walltime_hms, worker_job_script

_HOME = {
    "best_capacity_streams": "vtune.study._capacity",
    "capacity_options": "vtune.study._capacity",
    "capacity_record": "vtune.study._export",
    "check_target_rate": "vtune.study._settings",
    "gpu_seconds_saved": "vtune.study._capacity",
    "mean_capacity": "vtune.study._capacity",
    "rate_answer": "vtune.study._capacity",
    "search_bounds": "vtune.study._capacity",
    "target_rate_line": "vtune.study._export",
    "target_rate_order": "vtune.study._capacity",
    "ATTR": "vtune.study._settings",
    "BudgetSpent": "vtune.study._budget",
    "CPU_TRIAL_OVERHEAD_GIB": "vtune.study._packing",
    "Configuration": "vtune.study._selection",
    "EXIT_CODES": "vtune.study._signals",
    "GPU_MEMORY_TOLERANCE_MIB": "vtune.study._runner",
    "GPU_MEMORY_WAIT_S": "vtune.study._runner",
    "GRACE_PERIOD_S": "vtune.study._storage",
    "GpuMemoryNotBack": "vtune.study._runner",
    "HEARTBEAT_INTERVAL_S": "vtune.study._storage",
    "InSpaceSampler": "vtune.study._baselines",
    "LOAD_FAILURES": "vtune.study._budget",
    "LOCK_DIR_ENV": "vtune.study._locks",
    "LeaseAborted": "vtune.study._packing",
    "MAX_LOAD_FAILURES_IN_A_ROW": "vtune.study._budget",
    "NOT_COUNTED_FAILURES": "vtune.study._budget",
    "NoiseAwarePruner": "vtune.study._pruner",
    "REUSE_AFTER": "vtune.study._runner",
    "Remeasured": "vtune.study._remeasure",
    "ResourcePool": "vtune.study._packing",
    "SCHEMA_VERSION": "vtune.study._settings",
    "STOP_SIGNALS": "vtune.study._signals",
    "StopSignals": "vtune.study._signals",
    "StudyInterrupted": "vtune.study._signals",
    "StudySettings": "vtune.study._settings",
    "StudySummary": "vtune.study._export",
    "TrialFailed": "vtune.study._runner",
    "UnitLocks": "vtune.study._locks",
    "baseline_configs": "vtune.study._baselines",
    "baseline_params": "vtune.study._baselines",
    "best_configurations": "vtune.study._selection",
    "best_record": "vtune.study._export",
    "best_trials": "vtune.study._selection",
    "build_settings": "vtune.study._settings",
    "check_fixed_flags": "vtune.study._study",
    "claim": "vtune.study._storage",
    "config_groups": "vtune.study._selection",
    "config_key": "vtune.study._selection",
    "config_measurements": "vtune.study._selection",
    "configurations": "vtune.study._selection",
    "count_done": "vtune.study._runner",
    "count_started": "vtune.study._runner",
    "counts_toward_budget": "vtune.study._budget",
    "cpu_trial_memory_gib": "vtune.study._packing",
    "default_concurrency": "vtune.study._packing",
    "default_storage": "vtune.study._storage",
    "default_study_name": "vtune.study._settings",
    "describe_measurements": "vtune.study._selection",
    "dimension_value": "vtune.study._baselines",
    "dump_json": "vtune.study._export",
    "elapsed_s": "vtune.study._runner",
    "enqueue_baselines": "vtune.study._baselines",
    "export_best": "vtune.study._export",
    "heartbeat_interval_s": "vtune.study._storage",
    "in_dimension": "vtune.study._baselines",
    "is_feasible": "vtune.study._selection",
    "is_off_space": "vtune.study._baselines",
    "json_safe": "vtune.study._export",
    "layout_sizes": "vtune.study._packing",
    "load_settings": "vtune.study._settings",
    "lock_dir": "vtune.study._locks",
    "make_storage": "vtune.study._storage",
    "mean_result": "vtune.study._selection",
    "mean_result_dict": "vtune.study._export",
    "mean_values": "vtune.study._selection",
    "measured_noise": "vtune.study._selection",
    "open_study": "vtune.study._study",
    "pick_configuration": "vtune.study._selection",
    "pick_positions": "vtune.study._packing",
    "pick_trial": "vtune.study._selection",
    "prepare_study": "vtune.study._study",
    "recover_stale_trials": "vtune.study._storage",
    "remeasure": "vtune.study._remeasure",
    "requeue_baselines": "vtune.study._budget",
    "run_study": "vtune.study._study",
    "run_worker": "vtune.study._study",
    "stop_trial_processes": "vtune.study._signals",
    "suggest_baseline": "vtune.study._baselines",
    "summarize": "vtune.study._export",
    "vllm_default_values": "vtune.study._baselines",
    "wait_for_running": "vtune.study._storage",
    "walltime_hms": "vtune.study._submit",
    "worker_job_script": "vtune.study._submit",
    "worker_target": "vtune.study._study",
}
__all__ = [
    "best_capacity_streams", "capacity_options", "capacity_record", "check_target_rate", "gpu_seconds_saved",
    "mean_capacity", "rate_answer", "search_bounds", "target_rate_line", "target_rate_order",
    "ATTR", "BudgetSpent", "CPU_TRIAL_OVERHEAD_GIB", "Configuration", "EXIT_CODES", "GPU_MEMORY_TOLERANCE_MIB",
    "GPU_MEMORY_WAIT_S", "GRACE_PERIOD_S", "GpuMemoryNotBack", "HEARTBEAT_INTERVAL_S", "InSpaceSampler",
    "LOAD_FAILURES", "LOCK_DIR_ENV", "LeaseAborted", "MAX_LOAD_FAILURES_IN_A_ROW", "NOT_COUNTED_FAILURES",
    "NoiseAwarePruner", "REUSE_AFTER", "Remeasured", "ResourcePool", "SCHEMA_VERSION", "STOP_SIGNALS",
    "StopSignals", "StudyInterrupted", "StudySettings", "StudySummary", "TrialFailed",
    "UnitLocks", "baseline_configs", "baseline_params", "best_configurations", "best_record", "best_trials",
    "build_settings", "check_fixed_flags", "claim", "config_groups", "config_key", "config_measurements",
    "configurations", "count_done", "count_started", "counts_toward_budget",
    "cpu_trial_memory_gib", "default_concurrency", "default_storage", "default_study_name", "describe_measurements",
    "dimension_value", "dump_json", "elapsed_s", "enqueue_baselines", "export_best", "heartbeat_interval_s",
    "in_dimension", "is_feasible", "is_off_space", "json_safe", "layout_sizes", "load_settings", "lock_dir",
    "make_storage", "mean_result", "mean_result_dict", "mean_values", "measured_noise", "open_study",
    "pick_configuration", "pick_positions", "pick_trial", "prepare_study", "recover_stale_trials", "remeasure",
    "requeue_baselines", "run_study", "run_worker", "stop_trial_processes", "suggest_baseline",
    "summarize", "vllm_default_values", "wait_for_running", "walltime_hms", "worker_job_script", "worker_target",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'vtune.study' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
