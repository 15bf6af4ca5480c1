"""Weight memory per GPU, from the tensors vLLM's model implementation creates on each rank.

(One module of about 550 lines: the quantized-linear layouts, the decoder families and the vision
towers are one table read together; a layout change in vLLM touches the three at once.)

The memory model used to multiply a parameter count by bytes per parameter. Here each
family is a small table: which tensors its vLLM implementation registers, with which
shape on one tensor-parallel rank, and on which pipeline stage
(:func:`stage_tensors`); the weights are their sum (:func:`stage_weight_bytes`).
What the table follows, by family (vLLM 0.26.0; unchanged in 0.32.0/0.33.0 unless said):

* every decoder (``llama.py``, ``qwen3.py``, ``gemma2.py``, ``gemma3.py``, ...):
  ``QKVParallelLinear`` gives each rank ``heads / tp`` query heads and
  ``max(1, kv_heads / tp)`` KV heads (KV heads are *replicated* when fewer than
  the ranks); ``MergedColumnParallelLinear`` gate/up and ``RowParallelLinear``
  down split the FFN width; norms are whole on every rank;
* ``VocabParallelEmbedding`` / ``ParallelLMHead``: the vocabulary is padded to a
  multiple of 64 (``pad_vocab_size``), then split evenly over the ranks
  (``divide(num_embeddings_padded, tp_size)``); a tied LM head is the embedding
  itself on a single stage, its own copy on the last stage under pipeline parallelism;
* rotary ``cos_sin_cache`` buffers (``max_position x rotary_dim`` in the model
  dtype): one per distinct rotary configuration on every stage that has layers
  (``get_rope`` caches them per process): two for Gemma 3 (local and global bases);
* Gemma 2/3: four norms per layer (pre/post attention, pre/post feed-forward),
  Gemma 3 q/k norms; tied embeddings by default;
* gpt-oss (``gpt_oss.py``): q/k/v and o with biases, attention ``sinks``
  (``heads / tp`` values in the model dtype), a replicated router with bias, and
  ``FusedMoE`` experts with biases; mxfp4 experts (``mxfp4.py``
  ``GptOssMxfp4MoEMethod.create_weights``) are ``w13 (E, 2 I_p, H/2)`` and
  ``w2 (E, H, I_p/2)`` uint8 with uint8 block scales ``(E, ., ./32)`` and bf16
  biases, ``I_p = I / tp`` rounded up to 64 for the Triton backend that Hopper
  uses (``mxfp4_round_up_hidden_size_and_intermediate_size``);
* DeepSeek MLA (``deepseek_v2.py``, ``mla_attention.py``): the latent
  ``kv_a_proj_with_mqa`` and ``q_a_proj`` are replicated, ``q_b_proj``/``kv_b_proj``
  split by heads, and ``process_weights_after_loading`` keeps two more copies of
  ``kv_b_proj`` in the model dtype (``W_UK_T`` and ``W_UV``);
* quantized linears by their packed shapes (:func:`linear_tensors`): fp8
  (``fp8.py``: one fp32 scale per logical shard, or ``weight_block_size`` block
  scales), compressed-tensors int8/fp8 (per-channel ``(out, 1)`` or per-tensor fp32
  scales, static input scales), int4 AWQ / GPTQ / compressed-tensors
  ``pack-quantized`` (int32-packed weights, per-group scales and zero points), mxfp4
  and nvfp4 (4-bit with 8-bit block scales);
* vision towers (:func:`vision_tensors`): Qwen3-VL (``qwen3_vl.py``: Conv3d patch
  embed with bias, learned position embedding, ViT blocks with LayerNorms and biases,
  the merger and one deepstack merger per ``deepstack_visual_indexes`` entry), Qwen2.5-VL
  (``qwen2_5_vl.py``: RMSNorms, gated MLP; weights only, its encoder budget is not modelled),
  Gemma 3's SigLIP (``siglip.py``) and projector (``gemma3_mm.py``
  ``Gemma3MultiModalProjector``), Pixtral (``pixtral.py`` ``PixtralHFVisionModel``)
  and the Mistral 3 projector (``mistral3.py``). ViT linears are split over the TP
  ranks (``mm_encoder_tp_mode="weights"``, the default); norms, convolutions and
  position embeddings are whole. The tower is built on every pipeline stage, and not at all
  when ``--limit-mm-per-prompt`` sets all its modalities to 0 (:func:`tower_skipped`);
  Qwen3-VL also allocates ``deepstack_input_embeds``, one ``(max_num_batched_tokens,
  hidden)`` buffer per deepstack level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vtune._model_shape import ModelShape, QuantShape, VisionShape
from vtune._multimodal_memory import limit_mm_per_prompt
from vtune._serve_config import ServeConfig

__all__ = [
    "RankSpec",
    "Tensor",
    "linear_tensors",
    "parameter_count",
    "stage_tensors",
    "stage_weight_bytes",
    "tower_modalities",
    "tower_skipped",
    "vision_parameter_count",
    "vision_tensors",
]

_FP32 = 4.0
_INT32 = 4.0
_U8 = 1.0


class RankSpec(Protocol):
    """What the weights of one rank depend on (the memory model's resolved configuration)."""

    @property
    def tp(self) -> int:
        """Tensor-parallel size."""
        ...

    @property
    def pp(self) -> int:
        """Pipeline-parallel size."""
        ...

    @property
    def weight_bytes(self) -> float:
        """Bytes of one element in the model dtype."""
        ...

    @property
    def quant(self) -> QuantShape | None:
        """Weight quantization in effect."""
        ...


class ResolvedSpec(RankSpec, Protocol):
    """A :class:`RankSpec` that also knows the batch size (``vtune._memory._Resolved``)."""

    @property
    def max_num_batched_tokens(self) -> int:
        """Resolved ``--max-num-batched-tokens``."""
        ...


@dataclass(frozen=True)
class _Spec:
    tp: int = 1
    pp: int = 1
    weight_bytes: float = 1.0
    quant: QuantShape | None = None


@dataclass(frozen=True)
class Tensor:
    """One tensor on one rank.

    Attributes:
        name: vLLM's parameter or buffer name (``layers.N`` stands for each layer it covers).
        shape: Shape on this rank.
        itemsize: Bytes per element.
        copies: How many layers (or experts) have this same tensor.
        parameter: False for buffers (rotary caches) and derived copies (MLA ``W_UV``),
            which :func:`parameter_count` leaves out.
    """

    name: str
    shape: tuple[int, ...]
    itemsize: float
    copies: int = 1
    parameter: bool = True

    @property
    def numel(self) -> int:
        """Elements of all copies."""
        return math.prod(self.shape) * self.copies

    @property
    def nbytes(self) -> float:
        """Bytes of all copies."""
        return self.numel * self.itemsize


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def linear_tensors(
    name: str, out_features: int, in_features: int, *, dtype_bytes: float, quant: QuantShape | None,
    shards: int = 1, bias: bool = False, experts: int = 0,
) -> list[Tensor]:
    """The tensors of one linear layer (or of ``experts`` stacked expert matrices) on one rank.

    Args:
        name: Layer name.
        out_features: Output width on this rank.
        in_features: Input width on this rank.
        dtype_bytes: Bytes per element of the model dtype (unquantized weights, biases, int4 scales).
        quant: The quantization applied to this layer, None when it stays in the model dtype.
        shards: Logical shards fused into this layer (3 for q/k/v, 2 for gate/up): per-tensor
            fp8 keeps one scale each (``PerTensorScaleParameter`` of ``len(output_partition_sizes)``).
        bias: Whether the layer has a bias (kept in the model dtype; bf16 for mxfp4 experts).
        experts: Number of stacked experts (``FusedMoE``), 0 for a plain linear.

    Returns:
        The tensors, shapes as vLLM creates them (``create_weights`` of the quant method).
    """
    lead: tuple[int, ...] = (experts,) if experts else ()
    o, i = out_features, in_features
    out: list[Tensor] = []

    def add(suffix: str, shape: tuple[int, ...], itemsize: float) -> None:
        out.append(Tensor(f"{name}.{suffix}", lead + shape, itemsize))

    if quant is None:
        add("weight", (o, i), dtype_bytes)
    elif quant.method == "mxfp4":
        add("weight", (o, i // 2), _U8)
        add("weight_scale", (o, i // 32), _U8)
    elif quant.method in ("nvfp4", "modelopt_fp4"):
        add("weight", (o, i // 2), _U8)
        add("weight_scale", (o, i // 16), _U8)  # fp8 e4m3 block scales
        add("weight_scale_2", (shards,), _FP32)
        add("input_scale", (shards,), _FP32)
    elif quant.weight_bits == 8:
        add("weight", (o, i), _U8)
        if quant.block_size:
            b0, b1 = quant.block_size
            add("weight_scale_inv", (_cdiv(o, b0), _cdiv(i, b1)), _FP32)
        elif quant.strategy == "channel" or (quant.method == "compressed-tensors" and not quant.strategy):
            add("weight_scale", (o, 1), _FP32)
        else:
            add("weight_scale", (shards,), _FP32)
        if quant.static_input:
            add("input_scale", (shards,), _FP32)
    elif quant.method in ("awq", "awq_marlin"):
        g = quant.group_size or i
        add("qweight", (i, o // 8), _INT32)
        add("qzeros", (_cdiv(i, g), o // 8), _INT32)
        add("scales", (_cdiv(i, g), o), dtype_bytes)
    elif quant.method in ("gptq", "gptq_marlin"):
        g = quant.group_size or i
        add("qweight", (i // 8, o), _INT32)
        add("qzeros", (_cdiv(i, g), o // 8), _INT32)
        add("scales", (_cdiv(i, g), o), dtype_bytes)
        add("g_idx", (i,), _INT32)
    elif quant.method == "compressed-tensors":
        g = quant.group_size or i
        add("weight_packed", (o, i * quant.weight_bits // 32), _INT32)
        add("weight_scale", (o, _cdiv(i, g)), dtype_bytes)
        add("weight_shape", (2,), 8.0)
        if quant.zero_point:
            add("weight_zero_point", (o // 8, _cdiv(i, g)), _INT32)
    else:
        # Other 4-bit formats (bitsandbytes, gguf, marlin): 0.5 B a weight plus a 16-bit scale and a
        # packed 4-bit zero per group (the AWQ layout).
        g = quant.group_size or 128
        out.append(Tensor(f"{name}.weight", lead + (o, i), 0.5 + 2.5 / g))
    if bias:
        add("bias", (o,), dtype_bytes)
    return out


# --------------------------------------------------------------------- decoder layers
def _quant_for(q: QuantShape | None, *, expert: bool) -> QuantShape | None:
    if q is None or (q.experts_only and not expert):
        return None
    return q


def _attention(shape: ModelShape, r: RankSpec, p: str) -> list[Tensor]:
    h, tp, dt = shape.hidden_size, r.tp, r.weight_bytes
    q = _quant_for(r.quant, expert=False)
    out: list[Tensor] = []
    if shape.mla:
        m = shape.mla
        heads = shape.num_heads // tp
        qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            out += linear_tensors(f"{p}.q_a_proj", m.q_lora_rank, h, dtype_bytes=dt, quant=q)
            out.append(Tensor(f"{p}.q_a_layernorm.weight", (m.q_lora_rank,), dt))
            out += linear_tensors(f"{p}.q_b_proj", heads * qk_head, m.q_lora_rank, dtype_bytes=dt, quant=q)
        else:
            out += linear_tensors(f"{p}.q_proj", heads * qk_head, h, dtype_bytes=dt, quant=q)
        out += linear_tensors(f"{p}.kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_head_dim, h,
                              dtype_bytes=dt, quant=q)
        out.append(Tensor(f"{p}.kv_a_layernorm.weight", (m.kv_lora_rank,), dt))
        out += linear_tensors(f"{p}.kv_b_proj", heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank,
                              dtype_bytes=dt, quant=q)
        out += linear_tensors(f"{p}.o_proj", h, heads * m.v_head_dim, dtype_bytes=dt, quant=q)
        # MLACommonImpl.process_weights_after_loading: kv_b_proj dequantized and kept twice more.
        out.append(Tensor(f"{p}.attn.W_UK_T", (heads, m.qk_nope_head_dim, m.kv_lora_rank), dt, parameter=False))
        out.append(Tensor(f"{p}.attn.W_UV", (heads, m.kv_lora_rank, m.v_head_dim), dt, parameter=False))
        return out
    q_out = shape.num_heads // tp * shape.head_dim
    kv_out = max(1, shape.num_kv_heads // tp) * shape.head_dim
    out += linear_tensors(f"{p}.qkv_proj", q_out + 2 * kv_out, h, dtype_bytes=dt, quant=q, shards=3,
                          bias=shape.qkv_bias)
    out += linear_tensors(f"{p}.o_proj", h, q_out, dtype_bytes=dt, quant=q, bias=shape.o_bias)
    if shape.qk_norm:
        out.append(Tensor(f"{p}.q_norm.weight", (shape.head_dim,), dt))
        out.append(Tensor(f"{p}.k_norm.weight", (shape.head_dim,), dt))
    if shape.model_type == "gpt_oss":
        out.append(Tensor(f"{p}.sinks", (shape.num_heads // tp,), dt))
    return out


def _expert_width(shape: ModelShape, r: RankSpec) -> int:
    """FFN width of one expert on one rank, after the quant method's ``maybe_roundup_sizes``."""
    assert shape.moe is not None
    width = shape.moe.expert_intermediate_size // r.tp
    q = r.quant
    if q is not None and q.method == "mxfp4":
        # Hopper picks the Triton mxfp4 backend (FlashInfer TRT-LLM needs SM100): width to a multiple of 64.
        width = _round_up(width, 64)
    return width


def _mlp(shape: ModelShape, r: RankSpec, p: str, layer: int) -> list[Tensor]:
    h, tp, dt = shape.hidden_size, r.tp, r.weight_bytes
    moe = shape.moe
    out: list[Tensor] = []
    if moe and shape.moe_layers and shape.moe_layers[layer]:
        e, width = moe.num_experts, _expert_width(shape, r)
        qe = _quant_for(r.quant, expert=True)
        mxfp4 = qe is not None and qe.method == "mxfp4"
        bias_bytes = 2.0 if mxfp4 else dt
        out += linear_tensors(f"{p}.experts.w13", 2 * width, h, dtype_bytes=dt, quant=qe, shards=2, experts=e)
        out += linear_tensors(f"{p}.experts.w2", h, width, dtype_bytes=dt, quant=qe, experts=e)
        if moe.expert_bias:
            out.append(Tensor(f"{p}.experts.w13_bias", (e, 2 * width), bias_bytes))
            out.append(Tensor(f"{p}.experts.w2_bias", (e, h), bias_bytes))
        # The router is a replicated, unquantized linear (quant_config=None in every family here).
        out += linear_tensors(f"{p}.gate", e, h, dtype_bytes=dt, quant=None, bias=moe.router_bias)
        if moe.shared_intermediate_size:
            qs = _quant_for(r.quant, expert=False)
            inter = moe.shared_intermediate_size // tp
            out += linear_tensors(f"{p}.shared_expert.gate_up_proj", 2 * inter, h, dtype_bytes=dt, quant=qs,
                                  shards=2)
            out += linear_tensors(f"{p}.shared_expert.down_proj", h, inter, dtype_bytes=dt, quant=qs)
            if moe.shared_expert_gate:
                out.append(Tensor(f"{p}.shared_expert_gate.weight", (1, h), dt))
        return out
    q = _quant_for(r.quant, expert=False)
    inter = shape.intermediate_size // tp
    out += linear_tensors(f"{p}.gate_up_proj", 2 * inter, h, dtype_bytes=dt, quant=q, shards=2)
    out += linear_tensors(f"{p}.down_proj", h, inter, dtype_bytes=dt, quant=q)
    return out


def _layer(shape: ModelShape, r: RankSpec, layer: int) -> list[Tensor]:
    p = f"layers.{layer}"
    dt = r.weight_bytes
    out = _attention(shape, r, f"{p}.self_attn") + _mlp(shape, r, f"{p}.mlp", layer)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if shape.model_type.startswith("gemma2") or shape.model_type.startswith("gemma3"):
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    out += [Tensor(f"{p}.{n}.weight", (shape.hidden_size,), dt) for n in norms]
    return out


def _padded_vocab(shape: ModelShape) -> int:
    """Vocabulary padded to a multiple of 64 (``DEFAULT_VOCAB_PADDING_SIZE``), all ranks together."""
    return -(-shape.vocab_size // 64) * 64


def _rotary_caches(shape: ModelShape, dtype_bytes: float) -> list[Tensor]:
    rot = shape.mla.qk_rope_head_dim if shape.mla else shape.head_dim
    # Gemma 3 builds a local (base 10,000) and a global rotary embedding (gemma3.py Gemma3Attention).
    count = 2 if shape.model_type.startswith("gemma3") and shape.is_hybrid else 1
    return [Tensor("rotary_emb.cos_sin_cache", (shape.max_position_embeddings, rot), dtype_bytes, count,
                   parameter=False)]


def _merge(tensors: Iterable[Tensor]) -> list[Tensor]:
    """Folds tensors that differ only by layer index into one entry with ``copies``."""
    merged: dict[tuple[str, tuple[int, ...], float, bool], int] = {}
    for t in tensors:
        parts = t.name.split(".")
        if len(parts) > 1 and parts[0] == "layers":
            parts[1] = "N"
        key = (".".join(parts), t.shape, t.itemsize, t.parameter)
        merged[key] = merged.get(key, 0) + t.copies
    return [Tensor(n, s, i, c, p) for (n, s, i, p), c in merged.items()]


def tower_modalities(v: VisionShape) -> frozenset[str]:
    """The modalities a tower serves (``_mark_tower_model(vllm_config, ...)`` of its model)."""
    return frozenset({"image"}) if v.kind in ("siglip", "pixtral") else frozenset({"image", "video"})


def tower_skipped(shape: ModelShape, limits: Mapping[str, int] | None) -> bool:
    """Whether vLLM builds the vision tower as a ``StageMissingLayer`` (no weights).

    ``SupportsMultiModal._mark_tower_model`` skips it when ``--limit-mm-per-prompt`` sets every
    modality of the tower to 0 (0.26.0; unset modalities count 999).
    """
    if shape.vision is None or not limits:
        return False
    return all(limits.get(m, 999) == 0 for m in tower_modalities(shape.vision))


def stage_tensors(
    shape: ModelShape, r: RankSpec, stage: int, layers: Sequence[int] | range, *,
    limits: Mapping[str, int] | None = None, max_num_batched_tokens: int = 0,
) -> list[Tensor]:
    """Every tensor one GPU of pipeline stage ``stage`` holds (``layers.N`` entries carry ``copies``).

    Args:
        shape: The model.
        r: Parallel layout, dtype and quantization in effect.
        stage: Pipeline stage index.
        layers: Decoder layers of that stage (``vtune._memory.pp_partition``).
        limits: ``--limit-mm-per-prompt`` counts (a tower whose modalities are all 0 is not built).
        max_num_batched_tokens: Sizes Qwen3-VL's ``deepstack_input_embeds`` buffers (0: left out).
    """
    dt, h = r.weight_bytes, shape.hidden_size
    vocab_rows = _cdiv(_padded_vocab(shape), r.tp)  # vLLM asserts it divides
    out: list[Tensor] = []
    first, last = stage == 0, stage == r.pp - 1
    v = shape.vision
    if v is not None:
        # The tower is built on every pipeline stage (qwen3_vl.py, gemma3_mm.py, mistral3.py build it
        # outside any is_first_rank test), and its weights are loaded there.
        if not tower_skipped(shape, limits):
            out += vision_tensors(v, r.tp, dt)
        if v.kind == "qwen3_vl" and v.deepstack_layers and max_num_batched_tokens:
            # Qwen3VLForConditionalGeneration.__init__: one zeros (max_num_batched_tokens, text hidden)
            # buffer per deepstack level, in the model dtype, allocated with the model.
            out.append(Tensor("deepstack_input_embeds", (max_num_batched_tokens, h), dt, v.deepstack_layers,
                              parameter=False))
    if first:
        out.append(Tensor("embed_tokens.weight", (vocab_rows, h), dt))
    for i in layers:
        out += _layer(shape, r, i)
    if len(layers):
        out += _rotary_caches(shape, dt)
    if last:
        out.append(Tensor("norm.weight", (h,), dt))
        if not (shape.tie_word_embeddings and first):
            # Untied, or tied across stages: the last stage loads its own copy.
            out.append(Tensor("lm_head.weight", (vocab_rows, h), dt, parameter=not shape.tie_word_embeddings))
    return _merge(out)


def stage_weight_bytes(
    shape: ModelShape, r: RankSpec, stage: int, layers: Sequence[int] | range, *,
    limits: Mapping[str, int] | None = None, max_num_batched_tokens: int = 0,
) -> float:
    """Weight bytes one GPU of the stage holds (what vLLM logs as "Model loading took").

    Arguments as :func:`stage_tensors`.
    """
    return sum(t.nbytes for t in stage_tensors(shape, r, stage, layers, limits=limits,
                                               max_num_batched_tokens=max_num_batched_tokens))


def _stage_weights(shape: ModelShape, r: ResolvedSpec, stage: int, layers: Sequence[int] | range,
                   cfg: ServeConfig | None = None) -> float:
    """What :mod:`vtune._memory` calls.

    :func:`stage_weight_bytes` with the configuration's ``--limit-mm-per-prompt`` and batched tokens.
    """
    limits = limit_mm_per_prompt(cfg) if cfg is not None else None
    return stage_weight_bytes(shape, r, stage, layers, limits=limits, max_num_batched_tokens=r.max_num_batched_tokens)


def parameter_count(shape: ModelShape) -> int:
    """Parameters of the model as stored (vision tower included; rotary caches and derived copies excluded)."""
    spec = _Spec()
    tensors = stage_tensors(shape, spec, 0, range(shape.num_layers))
    return sum(t.numel for t in tensors if t.parameter)


# ----------------------------------------------------------------------- vision towers
def vision_tensors(v: VisionShape, tp: int, dtype_bytes: float) -> list[Tensor]:
    """The vision tower and projector tensors of one TP rank (in the model dtype, never quantized).

    Args:
        v: The tower.
        tp: Tensor-parallel size (ViT linears are split; norms, convolutions, embeddings are whole).
        dtype_bytes: Bytes per element.
    """
    dt = dtype_bytes
    h, inter = v.hidden_size, v.intermediate_size
    out: list[Tensor] = []

    def lin(name: str, o: int, i: int, bias: bool) -> None:
        out.extend(Tensor(t.name, t.shape, t.itemsize, v.depth if name.startswith("blocks.N") else 1)
                   for t in linear_tensors(name, o, i, dtype_bytes=dt, quant=None, bias=bias))

    def norm(name: str, width: int, bias: bool, copies: int = 1) -> None:
        out.append(Tensor(f"{name}.weight", (width,), dt, copies))
        if bias:
            out.append(Tensor(f"{name}.bias", (width,), dt, copies))

    if v.kind == "generic":
        return [Tensor("visual", (v.generic_params,), dt / tp)]
    if v.kind == "qwen3_vl":
        t = v.temporal_patch_size
        out.append(Tensor("visual.patch_embed.proj.weight", (h, v.in_channels, t, v.patch_size, v.patch_size), dt))
        out.append(Tensor("visual.patch_embed.proj.bias", (h,), dt))
        out.append(Tensor("visual.pos_embed.weight", (v.num_position_embeddings, h), dt))
        norm("blocks.N.norm1", h, True, v.depth)
        norm("blocks.N.norm2", h, True, v.depth)
        lin("blocks.N.attn.qkv", 3 * h // tp, h, True)
        lin("blocks.N.attn.proj", h, h // tp, True)
        lin("blocks.N.mlp.linear_fc1", inter // tp, h, True)
        lin("blocks.N.mlp.linear_fc2", h, inter // tp, True)
        merged = h * v.spatial_merge_size ** 2
        for m in range(1 + v.deepstack_layers):
            name = "visual.merger" if m == 0 else f"visual.deepstack_merger_list.{m - 1}"
            norm(f"{name}.norm", h if m == 0 else merged, True)  # deepstack: use_postshuffle_norm
            lin(f"{name}.linear_fc1", merged // tp, merged, True)
            lin(f"{name}.linear_fc2", v.out_hidden_size, merged // tp, True)
        return out
    if v.kind == "qwen2_5_vl":
        # qwen2_5_vl.py: Conv3d without bias, RMSNorms, gated MLP with biases, merger ln_q + two linears.
        t = v.temporal_patch_size
        out.append(Tensor("visual.patch_embed.proj.weight", (h, v.in_channels, t, v.patch_size, v.patch_size), dt))
        norm("blocks.N.norm1", h, False, v.depth)
        norm("blocks.N.norm2", h, False, v.depth)
        lin("blocks.N.attn.qkv", 3 * h // tp, h, True)
        lin("blocks.N.attn.proj", h, h // tp, True)
        lin("blocks.N.mlp.gate_up_proj", 2 * inter // tp, h, True)
        lin("blocks.N.mlp.down_proj", h, inter // tp, True)
        merged = h * v.spatial_merge_size ** 2
        norm("visual.merger.ln_q", h, False)
        lin("visual.merger.mlp.0", merged // tp, merged, True)
        lin("visual.merger.mlp.2", v.out_hidden_size, merged // tp, True)
        return out
    if v.kind == "siglip":
        patches = (v.image_size // v.patch_size) ** 2
        out.append(Tensor("vision_tower.embeddings.patch_embedding.weight",
                          (h, v.in_channels, v.patch_size, v.patch_size), dt))
        out.append(Tensor("vision_tower.embeddings.patch_embedding.bias", (h,), dt))
        out.append(Tensor("vision_tower.embeddings.position_embedding.weight", (patches, h), dt))
        norm("blocks.N.layer_norm1", h, True, v.depth)
        norm("blocks.N.layer_norm2", h, True, v.depth)
        lin("blocks.N.self_attn.qkv_proj", 3 * h // tp, h, True)
        lin("blocks.N.self_attn.out_proj", h, h // tp, True)
        lin("blocks.N.mlp.fc1", inter // tp, h, True)
        lin("blocks.N.mlp.fc2", h, inter // tp, True)
        norm("vision_tower.post_layernorm", h, True)
        # Gemma3MultiModalProjector: a plain (replicated) parameter and a GemmaRMSNorm; the avg pool has none.
        out.append(Tensor("multi_modal_projector.mm_input_projection_weight", (h, v.out_hidden_size), dt))
        norm("multi_modal_projector.mm_soft_emb_norm", h, False)
        return out
    if v.kind == "pixtral":
        out.append(Tensor("vision_tower.patch_conv.weight", (h, v.in_channels, v.patch_size, v.patch_size), dt))
        norm("vision_tower.ln_pre", h, False)
        norm("blocks.N.attention_norm", h, False, v.depth)
        norm("blocks.N.ffn_norm", h, False, v.depth)
        lin("blocks.N.attention.qkv_proj", 3 * h // tp, h, False)
        lin("blocks.N.attention.o_proj", h, h // tp, False)
        lin("blocks.N.feed_forward.gate_up_proj", 2 * inter // tp, h, False)
        lin("blocks.N.feed_forward.down_proj", h, inter // tp, False)
        m = max(1, v.spatial_merge_size)
        norm("multi_modal_projector.norm", h, False)
        lin("multi_modal_projector.patch_merger.merging_layer", h, h * m * m, False)
        lin("multi_modal_projector.linear_1", v.out_hidden_size // tp, h, v.projector_bias)
        lin("multi_modal_projector.linear_2", v.out_hidden_size, v.out_hidden_size // tp, v.projector_bias)
        return out
    raise ValueError(f"unknown vision kind {v.kind!r}")


def vision_parameter_count(v: VisionShape) -> int:
    """Parameters of the vision tower and projector on one rank without tensor parallelism."""
    if v.kind == "generic":
        return v.generic_params
    return sum(t.numel for t in vision_tensors(v, 1, 1.0))
