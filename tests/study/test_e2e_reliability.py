"""End-to-end reliability of `vtune study` on the real vLLM CPU engine: SIGTERM, and two processes on one study."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vtune._hardware import cpu_cores

pytestmark = pytest.mark.e2e


def study_cmd(name: str, n_trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vtune", "study", "--study", name, "--workload", "chatbot", "--n-trials",
            str(n_trials), "--remeasure", "0", "--seed", "1", "--objectives", "goodput", *extra]  # fixed load


def trials(db: Path) -> dict[int, tuple[str, dict]]:
    conn = sqlite3.connect(db)
    try:
        out = {}
        for number, state in conn.execute("select number, state from trials order by number"):
            attrs = conn.execute("select a.key, a.value_json from trial_user_attributes a join trials t on "
                                 "a.trial_id = t.trial_id where t.number = ?", (number,)).fetchall()
            out[number] = (state, {k: json.loads(v) for k, v in attrs})
        return out
    finally:
        conn.close()


def leftovers(db: Path, folder: Path) -> list[str]:
    """Live processes of the study's engines (their recorded process groups) or of its loads (their folder)."""
    pgids = {a["engine"]["pgid"] for _, a in trials(db).values() if (a.get("engine") or {}).get("pgid")}
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(p.pid) in pgids or str(folder) in " ".join(p.info["cmdline"] or []):
                out.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def test_e2e_sigterm_while_a_trial_measures_stops_it_with_one_line_and_exit_143(tmp_path):
    db = tmp_path / "studies" / "sigterm.db"
    log_path = tmp_path / "study.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(study_cmd("sigterm", 2, "--max-concurrent-trials", "1", "--duration-s", "20"),
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 900
            while proc.poll() is None and time.monotonic() < deadline:
                if ": measuring" in log_path.read_text():
                    break
                time.sleep(0.5)
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(2)  # well inside the measurement
            victim = [n for n, (s, _) in trials(db).items() if s == "RUNNING"]
            assert len(victim) == 1, trials(db)
            os.kill(proc.pid, signal.SIGTERM)
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    out = log_path.read_text()
    print(out[-2500:])
    assert rc == 143, out[-3000:]
    lines = out.strip().splitlines()
    assert lines[-1] == (f"vtune: interrupted by SIGTERM: stopped trial {victim[0]} and its engine, recorded as "
                         "failed (interrupted; not counted in --n-trials); re-run the same command to resume")
    assert sum(1 for line in lines if line.startswith("vtune:")) == 1 and "Traceback" not in out
    rows = trials(db)
    state, attrs = rows[victim[0]]
    assert state == "FAIL" and attrs["failure"]["kind"] == "interrupted" and attrs["failure"]["signal"] == "SIGTERM"
    assert not any(s == "RUNNING" for s, _ in rows.values())
    if attrs.get("baseline"):  # an interrupted baseline is measured on the next run
        assert any(s == "WAITING" and a.get("baseline") == attrs["baseline"] for s, a in rows.values())
    deadline = time.monotonic() + 15
    while leftovers(db, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers(db, tmp_path) == []


def engines_of(pids: list[int]) -> list[int]:
    """The vLLM engines (API server processes) run now by the vtune processes ``pids``."""
    out = []
    for pid in pids:
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            continue
        for p in children:
            try:
                cmd = " ".join(p.cmdline())
                if "vtune.engines._launcher" in cmd and " serve " in cmd and p.status() != psutil.STATUS_ZOMBIE:
                    # The engine's leader, not the watchdog it forks (same command line, the leader its parent).
                    if "vtune.engines._launcher" not in " ".join(p.parent().cmdline()):
                        out.append(p.pid)
            except psutil.Error:
                continue
    return out


def test_e2e_two_study_processes_on_one_study_keep_its_budget_and_one_engine_per_core(tmp_path):
    cores = len(cpu_cores())
    # Started together on a new study, each packing trials for the whole node (the default).
    logs = [open(tmp_path / f"study-{i}.log", "w") for i in range(2)]
    # A budget of 2 trials: each process alone would run 2 (4 in all); the shared budget keeps them to 2.
    procs = [subprocess.Popen(study_cmd("two", 2, "--duration-s", "6"), cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT) for log in logs]
    peak, seen = 0, set()
    try:
        deadline = time.monotonic() + 1800
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            now = engines_of([p.pid for p in procs])
            peak, seen = max(peak, len(now)), seen | set(now)
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(60)
        for log in logs:
            log.close()
    outs = [(tmp_path / f"study-{i}.log").read_text() for i in range(2)]
    rows = trials(tmp_path / "studies" / "two.db")
    counted = [n for n, (s, a) in rows.items()
               if s in ("COMPLETE", "PRUNED") or (s == "FAIL" and (a.get("failure") or {}).get("kind")
                                                   not in ("interrupted", "worker_lost", "load_error", "load_stalled"))]
    print(f"\ntwo vtune study processes, --n-trials 2 on {cores} cores: {len(rows)} trials ({len(counted)} counted), "
          f"{len(seen)} engines launched, peak {peak} engines at once; states "
          f"{[s for s, _ in rows.values()]}")
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "cannot open" not in out and "Traceback" not in out
    ran = {n: s for n, (s, _) in rows.items() if s != "WAITING"}  # the size preset stays enqueued for a longer study
    assert len(counted) == 2 and len(ran) == 2, rows
    assert 1 <= peak <= cores
