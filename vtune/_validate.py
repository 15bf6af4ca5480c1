"""Lint a ``vllm serve`` command line before anyone spends GPU time on it."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from typing import Any

from vtune._memory import Gpu, MemoryEstimate, estimate_memory
from vtune._model_shape import ModelShape
from vtune._serve_config import ServeConfig

__all__ = ["Finding", "ValidationReport", "check_flags_with_vllm", "validate_config"]

#: max-num-seqs above this multiple of the KV concurrency at max-model-len is "far above".
SEQS_OVER_CAPACITY_FACTOR = 2.0
#: max-model-len above this multiple of the workload's longest request wastes KV capacity.
MODEL_LEN_OVER_NEED_FACTOR = 4.0


@dataclass
class Finding:
    """One error or warning: a stable code and a message with the number behind it."""

    code: str
    message: str


@dataclass
class ValidationReport:
    """Everything ``vtune validate`` found about one command line."""

    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    estimate: MemoryEstimate | None = None

    @property
    def exit_code(self) -> int:
        """0 clean, 1 warnings only, 2 errors."""
        return 2 if self.errors else 1 if self.warnings else 0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return {
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
            "recommendations": list(self.recommendations),
            "estimate": self.estimate.to_dict() if self.estimate else None,
        }


def check_flags_with_vllm(argv: list[str]) -> str | None:
    """Parses ``vllm serve`` flags with the installed vLLM's own argument parser.

    Args:
        argv: The flags (model included or not).

    Returns:
        vLLM's error line when it rejects them, else None. None too when vLLM
        is not installed (nothing to check against).
    """
    import importlib

    make_arg_parser = None
    # The serve parser moved between releases (0.2x: openai.cli_args; 0.3x: launchers.cli_args).
    for module in ("vllm.entrypoints.openai.cli_args", "vllm.entrypoints.launchers.cli_args"):
        try:
            make_arg_parser = importlib.import_module(module).make_arg_parser
            from vllm.utils.argparse_utils import FlexibleArgumentParser
            break
        except Exception:
            continue
    if make_arg_parser is None:  # vLLM absent or of an unknown layout: nothing to check against
        return None
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
            return lines[-1].strip() if lines else err.getvalue().strip().splitlines()[-1]
    except Exception as exc:  # a value vLLM's parser chokes on
        return str(exc).splitlines()[0]
    return None


def validate_config(
    shape: ModelShape,
    cfg: ServeConfig,
    gpu: Gpu,
    *,
    num_gpus: int | None = None,
    needed_model_len: int | None = None,
    device: str = "gpu",
) -> ValidationReport:
    """Finds what will fail and what will underperform in a configuration.

    Args:
        shape: The model.
        cfg: The configuration as the user would launch it.
        gpu: The GPU model it runs on.
        num_gpus: GPUs present (None: not checked).
        needed_model_len: Longest request the workload sends (prompt + output), if known.
        device: ``"gpu"`` or ``"cpu"``.
    """
    report = ValidationReport()
    est = estimate_memory(shape, cfg, gpu, device=device, num_gpus=num_gpus)
    report.estimate = est
    if not est.fits:
        code = "does_not_fit"
        reason = est.reason or ""
        if "attention heads" in reason or "KV heads" in reason or "exceeds the" in reason:
            code = "invalid_parallel_layout"
        elif "GPUs" in reason:
            code = "not_enough_gpus"
        elif "weights need" in reason:
            code = "weights_do_not_fit"
        elif "one request" in reason or "no memory left" in reason:
            code = "kv_cache_too_small"
        report.errors.append(Finding(code, reason))
        if code == "kv_cache_too_small" and est.kv_cache_tokens > 0:
            report.recommendations.append(f"--max-model-len {max(16, est.kv_cache_tokens // 16 * 16)}")
        return report

    per_replica = est.max_concurrency
    seqs = est.max_num_seqs
    if seqs > SEQS_OVER_CAPACITY_FACTOR * per_replica:
        total = per_replica * est.data_parallel_size
        report.warnings.append(Finding(
            "max_num_seqs_above_kv_capacity",
            f"--max-num-seqs {seqs} (per engine) is {seqs / per_replica:.1f}x the {per_replica:.2f} requests of "
            f"max-model-len {est.max_model_len} the KV cache holds per engine ({total:.1f} across "
            f"{est.data_parallel_size} replica(s)); long requests will queue or be preempted",
        ))
        report.recommendations.append(
            f"--max-num-seqs {max(1, int(per_replica))} if requests approach max-model-len; or lower "
            "--max-model-len to the workload's need, which raises the concurrency the cache holds"
        )
    if est.tensor_parallel_size > 1 and shape.mla is None:
        dp_all = est.data_parallel_size * est.tensor_parallel_size
        as_dp = cfg.replace(tensor_parallel_size=1, data_parallel_size=dp_all)
        single = estimate_memory(shape, as_dp, gpu, device=device)
        # "Fits one GPU" with room to spare: weights at most half of what vLLM may use there.
        if single.fits and single.weights_gib <= 0.5 * single.requested_memory_gib:
            report.warnings.append(Finding(
                "tensor_parallel_on_small_model",
                f"the model fits one GPU ({single.weights_gib:.2f} GiB of weights) yet runs with "
                f"--tensor-parallel-size {est.tensor_parallel_size}; data parallel over the same GPUs needs no "
                f"all-reduce per layer and holds {single.max_concurrency_total:.1f} max-length requests "
                f"(vs {est.max_concurrency_total:.1f} now)",
            ))
            report.recommendations.append(
                f"--tensor-parallel-size 1 --data-parallel-size {single.data_parallel_size} (measure both with "
                "vtune bench --compare)"
            )
    if cfg.enforce_eager and device == "gpu":
        report.warnings.append(Finding(
            "enforce_eager",
            "--enforce-eager disables CUDA graphs and torch.compile: decode is typically 1.5-2x slower; "
            "use it only to debug",
        ))
        report.recommendations.append("drop --enforce-eager in production")
    if needed_model_len and est.max_model_len > MODEL_LEN_OVER_NEED_FACTOR * needed_model_len:
        report.warnings.append(Finding(
            "max_model_len_above_need",
            f"max-model-len {est.max_model_len} is {est.max_model_len / needed_model_len:.0f}x the workload's "
            f"longest request ({needed_model_len} tokens)",
        ))
        report.recommendations.append(f"--max-model-len {needed_model_len}")
    elif needed_model_len is None and cfg.max_model_len is None and shape.max_position_embeddings >= 32768:
        report.warnings.append(Finding(
            "max_model_len_unset",
            f"--max-model-len is unset, so vLLM sizes for the model's maximum of {shape.max_position_embeddings} "
            f"tokens (the KV cache holds {est.max_concurrency:.2f} such requests per engine)",
        ))
        report.recommendations.append("--max-model-len set to your workload's longest prompt + output")
    return report
