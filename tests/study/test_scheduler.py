"""ResourcePool: disjoint leases of GPUs / CPU cores for trials run at once."""

from __future__ import annotations

import random
import threading
import time

import pytest

from vtune._errors import VtuneError
from vtune._target import Target
from vtune.study._packing import ResourcePool, pick_positions


def gpu_pool(n: int = 8) -> ResourcePool:
    return ResourcePool(Target(device="gpu", gpus=tuple(range(n))))


def test_units_are_gpus_on_a_gpu_target_and_cores_on_the_cpu_engine():
    assert ResourcePool(Target(device="gpu", gpus=(2, 3), cpu_cores=(0, 1, 2))).units == (2, 3)
    cpu = ResourcePool(Target(device="cpu", cpu_cores=(4, 5, 6)))
    assert cpu.units == (4, 5, 6) and cpu.unit_name == "CPU core"
    assert cpu.acquire(2) == [4, 5] and cpu.free == [6]


def test_tp4_beside_four_tp1_on_8_gpus_either_order():
    pool = gpu_pool()
    ones = [pool.acquire(1) for _ in range(4)]
    assert sorted(u for o in ones for u in o) == [0, 1, 2, 3]
    assert pool.acquire(4) == [4, 5, 6, 7]
    pool = gpu_pool()
    assert pool.acquire(4) == [0, 1, 2, 3]
    assert sorted(pool.acquire(1)[0] for _ in range(4)) == [4, 5, 6, 7]
    assert pool.free == []


def test_four_tp2_take_aligned_pairs():
    pool = gpu_pool()
    assert [pool.acquire(2) for _ in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    pool.release([2, 3])
    assert pool.acquire(2) == [2, 3]


def test_best_fit_keeps_larger_blocks_whole():
    pool = gpu_pool()
    assert pool.acquire(4) == [0, 1, 2, 3]
    assert pool.acquire(1) == [4]
    pool.release([0, 1, 2, 3])
    # A second TP=1 goes beside the first (GPU 5), not into the free quad 0-3.
    assert pool.acquire(1) == [5]
    assert pool.acquire(4) == [0, 1, 2, 3]
    assert pool.acquire(2) == [6, 7]


def test_fragmented_pool_still_serves_when_enough_units_are_free():
    # Free: 0, 2, 4, 6 -- no aligned pair, but two units are free: never wait then.
    assert pick_positions(2, {0, 2, 4, 6}, 8) is not None
    assert len(set(pick_positions(2, {0, 2, 4, 6}, 8) or [])) == 2
    assert pick_positions(3, {1, 5}, 8) is None
    # Odd sizes and non-power-of-two pools.
    assert pick_positions(3, set(range(8)), 8) == [0, 1, 2]
    assert pick_positions(6, set(range(6)), 6) == [0, 1, 2, 3, 4, 5]
    assert pick_positions(1, {0, 1}, 2) == [0]


def test_requests_that_can_never_be_served_fail_at_once():
    pool = gpu_pool(4)
    with pytest.raises(VtuneError, match="needs 8 GPUs but this node offers 4"):
        pool.acquire(8)
    with pytest.raises(VtuneError, match="at least one"):
        pool.acquire(0)
    assert pool.check(4) is None and "needs 5" in (pool.check(5) or "")


def test_release_rejects_units_not_leased():
    pool = gpu_pool(4)
    lease = pool.acquire(2)
    pool.release(lease)
    with pytest.raises(ValueError, match="not leased"):
        pool.release(lease)
    with pytest.raises(ValueError, match="not leased"):
        pool.release([9])
    assert pool.free == [0, 1, 2, 3]


def test_acquire_blocks_until_release_and_times_out_without_leasing():
    pool = gpu_pool(2)
    held = pool.acquire(2)
    with pytest.raises(TimeoutError):
        pool.acquire(1, timeout_s=0.2)
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(1)))
    t.start()
    _wait_until(lambda: pool.waiting == 1)
    assert got == []  # still blocked
    pool.release(held)
    t.join(10)
    assert got == [[0]] and pool.free == [1]


def test_first_come_first_served_a_large_request_is_not_starved():
    pool = gpu_pool(8)
    small = [pool.acquire(1) for _ in range(4)]  # GPUs 0-3 busy, 4-7 free
    order: list[str] = []
    lock = threading.Lock()

    def take(name: str, n: int) -> None:
        units = pool.acquire(n)
        with lock:
            order.append(name)
        time.sleep(0.05)
        pool.release(units)

    big = threading.Thread(target=take, args=("tp8", 8))
    big.start()
    _wait_until(lambda: pool.waiting == 1)
    late = threading.Thread(target=take, args=("tp1", 1))
    late.start()
    _wait_until(lambda: pool.waiting == 2)
    # Four GPUs are free, but the TP=1 that came later waits behind the TP=8.
    assert order == [] and len(pool.free) == 4
    for units in small:
        pool.release(units)
    big.join(10)
    late.join(10)
    assert order == ["tp8", "tp1"]
    assert pool.free == list(range(8))


def test_never_oversubscribed_under_random_concurrent_sizes():
    pool = gpu_pool(8)
    in_use: dict[int, int] = {}
    lock = threading.Lock()
    errors: list[str] = []
    peak = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            n = rng.choice([1, 1, 2, 4, 8, 3])
            units = pool.acquire(n)
            with lock:
                if len(units) != n or len(set(units)) != n:
                    errors.append(f"lease {units} for {n}")
                for u in units:
                    if u in in_use:
                        errors.append(f"unit {u} leased twice")
                    in_use[u] = seed
                peak[0] = max(peak[0], len(in_use))
            time.sleep(rng.random() * 0.003)
            with lock:
                for u in units:
                    del in_use[u]
            pool.release(units)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert errors == []
    assert peak[0] <= 8 and pool.free == list(range(8)) and pool.waiting == 0


def test_lease_context_manager_releases_on_error():
    pool = gpu_pool(2)
    with pytest.raises(RuntimeError), pool.lease(2) as units:
        assert units == [0, 1] and pool.free == []
        raise RuntimeError("trial broke")
    assert pool.free == [0, 1]


def _wait_until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
