"""Fake capacity searches for unit tests: probes built from a recorded one, vtune's real search state machine."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from vtune._serve_config import ServeConfig
from vtune._trial import CapacityOptions, TrialRecord
from vtune._workload import Workload, load_workload
from vtune.loads._capacity import CapacityResult, CapacitySearch, Probe, _result, probes_from_report

REPORT = Path(__file__).parent / "data" / "guidellm" / "goodput-vtune-seqs32-probe-02.json"
CHATBOT = load_workload("chatbot")


def template_probe() -> Probe:
    """A real probe (recorded on the CPU engine), the template of every fake one."""
    return probes_from_report(REPORT, CHATBOT.slo)[0]


def make_probe(index: int, streams: int, met: bool, rps_per_stream: float = 0.5, wall_s: float = 3.0) -> Probe:
    """A probe at ``streams``: met or failed, ``rps_per_stream x streams`` requests/s."""
    return dataclasses.replace(
        template_probe(), index=index, streams=streams, slo_met=met, fail_reason=None if met else "slo",
        requests_per_second=rps_per_stream * streams, goodput_requests_per_second=rps_per_stream * streams,
        output_tokens_per_second=64 * rps_per_stream * streams, wall_s=wall_s)


def fake_search(true_streams: int, options: CapacityOptions, workload: Workload = CHATBOT,
                rps_per_stream: float = 0.5) -> CapacityResult:
    """vtune's search on a server whose capacity is ``true_streams`` (``options.on_probe`` called per probe)."""
    search = CapacitySearch(start_streams=options.start_streams or 4, max_streams=options.max_streams or 1024,
                            tolerance=options.tolerance, max_probes=options.max_probes)
    probes: list[Probe] = []
    while (streams := search.next_streams) is not None:
        probe = make_probe(len(probes), streams, streams <= true_streams, rps_per_stream)
        probes.append(probe)
        search.record(streams, probe.slo_met, reason=probe.fail_reason)
        if options.on_probe is not None and not options.on_probe(probe):
            search.stop("stopped")
    return _result(search, probes, workload, None, 5.0, 1.0, sum(p.wall_s for p in probes))


class FakeCapacityTrial:
    """A ``trial_fn`` measuring capacity on a model: ``capacity_of(cfg)`` streams; records each call's options."""

    def __init__(self, capacity_of: Any, rps_per_stream: float = 0.5) -> None:
        self.capacity_of = capacity_of
        self.rps_per_stream = rps_per_stream
        self.calls: list[tuple[ServeConfig, CapacityOptions | None]] = []

    def __call__(self, cfg: ServeConfig, workload: Any, run_dir: Path, *, capacity: CapacityOptions | None = None,
                 gpus: Any = None, cpu_cores: Any = None, **_: Any) -> TrialRecord:
        t0 = time.monotonic()
        self.calls.append((cfg, capacity))
        assert capacity is not None, "a capacity study passes capacity options"
        cap = fake_search(int(self.capacity_of(cfg)), capacity, workload, self.rps_per_stream)
        return TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(),
                           status="stopped_early" if cap.bounded_by == "stopped" else "ok",
                           result=cap.to_trial_result(), capacity=cap, run_dir=str(run_dir),
                           engine_start_s=1.0, load_s=cap.wall_s, total_s=time.monotonic() - t0 + 1.0,
                           gpus=None if gpus is None else list(gpus))
