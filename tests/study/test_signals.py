"""SIGTERM and Ctrl-C end a study cleanly: trials recorded as interrupted, one line, exit 128 + the signal.

Each study runs in a subprocess (a signal must not reach pytest) with the fake trial
function of test_worker.py; the fake sends the signal to its own process while it
"measures", the way Slurm or Kubernetes (SIGTERM) or a user (Ctrl-C) would.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vtune._cli import main
from vtune.study._signals import EXIT_CODES, StudyInterrupted

ROOT = Path(__file__).resolve().parents[2]

# The study process: run_study with a fake trial that signals its own process; errors as the CLI prints them.
SCRIPT = r"""
import os, signal, sys, threading, time
from pathlib import Path
from tests.study.test_worker import fake_trial, make_settings
from vtune._target import Target
from vtune._trial import TrialRecord
from vtune.engines._failures import Failure
from vtune.study._study import run_study

root, sig, k = Path(sys.argv[1]), getattr(signal, sys.argv[2]), int(sys.argv[3])
calls = []
lock = threading.Lock()
met = threading.Barrier(k, timeout=60)

def trial_fn(cfg, workload, run_dir, **kw):
    with lock:
        calls.append(1)
        first = len(calls) == 1
    if len(calls) <= k:
        met.wait()  # the first k trials run at once
    if first:
        os.kill(os.getpid(), sig)
    time.sleep(3)  # measuring; in the main thread the signal interrupts this
    rec = fake_trial(cfg, workload, run_dir, **kw)
    if len(calls) <= k:  # packed: the engine was killed under the trial, which saw it crash
        rec.status, rec.result = "failed", None
        rec.failure = Failure(kind="crash", message="the engine died (exit code -15)", log_line=None,
                              exit_code=-15)
    return rec

settings = make_settings(root, name="sig", target=Target(device="cpu", cpu_cores=(0, 1)))
try:
    run_study(settings, n_trials=4, max_concurrent_trials=k, trial_fn=trial_fn, export=False)
except KeyboardInterrupt as exc:
    print(f"vtune: {exc}", file=sys.stderr, flush=True)
    sys.exit(getattr(exc, "exit_code", 130))
print(f"calls {len(calls)}", file=sys.stderr)
"""


def run_signalled(tmp_path: Path, sig: str, k: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VTUNE_TEST_TRIAL_S="0.1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), sig, str(k)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def rows(tmp_path: Path) -> dict[int, tuple[str, dict]]:
    db = sqlite3.connect(tmp_path / "studies" / "sig.db")
    try:
        states = dict(db.execute("select number, state from trials"))
        out = {}
        for number, state in states.items():
            attrs = dict(db.execute("select a.key, a.value_json from trial_user_attributes a join trials t on "
                                    "a.trial_id = t.trial_id where t.number = ?", (number,)))
            out[number] = (state, {k: json.loads(v) for k, v in attrs.items()})
        return out
    finally:
        db.close()


def test_sigterm_with_one_trial_at_a_time_records_it_interrupted_and_exits_143(tmp_path):
    proc = run_signalled(tmp_path, "SIGTERM", 1)
    assert proc.returncode == 143, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("vtune: interrupted by SIGTERM: stopped trial 0 and its engine, recorded as failed "
                         "(interrupted; not counted in --n-trials); re-run the same command to resume")
    assert sum(1 for line in lines if line.startswith("vtune:")) == 1 and "Traceback" not in proc.stderr
    trials = rows(tmp_path)
    state, attrs = trials[0]
    assert state == "FAIL" and attrs["failure"]["kind"] == "interrupted"
    assert attrs["failure"]["signal"] == "SIGTERM" and "SIGTERM" in attrs["failure"]["message"]
    assert [s for s, _ in trials.values()].count("RUNNING") == 0
    assert not any(s == "COMPLETE" for s, _ in trials.values())  # no trial started after the signal
    requeued = [a for s, a in trials.values() if s == "WAITING" and a.get("requeued_from") == 0]
    assert [a["baseline"] for a in requeued] == ["memory-model-guess"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_trials_run_packed_records_each_one_interrupted(tmp_path, sig):
    proc = run_signalled(tmp_path, sig, 2)
    assert proc.returncode == EXIT_CODES[sig] == (143 if sig == "SIGTERM" else 130), proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"vtune: interrupted by {sig}: stopped trials 0, 1 and their engines, recorded as failed (interrupted; not "
        "counted in --n-trials); re-run the same command to resume")
    trials = rows(tmp_path)
    for number in (0, 1):
        state, attrs = trials[number]
        assert state == "FAIL", trials
        assert attrs["failure"]["kind"] == "interrupted" and attrs["failure"]["signal"] == sig
        assert attrs["failure"]["engine_failure"]["kind"] == "crash"  # what the trial saw, kept
    assert not any(s in ("COMPLETE", "RUNNING") for s, _ in trials.values())
    # One classification, on the console too: the progress line says interrupted, not the crash it saw.
    assert "FAILED crash" not in proc.stderr
    assert proc.stderr.count(f"interrupted by {sig} while it ran") == 2


def test_the_cli_prints_one_line_and_exits_with_the_signal_s_code(monkeypatch, capsys):
    import vtune._cli as cli

    def interrupted(args):
        raise StudyInterrupted("SIGTERM", [3])

    monkeypatch.setattr(cli, "_cmd_study", interrupted)
    assert main(["study"]) == 143 == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vtune: interrupted by SIGTERM: stopped trial 3 and its engine, recorded as failed (interrupted; "
                   "not counted in --n-trials); re-run the same command to resume"]

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_study", ctrl_c)
    assert main(["study"]) == 130
    assert capsys.readouterr().err == "vtune: interrupted\n"


def test_study_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "130 Ctrl-C (SIGINT), 143 SIGTERM" in text and "129 SIGHUP" in text and "'interrupted'" in text
