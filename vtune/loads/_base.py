"""What a load tool must do for vtune: :class:`LoadGenerator`, and its results.

A trial starts the load tool while the engine boots (:meth:`LoadGenerator.prepare`),
runs the workload against the ready engine in steps, reporting each to an
``on_step`` callback that may stop it (:meth:`LoadGenerator.run`), or gives it up
when the engine never came up (:meth:`LoadGenerator.cancel`). The results,
:class:`StepResult` and :class:`LoadResult` (built on
:class:`~vtune.loads._results.TrialResult`), do not depend on the tool; GuideLLM is
the one implementation (:class:`~vtune.loads._guidellm.GuideLLMLoad`).

A load that breaks raises :class:`LoadFailure` with a failure kind: ``load_error``
(the tool failed) or ``load_stalled`` (it stopped making progress: see
:func:`stall_bound_s`). Neither is the configuration's fault
(:data:`vtune.engines.NOT_CONFIG_FAULTS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError
from vtune._workload import Workload
from vtune.loads._results import TrialResult

__all__ = [
    "LOAD_SCHEMA_VERSION",
    "LoadFailure",
    "LoadGenerator",
    "LoadResult",
    "StepHook",
    "StepResult",
    "expected_request_s",
    "stall_bound_s",
]

#: Version of ``load_result.json``.
LOAD_SCHEMA_VERSION = 1
#: The shortest stall bound, seconds.
MIN_STALL_S = 30.0
#: How many of the workload's longest expected requests a stall must outlast.
STALL_REQUESTS = 3.0
_RESULT_NAME = "load_result.json"


def expected_request_s(workload: Workload) -> float:
    """The longest a request of ``workload`` is expected to take, seconds.

    The objectives bound it: the end-to-end objective where there is one, else (and
    at least) the TTFT objective plus the ITL objective for every further token of
    the longest output.
    """
    slo = workload.slo
    tokens_ms = slo.ttft_ms.max_ms + slo.itl_ms.max_ms * max(0, workload.output_tokens.max - 1)
    e2e_ms = slo.e2e_ms.max_ms if slo.e2e_ms is not None else 0.0
    return max(tokens_ms, e2e_ms) / 1000.0


def stall_bound_s(workload: Workload) -> float:
    """Seconds without any request finishing after which a running load counts as stalled.

    ``max(30 s, 3 x expected_request_s(workload))``: 30 s for the built-in chatbot
    workload, about 220 s for ``batch`` and 160 s for ``reasoning``. A
    configuration that is merely slow still finishes requests (many streams are in
    flight at once); one that finishes none for this long, with requests in flight
    or none sent at all, is a load tool (or engine) that hangs.
    """
    return max(MIN_STALL_S, STALL_REQUESTS * expected_request_s(workload))


class LoadFailure(VtuneError):
    """The load broke: the tool failed (``load_error``) or stalled (``load_stalled``).

    Args:
        kind: ``load_error`` or ``load_stalled``.
        message: One line: what happened and where the log is.
        steps_done: Steps that finished before it broke.
    """

    def __init__(self, kind: str, message: str, *, steps_done: int = 0) -> None:
        if kind not in ("load_error", "load_stalled"):
            raise ValueError(f"unknown load failure kind {kind!r}")
        self.kind = kind
        self.steps_done = steps_done
        super().__init__(message)


@dataclass(frozen=True)
class StepResult:
    """One finished step.

    Attributes:
        index: Step number, from 0.
        report_path: The load tool's raw report of this step.
        step: This step alone.
        cumulative: All steps so far, combined (what a pruner should look at).
        gap_s: Seconds between the previous step's measured end and this step's
            measured start (the tool draining, restarting workers, vtune); None for
            the first step.
        vtune_overhead_s: Seconds vtune itself spent on this step: saving the report
            in the tool plus reading and summarizing it here.
    """

    index: int
    report_path: Path
    step: TrialResult
    cumulative: TrialResult
    gap_s: float | None
    vtune_overhead_s: float

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping."""
        return {
            "index": self.index,
            "report_path": str(self.report_path),
            "step": self.step.to_dict(),
            "cumulative": self.cumulative.to_dict(),
            "gap_s": self.gap_s,
            "vtune_overhead_s": self.vtune_overhead_s,
        }


@dataclass(frozen=True)
class LoadResult:
    """The outcome of a load run.

    Attributes:
        result: All finished steps combined.
        steps: Every finished step, in order.
        stopped_early: True when ``on_step`` stopped the load before the last step.
        workload: The workload's name.
        out_dir: Folder holding the reports, the spec, the log and ``load_result.json``.
        startup_s: Seconds from the call to the first measured request (tool start,
            imports; warmup excluded).
        wall_s: Seconds the whole call took.
        retries: Steps run again on a fresh load tool after a stall (0 or 1).
        stalls: One line per stall that was retried.
        schema_version: Layout version of ``load_result.json``.
    """

    result: TrialResult
    steps: list[StepResult]
    stopped_early: bool
    workload: str
    out_dir: Path
    startup_s: float
    wall_s: float
    retries: int = 0
    stalls: list[str] = field(default_factory=list)
    schema_version: int = LOAD_SCHEMA_VERSION

    @property
    def result_path(self) -> Path:
        """Where the result was saved."""
        return self.out_dir / _RESULT_NAME

    @property
    def report_paths(self) -> list[Path]:
        """The raw reports, one a step."""
        return [s.report_path for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping (the content of ``load_result.json``)."""
        return {
            "schema_version": self.schema_version,
            "description": "vtune load result; fields: vtune.loads.LoadResult, result: vtune.loads.TrialResult",
            "workload": self.workload,
            "stopped_early": self.stopped_early,
            "startup_s": self.startup_s,
            "wall_s": self.wall_s,
            "retries": self.retries,
            "stalls": list(self.stalls),
            "result": self.result.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
        }


#: Called as ``on_step(step_index, step_result)`` after each step; False stops the load.
StepHook = Callable[[int, StepResult], bool]


class LoadGenerator(ABC):
    """A load tool driving one engine with one workload, in steps.

    Construct it with the workload and where to write; then :meth:`prepare` while
    the engine starts, and :meth:`run` once it serves (or :meth:`cancel` if it
    never does). One instance runs one load.
    """

    @abstractmethod
    def prepare(self, target_url: str) -> None:
        """Starts the tool now (imports, tokenizer) so that its start-up overlaps the engine's.

        Args:
            target_url: The engine's base URL, e.g. ``http://127.0.0.1:8000``.

        Raises:
            VtuneError: Bad input found before anything ran (e.g. no tokenizer).
        """

    @abstractmethod
    def run(
        self,
        served_model: str,
        *,
        on_step: StepHook | None = None,
        check_target: Callable[[], None] | None = None,
    ) -> LoadResult:
        """Runs the load against the ready engine, step by step.

        Args:
            served_model: The model name the engine serves.
            on_step: Called after each step; False stops the load early.
            check_target: Called before a stalled step is run again; it raises
                (e.g. :class:`~vtune.engines.EngineFailure`) when the engine is the
                cause, and the exception goes through.

        Returns:
            The finished steps combined.

        Raises:
            LoadFailure: The tool failed, or stalled twice on one step.
        """

    @abstractmethod
    def cancel(self) -> None:
        """Ends the tool without running the load (safe to call at any time, and twice)."""
