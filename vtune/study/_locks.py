"""Machine-wide leases: one lock file per GPU / CPU core, shared by every vtune process here.

Two vtune processes on one machine (two ``vtune study`` on one study, a study and a worker,
two studies) must not put engines on the same GPU or core: each packs trials for the
whole node, so without these locks they would run twice as many engines as the node
holds and measure nothing worth keeping.

A unit is held by an exclusive ``flock`` on ``<dir>/gpu-<index>.lock`` (NVML index, what
``CUDA_VISIBLE_DEVICES`` takes) or ``<dir>/cpu-<core>.lock``, where ``<dir>`` is
``$VTUNE_LOCK_DIR`` or ``/tmp/vtune-locks-<uid>``. The kernel drops a lock when its file
is closed or its process dies (``kill -9`` included), so a crashed vtune never leaves a
unit locked; a lock file holds the pid of its holder (for messages only). ``flock``
locks conflict between open files of one process too, so threads of one process are
serialized by :class:`~vtune.study._packing.ResourcePool` before they get here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

__all__ = ["LOCK_DIR_ENV", "UnitLocks", "lock_dir"]

#: Environment variable naming the folder of the lock files.
LOCK_DIR_ENV = "VTUNE_LOCK_DIR"


def lock_dir() -> Path:
    """``$VTUNE_LOCK_DIR``, else ``/tmp/vtune-locks-<uid>`` (created, private to the user)."""
    path = Path(os.environ.get(LOCK_DIR_ENV) or f"/tmp/vtune-locks-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class UnitLocks:
    """Non-blocking machine-wide locks on GPUs or CPU cores; thread-safe.

    Args:
        device: ``gpu`` or ``cpu`` (the lock files' prefix).
        folder: Where the lock files are (default: :func:`lock_dir`).
    """

    def __init__(self, device: str, folder: Path | None = None) -> None:
        self.prefix = "gpu" if device == "gpu" else "cpu"
        self.folder = folder
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def path(self, unit: int) -> Path:
        """The lock file of ``unit``."""
        return (self.folder or lock_dir()) / f"{self.prefix}-{int(unit)}.lock"

    def try_lock(self, unit: int) -> bool:
        """Takes ``unit`` if no other holder has it; True when this object holds it now."""
        with self._lock:
            if unit in self._fds:
                return True
            fd = os.open(self.path(unit), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            self._fds[unit] = fd
            return True

    def unlock(self, unit: int) -> None:
        """Gives ``unit`` back (no-op when not held)."""
        with self._lock:
            fd = self._fds.pop(unit, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def held(self) -> set[int]:
        """The units this object holds."""
        with self._lock:
            return set(self._fds)

    def close(self) -> None:
        """Gives every unit back."""
        for unit in self.held():
            self.unlock(unit)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def holder(self, unit: int) -> int | None:
        """The pid written by the unit's current (or last) holder, if readable."""
        try:
            text = self.path(unit).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None
