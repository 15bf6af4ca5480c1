"""vLLM's default values, in one place, settled against the source of each release 0.15-0.33.

Every default vtune needs lives here with the releases it holds for and the file and
function it comes from (:data:`TABLE`); code elsewhere imports the constants and functions
below instead of writing a number. Where releases differ the functions take a ``version``
(``"0.26.0"``, ``"0.32"``, any ``X.Y[.Z]`` from 0.15 to 0.33) and read the release's rules
from :mod:`vtune._vllm_versions` (which says, per rule, from which release it holds).
``None`` means the installed vLLM (the one vtune's engines would run), or the newest
supported release when none is installed (:func:`target_version`).

The batch limits of ``vllm serve`` are resolved as
``EngineArgs._set_default_max_num_seqs_and_batched_tokens_args`` does
(:func:`resolve_batch_limits`): tier defaults by device and GPU memory, the
batched tokens raised to max-model-len without chunked prefill and capped at
max-num-seqs x max-model-len, and a defaulted max-num-seqs capped at the batched
tokens (the same in every release 0.15-0.33). Not modelled: ``--performance-mode
throughput`` (doubles both defaults), batched-DP MoE (256 tokens), multimodal prefix-LM
floors, TPUs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vtune._errors import VtuneError
from vtune._vllm_versions import (
    SUPPORTED_SERIES,
    VersionRules,
    parse_series,
    parse_version,
    rules_for,
    version_key,
)

if TYPE_CHECKING:
    from vtune._memory import Gpu

__all__ = [
    "ASYNC_SCHEDULING_GPU",
    "BLOCK_SIZE_CPU",
    "BLOCK_SIZE_GPU",
    "CPU_SERVE_BATCH_PER_RANK",
    "CUDAGRAPH_CAPTURE_LIMIT",
    "CUDAGRAPH_CAPTURE_LIMIT_BLACKWELL",
    "ENABLE_CHUNKED_PREFILL",
    "ENABLE_PREFIX_CACHING",
    "GPU_MEMORY_UTILIZATION",
    "GPU_SERVE_BATCH_TIERS",
    "KNOWN_VERSIONS",
    "TABLE",
    "VTUNE_CPU_KV_CACHE_SPACE_GIB",
    "BatchTier",
    "VllmDefault",
    "cpu_kv_cache_space_gib",
    "default_block_size",
    "default_gpu_memory_utilization",
    "default_max_cudagraph_capture_size",
    "kernel_block_multiple",
    "resolve_batch_limits",
    "serve_batch_defaults",
    "target_series",
    "target_version",
    "use_vllm_version",
    "version_rules",
    "vllm_series",
]

#: The vLLM release series whose source these values were read from (0.15 to 0.33).
KNOWN_VERSIONS = SUPPORTED_SERIES
_ALL = KNOWN_VERSIONS


def _span(first: str, last: str = SUPPORTED_SERIES[-1]) -> tuple[str, ...]:
    """The series from ``first`` to ``last``, both included."""
    return tuple(v for v in SUPPORTED_SERIES if version_key(first) <= version_key(v) <= version_key(last))


_GIB = 1 << 30

# ------------------------------------------------------------------ constants
#: ``--gpu-memory-utilization`` of the newest releases: ``CacheConfig.gpu_memory_utilization =
#: Field(default=0.92, gt=0, le=1)`` (vllm/config/cache.py, 0.20.0 to 0.33; 0.9 in 0.15-0.19, see
#: :func:`default_gpu_memory_utilization`). On the CPU engine the same fraction of the NUMA node's
#: memory is requested (vllm/v1/worker/cpu_worker.py ``CPUWorker.__init__``).
GPU_MEMORY_UTILIZATION = 0.92

#: ``CacheConfig.DEFAULT_BLOCK_SIZE`` (vllm/config/cache.py, 0.18 on; ``CudaPlatform.check_and_update_config``
#: sets 16 when unset in 0.15-0.17). ``Platform.update_block_size_for_backend`` (vllm/platforms/interface.py,
#: 0.18 on) keeps it when the first backend of ``_get_backend_priorities`` (vllm/platforms/cuda.py) takes it:
#: FLASH_ATTN (``MultipleOf(16)``) and, for MLA models on Hopper, FLASH_ATTN_MLA (``MultipleOf(16)``). Seen: the
#: DeepSeek-V2-Lite start on an H200 (vLLM 0.26) reported 3,285,008 KV tokens, which is 16-token blocks
#: (64-token blocks give 3,284,992). In 0.15-0.17 MLA models on Hopper/Blackwell get 64 (FlashMLA), see
#: :func:`default_block_size`.
BLOCK_SIZE_GPU = 16
#: CPU engine: ``CpuPlatform.check_and_update_config`` sets 128 unless ``--block-size`` is given
#: (vllm/platforms/cpu.py, 0.15-0.33; MLA models get 16 from 0.28).
BLOCK_SIZE_CPU = 128

#: Prefix caching: on for generative decoder models (``CacheConfig.enable_prefix_caching = True``;
#: ``EngineArgs._set_default_chunked_prefill_and_prefix_caching_args`` takes
#: ``ModelConfig.is_prefix_caching_supported``: off only for attention-free and encoder-decoder models).
#: 0.26-0.27 also keep it off by default for vLLM's hybrid (Mamba + attention, ``ModelConfig.is_hybrid``)
#: models; 0.28 on turn it on for them. vtune models no Mamba layers.
ENABLE_PREFIX_CACHING = True
#: Chunked prefill: on for generative models (``ModelConfig.is_chunked_prefill_supported``:
#: off for encoder-decoder models), vllm/engine/arg_utils.py, 0.15-0.33.
ENABLE_CHUNKED_PREFILL = True
#: Async scheduling: ``SchedulerConfig.async_scheduling = None`` becomes True on GPUs unless an
#: incompatible option is on (non-EAGLE speculation, an executor other than mp/uni/external_launcher;
#: ``VllmConfig.__post_init__``, vllm/config/vllm.py, 0.15-0.33) and is forced False on the CPU engine
#: (``CpuPlatform.check_and_update_config``).
ASYNC_SCHEDULING_GPU = True

#: Largest CUDA-graph capture size when ``--max-cudagraph-capture-size`` is unset:
#: ``min(2 x max_num_seqs x decode_query_len, 512)``, then at most max-num-batched-tokens
#: (``VllmConfig._set_cudagraph_sizes``, vllm/config/vllm.py, 0.15-0.33).
CUDAGRAPH_CAPTURE_LIMIT = 512
#: The same ceiling on data-center Blackwell (compute capability family 100: B200, B300), 0.28 on.
CUDAGRAPH_CAPTURE_LIMIT_BLACKWELL = 1024
_BLACKWELL_DC = ("B200", "B300", "GB200", "GB300")
#: GPUs on which FlashMLA (compute capability 9.0 / 10.x) picks the MLA block size in 0.15-0.17.
_SM90_PLUS = ("H100", "H200", "H20", "GH200", *_BLACKWELL_DC)

#: KV cache space (GiB, ``VLLM_CPU_KVCACHE_SPACE``) vtune gives the CPU engine when none is set.
#: vLLM itself has no fixed default: without the variable (or ``--kv-cache-memory-bytes``) it takes
#: ``gpu_memory_utilization`` x the NUMA node's memory less what the worker already uses
#: (``CPUWorker.determine_available_memory``, vllm/v1/worker/cpu_worker.py, 0.20 on), i.e.
#: most of the machine. Older releases (<= 0.18) defaulted to 4 GiB, then 5 GiB ("VLLM_CPU_KVCACHE_SPACE
#: not set. Using 5.0 GiB for KV cache.").
VTUNE_CPU_KV_CACHE_SPACE_GIB = 2


@dataclass(frozen=True)
class BatchTier:
    """One row of ``EngineArgs.get_batch_defaults`` for ``vllm serve`` (``UsageContext.OPENAI_API_SERVER``).

    Attributes:
        min_memory_gib: The GPU's total memory must be at least this (``device_memory >= N * GiB_bytes``).
        excluded_name: A device-name substring that drops the GPU to the next tier (``"a100"``).
        max_num_batched_tokens: Default ``--max-num-batched-tokens``.
        max_num_seqs: Default ``--max-num-seqs``.
        versions: Release series that have this tier.
    """

    min_memory_gib: float
    excluded_name: str | None
    max_num_batched_tokens: int
    max_num_seqs: int
    versions: tuple[str, ...]


#: GPU tiers, first match wins (vllm/engine/arg_utils.py ``EngineArgs.get_batch_defaults``). The
#: >= 160 GiB tier (B200/B300) is new in 0.28; before, such GPUs get the >= 70 GiB row.
GPU_SERVE_BATCH_TIERS = (
    BatchTier(160.0, None, 16384, 1024, _span("0.28")),
    BatchTier(70.0, "a100", 8192, 1024, _ALL),
    BatchTier(0.0, None, 2048, 256, _ALL),
)
#: CPU engine: (batched tokens, seqs) per TP x PP rank (``get_batch_defaults``, ``current_platform.is_cpu()``).
CPU_SERVE_BATCH_PER_RANK = (2048, 128)


@dataclass(frozen=True)
class VllmDefault:
    """One default value, the releases it holds for and where it is set.

    Attributes:
        name: What it is (a flag, or ``flag[condition]``).
        value: The value.
        versions: Release series whose source says so.
        source: ``file function`` in vLLM's source tree.
    """

    name: str
    value: Any
    versions: tuple[str, ...]
    source: str


_ARGS = "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults"
_CPU_KERNEL = "vllm/v1/attention/backends/cpu_attn.py CPUAttentionBackend.get_supported_kernel_block_sizes"
_PREFIX = "vllm/engine/arg_utils.py EngineArgs._set_default_chunked_prefill_and_prefix_caching_args"
_SIZES = "vllm/config/vllm.py VllmConfig._set_cudagraph_sizes"
#: Every default above as one table (what ``tests/test_vllm_defaults.py`` pins).
TABLE: tuple[VllmDefault, ...] = (
    VllmDefault("gpu_memory_utilization", 0.9, _span("0.15", "0.19"),
                "vllm/config/cache.py CacheConfig.gpu_memory_utilization"),
    VllmDefault("gpu_memory_utilization", GPU_MEMORY_UTILIZATION, _span("0.20"),
                "vllm/config/cache.py CacheConfig.gpu_memory_utilization"),
    VllmDefault("max_num_batched_tokens[gpu>=160GiB]", 16384, _span("0.28"), _ARGS),
    VllmDefault("max_num_seqs[gpu>=160GiB]", 1024, _span("0.28"), _ARGS),
    VllmDefault("max_num_batched_tokens[gpu>=70GiB,not A100]", 8192, _ALL, _ARGS),
    VllmDefault("max_num_seqs[gpu>=70GiB,not A100]", 1024, _ALL, _ARGS),
    VllmDefault("max_num_batched_tokens[other gpu]", 2048, _ALL, _ARGS),
    VllmDefault("max_num_seqs[other gpu]", 256, _ALL, _ARGS),
    VllmDefault("max_num_batched_tokens[cpu, per TPxPP rank]", CPU_SERVE_BATCH_PER_RANK[0], _ALL, _ARGS),
    VllmDefault("max_num_seqs[cpu, per TPxPP rank]", CPU_SERVE_BATCH_PER_RANK[1], _ALL, _ARGS),
    VllmDefault("block_size[gpu]", BLOCK_SIZE_GPU, _ALL, "vllm/config/cache.py CacheConfig.DEFAULT_BLOCK_SIZE"),
    VllmDefault("block_size[gpu, MLA on Hopper]", 64, _span("0.15", "0.17"),
                "vllm/platforms/cuda.py CudaPlatform.check_and_update_config (FlashMLA)"),
    VllmDefault("block_size[gpu, MLA on Hopper]", BLOCK_SIZE_GPU, _span("0.18"),
                "vllm/platforms/cuda.py _get_backend_priorities (FLASH_ATTN_MLA first)"),
    VllmDefault("block_size[cpu]", BLOCK_SIZE_CPU, _ALL, "vllm/platforms/cpu.py CpuPlatform.check_and_update_config"),
    VllmDefault("block_size[cpu, MLA]", 16, _span("0.28"), "vllm/platforms/cpu.py CpuPlatform.check_and_update_config"),
    VllmDefault("kernel_block_multiple[gpu]", 16, _ALL,
                "vllm/v1/attention/backends/flash_attn.py FlashAttentionBackend.get_supported_kernel_block_sizes"),
    VllmDefault("kernel_block_multiple[cpu]", 16, _span("0.15", "0.28"), _CPU_KERNEL),
    VllmDefault("kernel_block_multiple[cpu]", 32, _span("0.29"), _CPU_KERNEL),
    VllmDefault("enable_prefix_caching", ENABLE_PREFIX_CACHING, _ALL, _PREFIX),
    VllmDefault("enable_prefix_caching[Mamba-hybrid models]", False, _span("0.26", "0.27"), _PREFIX),
    VllmDefault("enable_prefix_caching[Mamba-hybrid models]", True, _span("0.28"), _PREFIX),
    VllmDefault("enable_chunked_prefill", ENABLE_CHUNKED_PREFILL, _ALL, _PREFIX),
    VllmDefault("async_scheduling[gpu]", ASYNC_SCHEDULING_GPU, _ALL, "vllm/config/vllm.py VllmConfig.__post_init__"),
    VllmDefault("async_scheduling[cpu]", False, _ALL, "vllm/platforms/cpu.py CpuPlatform.check_and_update_config"),
    VllmDefault("max_cudagraph_capture_size ceiling", CUDAGRAPH_CAPTURE_LIMIT, _ALL, _SIZES),
    VllmDefault("max_cudagraph_capture_size ceiling[B200/B300]", CUDAGRAPH_CAPTURE_LIMIT_BLACKWELL, _span("0.28"),
                _SIZES),
    VllmDefault("VLLM_CPU_KVCACHE_SPACE", None, _span("0.20"),
                "vllm/v1/worker/cpu_worker.py CPUWorker.determine_available_memory"),
)


# -------------------------------------------------------------------- versions
def vllm_series(version: str | None) -> str:
    """The release series (``"0.15"`` ... ``"0.33"``) of ``version``.

    Args:
        version: A vLLM version (``"0.26.0"``, ``"0.32.0+cpu"``, ``"0.32"``), or None for
            :func:`target_series`.

    Raises:
        VtuneError: A version that is not ``X.Y[...]``, or one outside 0.15-0.33.
    """
    if version is None:
        return target_series()
    return parse_series(version, flag="vLLM version")


def version_rules(version: str | None) -> VersionRules:
    """The rules of ``version`` (None: :func:`target_version`), see :func:`vtune._vllm_versions.rules_for`."""
    return rules_for(target_version() if version is None else version)


#: The release set by :func:`use_vllm_version` (the CLI's ``--vllm-version``); None: the installed one.
_ASKED_VERSION: str | None = None


def use_vllm_version(version: str | None) -> str:
    """Makes ``version`` the release that estimates follow when they are given none (``--vllm-version``).

    Args:
        version: ``X.Y[.Z]`` in 0.15-0.33, or None to go back to the installed vLLM.

    Returns:
        The release now in force (:func:`target_version`).

    Raises:
        VtuneError: Not a version, or outside 0.15-0.33 (one line naming ``--vllm-version``).
    """
    global _ASKED_VERSION
    _ASKED_VERSION = parse_version(version) if version else None
    return target_version()


def target_version() -> str:
    """The release estimates follow by default, ``X.Y.Z``.

    The one :func:`use_vllm_version` set, else the installed vLLM's (clamped to 0.15-0.33),
    else the newest supported when none is installed. An installed release outside the range gets
    the rules of the nearest supported one (a plan for another release is asked with
    ``--vllm-version``).
    """
    return _ASKED_VERSION or _installed_target()


@functools.lru_cache(maxsize=1)
def _installed_target() -> str:
    from vtune.engines._launcher import installed_vllm_version

    installed = installed_vllm_version()
    if not installed:
        return f"{SUPPORTED_SERIES[-1]}.0"
    try:
        return parse_version(installed)
    except VtuneError:
        head = installed.split("+")[0]
        key = version_key(head) if head[:1].isdigit() and head.replace(".", "").isdigit() else (0, 99, 0)
        return f"{SUPPORTED_SERIES[0]}.0" if key < version_key(SUPPORTED_SERIES[0]) else f"{SUPPORTED_SERIES[-1]}.0"


def target_series() -> str:
    """The release series of :func:`target_version`."""
    return ".".join(target_version().split(".")[:2])


# ---------------------------------------------------------------- batch limits
def serve_batch_defaults(
    device: str, gpu: Gpu | None, *, world_size: int = 1, version: str | None = None
) -> tuple[int, int]:
    """``vllm serve``'s default ``(max_num_batched_tokens, max_num_seqs)`` before any capping.

    Args:
        device: ``"gpu"`` or ``"cpu"``.
        gpu: The GPU (its total memory and name); None on a GPU counts as 0 GiB, as vLLM does
            when it cannot query the device.
        world_size: TP x PP of one replica (the CPU defaults scale with it).
        version: vLLM version (None: :func:`target_version`).
    """
    if device == "cpu":
        tokens, seqs = CPU_SERVE_BATCH_PER_RANK
        return tokens * world_size, seqs * world_size
    rules = version_rules(version)
    memory_gib = gpu.memory_gib if gpu else 0.0
    name = gpu.name.lower() if gpu else ""
    for tier in GPU_SERVE_BATCH_TIERS:
        if rules.series not in tier.versions or memory_gib < tier.min_memory_gib:
            continue
        if tier.excluded_name and tier.excluded_name in name:
            continue
        if tier.min_memory_gib >= 70 and rules.gb10_small_tier and "gb10" in name:
            continue
        return tier.max_num_batched_tokens, tier.max_num_seqs
    raise AssertionError("the last tier has no condition")  # pragma: no cover


def resolve_batch_limits(
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    *,
    max_model_len: int,
    enable_chunked_prefill: bool | None,
    device: str,
    gpu: Gpu | None,
    world_size: int = 1,
    version: str | None = None,
) -> tuple[int, int]:
    """The ``(max_num_seqs, max_num_batched_tokens)`` the engine will run with.

    As ``EngineArgs._set_default_max_num_seqs_and_batched_tokens_args`` (vllm/engine/arg_utils.py,
    0.15-0.33): a value the user set is kept as is; a defaulted batched-tokens value is raised
    to max-model-len without chunked prefill and capped at seqs x max-model-len; a defaulted
    max-num-seqs is capped at the batched tokens.

    Args:
        max_num_seqs: ``--max-num-seqs`` (None: default).
        max_num_batched_tokens: ``--max-num-batched-tokens`` (None: default).
        max_model_len: The resolved max-model-len.
        enable_chunked_prefill: ``--[no-]enable-chunked-prefill`` (None: :data:`ENABLE_CHUNKED_PREFILL`).
        device: ``"gpu"`` or ``"cpu"``.
        gpu: The GPU (see :func:`serve_batch_defaults`).
        world_size: TP x PP.
        version: vLLM version (None: :func:`target_version`).
    """
    d_tokens, d_seqs = serve_batch_defaults(device, gpu, world_size=world_size, version=version)
    seqs = d_seqs if max_num_seqs is None else max_num_seqs
    if max_num_batched_tokens is not None:
        tokens = max_num_batched_tokens
    else:
        chunked = ENABLE_CHUNKED_PREFILL if enable_chunked_prefill is None else enable_chunked_prefill
        tokens = d_tokens if chunked else max(max_model_len, d_tokens)
        tokens = min(seqs * max_model_len, tokens)
    if max_num_seqs is None:
        seqs = min(seqs, tokens)
    return seqs, tokens


# ------------------------------------------------------------------- KV cache
def default_gpu_memory_utilization(version: str | None = None) -> float:
    """vLLM's default ``--gpu-memory-utilization``: 0.9 in 0.15-0.19, 0.92 from 0.20."""
    return version_rules(version).gpu_memory_utilization


def default_block_size(device: str, *, version: str | None = None, mla: bool = False,
                       gpu: Gpu | None = None) -> int:
    """Tokens per KV block when ``--block-size`` is not given (see the ``BLOCK_SIZE_*`` constants).

    Args:
        device: ``"gpu"`` or ``"cpu"``.
        version: vLLM version (None: :func:`target_version`); only MLA models depend on it.
        mla: The model uses multi-head latent attention.
        gpu: The GPU (MLA on Hopper/Blackwell in 0.15-0.17 takes FlashMLA's 64).
    """
    if device == "cpu":
        return version_rules(version).cpu_mla_block_size if mla else BLOCK_SIZE_CPU
    if mla:
        name = gpu.name.upper() if gpu else "H100"
        if any(n in name for n in _SM90_PLUS):
            return version_rules(version).mla_block_size_sm90
    return BLOCK_SIZE_GPU


def kernel_block_multiple(device: str, *, version: str | None = None) -> int:
    """What a ``--block-size`` must be a multiple of for the attention kernel to take it.

    GPU: FlashAttention's ``MultipleOf(16)`` (FlashAttention-MLA's too).
    CPU: ``CPUAttentionBackend.get_supported_kernel_block_sizes``: ``MultipleOf(16)`` up to 0.28,
    ``MultipleOf(32)`` from 0.29; a size it does not take fails ``select_common_block_size``
    (vllm/v1/worker/utils.py) when the KV cache is set up.
    """
    if device == "cpu":
        return version_rules(version).cpu_kernel_block_multiple
    return 16


def default_max_cudagraph_capture_size(
    max_num_seqs: int, max_num_batched_tokens: int, *, gpu: Gpu | None = None, version: str | None = None
) -> int:
    """The largest CUDA-graph capture size when ``--max-cudagraph-capture-size`` is unset.

    ``min(2 x max_num_seqs, ceiling, max_num_batched_tokens)`` without speculative decoding
    (``VllmConfig._set_cudagraph_sizes``); the ceiling is 512, or 1024 on B200/B300 from 0.28.
    """
    ceiling = CUDAGRAPH_CAPTURE_LIMIT
    name = gpu.name.upper() if gpu else ""
    if any(b in name for b in _BLACKWELL_DC):
        ceiling = version_rules(version).cudagraph_capture_ceiling_blackwell
    return min(max_num_seqs * 2, ceiling, max_num_batched_tokens)


def cpu_kv_cache_space_gib(env: Mapping[str, str], explicit_gib: float | None = None) -> tuple[float, str]:
    """The CPU engine's KV cache space and where it came from.

    In order: ``explicit_gib`` (``--cpu-kv-cache-gib``), ``env`` (the configuration's
    ``VLLM_CPU_KVCACHE_SPACE``), this process's environment (an engine vtune starts inherits it),
    then :data:`VTUNE_CPU_KV_CACHE_SPACE_GIB`.

    Returns:
        ``(GiB, origin)``, origin one of ``"flag"``, ``"config"``, ``"environment"``, ``"vtune default"``.

    Raises:
        VtuneError: A ``VLLM_CPU_KVCACHE_SPACE`` that is not a number.
    """
    if explicit_gib is not None:
        return float(explicit_gib), "flag"
    for origin, source in (("config", env), ("environment", os.environ)):
        raw = source.get("VLLM_CPU_KVCACHE_SPACE")
        if raw:
            try:
                return float(raw), origin
            except ValueError:
                raise VtuneError(f"VLLM_CPU_KVCACHE_SPACE={raw}: give the KV cache space in whole GiB, "
                                 "e.g. VLLM_CPU_KVCACHE_SPACE=4") from None
    return float(VTUNE_CPU_KV_CACHE_SPACE_GIB), "vtune default"
