"""vtune: find the best vLLM serving configuration by measuring it.

The public API, re-exported here (modules starting with ``_`` are private):

* configuration: :class:`ServeConfig`, :func:`parse_serve_args`;
* memory model: :func:`load_model_shape`, :func:`estimate_memory`,
  :class:`MemoryEstimate`, :class:`Calibration`, :func:`resolve_gpu`;
* one trial: :func:`run_trial`, :class:`TrialRecord`, :class:`VllmServer`,
  :func:`load_workload`, :class:`Workload`;
* the study: :class:`StudySettings`, :func:`run_study`, :func:`run_worker`;
* errors: :class:`VtuneError`.

Heavy modules (Optuna, the engine and load machinery) are imported on first use,
so ``import vtune`` and ``vtune estimate`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from vtune._errors import VtuneError
from vtune._serve_config import ServeConfig, parse_serve_args

__all__ = [
    "Calibration",
    "MemoryEstimate",
    "ServeConfig",
    "StudySettings",
    "TrialRecord",
    "VllmServer",
    "VtuneError",
    "Workload",
    "estimate_memory",
    "load_model_shape",
    "load_workload",
    "parse_serve_args",
    "resolve_gpu",
    "run_study",
    "run_trial",
    "run_worker",
]
__version__ = "0.1.0"

_LAZY = {
    "Calibration": "vtune._memory",
    "MemoryEstimate": "vtune._memory",
    "estimate_memory": "vtune._memory",
    "resolve_gpu": "vtune._memory",
    "load_model_shape": "vtune._model_shape",
    "TrialRecord": "vtune._trial",
    "run_trial": "vtune._trial",
    "VllmServer": "vtune.engines._vllm",
    "Workload": "vtune._workload",
    "load_workload": "vtune._workload",
    "StudySettings": "vtune.study",
    "run_study": "vtune.study",
    "run_worker": "vtune.study",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
