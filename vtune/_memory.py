"""The analytical memory model: what vLLM will compute at startup, term by term.

(One module of about 900 lines: every term feeds the next one — weights, activation peak,
non-torch and CUDA-graph memory, then the KV budget and its blocks — and a rule that changes
in vLLM changes several terms at once, so they are read and tested together.)

It mirrors the V1 GPU worker (``vllm/v1/worker/gpu_worker.py``
``determine_available_memory``) and the KV cache sizing of
``vllm/v1/core/kv_cache_utils.py``:

* requested = ceil(total GPU memory x gpu_memory_utilization)
  (``vllm/v1/worker/utils.py`` ``request_memory``);
* non-KV = weights + peak activation of the profile run + non-torch memory
  (+ the CUDA-graph memory estimate, reserved since vLLM 0.21 when
  ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` is on, its default);
* KV cache bytes = requested - non-KV, per GPU;
* blocks = KV bytes // page size // layers per KV group (``get_num_blocks``), the
  smallest pipeline stage bounding every stage;
* max concurrency = blocks / blocks one max_model_len request needs
  (``get_max_concurrency_for_kv_cache_config``) and the reported "KV cache size"
  in tokens = int(concurrency x max_model_len) (``get_kv_cache_capacity``);
* the engine refuses to start unless one max_model_len request fits
  (``_check_enough_kv_cache_memory``).

Weights (summed from the tensors each rank holds, :mod:`vtune._weights`), page sizes
and the KV grouping of hybrid (sliding-window + full) models are computed exactly from
the architecture; a VLM's encoder outputs held during the profile run join the activation
peak (:mod:`vtune._multimodal_memory`). The three terms vLLM
*measures* (activation peak, non-torch memory, CUDA-graph memory) are modelled
by formulas whose constants are listed in :class:`GpuConstants` with where each
came from; :class:`Calibration` rescales them from what a real engine reported
(see :meth:`Calibration.observe`).

On the CPU engine the KV cache is what ``VLLM_CPU_KVCACHE_SPACE`` (GiB) or
``--kv-cache-memory-bytes`` sets, block size 128, and no activation term is
charged against it (``vllm/v1/worker/cpu_worker.py``).

Every vLLM default (utilization, batch limits by GPU tier, block size, CUDA-graph
capture limit, async scheduling, the CPU KV space vtune gives) comes from
:mod:`vtune._vllm_defaults`.

The accounting follows the vLLM release asked for (``version=``: ``"0.20.2"``, ``"0.26"``;
None: the installed one), whose rules :mod:`vtune._vllm_versions` gives: the default
utilization (0.9 before 0.20), whether the CUDA-graph estimate is taken out of the KV cache
(never before 0.20; from 0.20 on the V1 model runner only, and the V2 runner, which reserves
nothing, is the default for more models release after release and for all from 0.29), the
MLA block size (64 on Hopper before 0.18), the capture sizes and the 160 GiB batch tier, and
how the "KV cache size" tokens are reported (blocks x block size before 0.20.1). The
constants of the measured terms were fitted to 0.26 starts and are used for every release:
0.27 changed how the profiler sums the same bytes (free-memory drop + transient peak), not
what they are.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vtune._errors import VtuneError
from vtune._model_shape import ModelShape, QuantShape, quant_from_method
from vtune._multimodal_memory import encoder_profile_for, multimodal_profile_peak_bytes
from vtune._serve_config import ServeConfig
from vtune._vllm_defaults import (
    ASYNC_SCHEDULING_GPU,
    GPU_MEMORY_UTILIZATION,
    cpu_kv_cache_space_gib,
    default_block_size,
    default_gpu_memory_utilization,
    default_max_cudagraph_capture_size,
    resolve_batch_limits,
    version_rules,
)
from vtune._vllm_versions import VersionRules
from vtune._weights import _padded_vocab, _stage_weights, parameter_count

__all__ = [
    "GPU_CATALOG",
    "Calibration",
    "Gpu",
    "GpuConstants",
    "MemoryEstimate",
    "estimate_memory",
    "gpu_for_device",
    "kv_capacity",
    "parameter_count",
    "resolve_gpu",
    "valid_layouts",
]

GIB = 1 << 30
MIB = 1 << 20
#: vLLM's default --gpu-memory-utilization (kept for importers; the value lives in :mod:`vtune._vllm_defaults`).
DEFAULT_GPU_MEMORY_UTILIZATION = GPU_MEMORY_UTILIZATION

#: Total memory per GPU as ``torch.cuda.mem_get_info()`` reports it (GiB).
#: H100-80GB was read on the lent H100 80GB HBM3: 85,017,493,504 bytes = 79.178 GiB
#: (vLLM prints 79.18; nvidia-smi says 81,559 MiB, 480 MiB more). H200 is
#: nvidia-smi's 143,771 MiB less the same 480 MiB. The others are nvidia-smi's
#: memory.total less that reservation, as commonly reported.
GPU_CATALOG: dict[str, float] = {
    "H100-80GB": 85_017_493_504 / GIB,
    "H100-94GB": 93.09,
    "H200": (143_771 - 480) * MIB / GIB,
    "A100-40GB": 39.39,
    "A100-80GB": 79.15,
    "L40S": 44.39,
    "L4": 22.05,
    "A10G": 21.98,
    "RTX-4090": 23.64,
    "B200": 178.35,
}

_ALIASES = {
    "H100": "H100-80GB",
    "H100-SXM": "H100-80GB",
    "H100-PCIE": "H100-80GB",
    "H100-NVL": "H100-94GB",
    "H200-141GB": "H200",
    "A100": "A100-80GB",
    "4090": "RTX-4090",
}


@dataclass(frozen=True)
class Gpu:
    """One GPU model: its name and its total memory as torch reports it."""

    name: str
    memory_gib: float

    @property
    def memory_bytes(self) -> int:
        """Total memory in bytes."""
        return int(self.memory_gib * GIB)


def resolve_gpu(name: str | None = None, memory_gib: float | None = None) -> Gpu:
    """Finds a GPU in :data:`GPU_CATALOG` or builds one from a memory size.

    Args:
        name: Catalog name (case-insensitive; ``NVIDIA H100 80GB HBM3`` style
            device names are matched too).
        memory_gib: Total memory, overriding the catalog.

    Raises:
        VtuneError: Unknown name, or a non-positive size.
    """
    if memory_gib is not None:
        if memory_gib <= 0:
            raise VtuneError(f"--gpu-memory-gib must be > 0, got {memory_gib}")
        return Gpu(name or f"{memory_gib:g}GiB", float(memory_gib))
    if not name:
        return Gpu("H100-80GB", GPU_CATALOG["H100-80GB"])
    key = _match_gpu_name(name)
    if key is None:
        raise VtuneError(
            f"--gpu {name}: unknown GPU; use one of {', '.join(GPU_CATALOG)} or give --gpu-memory-gib"
        )
    return Gpu(key, GPU_CATALOG[key])


def gpu_for_device(name: str, memory_gib: float) -> Gpu:
    """A GPU found on this machine: its catalog name when known, with the memory measured here."""
    key = _match_gpu_name(name)
    return Gpu(key or name, memory_gib)


def _match_gpu_name(name: str) -> str | None:
    norm = name.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace(" ", "-").strip("-")
    for key in GPU_CATALOG:
        if norm == key.upper():
            return key
    if norm in _ALIASES:
        return _ALIASES[norm]
    # Device names as NVML reports them: "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB".
    for key in sorted(GPU_CATALOG, key=len, reverse=True):
        family, _, size = key.partition("-")
        if family in norm and (not size or size in norm):
            return key
    return None


@dataclass(frozen=True)
class GpuConstants:
    """Constants of the modelled (measured-by-vLLM) terms, with their sources.

    Fitted to engine starts of vLLM 0.26 (``benchmarks/results/gpu-logs/``;
    dummy weights): on an H100 80GB at max-model-len 8192, a Llama-3.1-8B shape
    at (batched tokens, seqs) = (8192, 1024) and (2048, 64), a Qwen3-0.6B shape
    at (8192, 1024) and (2048, 128), a Qwen3-30B-A3B MoE shape at the defaults;
    on two H200s, the seven starts of the 8B study (TP=2 and DP=2). See
    ``benchmarks/results/memory_model.md``.

    Attributes:
        act_embed_copies: Peak activation never fell below one LM-head-sized
            matrix (vocab x hidden per TP rank): 0.98 GiB for the 8B shape
            (128,256 x 4096 bf16) at 2048 tokens, 0.29 GiB for the 0.6B shape
            (151,936 x 1024). One copy.
        act_token_width: Above that floor the peak grew by (hidden + query
            width per rank) elements per scheduled token: 8192 elements for the
            8B shape (1.01 -> 1.10 GiB from 2048 to 8192 tokens) and 3072 for
            the 0.6B one (0.30 -> 0.34 GiB). The MLP intermediate does not show
            (compiled graphs reuse its buffer). Multiplier of that width: 1.0.
        act_moe_factor: MoE layers add top_k x (2 x expert width / TP + hidden)
            elements per token (fused-MoE intermediate caches) times this
            factor, fitted to the Qwen3-30B-A3B start (2.68 GiB peak).
        non_torch_gib: Non-torch memory of one GPU worker without tensor or
            pipeline parallel: 0.22 GiB on every such start (H100 and H200,
            data parallel included), 0.24 on the MoE one.
        non_torch_parallel_gib: Non-torch memory per GPU with TP x PP > 1:
            0.06-0.07 GiB on the four TP=2 starts on two H200s. Lower, not
            higher: NCCL and the custom all-reduce buffers are allocated before
            vLLM's baseline snapshot, so they are not in the increase it reports.
        cudagraph_width_factor: The captured graph pool held, for the largest
            capture size, per layer and token, (q+k+v width + query width +
            2 x hidden) elements times this factor: 1.74 (8B) and 2.29 (0.6B)
            at size 512; 2.0 is their mean. Graph memory is dominated by the
            largest size, not the count of sizes (19 vs 51 sizes moved it 4x
            while the largest moved 4x too).
        cudagraph_moe_factor: The same factor for MoE models (0.80 GiB actual
            for the 30B-A3B shape).
        cudagraph_reserved_fraction: Part of the CUDA-graph memory taken out of
            the KV cache before it is sized. vLLM 0.26 subtracts its profiled
            estimate only in the V1 model runner, which it uses for hybrid
            models and most MoE ones (:func:`uses_v1_model_runner`; the
            estimate was 0.64 GiB against 0.80 actual: 0.8);
            dense models run the V2 model runner, which reserves nothing
            (KV = requested - weights - activation - non-torch to 0.01 GiB on
            all four dense starts). Calibration learns it from each start.
    """

    act_embed_copies: float = 1.0
    act_token_width: float = 1.0
    act_moe_factor: float = 4.58
    non_torch_gib: float = 0.22
    non_torch_parallel_gib: float = 0.065
    cudagraph_width_factor: float = 2.0
    cudagraph_moe_factor: float = 1.3
    cudagraph_reserved_fraction: float = 0.8


DEFAULT_CONSTANTS = GpuConstants()


@dataclass
class Calibration:
    """Corrections fitted from real engine starts.

    Each scale multiplies the model's prediction of one term; ``observe``
    updates them from a startup log's numbers (a running mean of the observed
    to predicted ratios, so later predictions for other configurations of the
    same model and GPU inherit the correction).

    Attributes:
        weights_scale: Observed / predicted weight memory.
        activation_scale: Observed / predicted peak activation.
        non_torch_scale: Observed / predicted non-torch memory.
        cudagraph_scale: Observed / predicted CUDA-graph memory.
        cudagraph_reserved_ratio: Share of the (uncalibrated) CUDA-graph
            estimate that the engine took out of the KV cache, learned from
            requested - weights - activation - non-torch - reported KV; None
            until observed (then the release's rule with
            :attr:`GpuConstants.cudagraph_reserved_fraction`).
        observations: Engine starts folded in.
        cudagraph_reserved_observations: Starts of :attr:`vllm_version` behind
            :attr:`cudagraph_reserved_ratio` (its running mean's weight; 0: as ``observations``,
            calibrations saved before it was kept).
        vllm_version: The vLLM release of the starts folded in (``X.Y.Z``; None: not recorded).
            The reservation ratio is a rule of the release, so it is applied only to estimates
            for that release; the term scales carry over.
    """

    weights_scale: float = 1.0
    activation_scale: float = 1.0
    non_torch_scale: float = 1.0
    cudagraph_scale: float = 1.0
    cudagraph_reserved_ratio: float | None = None
    observations: int = 0
    cudagraph_reserved_observations: int = 0
    vllm_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def observe(self, predicted: MemoryEstimate, observed: dict[str, Any]) -> Calibration:
        """Folds one engine start into the calibration.

        Args:
            predicted: The estimate made for that engine's configuration *with
                this calibration applied*.
            observed: Parsed startup numbers (keys ``weights_gib``,
                ``activation_peak_gib``, ``non_torch_gib``, ``cudagraph_gib``;
                missing or None keys are skipped).

        Returns:
            A new calibration; ``self`` is unchanged.
        """
        n = self.observations
        new = Calibration(**self.to_dict())
        pairs = (
            ("weights_scale", "weights_gib", predicted.raw_weights_gib),
            ("activation_scale", "activation_peak_gib", predicted.raw_activation_peak_gib),
            ("non_torch_scale", "non_torch_gib", predicted.raw_non_torch_gib),
            ("cudagraph_scale", "cudagraph_gib", predicted.raw_cudagraph_gib),
        )
        for attr, key, raw in pairs:
            obs = observed.get(key)
            if obs is None or raw <= 1e-6:
                continue
            ratio = float(obs) / raw
            setattr(new, attr, (getattr(self, attr) * n + ratio) / (n + 1))
        terms = [observed.get(k) for k in ("weights_gib", "activation_peak_gib", "non_torch_gib", "kv_cache_gib")]
        if predicted.device == "gpu" and None not in terms and predicted.raw_cudagraph_gib > 1e-6:
            w, a, nt, kv = (float(t) for t in terms)  # type: ignore[arg-type]
            residual = max(0.0, predicted.raw_requested_gib - w - a - nt - kv)
            ratio = residual / predicted.raw_cudagraph_gib
            # The reservation is a rule of the release: a start of another release starts it afresh.
            same = self.vllm_version in (None, predicted.vllm_version)
            prev = self.cudagraph_reserved_ratio if same else None
            k = (self.cudagraph_reserved_observations or n) if prev is not None else 0  # this release's starts
            new.cudagraph_reserved_ratio = ratio if prev is None else (prev * k + ratio) / (k + 1)
            new.cudagraph_reserved_observations = k + 1
        new.observations = n + 1
        new.vllm_version = predicted.vllm_version or self.vllm_version
        return new


@dataclass
class StageEstimate:
    """Per-GPU memory of one pipeline stage."""

    stage: int
    layers: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    kv_cache_bytes: int
    num_blocks: int


@dataclass
class MemoryEstimate:
    """What vLLM is predicted to report at startup, per GPU of one replica.

    All ``*_gib`` figures are per GPU (the worst pipeline stage); token and
    concurrency figures are per engine replica, as vLLM logs them.
    ``max_concurrency_total`` multiplies by the data-parallel size.
    ``reason_code`` names why it does not fit, as :mod:`vtune._checks` reports it:
    ``invalid_parallel_layout``, ``not_enough_gpus``, ``max_model_len_above_model``,
    ``weights_do_not_fit`` or ``kv_cache_too_small``. ``vllm_version`` is the release whose
    accounting was followed (``X.Y.Z``); ``cudagraph_reserved_gib`` the part of the CUDA-graph
    memory taken out of the KV cache before it was sized (0 where the release or runner does not).
    """

    device: str
    gpu: str
    total_memory_gib: float
    gpu_memory_utilization: float
    requested_memory_gib: float
    weights_gib: float
    activation_peak_gib: float
    non_torch_gib: float
    cudagraph_gib: float
    kv_cache_gib: float
    kv_cache_tokens: int
    num_blocks: int
    block_size: int
    kv_bytes_per_token: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_concurrency: float
    max_concurrency_total: float
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    fits: bool
    reason: str | None
    reason_code: str | None = None
    kv_groups: int = 1
    padding_layers: int = 0
    sliding_window_credited: bool = False
    notes: list[str] = field(default_factory=list)
    raw_weights_gib: float = 0.0
    raw_activation_peak_gib: float = 0.0
    raw_non_torch_gib: float = 0.0
    raw_cudagraph_gib: float = 0.0
    raw_requested_gib: float = 0.0
    vllm_version: str = ""
    cudagraph_reserved_gib: float = 0.0
    encoder_cache_gib: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; GiB rounded to 4 decimals, concurrency to 2."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = round(v, 2 if k.startswith("max_concurrency") else 4)
        return out


# ----------------------------------------------------------------- defaults
@dataclass(frozen=True)
class _Resolved:
    tp: int
    pp: int
    dp: int
    max_model_len: int
    util: float
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    weight_bytes: float
    kv_bytes: int
    quant: QuantShape | None
    enforce_eager: bool
    async_scheduling: bool
    rules: VersionRules


def _resolve(shape: ModelShape, cfg: ServeConfig, gpu: Gpu | None, device: str,
             version: str | None = None) -> _Resolved:
    tp, pp, dp = cfg.tp, cfg.pp, cfg.dp
    for flag, value in (("--tensor-parallel-size", tp), ("--pipeline-parallel-size", pp),
                        ("--data-parallel-size", dp)):
        if value < 1:
            raise VtuneError(f"{flag} must be >= 1, got {value}")
    rules = version_rules(version)
    util = default_gpu_memory_utilization(rules.version) if cfg.gpu_memory_utilization is None \
        else cfg.gpu_memory_utilization
    if not 0 < util <= 1:
        raise VtuneError(f"--gpu-memory-utilization must be in (0, 1], got {util}")
    mml = shape.max_position_embeddings if cfg.max_model_len is None else cfg.max_model_len
    if mml < 1:
        raise VtuneError(f"--max-model-len must be >= 1, got {mml}")
    if device != "cpu" and gpu is None:
        gpu = resolve_gpu(None)  # the GPU estimate_memory assumes, so the batch tier matches it
    seqs, tokens = resolve_batch_limits(
        cfg.max_num_seqs, cfg.max_num_batched_tokens, max_model_len=mml,
        enable_chunked_prefill=cfg.enable_chunked_prefill, device=device, gpu=gpu, world_size=tp * pp,
        version=rules.version)
    for flag, value in (("--max-num-seqs", seqs), ("--max-num-batched-tokens", tokens)):
        if value < 1:
            raise VtuneError(f"{flag} must be >= 1, got {value}")
    block = cfg.block_size or default_block_size(device, version=rules.version, mla=shape.mla is not None, gpu=gpu)
    dtype = (cfg.dtype or "auto").lower()
    if dtype == "auto":
        dtype = shape.dtype
        if dtype in ("float32", "float"):
            # vLLM's _resolve_auto_dtype downcasts fp32 checkpoints to the platform's first
            # supported dtype: bfloat16 on Ampere+ GPUs and on x86/aarch64 CPUs.
            dtype = "bfloat16"
    dt_bytes = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}.get(dtype)
    if dt_bytes is None:
        raise VtuneError(f"--dtype {cfg.dtype}: use auto, bfloat16, float16 or float32")
    kv_dtype = (cfg.kv_cache_dtype or "auto").lower()
    if kv_dtype == "auto":
        kv_bytes = dt_bytes
    elif kv_dtype.startswith("fp8") or kv_dtype in ("int8", "nvfp4"):
        kv_bytes = 1
    elif kv_dtype in ("bfloat16", "float16", "half"):
        kv_bytes = 2
    elif kv_dtype in ("float32", "float"):
        kv_bytes = 4
    else:
        raise VtuneError(f"--kv-cache-dtype {cfg.kv_cache_dtype}: use auto, fp8, fp8_e4m3, fp8_e5m2 or bfloat16")
    quant = quant_from_method(cfg.quantization) if cfg.quantization else shape.quant
    # Async scheduling is on by default on GPUs (VllmConfig.__post_init__) and forced off on CPU.
    async_sched = device != "cpu" and (ASYNC_SCHEDULING_GPU if cfg.async_scheduling is None else cfg.async_scheduling)
    return _Resolved(tp, pp, dp, mml, util, seqs, tokens, block, float(dt_bytes), kv_bytes, quant,
                     bool(cfg.enforce_eager) or device == "cpu", async_sched, rules)


def check_layout(shape: ModelShape, tp: int, pp: int) -> str | None:
    """Why vLLM would reject this TP/PP layout for the model, or None."""
    if shape.num_heads % tp:
        return f"tensor-parallel-size {tp} does not divide the {shape.num_heads} attention heads"
    kvh = shape.num_kv_heads
    if shape.mla is None and (kvh % tp if kvh >= tp else tp % kvh):
        return f"tensor-parallel-size {tp} and the {kvh} KV heads do not divide one another"
    if pp > shape.num_layers:
        return f"pipeline-parallel-size {pp} exceeds the {shape.num_layers} layers"
    return None


def pp_partition(num_layers: int, pp: int) -> list[range]:
    """Layers of each pipeline stage, as ``vllm.distributed.utils.get_pp_indices``.

    Layers are split evenly; the remainder goes one each to the stages just
    before the last (the last stage also holds the LM head).
    """
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    out, start = [], 0
    for s in sizes:
        out.append(range(start, start + s))
        start += s
    return out


# ------------------------------------------------------- measured terms (GPU)
def _capture_sizes(r: _Resolved, cfg: ServeConfig, gpu: Gpu | None = None) -> list[int]:
    """CUDA-graph capture sizes as vLLM's ``_set_cudagraph_sizes`` picks them."""
    if r.enforce_eager:
        return []
    if cfg.max_cudagraph_capture_size:
        limit = min(cfg.max_cudagraph_capture_size, r.max_num_batched_tokens)
    else:
        limit = default_max_cudagraph_capture_size(r.max_num_seqs, r.max_num_batched_tokens, gpu=gpu,
                                                   version=r.rules.version)
    sizes = [s for s in (1, 2, 4) if s <= limit]
    sizes += list(range(8, min(limit + 1, 256), 8))
    if limit >= 256:
        sizes += list(range(256, limit + 1, 16))
    # 0.20.1 on: max_num_batched_tokens is captured when it fits; 0.31 on: max_num_seqs too.
    extra = [r.max_num_batched_tokens] if r.rules.capture_appends_batched_tokens else []
    if r.rules.capture_appends_max_num_seqs:
        extra.append(r.max_num_seqs)
    for size in extra:
        if size <= min(limit, r.max_num_batched_tokens) and size not in sizes:
            sizes.append(size)
    return sorted(sizes)


def _q_width(shape: ModelShape, tp: int) -> float:
    """Query projection width per TP rank."""
    if shape.mla:
        return shape.num_heads * (shape.mla.qk_nope_head_dim + shape.mla.qk_rope_head_dim) / tp
    return shape.num_heads * shape.head_dim / tp


def _qkv_width(shape: ModelShape, tp: int) -> float:
    """q + k + v projection width per TP rank (latent KV for MLA)."""
    if shape.mla:
        return _q_width(shape, tp) + shape.mla.kv_lora_rank + shape.mla.qk_rope_head_dim
    return _q_width(shape, tp) + 2 * max(1, shape.num_kv_heads // tp) * shape.head_dim


#: MoE architectures that vLLM 0.26 runs on the V2 model runner all the same
#: (``vllm/config/vllm.py`` ``DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES``; other releases in
#: :data:`vtune._vllm_versions.RULE_CHANGES`).
V2_RUNNER_MOE_ARCHITECTURES = version_rules("0.26.0").v2_runner_architectures


def uses_v1_model_runner(shape: ModelShape, version: str | None = None) -> bool:
    """Whether vLLM runs the model on the V1 model runner (else V2) by default.

    The rule of each release is :meth:`vtune._vllm_versions.VersionRules.uses_v2_runner`: V1 for
    everything up to 0.21, V2 for more models release after release (0.26: every dense model and
    the MoE ones of :data:`V2_RUNNER_MOE_ARCHITECTURES`), V2 for every model from 0.29. Seen in
    the 0.26 logs: the Qwen3-30B-A3B start has no "Using V2 Model Runner" line, the DeepSeek-V2-Lite
    one has. Only the V1 runner takes its CUDA-graph memory estimate out of the KV cache. vLLM's
    "hybrid" exclusion (``ModelConfig.is_hybrid``) means Mamba + attention models, which vtune does
    not model: sliding-window + full attention models (Gemma 2/3, GPT-OSS) are not hybrid there.

    Args:
        shape: The model.
        version: vLLM version (None: the installed one).
    """
    rules = version_rules(version)
    quantized = shape.quant is not None
    return not rules.uses_v2_runner(shape.architectures, is_moe=shape.moe is not None, is_hybrid=False,
                                    is_quantized=quantized)


def _gpu_terms(
    shape: ModelShape, r: _Resolved, cfg: ServeConfig, c: GpuConstants, stage: int, n_layers: int,
    gpu: Gpu | None = None,
) -> tuple[float, float, float]:
    """(activation peak, non-torch, CUDA-graph) bytes of one GPU, uncalibrated.

    See :class:`GpuConstants` for each formula's terms and where they came from.
    """
    t, tp, dt, h = r.max_num_batched_tokens, r.tp, r.weight_bytes, shape.hidden_size
    embed = _padded_vocab(shape) / tp * h * dt
    activation = c.act_embed_copies * embed + t * c.act_token_width * (h + _q_width(shape, tp)) * dt
    if shape.moe and any(shape.moe_layers):
        moe = shape.moe
        activation += t * moe.top_k * (2 * moe.expert_intermediate_size / tp + h) * dt * c.act_moe_factor
    non_torch = (c.non_torch_parallel_gib if tp * r.pp > 1 else c.non_torch_gib) * GIB
    sizes = _capture_sizes(r, cfg, gpu)
    graphs = 0.0
    if sizes:
        factor = c.cudagraph_moe_factor if shape.moe else c.cudagraph_width_factor
        width = _qkv_width(shape, tp) + _q_width(shape, tp) + 2 * h
        graphs = max(sizes) * n_layers * width * dt * factor
    return activation, non_torch, graphs


# ------------------------------------------------------------------ KV cache
@dataclass(frozen=True)
class _KvLayout:
    groups: list[list[int]]  # layer indices of each KV cache group
    kinds: list[str]  # "full" / "sliding" per group
    padding_layers: int
    credited: bool


def _kv_groups(shape: ModelShape, hybrid_manager: bool) -> _KvLayout:
    """KV cache groups as ``get_kv_cache_groups`` builds them.

    Kinds per layer come from :func:`vtune._model_shape._layer_kinds`: ``sliding`` for Gemma 2/3's
    ``layer_types`` and gpt-oss's even layers (whose attention sinks are a per-head parameter and add
    no KV), ``cross`` for Llama 3.2 Vision's cross-attention layers (``CrossAttentionSpec``; vLLM
    refuses that model since 0.10.2, see :func:`vtune._model_shape.vllm_refuses`). MLA layers are
    one latent "head" on every TP rank (:func:`_per_layer_token_bytes`).

    Uniform models get one group. Mixed sliding/full models, with the hybrid
    KV cache manager on (GPUs, unless disabled), get groups of equal size:
    the smallest type's layer count (or the largest when within 1.5x), each
    type split into ``ceil(n / size)`` groups with layers ``[i::groups]``, short
    groups padded. With the manager off (CPU, ``--disable-hybrid-kv-cache-manager``)
    sliding layers are charged as full attention (``unify_hybrid_kv_cache_specs``).
    """
    kinds = list(shape.layer_kinds)
    if len(set(kinds)) == 1:
        return _KvLayout([list(range(len(kinds)))], [kinds[0]], 0, kinds[0] == "sliding")
    if not hybrid_manager:
        return _KvLayout([list(range(len(kinds)))], ["full"], 0, False)
    by_kind: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        by_kind.setdefault(k, []).append(i)
    counts = [len(v) for v in by_kind.values()]
    size = min(counts)
    if max(counts) < size * 1.5:
        size = max(counts)
    groups, gkinds, padding = [], [], 0
    for kind, layers in by_kind.items():
        n_groups = -(-len(layers) // size)
        padding += n_groups * size - len(layers)
        for i in range(n_groups):
            groups.append(layers[i::n_groups])
            gkinds.append(kind)
    return _KvLayout(groups, gkinds, padding, True)


def _per_layer_token_bytes(shape: ModelShape, r: _Resolved) -> int:
    """KV bytes per token per layer on one GPU (vLLM's page size / block size)."""
    if shape.mla:
        # Latent KV: one "head" of kv_lora_rank + rope dims, replicated on every TP rank.
        return (shape.mla.kv_lora_rank + shape.mla.qk_rope_head_dim) * r.kv_bytes
    kv_heads = max(1, shape.num_kv_heads // r.tp)
    return 2 * kv_heads * shape.head_dim * r.kv_bytes


def _blocks_per_request(layout: _KvLayout, shape: ModelShape, r: _Resolved, cfg: ServeConfig) -> int:
    """Blocks one max_model_len request needs across all groups (one page each)."""
    full = -(-r.max_model_len // r.block_size)
    # VllmConfig.max_in_flight_tokens: one batch per concurrent step; async scheduling keeps two
    # in flight with one pipeline stage, otherwise there are as many as stages (V1 model runner).
    concurrent = 2 if r.async_scheduling and r.pp == 1 else r.pp
    total = 0
    for kind in layout.kinds:
        if kind == "sliding" and layout.credited and shape.sliding_window:
            total += r.rules.sliding_window_blocks(  # one batch up to 0.25, every in-flight batch from 0.26
                sliding_window=shape.sliding_window, block_size=r.block_size,
                max_num_batched_tokens=r.max_num_batched_tokens, max_model_len=r.max_model_len,
                concurrent_batches=concurrent)
        elif kind == "cross" and layout.credited:
            # CrossAttentionSpec: the encoder's states, max_num_encoder_input_tokens (= batched tokens) long.
            total += -(-r.max_num_batched_tokens // r.block_size)
        else:
            total += full
    return total


# ------------------------------------------------------------------ estimate
def _reported_tokens(r: _Resolved, num_blocks: int, n_groups: int, concurrency: float) -> int:
    """The "KV cache size: N tokens" vLLM logs (``_report_kv_cache_config``, vllm/v1/core/kv_cache_utils.py).

    Up to 0.20.0: ``num_blocks // len(kv_cache_groups) * min block size``; from 0.20.1:
    ``int(max_concurrency * max_model_len)`` (``get_kv_cache_capacity`` from 0.24).
    """
    if r.rules.kv_tokens_from_concurrency:
        return int(concurrency * r.max_model_len)
    return num_blocks // max(1, n_groups) * r.block_size


def kv_capacity(
    shape: ModelShape, cfg: ServeConfig, kv_cache_bytes: float, *, device: str = "gpu", gpu: Gpu | None = None,
    version: str | None = None,
) -> tuple[int, int, float]:
    """Blocks, tokens and max concurrency of a KV cache of a given size per GPU.

    This is the part of vLLM's accounting that is exact arithmetic: given the
    "Available KV cache memory" of a log it reproduces the "KV cache size" and
    "Maximum concurrency" lines of that release (``version``; None: the installed one).

    Returns:
        ``(num_blocks, kv_cache_tokens, max_concurrency)`` for one replica.
    """
    r = _resolve(shape, cfg, gpu, device, version)
    layout = _kv_groups(shape, device != "cpu" and not cfg.disable_hybrid_kv_cache_manager)
    page = _per_layer_token_bytes(shape, r) * r.block_size
    group_size = max(len(g) for g in layout.groups)
    blocks = max(0, int(kv_cache_bytes // page // group_size))
    per_request = _blocks_per_request(layout, shape, r, cfg)
    conc = blocks / per_request
    return blocks, _reported_tokens(r, blocks, len(layout.groups), conc), conc


def estimate_memory(
    shape: ModelShape,
    cfg: ServeConfig,
    gpu: Gpu | None = None,
    *,
    device: str = "gpu",
    calibration: Calibration | None = None,
    constants: GpuConstants = DEFAULT_CONSTANTS,
    num_gpus: int | None = None,
    cpu_kv_cache_gib: float | None = None,
    version: str | None = None,
) -> MemoryEstimate:
    """Predicts vLLM's startup memory accounting for one configuration.

    Args:
        shape: The model's architecture.
        cfg: The serving configuration (unset fields take vLLM's defaults).
        gpu: The GPU model (GPU device only; default H100-80GB).
        device: ``"gpu"`` or ``"cpu"`` (the CPU engine).
        calibration: Corrections from real engine starts.
        constants: Constants of the modelled terms.
        num_gpus: GPUs available; a layout needing more does not fit.
        cpu_kv_cache_gib: CPU engine KV cache space per worker
            (``VLLM_CPU_KVCACHE_SPACE``); defaults to ``cfg.env``, this process's
            environment, then vtune's default
            (:func:`vtune._vllm_defaults.cpu_kv_cache_space_gib`).
        version: The vLLM release whose accounting to follow (``"0.20.2"``, ``"0.26"``; 0.15-0.33;
            None: the installed vLLM, see :func:`vtune._vllm_defaults.target_version`).

    Raises:
        VtuneError: An impossible value (utilization outside (0, 1], TP 0, ...), or a vLLM
            version outside 0.15-0.33.
    """
    if device not in ("gpu", "cpu"):
        raise VtuneError(f"device must be 'gpu' or 'cpu', got {device!r}")
    r = _resolve(shape, cfg, gpu, device, version)
    cal = calibration or Calibration()
    notes: list[str] = []
    reserved_ratio = _cudagraph_reserved_ratio(shape, r, cal, constants, notes)
    reason = check_layout(shape, r.tp, r.pp)
    code = "invalid_parallel_layout" if reason else None
    if reason is None and num_gpus is not None and r.tp * r.pp * r.dp > num_gpus:
        reason = f"needs {r.tp * r.pp * r.dp} GPUs (TP {r.tp} x PP {r.pp} x DP {r.dp}) but {num_gpus} are present"
        code = "not_enough_gpus"
    if r.max_model_len > shape.max_position_embeddings:
        allow = (cfg.env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") or os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")) == "1"
        message = (f"max-model-len {r.max_model_len} exceeds the model's max_position_embeddings "
                   f"{shape.max_position_embeddings}")
        if allow:
            notes.append(message + " (allowed by VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)")
        elif reason is None:
            reason = message + "; vLLM refuses it: lower --max-model-len (or set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)"
            code = "max_model_len_above_model"
    layout = _kv_groups(shape, device != "cpu" and not cfg.disable_hybrid_kv_cache_manager)
    if shape.is_hybrid and not layout.credited:
        notes.append("sliding-window layers are charged as full attention (hybrid KV cache manager off)")
    if layout.padding_layers:
        notes.append(f"vLLM adds {layout.padding_layers} padding layer(s) to equalize KV cache groups")
    page = _per_layer_token_bytes(shape, r) * r.block_size

    space = 0.0
    if device == "cpu":
        total_gib = gpu.memory_gib if gpu else 0.0
        requested = 0
        space, origin = cpu_kv_cache_space_gib(cfg.env, cpu_kv_cache_gib)
        if origin == "vtune default":
            notes.append(f"VLLM_CPU_KVCACHE_SPACE unset: {space:g} GiB assumed (what vtune gives the CPU engine; "
                         "plain vllm serve would take most of the machine's memory)")
    else:
        gpu = gpu or resolve_gpu(None)
        total_gib = gpu.memory_gib
        requested = math.ceil(gpu.memory_bytes * r.util)

    mm = encoder_profile_for(shape, cfg, max_model_len=r.max_model_len, max_num_batched_tokens=r.max_num_batched_tokens,
                             max_num_seqs=r.max_num_seqs, tp=r.tp, dtype_bytes=r.weight_bytes)
    if mm is not None and device != "cpu":
        notes.append(f"multimodal profile: {mm.items_per_batch} {mm.modality} item(s) of {mm.max_tokens_per_item} "
                     f"tokens, {mm.output_bytes / GIB:.2f} GiB of encoder output held at the activation peak")
    stages: list[StageEstimate] = []
    raws: list[tuple[float, float, float, float]] = []
    for s, layers in enumerate(pp_partition(shape.num_layers, r.pp)):
        w_raw = _stage_weights(shape, r, s, layers, cfg)
        if device == "cpu":
            a_raw = nt_raw = cg_raw = 0.0
            kv = space * GIB  # the space is per worker: every TP/PP rank allocates it
        else:
            a_raw, nt_raw, cg_raw = _gpu_terms(shape, r, cfg, constants, s, len(layers), gpu)
            a_raw = multimodal_profile_peak_bytes(mm, a_raw)  # encoder outputs held during the profile run
        w = w_raw * cal.weights_scale
        a = a_raw * cal.activation_scale
        nt = nt_raw * cal.non_torch_scale
        cg = cg_raw * cal.cudagraph_scale
        if device != "cpu":
            kv = requested - w - a - nt - reserved_ratio * cg_raw
        in_stage = set(layers)
        group_size = max(1, max(len([i for i in g if i in in_stage]) for g in layout.groups))
        blocks = max(0, int(kv // page // group_size))
        stages.append(StageEstimate(s, len(layers), int(w), int(a), int(nt), int(cg), int(kv), blocks))
        raws.append((w_raw, a_raw, nt_raw, cg_raw))
    worst_i = min(range(len(stages)), key=lambda i: (stages[i].num_blocks, -stages[i].weights_bytes))
    worst = stages[worst_i]
    heaviest = max(stages, key=lambda st: st.weights_bytes)
    num_blocks = worst.num_blocks
    per_request = _blocks_per_request(layout, shape, r, cfg)
    concurrency = num_blocks / per_request
    tokens = _reported_tokens(r, num_blocks, len(layout.groups), concurrency)

    if reason is None and device != "cpu" and heaviest.weights_bytes >= requested:
        reason = (
            f"weights need {heaviest.weights_bytes / GIB:.2f} GiB per GPU but only "
            f"{requested / GIB:.2f} GiB is requested ({r.util} x {total_gib:.2f} GiB); "
            "raise tensor/pipeline parallelism, quantize, or raise --gpu-memory-utilization"
        )
        code = "weights_do_not_fit"
    if reason is None and worst.kv_cache_bytes <= 0:
        reason = (
            f"no memory left for the KV cache: the rest needs {(requested - worst.kv_cache_bytes) / GIB:.2f} GiB "
            f"of the {requested / GIB:.2f} GiB requested; raise --gpu-memory-utilization or parallelism, "
            "or lower --max-num-batched-tokens"
        )
        code = "kv_cache_too_small"
    if reason is None and num_blocks < per_request:
        need_gib = per_request * page * max(len(g) for g in layout.groups) / GIB
        reason = (
            f"the KV cache ({worst.kv_cache_bytes / GIB:.2f} GiB) cannot hold one request of "
            f"max-model-len {r.max_model_len} ({need_gib:.2f} GiB needed, about {tokens} tokens fit); "
            "lower --max-model-len or give the KV cache more memory"
        )
        code = "kv_cache_too_small"
    raw = raws[worst_i]
    return MemoryEstimate(
        device=device,
        gpu=(gpu.name if gpu else "cpu"),
        total_memory_gib=total_gib,
        gpu_memory_utilization=r.util,
        requested_memory_gib=requested / GIB,
        weights_gib=heaviest.weights_bytes / GIB,
        activation_peak_gib=worst.activation_bytes / GIB,
        non_torch_gib=worst.non_torch_bytes / GIB,
        cudagraph_gib=worst.cudagraph_bytes / GIB,
        kv_cache_gib=max(0, worst.kv_cache_bytes) / GIB,
        kv_cache_tokens=tokens,
        num_blocks=num_blocks,
        block_size=r.block_size,
        kv_bytes_per_token=_per_layer_token_bytes(shape, r) * sum(len(g) for g in layout.groups) // r.pp,
        max_model_len=r.max_model_len,
        max_num_seqs=r.max_num_seqs,
        max_num_batched_tokens=r.max_num_batched_tokens,
        max_concurrency=concurrency,
        max_concurrency_total=concurrency * r.dp,
        tensor_parallel_size=r.tp,
        pipeline_parallel_size=r.pp,
        data_parallel_size=r.dp,
        fits=reason is None,
        reason=reason,
        reason_code=code,
        kv_groups=len(layout.groups),
        padding_layers=layout.padding_layers,
        sliding_window_credited=layout.credited and "sliding" in layout.kinds,
        notes=notes,
        raw_weights_gib=raw[0] / GIB,
        raw_activation_peak_gib=raw[1] / GIB,
        raw_non_torch_gib=raw[2] / GIB,
        raw_cudagraph_gib=raw[3] / GIB,
        raw_requested_gib=requested / GIB,
        vllm_version=r.rules.version,
        cudagraph_reserved_gib=(reserved_ratio * raw[3] / GIB) if device != "cpu" else 0.0,
        encoder_cache_gib=(mm.output_bytes / GIB if mm is not None and device != "cpu" else 0.0),
    )


def _cudagraph_reserved_ratio(shape: ModelShape, r: _Resolved, cal: Calibration, c: GpuConstants,
                              notes: list[str]) -> float:
    """Share of the (uncalibrated) CUDA-graph estimate taken out of the KV cache on this release.

    0 before 0.20 (no estimate, or one only logged) and on the V2 model runner; otherwise
    :attr:`GpuConstants.cudagraph_reserved_fraction`, or what a calibration of the same release learned.
    """
    reserves = r.rules.reserves_cudagraph_memory(shape.architectures, is_moe=shape.moe is not None,
                                                 is_hybrid=False, is_quantized=r.quant is not None)
    ratio = c.cudagraph_reserved_fraction if reserves else 0.0
    if cal.cudagraph_reserved_ratio is not None:
        if cal.vllm_version is None or cal.vllm_version == r.rules.version:
            ratio = cal.cudagraph_reserved_ratio
        else:
            notes.append(f"calibration from vLLM {cal.vllm_version}: its CUDA-graph reservation is not used for "
                         f"{r.rules.version} (the release's rule is)")
    return ratio


def valid_layouts(shape: ModelShape, num_gpus: int) -> list[tuple[int, int, int]]:
    """All (TP, PP, DP) with TP x PP x DP <= num_gpus that vLLM accepts for the model.

    TP and PP range over powers of two and divisors the model allows; DP fills
    the rest. Sorted by TP, then PP, then DP.
    """
    out = []
    for tp in range(1, num_gpus + 1):
        for pp in range(1, num_gpus // tp + 1):
            if check_layout(shape, tp, pp) is not None:
                continue
            for dp in range(1, num_gpus // (tp * pp) + 1):
                out.append((tp, pp, dp))
    return out
