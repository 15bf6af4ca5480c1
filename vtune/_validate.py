"""Lint a ``vllm serve`` command line before anyone spends GPU time on it.

``validate`` reports what :func:`vtune._checks.precheck` finds (the same list the
study runs before every launch) plus what the installed vLLM's own argument parser
rejects (:func:`vtune._checks.vllm_rejects`, in a child process so vLLM's import
noise stays out of vtune's output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vtune._checks import Finding, check_flags_with_vllm, precheck, vllm_rejects
from vtune._errors import VtuneError
from vtune._memory import Gpu, MemoryEstimate, estimate_memory
from vtune._model_shape import ModelShape
from vtune._serve_config import ServeConfig
from vtune._vllm_defaults import cpu_kv_cache_space_gib

__all__ = ["Finding", "ValidationReport", "check_flags_with_vllm", "validate_config"]


@dataclass
class ValidationReport:
    """Everything ``vtune validate`` found about one command line."""

    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    estimate: MemoryEstimate | None = None
    device: str = "gpu"
    cpu_kv_cache_gib: float | None = None
    cpu_kv_cache_origin: str | None = None

    @property
    def exit_code(self) -> int:
        """0 clean, 1 warnings only, 2 errors."""
        return 2 if self.errors else 1 if self.warnings else 0

    @property
    def codes(self) -> list[str]:
        """Codes of all findings, errors first."""
        return [f.code for f in (*self.errors, *self.warnings)]

    def add(self, finding: Finding) -> None:
        """Files a finding under errors or warnings, with its recommendation."""
        (self.errors if finding.is_error else self.warnings).append(finding)
        if finding.recommendation and finding.recommendation not in self.recommendations:
            self.recommendations.append(finding.recommendation)

    def headline(self) -> str | None:
        """One line: where it runs and what the memory model predicts (None without an estimate)."""
        e = self.estimate
        if e is None:
            return None
        if self.device == "cpu":
            space = "?"
            if self.cpu_kv_cache_gib is not None:
                space = f"{self.cpu_kv_cache_gib:g} GiB, {self.cpu_kv_cache_origin}"
            where = f"on the vLLM CPU engine (KV cache space {space})"
        else:
            where = f"on {e.gpu} ({e.total_memory_gib:.2f} GiB)"
        return (f"{where}: weights {e.weights_gib:.2f} GiB, KV {e.kv_cache_gib:.2f} GiB = {e.kv_cache_tokens:,} "
                f"tokens, {e.max_concurrency:.2f}x requests of {e.max_model_len} tokens per replica")

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: ``errors``/``warnings`` as ``{code, message, severity, rule}``."""
        return {
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "recommendations": list(self.recommendations),
            "estimate": self.estimate.to_dict() if self.estimate else None,
        }


def validate_config(
    shape: ModelShape,
    cfg: ServeConfig,
    gpu: Gpu | None,
    *,
    num_gpus: int | None = None,
    needed_model_len: int | None = None,
    device: str = "gpu",
    cpu_kv_cache_gib: float | None = None,
    argv: Sequence[str] | None = None,
    vllm_check: bool = False,
    version: str | None = None,
) -> ValidationReport:
    """Finds what will fail and what will underperform in a configuration.

    Args:
        shape: The model.
        cfg: The configuration as the user would launch it.
        gpu: The GPU model it runs on (ignored on the CPU engine).
        num_gpus: GPUs present (None: not checked).
        needed_model_len: Longest request the workload sends (prompt + output), if known.
        device: ``"gpu"`` or ``"cpu"``.
        cpu_kv_cache_gib: CPU engine KV cache space (``--cpu-kv-cache-gib``).
        argv: The flags as the user wrote them (for contradictory flags).
        vllm_check: Also parse the flags with the installed vLLM's parser (a child process, 5-10 s).
        version: The vLLM release whose accounting the estimate follows (None: the installed one, or
            the one :func:`vtune._vllm_defaults.use_vllm_version` set).
    """
    report = ValidationReport(device=device)
    if device == "cpu":
        gpu, num_gpus = None, None
        try:
            report.cpu_kv_cache_gib, report.cpu_kv_cache_origin = cpu_kv_cache_space_gib(cfg.env, cpu_kv_cache_gib)
        except VtuneError:
            pass  # reported by the cpu_kv_cache_space_invalid check
    try:
        report.estimate = estimate_memory(shape, cfg, gpu, device=device, num_gpus=num_gpus,
                                          cpu_kv_cache_gib=cpu_kv_cache_gib, version=version)
    except VtuneError:
        pass  # precheck reports the value
    findings = precheck(cfg, shape=shape, gpu=gpu, device=device, num_gpus=num_gpus, estimate=report.estimate,
                        cpu_kv_cache_gib=cpu_kv_cache_gib, workload_max_len=needed_model_len, argv=argv)
    if vllm_check:
        rejected = vllm_rejects(cfg)
        if rejected is not None:
            findings.insert(0, rejected)
    for f in findings:
        report.add(f)
    return report
