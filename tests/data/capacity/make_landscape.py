"""Writes the synthetic capacity landscape of the tests: ``landscape-capacity.csv`` and its ``.json`` header.

Not a measurement: a closed-loop performance model stands in for the engines, so that the
replay and the report can be tested on a capacity table without starting any. The rows are
written by ``benchmarks/landscape.py``'s own row code from :class:`vtune.loads._capacity.Probe`
and :class:`~vtune.loads._capacity.CapacityResult` objects that vtune's own search state
machine (:class:`~vtune.loads._capacity.CapacitySearch`) chose, exactly as a recorded
capacity landscape stores them.

The model, per configuration with ``r`` replicas (data parallel), tensor parallel ``t`` and
max-num-seqs ``S`` (2 x H200, chatbot prompts, SLOs TTFT p90 <= 500 ms, ITL p90 <= 50 ms,
E2E p90 <= 5000 ms):

* saturation rate ``X_max = 20 r (0.96 if r == 2 else 1) (1.4 if t == 2 else 1) x speed`` req/s
  (the two replicas lose 4% to the API server in front of them); at ``n`` streams the
  served rate is ``X(n) = X_max n / (n + X_max R0)`` with ``R0 = 1 s`` (closed loop);
* requests beyond ``S r`` wait: their TTFT adds ``(n - S r) / X(n)`` seconds;
* ``TTFT p90 = 80 (1 + (m / (40 r k))^2) ms + wait``, ``ITL p90 = 15 (1 + m / (60 r k)) ms``
  with ``m = min(n, S r)`` and ``k = 1.4`` for TP=2 (else 1); ``E2E p90 = TTFT + 64 ITL``.

So data parallel has the highest capacity, one GPU the highest capacity per GPU (by 4%), TP=2
the lowest per GPU, small max-num-seqs caps capacity, and TP=2 at 256
sequences "fails to start" (``out_of_memory``, a made-up failure to exercise that path). Two
points are measured twice (``speed`` 0.93 and 1.04 on the repeat), the noise of the table.

Run from the repository root: ``python tests/data/capacity/make_landscape.py`` (deterministic;
``tests/test_replay.py`` checks the committed files equal a fresh run).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import landscape  # noqa: E402
from vtune._serve_config import ServeConfig  # noqa: E402
from vtune._space import apply_values  # noqa: E402
from vtune._trial import TrialRecord  # noqa: E402
from vtune._workload import load_workload  # noqa: E402
from vtune.engines._failures import Failure  # noqa: E402
from vtune.loads._capacity import CapacityResult, CapacitySearch, Probe  # noqa: E402
from vtune.loads._results import Percentiles  # noqa: E402

HERE = Path(__file__).resolve().parent
DIMS: dict[str, list[Any]] = {"parallel_layout": ["tp1-pp1-dp1", "tp1-pp1-dp2", "tp2-pp1-dp1"],
                              "max_num_seqs": [16, 64, 256]}
REPEATS = {"parallel_layout=tp1-pp1-dp2&max_num_seqs=64": 0.93, "parallel_layout=tp1-pp1-dp1&max_num_seqs=64": 1.04}
FAILING = {"parallel_layout=tp2-pp1-dp1&max_num_seqs=256"}
SEARCH = landscape.CapacitySettings(start_streams=32, max_streams=1024, tolerance=0.1, max_probes=15, probe_s=10.0,
                                    warmup_s=2.0)
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192,
    "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}


def _layout(name: str) -> tuple[int, int]:
    tp, _pp, dp = (int(part[2:]) for part in name.split("-"))
    return tp, dp


def probe_of(point: dict[str, Any], streams: int, index: int, speed: float = 1.0) -> Probe:
    """One probe of the model (module docstring) at ``streams`` concurrent streams."""
    tp, replicas = _layout(point["parallel_layout"])
    k = 1.4 if tp == 2 else 1.0
    x_max = 20.0 * replicas * (0.96 if replicas == 2 else 1.0) * k * speed
    rate = x_max * streams / (streams + x_max * 1.0)
    busy = min(streams, point["max_num_seqs"] * replicas)
    wait_ms = 1000.0 * max(0, streams - busy) / rate
    ttft = 80.0 * (1 + (busy / (40.0 * replicas * k)) ** 2) + wait_ms
    itl = 15.0 * (1 + busy / (60.0 * replicas * k))
    e2e = ttft + 64 * itl
    observed = {"ttft_ms": round(ttft, 3), "itl_ms": round(itl, 3), "e2e_ms": round(e2e, 3)}
    limits = {"ttft_ms": 500.0, "itl_ms": 50.0, "e2e_ms": 5000.0}
    met = all(observed[m] <= limits[m] for m in limits)
    requests = int(rate * SEARCH.probe_s)

    def pct(p90: float) -> Percentiles:
        return Percentiles(round(0.7 * p90, 3), round(p90, 3), round(1.3 * p90, 3), round(0.8 * p90, 3))

    return Probe(
        index=index, streams=streams, slo_met=met, fail_reason=None if met else "slo",
        slo_attainment=1.0 if met else 0.6, slo_observed_ms=observed, requests_per_second=round(rate, 4),
        output_tokens_per_second=round(64 * rate, 3),
        goodput_requests_per_second=round(rate * (1.0 if met else 0.6), 4),
        ttft_ms=pct(ttft), itl_ms=pct(itl), tpot_ms=pct(itl * 1.1), e2e_latency_ms=pct(e2e), requests=requests,
        errored_requests=0, incomplete_requests=min(streams, 50), seconds=SEARCH.probe_s,
        wall_s=SEARCH.probe_s + SEARCH.warmup_s + 2.5, report_path=f"synthetic/capacity-probe-{index:02d}.json",
    )


def search_point(point: dict[str, Any], speed: float = 1.0) -> CapacityResult:
    """vtune's capacity search (its state machine) run on the model."""
    search = CapacitySearch(start_streams=SEARCH.start_streams, max_streams=SEARCH.max_streams,
                            tolerance=SEARCH.tolerance, max_probes=SEARCH.max_probes)
    probes: list[Probe] = []
    while (streams := search.next_streams) is not None:
        probe = probe_of(point, streams, len(probes), speed)
        probes.append(probe)
        search.record(streams, probe.slo_met, reason=probe.fail_reason)
    at = [q for q in probes if q.slo_met and q.streams == search.capacity_streams]
    cap = at[-1] if at else None
    nan = Percentiles(math.nan, math.nan, math.nan, math.nan)
    workload = load_workload("chatbot")
    return CapacityResult(
        capacity_streams=search.capacity_streams, requests_per_second=cap.requests_per_second if cap else 0.0,
        output_tokens_per_second=cap.output_tokens_per_second if cap else 0.0,
        goodput_requests_per_second=cap.goodput_requests_per_second if cap else 0.0,
        ttft_ms=cap.ttft_ms if cap else nan, itl_ms=cap.itl_ms if cap else nan, tpot_ms=cap.tpot_ms if cap else nan,
        e2e_latency_ms=cap.e2e_latency_ms if cap else nan, slo_attainment=cap.slo_attainment if cap else 0.0,
        bounded_by=search.bounded_by or "stopped", probes=probes, workload=workload.name,
        slo=workload.slo.to_dict(), start_streams=search.start_streams, max_streams=search.max_streams,
        tolerance=search.tolerance, max_probes=search.max_probes, probe_s=SEARCH.probe_s, warmup_s=SEARCH.warmup_s,
        wall_s=round(sum(q.wall_s for q in probes) + 1.0, 3),
    )


def write(folder: Path = HERE) -> Path:
    """Writes the table and its header into ``folder``; returns the CSV's path."""
    base = ServeConfig(model="/nonexistent/tiny-llama", max_model_len=512, gpu_memory_utilization=0.9,
                       load_format="dummy")
    csv_path = folder / "landscape-capacity.csv"
    csv_path.unlink(missing_ok=True)
    columns = [*landscape.LEAD_COLUMNS, *DIMS, *landscape.COLUMNS, *landscape.CAPACITY_COLUMNS,
               *landscape.TAIL_COLUMNS]
    for point in landscape.grid_points(DIMS):
        pid = landscape.point_id(point)
        cfg = apply_values(base, point)
        speeds = [1.0] + ([REPEATS[pid]] if pid in REPEATS else [])
        for repeat, speed in enumerate(speeds):
            rec = TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="ok",
                              engine_start_s=62.0 + 10 * (cfg.num_gpus - 1), teardown_s=3.0,
                              run_dir=f"synthetic/{pid}-r{repeat}")
            if pid in FAILING:
                rec.status, rec.engine_start_s = "failed", None
                rec.failure = Failure(kind="out_of_memory", message="synthetic: CUDA out of memory", exit_code=1)
                rec.total_s = 41.0
            else:
                cap = search_point(point, speed)
                landscape.attach_capacity(rec, cap)
                rec.result = landscape.capacity_result_of(cap)
                rec.load_s = cap.wall_s
                rec.total_s = round((rec.engine_start_s or 0) + cap.wall_s + 3.0, 3)
            row = landscape.record_row(point, repeat, rec)
            row["measured_at"] = "2026-01-01T00:00:00+00:00"
            landscape.append_row(csv_path, columns, row)
    workload = load_workload("chatbot")
    header = {
        "schema_version": landscape.SCHEMA_VERSION,
        "description": "SYNTHETIC capacity landscape for vtune's tests (tests/data/capacity/make_landscape.py): "
                       "a performance model, not a measurement",
        "table": csv_path.name,
        "columns": {**landscape.LEAD_COLUMNS, **{d: f"grid dimension {d}" for d in DIMS}, **landscape.COLUMNS,
                    **landscape.CAPACITY_COLUMNS, **landscape.TAIL_COLUMNS},
        "grid": {"dimensions": DIMS, "order": "first dimension outermost",
                 "points": len(landscape.grid_points(DIMS)), "space": landscape.grid_space(DIMS).to_dict()},
        "defaults": {"parallel_layout": "tp1-pp1-dp1", "max_num_seqs": 1024},
        "repeats": {"k": 2, "points": sorted(REPEATS)},
        "base": base.to_dict(), "base_flags": base.to_flags_line(),
        "model": {"spec": "synthetic", "name": "tiny-llama", "config_json": TINY_LLAMA},
        "hardware": {"device": "gpu", "gpus": [0, 1], "gpu": "H200", "gpu_memory_gib": 139.8,
                     "gpu_names": ["NVIDIA H200", "NVIDIA H200"], "nvlink": True, "cpu_cores": list(range(16))},
        "workload": workload.to_dict(), "workload_source": "chatbot",
        "objective": "capacity", "capacity_search": SEARCH.to_dict(),
        "command": "python tests/data/capacity/make_landscape.py",
    }
    csv_path.with_suffix(".json").write_text(json.dumps(header, indent=1) + "\n")
    return csv_path


if __name__ == "__main__":
    print(write())
