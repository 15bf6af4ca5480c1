"""What a serving engine must do for vtune to measure it: :class:`Engine`.

A trial (:func:`vtune._trial.run_trial`) only needs an engine that starts, says
when it is ready (with the numbers of its start-up), can be checked while load
runs, and stops with proof that nothing is left. :class:`Engine` is that contract,
with plain data in and out: :class:`~vtune.engines._startup_log.StartupNumbers`,
:class:`~vtune.engines._failures.Failure` (inside :class:`EngineFailure`) and
:class:`TeardownReport`. :class:`~vtune.engines._vllm.VllmServer` implements it for
``vllm serve``; another engine (SGLang, TGI, a fake in tests) implements the same
five members.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from vtune._errors import VtuneError

if TYPE_CHECKING:
    from vtune.engines._failures import Failure
    from vtune.engines._startup_log import StartupNumbers

__all__ = ["Engine", "EngineFailure", "TeardownReport"]


class EngineFailure(VtuneError):
    """The engine did not start, or died: carries the classified :class:`Failure`.

    Args:
        failure: What went wrong (``kind``, ``message``, ``log_line``, ``exit_code``).
        log_path: The engine's log file.
    """

    def __init__(self, failure: Failure, *, log_path: Path | None = None) -> None:
        self.failure = failure
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path is not None else ""
        super().__init__(f"engine failed: {failure.kind}: {failure.message}{where}")

    @property
    def kind(self) -> str:
        """The failure kind, e.g. ``invalid_argument`` or ``crash``."""
        return str(self.failure.kind)


@dataclass
class TeardownReport:
    """What :meth:`Engine.stop` did and verified.

    Attributes:
        exit_code: The leader's exit status (negative: killed by that signal).
        signal_sent: ``none`` (already gone), ``SIGTERM``, or ``SIGKILL`` (the
            group outlived the grace period).
        stop_s: Seconds the stop took.
        orphans_killed: Pids of descendants outside the group (ones that left it
            with ``setsid``, or survivors of the group SIGKILL) that had to be
            signalled one by one.
        leftover_pids: Pids still alive at the end; empty on a clean teardown.
        port_free: Whether the server's port could be bound again.
        gpu_memory_back: Whether every GPU's used memory returned to within the
            tolerance of its value before start; None without NVML/nvidia-smi.
        gpu_memory_before_mib: Used MiB per GPU before start.
        gpu_memory_after_mib: Used MiB per GPU after stop.
        shm_removed: ``/dev/shm`` segments of the engine removed after it.
    """

    exit_code: int | None = None
    signal_sent: str = "none"
    stop_s: float = 0.0
    orphans_killed: list[int] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)
    port_free: bool = True
    gpu_memory_back: bool | None = None
    gpu_memory_before_mib: dict[int, int] = field(default_factory=dict)
    gpu_memory_after_mib: dict[int, int] = field(default_factory=dict)
    shm_removed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No process left, port free, and GPU memory back (where measurable)."""
        return not self.leftover_pids and self.port_free and self.gpu_memory_back is not False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON and Optuna user attributes)."""
        out = asdict(self)
        out["clean"] = self.clean
        return out


class Engine(ABC):
    """One serving engine a trial starts, loads and stops; a context manager.

    ``with engine:`` starts it and waits until it is ready; leaving the block stops
    it (also on an exception or KeyboardInterrupt).

    Attributes:
        start_s: Seconds from launch to ready (None until ready).
        startup: The start-up numbers (None until ready).
        served_model_name: The model name clients must send (None if unknown).
        failure: The classified failure, once one was seen.
        teardown: The stop's report (None until stopped).
    """

    start_s: float | None = None
    startup: StartupNumbers | None = None
    served_model_name: str | None = None
    failure: Failure | None = None
    teardown: TeardownReport | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """``http://host:port`` of the server (known once :meth:`start` returned)."""

    @abstractmethod
    def start(self) -> None:
        """Launches the engine and returns at once.

        Raises:
            VtuneError: It could not be launched.
        """

    @abstractmethod
    def wait_ready(self) -> StartupNumbers:
        """Waits until the engine serves; returns its start-up numbers.

        Raises:
            EngineFailure: It exited or did not become ready in time.
        """

    @abstractmethod
    def check(self, *, probe_http: bool = False) -> None:
        """Raises :class:`EngineFailure` if the engine died (or, with ``probe_http``, is unhealthy)."""

    @abstractmethod
    def stop(self, grace_s: float = 20.0) -> TeardownReport:
        """Stops everything the engine started and verifies it (idempotent)."""

    def process_info(self) -> dict[str, Any]:
        """What to record to clean up after a crash of vtune (see :func:`~vtune.engines.kill_recorded_group`)."""
        return {}

    def __enter__(self) -> Engine:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
