"""landscape.py's study import, point filters and packing (fake trials: no engine is started)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import landscape
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
