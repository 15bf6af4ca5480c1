"""The memory model against real vLLM 0.26 engine starts on an H100 (logs kept in the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shapes import LLAMA_8B, QWEN3_0_6B, QWEN3_30B_A3B
from vtune._memory import Calibration, resolve_gpu
from vtune._memory import estimate_memory as _estimate_memory
from vtune._model_shape import shape_from_config
from vtune._serve_config import ServeConfig
from vtune.engines import parse_startup_log

#: The release of every start kept here (the model follows the installed vLLM unless told).
V026 = "0.26.0"


def estimate_memory(*args, **kw):
    """The estimate for vLLM 0.26, the release these starts ran."""
    return _estimate_memory(*args, version=V026, **kw)


LOGS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-logs"
H100 = resolve_gpu("H100-80GB")
CASES = {
    "8b-default": (LLAMA_8B, {}),
    "8b-b2048-s64": (LLAMA_8B, {"gpu_memory_utilization": 0.8, "max_num_batched_tokens": 2048, "max_num_seqs": 64}),
    "small-default": (QWEN3_0_6B, {}),
    "small-b2048-s128": (QWEN3_0_6B, {"max_num_batched_tokens": 2048, "max_num_seqs": 128}),
    "moe-default": (QWEN3_30B_A3B, {}),
}


def _case(name):
    shape, kw = CASES[name]
    cfg = ServeConfig(max_model_len=8192, **{"gpu_memory_utilization": 0.9, **kw})
    observed = parse_startup_log((LOGS / f"h100-vllm0.26-{name}.log").read_text())
    return shape_from_config(shape), cfg, observed


@pytest.mark.parametrize("name", sorted(CASES))
def test_kv_tokens_within_half_a_percent_before_calibration(name):
    shape, cfg, obs = _case(name)
    e = estimate_memory(shape, cfg, H100)
    assert e.weights_gib == pytest.approx(obs.weights_gib, abs=0.02)
    assert e.activation_peak_gib == pytest.approx(obs.activation_peak_gib, abs=0.02)
    assert e.kv_cache_tokens == pytest.approx(obs.kv_cache_tokens, rel=0.005)
    assert e.max_concurrency == pytest.approx(obs.max_concurrency, rel=0.005)


def test_calibration_from_one_start_carries_to_another():
    shape, cfg, obs = _case("moe-default")
    cal = Calibration().observe(estimate_memory(shape, cfg, H100), obs.to_dict())
    after = estimate_memory(shape, cfg, H100, calibration=cal)
    assert after.kv_cache_tokens == pytest.approx(obs.kv_cache_tokens, rel=0.001)
    assert after.non_torch_gib == pytest.approx(obs.non_torch_gib, abs=0.005)


def test_dense_8b_calibrated_on_default_predicts_small_batch_start():
    shape, cfg, obs = _case("8b-default")
    cal = Calibration().observe(estimate_memory(shape, cfg, H100), obs.to_dict())
    shape2, cfg2, obs2 = _case("8b-b2048-s64")
    assert estimate_memory(shape2, cfg2, H100, calibration=cal).kv_cache_tokens == pytest.approx(
        obs2.kv_cache_tokens, rel=0.005)


STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-study-2xh200" / "trials.json"


def _h200_trials():
    import json

    return [t for t in json.loads(STUDY.read_text())["trials"] if t.get("flags")]


@pytest.mark.parametrize("trial", _h200_trials(), ids=lambda t: f"h200-trial{t['n']}")
def test_h200_study_starts_within_half_a_percent(trial):
    from vtune._memory import Gpu
    from vtune._serve_config import parse_serve_args

    obs = parse_startup_log((LOGS / f"h200x2-vllm0.26-study-trial{trial['n']}.log").read_text())
    cfg = parse_serve_args(trial["flags"].split()[2:])
    e = estimate_memory(shape_from_config(LLAMA_8B), cfg, Gpu("H200", 139.80))
    assert e.weights_gib == pytest.approx(obs.weights_gib, abs=0.05)
    assert e.non_torch_gib == pytest.approx(obs.non_torch_gib, abs=0.02)
    assert e.kv_cache_tokens == pytest.approx(obs.kv_cache_tokens, rel=0.005)


QWEN2_5_32B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 5120,
    "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
    "num_key_value_heads": 8, "vocab_size": 152064, "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False, "use_sliding_window": False,
}


@pytest.mark.parametrize(("log", "arch", "kw", "rel"), [
    # 30B+ dense at TP=2 on two H200s
    ("h200-vllm0.26-32b-tp2", QWEN2_5_32B, {"tensor_parallel_size": 2}, 0.005),
    # MLA + MoE (DeepSeek-V2-Lite) on one H200: runs the V2 model runner, so no graph reservation
    ("h200-vllm0.26-mla-default", None, {}, 0.02),
])
def test_h200_large_dense_and_mla_starts(log, arch, kw, rel):
    from tests.shapes import DEEPSEEK_V2_LITE
    from vtune._memory import Gpu, uses_v1_model_runner

    shape = shape_from_config(arch or DEEPSEEK_V2_LITE)
    cfg = ServeConfig(max_model_len=8192, gpu_memory_utilization=0.9, **kw)
    obs = parse_startup_log((LOGS / f"{log}.log").read_text())
    e = estimate_memory(shape, cfg, Gpu("H200", 139.80))
    assert e.weights_gib == pytest.approx(obs.weights_gib, rel=0.01)
    assert e.kv_cache_tokens == pytest.approx(obs.kv_cache_tokens, rel=rel)
    assert not uses_v1_model_runner(shape, V026)  # both logs say "Using V2 Model Runner"
    cal = Calibration().observe(e, obs.to_dict())
    assert estimate_memory(shape, cfg, Gpu("H200", 139.80), calibration=cal).kv_cache_tokens == pytest.approx(
        obs.kv_cache_tokens, rel=0.001)


def test_model_runner_follows_vllm_rule():
    from tests.shapes import DEEPSEEK_V2_LITE
    from vtune._memory import uses_v1_model_runner

    assert uses_v1_model_runner(shape_from_config(QWEN3_30B_A3B), V026)  # MoE outside vLLM's V2 list
    assert not uses_v1_model_runner(shape_from_config(DEEPSEEK_V2_LITE), V026)
    assert not uses_v1_model_runner(shape_from_config(LLAMA_8B), V026)
