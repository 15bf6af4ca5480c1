"""Loads: GuideLLM driven against an engine, and the measured result (``TrialResult``).

Names load on first use, so ``python -m vtune.loads._guidellm`` imports nothing extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtune.loads._results import TrialResult

__all__ = ["TrialResult"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'vtune.loads' has no attribute {name!r}")
    return getattr(importlib.import_module("vtune.loads._results"), name)
