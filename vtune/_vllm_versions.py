"""The memory-accounting rules of each vLLM release from 0.15 to 0.33: :func:`rules_for`.

Every rule below was read in the Python files of the GPU wheel of each release
(``pip download vllm==X.Y.Z --no-deps``; 0.15.0, 0.15.1, 0.16.0, 0.17.1, 0.18.0, 0.18.1, 0.19.1,
0.20.0, 0.20.1, 0.20.2, 0.21.0, 0.22.1, 0.23.0, 0.24.0, 0.25.1, 0.26.0, 0.27.1, 0.28.0, 0.29.0,
0.30.0, 0.31.0, 0.32.0, 0.33.0) by diffing the function that holds it between consecutive
releases. :data:`RULE_CHANGES` lists, per rule, the release where it changed, the value
before and after, and the file and function; :class:`VersionRules` is what one release
does, built from that list, so the two cannot disagree.

Rules are kept per ``X.Y.Z`` release: patch releases do change them (0.20.1 changed how the
KV cache size is reported and the capture sizes; 0.15.0/0.15.1 and 0.18.0/0.18.1 agree on
every rule here). A release that was not read gets the rules of the newest read one before
it (0.21.3 those of 0.21.0, ``0.26`` those of 0.26.0). Versions outside
0.15-0.33 are refused (:func:`parse_series`): 0.6-0.10 ran the V0 engine or the first V1
worker, whose accounting is not modelled.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields
from typing import Any

from vtune._errors import VtuneError

__all__ = [
    "FIRST_SUPPORTED",
    "LAST_SUPPORTED",
    "RULE_CHANGES",
    "SUPPORTED_SERIES",
    "RuleChange",
    "VersionRules",
    "parse_series",
    "parse_version",
    "rules_for",
    "version_key",
]

FIRST_SUPPORTED = (0, 15)
LAST_SUPPORTED = (0, 33)
#: Every release series the rules cover, oldest first.
SUPPORTED_SERIES: tuple[str, ...] = tuple(f"0.{m}" for m in range(FIRST_SUPPORTED[1], LAST_SUPPORTED[1] + 1))


def version_key(version: str) -> tuple[int, int, int]:
    """``"0.20.2"`` -> ``(0, 20, 2)``; ``"0.26"`` -> ``(0, 26, 0)`` (no checks: see :func:`parse_version`)."""
    parts = [int(p) for p in version.split(".")[:3]]
    return (parts + [0, 0, 0])[0], (parts + [0, 0])[1], (parts[2:] + [0])[0]


def parse_version(version: str, *, flag: str = "--vllm-version") -> str:
    """A vLLM version string as ``X.Y.Z``, checked against the supported range.

    Args:
        version: ``"0.26.0"``, ``"0.32.0+cpu"``, ``"v0.20"``, ``"0.33"``, ``"0.30.0rc1"``.
        flag: What to name in the error (the flag or file the version came from).

    Raises:
        VtuneError: Not ``X.Y[.Z]``, or outside 0.15-0.33.
    """
    text = version.strip().lstrip("vV").split("+")[0]
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        raise VtuneError(f"{flag} {version}: write the vLLM version as X.Y or X.Y.Z, e.g. 0.26.0")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if not FIRST_SUPPORTED <= (major, minor) <= LAST_SUPPORTED:
        raise VtuneError(f"{flag} {version}: vtune models vLLM {SUPPORTED_SERIES[0]} to {SUPPORTED_SERIES[-1]}; "
                         "give a version in that range")
    return f"{major}.{minor}.{patch}"


def parse_series(version: str, *, flag: str = "--vllm-version") -> str:
    """The ``X.Y`` series of a supported version (see :func:`parse_version`)."""
    return ".".join(parse_version(version, flag=flag).split(".")[:2])


@dataclass(frozen=True)
class RuleChange:
    """One rule's change between two releases.

    Attributes:
        rule: The :class:`VersionRules` field.
        since: First release (``X.Y.Z``) with ``value``; the previous value held before it.
        value: The value from ``since`` on.
        source: ``file function`` in vLLM's tree where ``since`` shows it.
    """

    rule: str
    since: str
    value: Any
    source: str


_W = "vllm/v1/worker/gpu_worker.py Worker.determine_available_memory"
_V2 = "vllm/config/vllm.py VllmConfig._is_default_v2_model_runner_model"
_SIZES = "vllm/config/vllm.py VllmConfig._set_cudagraph_sizes"
_KVU = "vllm/v1/core/kv_cache_utils.py"

#: Values in 0.15 (the first row of each rule) and every later change, oldest first.
RULE_CHANGES: tuple[RuleChange, ...] = (
    # CacheConfig.gpu_memory_utilization = Field(default=0.9, gt=0, le=1) up to 0.19; 0.92 from 0.20.0.
    RuleChange("gpu_memory_utilization", "0.15.0", 0.9, "vllm/config/cache.py CacheConfig.gpu_memory_utilization"),
    RuleChange("gpu_memory_utilization", "0.20.0", 0.92, "vllm/config/cache.py CacheConfig.gpu_memory_utilization"),
    # 0.15-0.17: no CUDA-graph profiling before the KV cache is sized (graphs are captured after, out of the
    # 8% left by the utilization). 0.18: profile_cudagraph_memory() runs after profile_run and its estimate is
    # logged ("Estimated CUDA graph memory: %.2f GiB total"), but subtracted only with
    # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1, whose default (vllm/envs.py) is "0" in 0.18-0.19 and "1"
    # from 0.20.0 (the 0.20 log says "default since v0.21.0", but the 0.20.0 and 0.20.2 wheels default to 1).
    RuleChange("cudagraph_estimate_logged", "0.15.0", False, _W),
    RuleChange("cudagraph_estimate_logged", "0.18.0", True, _W),
    RuleChange("cudagraph_estimate_reserved", "0.15.0", False, "vllm/envs.py VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS"),
    RuleChange("cudagraph_estimate_reserved", "0.20.0", True, "vllm/envs.py VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS"),
    # Which model runner vLLM picks by default. The V2 runner (vllm/v1/worker/gpu/model_runner.py) returns 0
    # from profile_cudagraph_memory ("It is TBD whether we keep this API"), so only V1 reserves graph memory.
    # 0.15-0.21: V2 only with VLLM_USE_V2_MODEL_RUNNER=1 (vllm/envs.py, default "0").
    # 0.22-0.23: listed architectures, not MoE, not quantized. 0.24: listed architectures (MoE ones added).
    # 0.25-0.26: listed, or any non-MoE model; never hybrid / attention-free. 0.27-0.28: hybrid models too when
    # listed. 0.29 on: VllmConfig.use_v2_model_runner is True unless an unsupported feature (stock
    # torch.compile, sequence parallelism, ngram speculation, DBO, ...) is on: every model vtune models.
    RuleChange("v2_runner", "0.15.0", "never", "vllm/envs.py VLLM_USE_V2_MODEL_RUNNER"),
    RuleChange("v2_runner", "0.22.0", "listed_dense_unquantized", _V2),
    RuleChange("v2_runner", "0.24.0", "listed", _V2),
    RuleChange("v2_runner", "0.25.0", "listed_or_dense", _V2),
    RuleChange("v2_runner", "0.29.0", "always", "vllm/config/vllm.py VllmConfig.use_v2_model_runner"),
    RuleChange("v2_runner_architectures", "0.15.0", frozenset(), "vllm/config/vllm.py"),
    RuleChange("v2_runner_architectures", "0.22.0", frozenset({"Qwen3ForCausalLM"}),
               "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_architectures", "0.23.0", frozenset({"LlamaForCausalLM", "MistralForCausalLM",
                                                             "Qwen3ForCausalLM"}),
               "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_architectures", "0.24.0", frozenset({
        "Qwen3ForCausalLM", "DeepseekV2ForCausalLM", "Qwen2MoeForCausalLM", "GraniteMoeForCausalLM",
        "LlamaForCausalLM", "MistralForCausalLM"}), "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_architectures", "0.25.0", frozenset({
        "DeepseekV2ForCausalLM", "Qwen2MoeForCausalLM", "GraniteMoeForCausalLM"}),
        "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_architectures", "0.26.0", frozenset({
        "DeepseekV2ForCausalLM", "GraniteMoeForCausalLM", "InklingForCausalLM", "InklingForConditionalGeneration",
        "LongcatFlashNgramForCausalLM", "Qwen2MoeForCausalLM"}),
        "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_architectures", "0.27.0", frozenset({
        "DeepseekV2ForCausalLM", "GraniteMoeForCausalLM", "InklingForCausalLM", "InklingForConditionalGeneration",
        "KimiK3ForConditionalGeneration", "LongcatFlashNgramForCausalLM", "Qwen2MoeForCausalLM"}),
        "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_architectures", "0.28.0", frozenset({
        "DeepseekV2ForCausalLM", "DeepseekV4ForCausalLM", "GraniteMoeForCausalLM", "InklingForCausalLM",
        "InklingForConditionalGeneration", "KimiK3ForConditionalGeneration", "LongcatFlashNgramForCausalLM",
        "Qwen2MoeForCausalLM"}), "vllm/config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"),
    RuleChange("v2_runner_hybrid_if_listed", "0.15.0", False, _V2),
    RuleChange("v2_runner_hybrid_if_listed", "0.27.0", True, _V2),
    # memory_profiling (vllm/utils/mem_utils.py): up to 0.26 non-KV = weights + non_torch_increase +
    # torch_peak_increase (the profile run's allocated-bytes peak over the one before it). From 0.27 non-KV =
    # total_consumed (free memory before the engine was created - free memory after profiling: weights,
    # non-torch and persistent torch allocations) + transient_peak_headroom (peak - allocated after profiling).
    # The same bytes, summed differently; the summary line prints "X GiB for consumed memory (weights +
    # non-torch), Y GiB for peak activation" and Y includes the CUDA-graph estimate taken out.
    RuleChange("non_kv_from_free_memory", "0.15.0", False, "vllm/utils/mem_utils.py memory_profiling"),
    RuleChange("non_kv_from_free_memory", "0.27.0", True, "vllm/utils/mem_utils.py memory_profiling"),
    # self.peak_activation_memory = torch_peak_increase + cudagraph_memory_estimate_applied in 0.18 only
    # (0.19 dropped the addition), and = transient_peak_headroom + cudagraph_memory_estimate_applied from 0.27.
    RuleChange("logged_activation_includes_cudagraph_estimate", "0.15.0", False, _W),
    RuleChange("logged_activation_includes_cudagraph_estimate", "0.18.0", True, _W),
    RuleChange("logged_activation_includes_cudagraph_estimate", "0.19.0", False, _W),
    RuleChange("logged_activation_includes_cudagraph_estimate", "0.27.0", True, _W),
    # "GPU KV cache size: N tokens" (_report_kv_cache_config): num_blocks // len(groups) * min block size up to
    # 0.20.0; int(max_concurrency * max_model_len) from 0.20.1 (get_kv_cache_capacity from 0.24, same formula).
    RuleChange("kv_tokens_from_concurrency", "0.15.0", False, f"{_KVU} _report_kv_cache_config"),
    RuleChange("kv_tokens_from_concurrency", "0.20.1", True, f"{_KVU} _report_kv_cache_config"),
    # SlidingWindowSpec.max_memory_usage_bytes (vllm/v1/kv_cache_interface.py): the window holds
    # sliding_window - 1 + max_num_batched_tokens tokens up to 0.25, + VllmConfig.max_in_flight_tokens
    # (max_concurrent_batches x max_num_batched_tokens: two batches with async scheduling) from 0.26.
    RuleChange("sliding_window_in_flight_batches", "0.15.0", False,
               "vllm/v1/kv_cache_interface.py SlidingWindowSpec.max_memory_usage_bytes"),
    RuleChange("sliding_window_in_flight_batches", "0.26.0", True,
               "vllm/v1/kv_cache_interface.py SlidingWindowSpec.max_memory_usage_bytes"),
    # MLA block size on Hopper/Blackwell GPUs: CudaPlatform.check_and_update_config forces 64 for FlashMLA
    # ("Forcing kv cache block size to 64 for FlashMLA backend.") up to 0.17; from 0.18
    # Platform.update_block_size_for_backend keeps 16 for the first backend, FLASH_ATTN_MLA on Hopper.
    RuleChange("mla_block_size_sm90", "0.15.0", 64, "vllm/platforms/cuda.py CudaPlatform.check_and_update_config"),
    RuleChange("mla_block_size_sm90", "0.18.0", 16,
               "vllm/platforms/interface.py Platform.update_block_size_for_backend"),
    # CPU engine, MLA models: block 16 (CPU MLA backend) from 0.28, else the CPU default 128.
    RuleChange("cpu_mla_block_size", "0.15.0", 128, "vllm/platforms/cpu.py CpuPlatform.check_and_update_config"),
    RuleChange("cpu_mla_block_size", "0.28.0", 16, "vllm/platforms/cpu.py CpuPlatform.check_and_update_config"),
    # CPUAttentionBackend.get_supported_kernel_block_sizes: MultipleOf(16) up to 0.28 (no such method before
    # 0.21: 16 kept as the multiple), MultipleOf(32) from 0.29.
    RuleChange("cpu_kernel_block_multiple", "0.15.0", 16,
               "vllm/v1/attention/backends/cpu_attn.py CPUAttentionBackend.get_supported_kernel_block_sizes"),
    RuleChange("cpu_kernel_block_multiple", "0.29.0", 32,
               "vllm/v1/attention/backends/cpu_attn.py CPUAttentionBackend.get_supported_kernel_block_sizes"),
    # EngineArgs.get_batch_defaults: the >= 160 GiB tier (16384 tokens, 1024 seqs for vllm serve) from 0.28.
    RuleChange("batch_tier_160gib", "0.15.0", False, "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults"),
    RuleChange("batch_tier_160gib", "0.28.0", True, "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults"),
    # The same function keeps GB10 (DGX Spark, compute capability 12.1) on the small tier from 0.33.
    RuleChange("gb10_small_tier", "0.15.0", False, "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults"),
    RuleChange("gb10_small_tier", "0.33.0", True, "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults"),
    # _set_cudagraph_sizes: ceiling min(2 x max_num_seqs x decode_query_len, 512); 1024 on data-center
    # Blackwell (is_device_capability_family(100)) from 0.28.
    RuleChange("cudagraph_capture_ceiling_blackwell", "0.15.0", 512, _SIZES),
    RuleChange("cudagraph_capture_ceiling_blackwell", "0.28.0", 1024, _SIZES),
    # max_num_batched_tokens appended to the capture sizes when it fits under the limit and is off-stride,
    # from 0.20.1; max_num_seqs appended the same way (uniform decode sizes, no speculation) from 0.31.
    RuleChange("capture_appends_batched_tokens", "0.15.0", False, _SIZES),
    RuleChange("capture_appends_batched_tokens", "0.20.1", True, _SIZES),
    RuleChange("capture_appends_max_num_seqs", "0.15.0", False, _SIZES),
    RuleChange("capture_appends_max_num_seqs", "0.31.0", True, _SIZES),
)


@dataclass(frozen=True)
class VersionRules:
    """What one vLLM release does, for every rule of :data:`RULE_CHANGES`.

    Attributes:
        version: The release, ``X.Y.Z``.
        gpu_memory_utilization: Default ``--gpu-memory-utilization``.
        cudagraph_estimate_logged: The worker profiles CUDA-graph memory before sizing the KV cache.
        cudagraph_estimate_reserved: ...and takes that estimate out of the KV cache by default.
        v2_runner: How the default model runner is chosen: ``never``, ``listed_dense_unquantized``,
            ``listed``, ``listed_or_dense``, ``always`` (see :meth:`uses_v2_runner`).
        v2_runner_architectures: ``DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES``.
        v2_runner_hybrid_if_listed: A hybrid (sliding + full) model may run V2 when listed.
        non_kv_from_free_memory: Non-KV memory is measured as the free-memory drop (0.27 on).
        logged_activation_includes_cudagraph_estimate: The summary's "peak activation" includes the
            CUDA-graph estimate taken out of the KV cache.
        kv_tokens_from_concurrency: "KV cache size" tokens = int(concurrency x max_model_len), else
            blocks // groups x block size.
        sliding_window_in_flight_batches: Sliding-window layers reserve for every in-flight batch
            (``max_in_flight_tokens``), else for one ``max_num_batched_tokens``.
        mla_block_size_sm90: Default block size of MLA models on Hopper and Blackwell GPUs.
        cpu_mla_block_size: Default block size of MLA models on the CPU engine.
        cpu_kernel_block_multiple: What a CPU ``--block-size`` must be a multiple of.
        batch_tier_160gib: ``get_batch_defaults`` has the >= 160 GiB tier.
        gb10_small_tier: GB10 stays on the small tier.
        cudagraph_capture_ceiling_blackwell: Capture-size ceiling on B200/B300.
        capture_appends_batched_tokens: max_num_batched_tokens is a capture size when it fits.
        capture_appends_max_num_seqs: max_num_seqs is a capture size when it fits.
    """

    version: str
    gpu_memory_utilization: float
    cudagraph_estimate_logged: bool
    cudagraph_estimate_reserved: bool
    v2_runner: str
    v2_runner_architectures: frozenset[str]
    v2_runner_hybrid_if_listed: bool
    non_kv_from_free_memory: bool
    logged_activation_includes_cudagraph_estimate: bool
    kv_tokens_from_concurrency: bool
    sliding_window_in_flight_batches: bool
    mla_block_size_sm90: int
    cpu_mla_block_size: int
    cpu_kernel_block_multiple: int
    batch_tier_160gib: bool
    gb10_small_tier: bool
    cudagraph_capture_ceiling_blackwell: int
    capture_appends_batched_tokens: bool
    capture_appends_max_num_seqs: bool

    @property
    def series(self) -> str:
        """``X.Y`` of :attr:`version`."""
        return ".".join(self.version.split(".")[:2])

    def uses_v2_runner(self, architectures: tuple[str, ...] | list[str], *, is_moe: bool, is_hybrid: bool,
                       is_quantized: bool = False) -> bool:
        """Whether this release runs the model on the V2 model runner by default (CUDA, no special features).

        Args:
            architectures: The config's ``architectures``.
            is_moe: The model has MoE layers.
            is_hybrid: vLLM's ``ModelConfig.is_hybrid`` notion (vtune: mixed sliding/full layers).
            is_quantized: The checkpoint (or ``--quantization``) is quantized.
        """
        listed = bool(set(architectures) & self.v2_runner_architectures)
        if self.v2_runner == "never":
            return False
        if self.v2_runner == "always":
            return True
        if self.v2_runner == "listed_dense_unquantized":
            return listed and not is_moe and not is_quantized
        if self.v2_runner == "listed":
            return listed
        # listed_or_dense (0.25 on)
        if is_hybrid and not (self.v2_runner_hybrid_if_listed and listed):
            return False
        return listed or not is_moe

    def sliding_window_blocks(self, *, sliding_window: int, block_size: int, max_num_batched_tokens: int,
                              max_model_len: int, concurrent_batches: int) -> int:
        """Blocks one request holds in a sliding-window layer (``SlidingWindowSpec.max_memory_usage_bytes``).

        ``cdiv(min(sliding_window - 1 + tokens, max_model_len), block_size) + 1``, where tokens is
        ``max_num_batched_tokens`` up to 0.25 and ``concurrent_batches x max_num_batched_tokens``
        (``VllmConfig.max_in_flight_tokens``: 2 with async scheduling and one pipeline stage, else
        the stages) from 0.26.
        """
        batches = concurrent_batches if self.sliding_window_in_flight_batches else 1
        tokens = min(sliding_window - 1 + max_num_batched_tokens * batches, max_model_len)
        return -(-tokens // block_size) + 1

    def reserves_cudagraph_memory(self, architectures: tuple[str, ...] | list[str], *, is_moe: bool,
                                  is_hybrid: bool, is_quantized: bool = False) -> bool:
        """Whether the CUDA-graph estimate is taken out of the KV cache (V1 runner, estimate on by default)."""
        return self.cudagraph_estimate_reserved and not self.uses_v2_runner(
            architectures, is_moe=is_moe, is_hybrid=is_hybrid, is_quantized=is_quantized)


def _rule_names() -> list[str]:
    return [f.name for f in fields(VersionRules) if f.name != "version"]


@functools.cache
def rules_for(version: str) -> VersionRules:
    """The rules of one vLLM release.

    Args:
        version: ``X.Y`` or ``X.Y.Z`` (``X.Y`` means ``X.Y.0``; local suffixes such as ``+cpu``
            ignored), 0.15 to 0.33.

    Raises:
        VtuneError: Not a version, or outside the supported range.
    """
    full = parse_version(version, flag="vLLM version")
    key = version_key(full)
    values: dict[str, Any] = {}
    for change in RULE_CHANGES:
        if version_key(change.since) <= key:
            values[change.rule] = change.value
    missing = set(_rule_names()) - set(values)
    assert not missing, f"rules without a 0.15 value: {missing}"
    return VersionRules(version=full, **values)


def changes_of(rule: str) -> list[RuleChange]:
    """The rows of :data:`RULE_CHANGES` for one rule, oldest first."""
    return [c for c in RULE_CHANGES if c.rule == rule]
