"""Study settings built by the library (build_settings), the same as `vtune study` builds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vtune._target as target_mod
from tests.shapes import LLAMA_8B, LLAMA_70B
from vtune._cli import _settings_from_args, build_parser, main
from vtune._errors import VtuneError
from vtune._memory import resolve_gpu
from vtune._target import Target
from vtune._workload import load_workload
from vtune.study import build_settings
from vtune.study._settings import StudySettings

H200X2 = Target(device="gpu", gpus=(0, 1), gpu=resolve_gpu("H200"), gpu_names=("NVIDIA H200",) * 2, nvlink=True,
                cpu_cores=(0, 1))


def model_dir(tmp_path: Path, config: dict, name: str = "llama-8b") -> str:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    return str(d)


def comparable(s: StudySettings) -> dict:
    return {**s.to_attr(), "name": s.name, "enqueue": s.enqueue, "seed": s.seed, "studies_dir": s.studies_dir,
            "configs_dir": s.configs_dir}


def test_build_settings_gives_the_same_settings_as_the_cli(tmp_path: Path, monkeypatch) -> None:
    model = model_dir(tmp_path, LLAMA_8B)
    space = tmp_path / "space.yaml"
    space.write_text("schema_version: 1\ndimensions:\n  max_num_seqs: {low: 32, high: 512}\n"
                     "  enable_prefix_caching: {enabled: true}\n")
    monkeypatch.setattr(target_mod, "resolve_target", lambda gpus=None, **kw: H200X2)  # what the CLI finds here
    argv = ["study", "--model", model, "--workload", "chatbot", "--concurrency", "64", "--space", str(space),
            "--objectives", "goodput,ttft_p99", "--duration-s", "30", "--strict-memory", "--remeasure", "3",
            "--enqueue", "--max-num-seqs 64", "--enqueue", "--gpu-memory-utilization 0.9", "--seed", "7",
            "--studies-dir", str(tmp_path / "s"), "--configs-dir", str(tmp_path / "c"),
            "--", "--max-num-batched-tokens", "4096", "--load-format", "dummy"]
    from_cli = _settings_from_args(build_parser().parse_args(argv))
    from_python = build_settings(
        model=model, workload="chatbot", fixed_flags=["--max-num-batched-tokens", "4096", "--load-format", "dummy"],
        objectives="goodput,ttft_p99", space_file=space, concurrency=64, duration_s=30, strict_memory=True,
        remeasure_top_k=3, enqueue=["--max-num-seqs 64", ["--gpu-memory-utilization", "0.9"]], seed=7,
        studies_dir=tmp_path / "s", configs_dir=tmp_path / "c", target=H200X2)
    assert comparable(from_python) == comparable(from_cli)
    assert from_python.name == "llama-8b-chatbot" and from_python.workload.load.streams == 64
    assert from_python.space.get("max_num_batched_tokens").fixed == 4096  # fixed after --: not sampled
    assert from_python.space.get("max_num_seqs").low == 32 and from_python.space.get("enable_prefix_caching").active
    assert from_python.enqueue == [["--max-num-seqs", "64"], ["--gpu-memory-utilization", "0.9"]]


def test_build_settings_sizes_the_study_for_the_workload_and_the_hardware(tmp_path: Path) -> None:
    s = build_settings(model=model_dir(tmp_path, LLAMA_8B), workload="chatbot", target=H200X2)
    hint = load_workload("chatbot").max_model_len_hint
    assert s.base.max_model_len == max(256, -(-hint // 256) * 256) and s.base.max_model_len % 256 == 0
    assert s.space.get("parallel_layout").choices == ["tp1-pp1-dp2", "tp2-pp1-dp1"]
    # 70B does not fit one H100: only the layouts whose weights fit are sampled.
    h100x2 = Target(device="gpu", gpus=(0, 1), gpu=resolve_gpu("H100-80GB"), gpu_names=("H100",) * 2)
    big = build_settings(model=model_dir(tmp_path, LLAMA_70B, "llama-70b"), workload="chatbot", target=h100x2,
                         fixed_flags=["--", "--max-model-len", "1024"], name="big")
    assert big.space.get("parallel_layout").choices == ["tp2-pp1-dp1"] and big.base.max_model_len == 1024
    # A fixed TP takes the layout out of the sampling.
    tp = build_settings(model=model_dir(tmp_path, LLAMA_8B), workload=load_workload("batch"), target=H200X2,
                        fixed_flags=["--tensor-parallel-size", "2"])
    assert not tp.space.get("parallel_layout").enabled and tp.name == "llama-8b-batch"
    cpu = build_settings(workload="chatbot", target=Target(device="cpu", cpu_cores=(0, 1)))
    assert cpu.base.env["VLLM_CPU_KVCACHE_SPACE"] and "tiny-llama" in cpu.model


@pytest.mark.parametrize("kwargs, message", [
    ({"concurrency": 0}, "--concurrency must be >= 1, got 0"),
    ({"duration_s": 0}, "--duration-s must be > 0, got 0"),
    ({"remeasure_top_k": -1}, "--remeasure must be >= 0, got -1"),
    ({"name": "a/b"}, "--study 'a/b': a name, not a path"),
    ({"enqueue": ["--max-num-seqs many"]}, "--enqueue --max-num-seqs many: --max-num-seqs must be an integer"),
    ({"enqueue": [""]}, "--enqueue: give the quoted vLLM flags"),
    ({"objectives": "speed"}, "--objectives speed: unknown objective"),
    ({"workload": 3}, "--workload: give a built-in name or a file"),
    ({"model": None}, "--model is required on a GPU machine"),
])
def test_build_settings_rejects_bad_input_in_one_line(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"model": model_dir(tmp_path, LLAMA_8B), "workload": "chatbot", "target": H200X2, **kwargs}
    with pytest.raises(VtuneError) as err:
        build_settings(**args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_remeasure_is_exit_2_one_line(tmp_path: Path, capsys) -> None:
    assert main(["study", "--remeasure", "-1", "--studies-dir", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == "vtune: error: --remeasure must be >= 0, got -1"


def test_a_studys_vllm_version_is_stored_and_followed_by_whoever_loads_it(tmp_path: Path, monkeypatch) -> None:
    """``vtune study --vllm-version 0.19``: a worker, ``best`` or ``report`` rebuilding the settings plans for 0.19."""
    import vtune._vllm_defaults as d
    from vtune.study._settings import load_settings
    from vtune.study._study import open_study

    monkeypatch.setattr(target_mod, "resolve_target", lambda gpus=None, **kw: H200X2)
    argv = ["study", "--model", model_dir(tmp_path, LLAMA_8B), "--vllm-version", "0.19", "--studies-dir",
            str(tmp_path / "s"), "--", "--load-format", "dummy"]
    try:
        settings = _settings_from_args(build_parser().parse_args(argv))
        assert settings.vllm_version == "0.19" and settings.to_attr()["vllm_version"] == "0.19"
        study = open_study(settings, f"sqlite:///{tmp_path / 'v.db'}")
        d.use_vllm_version(None)  # another process: the installed vLLM
        assert d.target_version() != "0.19.0"
        loaded = load_settings(study, studies_dir=tmp_path / "s", configs_dir=tmp_path / "c")
        assert loaded.vllm_version == "0.19" and d.target_version() == "0.19.0"
    finally:
        d.use_vllm_version(None)


def test_resuming_with_another_vllm_version_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import vtune._vllm_defaults as d
    from vtune.study._study import open_study

    monkeypatch.setattr(target_mod, "resolve_target", lambda gpus=None, **kw: H200X2)
    model = model_dir(tmp_path, LLAMA_8B)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    try:
        first = _settings_from_args(build_parser().parse_args(
            ["study", "--model", model, "--study", "r", "--vllm-version", "0.20", "--", "--load-format", "dummy"]))
        open_study(first, url)
        again = _settings_from_args(build_parser().parse_args(
            ["study", "--model", model, "--study", "r", "--", "--load-format", "dummy"]))
        with pytest.raises(VtuneError, match="same --vllm-version"):
            open_study(again, url)
    finally:
        d.use_vllm_version(None)


def test_capacity_probes_shorter_than_a_second_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="--duration-s must be at least 1 s with a capacity objective"):
        build_settings(model=model_dir(tmp_path, LLAMA_8B), duration_s=0.5, target=H200X2)
