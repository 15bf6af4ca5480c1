"""Engines: a ``vllm serve`` process, its startup log and metrics (``VllmServer``).

Names load on first use, so ``python -m vtune.engines._launcher`` (every engine
start) imports nothing extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtune.engines._vllm import VllmServer

__all__ = ["VllmServer"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'vtune.engines' has no attribute {name!r}")
    return getattr(importlib.import_module("vtune.engines._vllm"), name)
