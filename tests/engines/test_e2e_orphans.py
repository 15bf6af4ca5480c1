"""End-to-end: a real vLLM CPU engine dies with the vtune process that started it (``kill -9``).

A driver process (standing in for vtune) starts a :class:`vtune.engines.VllmServer` and is
SIGKILLed while the engine is still starting (its EngineCore up, loading the model) and once
it is ready; no process of the engine's group, and no descendant recorded, may be alive 5 s
later. :func:`benchmarks.bench_orphans.kill_run` does the killing and the watching.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_orphans import kill_run
from vtune._tiny_model import build_tiny_model

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("point", ["core", "ready"])
def test_e2e_engine_dies_with_vtune(point: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = kill_run(point, build_tiny_model(), tmp_path, limit_s=30.0)
    print(f"\nkill -9 at {point!r} ({run.killed_after_s:.1f} s after launch, {len(run.alive_at_kill)} processes, "
          f"{run.listening_ports} listening ports): last engine process gone after {run.gone_after_s} s; "
          f"alive at the kill: {run.alive_at_kill}")
    assert len(run.alive_at_kill) >= 3, run  # launcher, watchdog and the EngineCore at least
    assert any("EngineCore" in t or "spawn_main" in t for t in run.alive_at_kill), run
    assert run.ready is (point == "ready")
    assert run.survivors == [], run
    assert run.gone_after_s is not None and run.gone_after_s <= 5.0, run
