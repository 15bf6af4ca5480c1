"""vtune: find the best vLLM serving configuration by measuring it.

The public API, re-exported here (modules starting with ``_`` are private):

* configuration: :class:`ServeConfig`, :func:`parse_serve_args`;
* memory model: :func:`load_model_shape`, :func:`estimate_memory`,
  :class:`MemoryEstimate`, :class:`Calibration`, :func:`resolve_gpu`;
* hardware: :class:`Target`, :func:`resolve_target`, :func:`resolve_model`,
  :func:`apply_engine_defaults`;
* workload, space, objectives: :func:`load_workload`, :class:`Workload`,
  :class:`SearchSpace`, :func:`default_space`, :func:`load_space_file`,
  :class:`Objective`, :func:`parse_objectives`;
* one trial: :func:`run_trial`, :class:`TrialRecord`, :class:`TrialResult`,
  :class:`VllmServer`;
* the study: :func:`build_settings`, :class:`StudySettings`, :func:`run_study`,
  :func:`run_worker`, :class:`StudySummary`;
* errors: :class:`VtuneError`.

A study from Python::

    import vtune

    settings = vtune.build_settings(model="/models/Llama-3.1-8B", workload="chatbot",
                                    fixed_flags=["--max-model-len", "4096"])
    summary = vtune.run_study(settings, n_trials=10)

or, piece by piece::

    target = vtune.resolve_target()                      # the GPUs here, else the CPU engine
    model = vtune.resolve_model("/models/Llama-3.1-8B", target)   # None: the built-in model (CPU)
    base = vtune.apply_engine_defaults(vtune.parse_serve_args([model, "--max-model-len", "4096"]), target)
    settings = vtune.StudySettings(
        name="llama8b-chatbot", model=model, workload=vtune.load_workload("chatbot"),
        space=vtune.default_space(device=target.device, num_gpus=target.num_gpus),
        base=base, objectives=vtune.parse_objectives("goodput"), target=target)
    summary = vtune.run_study(settings, n_trials=10)

Heavy modules (Optuna, the engine and load machinery) are imported on first use,
so ``import vtune`` and ``vtune estimate`` stay fast; the names are imported
under ``TYPE_CHECKING`` too, so type checkers see them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vtune._errors import VtuneError
from vtune._serve_config import ServeConfig, parse_serve_args

if TYPE_CHECKING:
    from vtune._memory import Calibration, MemoryEstimate, estimate_memory, resolve_gpu
    from vtune._model_shape import load_model_shape
    from vtune._objectives import Objective, parse_objectives
    from vtune._space import SearchSpace, default_space, load_space_file
    from vtune._target import Target, apply_engine_defaults, resolve_model, resolve_target
    from vtune._trial import TrialRecord, run_trial
    from vtune._workload import Workload, load_workload
    from vtune.engines import VllmServer
    from vtune.loads import TrialResult
    from vtune.study import StudySettings, StudySummary, build_settings, run_study, run_worker

__all__ = [
    "Calibration",
    "MemoryEstimate",
    "Objective",
    "SearchSpace",
    "ServeConfig",
    "StudySettings",
    "StudySummary",
    "Target",
    "TrialRecord",
    "TrialResult",
    "VllmServer",
    "VtuneError",
    "Workload",
    "apply_engine_defaults",
    "build_settings",
    "default_space",
    "estimate_memory",
    "load_model_shape",
    "load_space_file",
    "load_workload",
    "parse_objectives",
    "parse_serve_args",
    "resolve_gpu",
    "resolve_model",
    "resolve_target",
    "run_study",
    "run_trial",
    "run_worker",
]
__version__ = "0.1.0"

#: Name -> the module it is imported from on first use (a subpackage's public ``__init__``
#: where the name lives in a subpackage).
_LAZY = {
    "Calibration": "vtune._memory",
    "MemoryEstimate": "vtune._memory",
    "estimate_memory": "vtune._memory",
    "resolve_gpu": "vtune._memory",
    "load_model_shape": "vtune._model_shape",
    "Objective": "vtune._objectives",
    "parse_objectives": "vtune._objectives",
    "SearchSpace": "vtune._space",
    "default_space": "vtune._space",
    "load_space_file": "vtune._space",
    "Target": "vtune._target",
    "apply_engine_defaults": "vtune._target",
    "resolve_model": "vtune._target",
    "resolve_target": "vtune._target",
    "TrialRecord": "vtune._trial",
    "run_trial": "vtune._trial",
    "Workload": "vtune._workload",
    "load_workload": "vtune._workload",
    "VllmServer": "vtune.engines",
    "TrialResult": "vtune.loads",
    "StudySettings": "vtune.study",
    "StudySummary": "vtune.study",
    "build_settings": "vtune.study",
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


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
