"""The move of the weight functions into :mod:`vtune._weights` left every text-only total unchanged.

``BEFORE`` holds (weights GiB per GPU, KV cache tokens) of each shape in ``tests/shapes.py`` at
max-model-len 4096 on an H200, computed with ``_memory.py`` as it was before the move (main at
ef97ef6). Shapes whose numbers changed on purpose are pinned in ``CHANGED`` with the reason
(each derived in ``tests/test_families.py``).
"""

from __future__ import annotations

import pytest

import tests.shapes as shapes
from vtune._memory import GIB, Gpu, estimate_memory
from vtune._model_shape import shape_from_config
from vtune._serve_config import ServeConfig

BEFORE: dict[str, tuple[float, int]] = {
    "GEMMA_2B-tp1-pp1": (4.672, 7146912),
    "GEMMA_2B-tp2-pp1": (2.3556, 7320224),
    "GEMMA_2B-tp1-pp2": (2.8262, 14526928),
    "GEMMA_2B-tp4-pp1": (1.1974, 7402384),
    "LLAMA_70B-tp1-pp1": (131.4478, 0),
    "LLAMA_70B-tp2-pp1": (65.7407, 403984),
    "LLAMA_70B-tp1-pp2": (65.7395, 397168),
    "LLAMA_70B-tp4-pp1": (32.8872, 1245408),
    "LLAMA_8B-tp1-pp1": (14.9888, 919984),
    "LLAMA_8B-tp2-pp1": (7.5103, 1973568),
    "LLAMA_8B-tp1-pp2": (7.51, 1965040),
    "LLAMA_8B-tp4-pp1": (3.771, 4078208),
    "LLAMA_8B_AWQ-tp1-pp1": (5.3657, 998816),
    "LLAMA_8B_AWQ-tp2-pp1": (2.6987, 2052400),
    "LLAMA_8B_AWQ-tp1-pp2": (2.6985, 2043872),
    "LLAMA_8B_AWQ-tp4-pp1": (1.3652, 4157040),
    "LLAMA_8B_FP8-tp1-pp1": (8.4888, 973232),
    "LLAMA_8B_FP8-tp2-pp1": (4.2603, 2026816),
    "LLAMA_8B_FP8-tp1-pp2": (4.26, 2018288),
    "LLAMA_8B_FP8-tp4-pp1": (2.146, 4131456),
    "MISTRAL_7B_V01-tp1-pp1": (13.4966, 934573),
    "MISTRAL_7B_V01-tp2-pp1": (6.7524, 1984249),
    "MISTRAL_7B_V01-tp1-pp2": (6.7522, 1981746),
    "MISTRAL_7B_V01-tp4-pp1": (3.3804, 4081082),
    "MIXTRAL_8X7B-tp1-pp1": (86.9985, 293792),
    "MIXTRAL_8X7B-tp2-pp1": (43.5044, 1340720),
    "MIXTRAL_8X7B-tp1-pp2": (43.5032, 1307536),
    "MIXTRAL_8X7B-tp4-pp1": (21.7573, 3432080),
    "QWEN2_5_7B-tp1-pp1": (14.193, 2117344),
    "QWEN2_5_7B-tp2-pp1": (7.1006, 4526128),
    "QWEN2_5_7B-tp1-pp2": (7.1004, 4506096),
    "QWEN2_5_7B-tp4-pp1": (3.5544, 9337888),
    "QWEN3_0_6B-tp1-pp1": (1.12, 1188432),
    "QWEN3_0_6B-tp2-pp1": (0.5649, 2393184),
    "QWEN3_0_6B-tp1-pp2": (0.7098, 2387456),
    "QWEN3_0_6B-tp4-pp1": (0.2874, 4799760),
    "QWEN3_30B_A3B-tp1-pp1": (56.8803, 744976),
    "QWEN3_30B_A3B-tp2-pp1": (28.4569, 2135440),
    "QWEN3_30B_A3B-tp1-pp2": (28.445, 2121440),
    "QWEN3_30B_A3B-tp4-pp1": (14.2453, 4912992),
}

#: (weights GiB before, bytes added per GPU, why).
CHANGED: dict[str, tuple[float, int, str]] = {
    # Gemma 3 builds a local and a global rotary embedding: a second 131,072 x 128 bf16 cache.
    "GEMMA3_27B-tp1-pp1": (50.3401, 131072 * 128 * 2, "second rotary cache"),
    "GEMMA3_27B-tp2-pp1": (25.1869, 131072 * 128 * 2, "second rotary cache"),
    # Both stages carry both caches now (get_rope is per process); stage 0 is the heaviest.
    "GEMMA3_27B-tp1-pp2": (26.4985, 131072 * 128 * 2, "second rotary cache"),
    # DeepSeek MLA: W_UK_T and W_UV, 16 x 128 x 512 each per layer in bf16, 27 layers (14 on stage 0 at PP=2).
    "DEEPSEEK_V2_LITE-tp1-pp1": (29.2751, 27 * 2 * 16 * 128 * 512 * 2, "MLA absorbed copies"),
    "DEEPSEEK_V2_LITE-tp2-pp1": (14.6803, 27 * 2 * 8 * 128 * 512 * 2, "MLA absorbed copies"),
    "DEEPSEEK_V2_LITE-tp1-pp2": (14.7228, 14 * 2 * 16 * 128 * 512 * 2, "MLA absorbed copies"),
    # gpt-oss: attention biases (qkv 5120 + o 2880, 24 layers) at TP=1; at TP=2 also the expert width per rank
    # padded 1440 -> 1472 (216,580,096 B a layer instead of 211,875,840) and the qkv bias split (2560 + 2880).
    "GPT_OSS_20B-tp1-pp1": (12.8314, 24 * (5120 + 2880) * 2, "attention biases"),
    "GPT_OSS_20B-tp2-pp1": (6.4278, 24 * ((2560 + 2880) * 2 + 216_580_096 - 211_875_840), "mxfp4 padding"),
}


def _estimate(key):
    name, tp, pp = key.split("-")
    cfg = ServeConfig(max_model_len=4096, tensor_parallel_size=int(tp[2:]), pipeline_parallel_size=int(pp[2:]))
    # vLLM 0.26's rules, as when these totals were pinned (from 0.29 MoE models run the V2 runner, which takes no
    # CUDA-graph memory out of the KV cache: the installed 0.32 would move the MoE totals for that reason alone).
    return estimate_memory(shape_from_config(getattr(shapes, name)), cfg, Gpu("H200", 139.8), version="0.26.0")


@pytest.mark.parametrize("key", sorted(BEFORE))
def test_text_only_totals_unchanged(key):
    e = _estimate(key)
    weights, tokens = BEFORE[key]
    assert round(e.weights_gib, 4) == weights
    assert e.kv_cache_tokens == tokens


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_intended_changes_are_exactly_the_derived_tensors(key):
    before, added, _why = CHANGED[key]
    assert _estimate(key).weights_gib == pytest.approx(before + added / GIB, abs=6e-5)
