"""Model architecture read from a Hugging Face ``config.json`` alone.

(One module of about 640 lines: every family's config quirks — defaults ``transformers`` fills in,
layer kinds, MoE, MLA, quantization, vision towers — feed one :class:`ModelShape` and are read together.)

:func:`load_model_shape` turns a model directory (or a ``config.json`` path) into
a :class:`ModelShape`: the numbers the memory model needs (layers, heads, MoE
experts, MLA ranks, per-layer attention kind, weight dtype and quantization,
vision tower size). No weights are read and nothing is downloaded. Defaults that
``transformers`` would fill in (``head_dim = hidden / heads``, Gemma's sliding
pattern, Qwen's ``use_sliding_window``) are applied here explicitly, because
importing ``transformers`` would cost more than the whole estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError

__all__ = [
    "ModelShape",
    "MoeShape",
    "MlaShape",
    "QuantShape",
    "VisionShape",
    "load_model_shape",
    "shape_from_config",
    "vllm_refuses",
]

#: Architectures vLLM removed, with the version that removed them
#: (``vllm/model_executor/models/registry.py`` ``_PREVIOUSLY_SUPPORTED_MODELS``, 0.26.0 to 0.33.0 alike).
#: Llama 3.2 Vision went with the V0 engine: vLLM >= 0.10.2 refuses to start it.
REMOVED_ARCHITECTURES: dict[str, str] = {
    "MllamaForConditionalGeneration": "0.10.2",
    "DonutForConditionalGeneration": "0.10.2",
}

#: Fields ``transformers`` fills in when a config.json leaves them out, for the families whose
#: published configs rely on them (Gemma 3's ``text_config`` and SigLIP's ``vision_config`` omit most).
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    # transformers/models/gemma3/configuration_gemma3.py Gemma3TextConfig
    "gemma3_text": {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "max_position_embeddings": 131072, "sliding_window": 4096, "tie_word_embeddings": True},
}
_VISION_DEFAULTS: dict[str, dict[str, Any]] = {
    # transformers/models/siglip/configuration_siglip.py SiglipVisionConfig
    "siglip_vision_model": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                            "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16},
    # transformers/models/pixtral/configuration_pixtral.py PixtralVisionConfig
    "pixtral": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "num_channels": 3, "image_size": 1024, "patch_size": 16, "head_dim": 64},
}

_DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
}


@dataclass(frozen=True)
class MoeShape:
    """Mixture-of-experts part of a model.

    Attributes:
        num_experts: Routed experts per MoE layer.
        top_k: Experts each token is routed to.
        expert_intermediate_size: FFN width of one routed expert.
        shared_intermediate_size: Total FFN width of the shared expert(s), 0 if none.
        shared_expert_gate: Whether a scalar gate scales the shared expert (Qwen MoE).
        expert_bias: Whether expert projections carry biases (gpt-oss).
        router_bias: Whether the router carries a bias (gpt-oss).
    """

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False
    expert_bias: bool = False
    router_bias: bool = False


@dataclass(frozen=True)
class MlaShape:
    """Multi-head latent attention (DeepSeek V2/V3): one latent KV per token."""

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class QuantShape:
    """Weight quantization of the checkpoint (or requested with ``--quantization``).

    Attributes:
        method: vLLM's name of the method (fp8, awq, gptq, compressed-tensors, mxfp4, ...).
        weight_bits: Bits per quantized weight (8 or 4).
        group_size: Weights sharing one scale (int4 group size, 32 for mxfp4, 0 = per channel).
        experts_only: True when only MoE expert weights are quantized (gpt-oss mxfp4).
        strategy: Scale granularity: ``tensor``, ``channel``, ``group`` or ``block`` ("" = the method's own).
        block_size: ``(rows, cols)`` of one scale for block-quantized fp8 (``weight_block_size``).
        zero_point: Whether packed int4 weights carry zero points (AWQ, asymmetric compressed-tensors).
        static_input: Whether activation scales are stored (static input quantization).
        weight_type: ``int`` or ``float`` (compressed-tensors fp8 vs int8).
    """

    method: str
    weight_bits: int
    group_size: int = 0
    experts_only: bool = False
    strategy: str = ""
    block_size: tuple[int, int] | None = None
    zero_point: bool = False
    static_input: bool = False
    weight_type: str = "int"


@dataclass(frozen=True)
class VisionShape:
    """A VLM's vision tower and projector, as vLLM's implementation builds them.

    Attributes:
        kind: Which implementation: ``qwen3_vl``, ``qwen2_5_vl``, ``siglip`` (Gemma 3),
            ``pixtral`` (Mistral 3.1) or ``generic`` (a ViT counted by the old parameter formula).
        hidden_size: Vision transformer width.
        depth: Vision transformer blocks.
        intermediate_size: MLP width of one block.
        num_heads: Attention heads of one block.
        patch_size: Pixels per patch side.
        in_channels: Image channels.
        temporal_patch_size: Frames per patch (Qwen-VL video), 1 otherwise.
        image_size: Native image side (SigLIP, Pixtral), 0 if not fixed.
        num_position_embeddings: Learned position embeddings (Qwen3-VL), 0 if none.
        spatial_merge_size: Patches merged per side before the projector (Qwen-VL, Mistral 3), 0 if none.
        out_hidden_size: Width the projector writes (the text model's hidden size).
        deepstack_layers: Qwen3-VL deepstack mergers (one per ``deepstack_visual_indexes`` entry).
        projector_bias: Whether the Mistral 3 projector's linears carry biases.
        mm_tokens_per_image: Gemma 3's soft tokens per image crop (256).
        max_image_pixels: ``longest_edge`` of the image processor (Qwen-VL ``preprocessor_config.json``).
        max_video_pixels: ``longest_edge`` of the video processor (Qwen3-VL), 0 if unknown.
        generic_params: Parameters of a ``generic`` tower.
    """

    kind: str
    hidden_size: int
    depth: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    in_channels: int = 3
    temporal_patch_size: int = 1
    image_size: int = 0
    num_position_embeddings: int = 0
    spatial_merge_size: int = 0
    out_hidden_size: int = 0
    deepstack_layers: int = 0
    projector_bias: bool = False
    mm_tokens_per_image: int = 256
    max_image_pixels: int = 0
    max_video_pixels: int = 0
    generic_params: int = 0


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a model.

    Attributes:
        model_type: ``config.json``'s model_type (of the text model for VLMs).
        hidden_size: Residual stream width.
        num_layers: Decoder layers.
        num_heads: Query heads.
        num_kv_heads: KV heads (== num_heads for MHA, 1 for MQA).
        head_dim: Per-head width of q/k/v.
        intermediate_size: Dense FFN width.
        vocab_size: Vocabulary size before vLLM's padding to a multiple of 64.
        tie_word_embeddings: Whether the LM head shares the embedding matrix.
        dtype: Checkpoint dtype name (``torch_dtype``).
        max_position_embeddings: Longest context the model supports (vLLM's default max_model_len).
        layer_kinds: ``"full"`` or ``"sliding"`` for each decoder layer.
        sliding_window: Window of the sliding layers, if any.
        moe_layers: For each layer, whether its FFN is MoE.
        moe: MoE details, if the model has MoE layers.
        mla: MLA details, if the model uses latent attention.
        quant: Checkpoint quantization, if any.
        qkv_bias: Whether q/k/v projections carry biases (Qwen2).
        qk_norm: Whether q and k have per-head RMSNorm (Qwen3).
        vision_params: Parameters of the vision tower and projector (VLMs), else 0
            (summed from :func:`vtune._weights.vision_tensors`).
        architectures: ``config.json``'s architectures list.
        vision: The vision tower's shape (VLMs), else None.
        o_bias: Whether the attention output projection carries a bias (gpt-oss).
        cross_attention_layers: Decoder layers that cross-attend to the image (Llama 3.2 Vision).
    """

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str
    max_position_embeddings: int
    layer_kinds: tuple[str, ...]
    sliding_window: int | None = None
    moe_layers: tuple[bool, ...] = ()
    moe: MoeShape | None = None
    mla: MlaShape | None = None
    quant: QuantShape | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    vision_params: int = 0
    architectures: tuple[str, ...] = field(default_factory=tuple)
    vision: VisionShape | None = None
    o_bias: bool = False
    cross_attention_layers: tuple[int, ...] = ()

    @property
    def is_hybrid(self) -> bool:
        """Whether sliding-window and full-attention layers are mixed."""
        return len(set(self.layer_kinds)) > 1


def load_model_shape(model: str | Path) -> ModelShape:
    """Reads ``config.json`` from a model directory or file path.

    Args:
        model: A directory containing ``config.json``, or the file itself.

    Raises:
        VtuneError: The file is missing, not JSON, or lacks required fields.
    """
    path = Path(model)
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.is_file():
        raise VtuneError(
            f"--model {model}: no config.json found at {cfg_path}; pass a local model directory "
            "containing a Hugging Face config.json (vtune downloads nothing)"
        )
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VtuneError(f"{cfg_path}: not valid JSON ({exc}); fix or re-export the model's config.json") from None
    if not isinstance(data, dict):
        raise VtuneError(f"{cfg_path}: expected a JSON object at top level")
    processor: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        proc_path = cfg_path.parent / name
        if proc_path.is_file():
            try:
                loaded = json.loads(proc_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # vLLM would fail on it too; the memory model just uses the defaults
            if isinstance(loaded, dict):
                processor["video" if name.startswith("video") else "image"] = loaded
    return shape_from_config(data, source=str(cfg_path), processor=processor)


def _get(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def shape_from_config(
    data: dict[str, Any], *, source: str = "config.json", processor: dict[str, Any] | None = None
) -> ModelShape:
    """Builds a :class:`ModelShape` from a parsed ``config.json`` mapping.

    Args:
        data: The parsed ``config.json``.
        source: Where it came from (for error messages).
        processor: Parsed ``preprocessor_config.json`` (key ``image``) and
            ``video_preprocessor_config.json`` (key ``video``), if the model folder has them.
    """
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else None
    cfg = dict(text or data)
    text_type = str(cfg.get("model_type") or "")
    if text is not None and not text_type and str(data.get("model_type")) == "gemma3":
        text_type = "gemma3_text"
    for key, value in _TEXT_DEFAULTS.get(text_type, {}).items():
        cfg.setdefault(key, value)
    # Top-level keys that apply to the text model too (dtype, tying, quantization).
    for key in ("torch_dtype", "dtype", "tie_word_embeddings", "quantization_config"):
        if key not in cfg and key in data:
            cfg[key] = data[key]
    model_type = str(cfg.get("model_type") or data.get("model_type") or "")

    def need(*keys: str) -> int:
        value = _get(cfg, *keys)
        if not isinstance(value, int) or value <= 0:
            raise VtuneError(
                f"{source}: missing or invalid {keys[0]!r} (got {value!r}); the memory model needs it "
                "from config.json"
            )
        return value

    hidden = need("hidden_size", "n_embd", "d_model")
    layers = need("num_hidden_layers", "n_layer", "num_layers")
    heads = need("num_attention_heads", "n_head")
    kv_heads = int(_get(cfg, "num_key_value_heads", "num_kv_heads", default=heads))
    if cfg.get("multi_query") is True:
        kv_heads = 1
    head_dim = int(_get(cfg, "head_dim", default=0) or hidden // heads)
    vocab = need("vocab_size")
    intermediate = int(_get(cfg, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden))
    tie = bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma")))
    dtype = str(_get(cfg, "torch_dtype", "dtype", default="bfloat16")).replace("torch.", "")
    max_pos = int(_get(cfg, "max_position_embeddings", "n_positions", "max_seq_len", default=4096))

    kinds, window = _layer_kinds(cfg, model_type, layers)
    moe, moe_layers = _moe(cfg, model_type, layers)
    mla = _mla(cfg)
    quant = _quant(cfg.get("quantization_config"), source)
    gpt_oss = model_type == "gpt_oss"
    # gpt-oss builds q/k/v and o with bias=True whatever the config says (gpt_oss.py OAIAttention).
    qwen2 = model_type in ("qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl")
    qkv_bias = gpt_oss or bool(cfg.get("attention_bias", qwen2))
    qk_norm = model_type.startswith("qwen3") or model_type.startswith("gemma3")
    vision = _vision(data, hidden, processor or {})
    archs = tuple(data.get("architectures") or ())
    cross = tuple(int(i) for i in (cfg.get("cross_attention_layers") or []) if 0 <= int(i) < layers)
    if cross:
        kinds = tuple("cross" if i in cross else k for i, k in enumerate(kinds))
    return ModelShape(
        model_type=model_type,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, kv_heads),
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        dtype=dtype if dtype in _DTYPE_BYTES else "bfloat16",
        max_position_embeddings=max_pos,
        layer_kinds=kinds,
        sliding_window=window,
        moe_layers=moe_layers,
        moe=moe,
        mla=mla,
        quant=quant,
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        vision_params=_vision_param_count(vision),
        architectures=archs,
        vision=vision,
        o_bias=gpt_oss,
        cross_attention_layers=cross,
    )


def _vision_param_count(vision: VisionShape | None) -> int:
    if vision is None:
        return 0
    from vtune._weights import vision_parameter_count  # _weights imports this module

    return vision_parameter_count(vision)


def vllm_refuses(shape: ModelShape) -> str | None:
    """Why vLLM (0.26 to 0.33) refuses the model's architecture, or None.

    Only the removals listed in :data:`REMOVED_ARCHITECTURES` are known here.
    """
    for arch in shape.architectures:
        if arch in REMOVED_ARCHITECTURES:
            return (f"{arch} was removed from vLLM in {REMOVED_ARCHITECTURES[arch]} (it needed the V0 engine); "
                    "vLLM refuses to start it: serve it with an older vLLM or choose another model")
    return None


def _layer_kinds(cfg: dict[str, Any], model_type: str, layers: int) -> tuple[tuple[str, ...], int | None]:
    """Per-layer attention kind as vLLM builds it.

    vLLM gives a layer a sliding window when ``layer_types`` says
    ``sliding_attention`` for it, and otherwise gives every layer the config's
    ``sliding_window`` (``cache_config.sliding_window``; Mistral v0.1). Qwen2/3
    configs carry a ``sliding_window`` that only applies with
    ``use_sliding_window: true``; a window of 0 means none.
    """
    window = cfg.get("sliding_window")
    if model_type.startswith("qwen") and not cfg.get("use_sliding_window", False):
        window = None
    if not isinstance(window, int) or window <= 0:
        window = None
    if model_type == "gpt_oss" and window is not None:
        # gpt_oss.py OAIAttention: "Only apply sliding window to every other layer", by layer index,
        # whatever layer_types says (0.26.0 to 0.33.0).
        return tuple("sliding" if i % 2 == 0 else "full" for i in range(layers)), window
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) >= layers:
        kinds = tuple("sliding" if str(t) in ("sliding_attention", "sliding") else "full" for t in types[:layers])
        if window is None:
            kinds = tuple("full" for _ in kinds)
        return kinds, window if "sliding" in kinds else None
    if window is None:
        return tuple("full" for _ in range(layers)), None
    if model_type == "gemma2":
        return tuple("sliding" if i % 2 == 0 else "full" for i in range(layers)), window
    if model_type in ("gemma3", "gemma3_text"):
        pattern = int(cfg.get("sliding_window_pattern", 6))
        return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(layers)), window
    if model_type.startswith("qwen"):
        first_sliding = int(cfg.get("max_window_layers", layers))
        kinds = tuple("sliding" if i >= first_sliding else "full" for i in range(layers))
        return kinds, window if "sliding" in kinds else None
    return tuple("sliding" for _ in range(layers)), window


def _moe(cfg: dict[str, Any], model_type: str, layers: int) -> tuple[MoeShape | None, tuple[bool, ...]]:
    experts = _get(cfg, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
    if not isinstance(experts, int) or experts <= 1:
        return None, tuple(False for _ in range(layers))
    top_k = int(_get(cfg, "num_experts_per_tok", "experts_per_token", "moe_top_k", default=2))
    expert_inter = int(_get(cfg, "moe_intermediate_size", default=cfg.get("intermediate_size", 0)))
    shared = 0
    if cfg.get("shared_expert_intermediate_size"):
        shared = int(cfg["shared_expert_intermediate_size"])
    elif cfg.get("n_shared_experts"):
        shared = int(cfg["n_shared_experts"]) * expert_inter
    first_dense = int(cfg.get("first_k_dense_replace", 0) or 0)
    freq = int(cfg.get("moe_layer_freq", 1) or 1)
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    flags = []
    for i in range(layers):
        is_moe = i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and i not in mlp_only
        flags.append(is_moe)
    gpt_oss = model_type == "gpt_oss"
    return (
        MoeShape(
            num_experts=experts,
            top_k=top_k,
            expert_intermediate_size=expert_inter,
            shared_intermediate_size=shared,
            shared_expert_gate=model_type.startswith("qwen2_moe") or model_type == "qwen2moe",
            expert_bias=gpt_oss,
            router_bias=gpt_oss,
        ),
        tuple(flags),
    )


def _mla(cfg: dict[str, Any]) -> MlaShape | None:
    rank = cfg.get("kv_lora_rank")
    if not isinstance(rank, int) or rank <= 0:
        return None
    return MlaShape(
        kv_lora_rank=rank,
        q_lora_rank=cfg.get("q_lora_rank") or None,
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim", 64)),
        qk_nope_head_dim=int(cfg.get("qk_nope_head_dim", 128)),
        v_head_dim=int(cfg.get("v_head_dim", 128)),
    )


def quant_from_method(method: str) -> QuantShape:
    """The weight format of a ``--quantization`` method name.

    Raises:
        VtuneError: The method is unknown to the memory model.
    """
    m = method.lower().replace("-", "_")
    if m in ("fp8", "fbgemm_fp8", "modelopt", "ptpc_fp8", "fp8_per_block"):
        return QuantShape(method=m, weight_bits=8)
    if m in ("int8", "w8a8", "experts_int8", "smoothquant"):
        return QuantShape(method=m, weight_bits=8)
    if m in ("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "int4", "w4a16", "bitsandbytes", "gguf"):
        return QuantShape(method=m, weight_bits=4, group_size=128)
    if m == "mxfp4":
        return QuantShape(method=m, weight_bits=4, group_size=32, experts_only=True)
    if m in ("nvfp4", "modelopt_fp4"):
        return QuantShape(method=m, weight_bits=4, group_size=16)
    raise VtuneError(
        f"--quantization {method}: unknown to vtune's memory model; use one of fp8, int8, awq, gptq, "
        "mxfp4, nvfp4 (or leave it unset to use the checkpoint's quantization_config)"
    )


def _quant(qc: Any, source: str) -> QuantShape | None:
    """The checkpoint's ``quantization_config`` as the packed format vLLM loads.

    compressed-tensors: the first config group's ``weights`` (``num_bits``, ``type`` int/float,
    ``strategy`` tensor/channel/group/block, ``group_size``, ``block_structure``, ``symmetric``) and
    whether ``input_activations`` are static. fp8: ``weight_block_size`` (block scales) and
    ``activation_scheme`` (static input scales).
    """
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors" or method == "compressed_tensors":
        bits, group, strategy, wtype, block = 8, 0, "channel", "int", None
        zero, static = False, False
        for group_cfg in (qc.get("config_groups") or {}).values():
            weights = (group_cfg or {}).get("weights") or {}
            bits = int(weights.get("num_bits", bits))
            group = int(weights.get("group_size") or 0)
            strategy = str(weights.get("strategy") or ("group" if group else "channel"))
            wtype = str(weights.get("type") or "int")
            zero = weights.get("symmetric") is False
            bs = weights.get("block_structure")
            if isinstance(bs, list) and len(bs) == 2:
                block = (int(bs[0]), int(bs[1]))
            acts = (group_cfg or {}).get("input_activations") or {}
            static = bool(acts) and acts.get("dynamic") is False
            break
        return QuantShape(method="compressed-tensors", weight_bits=bits, group_size=group, strategy=strategy,
                          block_size=block, zero_point=zero, static_input=static, weight_type=wtype)
    if method in ("awq", "gptq"):
        return QuantShape(method=method, weight_bits=int(qc.get("bits") or qc.get("w_bit") or 4),
                          group_size=int(qc.get("group_size", qc.get("q_group_size", 128)) or 0),
                          strategy="group", zero_point=True)
    if method == "bitsandbytes":
        return QuantShape(method=method, weight_bits=8 if qc.get("load_in_8bit") else 4, group_size=64)
    if method == "fp8":
        bs = qc.get("weight_block_size")
        block = (int(bs[0]), int(bs[1])) if isinstance(bs, list) and len(bs) == 2 else None
        return QuantShape(method="fp8", weight_bits=8, strategy="block" if block else "tensor", block_size=block,
                          static_input=str(qc.get("activation_scheme", "dynamic")) == "static", weight_type="float")
    if not method:
        return None
    return quant_from_method(method)


def _vision(data: dict[str, Any], text_hidden: int, processor: dict[str, Any]) -> VisionShape | None:
    """The vision tower of a VLM config, with the defaults ``transformers`` would fill in."""
    vc = data.get("vision_config")
    if not isinstance(vc, dict):
        return None
    vtype = str(vc.get("model_type", ""))
    top = str(data.get("model_type", ""))
    if top == "gemma3" and not vtype:
        vtype = "siglip_vision_model"
    if top == "mistral3" and not vtype:
        vtype = "pixtral"
    vc = {**_VISION_DEFAULTS.get(vtype, {}), **vc}
    h = int(_get(vc, "hidden_size", "embed_dim", "width", default=0) or 0)
    depth = int(_get(vc, "depth", "num_hidden_layers", "num_layers", default=0) or 0)
    if h <= 0 or depth <= 0:
        return None
    inter = int(_get(vc, "intermediate_size", default=0) or int(vc.get("mlp_ratio", 4) * h))
    heads = int(_get(vc, "num_heads", "num_attention_heads", default=16))
    patch = int(vc.get("patch_size", 14))
    channels = int(_get(vc, "in_channels", "num_channels", "in_chans", default=3))
    image = processor.get("image") or {}
    video = processor.get("video") or {}

    def longest(proc: dict[str, Any], default: int) -> int:
        raw = proc.get("size")
        size: dict[str, Any] = raw if isinstance(raw, dict) else {}
        value = size.get("longest_edge") or proc.get("max_pixels")
        return int(value) if isinstance(value, int) and value > 0 else default

    if top == "qwen3_vl" or vtype in ("qwen3_vl", "qwen3_vl_moe"):
        return VisionShape(
            kind="qwen3_vl", hidden_size=h, depth=depth, intermediate_size=inter, num_heads=heads,
            patch_size=patch, in_channels=channels, temporal_patch_size=int(vc.get("temporal_patch_size", 2)),
            num_position_embeddings=int(vc.get("num_position_embeddings", 2304)),
            spatial_merge_size=int(vc.get("spatial_merge_size", 2)),
            out_hidden_size=int(_get(vc, "out_hidden_size", default=text_hidden)),
            deepstack_layers=len(vc.get("deepstack_visual_indexes") or []),
            # Qwen2VLImageProcessorFast / Qwen3VLVideoProcessor defaults when the folder has no processor files.
            max_image_pixels=longest(image, 16777216), max_video_pixels=longest(video, 25165824),
        )
    if top == "qwen2_5_vl" or vtype == "qwen2_5_vl":
        return VisionShape(
            kind="qwen2_5_vl", hidden_size=h, depth=depth, intermediate_size=inter, num_heads=heads,
            patch_size=patch, in_channels=channels, temporal_patch_size=int(vc.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vc.get("spatial_merge_size", 2)),
            out_hidden_size=int(_get(vc, "out_hidden_size", default=text_hidden)),
            max_image_pixels=longest(image, 12845056),
        )
    if top == "gemma3" or vtype == "siglip_vision_model":
        return VisionShape(
            kind="siglip", hidden_size=h, depth=depth, intermediate_size=inter, num_heads=heads, patch_size=patch,
            in_channels=channels, image_size=int(vc.get("image_size", 224)), out_hidden_size=text_hidden,
            mm_tokens_per_image=int(data.get("mm_tokens_per_image", 256)),
        )
    if top == "mistral3" or vtype == "pixtral":
        return VisionShape(
            kind="pixtral", hidden_size=h, depth=depth, intermediate_size=inter, num_heads=heads, patch_size=patch,
            in_channels=channels, image_size=int(vc.get("image_size", 1024)),
            spatial_merge_size=int(data.get("spatial_merge_size", 2) or 1), out_hidden_size=text_hidden,
            projector_bias=bool(data.get("multimodal_projector_bias", False)),
        )
    return VisionShape(kind="generic", hidden_size=h, depth=depth, intermediate_size=inter, num_heads=heads,
                       patch_size=patch, in_channels=channels, out_hidden_size=text_hidden,
                       generic_params=_vision_params(vc, text_hidden))


def _vision_params(vc: Any, text_hidden: int) -> int:
    """Parameters of a VLM's vision tower plus its projector into the text model.

    A ViT block has q/k/v/o projections with biases (4h^2 + 4h), an MLP (gated
    with three matrices for Qwen2.5-VL, two otherwise) and two norms; the patch
    embedding is a convolution ``channels x temporal x patch^2 x h``; Qwen-VL
    mergers are ``(h m^2)^2 + h m^2 x out`` each (Qwen3-VL adds one per
    deepstack layer); LLaVA-style projectors are two linears into the text width.
    """
    if not isinstance(vc, dict):
        return 0
    h = int(_get(vc, "hidden_size", "embed_dim", "width", default=0) or 0)
    depth = int(_get(vc, "depth", "num_hidden_layers", "num_layers", default=0) or 0)
    if h <= 0 or depth <= 0:
        return 0
    inter = int(_get(vc, "intermediate_size", default=0) or int(vc.get("mlp_ratio", 4) * h))
    vtype = str(vc.get("model_type", ""))
    gated = vtype in ("qwen2_5_vl",) or str(vc.get("hidden_act", "")) == "silu"
    block = 4 * h * h + 4 * h + (3 if gated else 2) * h * inter + inter + h + 4 * h
    patch = int(vc.get("patch_size", 14))
    channels = int(_get(vc, "in_channels", "num_channels", "in_chans", default=3))
    temporal = int(vc.get("temporal_patch_size", 1))
    total = depth * block + channels * temporal * patch * patch * h
    total += int(vc.get("num_position_embeddings", 0)) * h
    if "image_size" in vc and "num_position_embeddings" not in vc:
        total += (int(vc["image_size"]) // patch) ** 2 * h
    merge = int(vc.get("spatial_merge_size", 0) or 0)
    if merge > 0:
        out = int(_get(vc, "out_hidden_size", "out_hidden", default=text_hidden))
        merged = h * merge * merge
        n_mergers = 1 + len(vc.get("deepstack_visual_indexes") or [])
        total += n_mergers * (merged * merged + merged + merged * out + out + 2 * merged)
    else:
        total += h * text_hidden + text_hidden * text_hidden + 2 * text_hidden
    return total
