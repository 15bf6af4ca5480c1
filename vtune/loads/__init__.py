"""Load generation: drive a ready engine with a workload in steps, and what it measured.

Public names (the modules behind them are private):

* :class:`LoadGenerator`, the contract; :class:`GuideLLMLoad`, GuideLLM's
  implementation (also as functions: :func:`prepare_load`, :func:`run_load`);
* results independent of the tool: :class:`LoadResult`, :class:`StepResult`,
  :class:`TrialResult`, :class:`RequestSample`, :class:`Percentiles`,
  :class:`BenchmarkSamples`, :func:`summarize`, :func:`percentile`;
* GuideLLM's reports: :func:`read_guidellm_report`, :func:`trial_result_from_reports`;
* failures: :class:`LoadFailure`; the stall bound :func:`stall_bound_s`;
* capacity under SLO: :func:`run_capacity_search`, :class:`CapacityResult`, :class:`Probe`,
  :func:`capacity_per_gpu`, :func:`replicas_for_rate`, :func:`gpus_for_rate`.
"""

from __future__ import annotations

from vtune.loads._base import (
    LoadFailure,
    LoadGenerator,
    LoadResult,
    StepHook,
    StepResult,
    expected_request_s,
    stall_bound_s,
)
from vtune.loads._capacity import (
    CapacityResult,
    Probe,
    capacity_per_gpu,
    gpus_for_rate,
    replicas_for_rate,
    run_capacity_search,
)
from vtune.loads._guidellm import GuideLLMLoad, PreparedLoad, prepare_load, run_load
from vtune.loads._guidellm_report import read_guidellm_report, trial_result_from_reports
from vtune.loads._results import (
    BenchmarkSamples,
    Percentiles,
    RequestSample,
    TrialResult,
    percentile,
    summarize,
)

__all__ = [
    "run_capacity_search",
    "replicas_for_rate",
    "gpus_for_rate",
    "capacity_per_gpu",
    "Probe",
    "CapacityResult",
    "BenchmarkSamples",
    "GuideLLMLoad",
    "LoadFailure",
    "LoadGenerator",
    "LoadResult",
    "Percentiles",
    "PreparedLoad",
    "RequestSample",
    "StepHook",
    "StepResult",
    "TrialResult",
    "expected_request_s",
    "percentile",
    "prepare_load",
    "read_guidellm_report",
    "run_load",
    "stall_bound_s",
    "summarize",
    "trial_result_from_reports",
]
