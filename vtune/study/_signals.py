"""Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP end a study the same clean way.

Slurm sends SIGTERM at a job's time limit (then SIGKILL after ``KillWait``, 30 s by
default), Kubernetes at pod deletion (SIGKILL after the grace period, 30 s by default),
a closed terminal SIGHUP. On the first of these signals a study:

* stops the engines and load generators of its running trials at once (SIGTERM to their
  process groups, SIGKILL 5 s later), from a thread, so that nothing waits on them;
* records each running trial FAIL with ``failure = {"kind": "interrupted", "signal": ...}``
  (such trials do not spend ``--n-trials``; an interrupted baseline is enqueued again);
* starts no new trial, and leaves :func:`vtune.study.run_study` with :class:`StudyInterrupted`
  (a ``KeyboardInterrupt``), which the CLI prints as one line before exiting with
  ``128 + the signal's number``: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, as shells
  report a process ended by that signal.

Where the exception is raised matters. When the one running trial measures in the main
thread (``max_concurrent_trials=1``) it is raised there at once, inside the measurement,
whose teardown stops the engine. Anywhere else inside the optimization loop (Optuna's own
bookkeeping, or waiting for trial threads) it is deferred: the trials wind down, Optuna
records them, and the loop ends at the next trial boundary. A second signal raises at
once wherever the main thread is, and kills what is left without grace.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = [
    "EXIT_CODES", "STOP_SIGNALS", "StopSignals", "StudyInterrupted", "active_stop", "handles_stop_signals",
    "stop_trial_processes",
]

#: The signals that stop a study cleanly.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

#: Exit code of ``vtune study``/``vtune worker`` after each stop signal (128 + its number).
EXIT_CODES = {name: 128 + int(getattr(signal, name)) for name in STOP_SIGNALS}

#: Seconds the engines get between SIGTERM and SIGKILL after the first stop signal.
STOP_GRACE_S = 5.0


class StudyInterrupted(KeyboardInterrupt):
    """A study stopped by a signal (or Ctrl-C); ``str()`` is the line the CLI prints.

    Args:
        signal_name: ``SIGINT``, ``SIGTERM`` or ``SIGHUP``.
        trials: Numbers of the trials recorded as interrupted by this process.
    """

    def __init__(self, signal_name: str = "SIGINT", trials: Sequence[int] = ()) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.trials = list(trials)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return EXIT_CODES.get(self.signal_name, 130)

    def __str__(self) -> str:
        if self.trials:
            listing = ", ".join(str(n) for n in sorted(self.trials))
            several = len(self.trials) > 1
            engines = "their engines" if several else "its engine"
            what = (f"stopped trial{'s' if several else ''} {listing} and {engines}, recorded as failed "
                    "(interrupted; not counted in --n-trials)")
        else:
            what = "no trial was running here; every engine it started was stopped"
        return f"interrupted by {self.signal_name}: {what}; re-run the same command to resume"


def _group_leaders_we_started() -> list[int]:
    """Process groups led by this process's direct children (the engines and load generators it started)."""
    import psutil

    own = os.getpgrp()
    out: list[int] = []
    try:
        children = psutil.Process().children(recursive=False)
    except psutil.Error:
        return out
    for child in children:
        try:
            pgid = os.getpgid(child.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if pgid == child.pid and pgid != own:
            out.append(pgid)
    return out


def stop_trial_processes(grace_s: float = STOP_GRACE_S) -> None:
    """Stops every engine and load generator this process started: SIGTERM, then SIGKILL after ``grace_s``.

    The engines registered by :mod:`vtune.engines._vllm` and every process group led by a
    direct child of this process (an engine or a GuideLLM child runs in its own session).
    """
    from vtune.engines import kill_live_groups

    leaders = _group_leaders_we_started()
    for pgid in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    kill_live_groups(grace_s)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_running(pid) for pid in leaders):
        time.sleep(0.1)
    for pgid in leaders:  # what is left of each group (a leader's orphans too)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class StopSignals:
    """The stop-signal handlers of a study, installed from the main thread (a context manager).

    Re-entrant: nested ``with`` blocks share one installation. Outside the main thread
    (a library caller's thread) nothing is installed and only :meth:`note` (a
    ``KeyboardInterrupt`` seen by a trial) sets :attr:`event`.

    Attributes:
        event: Set once the study is to stop; trials check it before starting an engine.
        signal_name: The first signal received (``SIGINT`` for a plain KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._raise_now = True  # the main thread may be interrupted where it is
        self._depth = 0
        self._previous: dict[int, Any] = {}
        self._received = 0

    # ---------------------------------------------------------------- installation
    def __enter__(self) -> StopSignals:
        global _ACTIVE
        self._depth += 1
        if self._depth == 1 and _ACTIVE is None:
            _ACTIVE = self
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            from vtune.engines import install_safety_net

            install_safety_net()  # first, so that it is what the handlers below give back on exit
            for name in STOP_SIGNALS:
                signum = getattr(signal, name)
                with contextlib.suppress(ValueError, OSError):
                    self._previous[signum] = signal.getsignal(signum)
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        self._depth -= 1
        if self._depth == 0:
            if _ACTIVE is self:
                _ACTIVE = None
            for signum, previous in self._previous.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(signum, previous)
            self._previous.clear()

    @property
    def installed(self) -> bool:
        """Whether the handlers are in place (entered from the main thread)."""
        return bool(self._previous)

    # ---------------------------------------------------------------- the handler
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self._received += 1
        first = not self.event.is_set()
        if first:
            self.signal_name = name
            self.event.set()
        threading.Thread(target=stop_trial_processes, args=(STOP_GRACE_S if first else 0.0,),
                         name="vtune-stop-trials", daemon=True).start()
        if self._raise_now or not first:
            self._raise_now = False
            raise StudyInterrupted(self.signal_name or name)

    def note(self, exc: BaseException | None = None) -> None:
        """Records a stop seen another way (a KeyboardInterrupt out of a trial): no new trial starts."""
        if not self.event.is_set():
            self.signal_name = getattr(exc, "signal_name", None) or self.signal_name or "SIGINT"
            self.event.set()

    @property
    def stopped(self) -> bool:
        """Whether a stop signal (or a KeyboardInterrupt) was seen."""
        return self.event.is_set()

    def interrupted(self, trials: Sequence[int] = ()) -> StudyInterrupted:
        """The exception to leave the study with."""
        return StudyInterrupted(self.signal_name or "SIGINT", trials)

    # --------------------------------------------- where the main thread may be interrupted
    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """In the block, the first signal does not raise: the work winds down and the caller checks :attr:`event`."""
        old, self._raise_now = self._raise_now, False
        try:
            yield
        finally:
            self._raise_now = old

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        """In the block (a measurement in the main thread), the first signal raises at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old, self._raise_now = self._raise_now, True
        try:
            if self.event.is_set():
                raise self.interrupted()
            yield
        finally:
            self._raise_now = old

    def hold(self) -> None:
        """From the main thread: no raise from here to the end of the current :meth:`raising` block (teardown)."""
        if threading.current_thread() is threading.main_thread():
            self._raise_now = False


_ACTIVE: StopSignals | None = None


def active_stop() -> StopSignals | None:
    """The :class:`StopSignals` entered in this process now (None outside a study)."""
    return _ACTIVE


def handles_stop_signals(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Runs ``fn`` (a study's entry point) with the stop-signal handlers installed (re-entrant)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with active_stop() or StopSignals():
            return fn(*args, **kwargs)

    return wrapper
