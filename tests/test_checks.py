"""The one list of pre-launch checks: codes, severities, citations, and agreement with vLLM itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shapes import DEEPSEEK_V2_LITE, LLAMA_8B, LLAMA_70B, QWEN3_0_6B, QWEN3_30B_A3B
from vtune import _checks
from vtune._checks import (
    CHECKS,
    ERROR,
    RULES,
    SEQS_OVER_KV_CONCURRENCY_FACTOR,
    WARNING,
    Finding,
    contradictory_flags,
    first_error,
    precheck,
    vllm_rejects,
)
from vtune._memory import estimate_memory, resolve_gpu
from vtune._model_shape import shape_from_config
from vtune._serve_config import ServeConfig, parse_serve_args

H100 = resolve_gpu("H100-80GB")
L4 = resolve_gpu("L4")
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192,
        "max_position_embeddings": 4096, "torch_dtype": "float32", "head_dim": 64}


def gpu_check(flags: str, config=LLAMA_8B, gpu=H100, **kw):
    return precheck(parse_serve_args(flags.split()), shape=shape_from_config(config), gpu=gpu, device="gpu",
                    argv=flags.split(), **kw)


def cpu_check(flags: str, config=TINY, **kw):
    return precheck(parse_serve_args(flags.split()), shape=shape_from_config(config), gpu=None, device="cpu",
                    argv=flags.split(), **kw)


def codes(findings, severity=None):
    return [f.code for f in findings if severity is None or f.severity == severity]


@pytest.fixture(autouse=True)
def _no_cpu_kv_env(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)


# ------------------------------------------------------------- vLLM's scheduler rules
def test_batched_tokens_below_seqs_is_an_error():
    f = cpu_check("--max-num-seqs 256 --max-num-batched-tokens 128")
    assert codes(f, ERROR) == ["batched_tokens_below_seqs"]
    assert "128" in f[0].message and "256" in f[0].message
    assert f[0].rule.startswith("vllm/config/scheduler.py SchedulerConfig.verify_max_model_len")
    assert f[0].recommendation and "--max-num-batched-tokens 256" in f[0].recommendation


def test_batched_tokens_below_seqs_counts_vllms_defaults():
    # --max-num-seqs 4096 alone: the CPU default of 2048 batched tokens is below it, and vLLM refuses.
    f = cpu_check("--max-num-seqs 4096")
    assert codes(f, ERROR) == ["batched_tokens_below_seqs"] and "vLLM's default here" in f[0].message
    # --max-num-batched-tokens 64 alone: vLLM caps its default max-num-seqs at 64, and starts.
    assert "batched_tokens_below_seqs" not in codes(gpu_check("--max-model-len 4096 --max-num-batched-tokens 64"))
    # On an L4 the default batched tokens are 2048, on an H100 8192.
    assert codes(gpu_check("--max-model-len 4096 --max-num-seqs 4096", gpu=L4), ERROR) == ["batched_tokens_below_seqs"]
    assert "batched_tokens_below_seqs" not in codes(gpu_check("--max-model-len 4096 --max-num-seqs 4096"))


def test_batched_tokens_below_model_len_without_chunked_prefill():
    f = cpu_check("--max-model-len 4096 --max-num-batched-tokens 256 --no-enable-chunked-prefill")
    assert codes(f, ERROR) == ["batched_tokens_below_model_len"]
    assert codes(f, WARNING) == ["chunked_prefill_disabled"]
    assert codes(cpu_check("--max-model-len 4096 --max-num-batched-tokens 256"), ERROR) == []
    # A defaulted batched-tokens value is raised to max-model-len by vLLM: no error.
    assert codes(cpu_check("--max-model-len 4096 --no-enable-chunked-prefill"), ERROR) == []


def test_batched_tokens_above_seqs_times_len_is_a_warning():
    f = cpu_check("--max-model-len 256 --max-num-seqs 2 --max-num-batched-tokens 1024")
    assert codes(f) == ["batched_tokens_above_seqs_times_len"] and f[0].severity == WARNING


# ------------------------------------------------------------------- config bounds
@pytest.mark.parametrize("flags", ["--gpu-memory-utilization 1.5", "--gpu-memory-utilization 0",
                                   "--tensor-parallel-size 0", "--max-num-seqs 0", "--max-num-batched-tokens 0",
                                   "--block-size 0", "--max-model-len 0"])
def test_out_of_range_values_are_findings_not_exceptions(flags):
    f = gpu_check("--max-model-len 4096 " + flags if "max-model-len" not in flags else flags)
    assert codes(f, ERROR) == ["value_out_of_range"], f
    assert flags.split()[0] in f[0].message


def test_max_model_len_auto_fit_is_not_an_error():
    f = gpu_check("--max-model-len -1")
    assert codes(f, ERROR) == [] and "invalid_value" in codes(f, WARNING)


def test_block_size_must_suit_the_kernel(monkeypatch):
    monkeypatch.setattr(_checks, "kernel_block_multiple", lambda device: 32 if device == "cpu" else 16)
    # vllm-cpu 0.32 refused --block-size 16: "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])".
    f = cpu_check("--block-size 16")
    assert codes(f, ERROR) == ["block_size_not_supported"] and "--block-size 32" in (f[0].recommendation or "")
    assert codes(cpu_check("--block-size 64"), ERROR) == []
    assert codes(gpu_check("--max-model-len 4096 --block-size 8"), ERROR) == ["block_size_not_supported"]
    assert codes(gpu_check("--max-model-len 4096 --block-size 32"), ERROR) == []


def test_expert_parallel_needs_experts():
    assert codes(gpu_check("--max-model-len 4096 --enable-expert-parallel"), ERROR) == [
        "expert_parallel_without_experts"]
    assert "expert_parallel_without_experts" not in codes(
        gpu_check("--max-model-len 4096 --enable-expert-parallel", config=QWEN3_30B_A3B))


@pytest.mark.parametrize(("series", "flags", "code"), [
    ("0.26", "--max-num-partial-prefills 4", "partial_prefills_unsupported"),
    ("0.26", "--max-long-partial-prefills=2", "partial_prefills_unsupported"),
    ("0.26", "--max-num-partial-prefills 1", None),
    ("0.32", "--max-num-partial-prefills 1", "partial_prefills_unsupported"),  # the flag is gone in 0.32
    ("0.32", "--long-prefill-token-threshold 8192", "long_prefill_threshold_above_model_len"),
    ("0.32", "--long-prefill-token-threshold 512", None),
    ("0.26", "--long-prefill-token-threshold 8192", None),
])
def test_scheduler_pass_through_flags_by_release(monkeypatch, series, flags, code):
    monkeypatch.setattr(_checks, "target_series", lambda: series)
    f = gpu_check("--max-model-len 4096 --max-num-seqs 64 " + flags)
    assert codes(f, ERROR) == ([code] if code else [])


@pytest.mark.parametrize(("space", "bad"), [("1.5", True), ("lots", True), ("0", True), ("2", False)])
def test_cpu_kv_cache_space_must_be_whole_gib(space, bad):
    f = cpu_check(f"VLLM_CPU_KVCACHE_SPACE={space}")
    if bad:  # (0 GiB also leaves the memory model no KV cache: kv_cache_too_small beside it)
        assert "cpu_kv_cache_space_invalid" in codes(f, ERROR) and "invalid_value" not in codes(f)
    else:
        assert codes(f, ERROR) == []


# ------------------------------------------------------------------ memory model
@pytest.mark.parametrize(("flags", "config", "num_gpus", "code"), [
    ("--tensor-parallel-size 3 --max-model-len 4096", LLAMA_8B, None, "invalid_parallel_layout"),
    ("--data-parallel-size 4 --max-model-len 4096", LLAMA_8B, 2, "not_enough_gpus"),
    ("--max-model-len 200000", LLAMA_8B, None, "max_model_len_above_model"),
    ("--max-model-len 8192", LLAMA_70B, None, "weights_do_not_fit"),
    ("--max-model-len 131072 --tensor-parallel-size 2 --gpu-memory-utilization 0.9", LLAMA_70B, None,
     "kv_cache_too_small"),
])
def test_memory_model_errors_have_their_codes(flags, config, num_gpus, code):
    f = gpu_check(flags, config=config, num_gpus=num_gpus)
    assert codes(f, ERROR)[:1] == [code], f
    assert f[0].rule == RULES[code]


def test_kv_cache_too_small_recommends_a_max_model_len():
    f = gpu_check("--max-model-len 131072", gpu=L4)
    assert codes(f, ERROR) == ["kv_cache_too_small"] and (f[0].recommendation or "").startswith("--max-model-len ")
    assert f[0].basis == "memory"


def test_the_estimate_the_study_passes_is_used():
    shape, cfg = shape_from_config(LLAMA_8B), ServeConfig(max_model_len=8192)
    est = estimate_memory(shape, cfg, H100)
    small = type(est)(**{**est.__dict__, "fits": False, "reason": "calibrated: too small",
                         "reason_code": "kv_cache_too_small"})
    f = precheck(cfg, shape=shape, gpu=H100, device="gpu", estimate=small)
    assert codes(f, ERROR) == ["kv_cache_too_small"] and f[0].message == "calibrated: too small"
    assert codes(precheck(cfg, shape=shape, gpu=H100, device="gpu", estimate=est), ERROR) == []


def test_seqs_far_above_kv_concurrency_warns_and_errs_when_strict():
    base = "--max-model-len 131072 --gpu-memory-utilization 0.95"
    conc = estimate_memory(shape_from_config(LLAMA_8B), parse_serve_args(base.split()), H100).max_concurrency
    at = int(SEQS_OVER_KV_CONCURRENCY_FACTOR * conc)
    assert "max_num_seqs_above_kv_capacity" not in codes(gpu_check(f"{base} --max-num-seqs {at}"))
    over = f"{base} --max-num-seqs {at + 1}"
    assert codes(gpu_check(over)) == ["max_num_seqs_above_kv_capacity"]
    assert gpu_check(over)[0].severity == WARNING
    strict = gpu_check(over, strict_memory=True)
    assert codes(strict, ERROR) == ["max_num_seqs_above_kv_capacity"] and "--strict-memory" in strict[0].message


# ---------------------------------------------------------------------- advice
def test_advice_warnings():
    assert codes(gpu_check("--max-model-len 8192 --max-num-seqs 64 --tensor-parallel-size 4", config=QWEN3_0_6B,
                           num_gpus=4)) == [
        "tensor_parallel_on_small_model"]
    assert codes(gpu_check("--max-model-len 8192 --max-num-seqs 64 --enforce-eager")) == ["enforce_eager"]
    assert codes(cpu_check("--enforce-eager")) == []  # eager is the CPU engine's normal mode
    assert codes(gpu_check("--max-model-len 65536 --max-num-seqs 4", workload_max_len=1024)) == [
        "max_model_len_above_need"]
    assert codes(gpu_check("--max-num-seqs 4", workload_max_len=None)) == ["max_model_len_unset"]
    assert codes(gpu_check("--max-model-len 8192 --max-num-seqs 64")) == []


# ------------------------------------------------------------- contradictory flags
@pytest.mark.parametrize(("argv", "n"), [
    (["--enable-prefix-caching", "--no-enable-prefix-caching"], 1),
    (["--no-enforce-eager", "--max-num-seqs", "8", "--enforce-eager"], 1),
    (["--max-num-seqs", "8", "--max-num-seqs=16"], 1),
    (["-tp", "2", "--tensor-parallel-size", "4"], 1),
    (["--max_num_seqs", "8", "--max-num-seqs", "16"], 1),
    (["--max-num-seqs", "8", "--max-num-seqs", "8"], 0),
    (["--enforce-eager", "/models/x", "--enforce-eager"], 0),  # a bool flag takes no value
    (["--max-num-seqs", "8", "--no-such-thing"], 0),
])
def test_contradictory_flags(argv, n):
    f = contradictory_flags(argv)
    assert codes(f) == ["contradictory_flags"] * n
    assert all(x.severity == WARNING for x in f)


def test_contradiction_message_names_the_winner():
    (f,) = contradictory_flags(["--enable-prefix-caching", "--no-enable-prefix-caching"])
    assert "--enable-prefix-caching and --no-enable-prefix-caching" in f.message
    assert "keeps the last (--no-enable-prefix-caching)" in f.message


def test_precheck_reads_the_raw_argv_or_the_rendered_config():
    flags = "--enable-prefix-caching --no-enable-prefix-caching --max-model-len 4096 --max-num-seqs 64"
    assert codes(gpu_check(flags)) == ["contradictory_flags"]
    # Without argv the rendered config is read: a sampled flag that clashes with a fixed pass-through one.
    cfg = ServeConfig(max_model_len=4096, max_num_seqs=64, extra_args=["--stream-interval", "2",
                                                                       "--stream-interval", "4"])
    assert codes(precheck(cfg, shape=shape_from_config(LLAMA_8B), gpu=H100, device="gpu")) == ["contradictory_flags"]


# ---------------------------------------------------------------- the list itself
_ALL_CASES = [
    lambda: cpu_check("--max-num-seqs 256 --max-num-batched-tokens 128"),
    lambda: cpu_check("--max-model-len 4096 --max-num-batched-tokens 256 --no-enable-chunked-prefill"),
    lambda: cpu_check("--max-model-len 256 --max-num-seqs 2 --max-num-batched-tokens 1024"),
    lambda: gpu_check("--gpu-memory-utilization 1.5 --max-model-len 4096"),
    lambda: gpu_check("--max-model-len 4096 --block-size 8"),
    lambda: gpu_check("--max-model-len 4096 --enable-expert-parallel"),
    lambda: cpu_check("VLLM_CPU_KVCACHE_SPACE=1.5"),
    lambda: gpu_check("--tensor-parallel-size 3 --max-model-len 4096"),
    lambda: gpu_check("--data-parallel-size 4 --max-model-len 4096", num_gpus=2),
    lambda: gpu_check("--max-model-len 200000"),
    lambda: gpu_check("--max-model-len 8192", config=LLAMA_70B),
    lambda: gpu_check("--max-model-len 131072", gpu=L4),
    lambda: gpu_check("--max-model-len 131072 --max-num-seqs 1024"),
    lambda: gpu_check("--max-model-len 8192 --tensor-parallel-size 4", config=QWEN3_0_6B),
    lambda: gpu_check("--max-model-len 8192 --enforce-eager"),
    lambda: gpu_check("--max-model-len 65536", workload_max_len=1024),
    lambda: gpu_check(""),
    lambda: gpu_check("--max-model-len 4096 --enforce-eager --no-enforce-eager"),
    lambda: gpu_check("--max-model-len 4096 --dtype int3"),
    lambda: gpu_check("--max-model-len 4096 --max-num-partial-prefills 2"),
]


def test_every_code_is_produced_and_cited(monkeypatch):
    found = [f for case in _ALL_CASES for f in case()]
    monkeypatch.setattr(_checks, "target_series", lambda: "0.32")
    found += gpu_check("--max-model-len 4096 --long-prefill-token-threshold 8192")
    from tests.test_families import LLAMA_3_2_11B_VISION

    found += gpu_check("--max-model-len 8192", config=LLAMA_3_2_11B_VISION)
    produced = {f.code for f in found}
    assert produced == set(RULES) - {"invalid_flag"}, set(RULES) - produced
    for f in found:
        assert f.severity in (ERROR, WARNING) and f.rule == RULES[f.code] and f.basis in ("vllm", "memory", "vtune")
        assert "\n" not in f.message
    vllm_rules = [RULES[c] for c in produced if c not in ("max_num_seqs_above_kv_capacity", "invalid_value")
                  and not RULES[c].startswith("vtune")]
    assert all("vllm/" in r for r in vllm_rules)


def test_checks_are_one_list_and_clean_configs_have_no_findings():
    assert len(CHECKS) == len(set(CHECKS)) >= 10
    assert gpu_check("--max-model-len 8192 --max-num-seqs 64") == []
    assert cpu_check("--max-model-len 2048 --max-num-seqs 8") == []
    assert gpu_check("--max-model-len 8192 --max-num-seqs 256", config=DEEPSEEK_V2_LITE) == []


def test_first_error_and_finding_dict():
    warn = Finding("enforce_eager", "slow", WARNING)
    err = Finding("batched_tokens_below_seqs", "no")
    assert first_error([warn, err]) is err and first_error([warn]) is None
    assert err.is_error and not warn.is_error
    assert set(err.to_dict()) == {"code", "message", "severity", "rule"}


# ------------------------------------------------------- agreement with vLLM itself
_ENGINE_ARGS = r"""
import json, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.usage.usage_lib import UsageContext
out = []
for kw in json.loads(sys.argv[2]):
    try:
        EngineArgs(model=sys.argv[1], **kw).create_engine_config(UsageContext.OPENAI_API_SERVER)
        out.append(None)
    except Exception as exc:
        out.append(type(exc).__name__ + ": " + (str(exc).splitlines() or [""])[0])
print("RESULT " + json.dumps(out))
"""

# (engine args, vtune flags): vLLM's config code refuses these exactly when precheck reports a vLLM-rule error.
_AGREEMENT = [
    ({}, ""),
    ({"max_num_seqs": 256, "max_num_batched_tokens": 128}, "--max-num-seqs 256 --max-num-batched-tokens 128"),
    ({"max_model_len": 4096, "max_num_batched_tokens": 256, "enable_chunked_prefill": False},
     "--max-model-len 4096 --max-num-batched-tokens 256 --no-enable-chunked-prefill"),
    ({"max_model_len": 4096, "enable_chunked_prefill": False}, "--max-model-len 4096 --no-enable-chunked-prefill"),
    ({"max_num_batched_tokens": 64}, "--max-num-batched-tokens 64"),
    ({"max_num_seqs": 4096}, "--max-num-seqs 4096"),
    ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization 1.5"),
    ({"tensor_parallel_size": 3}, "--tensor-parallel-size 3"),
    ({"max_model_len": 9000}, "--max-model-len 9000"),
    ({"enable_expert_parallel": True}, "--enable-expert-parallel"),
]


def test_precheck_errors_exactly_where_vllms_config_code_refuses():
    pytest.importorskip("vllm", reason="vLLM is not installed: nothing to agree with")
    import os

    from vtune._tiny_model import build_tiny_model

    model = build_tiny_model()
    proc = subprocess.run([sys.executable, "-c", _ENGINE_ARGS, str(model), json.dumps([a for a, _ in _AGREEMENT])],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-2000:]
    refused = json.loads(line[7:])
    shape = shape_from_config(json.loads((Path(model) / "config.json").read_text()))
    for (args, flags), vllm_error in zip(_AGREEMENT, refused, strict=True):
        f = precheck(parse_serve_args(flags.split()), shape=shape, gpu=None, device="cpu")
        ours = [x.code for x in f if x.is_error and x.basis == "vllm"]
        assert bool(ours) == bool(vllm_error), (args, ours, vllm_error)


# ------------------------------------------------------------ vLLM's own parser
def test_vllm_rejects_an_unknown_flag_and_keeps_its_noise(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed: the flag check has nothing to parse with")
    log = tmp_path / "vllm-flags.log"
    f = vllm_rejects(parse_serve_args(["/models/x", "--max-num-seqs", "8", "--no-such-flag"]), log_path=log)
    assert f is not None and f.code == "invalid_flag" and f.is_error
    assert "--no-such-flag" in f.message and "vLLM" in f.message
    assert log.is_file()
    assert vllm_rejects(parse_serve_args(["/models/x", "--max-num-seqs", "8", "--enable-prefix-caching"])) is None


def test_an_architecture_vllm_removed_is_an_error_before_any_launch():
    """Llama 3.2 Vision (MllamaForConditionalGeneration): not in vLLM's registry since 0.10.2."""
    from tests.test_families import LLAMA_3_2_11B_VISION

    findings = gpu_check("--max-model-len 8192", config=LLAMA_3_2_11B_VISION)
    assert first_error(findings) is not None and first_error(findings).code == "architecture_removed"
    assert "0.10.2" in first_error(findings).message
    assert "architecture_removed" not in codes(gpu_check("--max-model-len 8192"))
