"""Kill a process group vtune started as soon as the vtune process that started it is gone.

Why: every engine (and every GuideLLM child) runs as the leader of its own session
and process group, and only that leader gets the parent-death signal (SIGTERM). vLLM
answers SIGTERM with a graceful shutdown which, measured on 2 cores, left engine
processes alive for more than 10 s after a ``kill -9`` of vtune in 2 of 3 runs: a
launcher reparented to PID 1 until +12 s, and an engine that was still starting kept
its EngineCore and workers (13 listening ports) until +17 to +31 s.

How: a process started through :func:`vtune.engines._process.spawn_group` finds
``VTUNE_PARENT_PID`` in its environment and calls :func:`start_watchdog` first thing
(the launcher before it imports vLLM; the GuideLLM child before it imports
GuideLLM). That forks a small watchdog into the same group which waits on the vtune
process with ``os.pidfd_open`` and ``poll`` (polling every 0.2 s where pidfds are
missing). When vtune is gone it sends SIGTERM to every process of the group and to
the descendants it recorded (pid and start time, refreshed every second, so ones
that left the group are found too), SIGKILL after :data:`GRACE_S`, and removes the
``/dev/shm`` segments the group used, created since it started, that nobody uses
any more. If vtune
died before the watchdog started (the leader was already reparented), the group is
killed at once. The watchdog leaves quietly when the leader has exited and no other
process of the group is left, and it dies with the group when vtune stops the engine
normally (it keeps SIGTERM's default action until it has to kill).

This module imports nothing but the standard library, so the watchdog starts within
milliseconds of the launcher; the ``/proc`` helpers here are also used by
:mod:`vtune.engines._process`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterable, Mapping

__all__ = [
    "GRACE_S",
    "PARENT_PID_ENV",
    "group_members",
    "shm_entries",
    "shm_in_use_anywhere",
    "shm_used_by",
    "start_time",
    "start_watchdog",
]

#: Environment variable naming the vtune process a spawned group belongs to.
PARENT_PID_ENV = "VTUNE_PARENT_PID"
#: Seconds between the watchdog's SIGTERM and its SIGKILL.
GRACE_S = 1.0
_FALLBACK_POLL_S = 0.2
_SNAPSHOT_S = 1.0
_SHM_DIR = "/dev/shm"


# ------------------------------------------------------------------ /proc helpers
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (tells a reused pid apart), or None."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _live(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs and is no zombie (and, given ``started``, is that same process)."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or (len(fields) > 19 and int(fields[19]) == started)


def _table() -> dict[int, tuple[int, int, int]]:
    """``{pid: (ppid, pgid, start time)}`` of every live, non-zombie process."""
    out: dict[int, tuple[int, int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields and len(fields) > 19 and fields[0] not in ("Z", "X"):
            out[int(name)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return out


def group_members(pgid: int, table: Mapping[int, tuple[int, int, int]] | None = None) -> dict[int, int]:
    """``{pid: start time}`` of the live processes of process group ``pgid``."""
    rows = _table() if table is None else table
    return {pid: row[2] for pid, row in rows.items() if row[1] == pgid}


def _descendants(root: int, table: Mapping[int, tuple[int, int, int]]) -> dict[int, int]:
    """``{pid: start time}`` of the live descendants of ``root``."""
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = table[pid][2]
            todo.extend(children.get(pid, []))
    return out


def shm_entries() -> dict[str, int]:
    """``{name: inode}`` of ``/dev/shm`` now."""
    try:
        return {entry.name: entry.inode() for entry in os.scandir(_SHM_DIR)}
    except OSError:
        return {}


def shm_used_by(pid: int) -> set[str]:
    """Names of ``/dev/shm`` segments process ``pid`` maps or holds open."""
    names: set[str] = set()
    prefix = _SHM_DIR + "/"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            at = line.find(prefix)
            if at >= 0:
                names.add(line[at + len(prefix) :].strip().removesuffix(" (deleted)"))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    names.add(target[len(prefix) :].removesuffix(" (deleted)"))
    return {n for n in names if n and "/" not in n}


def shm_in_use_anywhere(names: Iterable[str]) -> set[str]:
    """Which of ``names`` some live process on this machine maps or holds open."""
    wanted = set(names)
    used: set[str] = set()
    if not wanted:
        return used
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                used |= shm_used_by(int(entry)) & wanted
                if used == wanted:
                    break
    return used


def remove_orphaned_shm(candidates: Iterable[str], before: Mapping[str, int]) -> list[str]:
    """Removes ``/dev/shm`` segments among ``candidates`` that outlived their users.

    Only segments present now but absent from ``before`` (by name and inode), owned
    by this user and used by no live process are removed.

    Returns:
        The names removed, sorted.
    """
    now = shm_entries()
    fresh = {name for name in candidates if name in now and before.get(name) != now[name]}
    owned = set()
    for name in fresh:
        with contextlib.suppress(OSError):
            if os.stat(os.path.join(_SHM_DIR, name)).st_uid == os.geteuid():
                owned.add(name)
    removed = []
    for name in sorted(owned - shm_in_use_anywhere(owned)):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_SHM_DIR, name))
            removed.append(name)
    return removed


# ----------------------------------------------------------------------- watchdog
def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None where pidfds are not available.

    Raises:
        ProcessLookupError: ``pid`` does not exist.
    """
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except ProcessLookupError:
        raise
    except OSError:
        return None


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"vtune watchdog (pid {os.getpid()}): {text}\n".encode())


def _ours(pgid: int, table: Mapping[int, tuple[int, int, int]]) -> dict[int, int]:
    """The group's live processes and, while the leader lives (it is then our parent), its descendants.

    Once the leader is gone its pid may be reused by an unrelated process, whose
    children must not count as the engine's.
    """
    found = group_members(pgid, table)
    if os.getppid() == pgid:
        found.update(_descendants(pgid, table))
    found.pop(os.getpid(), None)
    return found


def _kill_group(pgid: int, recorded: Mapping[int, int], shm_before: Mapping[str, int]) -> None:
    """SIGTERM the group and the recorded descendants, SIGKILL after :data:`GRACE_S`, clean /dev/shm."""
    me = os.getpid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is not for the watchdog
    targets = {**recorded, **_ours(pgid, _table())}
    targets.pop(me, None)
    shm_seen: set[str] = set()
    for pid in targets:
        shm_seen |= shm_used_by(pid)
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGTERM)
    for pid, started in targets.items():
        if _live(pid, started):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_live(p, s) for p, s in targets.items()):
        time.sleep(0.05)
    # SIGKILL one by one (not the group: the watchdog is in it), again while new ones appear.
    for _round in range(20):
        targets.update(_ours(pgid, _table()))
        alive = {p: s for p, s in targets.items() if _live(p, s)}
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    removed = remove_orphaned_shm(shm_seen, shm_before)  # only segments this group used
    _say(f"vtune is gone: killed process group {pgid} ({len(targets)} processes)"
         + (f", removed {len(removed)} /dev/shm segments" if removed else ""))


def _watch(vtune_fd: int | None, vtune_pid: int, leader: int, pgid: int, shm_before: Mapping[str, int]) -> None:
    """The watchdog's loop (runs in the forked child)."""
    vtune_started = start_time(vtune_pid)
    try:
        leader_fd = _pidfd(leader)
    except ProcessLookupError:
        leader_fd = None
    poller = select.poll()
    for fd in (vtune_fd, leader_fd):
        if fd is not None:
            poller.register(fd, select.POLLIN)
    recorded: dict[int, int] = {}
    leader_gone = os.getppid() != leader
    last_snapshot = 0.0
    while True:
        timeout_s = _SNAPSHOT_S if vtune_fd is not None else _FALLBACK_POLL_S
        ready = {fd for fd, _ in poller.poll(int(timeout_s * 1000))}
        if vtune_fd in ready or (vtune_fd is None and not _live(vtune_pid, vtune_started)):
            _kill_group(pgid, recorded, shm_before)
            return
        if not leader_gone and (leader_fd in ready or os.getppid() != leader):
            leader_gone = True
            if leader_fd is not None:
                poller.unregister(leader_fd)
        now = time.monotonic()
        if leader_gone or now - last_snapshot >= _SNAPSHOT_S:
            last_snapshot = now
            members = _ours(pgid, _table())
            if leader_gone and not members:
                return  # the engine ended and left nothing behind: nothing to guard
            recorded = {p: s for p, s in recorded.items() if _live(p, s)}
            recorded.update(members)


def start_watchdog(environ: Mapping[str, str] | None = None) -> int | None:
    """Forks the watchdog of this process group, if vtune started this process.

    Call it first thing in a process started by
    :func:`vtune.engines._process.spawn_group` (before anything that starts
    threads or children). Does nothing unless ``VTUNE_PARENT_PID`` is set and this
    process leads its own process group (so a group it did not create is never
    killed). When vtune is already gone (this process was reparented, or the pid no
    longer exists) the group is killed at once: this process does not return.

    Args:
        environ: The environment to read (default ``os.environ``).

    Returns:
        The watchdog's pid, or None when none was started.
    """
    env = os.environ if environ is None else environ
    try:
        vtune_pid = int(env.get(PARENT_PID_ENV, ""))
    except ValueError:
        return None
    leader = os.getpid()
    try:
        pgid = os.getpgid(0)
    except OSError:
        return None
    if pgid != leader or vtune_pid <= 1 or vtune_pid == leader:
        return None
    # Open the pidfd first, then check that vtune is still our parent: the pidfd then surely names vtune.
    vtune_fd: int | None = None
    try:
        vtune_fd = _pidfd(vtune_pid)
        gone = os.getppid() != vtune_pid
    except ProcessLookupError:
        gone = True
    if gone:
        _say(f"vtune (pid {vtune_pid}) is gone before the engine started: killing process group {pgid}")
        os.killpg(pgid, signal.SIGKILL)
    shm_before = shm_entries()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        if vtune_fd is not None:
            os.close(vtune_fd)
        return child
    # The watchdog: hold no pipe of the parent's open (a reader must see EOF when the leader exits).
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        keep = -1 if vtune_fd is None else vtune_fd
        os.closerange(3, keep if keep >= 3 else 3)
        os.closerange(max(3, keep + 1), 65536)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _watch(vtune_fd, vtune_pid, leader, pgid, shm_before)
    except BaseException as exc:  # noqa: BLE001 - the watchdog must never run the parent's code
        _say(f"failed: {type(exc).__name__}: {exc}")
    finally:
        os._exit(0)
    return None  # not reached
