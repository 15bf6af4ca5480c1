"""The study: Optuna over vLLM flags on real engines (``run_study``, ``run_worker``).

Names load on first use, so importing a submodule (``vtune.study._scheduler``) does
not import Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtune.study._study import StudySettings, StudySummary, run_study, run_worker

__all__ = ["StudySettings", "StudySummary", "run_study", "run_worker"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'vtune.study' has no attribute {name!r}")
    return getattr(importlib.import_module("vtune.study._study"), name)
