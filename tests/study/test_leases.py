"""Leases of GPUs / CPU cores and the trial budget hold across processes on one machine."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.study.test_worker import fake_log, overlapping
from vtune._target import Target
from vtune.study._locks import UnitLocks
from vtune.study._packing import LeaseAborted, ResourcePool

ROOT = Path(__file__).resolve().parents[2]
_CTX = mp.get_context("fork")


def test_a_unit_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = ("import sys, time; from vtune.study._locks import UnitLocks; "
            "locks = UnitLocks('gpu'); assert locks.try_lock(3); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        mine = UnitLocks("gpu")
        assert not mine.try_lock(3) and mine.holder(3) == holder.pid
        assert mine.try_lock(2)  # other GPUs are free
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert mine.try_lock(3)  # the kernel dropped the dead process's lock
        assert mine.held() == {2, 3}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def _lease_loop(seed: int, rounds: int, out: mp.Queue) -> None:
    rng = random.Random(seed)
    pool = ResourcePool(Target(device="cpu", cpu_cores=(0, 1, 2, 3)), machine_wide=True)
    for _ in range(rounds):
        units = pool.acquire(rng.randint(1, 3))
        t0 = time.monotonic()
        time.sleep(rng.uniform(0.005, 0.03))
        out.put((os.getpid(), tuple(units), t0, time.monotonic()))
        pool.release(units)


def test_pools_in_two_processes_never_lease_the_same_unit_at_once():
    out: mp.Queue = _CTX.Queue()
    procs = [_CTX.Process(target=_lease_loop, args=(seed, 40, out)) for seed in (1, 2)]
    for p in procs:
        p.start()
    rows = [out.get(timeout=120) for _ in range(80)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len({r[0] for r in rows}) == 2
    for i, (pid_a, units_a, a0, a1) in enumerate(rows):
        for pid_b, units_b, b0, b1 in rows[i + 1:]:
            if a0 < b1 and b0 < a1:
                assert set(units_a).isdisjoint(units_b), (pid_a, units_a, pid_b, units_b)


def test_a_lease_held_elsewhere_is_waited_for_and_named(tmp_path):
    other = UnitLocks("cpu")
    assert other.try_lock(0)  # another "process": flock locks of two open files conflict even in one process
    pool = ResourcePool(Target(device="cpu", cpu_cores=(0, 1)), machine_wide=True)
    assert pool.acquire(1, timeout_s=0) == [1]  # the free core
    with pytest.raises(TimeoutError):
        pool.acquire(1, timeout_s=0.2)
    assert pool.held_elsewhere() == {0: os.getpid()}
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(LeaseAborted):
        pool.acquire(1, abort=stop)
    other.unlock(0)
    assert pool.acquire(1, timeout_s=5) == [0]


SCRIPT = r"""
import sys
from pathlib import Path
from tests.study.test_worker import fake_trial, make_settings
from vtune._target import Target
from vtune.study._study import run_study

root, k = Path(sys.argv[1]), int(sys.argv[2])
settings = make_settings(root, name="two", target=Target(device="cpu", cpu_cores=(0, 1)))
run_study(settings, n_trials=6, max_concurrent_trials=k, trial_fn=fake_trial, quiet=True, export=False,
          machine_locks=True)
"""


@pytest.mark.parametrize("ks", [(2, 2), (1, 2)], ids=["packed+packed", "alone+packed"])
def test_two_study_processes_on_one_study_hold_its_budget_and_the_cores(tmp_path, ks):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    env = dict(os.environ, VTUNE_TEST_LOG_DIR=str(log_dir), VTUNE_TEST_TRIAL_S="0.5")
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), str(k)], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for k in ks]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    db = sqlite3.connect(tmp_path / "studies" / "two.db")
    try:
        states = [s for (s,) in db.execute("select state from trials")]
    finally:
        db.close()
    assert states == ["COMPLETE"] * 6  # --n-trials 6 across both processes, no more
    rows = fake_log(log_dir)
    assert len(rows) == 6 and len({r["number"] for r in rows}) == 6
    for a, b in overlapping(rows):
        # Trials at once use disjoint cores; an unpinned trial (cores None) has the whole machine to itself.
        assert a["cpu_cores"] is not None and b["cpu_cores"] is not None, (a, b)
        assert set(a["cpu_cores"]).isdisjoint(b["cpu_cores"]), (a, b)
    at_once = max(sum(1 for r in rows if r["t0"] <= t < r["t1"]) for t in (r["t0"] for r in rows))
    assert at_once <= 2
