"""End-to-end: a real capacity search with real GuideLLM against the real vLLM CPU engine.

Two engines of vtune's tiny model, one after the other: ``--max-num-seqs 32`` (the search
starts at the chatbot workload's 8 streams) and ``--max-num-seqs 2`` (it starts at 2,
the configuration's max-num-seqs, as a study would). 8 s probes after 2 s warmup,
tolerance 0.25. About 3 minutes on 2 cores.

The chatbot's prompts are used single-turn, without its shared system prompts, and its SLOs
doubled (TTFT p90 1 s, ITL p90 100 ms), as in the capacity study's e2e test: on a shared, loaded
2-core machine its 3-turn conversations measured TTFT p90 586-903 ms at 1-8 streams with
max-num-seqs 32, so the machine's load, not the batch, would decide.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vtune._serve_config import ServeConfig
from vtune._tiny_model import build_tiny_model
from vtune._workload import SloTarget, Workload, load_workload
from vtune.engines._vllm import VllmServer
from vtune.loads._capacity import CapacityResult, read_capacity_result, run_capacity_search
from vtune.loads._capacity_probe import PreparedCapacitySearch, prepare_capacity_search

pytestmark = pytest.mark.e2e


def _workload() -> Workload:
    wl = load_workload("chatbot")
    return replace(wl, turns=1, shared_prefix=None,
                   slo=replace(wl.slo, ttft_ms=SloTarget(90, 1000.0), itl_ms=SloTarget(90, 100.0)))


def _search(model: Path, folder: Path, seqs: int, batched: int, **kwargs: Any) -> tuple[CapacityResult, float]:
    wl = _workload()
    cfg = ServeConfig(model=str(model), dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=seqs,
                      max_num_batched_tokens=batched, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    server = VllmServer(cfg, log_path=folder / "server.log")
    t0 = time.monotonic()
    server.start()
    prepared: PreparedCapacitySearch | None = None
    try:
        # GuideLLM's import overlaps the engine's start-up, as in a trial.
        prepared = prepare_capacity_search(server.url, model, wl, folder / "capacity")
        server.wait_ready()
        result = run_capacity_search(server.url, server.served_model_name or "", model, wl, folder / "capacity",
                                     probe_s=8, warmup_s=2, tolerance=0.25, prepared=prepared, **kwargs)
        prepared = None
    finally:
        if prepared is not None:
            prepared.cancel()
        teardown = server.stop()
    assert teardown.clean, teardown.to_dict()
    return result, time.monotonic() - t0


def _check_recorded(result: CapacityResult, folder: Path) -> None:
    out = folder / "capacity"
    assert [p.index for p in result.probes] == list(range(len(result.probes)))
    assert len({p.streams for p in result.probes}) == len(result.probes)  # no level probed twice
    reports = sorted(out.glob("capacity-probe-*.json"))
    assert [Path(p.report_path).name for p in result.probes] == [r.name for r in reports]
    for probe in result.probes:
        assert probe.seconds == pytest.approx(8.0, abs=1.0)
        assert probe.requests + probe.errored_requests > 0
        assert probe.errored_requests == 0
        assert 0.0 <= probe.slo_attainment <= 1.0
    assert read_capacity_result(out / "capacity_result.json").to_dict() == result.to_dict()
    assert json.loads((out / "capacity_result.json").read_text())["schema_version"] == 1


def test_e2e_capacity_grows_with_max_num_seqs(tmp_path: Path) -> None:
    model = build_tiny_model()
    big, big_s = _search(model, tmp_path / "seqs32", 32, 2048, max_streams=64)
    small, small_s = _search(model, tmp_path / "seqs2", 2, 256, start_streams=2, max_streams=16)
    for name, res, total_s in (("seqs32", big, big_s), ("seqs2", small, small_s)):
        print(f"{name}: capacity {res.capacity_streams} streams ({res.bounded_by}), "
              f"{res.requests_per_second:.2f} req/s, {res.output_tokens_per_second:.0f} tok/s; "
              f"{len(res.probes)} probes {[(p.streams, p.slo_met) for p in res.probes]} in {res.wall_s:.1f} s "
              f"(probe walls {[round(p.wall_s, 1) for p in res.probes]}), engine + search {total_s:.1f} s")
        _check_recorded(res, tmp_path / name)
    assert big.capacity_streams > 0 and big.converged
    at = big.capacity_probe
    assert at is not None and at.slo_met and big.requests_per_second > 0 and big.output_tokens_per_second > 0
    ttft = at.slo_observed_ms["ttft_ms"]
    assert ttft is not None and ttft <= 1000.0  # the (doubled) chatbot objective holds at capacity
    assert big.capacity_streams > small.capacity_streams
