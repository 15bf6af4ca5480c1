"""Process groups vtune starts (engines, GuideLLM children) and everything that ends them.

One place for what used to be spread over four killers and two GPU-memory waits:

* :func:`spawn_group` starts a command as the leader of a new session and process
  group, with the parent-death signal (SIGTERM when the launching thread's process
  dies) and ``VTUNE_PARENT_PID`` in its environment, so that the command's
  :func:`~vtune.engines._watchdog.start_watchdog` can kill the whole group within
  about a second of a ``kill -9`` of vtune. The group is registered for the safety
  net until it is stopped.
* :meth:`ProcessGroup.stop` is the tree kill: SIGTERM to the group and to the
  descendants recorded while it ran (pid and creation time, so a reused pid is never
  touched), SIGKILL after a grace period, then SIGKILL one by one for anything left.
* The safety net (:func:`install_safety_net`): ``atexit`` plus SIGTERM/SIGHUP
  handlers that call :func:`kill_live_groups` if vtune exits or is terminated
  without stopping its groups.
* :func:`kill_recorded_group` kills the group of a vtune process that died, from the
  ``{"host", "pgid", ...}`` record a study keeps for each trial's engine; only
  members that carry ``VTUNE_PARENT_PID`` in their environment are touched (a pgid
  reused by an unrelated group is left alone).
* ``/dev/shm`` leftovers (:func:`remove_orphaned_shm`), free ports
  (:func:`find_free_port`, :func:`port_is_free`, :func:`wait_port_free`) and the one
  GPU-memory wait (:func:`wait_gpu_memory_back`).

Nothing is ever killed by name. One module of a little over 500 lines on purpose:
every way vtune ends a process group is here, so that there is one to check.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from vtune.engines._watchdog import (
    PARENT_PID_ENV,
    remove_orphaned_shm,
    shm_entries,
    shm_in_use_anywhere,
    shm_used_by,
)

__all__ = [
    "PARENT_PID_ENV",
    "GpuMemoryWait",
    "GroupStop",
    "ProcessGroup",
    "find_free_port",
    "install_safety_net",
    "kill_live_groups",
    "kill_recorded_group",
    "port_is_free",
    "remove_orphaned_shm",
    "shm_entries",
    "shm_in_use_anywhere",
    "shm_used_by",
    "spawn_group",
    "wait_gpu_memory_back",
    "wait_port_free",
]

_MIB = 1024 * 1024


# ---------------------------------------------------------------------- ports
def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound for listening (TIME_WAIT ignored, as servers do)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_free(host: str, port: int, wait_s: float = 5.0) -> bool:
    """Waits up to ``wait_s`` for ``host:port`` to bind again; returns whether it does."""
    deadline = time.monotonic() + wait_s
    while True:
        if port_is_free(host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


# ------------------------------------------------------------------ GPU memory
@dataclass
class GpuMemoryWait:
    """What :func:`wait_gpu_memory_back` saw.

    Attributes:
        before_mib: Used MiB per GPU before (the reference).
        after_mib: Used MiB per GPU at the last reading.
        excess_mib: GPUs still above ``before + tolerance``, with how many MiB above
            ``before``; empty when the memory is back.
        waited_s: Seconds spent waiting.
    """

    before_mib: dict[int, int]
    after_mib: dict[int, int] = field(default_factory=dict)
    excess_mib: dict[int, int] = field(default_factory=dict)
    waited_s: float = 0.0

    @property
    def back(self) -> bool:
        """Every GPU is within the tolerance of its level before."""
        return not self.excess_mib


def wait_gpu_memory_back(
    before_mib: Mapping[Any, Any],
    *,
    tolerance_mib: int = 256,
    timeout_s: float = 15.0,
    poll_s: float = 0.5,
) -> GpuMemoryWait:
    """Waits until each GPU's used memory is back to its level before an engine started.

    Args:
        before_mib: Used MiB per GPU index before the start (keys may be strings,
            as after a JSON round trip). Only these GPUs are read.
        tolerance_mib: How far above its level before a GPU may stay and count as back.
        timeout_s: Longest wait.
        poll_s: Seconds between readings.

    Returns:
        The readings; :attr:`GpuMemoryWait.excess_mib` names the GPUs not back.
        Without NVML or ``nvidia-smi`` nothing is read and the memory counts as back.
    """
    from vtune import _hardware

    before = {int(k): int(v) for k, v in before_mib.items()}
    out = GpuMemoryWait(before_mib=before)
    if not before:
        return out
    t0 = time.monotonic()
    while True:
        out.after_mib = {g: b // _MIB for g, b in _hardware.gpu_memory_used_bytes(list(before)).items()}
        out.excess_mib = {
            g: out.after_mib[g] - used
            for g, used in before.items()
            if g in out.after_mib and out.after_mib[g] - used > tolerance_mib
        }
        out.waited_s = time.monotonic() - t0
        if not out.excess_mib or out.waited_s >= timeout_s:
            return out
        time.sleep(poll_s)


# -------------------------------------------------------------- process groups
def _set_parent_death_signal(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` on Linux; nothing elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 == PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_members(pgid: int, *, not_before_s: float) -> list[psutil.Process]:
    """Live, non-zombie processes of process group ``pgid`` created after ``not_before_s``."""
    members = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except OSError:
            continue
        created = proc.info.get("create_time") or 0.0
        if created >= not_before_s and _alive(proc):
            members.append(proc)
    return members


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@dataclass
class GroupStop:
    """What :meth:`ProcessGroup.stop` did.

    Attributes:
        exit_code: The leader's exit status (negative: killed by that signal).
        signal_sent: ``none`` (already gone), ``SIGTERM``, or ``SIGKILL`` (the
            group outlived the grace period).
        orphans_killed: Pids of descendants outside the group (ones that left it
            with ``setsid``, or survivors of the group SIGKILL) signalled one by one.
        leftover_pids: Pids still alive at the end; empty on a clean stop.
    """

    exit_code: int | None = None
    signal_sent: str = "none"
    orphans_killed: list[int] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)


class ProcessGroup:
    """A command running as the leader of its own session and process group.

    Made by :func:`spawn_group`. :meth:`record` remembers the group's processes and
    descendants (call it now and then while the group runs: descendants that leave
    the group are found only if seen once) and the ``/dev/shm`` segments they use;
    :meth:`stop` ends them all.

    Attributes:
        proc: The leader's :class:`subprocess.Popen`.
        seen: ``{pid: creation time}`` of every process recorded.
        shm_seen: ``/dev/shm`` names the recorded processes mapped or held open.
        shm_before: ``/dev/shm`` (name to inode) just before the spawn.
        launched_wall_s: ``time.time()`` at the spawn.
    """

    def __init__(self, proc: subprocess.Popen[bytes], *, launched_wall_s: float, shm_before: dict[str, int]) -> None:
        self.proc = proc
        self.launched_wall_s = launched_wall_s
        self.shm_before = shm_before
        self.seen: dict[int, float] = {}
        self.shm_seen: set[str] = set()
        self.result: GroupStop | None = None

    @property
    def pid(self) -> int:
        """The leader's pid."""
        return self.proc.pid

    @property
    def pgid(self) -> int:
        """The group id (the leader's pid)."""
        return self.proc.pid

    def poll(self) -> int | None:
        """The leader's exit status, or None while it runs."""
        return self.proc.poll()

    def record(self) -> None:
        """Remembers the group's live processes, the leader's descendants, and the /dev/shm they use."""
        procs: list[psutil.Process] = []
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(self.proc.pid)
                procs = [leader, *leader.children(recursive=True)]
        known = {p.pid for p in procs}
        procs += [p for p in _group_members(self.pgid, not_before_s=self.launched_wall_s - 1) if p.pid not in known]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(proc.pid, proc.create_time())
            self.shm_seen |= shm_used_by(proc.pid)

    def alive(self) -> list[psutil.Process]:
        """Live processes of the group, plus descendants recorded earlier (pid + creation time)."""
        found: dict[int, psutil.Process] = {}
        for proc in _group_members(self.pgid, not_before_s=self.launched_wall_s - 1):
            found[proc.pid] = proc
        for pid, created in self.seen.items():
            if pid in found:
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.01 and _alive(proc):
                    found[pid] = proc
        return list(found.values())

    def _outside_group(self) -> list[psutil.Process]:
        return [p for p in self.alive() if _pgid_of(p.pid) != self.pgid]

    def stop(self, grace_s: float = 20.0, *, settle_s: float = 0.5) -> GroupStop:
        """Ends the group and every recorded descendant (idempotent).

        Args:
            grace_s: Seconds between SIGTERM and SIGKILL.
            settle_s: When the leader has already exited, how long to let the rest
                of the group (e.g. a watchdog leaving) exit by itself first.

        Returns:
            What was sent and what is left (also kept in :attr:`result`).
        """
        if self.result is not None:
            return self.result
        proc, pgid = self.proc, self.pgid
        out = GroupStop()
        try:
            self.record()
            if proc.poll() is not None:
                deadline = time.monotonic() + settle_s
                while time.monotonic() < deadline and self.alive():
                    time.sleep(0.05)
            if proc.poll() is None or self.alive():
                _signal_group(pgid, signal.SIGTERM)
                out.signal_sent = "SIGTERM"
                for orphan in self._outside_group():  # descendants that left the group, one by one
                    with contextlib.suppress(psutil.Error):
                        orphan.terminate()
                        out.orphans_killed.append(orphan.pid)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline and (proc.poll() is None or self.alive()):
                    time.sleep(0.1)
                if proc.poll() is None or self.alive():
                    _signal_group(pgid, signal.SIGKILL)
                    out.signal_sent = "SIGKILL"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            stragglers = self.alive()
            for straggler in stragglers:
                with contextlib.suppress(psutil.Error):
                    straggler.kill()
                    if straggler.pid not in out.orphans_killed:
                        out.orphans_killed.append(straggler.pid)
            psutil.wait_procs(stragglers, timeout=5)
            out.leftover_pids = sorted(p.pid for p in self.alive())
        except BaseException:
            _signal_group(pgid, signal.SIGKILL)
            raise
        finally:
            _unregister(self)
        out.exit_code = proc.poll()
        self.result = out
        return out

    def remove_shm(self) -> list[str]:
        """Removes /dev/shm segments the group used that outlived it (see :func:`remove_orphaned_shm`)."""
        return remove_orphaned_shm(self.shm_seen, self.shm_before)


def spawn_group(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    cwd: str | Path | None = None,
    pin_cores: Collection[int] | None = None,
) -> ProcessGroup:
    """Starts ``command`` as the leader of a new session and process group.

    The leader gets SIGTERM when vtune dies (``PR_SET_PDEATHSIG``; if vtune died
    before that took effect, the leader terminates itself) and ``VTUNE_PARENT_PID``
    in its environment for its watchdog. The group is registered for the safety net
    until :meth:`ProcessGroup.stop`.

    Args:
        command: The argv.
        env: The whole environment of the command.
        stdin: As for :class:`subprocess.Popen`.
        stdout: As for :class:`subprocess.Popen`.
        stderr: As for :class:`subprocess.Popen`.
        cwd: Working directory.
        pin_cores: CPU cores to pin the leader to (inherited by its children).

    Returns:
        The running group.

    Raises:
        OSError: The command could not be executed.
    """
    parent_pid = os.getpid()
    cores = set(pin_cores) if pin_cores is not None else None

    def preexec() -> None:
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent_pid:  # vtune died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        if cores is not None:
            os.sched_setaffinity(0, cores)

    shm_before = shm_entries()
    launched_wall_s = time.time()
    proc = subprocess.Popen(
        list(command),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env={**env, PARENT_PID_ENV: str(parent_pid)},
        cwd=None if cwd is None else str(cwd),
        start_new_session=True,
        preexec_fn=preexec,
    )
    group = ProcessGroup(proc, launched_wall_s=launched_wall_s, shm_before=shm_before)
    with _LIVE_LOCK:
        _LIVE[proc.pid] = group
    return group


# ------------------------------------------------------------------ safety net
_LIVE: dict[int, ProcessGroup] = {}
_LIVE_LOCK = threading.RLock()  # re-entrant: the signal handler may interrupt a holder
_NET_INSTALLED = False
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _unregister(group: ProcessGroup) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(group.pgid, None)


def live_groups() -> list[ProcessGroup]:
    """The groups spawned by this process and not stopped yet."""
    with _LIVE_LOCK:
        return list(_LIVE.values())


def kill_live_groups(grace_s: float = 5.0) -> None:
    """SIGTERM every live group this process spawned, SIGKILL what is left after ``grace_s``.

    For the study's Ctrl-C handler and the safety net; the groups' own
    :meth:`ProcessGroup.stop` still runs later (and finds them gone).
    """
    groups = live_groups()
    if not groups:
        return
    for group in groups:
        _signal_group(group.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(g.poll() is None for g in groups):
        time.sleep(0.1)
    for group in groups:
        _signal_group(group.pgid, signal.SIGKILL)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    kill_live_groups()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_safety_net() -> None:
    """Kills every live group at interpreter exit and on SIGTERM/SIGHUP (idempotent).

    The signal handlers can only be installed from the main thread; called from
    another thread only the ``atexit`` hook is installed.
    """
    global _NET_INSTALLED
    if _NET_INSTALLED:
        return
    _NET_INSTALLED = True
    atexit.register(kill_live_groups, 10.0)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            _PREVIOUS_HANDLERS[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_fatal_signal)


# ---------------------------------------------------- groups of a dead process
def _carries_vtune_marker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return (PARENT_PID_ENV + "=").encode() in f.read()
    except OSError:
        return False


def kill_recorded_group(
    info: Mapping[str, Any], *, grace_s: float = 10.0, hostname: Callable[[], str] = socket.gethostname
) -> bool:
    """Kills the engine group a dead vtune process left, from the record kept of it.

    Args:
        info: The record, e.g. a study's trial user attribute ``engine``:
            ``{"host": ..., "pgid": ..., ...}`` (other keys are ignored).
        grace_s: Seconds between SIGTERM and SIGKILL.
        hostname: This machine's name (a seam for tests).

    Returns:
        True when processes of the group were found (and killed); False when the
        record names another host, no group, or nothing of it is alive. Only
        processes whose environment carries ``VTUNE_PARENT_PID`` are signalled, so
        an unrelated group that got the same id is left alone.
    """
    if not info or info.get("host") != hostname():
        return False
    try:
        pgid = int(info.get("pgid") or 0)
    except (TypeError, ValueError):
        return False
    if pgid <= 1:
        return False
    members = [p for p in _group_members(pgid, not_before_s=0.0) if _carries_vtune_marker(p.pid)]
    if not members:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(sig)
        _, alive = psutil.wait_procs(members, timeout=grace_s)
        if not alive:
            break
        members = alive
    return True
