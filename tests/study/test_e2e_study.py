"""End-to-end: `vtune study` on the real vLLM CPU engine with the built-in model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from vtune.engines._vllm import find_free_port

pytestmark = pytest.mark.e2e

NAME = "ci-study"
ROOT = Path(__file__).resolve().parents[2]
#: The subprocesses import this checkout (the module-scoped fixture runs before conftest's PYTHONPATH fixture).
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def study_cmd(workdir: Path, n_trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vtune", "study", "--study", NAME, "--n-trials", str(n_trials),
            "--duration-s", "6", "--remeasure", "0", "--seed", "1", "--max-concurrent-trials", "1",
            "--objectives", "goodput",  # the fixed load: this test asserts its steps and the goodput report
            "--enqueue", "--max-model-len 100000", *extra]


def run(workdir: Path, n_trials: int, *extra: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(study_cmd(workdir, n_trials, *extra), cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def trials(workdir: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(workdir / "studies" / f"{NAME}.db")
    try:
        return [(n, s) for n, s in db.execute("select number, state from trials order by number")]
    finally:
        db.close()


def attr(workdir: Path, number: int, key: str):
    db = sqlite3.connect(workdir / "studies" / f"{NAME}.db")
    try:
        row = db.execute(
            "select a.value_json from trial_user_attributes a join trials t on a.trial_id = t.trial_id "
            "where t.number = ? and a.key = ?", (number, key)).fetchone()
        return None if row is None else json.loads(row[0])
    finally:
        db.close()


def engines(workdir: Path) -> list[psutil.Process]:
    """Live processes of the engines this study launched (their process groups, from the trials' attrs)."""
    pgids = set()
    for number, _ in trials(workdir):
        info = attr(workdir, number, "engine") or {}
        if info.get("pgid"):
            pgids.add(info["pgid"])
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in pgids and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    proc = run(d, 4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d


def test_e2e_study_four_trials_with_one_pruned_before_launch(workdir):
    rows = trials(workdir)
    assert len(rows) == 4
    states = [s for _, s in rows]
    assert states.count("COMPLETE") >= 2
    pruned = [n for n, s in rows if s == "PRUNED"]
    assert pruned, rows
    # vLLM's own ModelConfig rule (the shared pre-launch checks), found without a launch.
    assert attr(workdir, pruned[0], "pruned_by") == "invalid_config"
    assert attr(workdir, pruned[0], "reason_code") == "max_model_len_above_model"
    assert attr(workdir, pruned[0], "run_dir") is None  # zero engine launches for it
    assert "max_position_embeddings" in attr(workdir, pruned[0], "reason")
    assert attr(workdir, 0, "baseline") == "memory-model-guess"  # vtune's expected best goes first
    assert attr(workdir, 1, "baseline") == "vllm-defaults"
    assert attr(workdir, 2, "baseline") == "size-preset"
    for n, s in rows:
        if s == "COMPLETE":
            run_dir = Path(attr(workdir, n, "run_dir"))
            assert (run_dir / "server.log").is_file() and (run_dir / "trial.json").is_file()
            assert (run_dir / "config.yaml").is_file() and list((run_dir / "load").glob("guidellm-step-*.json"))
    assert engines(workdir) == []


def test_e2e_best_and_exports(workdir):
    for suffix in ("yaml", "flags", "env"):
        assert (workdir / "configs" / f"{NAME}.{suffix}").is_file()
    out = subprocess.run([sys.executable, "-m", "vtune", "best", "--study", NAME, "--format", "json"], cwd=workdir,
                         capture_output=True, text=True, check=True).stdout
    best = json.loads(out)
    assert best["flags"] == (workdir / "configs" / f"{NAME}.flags").read_text().strip()
    report = subprocess.run([sys.executable, "-m", "vtune", "report", "--study", NAME], cwd=workdir,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    text = (workdir / "studies" / NAME / "report.md").read_text()
    assert "Tuned vs baselines" in text and "launches saved by the memory model: 1" in text


def test_e2e_exported_yaml_starts_vllm_serve_config(workdir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    for line in (workdir / "configs" / f"{NAME}.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    port = find_free_port()
    log = open(workdir / "serve-config.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vtune.engines._launcher", "serve", "--config",
                             str(workdir / "configs" / f"{NAME}.yaml"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300
        ready = False
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    ready = r.status == 200
                    break
            except OSError:
                time.sleep(1)
        assert ready, (workdir / "serve-config.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            assert json.loads(r.read())["data"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_e2e_rerun_resumes_without_repeating(workdir):
    before = trials(workdir)
    proc = run(workdir, 4)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert trials(workdir) == before
    assert "launching" not in proc.stderr


def test_e2e_sigkill_mid_trial_resumes_with_trial_failed_and_no_orphan(workdir):
    done = len(trials(workdir))
    proc = subprocess.Popen(study_cmd(workdir, done + 2), cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        victim = None
        while time.time() < deadline and proc.poll() is None:
            running = [n for n, s in trials(workdir) if s == "RUNNING"]
            if running and attr(workdir, running[0], "engine"):
                victim = running[0]
                break
            time.sleep(1)
        assert victim is not None, "no trial reached the engine launch"
        time.sleep(3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The engine dies with vtune (parent-death signal); nothing is left behind.
    deadline = time.time() + 60
    while engines(workdir) and time.time() < deadline:
        time.sleep(1)
    assert engines(workdir) == []
    assert dict(trials(workdir))[victim] == "RUNNING"  # as the killed process left it
    resumed = run(workdir, done + 1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert dict(trials(workdir))[victim] == "FAIL"
    failure = attr(workdir, victim, "failure")
    assert failure["kind"] == "interrupted" and "died while this trial ran" in failure["message"]
    # The interrupted trial does not count against --n-trials: the resumed study ran one more in its place.
    assert len(trials(workdir)) == done + 2 and dict(trials(workdir))[done + 1] != "RUNNING"
    assert engines(workdir) == []
