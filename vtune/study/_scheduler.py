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

:func:`worker_job_script` writes the Slurm or PBS job script behind
``vtune submit``: an array of ``vtune worker`` processes, one per node, joining a
study on a shared PostgreSQL storage.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from vtune._errors import VtuneError
from vtune._target import Target

__all__ = ["ResourcePool", "pick_positions", "walltime_hms", "worker_job_script"]


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
    """

    def __init__(self, target: Target, *, units: Sequence[int] | None = None) -> None:
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

    def acquire(self, n: int, timeout_s: float | None = None) -> list[int]:
        """Blocks until ``n`` units are free, leases them and returns them (sorted).

        Callers are served in arrival order: one that asks for many units is not
        overtaken by later small requests.

        Args:
            n: Units wanted.
            timeout_s: Longest wait (None: no limit).

        Raises:
            VtuneError: ``n`` is below 1 or more than the pool holds (it could never be served).
            TimeoutError: ``timeout_s`` passed first; nothing is leased then.
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
                    if self._queue[0] is ticket:
                        chosen = pick_positions(n, self._free, self.size)
                        if chosen is not None:
                            self._free.difference_update(chosen)
                            return [self.units[p] for p in chosen]
                    left_s = None if deadline is None else deadline - time.monotonic()
                    if left_s is not None and left_s <= 0:
                        raise TimeoutError(f"no {n} free {self.unit_name}(s) within {timeout_s:g} s")
                    self._cond.wait(left_s)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

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


# ------------------------------------------------------------ cluster jobs
_SCHEDULERS = ("slurm", "pbs")


def walltime_hms(text: str) -> str:
    """``HH:MM:SS`` from ``HH:MM:SS``, ``90m``, ``4h`` or seconds.

    Raises:
        VtuneError: Not a duration.
    """
    t = text.strip()
    if ":" in t:
        parts = t.split(":")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            h, m, s = (int(p) for p in parts)
            if m < 60 and s < 60 and h + m + s > 0:
                return f"{h:02d}:{m:02d}:{s:02d}"
        raise VtuneError(f"--walltime {text}: write HH:MM:SS, or a number with s/m/h (e.g. 4h)")
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(t[:-1]) * units[t[-1].lower()] if t[-1:].lower() in units else float(t)
    except (ValueError, IndexError):
        raise VtuneError(f"--walltime {text}: write HH:MM:SS, or a number with s/m/h (e.g. 4h)") from None
    if seconds <= 0:
        raise VtuneError(f"--walltime must be > 0, got {text}")
    total = int(round(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def worker_job_script(
    scheduler: str,
    *,
    study: str,
    storage_url: str,
    workers: int,
    gpus_per_worker: int,
    cpus_per_worker: int,
    walltime: str,
    workdir: str,
    python: str,
    log_dir: str,
    queue: str | None = None,
    account: str | None = None,
    max_concurrent_trials: int | None = None,
) -> str:
    """A Slurm or PBS job script starting ``workers`` ``vtune worker`` processes, one per array task.

    Each array task is one worker on one node with ``gpus_per_worker`` GPUs (0:
    the CPU engine) and ``cpus_per_worker`` cores. The worker is given the GPUs
    the scheduler assigned (``CUDA_VISIBLE_DEVICES`` as ``--gpus``, when it lists
    indices), so that it never touches another job's GPUs.

    Args:
        scheduler: ``slurm`` or ``pbs`` (PBS Pro: ``select``/``ngpus``, arrays with ``-J``).
        study: The study name.
        storage_url: Its shared storage (PostgreSQL).
        workers: Array tasks (workers).
        gpus_per_worker: GPUs per worker.
        cpus_per_worker: CPU cores per worker.
        walltime: ``HH:MM:SS``.
        workdir: Folder each worker runs in (its ``studies/`` goes there).
        python: The Python that has vtune installed.
        log_dir: Folder for the jobs' output files.
        queue: Slurm partition or PBS queue.
        account: Account/project to charge.
        max_concurrent_trials: Passed on to each worker (None: the worker fills its node).

    Raises:
        VtuneError: An unknown scheduler or counts out of range.
    """
    import shlex

    if scheduler not in _SCHEDULERS:
        raise VtuneError(f"--scheduler {scheduler}: use one of {', '.join(_SCHEDULERS)}")
    if workers < 1:
        raise VtuneError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker < 0 or cpus_per_worker < 1:
        raise VtuneError(f"--gpus-per-worker must be >= 0 and --cpus-per-worker >= 1, got "
                         f"{gpus_per_worker} and {cpus_per_worker}")
    q = shlex.quote
    name = "vtune-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in study)[:40]
    lines = ["#!/bin/bash"]
    if scheduler == "slurm":
        lines += [f"#SBATCH --job-name={name}", f"#SBATCH --array=0-{workers - 1}", "#SBATCH --nodes=1",
                  "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={cpus_per_worker}", f"#SBATCH --time={walltime}",
                  f"#SBATCH --output={log_dir}/{name}-%A_%a.out"]
        if gpus_per_worker:
            lines.append(f"#SBATCH --gpus-per-task={gpus_per_worker}")
        if queue:
            lines.append(f"#SBATCH --partition={queue}")
        if account:
            lines.append(f"#SBATCH --account={account}")
        task = "${SLURM_ARRAY_TASK_ID:-0}"
    else:
        select = f"select=1:ncpus={cpus_per_worker}" + (f":ngpus={gpus_per_worker}" if gpus_per_worker else "")
        lines += [f"#PBS -N {name}", f"#PBS -l {select}", f"#PBS -l walltime={walltime}", "#PBS -j oe",
                  f"#PBS -o {log_dir}/"]
        if workers > 1:
            lines.append(f"#PBS -J 0-{workers - 1}")
        if queue:
            lines.append(f"#PBS -q {queue}")
        if account:
            lines.append(f"#PBS -A {account}")
        task = "${PBS_ARRAY_INDEX:-0}"
    cmd = [python, "-m", "vtune", "worker", "--study", study, "--storage", storage_url]
    if max_concurrent_trials is not None:
        cmd += ["--max-concurrent-trials", str(max_concurrent_trials)]
    lines += [
        f"# {workers} vtune worker(s) of study {study}: one per array task, {gpus_per_worker} GPU(s) each.",
        "# Written by `vtune submit`; the storage URL is below, so keep this file private (mode 0700).",
        "set -euo pipefail",
        f"cd {q(workdir)}",
        f'echo "vtune worker {task} of {workers} on $(hostname), GPUs ${{CUDA_VISIBLE_DEVICES:-none}}"',
        "gpus=()",
        "# The GPUs the scheduler gave this task (indices only: a UUID list is left to the worker's own discovery).",
        'if [[ "${CUDA_VISIBLE_DEVICES:-}" =~ ^[0-9]+(,[0-9]+)*$ ]]; then gpus=(--gpus "$CUDA_VISIBLE_DEVICES"); fi',
        "exec " + " ".join(q(c) for c in cmd) + ' ${gpus[@]+"${gpus[@]}"}',
    ]
    return "\n".join(lines) + "\n"
