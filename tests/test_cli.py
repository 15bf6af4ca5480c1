"""The CLI in-process through build_parser()/main(): --compare, estimate's GPU, study names, schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import vtune._cli as cli
import vtune._hardware as hardware
import vtune._target as target_mod
import vtune._trial as trial_mod
from tests.shapes import LLAMA_8B, write_model
from vtune._hardware import GpuInfo
from vtune._memory import GIB, GPU_CATALOG
from vtune._serve_config import ServeConfig
from vtune._target import Target

MIB = 1 << 20
H200_NVML_BYTES = 143_771 * MIB  # nvidia-smi's total: 140.40 GiB
H200_TORCH_BYTES = int(139.80 * GIB)  # torch.cuda.mem_get_info's total, what vLLM (and the study) use


# --------------------------------------------------------------------- --compare
def test_compare_takes_lone_flags() -> None:
    args = cli.build_parser().parse_args(
        ["bench", "--compare", "--enforce-eager", "--max-num-seqs 32", "--json", "--", "--max-model-len", "512"])
    assert args.compare == ["--enforce-eager", "--max-num-seqs 32"]
    assert args.json is True and args.vllm_args == ["--", "--max-model-len", "512"]


@pytest.mark.parametrize("argv", [
    ["bench", "--compare=--enforce-eager", "--compare", "--max-num-seqs 32"],
    ["bench", "--compare", "--enforce-eager", "--compare=--max-num-seqs 32"],
    ["bench", "--workload", "batch", "--compare", "--enforce-eager", "--max-num-seqs 32", "--concurrency", "4"],
    ["bench", "--compare", "--enforce-eager", "--max-num-seqs 32", "--"],
])
def test_compare_spellings(argv: list[str]) -> None:
    assert cli.build_parser().parse_args(argv).compare == ["--enforce-eager", "--max-num-seqs 32"]


def test_compare_does_not_touch_other_commands() -> None:
    args = cli.build_parser().parse_args(["validate", "--", "m", "--compare", "--enforce-eager"])
    assert args.vllm_args == ["--", "m", "--compare", "--enforce-eager"]


def _fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[ServeConfig]:
    ran: list[ServeConfig] = []

    class Rec:
        status, failure, result, metrics, engine_start_s = "ok", None, None, {}, None

    def fake_run_trial(cfg: ServeConfig, *_: Any, **__: Any) -> Rec:
        ran.append(cfg)
        return Rec()

    monkeypatch.setattr(trial_mod, "run_trial", fake_run_trial)
    monkeypatch.setattr(target_mod, "resolve_target", lambda gpus=None: Target(device="cpu", cpu_cores=(0,)))
    monkeypatch.setattr(target_mod, "resolve_model", lambda model, target: model or "/fake/model")
    return ran


def test_bench_compare_measures_each_flag_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ran = _fake_bench(monkeypatch)
    rc = cli.main(["bench", "--run-dir", str(tmp_path / "run"), "--compare", "--enforce-eager", "--max-num-seqs 32",
                   "--", "--max-model-len", "512"])
    assert rc == 0, capsys.readouterr().err
    assert len(ran) == 2
    assert ran[0].enforce_eager is True and ran[0].max_num_seqs is None
    assert ran[1].max_num_seqs == 32 and ran[1].enforce_eager is None
    assert all(c.max_model_len == 512 and c.model == "/fake/model" for c in ran)


def test_bench_compare_needs_two_sets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ran = _fake_bench(monkeypatch)
    assert cli.main(["bench", "--compare", "--enforce-eager"]) == 2
    assert "two or more flag sets" in capsys.readouterr().err and ran == []


# --------------------------------------------------------- estimate's GPU memory
@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path, "llama8b", LLAMA_8B)


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
    gpus = [GpuInfo(index=i, name="NVIDIA H200", total_memory_bytes=H200_NVML_BYTES, uuid=f"GPU-{i}")
            for i in range(count)]
    monkeypatch.setattr(hardware, "discover_gpus", lambda: gpus)
    monkeypatch.setattr(hardware, "gpu_links", lambda: [])
    monkeypatch.setattr(target_mod, "_torch_total_bytes", lambda index, nvml: H200_TORCH_BYTES)


def _estimate(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert cli.main(["estimate", *argv, "--max-model-len", "8192", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_uses_the_found_gpus_torch_memory(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _fake_gpus(monkeypatch)
    out = _estimate(capsys, "--model", str(model_dir))
    assert out["gpu"] == "H200"
    assert out["total_memory_gib"] == pytest.approx(139.80, abs=0.005)
    # The same number as the study's target.
    found = target_mod.resolve_target(None)
    assert found.gpu is not None and out["total_memory_gib"] == pytest.approx(found.gpu.memory_gib)
    # The printed line too.
    assert cli.main(["estimate", "--model", str(model_dir), "--max-model-len", "8192"]) == 0
    assert "H200 139.80 GiB x 1" in capsys.readouterr().out


def test_estimate_gpu_flag_naming_the_found_gpu_uses_its_memory(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _fake_gpus(monkeypatch)
    assert _estimate(capsys, "--model", str(model_dir), "--gpu", "H200")["total_memory_gib"] == \
        pytest.approx(139.80, abs=0.005)
    other = _estimate(capsys, "--model", str(model_dir), "--gpu", "H100-80GB")
    assert other["gpu"] == "H100-80GB" and other["total_memory_gib"] == pytest.approx(GPU_CATALOG["H100-80GB"])
    given = _estimate(capsys, "--model", str(model_dir), "--gpu-memory-gib", "100")
    assert given["total_memory_gib"] == 100


def test_estimate_counts_the_found_gpus(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _fake_gpus(monkeypatch, count=2)
    out = _estimate(capsys, "--model", str(model_dir))
    layouts = {(e["tensor_parallel_size"], e["data_parallel_size"]) for e in out["layouts"]}
    assert {(1, 2), (2, 1)} <= layouts and all(tp * dp <= 2 for tp, dp in layouts)
    assert all(e["total_memory_gib"] == pytest.approx(139.80, abs=0.005) for e in out["layouts"])


def test_estimate_cpu_device_does_not_look_for_gpus(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def boom() -> list[GpuInfo]:
        raise AssertionError("discover_gpus called for --device cpu")

    monkeypatch.setattr(hardware, "discover_gpus", boom)
    assert cli.main(["estimate", "--model", str(model_dir), "--device", "cpu", "--json"]) == 0


def test_estimate_without_gpus_falls_back_to_the_catalog(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(hardware, "discover_gpus", lambda: [])
    out = _estimate(capsys, "--model", str(model_dir))
    assert out["gpu"] == "H100-80GB" and out["total_memory_gib"] == pytest.approx(GPU_CATALOG["H100-80GB"])


def test_estimate_generated_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(hardware, "discover_gpus", lambda: [])
    out = _estimate(capsys, "--model", str(model_dir), "-tp", "2", "--gpu-memory-utilization", "0.8",
                    "--no-enforce-eager", "--kv-cache-dtype", "fp8")
    assert out["tensor_parallel_size"] == 2 and out["gpu_memory_utilization"] == 0.8
    eager = _estimate(capsys, "--model", str(model_dir), "--enforce-eager")
    assert eager["cudagraph_gib"] == 0 and out["cudagraph_gib"] > 0


# ------------------------------------------------------------------ study names
COMMANDS = {
    "study": ["study", "--n-trials", "1"],
    "worker": ["worker"],
    "best": ["best"],
    "report": ["report"],
    "dashboard": ["dashboard"],
    "submit": ["submit", "--scheduler", "slurm", "--workers", "2", "--storage", "postgresql://u@h/db"],
}


@pytest.mark.parametrize("name", ["../evil", "team/x", "..", ""])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_study_name_is_checked_before_anything_is_written(command: str, name: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import vtune.study._study as study_mod

    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("the command ran")

    for fn in ("run_study", "run_worker", "load_settings"):
        monkeypatch.setattr(study_mod, fn, never)
    monkeypatch.setattr(target_mod, "resolve_target", never)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc = cli.main([*COMMANDS[command], "--study", name])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("vtune: error: --study")
    assert os.listdir(cwd) == [] and os.listdir(tmp_path) == ["cwd"]


def test_default_study_name_is_a_plain_name() -> None:
    from vtune.study import default_study_name

    assert default_study_name("/models/Llama-3.1-8B", "chatbot") == "Llama-3.1-8B-chatbot"
    assert default_study_name("/models/My Model/", "configs/w/long-context.yaml") == "My-Model-long-context"
    assert default_study_name("..", "chatbot") == "chatbot"
    assert default_study_name("/m/.hidden", ".x.yaml") == "hidden-.x"
    long = default_study_name("/m/" + "x" * 300, "chatbot")
    assert len(long) == 100


# ------------------------------------------------------------------------ schema
@pytest.mark.parametrize("kind", ["workload", "space"])
def test_schema_prints_and_writes(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", kind]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].startswith("https://json-schema.org/") and printed["additionalProperties"] is False
    out = tmp_path / f"{kind}.schema.json"
    assert cli.main(["schema", kind, "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == printed
    assert f"wrote {out}" in capsys.readouterr().out


def test_schema_bad_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "workload", "--out", str(tmp_path / "no" / "w.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["schema", "workload", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["schema", "trial"])


def test_help_names_every_built_in_workload() -> None:
    """The --workload help lists the built-in workloads without importing them: it must follow configs/workloads/."""
    from vtune._cli import _BUILTIN_WORKLOADS
    from vtune._workload import list_workloads

    assert sorted(_BUILTIN_WORKLOADS.split(", ")) == list_workloads()
