"""Study tests: machine-wide lease locks in a folder of the test's own (never the real one)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path_factory, monkeypatch):
    """``$VTUNE_LOCK_DIR`` per test: a study started by a test (or its subprocesses) shares locks only with it."""
    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("VTUNE_LOCK_DIR", str(folder))
    return folder
