"""Study tests: machine-wide lease locks in a folder of the test's own; subprocesses import this checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path_factory, monkeypatch):
    """``$VTUNE_LOCK_DIR`` per test: a study started by a test (or its subprocesses) shares locks only with it.

    ``PYTHONPATH`` starts with this checkout, so that ``python -m vtune`` in a subprocess (whatever
    its working folder) runs the code under test, not another installed copy.
    """
    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("VTUNE_LOCK_DIR", str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    return folder
