"""Packing trials on one node: disjoint GPUs (or CPU cores) for trials run at once.

A study with ``--max-concurrent-trials`` above 1 runs trials in threads (Optuna's
``n_jobs``); before its engine starts, each trial takes a lease on the units it
needs from one :class:`ResourcePool`: GPU indices on a GPU target (TP x PP x DP of
them), CPU cores on vLLM's CPU engine (one or more per worker rank). Leases never
overlap, whatever the sizes asked for, and a trial that waits is served in arrival
order, so a large trial (TP=8) is not starved by a stream of small ones.

Placement keeps large blocks whole. The units are taken in the order the target
lists them (GPU index order: on NVLink/NVSwitch boards and PCIe switches,
neighbouring indices are the best-connected pairs and quads) and cut, as a buddy
allocator does, into aligned blocks of 1, 2, 4, 8... units. A request for ``n``
units goes into an aligned block of the smallest power of two >= ``n`` that has
``n`` free units, choosing best fit: the block, then its parent block, and so on,
with the fewest free units (ties: the lowest). So on 8 GPUs four TP=1 trials take
0-3 and leave 4-7 whole for a TP=4 trial, four TP=2 trials take the pairs 0-1,
2-3, 4-5, 6-7, and a TP=1 beside a lone TP=1 on GPU 4 goes to GPU 5, not 0. When
fragmentation leaves no aligned block with room, any free units are used (the
units in the most-used blocks first): a trial never waits while enough units are
free.

Leases hold across processes: with ``machine_wide`` (what a study launching real engines
uses) a unit is only leased once its machine-wide lock file is taken
(:class:`~vtune.study._locks.UnitLocks`), so two vtune processes on one machine never put
engines on the same GPU or core; units another process holds count as used for the
placement, and a waiting request polls them.

:func:`default_concurrency` fills the node with the smallest layout the space can sample.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from vtune._errors import VtuneError
from vtune._memory import parameter_count
from vtune._model_shape import load_model_shape
from vtune._space import parse_layout
from vtune._target import Target
from vtune.study._locks import UnitLocks
from vtune.study._settings import StudySettings

__all__ = [
    "CPU_TRIAL_OVERHEAD_GIB", "LeaseAborted", "ResourcePool", "cpu_trial_memory_gib", "default_concurrency",
    "layout_sizes", "pick_positions",
]

#: Seconds between two looks at units held by other processes while a request waits.
POLL_S = 0.5


class LeaseAborted(Exception):
    """:meth:`ResourcePool.acquire` gave up waiting because its ``abort`` event was set (the study stops)."""


def _pow2_at_least(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size

def _free_in(free: set[int], start: int, size: int, total: int) -> int:
    return sum(1 for p in range(start, min(start + size, total)) if p in free)

def _enclosing_free(free: set[int], position: int, size: int, top: int, total: int) -> tuple[int, ...]:
    """Free units in the aligned blocks of ``size``, ``2 * size`` ... ``top`` holding ``position``."""
    counts = []
    while size <= top:
        start = position - position % size
        counts.append(_free_in(free, start, size, total))
        size *= 2
    return tuple(counts)

def pick_positions(n: int, free: set[int], total: int) -> list[int] | None:
    """Chooses ``n`` of the free positions ``0 .. total - 1`` (best fit on aligned blocks).

    Args:
        n: Units wanted (>= 1).
        free: The free positions.
        total: Number of positions in all.

    Returns:
        The chosen positions, sorted; None when fewer than ``n`` are free.
    """
    if n < 1 or len(free) < n:
        return None
    top = _pow2_at_least(total)
    size = _pow2_at_least(n)
    while size <= top:
        best: tuple[tuple[int, ...], int] | None = None
        for start in range(0, total, size):
            if _free_in(free, start, size, total) < n:
                continue
            score = (*_enclosing_free(free, start, size, top, total), start)
            if best is None or score < best[0]:
                best = (score, start)
        if best is not None:
            start = best[1]
            block = {p for p in range(start, min(start + size, total)) if p in free}
            if len(block) == n:
                return sorted(block)
            # More free units in the block than wanted: take them one at a time, each from
            # the most-used sub-blocks, so the emptiest sub-blocks stay whole.
            chosen: list[int] = []
            for _ in range(n):
                pick = min(block, key=lambda p: (*_enclosing_free(block, p, 1, size, start + size), p))
                block.discard(pick)
                chosen.append(pick)
            return sorted(chosen)
        size *= 2
    return None  # not reached: the block covering everything holds every free unit

class ResourcePool:
    """The GPUs (or CPU cores) of one node, leased to concurrent trials; thread-safe.

    Args:
        target: The hardware: its GPUs on a GPU target, its CPU cores on the CPU engine.
        units: The units to share instead of the target's (tests, a worker's subset).
        machine_wide: Also take each unit's machine-wide lock file, so that other
            processes' pools (and other machine-wide pools here) never lease it at the same time.
        lock_folder: Folder of the lock files (default: ``$VTUNE_LOCK_DIR`` or
            ``/tmp/vtune-locks-<uid>``).
    """

    def __init__(self, target: Target, *, units: Sequence[int] | None = None, machine_wide: bool = False,
                 lock_folder: Path | None = None) -> None:
        if units is None:
            units = target.gpus if target.device == "gpu" else target.cpu_cores
        self.units: tuple[int, ...] = tuple(int(u) for u in units)
        if len(set(self.units)) != len(self.units):
            raise ValueError(f"ResourcePool units must be distinct, got {list(self.units)}")
        self.unit_name = "GPU" if target.device == "gpu" else "CPU core"
        self._index = {u: i for i, u in enumerate(self.units)}
        self._free: set[int] = set(range(len(self.units)))
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self.locks = UnitLocks(target.device, lock_folder) if machine_wide else None

    @property
    def size(self) -> int:
        """Units in the pool."""
        return len(self.units)

    @property
    def free(self) -> list[int]:
        """The units not leased now (a snapshot)."""
        with self._cond:
            return [self.units[p] for p in sorted(self._free)]

    @property
    def waiting(self) -> int:
        """Callers blocked in :meth:`acquire` now."""
        with self._cond:
            return len(self._queue)

    def check(self, n: int) -> str | None:
        """Why a request for ``n`` units can never be served here (None: it can)."""
        if n < 1:
            return f"a trial needs at least one {self.unit_name}, asked for {n}"
        if n > self.size:
            return (f"needs {n} {self.unit_name}s but this node offers {self.size} "
                    f"({', '.join(str(u) for u in self.units) or 'none'})")
        return None

    def acquire(self, n: int, timeout_s: float | None = None, abort: threading.Event | None = None) -> list[int]:
        """Blocks until ``n`` units are free, leases them and returns them (sorted).

        Callers are served in arrival order: one that asks for many units is not
        overtaken by later small requests (within this process; other processes'
        requests are not ordered with them).

        Args:
            n: Units wanted.
            timeout_s: Longest wait (None: no limit).
            abort: Stop waiting once this event is set.

        Raises:
            VtuneError: ``n`` is below 1 or more than the pool holds (it could never be served).
            TimeoutError: ``timeout_s`` passed first; nothing is leased then.
            LeaseAborted: ``abort`` was set first; nothing is leased then.
        """
        problem = self.check(n)
        if problem:
            raise VtuneError(problem)
        ticket = object()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._queue.append(ticket)
            try:
                while True:
                    if abort is not None and abort.is_set():
                        raise LeaseAborted(f"stopped waiting for {n} {self.unit_name}(s)")
                    elsewhere = False
                    if self._queue[0] is ticket:
                        chosen, elsewhere = self._take(n)
                        if chosen is not None:
                            self._free.difference_update(chosen)
                            return [self.units[p] for p in chosen]
                    left_s = None if deadline is None else deadline - time.monotonic()
                    if left_s is not None and left_s <= 0:
                        raise TimeoutError(f"no {n} free {self.unit_name}(s) within {timeout_s:g} s")
                    if elsewhere or abort is not None:  # nothing here will notify: look again soon
                        left_s = POLL_S if left_s is None else min(left_s, POLL_S)
                    self._cond.wait(left_s)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def _take(self, n: int) -> tuple[list[int] | None, bool]:
        """Positions for ``n`` units free here and (machine-wide) not held elsewhere, their locks taken.

        Returns:
            The positions (None: not now), and whether units held by other processes are why.
        """
        if self.locks is None or len(self._free) < n:
            return pick_positions(n, self._free, self.size), False
        lockable = {p for p in self._free if self.locks.try_lock(self.units[p])}
        chosen = pick_positions(n, lockable, self.size)
        for p in lockable - set(chosen or ()):
            self.locks.unlock(self.units[p])
        return chosen, chosen is None

    def held_elsewhere(self) -> dict[int, int | None]:
        """Units free here whose machine-wide lock another process holds now: ``{unit: its pid}``."""
        if self.locks is None:
            return {}
        with self._cond:
            out: dict[int, int | None] = {}
            for p in sorted(self._free):
                unit = self.units[p]
                if self.locks.try_lock(unit):
                    self.locks.unlock(unit)
                else:
                    out[unit] = self.locks.holder(unit)
            return out

    def release(self, units: Sequence[int]) -> None:
        """Returns a lease to the pool.

        Raises:
            ValueError: A unit that is not in the pool or not leased (a double release).
        """
        with self._cond:
            positions = []
            for u in units:
                p = self._index.get(int(u))
                if p is None or p in self._free or p in positions:
                    raise ValueError(f"{self.unit_name} {u} is not leased from this pool")
                positions.append(p)
            if self.locks is not None:
                for p in positions:
                    self.locks.unlock(self.units[p])
            self._free.update(positions)
            self._cond.notify_all()

    @contextmanager
    def lease(self, n: int, timeout_s: float | None = None) -> Iterator[list[int]]:
        """``with pool.lease(2) as gpus:`` acquires and always releases."""
        units = self.acquire(n, timeout_s)
        try:
            yield units
        finally:
            self.release(units)

def layout_sizes(settings: StudySettings) -> list[int]:
    """Units (GPUs, or CPU-engine ranks) each parallel layout the study can sample takes."""
    dim = settings.space.get("parallel_layout")
    if dim is not None and dim.enabled and dim.fixed is not None:
        names = [str(dim.fixed)]
    elif dim is not None and dim.active and dim.choices:
        names = [str(c) for c in dim.choices]
    else:
        return [settings.base.num_gpus]
    sizes = []
    for name in names:
        tp, pp, dp = parse_layout(name)
        sizes.append(tp * pp * dp)
    return sizes

def default_concurrency(settings: StudySettings) -> int:
    """Trials at once that fill the node: units // the smallest layout's size (at least 1).

    Units are the GPUs on a GPU target and the cores on the CPU engine (one per
    rank). A space whose layouts all take the whole node (the default GPU space:
    every layout uses every GPU) gives 1.

    On the CPU engine every trial also holds its KV cache space and the model
    in host memory, so there the count is also capped by the memory available
    now: one trial per :func:`cpu_trial_memory_gib` (a 64-core box does not start
    64 engines with 4 GiB of KV cache each on 128 GiB).
    """
    units = settings.target.num_gpus if settings.target.device == "gpu" else len(settings.target.cpu_cores)
    smallest = max(1, min(layout_sizes(settings)))
    k = max(1, units // smallest)
    if settings.target.device == "cpu":
        import psutil

        available_gib = psutil.virtual_memory().available / 2**30
        k = min(k, max(1, int(available_gib // cpu_trial_memory_gib(settings))))
    return k

#: Host memory (GiB) a CPU-engine trial takes besides its KV cache: API server, engine core, GuideLLM.
CPU_TRIAL_OVERHEAD_GIB = 2.5

def cpu_trial_memory_gib(settings: StudySettings) -> float:
    """Most host memory one CPU-engine trial of the study may take: largest KV space + weights + overhead."""
    from vtune._target import CPU_DEFAULT_KV_SPACE_GIB

    dim = settings.space.get("VLLM_CPU_KVCACHE_SPACE")
    if dim is not None and dim.enabled and dim.fixed is not None:
        kv = float(dim.fixed)
    elif dim is not None and dim.active:
        kv = float(max(dim.choices or [0])) if dim.kind == "categorical" else float(dim.high or 0)
    else:
        kv = float(settings.base.env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_DEFAULT_KV_SPACE_GIB)
    try:
        weights = parameter_count(load_model_shape(settings.model)) * 4 / 2**30  # float32 at most
    except Exception:
        weights = 0.0
    return kv + weights + CPU_TRIAL_OVERHEAD_GIB
