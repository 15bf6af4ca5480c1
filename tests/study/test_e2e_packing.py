"""End-to-end: `vtune study` packs two trials at once on disjoint CPU cores (real vllm serve + GuideLLM)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from vtune._hardware import cpu_cores

pytestmark = pytest.mark.e2e

NAME = "ci-packing"


def engines(parent: int) -> dict[int, set[int]]:
    """``{pid: CPU affinity}`` of the vLLM engines (API servers) the study process ``parent`` runs now."""
    out = {}
    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.Error:
        return out
    for p in children:
        try:
            cmd = " ".join(p.cmdline())
            # The engine's leader, not the watchdog it forks (same command line, the leader its parent).
            leader = "vtune.engines._launcher" not in " ".join(p.parent().cmdline())
            if "vtune.engines._launcher" in cmd and " serve " in cmd and leader:
                out[p.pid] = set(p.cpu_affinity())
        except psutil.Error:
            continue
    return out


def attrs(db: Path, number: int) -> dict:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("select a.key, a.value_json from trial_user_attributes a join trials t "
                            "on a.trial_id = t.trial_id where t.number = ?", (number,)).fetchall()
        return {k: json.loads(v) for k, v in rows}
    finally:
        conn.close()


def trials(db: Path) -> list[tuple[int, str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("select number, state, datetime_start, datetime_complete from trials "
                                 "order by number"))
    finally:
        conn.close()


def test_e2e_two_trials_run_at_the_same_time_on_disjoint_cpu_cores(tmp_path):
    if len(cpu_cores()) < 2:
        pytest.skip(f"needs 2 CPU cores to pack two trials, this process may use {len(cpu_cores())}")
    # No --max-concurrent-trials: the default fills the node (one core per trial on the CPU engine).
    cmd = [sys.executable, "-m", "vtune", "study", "--study", NAME, "--n-trials", "2", "--duration-s", "6",
           "--remeasure", "0", "--seed", "1", "--objectives", "goodput"]  # the fixed load: bounded trial time
    log = open(tmp_path / "study.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    seen_together: list[dict[int, set[int]]] = []
    try:
        deadline = time.monotonic() + 1500
        while proc.poll() is None and time.monotonic() < deadline:
            now = engines(proc.pid)
            if len(now) >= 2:
                seen_together.append(now)
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        log.close()
    out = (tmp_path / "study.log").read_text()
    assert proc.returncode == 0, out[-4000:]
    assert "trials at once: " in out and "trials at once: 1\n" not in out

    # While the study ran, two engines were alive at once, each pinned to its own single core.
    assert seen_together, "never saw two engines running at the same time"
    for snapshot in seen_together:
        affinities = list(snapshot.values())
        assert all(len(a) == 1 for a in affinities), snapshot
        assert len(set().union(*affinities)) == len(affinities), f"engines share a core: {snapshot}"

    db = tmp_path / "studies" / f"{NAME}.db"
    rows = [r for r in trials(db) if r[1] != "WAITING"]  # baselines left enqueued for a longer study
    assert [(n, s) for n, s, *_ in rows] == [(0, "COMPLETE"), (1, "COMPLETE")], rows
    cores = []
    for n, *_ in rows:
        a = attrs(db, n)
        assert a["lease"]["units"] == a["cpu_cores"] and len(a["cpu_cores"]) == 1
        record = json.loads((Path(a["run_dir"]) / "trial.json").read_text())
        assert record["cpu_cores"] == a["cpu_cores"] and record["status"] == "ok"
        cores.append(a["cpu_cores"][0])
    assert cores[0] != cores[1]
    (s0, e0), (s1, e1) = [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for _, _, s, e in rows]
    assert s0 < e1 and s1 < e0, f"trials did not overlap: {rows}"
    assert [pid for pid in seen_together[0] if alive(pid)] == [], "engines outlived the study"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
