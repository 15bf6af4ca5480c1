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

Names are imported on first use: the GuideLLM children run as ``python -m
vtune.loads._guidellm_child`` / ``_capacity_probe``, and their watchdog must start before
anything heavy loads (nor may the package import the module that runs as ``__main__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from vtune.loads._results import BenchmarkSamples, Percentiles, RequestSample, TrialResult, percentile, summarize

_HOME = {
    "BenchmarkSamples": "vtune.loads._results",
    "CapacityResult": "vtune.loads._capacity",
    "GuideLLMLoad": "vtune.loads._guidellm",
    "LoadFailure": "vtune.loads._base",
    "LoadGenerator": "vtune.loads._base",
    "LoadResult": "vtune.loads._base",
    "Percentiles": "vtune.loads._results",
    "PreparedLoad": "vtune.loads._guidellm",
    "Probe": "vtune.loads._capacity",
    "RequestSample": "vtune.loads._results",
    "StepHook": "vtune.loads._base",
    "StepResult": "vtune.loads._base",
    "TrialResult": "vtune.loads._results",
    "capacity_per_gpu": "vtune.loads._capacity",
    "expected_request_s": "vtune.loads._base",
    "gpus_for_rate": "vtune.loads._capacity",
    "percentile": "vtune.loads._results",
    "prepare_load": "vtune.loads._guidellm",
    "read_guidellm_report": "vtune.loads._guidellm_report",
    "replicas_for_rate": "vtune.loads._capacity",
    "run_capacity_search": "vtune.loads._capacity",
    "run_load": "vtune.loads._guidellm",
    "stall_bound_s": "vtune.loads._base",
    "summarize": "vtune.loads._results",
    "trial_result_from_reports": "vtune.loads._guidellm_report",
}
__all__ = [
    "BenchmarkSamples",
    "CapacityResult",
    "GuideLLMLoad",
    "LoadFailure",
    "LoadGenerator",
    "LoadResult",
    "Percentiles",
    "PreparedLoad",
    "Probe",
    "RequestSample",
    "StepHook",
    "StepResult",
    "TrialResult",
    "capacity_per_gpu",
    "expected_request_s",
    "gpus_for_rate",
    "percentile",
    "prepare_load",
    "read_guidellm_report",
    "replicas_for_rate",
    "run_capacity_search",
    "run_load",
    "stall_bound_s",
    "summarize",
    "trial_result_from_reports",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'vtune.loads' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
