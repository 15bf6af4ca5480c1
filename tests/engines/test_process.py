"""Tests of vtune.engines._process and ._watchdog with small Python processes standing in for engines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import vtune._hardware as hardware
from tests.engines.test_vllm import REPO, gone, wait_for
from vtune.engines import GpuMemoryWait, kill_recorded_group, wait_gpu_memory_back
from vtune.engines._process import PARENT_PID_ENV, live_groups, spawn_group
from vtune.engines._watchdog import start_watchdog

SLEEPER = "import time\nwhile True: time.sleep(0.2)"

# A stand-in for the launcher: starts its watchdog first, then a child in the group and one that
# leaves it (setsid), and ignores SIGTERM, as an engine busy starting up is slow to act on it.
LEADER = textwrap.dedent(
    f"""
    import json, signal, subprocess, sys, time
    from vtune.engines._watchdog import start_watchdog
    watchdog = start_watchdog()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}])
    escaped = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}], start_new_session=True)
    print(json.dumps({{"watchdog": watchdog, "child": child.pid, "escaped": escaped.pid}}), flush=True)
    time.sleep(600)
    """
)

# A stand-in for vtune: spawns the leader as its group, reports the pids, then waits to be killed.
DRIVER = textwrap.dedent(
    f"""
    import json, os, subprocess, sys, time
    from vtune.engines._process import spawn_group
    group = spawn_group([sys.executable, "-c", {LEADER!r}], env=dict(os.environ), stdout=subprocess.PIPE)
    line = group.proc.stdout.readline()
    print(json.dumps({{"leader": group.pid, **json.loads(line)}}), flush=True)
    time.sleep(600)
    """
)


def _python(code: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO, **kwargs
    )


def test_watchdog_kills_the_group_when_vtune_is_killed() -> None:
    driver = _python(DRIVER, start_new_session=True)
    pids: dict[str, int] = {}
    try:
        assert driver.stdout is not None
        pids = json.loads(driver.stdout.readline())
        assert pids["watchdog"] and all(not gone(p) for p in pids.values())
        assert os.getpgid(pids["child"]) == os.getpgid(pids["watchdog"]) == pids["leader"]
        assert os.getpgid(pids["escaped"]) != pids["leader"]
        time.sleep(2.5)  # the watchdog records descendants once a second
        driver.kill()
        driver.wait()
        # The leader ignores SIGTERM (its parent-death signal): only the watchdog's SIGKILL ends it.
        assert wait_for(lambda: all(gone(p) for p in pids.values()), limit_s=5.0), [
            p for p in pids.values() if not gone(p)
        ]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in pids.values():
            if pid and not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_group_is_killed_at_once_when_vtune_died_before_the_watchdog() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    proc = _python(
        "from vtune.engines._watchdog import start_watchdog\nstart_watchdog()\nprint('survived', flush=True)",
        start_new_session=True,
        env={**os.environ, PARENT_PID_ENV: str(dead.pid)},
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert "survived" not in out


def test_watchdog_is_not_started_outside_a_group_of_its_own() -> None:
    # Not a group leader: a group vtune did not create must never be killed.
    proc = _python(
        "from vtune.engines._watchdog import start_watchdog\nprint(start_watchdog(), flush=True)",
        env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "None"
    assert start_watchdog({}) is None  # no VTUNE_PARENT_PID: nothing to guard


def test_watchdog_leaves_when_the_leader_ends_alone(tmp_path: Path) -> None:
    code = "from vtune.engines._watchdog import start_watchdog\nprint(start_watchdog(), flush=True)"
    group = spawn_group([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, cwd=REPO)
    assert group.proc.stdout is not None
    watchdog = int(group.proc.stdout.readline())
    assert group.proc.wait(timeout=60) == 0
    assert wait_for(lambda: gone(watchdog), limit_s=10.0)
    stopped = group.stop(grace_s=1.0)
    assert stopped.signal_sent == "none" and stopped.leftover_pids == []


def test_spawn_group_marks_and_registers_the_group() -> None:
    code = "import os, time\nprint(os.environ['VTUNE_PARENT_PID'], os.getpgid(0), flush=True)\ntime.sleep(600)"
    group = spawn_group([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE)
    try:
        assert group.proc.stdout is not None
        parent, pgid = group.proc.stdout.readline().split()
        assert int(parent) == os.getpid() and int(pgid) == group.pid == group.pgid
        assert group in live_groups()
    finally:
        stopped = group.stop(grace_s=5.0)
    assert stopped.signal_sent == "SIGTERM" and stopped.exit_code == -signal.SIGTERM
    assert group not in live_groups()
    assert group.stop() is stopped  # idempotent


def test_kill_recorded_group_only_touches_marked_groups_of_this_host() -> None:
    code = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\ntime.sleep(600)"
    group = spawn_group([sys.executable, "-c", code], env=dict(os.environ))
    unmarked = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True,
                                env={k: v for k, v in os.environ.items() if k != PARENT_PID_ENV})
    try:
        assert wait_for(lambda: len(psutil.Process(group.pid).children()) == 1)
        child = psutil.Process(group.pid).children()[0].pid
        here = socket.gethostname()
        assert kill_recorded_group({"host": here + "-elsewhere", "pgid": group.pgid}) is False
        assert kill_recorded_group({"host": here, "pgid": unmarked.pid, "pid": 1}) is False  # reused pgid
        assert unmarked.poll() is None
        assert kill_recorded_group({"host": here, "pgid": group.pgid, "pid": os.getpid()}, grace_s=5.0) is True
        group.proc.wait(timeout=10)
        assert wait_for(lambda: gone(child))
        assert kill_recorded_group({"host": here, "pgid": group.pgid}) is False  # nothing left
        assert kill_recorded_group({}) is False
    finally:
        unmarked.kill()
        unmarked.wait()
        group.stop(grace_s=1.0)


def test_wait_gpu_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 1024 * 1024
    readings = iter([{0: 5000 * mib, 1: 900 * mib}, {0: 3000 * mib, 1: 900 * mib}, {0: 1100 * mib, 1: 900 * mib}])
    monkeypatch.setattr(hardware, "gpu_memory_used_bytes", lambda gpus: next(readings))
    back = wait_gpu_memory_back({"0": 1000, "1": 1000}, tolerance_mib=256, timeout_s=60, poll_s=0.0)
    assert isinstance(back, GpuMemoryWait) and back.back
    assert back.excess_mib == {} and back.after_mib == {0: 1100, 1: 900} and back.before_mib == {0: 1000, 1: 1000}

    monkeypatch.setattr(hardware, "gpu_memory_used_bytes", lambda gpus: {0: 5000 * mib, 1: 1000 * mib})
    stuck = wait_gpu_memory_back({0: 1000, 1: 1000}, tolerance_mib=256, timeout_s=0.1, poll_s=0.01)
    assert not stuck.back and stuck.excess_mib == {0: 4000} and stuck.waited_s >= 0.1

    monkeypatch.setattr(hardware, "gpu_memory_used_bytes", lambda gpus: {})
    assert wait_gpu_memory_back({0: 1000}, timeout_s=0.0).back  # no NVML, no nvidia-smi: nothing to wait for
    assert wait_gpu_memory_back({}).back
