"""What a vision-language model's encoder takes at startup: vLLM's multimodal profile and encoder cache.

vLLM sizes none of this from the workload. At start it asks the model's processor for the
largest item of each modality (:func:`mm_max_tokens_per_item`: for Qwen3-VL the image
processor's ``size.longest_edge`` pixels, for Gemma 3 ``mm_tokens_per_image`` per crop,
for Mistral 3 / Pixtral the native ``image_size``) and takes the limits of
``--limit-mm-per-prompt`` (999 items of each modality by default), then
(``vllm/multimodal/encoder_budget.py`` ``MultiModalBudget``,
``vllm/v1/core/encoder_cache_manager.py`` ``compute_mm_encoder_budget``; the same from
0.20 to 0.33):

* ``encoder_compute_budget = max(max_num_encoder_input_tokens, max_tokens_per_item)`` and
  ``encoder_cache_size = max(encoder_cache_size, max_tokens_per_item)``, where the
  scheduler sets both inputs to ``max_num_batched_tokens`` (``SchedulerConfig.__post_init__``);
  the encoder budget is their minimum;
* the profiled modality is the one with the most tokens per item; it profiles
  ``max(1, min(budget // tokens_per_item, max_num_seqs x items_per_prompt))`` items, with
  ``items_per_prompt = max(1, min(limit, max_model_len // tokens_per_item))`` (and
  ``max_num_seqs`` capped at ``max_num_batched_tokens // tokens_per_item`` without chunked
  prefill);
* ``gpu_model_runner.py`` ``profile_run`` runs the encoder on that many dummy items of the
  largest size, keeps their outputs in ``self.encoder_cache`` while it runs the decoder's
  dummy batch, and only then clears them: the outputs add to the peak activation that is
  taken out of the KV cache. At serving time the encoder cache is not preallocated; the
  scheduler bounds it to ``encoder_cache_size`` tokens of encoder output.

An encoder output token is ``out_hidden_size`` wide, times ``1 + len(deepstack_visual_indexes)``
for Qwen3-VL (``Qwen3_VisionTransformer.forward`` concatenates the deepstack features).

The encoder's own transient while it runs (:attr:`EncoderProfile.forward_bytes`) is *not*
measured yet: it is estimated as the pixel input plus one block's widest activations over
all patches, and it only matters when it exceeds the decoder's peak plus the held outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vtune._model_shape import ModelShape, VisionShape
from vtune._serve_config import ServeConfig

__all__ = [
    "DEFAULT_MM_LIMIT",
    "EncoderProfile",
    "encoder_cache_bytes",
    "encoder_profile",
    "encoder_profile_for",
    "limit_mm_per_prompt",
    "mm_max_tokens_per_item",
    "multimodal_profile_peak_bytes",
]

#: Items per prompt of each modality when ``--limit-mm-per-prompt`` leaves it out (``MultiModalConfig``).
DEFAULT_MM_LIMIT = 999


@dataclass(frozen=True)
class EncoderProfile:
    """The multimodal part of vLLM's startup profile for one configuration.

    Attributes:
        modality: The modality profiled (the one with the most tokens per item).
        max_tokens_per_item: Encoder output tokens of its largest item.
        encoder_compute_budget: Encoder tokens one step may compute.
        encoder_cache_tokens: Encoder output tokens the cache may hold (``encoder_cache_size``).
        items_per_batch: Dummy items encoded by the profile run.
        output_width: Elements per encoder output token.
        output_bytes: Encoder outputs held during the profile's decoder run, per GPU.
        forward_bytes: Estimated transient of the encoder's own forward pass (not measured).
    """

    modality: str
    max_tokens_per_item: int
    encoder_compute_budget: int
    encoder_cache_tokens: int
    items_per_batch: int
    output_width: int
    output_bytes: int
    forward_bytes: int


def _qwen_grid_tokens(max_pixels: int, v: VisionShape) -> int:
    """Tokens of the image with the most features (``Qwen2VLProcessingInfo.get_image_size_with_most_features``)."""
    unit = v.patch_size * max(1, v.spatial_merge_size)
    max_seq = max_pixels // (unit * unit)
    for seq in range(max_seq, 0, -1):
        # closest_factor_pair: the largest divisor <= sqrt, aspect ratio at most 200.
        d = next(d for d in range(math.isqrt(seq), 0, -1) if seq % d == 0)
        if (seq // d) / d <= 200:
            return seq  # grid (unit*d x unit*seq/d) pixels: seq merged patches, one temporal step
    return 0


def mm_max_tokens_per_item(shape: ModelShape, *, max_model_len: int) -> dict[str, int]:
    """Encoder output tokens of the largest item of each modality, as vLLM's processor info reports them.

    Args:
        shape: The model (its :attr:`ModelShape.vision` carries the processor limits read from the folder).
        max_model_len: The context length (bounds nothing for images; kept for video rules).

    Returns:
        ``{modality: tokens}``; empty for text-only models or towers vtune does not know.
    """
    v = shape.vision
    if v is None:
        return {}
    if v.kind == "qwen3_vl":
        # Images: get_max_image_tokens at longest_edge pixels. Videos (Qwen3VLProcessingInfo.get_max_video_tokens):
        # two frames at longest_edge / temporal_patch_size pixels, i.e. one temporal patch.
        image = _qwen_grid_tokens(v.max_image_pixels, v)
        video = _qwen_grid_tokens(v.max_video_pixels // max(1, v.temporal_patch_size), v) if v.max_video_pixels else 0
        return {"image": image, "video": video} if video else {"image": image}
    if v.kind == "siglip":
        # Gemma3ProcessingInfo.get_num_image_tokens: (crops + 1) x image_seq_length; no pan-and-scan by default.
        return {"image": v.mm_tokens_per_image}
    if v.kind == "pixtral":
        # PixtralHFEncoderInfo: a native-size image, patches merged spatial_merge_size x spatial_merge_size;
        # only the image tokens are embeddings ([IMG_BREAK]/[IMG_END] are not).
        side = -(-v.image_size // (v.patch_size * max(1, v.spatial_merge_size)))
        return {"image": side * side}
    return {}


def _output_width(v: VisionShape) -> int:
    if v.kind == "qwen3_vl":
        return v.out_hidden_size * (1 + v.deepstack_layers)
    return v.out_hidden_size


def _forward_bytes(v: VisionShape, tokens: int, tp: int, dtype_bytes: float) -> int:
    """Estimated transient of one encoder pass over ``tokens`` output tokens (pixels + widest block)."""
    if v.kind == "qwen3_vl":
        patches = tokens * v.spatial_merge_size ** 2
        pixel = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    elif v.kind == "siglip":
        patches = (v.image_size // v.patch_size) ** 2 * max(1, tokens // max(1, v.mm_tokens_per_image))
        pixel = v.in_channels * v.patch_size ** 2
    elif v.kind == "pixtral":
        patches = tokens * max(1, v.spatial_merge_size) ** 2
        pixel = v.in_channels * v.patch_size ** 2
    else:
        return 0
    width = pixel + 3 * v.hidden_size + (3 * v.hidden_size + v.intermediate_size) // tp
    return int(patches * width * dtype_bytes)


def limit_mm_per_prompt(cfg: ServeConfig) -> dict[str, int]:
    """``--limit-mm-per-prompt`` of a configuration (a ``limit_mm_per_prompt`` field, or the extra flags).

    Accepts vLLM's JSON form (``{"image": 2, "video": {"count": 0}}``) and the legacy ``image=2,video=0``.
    Modalities left out get :data:`DEFAULT_MM_LIMIT`.
    """
    raw: Any = getattr(cfg, "limit_mm_per_prompt", None)
    args = list(cfg.extra_args)
    for i, tok in enumerate(args):
        if tok.startswith("--limit-mm-per-prompt"):
            raw = tok.split("=", 1)[1] if "=" in tok else (args[i + 1] if i + 1 < len(args) else None)
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
    out: dict[str, int] = {}
    if isinstance(raw, Mapping):
        for k, value in raw.items():
            count = value.get("count", DEFAULT_MM_LIMIT) if isinstance(value, Mapping) else value
            try:
                out[str(k)] = int(count)
            except (TypeError, ValueError):
                continue
    return out


def encoder_profile(
    shape: ModelShape,
    *,
    max_model_len: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    limits: Mapping[str, int] | None = None,
    enable_chunked_prefill: bool = True,
    tp: int = 1,
    dtype_bytes: float = 2.0,
) -> EncoderProfile | None:
    """vLLM's encoder budget and profile-run items for a VLM, or None for text-only models.

    Args:
        shape: The model.
        max_model_len: ``--max-model-len``.
        max_num_batched_tokens: ``--max-num-batched-tokens`` (resolved).
        max_num_seqs: ``--max-num-seqs`` (resolved).
        limits: ``--limit-mm-per-prompt`` counts (:func:`limit_mm_per_prompt`).
        enable_chunked_prefill: Whether chunked prefill is on (vLLM's default on V1).
        tp: Tensor-parallel size (every rank runs the encoder on the whole batch).
        dtype_bytes: Bytes per element of the model dtype.
    """
    v = shape.vision
    limits = dict(limits or {})
    per_item = {m: t for m, t in mm_max_tokens_per_item(shape, max_model_len=max_model_len).items()
                if limits.get(m, DEFAULT_MM_LIMIT) > 0 and t > 0}
    if v is None or not per_item:
        return None
    max_tokens = max(per_item.values())
    compute_budget = max(max_num_batched_tokens, max_tokens)
    cache_tokens = max(max_num_batched_tokens, max_tokens)
    budget = min(compute_budget, cache_tokens)
    modality, tokens = max(per_item.items(), key=lambda kv: (kv[1], kv[0]))
    per_prompt = max(1, min(limits.get(modality, DEFAULT_MM_LIMIT), max_model_len // tokens))
    reqs = max_num_seqs if enable_chunked_prefill else min(max_num_seqs, max_num_batched_tokens // tokens)
    items = max(1, min(budget // tokens, reqs * per_prompt))
    width = _output_width(v)
    return EncoderProfile(
        modality=modality,
        max_tokens_per_item=tokens,
        encoder_compute_budget=compute_budget,
        encoder_cache_tokens=cache_tokens,
        items_per_batch=items,
        output_width=width,
        output_bytes=int(items * tokens * width * dtype_bytes),
        forward_bytes=_forward_bytes(v, items * tokens, tp, dtype_bytes),
    )


def encoder_profile_for(
    shape: ModelShape, cfg: ServeConfig, *, max_model_len: int, max_num_batched_tokens: int, max_num_seqs: int,
    tp: int = 1, dtype_bytes: float = 2.0,
) -> EncoderProfile | None:
    """:func:`encoder_profile` with the flags of a configuration.

    ``--limit-mm-per-prompt`` and ``--enable-chunked-prefill`` as given; ``--skip-mm-profiling``
    (``MultiModalConfig.skip_mm_profiling``) turns the encoder profile off: None.
    """
    if any(a == "--skip-mm-profiling" or a.startswith("--skip-mm-profiling=") and a.split("=", 1)[1].lower()
           in ("1", "true") for a in cfg.extra_args):
        return None
    return encoder_profile(shape, max_model_len=max_model_len, max_num_batched_tokens=max_num_batched_tokens,
                           max_num_seqs=max_num_seqs, limits=limit_mm_per_prompt(cfg), tp=tp,
                           enable_chunked_prefill=cfg.enable_chunked_prefill is not False, dtype_bytes=dtype_bytes)


def encoder_cache_bytes(profile: EncoderProfile | None, dtype_bytes: float = 2.0) -> int:
    """The most encoder output the serving-time cache may hold (``encoder_cache_size`` tokens), per GPU."""
    if profile is None:
        return 0
    return int(profile.encoder_cache_tokens * profile.output_width * dtype_bytes)


def multimodal_profile_peak_bytes(profile: EncoderProfile | None, text_peak_bytes: float) -> float:
    """The profile run's peak activation with the encoder.

    The larger of the encoder's own pass and the decoder's peak plus the encoder outputs it holds meanwhile.
    """
    if profile is None:
        return text_peak_bytes
    return max(text_peak_bytes + profile.output_bytes, float(profile.forward_bytes))
