"""`vtune estimate` and `vtune validate` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.shapes import LLAMA_8B, QWEN3_0_6B, QWEN3_VL_2B, write_model


def vtune(*args: str, check_rc: int | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "vtune", *args], capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: write_model(root, name, cfg) for name, cfg in
            (("llama8b", LLAMA_8B), ("qwen3vl", QWEN3_VL_2B), ("qwen06", QWEN3_0_6B))}


def test_help_lists_commands():
    out = vtune("--help", check_rc=0).stdout
    for cmd in ("estimate", "validate"):
        assert cmd in out


def test_estimate_json_has_the_documented_keys(models):
    out = json.loads(vtune("estimate", "--model", str(models["llama8b"]), "--max-model-len", "16384",
                           "--gpu-memory-utilization", "0.95", "--gpu", "H100-80GB", "--json", check_rc=0).stdout)
    for key in ("weights_gib", "activation_peak_gib", "non_torch_gib", "cudagraph_gib", "kv_cache_gib",
                "kv_cache_tokens", "max_concurrency", "fits", "reason"):
        assert key in out
    assert out["fits"] is True and out["reason"] is None
    assert out["kv_cache_tokens"] == pytest.approx(482400, rel=0.02)


def test_estimate_layouts_per_gpu_count(models):
    proc = vtune("estimate", "--model", str(models["llama8b"]), "--num-gpus", "4", "--gpu", "H200",
                 "--max-model-len", "8192", check_rc=0)
    lines = [ln.split() for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit()]
    layouts = {(int(r[0]), int(r[1]), int(r[2])) for r in lines}
    assert {(1, 1, 4), (2, 1, 2), (4, 1, 1)} <= layouts
    assert all(tp * pp * dp <= 4 for tp, pp, dp in layouts)
    js = json.loads(vtune("estimate", "--model", str(models["llama8b"]), "--num-gpus", "4", "--gpu", "H200",
                          "--max-model-len", "8192", "--json", check_rc=0).stdout)
    assert len(js["layouts"]) == len(layouts)


@pytest.mark.parametrize("args,needle", [
    (["--model", "/nonexistent/model"], "--model /nonexistent/model"),
    (["--gpu", "TPU-v9"], "--gpu TPU-v9"),
    (["--gpu-memory-utilization", "1.2"], "--gpu-memory-utilization"),
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size"),
    (["--num-gpus", "0"], "--num-gpus"),
])
def test_estimate_bad_input_one_line_exit_2(models, args, needle):
    base = [] if "--model" in args else ["--model", str(models["llama8b"])]
    proc = vtune("estimate", *base, *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_estimate_malformed_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    proc = vtune("estimate", "--model", str(tmp_path))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    proc = vtune("estimate", "--model", str(tmp_path))
    assert proc.returncode == 2 and "num_hidden_layers" in proc.stderr


def test_validate_clean_config_exit_0(models):
    proc = vtune("validate", "--gpu", "H100-80GB", "--num-gpus", "1", "--no-vllm-check", "--",
                 str(models["llama8b"]), "--max-model-len", "8192", "--max-num-seqs", "64")
    assert proc.returncode == 0, proc.stdout


def test_validate_users_96_vs_34_warning(models):
    # The users' case: Qwen3-VL-2B, 40,960 tokens, DP=4 on 48 GB GPUs, max-num-seqs 96 against 8.49x per GPU.
    proc = vtune("validate", "--gpu-memory-gib", "47.4", "--num-gpus", "4", "--no-vllm-check", "--json", "--",
                 str(models["qwen3vl"]), "--data-parallel-size", "4", "--max-num-seqs", "96",
                 "--max-model-len", "40960", "--gpu-memory-utilization", "0.95")
    out = json.loads(proc.stdout)
    assert proc.returncode == 1
    codes = [w["code"] for w in out["warnings"]]
    assert "max_num_seqs_above_kv_capacity" in codes
    msg = next(w["message"] for w in out["warnings"] if w["code"] == "max_num_seqs_above_kv_capacity")
    assert "--max-num-seqs 96" in msg
    assert out["estimate"]["max_concurrency"] < 12


def test_validate_tp_on_small_model_and_eager(models):
    proc = vtune("validate", "--gpu", "H100-80GB", "--num-gpus", "4", "--no-vllm-check", "--json", "--",
                 str(models["qwen06"]), "--tensor-parallel-size", "4", "--enforce-eager", "--max-model-len", "8192")
    out = json.loads(proc.stdout)
    codes = {w["code"] for w in out["warnings"]}
    assert {"tensor_parallel_on_small_model", "enforce_eager"} <= codes
    assert proc.returncode == 1
    assert any("--data-parallel-size 4" in r for r in out["recommendations"])


def test_validate_errors_exit_2(models):
    proc = vtune("validate", "--gpu", "H100-80GB", "--num-gpus", "2", "--no-vllm-check", "--json", "--",
                 str(models["llama8b"]), "--tensor-parallel-size", "3")
    out = json.loads(proc.stdout)
    assert proc.returncode == 2 and out["errors"][0]["code"] == "invalid_parallel_layout"
    proc = vtune("validate", "--gpu", "H100-80GB", "--num-gpus", "2", "--no-vllm-check", "--json", "--",
                 str(models["llama8b"]), "--data-parallel-size", "4", "--max-model-len", "4096")
    assert proc.returncode == 2 and json.loads(proc.stdout)["errors"][0]["code"] == "not_enough_gpus"
    proc = vtune("validate", "--gpu", "L4", "--no-vllm-check", "--json", "--",
                 str(models["llama8b"]), "--max-model-len", "131072")
    assert proc.returncode == 2 and json.loads(proc.stdout)["errors"][0]["code"] == "kv_cache_too_small"


def test_validate_unknown_flag_checked_by_vllm_parser(models):
    pytest.importorskip("vllm", reason="vLLM is not installed: the flag check has nothing to parse with")
    proc = vtune("validate", "--gpu", "H100-80GB", "--json", "--", str(models["llama8b"]),
                 "--max-model-len", "8192", "--no-such-flag")
    out = json.loads(proc.stdout)
    assert proc.returncode == 2
    assert out["errors"][0]["code"] == "invalid_flag" and "--no-such-flag" in out["errors"][0]["message"]


def test_public_api_is_importable():
    import vtune

    for name in vtune.__all__:
        assert getattr(vtune, name) is not None
