"""The memory model family by family, each number derived by hand from the family's vLLM 0.26.0 implementation.

Every config.json below is written from the published model it names (no hub access); the
arithmetic is in each test. Files cited are under ``vllm/model_executor/`` of vLLM 0.26.0.
"""

from __future__ import annotations

import json

import pytest

from tests.shapes import DEEPSEEK_V2_LITE, GPT_OSS_20B, LLAMA_8B, QWEN3_0_6B, QWEN3_VL_2B, write_model
from vtune._memory import GIB, Gpu, _per_layer_token_bytes, _resolve, estimate_memory, kv_capacity, pp_partition
from vtune._model_shape import load_model_shape, shape_from_config, vllm_refuses
from vtune._multimodal_memory import (
    encoder_cache_bytes,
    encoder_profile,
    limit_mm_per_prompt,
    mm_max_tokens_per_item,
    multimodal_profile_peak_bytes,
)
from vtune._serve_config import ServeConfig
from vtune._weights import linear_tensors, parameter_count, stage_tensors, stage_weight_bytes, vision_tensors

H200 = Gpu("H200", 139.80)


def _r(shape, **kw):
    return _resolve(shape, ServeConfig(max_model_len=4096, **kw), H200, "gpu")


def _bytes(tensors, prefix):
    return sum(t.nbytes for t in tensors if t.name.startswith(prefix))


# ------------------------------------------------------------------------ Qwen3-VL
def test_qwen3_vl_2b_weights_from_its_tensors():
    """Qwen3-VL-2B (the seeds' model, /work/shared/gpu/make_vl_model.py; Qwen/Qwen3-VL-2B-Instruct).

    models/qwen3_vl.py ``Qwen3_VisionTransformer`` (h=1024, I=4096, 24 blocks, patch 16, t=2, merge 2):
    patch_embed Conv3d 1024x3x2x16x16 + bias = 1,573,888; pos_embed 2304 x 1024 = 2,359,296;
    a block: norm1/norm2 LayerNorm 4 x 1024, qkv 1024x3072+3072, proj 1024x1024+1024, fc1 1024x4096+4096,
    fc2 4096x1024+1024 = 12,596,224 (x 24 = 302,309,376); merger: norm 2 x 1024, fc1 4096x4096+4096,
    fc2 4096x2048+2048 = 25,174,016; three deepstack mergers with use_postshuffle_norm (norm 2 x 4096) =
    3 x 25,180,160. Vision: 406,957,056.
    Text (models/qwen3.py): embedding 151,936 (a multiple of 64) x 2048 = 311,164,928, tied; a layer:
    qkv (16 + 2 x 8) x 128 x 2048, o 2048 x 2048, q/k norms 2 x 128, gate_up 2 x 6144 x 2048,
    down 6144 x 2048, 2 norms = 50,336,000 (x 28); final norm 2048.
    Rotary (MRotaryEmbedding) cache: 262,144 x 128 buffer. Qwen3VLForConditionalGeneration also allocates
    ``deepstack_input_embeds``: 3 zeros buffers of (max_num_batched_tokens = 8192 here) x 2048.
    """
    shape = shape_from_config(QWEN3_VL_2B)
    assert shape.vision_params == 406_957_056
    assert parameter_count(shape) == 311_164_928 + 28 * 50_336_000 + 2048 + 406_957_056 == 2_127_532_032
    e = estimate_memory(shape, ServeConfig(max_model_len=40960), H200)
    assert e.max_num_batched_tokens == 8192
    assert e.weights_gib * GIB == pytest.approx((2_127_532_032 + 262_144 * 128 + 3 * 8192 * 2048) * 2, abs=1)


def test_vision_tower_not_built_when_its_modalities_are_off():
    """models/interfaces.py _mark_tower_model: every tower modality at --limit-mm-per-prompt 0 ->
    StageMissingLayer, no tower weights (the deepstack buffers are still allocated); the tower is
    built on every pipeline stage (qwen3_vl.py builds ``self.visual`` outside any is_first_rank)."""
    shape = shape_from_config(QWEN3_VL_2B)
    base = ServeConfig(max_model_len=40960)
    off = ServeConfig(max_model_len=40960, extra_args=["--limit-mm-per-prompt", '{"image": 0, "video": 0}'])
    images_only = ServeConfig(max_model_len=40960, extra_args=["--limit-mm-per-prompt", '{"video": 0}'])
    full = estimate_memory(shape, base, H200).weights_gib
    assert full - estimate_memory(shape, off, H200).weights_gib == pytest.approx(406_957_056 * 2 / GIB)
    assert estimate_memory(shape, images_only, H200).weights_gib == full
    r = _r(shape, pipeline_parallel_size=2)
    assert _bytes(stage_tensors(shape, r, 1, pp_partition(28, 2)[1]), "visual") > 0


def test_qwen3_vl_vision_under_tp_keeps_norms_and_embeddings_whole():
    """ViT linears split over TP (mm_encoder_tp_mode="weights"); conv, pos_embed, LayerNorms and
    row-parallel biases stay whole: at TP=2 one rank holds more than half the tower."""
    v = shape_from_config(QWEN3_VL_2B).vision
    assert v is not None
    one = sum(t.nbytes for t in vision_tensors(v, 1, 2.0))
    two = sum(t.nbytes for t in vision_tensors(v, 2, 2.0))
    whole = (1_573_888 + 2_359_296 + 24 * 4 * 1024 + 2 * 1024 + 3 * 2 * 4096) * 2  # conv, pos, norms
    row_bias = (24 * (1024 + 1024) + 4 * 2048) * 2  # attn.proj, fc2, mergers' fc2 biases
    assert two == (one - whole - row_bias) / 2 + whole + row_bias


def test_qwen3_vl_encoder_budget_from_the_processor(tmp_path):
    """multimodal/encoder_budget.py + v1/core/encoder_cache_manager.py at vLLM's defaults.

    Image processor longest_edge 16,777,216 px, unit 16 x 2 = 32 px: 16,384 merged patches, a
    128 x 128 grid (closest_factor_pair) -> 16,384 tokens per image. Video: 25,165,824 / 2 px ->
    12,288 tokens. Budget = max(8192 batched tokens, 16,384) = 16,384 -> 1 image item; each token
    2048 x (1 + 3 deepstack) wide: 16,384 x 8192 x 2 B = 0.25 GiB held during the profile run.
    """
    folder = write_model(tmp_path, "vl", QWEN3_VL_2B)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
         "size": {"shortest_edge": 65536, "longest_edge": 16777216}}))
    shape = load_model_shape(folder)
    assert mm_max_tokens_per_item(shape, max_model_len=40960) == {"image": 16384, "video": 12288}
    p = encoder_profile(shape, max_model_len=40960, max_num_batched_tokens=8192, max_num_seqs=1024)
    assert p is not None and (p.modality, p.items_per_batch, p.encoder_cache_tokens) == ("image", 1, 16384)
    assert p.output_bytes == 16384 * 8192 * 2 == GIB // 4
    assert encoder_cache_bytes(p) == 16384 * 8192 * 2
    # Images off: the video item (12,288 tokens) is profiled; budget max(8192, 12288).
    p = encoder_profile(shape, max_model_len=40960, max_num_batched_tokens=8192, max_num_seqs=1024,
                        limits={"image": 0})
    assert p is not None and (p.modality, p.items_per_batch, p.output_bytes) == ("video", 1, 12288 * 8192 * 2)
    # 65,536 batched tokens: 4 images fit the budget (2 per 40,960-token prompt, 1024 seqs).
    p = encoder_profile(shape, max_model_len=40960, max_num_batched_tokens=65536, max_num_seqs=1024)
    assert p is not None and p.items_per_batch == 4 and p.output_bytes == GIB
    # A smaller processor limit: 1,003,520 px = 980 merged patches, grid 28 x 35.
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"longest_edge": 1003520}}))
    assert mm_max_tokens_per_item(load_model_shape(folder), max_model_len=40960)["image"] == 980


def test_encoder_outputs_join_the_activation_peak():
    shape = shape_from_config(QWEN3_VL_2B)
    text_only = shape_from_config({k: v for k, v in QWEN3_VL_2B.items() if k != "vision_config"})
    cfg = ServeConfig(max_model_len=40960, gpu_memory_utilization=0.95)
    with_vision, without = estimate_memory(shape, cfg, H200), estimate_memory(text_only, cfg, H200)
    assert with_vision.encoder_cache_gib == 0.25 and without.encoder_cache_gib == 0.0
    p = encoder_profile(shape, max_model_len=40960, max_num_batched_tokens=with_vision.max_num_batched_tokens,
                        max_num_seqs=with_vision.max_num_seqs)
    assert with_vision.raw_activation_peak_gib * GIB == pytest.approx(
        multimodal_profile_peak_bytes(p, without.raw_activation_peak_gib * GIB))
    assert with_vision.activation_peak_gib >= without.activation_peak_gib + 0.25
    assert any("multimodal profile" in n for n in with_vision.notes)


def test_limit_mm_per_prompt_flag_forms():
    assert limit_mm_per_prompt(ServeConfig(extra_args=["--limit-mm-per-prompt", '{"image": 2, "video": 0}'])) == {
        "image": 2, "video": 0}
    assert limit_mm_per_prompt(ServeConfig(extra_args=['--limit-mm-per-prompt={"image": {"count": 3}}'])) == {
        "image": 3}
    assert limit_mm_per_prompt(ServeConfig(extra_args=["--limit-mm-per-prompt", "image=1,video=0"])) == {
        "image": 1, "video": 0}
    shape = shape_from_config(QWEN3_VL_2B)
    cfg = ServeConfig(max_model_len=40960, extra_args=["--limit-mm-per-prompt", '{"image": 0, "video": 0}'])
    assert estimate_memory(shape, cfg, H200).encoder_cache_gib == 0.0
    skip = ServeConfig(max_model_len=40960, extra_args=["--skip-mm-profiling"])
    assert estimate_memory(shape, skip, H200).encoder_cache_gib == 0.0


QWEN2_5_VL_7B = {
    # Qwen/Qwen2.5-VL-7B-Instruct config.json (text part as Qwen2.5-7B).
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "max_position_embeddings": 128000, "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2,
                      "model_type": "qwen2_5_vl"},
}


def test_qwen2_5_vl_tower():
    """models/qwen2_5_vl.py: Conv3d 1280 x 3 x 2 x 14 x 14 (no bias); a block: two RMSNorms 2 x 1280, qkv
    1280 x 3840 + 3840, proj 1280^2 + 1280, gate_up 1280 x 6840 + 6840, down 3420 x 1280 + 1280 =
    19,702,200 (x 32); merger: ln_q 1280, 5120 x 5120 + 5120, 5120 x 3584 + 3584 = 44,574,464.
    676,550,144 ("675M ViT"); the old formula gave 676,531,584."""
    shape = shape_from_config(QWEN2_5_VL_7B)
    block = 2 * 1280 + 1280 * 3840 + 3840 + 1280 * 1280 + 1280 + 1280 * 6840 + 6840 + 3420 * 1280 + 1280
    assert block == 19_702_200
    merger = 1280 + 5120 * 5120 + 5120 + 5120 * 3584 + 3584
    assert shape.vision_params == 1280 * 3 * 2 * 14 * 14 + 32 * block + merger == 676_550_144
    assert shape.vision is not None and shape.vision.kind == "qwen2_5_vl"


# ------------------------------------------------------------------- Qwen3 small, tied
def test_qwen3_0_6b_tied_embedding_once_and_copied_under_pp():
    """Qwen/Qwen3-0.6B (models/qwen3.py): embedding 151,936 x 1024 = 155,582,464; a layer
    qkv (16 + 2 x 8) x 128 x 1024 + o 2048 x 1024 + q/k norms 256 + gate_up 2 x 3072 x 1024 + down
    3072 x 1024 + 2 x 1024 = 15,730,944 (x 28); final norm 1024: 596,049,920 parameters, the LM head
    tied. Under PP=2 the last stage loads its own lm_head (ParallelLMHead, tie by weight loading)."""
    shape = shape_from_config(QWEN3_0_6B)
    assert parameter_count(shape) == 155_582_464 + 28 * 15_730_944 + 1024 == 596_049_920
    r = _r(shape, pipeline_parallel_size=2)
    first, last = pp_partition(28, 2)
    stage1 = stage_tensors(shape, r, 1, last)
    assert _bytes(stage1, "lm_head") == 155_582_464 * 2
    assert _bytes(stage_tensors(shape, r, 0, first), "lm_head") == 0
    # Both stages build their own rotary cache (get_rope is per process): 40,960 x 128.
    assert _bytes(stage1, "rotary_emb") == _bytes(stage_tensors(shape, r, 0, first), "rotary_emb") == 40960 * 128 * 2


# ------------------------------------------------------------------------- Gemma 3
GEMMA3_4B_IT = {
    # google/gemma-3-4b-it config.json: the text_config leaves vocab_size, heads and
    # max_position_embeddings to Gemma3TextConfig's defaults; the vision_config to SiglipVisionConfig's.
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "torch_dtype": "bfloat16",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
}


def test_gemma3_4b_weights_vision_and_two_rotary_caches():
    """models/gemma3.py + gemma3_mm.py + siglip.py.

    Text: vocab 262,208 (= 4097 x 64) x 2560 = 671,252,480, tied; a layer: qkv (8 + 2 x 4) x 256 x 2560 =
    10,485,760, o 2048 x 2560, q/k norms 2 x 256, gate_up 2 x 10240 x 2560, down, four norms 4 x 2560 =
    94,382,592 (x 34); final norm. SigLIP: patch conv 1152 x 3 x 14 x 14 + bias, 4096 positions x 1152,
    a layer 4 x 1152 (two LayerNorms) + 1152 x 3456 + 3456 + 1152^2 + 1152 + 1152 x 4304 + 4304 +
    4304 x 1152 + 1152 = 15,239,504 (x 27), post LayerNorm 2 x 1152; projector: mm_input_projection_weight
    1152 x 2560 and mm_soft_emb_norm 1152. Rotary: a local and a global cache, 131,072 x 256 each.
    """
    shape = shape_from_config(GEMMA3_4B_IT)
    assert (shape.vocab_size, shape.num_heads, shape.num_kv_heads, shape.head_dim) == (262208, 8, 4, 256)
    vision = 1152 * 3 * 14 * 14 + 1152 + 4096 * 1152 + 27 * 15_239_504 + 2 * 1152 + 1152 * 2560 + 1152
    assert shape.vision_params == vision == 419_816_304
    text = 671_252_480 + 34 * 94_382_592 + 2560
    assert parameter_count(shape) == text + vision
    e = estimate_memory(shape, ServeConfig(max_model_len=8192), H200)
    assert e.weights_gib * GIB == pytest.approx((text + vision + 2 * 131072 * 256) * 2, abs=1)


def test_gemma3_4b_sliding_groups_and_encoder():
    """34 layers, full where (i + 1) % 6 == 0: 5 full, 29 sliding (window 1024). Groups of 5: 1 full group
    and ceil(29 / 5) = 6 sliding ones (1 padding layer). Page per layer: 2 x 4 heads x 256 x 2 B x 16 =
    65,536 B. One request of 32,768 tokens at 2048 batched tokens (two in flight, async scheduling):
    full 2048 blocks, sliding cdiv(1023 + 4096, 16) + 1 = 321 each -> 2048 + 6 x 321 = 3974 blocks.
    Encoder (gemma3_mm.py): 256 tokens an image, budget max(2048, 256) -> 8 images of 2560-wide output.
    """
    shape = shape_from_config(GEMMA3_4B_IT)
    cfg = ServeConfig(max_model_len=32768, max_num_batched_tokens=2048)
    blocks, tokens, conc = kv_capacity(shape, cfg, 10 * GIB, gpu=H200)
    assert blocks == 10 * GIB // 65536 // 5 == 32768
    assert conc == pytest.approx(32768 / 3974)
    e = estimate_memory(shape, cfg, H200)
    assert (e.kv_groups, e.padding_layers) == (7, 1)
    p = encoder_profile(shape, max_model_len=32768, max_num_batched_tokens=2048, max_num_seqs=1024)
    assert p is not None and (p.max_tokens_per_item, p.items_per_batch) == (256, 8)
    assert p.output_bytes == 8 * 256 * 2560 * 2


def test_gemma3_text_defaults_were_missing_before():
    # Before: a Gemma 3 config.json without vocab_size (all of Google's multimodal ones) was refused.
    assert shape_from_config(GEMMA3_4B_IT).max_position_embeddings == 131072


# ------------------------------------------------------------------------- Gemma 2
GEMMA2_9B = {
    # google/gemma-2-9b config.json (no layer_types: Gemma2Config fills them, sliding on even layers).
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 3584,
    "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 256,
    "torch_dtype": "float32",
}


def test_gemma2_9b_weights_and_two_equal_kv_groups():
    """models/gemma2.py: vocab 256,000 x 3584 = 917,504,000 tied (Gemma2Config default); a layer qkv
    (16 + 2 x 8) x 256 x 3584 + o 4096 x 3584 + gate_up 2 x 14336 x 3584 + down + four norms = 198,195,200
    (x 42); final norm: 9,241,705,984. Soft-capping is a kernel argument (no memory). The fp32 checkpoint
    loads as bf16 (auto dtype). Layers: is_sliding = layer_types[i] == "sliding_attention": 21 + 21, two
    groups of 21, no padding; one rotary cache 8192 x 256."""
    shape = shape_from_config(GEMMA2_9B)
    assert shape.tie_word_embeddings
    assert parameter_count(shape) == 917_504_000 + 42 * 198_195_200 + 3584 == 9_241_705_984
    e = estimate_memory(shape, ServeConfig(max_model_len=8192), H200)
    assert e.weights_gib * GIB == pytest.approx((9_241_705_984 + 8192 * 256) * 2, abs=1)
    assert (e.kv_groups, e.padding_layers, e.sliding_window_credited) == (2, 0, True)


# ------------------------------------------------------------------------- gpt-oss
def test_gpt_oss_20b_mxfp4_experts_by_packed_shape():
    """openai/gpt-oss-20b, layers/quantization/mxfp4.py GptOssMxfp4MoEMethod.create_weights at TP=1:
    w13 32 x 5760 x 1440 uint8 + scales 32 x 5760 x 90, w2 32 x 2880 x 1440 + scales 32 x 2880 x 90,
    bf16 biases 32 x (5760 + 2880) x 2 B: 423,567,360 B a layer. models/gpt_oss.py: qkv 5120 x 2880 and o
    2880 x 4096 with biases, sinks 64, router 32 x 2880 + 32 bias, 2 norms: 53,296,192 B a layer (bf16).
    Embedding and untied LM head 201,088 x 2880 x 2 B each, final norm, rotary 131,072 x 64."""
    shape = shape_from_config(GPT_OSS_20B)
    r = _r(shape)
    layer = [t for t in stage_tensors(shape, r, 0, range(1)) if t.name.startswith("layers.")]
    assert _bytes(layer, "layers.N.mlp.experts") == 423_567_360
    assert sum(t.nbytes for t in layer) - 423_567_360 == 53_296_192
    total = 24 * (423_567_360 + 53_296_192) + 2 * 201_088 * 2880 * 2 + 2880 * 2 + 131072 * 64 * 2
    e = estimate_memory(shape, ServeConfig(max_model_len=8192), H200)
    assert e.weights_gib * GIB == pytest.approx(total, abs=1)  # 12.83 GiB
    assert parameter_count(shape) == 20_914_757_184  # "21B parameters"


def test_gpt_oss_mxfp4_width_padded_to_64_per_rank():
    """At TP=2 an expert's 1440 columns per rank round up to 1472 (Triton backend on Hopper:
    mxfp4_round_up_hidden_size_and_intermediate_size rounds intermediate to 64):
    w13 32 x 2944 x 1440 + 32 x 2944 x 90, w2 32 x 2880 x 736 + 32 x 2880 x 46, biases 32 x (2944 + 2880) x 2."""
    shape = shape_from_config(GPT_OSS_20B)
    layer = stage_tensors(shape, _r(shape, tensor_parallel_size=2), 0, range(1))
    expected = 32 * 2944 * 1440 + 32 * 2944 * 90 + 32 * 2880 * 736 + 32 * 2880 * 46 + 32 * (2944 + 2880) * 2
    assert _bytes(layer, "layers.N.mlp.experts") == expected == 216_580_096  # unpadded (1440 columns): 211,875,840


def test_gpt_oss_sliding_layers_by_index_and_sinks_add_no_kv():
    """gpt_oss.py: sliding_window only on layer_idx % 2 == 0, whatever layer_types says; sinks are a
    parameter (heads / tp values), not KV: 2 x 8 x 64 x 2 B = 2048 B per token and layer."""
    no_types = {k: v for k, v in GPT_OSS_20B.items() if k != "layer_types"}
    shape = shape_from_config(no_types)
    assert shape.layer_kinds == tuple("sliding" if i % 2 == 0 else "full" for i in range(24))
    assert _per_layer_token_bytes(shape, _r(shape)) == 2048
    e = estimate_memory(shape, ServeConfig(max_model_len=8192), H200)
    assert (e.kv_groups, e.padding_layers) == (2, 0)
    sinks = [t for t in stage_tensors(shape, _r(shape, tensor_parallel_size=2), 0, range(1)) if "sinks" in t.name]
    assert [t.shape for t in sinks] == [(32,)]


# ------------------------------------------------------------------- Llama 3.2 Vision
LLAMA_3_2_11B_VISION = {
    # meta-llama/Llama-3.2-11B-Vision-Instruct config.json (text part).
    "architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "torch_dtype": "bfloat16",
    "text_config": {"model_type": "mllama_text_model", "hidden_size": 4096, "intermediate_size": 14336,
                    "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "vocab_size": 128256, "max_position_embeddings": 131072,
                    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38]},
}


def test_llama_3_2_vision_is_refused_by_vllm():
    """models/registry.py _PREVIOUSLY_SUPPORTED_MODELS: "MllamaForConditionalGeneration": "0.10.2" in 0.26.0
    through 0.33.0 (no mllama.py ships): vLLM refuses it. Its 8 cross-attention layers are parsed as
    ``cross`` (CrossAttentionSpec: cdiv(max_num_encoder_input_tokens, block) blocks a request)."""
    shape = shape_from_config(LLAMA_3_2_11B_VISION)
    assert "0.10.2" in (vllm_refuses(shape) or "")
    assert vllm_refuses(shape_from_config(LLAMA_8B)) is None
    assert [i for i, k in enumerate(shape.layer_kinds) if k == "cross"] == [3, 8, 13, 18, 23, 28, 33, 38]
    cfg = ServeConfig(max_model_len=8192, max_num_batched_tokens=2048)
    _, _, conc = kv_capacity(shape, cfg, 10 * GIB, gpu=H200)
    # Groups of 8 (32 self / 8 cross -> 4 self groups + 1 cross): a request needs 4 x 512 + 2048 / 16 blocks.
    blocks = 10 * GIB // (2 * 8 * 128 * 2 * 16) // 8
    assert conc == pytest.approx(blocks / (4 * 512 + 128))


# ---------------------------------------------------------------- Mistral 3.1 / Pixtral
MISTRAL_SMALL_3_1 = {
    # mistralai/Mistral-Small-3.1-24B-Instruct-2503 config.json.
    "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "torch_dtype": "bfloat16",
    "spatial_merge_size": 2, "multimodal_projector_bias": False, "projector_hidden_act": "gelu",
    "text_config": {"head_dim": 128, "hidden_size": 5120, "intermediate_size": 32768,
                    "max_position_embeddings": 131072, "model_type": "mistral", "num_attention_heads": 32,
                    "num_hidden_layers": 40, "num_key_value_heads": 8, "vocab_size": 131072, "sliding_window": None},
    "vision_config": {"head_dim": 64, "hidden_act": "silu", "hidden_size": 1024, "image_size": 1540,
                      "intermediate_size": 4096, "model_type": "pixtral", "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14},
}


def test_mistral3_pixtral_tower_and_projector():
    """models/pixtral.py PixtralHFVisionModel: patch_conv 1024 x 3 x 14 x 14 (no bias), ln_pre RMSNorm; a
    layer: attention_norm + ffn_norm 2 x 1024, qkv 1024 x 3072, o 1024 x 1024, gated gate_up 2 x 4096 x 1024,
    down 4096 x 1024 = 16,779,264 (x 24), no learned positions (2-D RoPE). models/mistral3.py projector: norm
    1024, patch_merger 1024 x 4096, linear_1 1024 x 5120, linear_2 5120 x 5120 (no biases): 438,958,080.
    Image: 1540 px / (14 x 2) = 55 per side -> 3025 embedding tokens ([IMG_BREAK]s are not embeddings)."""
    shape = shape_from_config(MISTRAL_SMALL_3_1)
    assert not shape.tie_word_embeddings
    vision = 602_112 + 1024 + 24 * 16_779_264 + 1024 + 4_194_304 + 5_242_880 + 26_214_400
    assert shape.vision_params == vision == 438_958_080  # the old formula: 447,432,704
    assert mm_max_tokens_per_item(shape, max_model_len=32768) == {"image": 3025}
    p = encoder_profile(shape, max_model_len=32768, max_num_batched_tokens=8192, max_num_seqs=256)
    assert p is not None and p.items_per_batch == 2 and p.output_bytes == 2 * 3025 * 5120 * 2


# ---------------------------------------------------------------------- DeepSeek MLA
def test_deepseek_mla_under_tp_and_pp():
    """deepseek-ai/DeepSeek-V2-Lite, models/deepseek_v2.py + layers/attention/mla_attention.py at TP=2, one
    layer's attention per rank: q_proj 8 x 192 x 2048, kv_a_proj_with_mqa 576 x 2048 (replicated),
    kv_a_layernorm 512, kv_b_proj 8 x 256 x 512, o_proj 2048 x 8 x 128, and the copies
    process_weights_after_loading keeps, W_UK_T 8 x 128 x 512 and W_UV 8 x 512 x 128. KV: one latent
    (512 + 64) x 2 B per token and layer on every rank, whatever TP; PP=2 splits the 27 layers 14 / 13."""
    shape = shape_from_config(DEEPSEEK_V2_LITE)
    r = _r(shape, tensor_parallel_size=2)
    attn = [t for t in stage_tensors(shape, r, 0, range(1)) if ".self_attn." in t.name]
    elems = 8 * 192 * 2048 + 576 * 2048 + 512 + 2048 * 512 + 2048 * 1024 + 2 * 8 * 128 * 512
    assert sum(t.nbytes for t in attn) == elems * 2 == 17_040_384
    assert _per_layer_token_bytes(shape, r) == _per_layer_token_bytes(shape, _r(shape)) == 1152
    assert [len(s) for s in pp_partition(27, 2)] == [14, 13]
    pp2 = estimate_memory(shape, ServeConfig(max_model_len=8192, pipeline_parallel_size=2), H200)
    assert pp2.kv_bytes_per_token == 1152 * 27 // 2
    # The derived copies are not parameters: 15.7B parameters as published.
    assert parameter_count(shape) == pytest.approx(15.7e9, rel=0.005)


# ------------------------------------------------------------- compressed-tensors, fp8
def _ct(weights, acts=None):
    group = {"targets": ["Linear"], "weights": weights}
    if acts is not None:
        group["input_activations"] = acts
    return {**LLAMA_8B, "quantization_config": {"quant_method": "compressed-tensors", "format": "int-quantized",
                                                "config_groups": {"group_0": group}, "ignore": ["lm_head"]}}


def test_compressed_tensors_int8_w8a8_channel_scales():
    """RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8: int8 weights, strategy channel, dynamic per-token
    activations. compressed_tensors_w8a8_int8.py: weight (out, in) int8 + ChannelQuantScaleParameter
    (out, 1) fp32, no input scale. qkv_proj at TP=1: 6144 x 4096 + 6144 x 4 B."""
    shape = shape_from_config(_ct({"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
                                  {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}))
    layer = stage_tensors(shape, _r(shape), 0, range(1))
    assert _bytes(layer, "layers.N.self_attn.qkv_proj") == 6144 * 4096 + 6144 * 4
    assert _bytes(layer, "layers.N.mlp.down_proj") == 4096 * 14336 + 4096 * 4


def test_compressed_tensors_fp8_static_per_tensor():
    """RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8: fp8 weights per tensor, static per-tensor input scales.
    compressed_tensors_w8a8_fp8.py: one fp32 weight scale and one input scale per fused shard (3 for qkv)."""
    shape = shape_from_config(_ct({"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True},
                                  {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}))
    assert shape.quant is not None and shape.quant.static_input
    layer = stage_tensors(shape, _r(shape), 0, range(1))
    assert _bytes(layer, "layers.N.self_attn.qkv_proj") == 6144 * 4096 + 3 * 4 + 3 * 4


def test_compressed_tensors_w4a16_pack_quantized_and_fp8_blocks():
    """w4a16 (RedHatAI/...-quantized.w4a16, group 128): weight_packed (out, in / 8) int32, weight_scale
    (out, in / 128) bf16, weight_shape (2,) int64. fp8 with weight_block_size [128, 128] (fp8.py):
    weight_scale_inv (cdiv(out, 128), cdiv(in, 128)) fp32."""
    w4 = linear_tensors("down", 4096, 14336, dtype_bytes=2, quant=shape_from_config(_ct(
        {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True})).quant)
    assert sum(t.nbytes for t in w4) == 4096 * 14336 // 8 * 4 + 4096 * 112 * 2 + 16
    fp8 = shape_from_config({**LLAMA_8B, "quantization_config": {
        "quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}).quant
    t = linear_tensors("qkv", 6144, 4096, dtype_bytes=2, quant=fp8, shards=3)
    assert sum(x.nbytes for x in t) == 6144 * 4096 + 48 * 32 * 4


def test_stage_weight_bytes_is_the_sum_of_the_table():
    shape = shape_from_config(LLAMA_8B)
    r = _r(shape)
    assert stage_weight_bytes(shape, r, 0, range(32)) == sum(t.nbytes for t in stage_tensors(shape, r, 0, range(32)))
