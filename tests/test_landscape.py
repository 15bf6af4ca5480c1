"""landscape.py: study import, point filters, packing, capacity tables and bench_capacity.py (fake trials), and one
real capacity trial on the CPU engine (e2e)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import landscape
from tests.test_report import synthetic
from vtune._errors import VtuneError
from vtune._memory import Gpu
from vtune._serve_config import parse_serve_args
from vtune._space import apply_values
from vtune._target import Target, apply_engine_defaults
from vtune._trial import TrialRecord
from vtune._workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
GPU_STUDY = ROOT / "benchmarks" / "results" / "gpu-study-2xh200" / "study.db"
GPU_GRID = ROOT / "benchmarks" / "grids" / "gpu-llama8b-2xh200.yaml"
TWO_H200 = Target(device="gpu", gpus=(0, 1), gpu=Gpu("H200", 139.8), gpu_names=("NVIDIA H200",) * 2, nvlink=True,
                  cpu_cores=(0, 1))


def _gpu_grid(tmp_path: Path) -> tuple[landscape.GridSpec, list[dict[str, Any]], list[Any], Any]:
    spec = landscape.load_grid_spec(str(GPU_GRID), [])
    workload = load_workload(spec.workload)
    workload = workload.with_duration(spec.duration_s)
    import dataclasses

    workload = dataclasses.replace(workload, load=dataclasses.replace(workload.load, streams=spec.concurrency))
    base = parse_serve_args(spec.flags)
    base.model = str(tmp_path / "models" / "llama_8b")
    base = apply_engine_defaults(base, TWO_H200)
    points = landscape.grid_points(spec.dimensions)
    return spec, points, [apply_values(base, p) for p in points], workload


def test_study_trials_of_grid_points_are_imported_once(tmp_path: Path) -> None:
    spec, points, configs, workload = _gpu_grid(tmp_path)
    db = tmp_path / "gpu-8b-chatbot.db"
    shutil.copy(GPU_STUDY, db)
    rows = landscape.import_study_rows(db, points, configs, [], workload, spec)
    # trials 1 (the size preset) and 3 (sampled) measured tp2 / 256 / 8192 at utilization 0.95
    assert [(r["point_id"], r["repeat"], r["source"]) for r in rows] == [
        ("parallel_layout=tp2-pp1-dp1&max_num_seqs=256&max_num_batched_tokens=8192", "0", "study:gpu-8b-chatbot.db#1"),
        ("parallel_layout=tp2-pp1-dp1&max_num_seqs=256&max_num_batched_tokens=8192", "1", "study:gpu-8b-chatbot.db#3"),
    ]
    assert float(rows[0]["goodput_rps"]) == pytest.approx(13.9919, rel=1e-4)
    assert rows[0]["step_goodput_rps"].startswith("[9.98")
    assert rows[0]["engine_start_s"] and rows[0]["startup"]
    assert landscape.import_study_rows(db, points, configs, rows, workload, spec) == []  # not twice


def test_study_under_another_load_is_not_imported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, points, configs, workload = _gpu_grid(tmp_path)
    db = tmp_path / "s.db"
    shutil.copy(GPU_STUDY, db)
    assert landscape.import_study_rows(db, points, configs, [], workload.with_duration(30), spec) == []
    assert "its load differs" in capsys.readouterr().out
    with pytest.raises(VtuneError, match="--import-study"):
        landscape.import_study_rows(tmp_path / "missing.db", points, configs, [], workload, spec)


def test_only_filter_names_the_flag() -> None:
    dims = {"parallel_layout": ["tp1-pp1-dp1", "tp2-pp1-dp1"], "max_num_seqs": [64, 256]}
    assert landscape._only_filter("max_num_seqs=64", dims) == ("max_num_seqs", "64")
    with pytest.raises(VtuneError, match="--only"):
        landscape._only_filter("max_num_seqs=65", dims)
    with pytest.raises(VtuneError, match="--only"):
        landscape._only_filter("dtype=float32", dims)


def test_pack_measures_small_points_at_once_on_disjoint_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 1-GPU points share the two GPUs at once; a 2-GPU point waits for both."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", '
                                       '"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, '
                                       '"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, '
                                       '"max_position_embeddings": 2048, "torch_dtype": "bfloat16"}')
    running: set[int] = set()
    seen: list[tuple[str, tuple[int, ...], int]] = []
    lock = threading.Lock()

    def fake_trial(cfg: Any, workload: Any, run_dir: Path, *, gpus: Any = None, **kw: Any) -> TrialRecord:
        with lock:
            assert not running & set(gpus), "a GPU leased twice"
            running.update(gpus)
            seen.append((cfg.to_flags_line(), tuple(gpus), len(running)))
        time.sleep(0.3)
        with lock:
            running.difference_update(gpus)
        return TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="failed",
                           run_dir=str(run_dir))

    import vtune._target
    import vtune._trial

    monkeypatch.setattr(vtune._trial, "run_trial", fake_trial)
    monkeypatch.setattr(vtune._target, "resolve_target", lambda spec=None, **kw: TWO_H200)
    monkeypatch.setattr(landscape, "hardware_facts", lambda target: {"device": "gpu"})
    out = tmp_path / "t.csv"
    rc = landscape.main(["--dim", "parallel_layout=tp2-pp1-dp1,tp1-pp1-dp1", "--dim", "max_num_seqs=8,16",
                         "--model", str(model), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--pack",
                         "--", "--load-format", "dummy"])
    assert rc == 0
    rows = landscape.read_rows(out)
    assert len(rows) == 4 and {r["point_id"] for r in rows} == {landscape.point_id(p) for p in landscape.grid_points(
        {"parallel_layout": ["tp2-pp1-dp1", "tp1-pp1-dp1"], "max_num_seqs": [8, 16]})}
    one_gpu = [s for s in seen if len(s[1]) == 1]
    assert sorted(s[1] for s in one_gpu) == [(0,), (1,)] and max(s[2] for s in one_gpu) == 2  # packed
    assert [len(s[1]) for s in seen] == [1, 1, 2, 2]  # the small ones first
    # --only / --limit on what is left: nothing left to measure
    assert landscape.main(["--dim", "parallel_layout=tp2-pp1-dp1,tp1-pp1-dp1", "--dim", "max_num_seqs=8,16",
                           "--model", str(model), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
                           "--only", "parallel_layout=tp1-pp1-dp1", "--limit", "1"]) == 0
    assert len(landscape.read_rows(out)) == 4


# ----------------------------------------------------------------------------- capacity landscapes
def test_grid_asks_for_the_capacity_objective(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("schema_version: 1\nobjective: capacity\ncapacity: {tolerance: 0.25, probe_s: 6, max_probes: 5}\n"
                    "dimensions:\n  max_num_seqs: [2, 32]\n")
    spec = landscape.load_grid_spec(str(grid), [])
    assert spec.objective == "capacity" and spec.to_dict()["capacity"] == {"tolerance": 0.25, "probe_s": 6,
                                                                          "max_probes": 5}
    settings = landscape.CapacitySettings.resolve(spec.capacity, load_workload("chatbot"))
    # what the grid leaves out comes from the workload (8 streams, 10 s steps, 3 s warmup) and the search
    assert (settings.start_streams, settings.probe_s, settings.warmup_s, settings.tolerance, settings.max_probes,
            settings.max_streams, settings.attainment_target) == (8, 6.0, 3.0, 0.25, 5, 1024, None)
    for text, match in (("objective: knee\n", "objective 'knee'"),
                        ("objective: capacity\ncapacity: {probes: 3}\n", "unknown capacity setting"),
                        ("capacity: {tolerance: 0.2}\n", "objective is goodput"),
                        ("objective: capacity\ncapacity: {max_probes: many}\n", "capacity.max_probes")):
        grid.write_text("schema_version: 1\n" + text + "dimensions:\n  max_num_seqs: [2, 32]\n")
        with pytest.raises(VtuneError, match=match):
            spec = landscape.load_grid_spec(str(grid), [])
            landscape.CapacitySettings.resolve(spec.capacity, load_workload("chatbot"))


def test_capacity_row_keeps_every_probe(tmp_path: Path) -> None:
    model = synthetic()
    point = {"parallel_layout": "tp1-pp1-dp2", "max_num_seqs": 64}
    cap = model.search_point(point)
    rec = TrialRecord(config={"data_parallel_size": 2, "max_num_seqs": 64}, flags_line="vllm serve m -dp 2",
                      status="ok", engine_start_s=60.0, load_s=cap.wall_s, total_s=200.0)
    landscape.attach_capacity(rec, cap)
    rec.result = landscape.capacity_result_of(cap)
    row = landscape.record_row(point, 0, rec)
    assert row["capacity_streams"] == "128" and row["capacity_rps"] == "29.5385" and row["num_gpus"] == "2"
    assert row["probe_trace"] == "32+ 64+ 128+ 256- 192- 160- 144- 136-" and row["probes"] == "8"
    assert row["capacity_bounded_by"] == "slo" and float(row["measured_s"]) == 8 * 10.0
    # the result columns describe the probe at capacity
    assert row["requests_per_s"] == row["capacity_rps"] and float(row["ttft_p90_ms"]) == cap.ttft_ms.p90
    columns = [*landscape.LEAD_COLUMNS, *point, *landscape.COLUMNS, *landscape.CAPACITY_COLUMNS]
    landscape.append_row(tmp_path / "t.csv", columns, row)
    back = landscape.row_capacity(landscape.read_rows(tmp_path / "t.csv")[0])
    expected = cap.to_dict()
    expected.pop("description")
    assert {k: v for k, v in back.to_dict().items() if k != "description"} == expected
    # nothing passed: capacity 0, and the result is the lightest probe's
    none = dataclasses.replace(cap, capacity_streams=0, requests_per_second=0.0,
                               probes=[p for p in cap.probes if not p.slo_met])
    res = landscape.capacity_result_of(none)
    assert res.requests_per_second == min(none.probes, key=lambda p: p.streams).requests_per_second
    assert res.slo_met["ttft_ms"] is False or res.slo_met["itl_ms"] is False or res.slo_met["e2e_ms"] is False
    assert landscape.record_row(point, 0, TrialRecord(config={}, flags_line="x", status="failed")).get(
        "capacity") is None


def test_capacity_landscape_measures_each_point_by_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--objective capacity``: every point goes through the capacity trial with the table's settings."""
    model = synthetic()
    calls: list[tuple[str, Any]] = []

    def fake_capacity_trial(cfg: Any, workload: Any, run_dir: Path, settings: Any, **kw: Any) -> TrialRecord:
        calls.append((cfg.to_flags_line(), settings))
        point = {"parallel_layout": "tp1-pp1-dp1", "max_num_seqs": cfg.max_num_seqs}
        cap = model.search_point(point)
        rec = TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="ok", engine_start_s=30.0,
                          load_s=cap.wall_s, total_s=40.0 + cap.wall_s, run_dir=str(run_dir))
        landscape.attach_capacity(rec, cap)
        rec.result = landscape.capacity_result_of(cap)
        return rec

    def no_fixed_load(*a: Any, **kw: Any) -> TrialRecord:
        raise AssertionError("a capacity landscape ran the fixed load")

    import vtune._trial

    monkeypatch.setattr(landscape, "capacity_trial", fake_capacity_trial)
    monkeypatch.setattr(vtune._trial, "run_trial", no_fixed_load)
    monkeypatch.setattr(landscape, "hardware_facts", lambda target: {"device": "cpu", "gpus": [], "gpu": None,
                                                                     "gpu_memory_gib": None, "cpu_cores": [0, 1]})
    out = tmp_path / "cap.csv"
    argv = ["--dim", "max_num_seqs=16,64", "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
            "--objective", "capacity", "--", "--enforce-eager"]
    assert landscape.main(argv) == 0
    assert [f"--max-num-seqs {s}" in c[0] for c, s in zip(calls, (16, 64), strict=True)] == [True, True]
    assert calls[0][1].start_streams == 8 and calls[0][1].probe_s == pytest.approx(10.0)  # chatbot: 8 streams, 10 s
    header = json.loads(out.with_suffix(".json").read_text())
    assert header["objective"] == "capacity" and header["capacity_search"]["start_streams"] == 8
    assert "capacity" in header["columns"] and "probe_trace" in header["columns"]
    rows = landscape.read_rows(out)
    assert [r["capacity_streams"] for r in rows] == ["20", "64"]
    from benchmarks import replay

    table = replay.load_table(out)
    assert table.is_capacity and table.best[0] == "max_num_seqs=64"
    # the same --out as a goodput table: refused, nothing measured
    assert landscape.main(argv[:-4] + ["--", "--enforce-eager"]) == 2
    assert len(calls) == 2


def test_capacity_trials_of_a_study_are_imported(tmp_path: Path) -> None:
    import optuna

    model = synthetic()
    spec = landscape.GridSpec(dimensions={"max_num_seqs": [16, 64]}, objective="capacity")
    workload = load_workload("chatbot")
    base = parse_serve_args(["--enforce-eager"])
    base.model = str(tmp_path / "m")
    points = landscape.grid_points(spec.dimensions)
    configs = [apply_values(base, p) for p in points]
    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize")
    study.set_user_attr("vtune", {"workload": workload.to_dict()})
    settings = landscape.CapacitySettings(start_streams=32, max_streams=1024, tolerance=0.1, max_probes=15,
                                          probe_s=10.0, warmup_s=2.0)
    for cfg, probe_s in ((configs[1], 10.0), (configs[0], 5.0), (configs[1], 10.0)):
        cap = dataclasses.replace(model.search_point({"parallel_layout": "tp1-pp1-dp1",
                                                       "max_num_seqs": cfg.max_num_seqs}), probe_s=probe_s)
        other = cfg.to_dict()
        other["model"] = "/elsewhere/m"  # the model folder's path does not matter
        study.add_trial(optuna.trial.create_trial(values=[cap.requests_per_second], user_attrs={
            "config": other, "flags": cfg.to_flags_line(), "capacity": cap.to_dict(), "num_gpus": 1,
            "timings": {"engine_start_s": 50.0, "load_s": cap.wall_s, "total_s": 200.0}}))
    rows = landscape.import_study_rows(db, points, configs, [], workload, spec, settings)
    # trial 1 searched with 5 s probes: not this table's search
    assert [(r["point_id"], r["repeat"], r["source"]) for r in rows] == [
        ("max_num_seqs=64", "0", "study:s.db#0"), ("max_num_seqs=64", "1", "study:s.db#2")]
    assert rows[0]["capacity_streams"] == "64" and rows[0]["probe_trace"].startswith("32+ 64+")
    assert landscape.row_capacity(rows[0]).probe_s == 10.0 and rows[0]["engine_start_s"] == "50"
    assert landscape.import_study_rows(db, points, configs, rows, workload, spec, settings) == []


# landscape.capacity_trial is vtune._trial.run_trial's capacity path: tests/study/test_e2e_study.py runs that path
# end to end on the real engine (every probe, raw report and trial.json checked); the table's own code is tested
# above and below on recorded or synthetic capacities.


def test_bench_capacity_splits_the_trial_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """bench_capacity.py: the time split of each capacity trial, a few lines, one JSON file (fake trials)."""
    from benchmarks import bench_capacity

    model = synthetic()
    seen: list[tuple[str, Any, Any]] = []

    def fake(cfg: Any, workload: Any, run_dir: Path, settings: Any, *, gpus: Any = None, **kw: Any) -> TrialRecord:
        seen.append((cfg.to_flags_line(), gpus, settings))
        cap = model.search_point({"parallel_layout": "tp1-pp1-dp1", "max_num_seqs": cfg.max_num_seqs or 16})
        rec = TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="ok", engine_start_s=50.0,
                          load_s=cap.wall_s, teardown_s=2.0, total_s=50.0 + cap.wall_s + 2.0 + 1.5)
        return landscape.attach_capacity(rec, cap)

    monkeypatch.setattr(landscape, "capacity_trial", fake)
    out = tmp_path / "out"
    assert bench_capacity.main(["--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--probe-s", "10"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) <= 7 and printed[-1] == f"wrote {out / 'bench_capacity.json'}"
    data = json.loads((out / "bench_capacity.json").read_text())
    assert [t["flags"].split("--max-num-seqs ")[1].split()[0] for t in data["trials"]] == ["2", "32"]
    assert all("VLLM_CPU_KVCACHE_SPACE=1" in t["flags"] and "--enforce-eager" in t["flags"] for t in data["trials"])
    first = data["trials"][0]  # the synthetic search: 10 s windows after 2 s warmups, 2.5 s overhead each
    n = len(model.search_point({"parallel_layout": "tp1-pp1-dp1", "max_num_seqs": 2}).probes)
    assert first["probes"] == len(first["probe_list"]) == n and first["probe_trace"].startswith("32- 16-")
    assert first["measured_s"] == 10.0 * n and first["warmup_s"] == 2.0 * n
    assert first["probe_overhead_s"] == pytest.approx(n * 2.5) and first["search_overhead_s"] == pytest.approx(1.0)
    assert first["search_per_engine_start"] == pytest.approx(first["search_s"] / 50.0)
    assert first["other_s"] == pytest.approx(1.5) and first["fixed_load_s"] == 33.0  # chatbot: 3 s + 30 s
    assert data["summary"]["searched"] == 2 and data["summary"]["probe_overhead_per_probe_s"] == pytest.approx(2.5)
    assert seen[0][1] is None and seen[0][2].probe_s == 10.0  # the CPU engine: no GPUs
    # on GPUs: a configuration is required, and gets its GPUs
    import vtune._target

    monkeypatch.setattr(vtune._target, "resolve_target", lambda spec=None, **kw: TWO_H200)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert bench_capacity.main(["--model", str(model_dir), "--out", str(out)]) == 2
    assert "--config" in capsys.readouterr().err
    assert bench_capacity.main(["--model", str(model_dir), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
                                "--config", "-tp 2 --max-num-seqs 64"]) == 0
    assert seen[-1][1] == [0, 1] and "--max-num-seqs 64" in seen[-1][0]
