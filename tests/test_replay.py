"""Replays of search strategies on tiny synthetic landscapes, goodput and capacity (no engine is started)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import landscape, replay
from vtune._serve_config import ServeConfig
from vtune._workload import load_workload

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192,
    "max_position_embeddings": 4096, "torch_dtype": "float32", "tie_word_embeddings": False,
}

ROOT = Path(__file__).resolve().parents[1]


def goodput_of(point: dict[str, Any]) -> float:
    """A smooth landscape: more sequences and more batched tokens are better; KV space does not matter."""
    return round(1.0 + math.log2(point["max_num_seqs"]) + 0.5 * math.log2(point.get("max_num_batched_tokens", 2)), 3)


def write_table(folder: Path, dims: dict[str, list[Any]], *, fails: Any = None,
                repeats: dict[str, list[float]] | None = None, defaults: dict[str, Any] | None = None) -> Path:
    """A landscape CSV + header as landscape.py writes them; ``fails(point)`` -> a failure kind or None."""
    fails = fails or (lambda p: "invalid_argument" if p.get("max_num_batched_tokens", 1 << 30)
                      < p.get("max_num_seqs", 0) else None)
    columns = [*landscape.LEAD_COLUMNS, *dims, *landscape.COLUMNS]
    csv_path = folder / "table.csv"
    for point in landscape.grid_points(dims):
        pid = landscape.point_id(point)
        kind = fails(point)
        values = (repeats or {}).get(pid) or [goodput_of(point)]
        for i, g in enumerate(values if kind is None else [0.0]):
            row = {"point_id": pid, "repeat": str(i), **{k: str(v) for k, v in point.items()},
                   "flags": pid, "status": "failed" if kind else "ok", "failure_kind": kind or "",
                   "failure_message": "synthetic failure" if kind else "", "exit_code": "1" if kind else "",
                   "engine_start_s": "5" if kind else "60", "load_s": "" if kind else "20", "total_s": "80"}
            if not kind:
                row.update({"goodput_rps": str(g), "output_tok_s": str(64 * g), "requests_per_s": str(g),
                            "measured_s": "9", "steps": "3", "slo_attainment": "1",
                            "slo_met": json.dumps({"ttft_ms": True, "itl_ms": True, "e2e_ms": True}),
                            "slo_observed_ms": json.dumps({"ttft_ms": 100.0, "itl_ms": 10.0, "e2e_ms": 900.0}),
                            "step_goodput_rps": json.dumps([g, g, g]), "step_output_tok_s": json.dumps([64 * g] * 3),
                            "step_requests_per_s": json.dumps([g, g, g]), "successful_requests": "70",
                            "errored_requests": "0", "incomplete_requests": "8"})
                for m in ("ttft", "itl", "tpot", "e2e"):
                    for s in ("p50", "p90", "p99", "mean"):
                        row[f"{m}_{s}_ms"] = "10"
            landscape.append_row(csv_path, columns, row)
    base = ServeConfig(model="/nonexistent/tiny", max_model_len=512, enforce_eager=True,
                       env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    header = {
        "schema_version": 1, "grid": {"dimensions": dims, "space": landscape.grid_space(dims).to_dict()},
        "defaults": defaults or {"max_num_seqs": 16, "max_num_batched_tokens": 64, "VLLM_CPU_KVCACHE_SPACE": 2},
        "base": base.to_dict(), "model": {"config_json": TINY_LLAMA},
        "hardware": {"device": "cpu", "gpus": [], "gpu": None, "gpu_memory_gib": None, "cpu_cores": [0, 1]},
        "workload": load_workload("chatbot").with_duration(9).to_dict(), "objective": "goodput",
        "command": "synthetic",
    }
    csv_path.with_suffix(".json").write_text(json.dumps(header))
    return csv_path


DIMS = {"VLLM_CPU_KVCACHE_SPACE": [1, 2], "max_num_seqs": [4, 16], "max_num_batched_tokens": [8, 64]}


@pytest.fixture()
def table(tmp_path: Path) -> replay.Table:
    return replay.load_table(write_table(tmp_path, DIMS))


def test_table_reads_points_failures_and_best(table: replay.Table) -> None:
    assert len(table.point_ids) == 8
    assert sorted(p for p in table.point_ids if table.failed(p)) == [
        "VLLM_CPU_KVCACHE_SPACE=1&max_num_seqs=16&max_num_batched_tokens=8",
        "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=8"]
    pid, best = table.best
    assert pid.endswith("max_num_seqs=16&max_num_batched_tokens=64") and best == goodput_of(
        {"max_num_seqs": 16, "max_num_batched_tokens": 64})


def test_resolve_fills_defaults_and_snaps(table: replay.Table) -> None:
    pid, snapped = table.resolve(ServeConfig(env={"VLLM_CPU_KVCACHE_SPACE": "2"}))
    assert pid == "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=64" and snapped == []
    pid, snapped = table.resolve(ServeConfig(max_num_seqs=512, max_num_batched_tokens=10,
                                             env={"VLLM_CPU_KVCACHE_SPACE": "1"}))
    assert pid == "VLLM_CPU_KVCACHE_SPACE=1&max_num_seqs=16&max_num_batched_tokens=8"
    assert snapped == ["max_num_seqs", "max_num_batched_tokens"]


@pytest.mark.parametrize("strategy", ["vtune", "tpe", "random", "grid", "preset:size-preset"])
def test_replay_is_deterministic_for_a_seed(table: replay.Table, strategy: str) -> None:
    a = replay.run_strategy(table, strategy, seed=3, budget=10)
    b = replay.run_strategy(table, strategy, seed=3, budget=10)
    assert [(e.pid, e.observed, e.failed) for e in a.events] == [(e.pid, e.observed, e.failed) for e in b.events]
    assert a.events


def test_noise_draws_recorded_repeats(tmp_path: Path) -> None:
    pid = "VLLM_CPU_KVCACHE_SPACE=1&max_num_seqs=4&max_num_batched_tokens=8"
    t = replay.load_table(write_table(tmp_path, DIMS, repeats={pid: [2.0, 3.0, 4.0]}))
    assert t.mean_value(pid) == 3.0
    assert t.noise_sigma() == pytest.approx(math.sqrt(sum((math.log(v) - sum(map(math.log, [2, 3, 4])) / 3) ** 2
                                                          for v in (2, 3, 4)) / 2))
    lookup = replay.Lookup(t, replay.random.Random(0))
    seen = {lookup.measure(pid).result.goodput_requests_per_second for _ in range(40)}  # type: ignore[union-attr]
    assert seen == {2.0, 3.0, 4.0}
    other = "VLLM_CPU_KVCACHE_SPACE=1&max_num_seqs=4&max_num_batched_tokens=64"
    vals = [lookup.measure(other).result.goodput_requests_per_second for _ in range(20)]  # type: ignore[union-attr]
    assert len(set(vals)) == 20 and all(0.3 * goodput_of({"max_num_seqs": 4, "max_num_batched_tokens": 64}) < v
                                        for v in vals)


def test_grid_follows_auto_tune_order(table: replay.Table) -> None:
    run = replay.run_grid(table, seed=0)
    seq = [(e.label, e.pid) for e in run.events]
    assert seq == [
        # probe: the highest memory setting with the last max-num-seqs and max-num-batched-tokens
        ("probe", "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=64"),
        # then for max_num_seqs: for max_num_batched_tokens: (grid order)
        ("", "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=4&max_num_batched_tokens=8"),
        ("", "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=4&max_num_batched_tokens=64"),
        ("", "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=8"),
        ("", "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=64"),
    ]
    assert [e.failed for e in run.events] == [False, False, False, True, False]


def test_grid_probe_steps_memory_down_until_a_start(tmp_path: Path) -> None:
    dims: dict[str, list[Any]] = {"dtype": ["float32", "bfloat16"], "VLLM_CPU_KVCACHE_SPACE": [1, 2, 4],
                                  "max_num_seqs": [4, 16], "max_num_batched_tokens": [16, 64]}

    def fails(p: dict[str, Any]) -> str | None:
        return "out_of_memory" if p["VLLM_CPU_KVCACHE_SPACE"] == 4 else None

    t = replay.load_table(write_table(tmp_path, dims, fails=fails))
    run = replay.run_grid(t, seed=0)
    probes = [e.pid for e in run.events if e.label == "probe"]
    assert probes == [
        "dtype=float32&VLLM_CPU_KVCACHE_SPACE=4&max_num_seqs=16&max_num_batched_tokens=64",
        "dtype=float32&VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=64",
        "dtype=bfloat16&VLLM_CPU_KVCACHE_SPACE=4&max_num_seqs=16&max_num_batched_tokens=64",
        "dtype=bfloat16&VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=64",
    ]
    measured = [e.pid for e in run.events if e.label != "probe"]
    assert len(measured) == 8 and all("VLLM_CPU_KVCACHE_SPACE=2&" in p for p in measured)
    assert measured[:4] == [f"dtype=float32&VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs={s}&max_num_batched_tokens={b}"
                            for s in (4, 16) for b in (16, 64)]


def test_launches_to_target_on_a_hand_made_sequence() -> None:
    true = {"a": 5.0, "b": 9.0, "c": 9.6, "d": 10.0, "x": 0.0}
    E = replay.Event
    events = [
        E("x", failed=True, device_s=5),          # launch 1: could not start
        E("a", observed=5.2, device_s=80),        # 2: incumbent a (50%)
        E("x", launched=False),                   # pruned before launch: free
        E("b", observed=9.5, device_s=80),        # 3: incumbent b (90%)
        E("c", device_s=40),                      # 4: stopped early: not a candidate
        E("c", observed=9.4, device_s=80),        # 5: observed below b: b stays picked
        E("d", observed=10.1, device_s=80),       # 6: incumbent d (100%) -> target reached
        E("x", failed=True, device_s=5),          # 7
    ]
    s = replay.score(events, true.__getitem__, best=10.0, early_launches=3)
    assert s.launches_to_target == 6
    assert s.launches_to_any_target == 4  # c (96%) was run at launch 4 but stopped early: not picked
    assert s.best_at_early_pct == pytest.approx(90.0)
    assert s.failed_launches == 1
    assert s.device_s_to_target == pytest.approx(5 + 80 + 80 + 40 + 80 + 80)
    assert s.launches == 7 and s.final_pct == pytest.approx(100.0) and s.picked == "d"
    # picking by observed values: a lucky draw of a worse point is what counts
    noisy = [E("b", observed=11.0), E("d", observed=10.0)]
    probe_only = [E("d", label="probe"), E("a", observed=5.0)]
    assert replay.score(probe_only, true.__getitem__, best=10.0, early_launches=1).launches_to_any_target is None
    lucky = replay.score(noisy, true.__getitem__, best=10.0, early_launches=1)
    assert lucky.launches_to_target is None and lucky.launches_to_any_target == 2
    assert replay.quantile([1, 2, math.inf, math.inf], 0.5) == math.inf
    assert replay.quantile([1, 2, 3, math.inf], 0.5) == 2.5


def test_failed_point_costs_a_launch_without_pruning_and_none_for_vtune(table: replay.Table) -> None:
    failing = {p for p in table.point_ids if table.failed(p)}
    rnd = replay.run_strategy(table, "random", seed=0, budget=8)
    assert {e.pid for e in rnd.events if e.failed} == failing  # every point once: both failures launched
    assert sum(e.launched and e.failed for e in rnd.events) == 2
    tpe = replay.run_strategy(table, "tpe", seed=0, budget=30)
    assert all(e.launched for e in tpe.events) and any(e.failed for e in tpe.events)
    vt = replay.run_strategy(table, "vtune", seed=0, budget=12)
    assert vt.launches == 12
    assert not any(e.pid in failing for e in vt.events)  # the validity check pruned them before launch
    bare = replay.run_strategy(table, "vtune-no-prior", seed=0, budget=30)
    assert bare.launches == 30 and any(e.failed for e in bare.events)  # same study code, prior off
    assert vt.events[0].pid == "VLLM_CPU_KVCACHE_SPACE=2&max_num_seqs=16&max_num_batched_tokens=64"  # vLLM defaults
    assert any(e.snapped for e in vt.events[:3])  # the size preset (512 seqs, 8192 tokens) snapped to the grid
    assert not any(e.snapped for e in bare.events)  # no baselines
    import vtune._checks as checks
    import vtune.study._runner as study_mod

    assert study_mod.precheck is checks.precheck  # restored


def test_memory_model_prune_costs_vtune_no_launch(tmp_path: Path) -> None:
    dims = {"max_model_len": [512, 100000], "max_num_seqs": [4, 16]}

    def fails(p: dict[str, Any]) -> str | None:
        return "invalid_argument" if p["max_model_len"] > TINY_LLAMA["max_position_embeddings"] else None

    t = replay.load_table(write_table(tmp_path, dims, fails=fails, defaults={"max_model_len": 512,
                                                                              "max_num_seqs": 16}))
    vt = replay.run_strategy(t, "vtune", seed=1, budget=6)
    assert vt.launches == 6 and not any(e.failed for e in vt.events)
    rnd = replay.run_strategy(t, "random", seed=1, budget=4)
    assert sum(e.failed for e in rnd.events) == 2
    grid = replay.run_grid(t, seed=0)  # no memory dimension: one probe per outer value, a failed one skips it
    assert [(e.label, e.pid) for e in grid.events] == [
        ("probe", "max_model_len=512&max_num_seqs=16"), ("", "max_model_len=512&max_num_seqs=4"),
        ("", "max_model_len=512&max_num_seqs=16"), ("probe", "max_model_len=100000&max_num_seqs=16")]


def test_main_writes_markdown_and_json(table: replay.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    assert replay.main([str(table.path), "--seeds", "2", "--strategies", "random,grid,preset:vllm-defaults",
                        "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["strategies"]) == {"random", "grid", "preset:vllm-defaults"}
    assert data["schema_version"] == 1 and data["table"]["points"] == 8
    md = out.with_suffix(".md").read_text()
    assert "| grid |" in md and "launches to 95% of best" in md
    assert "random" in capsys.readouterr().out


def test_landscape_grid_spec_and_rows(tmp_path: Path) -> None:
    spec_file = tmp_path / "g.yaml"
    spec_file.write_text("schema_version: 1\nworkload: chatbot\nduration_s: 9\nflags: [--enforce-eager]\n"
                         "dimensions:\n  max_num_seqs: [4, 128]\n  max_num_batched_tokens: [64, 2048]\n"
                         "repeats: 3\nrepeat_points: 2\n")
    spec = landscape.load_grid_spec(str(spec_file), ["parallel_layout=tp1-pp1-dp2,tp2-pp1-dp1"])
    points = landscape.grid_points(spec.dimensions)
    assert len(points) == 8 and points[0] == {"max_num_seqs": 4, "max_num_batched_tokens": 64,
                                              "parallel_layout": "tp1-pp1-dp2"}
    valid = [not (p["max_num_batched_tokens"] < p["max_num_seqs"]) for p in points]
    picked = landscape.pick_repeat_points(points, valid, 2)
    assert len(picked) == 2 and all("max_num_seqs=128&max_num_batched_tokens=64" not in p for p in picked)
    with pytest.raises(landscape.VtuneError):
        landscape.load_grid_spec(None, ["max_num_seqs"])
    rows = list(csv.DictReader(write_table(tmp_path, DIMS).open()))
    assert len(rows) == 8 and rows[0]["point_id"].startswith("VLLM_CPU_KVCACHE_SPACE=1")


def test_recorded_row_round_trips_into_the_replayed_result(tmp_path: Path) -> None:
    from vtune._trial import TrialRecord
    from vtune.engines import Failure
    from vtune.loads._results import Percentiles, TrialResult

    def result(goodput: float) -> TrialResult:
        return TrialResult(
            output_tokens_per_second=64 * goodput, requests_per_second=goodput + 0.5,
            goodput_requests_per_second=goodput, ttft_ms=Percentiles(100, 200, 300, 150),
            itl_ms=Percentiles(10, 20, 30, 15), tpot_ms=Percentiles(11, 21, 31, 16),
            e2e_latency_ms=Percentiles(700, 900, 1100, 800), successful_requests=70, errored_requests=1,
            incomplete_requests=8, duration_s=9.0, slo_attainment=0.97,
            slo_met={"ttft_ms": True, "itl_ms": True}, slo_observed_ms={"ttft_ms": 200.0, "itl_ms": 20.0}, steps=3)

    rec = TrialRecord(config={}, flags_line="vllm serve x", status="ok", result=result(6.0),
                      step_results=[result(7.0), result(6.5), result(6.0)], engine_start_s=40.0, load_s=20.0,
                      total_s=61.0, teardown_s=1.0)
    point = {"max_num_seqs": 16}
    row = landscape.record_row(point, 0, rec)
    columns = [*landscape.LEAD_COLUMNS, *point, *landscape.COLUMNS]
    landscape.append_row(tmp_path / "t.csv", columns, row)
    read = next(csv.DictReader((tmp_path / "t.csv").open()))
    back = replay.row_result(read)
    assert back.goodput_requests_per_second == 6.0 and back.requests_per_second == 6.5
    assert back.ttft_ms == Percentiles(100, 200, 300, 150) and back.e2e_latency_ms.p99 == 1100
    assert back.slo_observed_ms == {"ttft_ms": 200.0, "itl_ms": 20.0} and back.slo_met["itl_ms"]
    assert replay.row_result(read, factor=2.0, step=0).goodput_requests_per_second == 14.0
    failed = TrialRecord(config={}, flags_line="x", status="failed", total_s=30.0, teardown_s=0.5,
                         failure=Failure("invalid_argument", "batched tokens < seqs", exit_code=1))
    frow = landscape.record_row(point, 0, failed)
    assert frow["failure_kind"] == "invalid_argument" and float(frow["engine_start_s"]) == 29.5
    assert "goodput_rps" not in frow


# ----------------------------------------------------------------------------- capacity landscapes
CAPACITY_TABLE = ROOT / "tests" / "data" / "capacity" / "landscape-capacity.csv"
DP2_256 = "parallel_layout=tp1-pp1-dp2&max_num_seqs=256"
DP2_64 = "parallel_layout=tp1-pp1-dp2&max_num_seqs=64"
TP1_256 = "parallel_layout=tp1-pp1-dp1&max_num_seqs=256"


@pytest.fixture()
def cap_table() -> replay.Table:
    return replay.load_table(CAPACITY_TABLE)


def test_capacity_fixture_is_what_its_script_writes(tmp_path: Path) -> None:
    """The committed synthetic table is reproducible: regenerate it with tests/data/capacity/make_landscape.py."""
    from tests.test_report import synthetic

    fresh = synthetic().write(tmp_path)
    assert fresh.read_text() == CAPACITY_TABLE.read_text()
    assert fresh.with_suffix(".json").read_text() == CAPACITY_TABLE.with_suffix(".json").read_text()


def test_capacity_table_scores_capacity_or_capacity_per_gpu(cap_table: replay.Table, tmp_path: Path) -> None:
    assert cap_table.is_capacity and cap_table.objective == "capacity"
    assert cap_table.best == (DP2_256, pytest.approx(31.5224))
    assert cap_table.values(DP2_64) == [29.5385, 27.9218]  # measured twice: both searches are kept
    assert cap_table.failed("parallel_layout=tp2-pp1-dp1&max_num_seqs=256")
    per_gpu = replay.load_table(CAPACITY_TABLE, "capacity_per_gpu")
    assert per_gpu.best == (TP1_256, pytest.approx(16.2963))  # one GPU serves the most per GPU
    assert per_gpu.mean_value(DP2_256) == pytest.approx(31.5224 / 2)
    good = replay.load_table(CAPACITY_TABLE, "goodput")  # the goodput at capacity, as the row's result
    assert good.mean_value(DP2_256) == pytest.approx(31.5224)
    with pytest.raises(replay.VtuneError, match="--objective capacity"):
        replay.load_table(write_table(tmp_path, DIMS), "capacity")  # a goodput table has no capacity
    assert replay.table_summary(cap_table)["probes_per_search"] == {"median": 7.0, "min": 5, "max": 8}


def test_lookup_answers_with_the_recorded_capacity_search(cap_table: replay.Table) -> None:
    from vtune.loads._capacity import CapacityResult

    lookup = replay.Lookup(cap_table, replay.random.Random(0))
    rec = lookup.measure(DP2_256)
    cap = landscape.record_capacity(rec)
    recorded = replay.row_capacity(cap_table.rows[DP2_256][0])
    assert isinstance(cap, CapacityResult) and [p.streams for p in cap.probes] == [32, 64, 128, 256, 192, 160, 176]
    # measured once: a noise factor scales every rate alike, streams and latencies stay as recorded
    factor = cap.requests_per_second / recorded.requests_per_second
    assert factor != 1.0 and abs(math.log(factor)) < 5 * cap_table.noise_sigma()
    assert [p.output_tokens_per_second for p in cap.probes] == pytest.approx(
        [p.output_tokens_per_second * factor for p in recorded.probes])
    assert cap.capacity_streams == 176 and cap.ttft_ms == recorded.ttft_ms
    assert rec.result is not None and rec.result.requests_per_second == cap.requests_per_second
    assert rec.status == "ok" and lookup.events[-1].observed == cap.requests_per_second
    assert rec.load_s == pytest.approx(sum(p.wall_s for p in recorded.probes))
    assert lookup.events[-1].device_s == pytest.approx(72.0 + rec.load_s)  # engine start + the probes
    # measured twice: one of its two recorded searches, as recorded
    seen = {landscape.record_capacity(lookup.measure(DP2_64)).requests_per_second for _ in range(30)}
    assert seen == {29.5385, 27.9218}


def test_lookup_stops_the_search_where_the_study_says(cap_table: replay.Table) -> None:
    """A probe callback (the study's pruner) that says stop ends the replayed search there."""
    seen: list[int] = []

    def stop_at_third(probe: Any) -> bool:
        seen.append(probe.streams)
        return len(seen) < 3

    lookup = replay.Lookup(cap_table, replay.random.Random(0))
    cfg = ServeConfig(model="m", data_parallel_size=2, max_num_seqs=256)
    rec = lookup(cfg, None, Path("/tmp/x"), on_probe=stop_at_third)
    cap = landscape.record_capacity(rec)
    assert seen == [32, 64, 128] and rec.status == "stopped_early"
    assert cap.bounded_by == "stopped" and [p.streams for p in cap.probes] == [32, 64, 128]
    assert cap.capacity_streams == 128 and rec.result.requests_per_second == cap.probes[2].requests_per_second
    assert lookup.events[-1].observed is None  # stopped early: not a candidate for the pick

    class Options:  # the study may hand the callback inside its capacity options instead
        on_probe = staticmethod(lambda probe: False)

    rec = lookup(cfg, None, Path("/tmp/x"), capacity=Options())
    assert [p.streams for p in landscape.record_capacity(rec).probes] == [32]


def test_replay_metrics_on_capacity_values(cap_table: replay.Table) -> None:
    """Launches to 90% of the best capacity in auto_tune's grid order: the 7th launch is DP=2 at 64 seqs (91%)."""
    run = replay.run_grid(cap_table, seed=0)
    assert [(e.label, e.pid) for e in run.events][:8] == [
        ("probe", TP1_256), ("", "parallel_layout=tp1-pp1-dp1&max_num_seqs=16"),
        ("", "parallel_layout=tp1-pp1-dp1&max_num_seqs=64"), ("", TP1_256),
        ("probe", DP2_256), ("", "parallel_layout=tp1-pp1-dp2&max_num_seqs=16"), ("", DP2_64), ("", DP2_256)]
    _, best = cap_table.best
    s90 = replay.score(run.events, cap_table.mean_value, best, early_launches=3, target_frac=0.9)
    assert s90.launches_to_target == 7
    assert cap_table.mean_value(DP2_64) / best == pytest.approx((29.5385 + 27.9218) / 2 / 31.5224)
    s95 = replay.score(run.events, cap_table.mean_value, best, early_launches=3, target_frac=0.95)
    assert s95.launches_to_target in (8, None) and s95.launches_to_any_target == 8  # the best itself
    per_gpu = replay.load_table(CAPACITY_TABLE, "capacity_per_gpu")
    run = replay.run_grid(per_gpu, seed=0)
    # one GPU at 256 seqs, the best per GPU, is the 4th launch (after its layout's probe, 16 and 64 seqs)
    assert replay.score(run.events, per_gpu.mean_value, per_gpu.best[1], 3, 0.95).launches_to_target == 4


@pytest.mark.parametrize("strategy", ["random", "tpe", "preset:vllm-defaults"])
def test_other_strategies_see_capacity_values(cap_table: replay.Table, strategy: str) -> None:
    lookup = replay.run_strategy(cap_table, strategy, seed=1, budget=6)
    for e in lookup.events:
        if e.observed is not None:
            rows = cap_table.values(e.pid)
            assert min(rows) * 0.7 < e.observed < max(rows) * 1.3  # a capacity, not a goodput at a fixed load


def test_main_replays_a_capacity_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cap"
    assert replay.main([str(CAPACITY_TABLE), "--seeds", "2", "--strategies", "vtune,random,grid",
                        "--target-frac", "0.9", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["table"]["objective"] == "capacity" and data["table"]["best_point"] == DP2_256
    assert data["table"]["best_value"] == pytest.approx(31.5224) and data["table"]["unit"] == "req/s"
    assert data["strategies"]["grid"]["launches_to_target"]["median"] == 7
    md = out.with_suffix(".md").read_text()
    assert "Objective: capacity (requests/s within the SLOs" in md and "31.52 req/s capacity" in md
    if not replay.has_objective("capacity"):  # before the study's capacity objective: said, and left out
        assert "vtune" not in data["strategies"] and "no capacity objective" in capsys.readouterr().err
    assert replay.main([str(write_table(tmp_path, DIMS)), "--objective", "capacity", "--seeds", "1"]) == 2


def test_vtune_replays_capacity_through_its_study_code(cap_table: replay.Table,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup as the study's trial_fn on a capacity table: vtune's study code, its baselines and sampler.

    Before the study's own capacity objective is in this checkout, a stand-in of the data
    contract (tests/test_report.py) plays it; after, the real one.
    """
    from tests.test_report import capacity_objective_shim

    capacity_objective_shim(monkeypatch)
    run = replay.run_strategy(cap_table, "vtune", seed=0, budget=8)
    assert run.launches == 8
    # the baselines come first: vLLM's defaults (one GPU, 1024 seqs snapped to 256) among them
    assert TP1_256 in [e.pid for e in run.events[:3]] and any(e.snapped for e in run.events[:3])
    # the study's capacity pruner stops some searches at a probe that fails far below the best: no value seen
    assert sum(e.observed is not None for e in run.events) >= 4
    assert all(e.observed is not None or e.label == "" for e in run.events if not e.failed)  # baselines run out
    for e in run.events:
        if e.observed is not None:  # a capacity, as recorded (times the noise of a once-measured point)
            assert min(cap_table.values(e.pid)) * 0.8 < e.observed < max(cap_table.values(e.pid)) * 1.25
    s = replay.score(run.events, cap_table.mean_value, cap_table.best[1], 3, 0.9)
    assert s.launches == 8 and s.final_pct > 50


def test_goodput_replay_of_a_capacity_table_sees_the_goodput_at_capacity(tmp_path: Path) -> None:
    """Scoring goodput on a capacity table: the goodput of the probe at capacity, not its request rate."""
    import shutil

    rows = landscape.read_rows(CAPACITY_TABLE)
    for row in rows:  # half of the requests at capacity missed an objective (attainment 0.5)
        data = json.loads(row["capacity"]) if row["capacity"] else None
        if data:
            data["goodput_requests_per_second"] = data["requests_per_second"] / 2
            for probe in data["probes"]:
                probe["goodput_requests_per_second"] = probe["requests_per_second"] / 2
            row["capacity"] = json.dumps(data)
            row["goodput_rps"] = str(float(row["capacity_rps"]) / 2)
    path = tmp_path / "half.csv"
    for row in rows:
        landscape.append_row(path, list(rows[0]), row)
    shutil.copy(CAPACITY_TABLE.with_suffix(".json"), path.with_suffix(".json"))
    good = replay.load_table(path, "goodput")
    lookup = replay.Lookup(good, replay.random.Random(0))
    rec = lookup.measure(DP2_64)
    cap = landscape.record_capacity(rec)
    assert lookup.events[-1].observed == pytest.approx(cap.requests_per_second / 2)
    assert good.mean_value(DP2_64) == pytest.approx((29.5385 + 27.9218) / 4)
