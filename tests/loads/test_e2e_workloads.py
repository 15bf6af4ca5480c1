"""End-to-end: the production-like workloads through `vtune bench` on the real vLLM CPU engine.

Each test starts the tiny model once (30-90 s on 2 cores) under real GuideLLM load:
a document-prefix (RAG) workload with the study's search space, and a Mooncake-format
trace replay. The prefix-cache hit rate comes from vLLM's own ``/metrics``. The multi-turn
chat (the built-in chatbot: shared system prompts, 3 turns) is checked on the chatbot run
of tests/engines/test_e2e_bench.py (one engine start for both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vtune._tiny_model import build_tiny_model
from vtune._workload import load_workload
from vtune.loads._guidellm_report import read_guidellm_report

pytestmark = pytest.mark.e2e
CPU_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096", "--enable-prefix-caching"]


@pytest.fixture(scope="module")
def model() -> Path:
    return build_tiny_model()


def _bench(model: Path, workload: str, run_dir: Path, duration_s: int, *flags: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "vtune", "bench", "--model", str(model), "--workload", workload,
         "--duration-s", str(duration_s), "--json", "--run-dir", str(run_dir), "--", *CPU_FLAGS, *flags],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["failure"] is None and out["status"] == "ok", out
    return out


def _requests(run_dir: Path) -> list[Any]:
    reports = sorted((run_dir / "load").glob("guidellm-step-*.json"))
    assert reports
    return [r for path in reports for bench in read_guidellm_report(path) for r in bench.requests]


def test_e2e_shared_document_prefixes_hit_the_cache_and_enter_the_space(model: Path, tmp_path: Path) -> None:
    from vtune.study._settings import build_settings

    settings = build_settings(model=str(model), workload="rag", name="e2e-rag", studies_dir=tmp_path / "studies",
                              configs_dir=tmp_path / "configs")
    dim = settings.space.get("enable_prefix_caching")
    assert dim is not None and dim.active, [d.name for d in settings.space.active]
    out = _bench(model, "rag", tmp_path, 10)
    assert out["errors"] == 0
    # 8 documents of 2048 tokens before short questions: after each document's first
    # request (drawn anew every step), its tokens come from the cache
    assert out["prefix_cache_hit_rate"] > 0.1, out["metrics"]
    record = json.loads((tmp_path / "trial.json").read_text())
    assert record["result"]["prefix_cache_hit_rate"] == pytest.approx(out["prefix_cache_hit_rate"])


def test_e2e_trace_replay_runs_through_bench(model: Path, tmp_path: Path) -> None:
    wl = load_workload("replay")
    assert wl.trace is not None
    out = _bench(model, "replay", tmp_path, 20)
    assert out["errors"] == 0
    requests = [r for r in _requests(tmp_path) if r.status == "successful"]
    # about 1.5 requests a second for 20 measured seconds, at the trace's lengths
    assert len(requests) >= 10
    lengths = {json.loads(line)["output_length"] for line in wl.trace.path.read_text().splitlines()}
    assert {r.output_tokens for r in requests} <= lengths
    assert out["prefix_cache_hit_rate"] is not None and out["prefix_cache_hit_rate"] > 0.2
