"""Serving engines: start one, read its start-up, watch it under load, stop it with proof.

Public names (the modules behind them are private):

* :class:`Engine`, the contract a trial needs; :class:`VllmServer` (alias
  :data:`VllmEngine`), ``vllm serve``; :class:`EngineFailure`, :class:`TeardownReport`;
* the start-up log: :class:`StartupNumbers`, :func:`parse_startup_log`;
* failures: :class:`Failure`, :data:`FAILURE_KINDS`, :data:`NOT_CONFIG_FAULTS`,
  :func:`classify_failure`;
* ``/metrics``: :class:`MetricsSampler`, :func:`fetch_metrics`;
* process groups, for the study: :func:`kill_recorded_group`,
  :func:`kill_live_groups`, :func:`install_safety_net`,
  :func:`wait_gpu_memory_back` (:class:`GpuMemoryWait`), :func:`find_free_port`,
  :func:`port_is_free`.

Names are imported on first use: the launcher and the GuideLLM child import this
package first thing, and their watchdog must start before anything heavy loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtune.engines._base import Engine, EngineFailure, TeardownReport
    from vtune.engines._failures import FAILURE_KINDS, NOT_CONFIG_FAULTS, Failure, classify_failure
    from vtune.engines._metrics import MetricsSampler, fetch_metrics
    from vtune.engines._process import (
        GpuMemoryWait,
        find_free_port,
        install_safety_net,
        kill_live_groups,
        kill_recorded_group,
        port_is_free,
        wait_gpu_memory_back,
    )
    from vtune.engines._startup_log import StartupNumbers, parse_startup_log
    from vtune.engines._vllm import VllmEngine, VllmServer

__all__ = [
    "FAILURE_KINDS",
    "NOT_CONFIG_FAULTS",
    "Engine",
    "EngineFailure",
    "Failure",
    "GpuMemoryWait",
    "MetricsSampler",
    "StartupNumbers",
    "TeardownReport",
    "VllmEngine",
    "VllmServer",
    "classify_failure",
    "fetch_metrics",
    "find_free_port",
    "install_safety_net",
    "kill_live_groups",
    "kill_recorded_group",
    "parse_startup_log",
    "port_is_free",
    "wait_gpu_memory_back",
]

_LAZY = {
    "Engine": "vtune.engines._base",
    "EngineFailure": "vtune.engines._base",
    "TeardownReport": "vtune.engines._base",
    "FAILURE_KINDS": "vtune.engines._failures",
    "NOT_CONFIG_FAULTS": "vtune.engines._failures",
    "Failure": "vtune.engines._failures",
    "classify_failure": "vtune.engines._failures",
    "MetricsSampler": "vtune.engines._metrics",
    "fetch_metrics": "vtune.engines._metrics",
    "GpuMemoryWait": "vtune.engines._process",
    "find_free_port": "vtune.engines._process",
    "install_safety_net": "vtune.engines._process",
    "kill_live_groups": "vtune.engines._process",
    "kill_recorded_group": "vtune.engines._process",
    "port_is_free": "vtune.engines._process",
    "wait_gpu_memory_back": "vtune.engines._process",
    "StartupNumbers": "vtune.engines._startup_log",
    "parse_startup_log": "vtune.engines._startup_log",
    "VllmEngine": "vtune.engines._vllm",
    "VllmServer": "vtune.engines._vllm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vtune.engines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
