"""Workers sharing one study on a real PostgreSQL server (started here, on loopback).

Each test starts worker processes (this file run as a script: ``python
test_worker_postgres.py worker ...``) that join the study through
:func:`vtune.study._study.run_worker` with the fake trial function of test_worker.py
(a short sleep instead of an engine), so that the storage, Optuna's trial
claiming, heartbeats and vtune's budget and lost-worker handling are what is
tested. Skipped, with the reason, where PostgreSQL is not installed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

HEARTBEAT_S = 1
GRACE_S = 3

pytestmark = pytest.mark.postgres


# -------------------------------------------------------------- the server
def _pg_bin() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _as_postgres_user() -> tuple[Any, int | None, int | None]:
    """A preexec function running a child as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None, None, None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run initdb as")

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return demote, pw.pw_uid, pw.pw_gid


@pytest.fixture(scope="module")
def postgres():
    """``(admin URL, bin dir)`` of a throw-away PostgreSQL server on 127.0.0.1 with trust auth."""
    from vtune.engines._vllm import find_free_port

    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH); "
                    ".ci/run installs it with apt-get")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install 'vtune[postgres]')")
    demote, uid, gid = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="vtune-pg-"))
    data = root / "data"
    if uid is not None:
        os.chown(root, uid, gid or -1)
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, preexec_fn=demote, cwd=root)
    port = find_free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off -c max_connections=200"
    start = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts,
                            "-w", "-t", "60", "start"], capture_output=True, text=True, preexec_fn=demote, cwd=root)
    if start.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {start.stderr}\n{log[-2000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, preexec_fn=demote, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres, request):
    """A fresh database for one test."""
    import psycopg2

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    conn = psycopg2.connect(f"{postgres}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{postgres}/{name}"


# ------------------------------------------------------------- the workers
def start_worker(url: str, name: str, root: Path, tag: str, *, trial_s: float, expect: int) -> subprocess.Popen:
    env = dict(os.environ, VTUNE_TEST_LOG_DIR=str(root / "fake-log"), VTUNE_TEST_TRIAL_S=str(trial_s))
    out = open(root / f"worker-{tag}.out", "w")
    return subprocess.Popen([sys.executable, __file__, "worker", name, url, str(root / f"studies-{tag}"),
                             str(root / "barrier"), str(expect)], stdout=out, stderr=subprocess.STDOUT, env=env,
                            cwd=root)


def worker_main(name: str, url: str, studies_dir: str, barrier_dir: str, expect: str) -> int:
    """A worker process: waits until ``expect`` workers are up, then runs trials with the fake."""
    from tests.study.test_worker import fake_trial
    from vtune._target import Target
    from vtune.study._study import run_worker

    barrier = Path(barrier_dir)
    barrier.mkdir(exist_ok=True)
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < int(expect) and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = run_worker(name, url, studies_dir=Path(studies_dir), trial_fn=fake_trial, max_concurrent_trials=1,
                         target=Target(device="cpu", cpu_cores=(0,)), heartbeat_interval_s=HEARTBEAT_S,
                         grace_period_s=GRACE_S)
    print("SUMMARY " + json.dumps(summary.to_dict(), default=str), flush=True)
    return 0


def load(url: str, name: str):
    import optuna

    from vtune.study._storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(url, heartbeat=False))


def prepare(tmp_path: Path, url: str, name: str, n_trials: int):
    from tests.study.test_worker import make_settings
    from vtune.study._study import prepare_study

    settings = make_settings(tmp_path, name=name)
    study, *_ = prepare_study(settings, url, n_trials=n_trials, heartbeat_interval_s=HEARTBEAT_S,
                              grace_period_s=GRACE_S)
    return [t.number for t in study.get_trials() if t.user_attrs.get("baseline")]


def finish(proc: subprocess.Popen, root: Path, tag: str, timeout_s: float = 300) -> str:
    try:
        proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return (root / f"worker-{tag}.out").read_text()


# ------------------------------------------------------------------- tests
def test_two_workers_share_one_study_and_never_run_a_trial_twice(pg_url, tmp_path):
    from optuna.trial import TrialState

    from tests.study.test_worker import fake_log

    n = 10
    baselines = prepare(tmp_path, pg_url, "shared", n)
    (tmp_path / "fake-log").mkdir()
    workers = {tag: start_worker(pg_url, "shared", tmp_path, tag, trial_s=0.4, expect=2) for tag in ("a", "b")}
    outputs = {tag: finish(proc, tmp_path, tag) for tag, proc in workers.items()}
    for tag, proc in workers.items():
        assert proc.returncode == 0, outputs[tag][-3000:]
    study = load(pg_url, "shared")
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The budget is shared: n in all (one more at most when both claim the last slot at the same instant).
    assert n <= len(finished) <= n + 1, [(t.number, t.state.name) for t in trials]
    rows = fake_log(tmp_path / "fake-log")
    numbers = [r["number"] for r in rows]
    assert len(numbers) == len(set(numbers)), f"a trial ran twice: {sorted(numbers)}"
    launched = {t.number for t in trials if t.user_attrs.get("run_dir")}
    assert set(numbers) == launched
    pids = {p.pid for p in workers.values()}
    assert {r["pid"] for r in rows} == pids, "both workers should have run trials"
    for t in trials:
        if t.number in launched:
            ran_by = next(r["pid"] for r in rows if r["number"] == t.number)
            assert t.user_attrs["worker"]["pid"] == ran_by
    for b in baselines:  # each baseline once, by one of the workers
        assert numbers.count(b) <= 1
        assert study.get_trials()[b].state != TrialState.WAITING
    assert sum(len(json.loads(o.split("SUMMARY ", 1)[1])["ran_here"]) for o in outputs.values()) == len(finished)


def test_a_killed_worker_s_trial_fails_as_worker_lost_and_the_other_finishes_the_budget(pg_url, tmp_path):
    import psutil
    from optuna.trial import TrialState

    from tests.study.test_worker import fake_log

    n = 8
    prepare(tmp_path, pg_url, "killed", n)
    (tmp_path / "fake-log").mkdir()
    a = start_worker(pg_url, "killed", tmp_path, "a", trial_s=1.5, expect=2)
    b = start_worker(pg_url, "killed", tmp_path, "b", trial_s=1.5, expect=2)
    victim = None
    try:
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline and a.poll() is None:
            for t in load(pg_url, "killed").get_trials():
                if t.state == TrialState.RUNNING and (t.user_attrs.get("worker") or {}).get("pid") == a.pid:
                    victim = t.number
            time.sleep(0.1)
        assert victim is not None, "worker a never ran a trial: " + (tmp_path / "worker-a.out").read_text()[-2000:]
        time.sleep(0.3)
        a.send_signal(signal.SIGKILL)
        killed_at = time.time()
        a.wait(10)
    finally:
        if a.poll() is None:
            a.kill()
    out_b = finish(b, tmp_path, "b")
    assert b.returncode == 0, out_b[-3000:]
    assert not psutil.pid_exists(a.pid) or psutil.Process(a.pid).status() == psutil.STATUS_ZOMBIE
    study = load(pg_url, "killed")
    trials = study.get_trials()
    lost = trials[victim]
    assert lost.state == TrialState.FAIL
    failure = lost.user_attrs["failure"]
    assert failure["kind"] == "worker_lost", failure
    assert failure["worker"]["pid"] == a.pid and failure["noticed_by"]["pid"] == b.pid
    assert f"pid {a.pid}" in failure["message"] and f"more than {GRACE_S} s" in failure["message"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert n <= len(finished) <= n + 1
    rows = fake_log(tmp_path / "fake-log")
    assert victim not in [r["number"] for r in rows]  # killed mid-trial: it never finished
    assert [r for r in rows if r["pid"] == b.pid and r["t0"] > killed_at], "b did not carry on after the kill"
    numbers = [r["number"] for r in rows]
    assert len(numbers) == len(set(numbers))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repo root
        raise SystemExit(worker_main(*sys.argv[2:7]))
    raise SystemExit(f"usage: {sys.argv[0]} worker NAME URL STUDIES_DIR BARRIER_DIR EXPECT")
