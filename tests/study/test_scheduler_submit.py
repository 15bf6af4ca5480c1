"""`vtune submit`: Slurm/PBS job scripts that start workers, checked by running them with a stub Python."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vtune._errors import VtuneError
from vtune.study._submit import walltime_hms, worker_job_script

URL = "postgresql://vtune@db.example:5432/studies"


def script(scheduler: str, tmp_path: Path, **kw) -> str:
    args = dict(study="llama-chat", storage_url=URL, workers=3, gpus_per_worker=4, cpus_per_worker=16,
                walltime="04:00:00", workdir=str(tmp_path), python=str(tmp_path / "stub-python"),
                log_dir=str(tmp_path / "logs"))
    args.update(kw)
    return worker_job_script(scheduler, **args)


def run_script(text: str, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Runs the job script with a stub Python that prints its arguments, one per line."""
    stub = tmp_path / "stub-python"
    stub.write_text('#!/bin/bash\nfor a in "$@"; do echo "ARG $a"; done\n')
    stub.chmod(0o755)
    path = tmp_path / "job.sh"
    path.write_text(text)
    clean = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={**clean, **env}, check=True)
    return [line[4:] for line in out.stdout.splitlines() if line.startswith("ARG ")]


def test_slurm_script_is_an_array_of_workers_with_their_gpus(tmp_path):
    text = script("slurm", tmp_path, queue="gpu", account="proj1")
    for directive in ("#SBATCH --array=0-2", "#SBATCH --gpus-per-task=4", "#SBATCH --cpus-per-task=16",
                      "#SBATCH --time=04:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj1",
                      "#SBATCH --job-name=vtune-llama-chat"):
        assert directive + "\n" in text
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
    argv = run_script(text, tmp_path, {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "SLURM_ARRAY_TASK_ID": "1"})
    assert argv == ["-m", "vtune", "worker", "--study", "llama-chat", "--storage", URL, "--gpus", "4,5,6,7"]


def test_pbs_script_selects_gpus_and_runs_the_worker(tmp_path):
    text = script("pbs", tmp_path, queue="workq", max_concurrent_trials=2)
    for directive in ("#PBS -l select=1:ncpus=16:ngpus=4", "#PBS -l walltime=04:00:00", "#PBS -J 0-2",
                      "#PBS -q workq", "#PBS -N vtune-llama-chat"):
        assert directive + "\n" in text
    argv = run_script(text, tmp_path, {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "PBS_ARRAY_INDEX": "0"})
    assert argv[-4:] == ["--max-concurrent-trials", "2", "--gpus", "0,1,2,3"]
    # GPU UUIDs (some sites) are left to the worker's own discovery; no array line for a single worker.
    argv = run_script(script("pbs", tmp_path, workers=1), tmp_path, {"CUDA_VISIBLE_DEVICES": "GPU-1a2b"})
    assert "--gpus" not in argv
    assert "#PBS -J" not in script("pbs", tmp_path, workers=1)


def test_cpu_engine_workers_ask_for_no_gpus(tmp_path):
    text = script("slurm", tmp_path, gpus_per_worker=0, cpus_per_worker=2)
    assert "--gpus-per-task" not in text and "#SBATCH --cpus-per-task=2" in text
    assert "--gpus" not in run_script(text, tmp_path, {})


def test_bad_input_is_one_line():
    with pytest.raises(VtuneError, match="--scheduler lsf: use one of slurm, pbs"):
        worker_job_script("lsf", study="s", storage_url=URL, workers=1, gpus_per_worker=1, cpus_per_worker=1,
                          walltime="01:00:00", workdir=".", python="python", log_dir=".")
    with pytest.raises(VtuneError, match="--workers must be >= 1"):
        worker_job_script("slurm", study="s", storage_url=URL, workers=0, gpus_per_worker=1, cpus_per_worker=1,
                          walltime="01:00:00", workdir=".", python="python", log_dir=".")
    assert walltime_hms("4h") == "04:00:00" and walltime_hms("90m") == "01:30:00"
    assert walltime_hms("3600") == "01:00:00" and walltime_hms("12:00:00") == "12:00:00"
    for bad in ("soon", "1:99:00", "-3h", "0"):
        with pytest.raises(VtuneError, match="--walltime"):
            walltime_hms(bad)


def test_cli_submit_checks_the_study_and_writes_a_private_script(tmp_path):
    from tests.study.test_worker import make_settings
    from vtune.study._study import prepare_study

    db = f"sqlite:///{tmp_path}/s.db"
    prepare_study(make_settings(tmp_path, name="cpu-study"), db, n_trials=4)
    base = [sys.executable, "-m", "vtune", "submit", "--scheduler", "slurm", "--workers", "2", "--study"]
    sqlite = subprocess.run([*base, "cpu-study", "--storage", db], capture_output=True, text=True, cwd=tmp_path)
    assert sqlite.returncode == 2 and "need a storage server they all reach" in sqlite.stderr
    # With a server URL the study must exist there: a typo is caught before anything is written.
    missing = subprocess.run([*base, "nope", "--storage", "postgresql://nobody@127.0.0.1:1/none"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("vtune: error: --storage postgresql://")
    assert "Traceback" not in missing.stderr


def test_cli_submit_writes_the_script(tmp_path, monkeypatch):
    from tests.study.test_worker import make_settings
    from vtune import _cli
    from vtune.study._study import prepare_study

    db = f"sqlite:///{tmp_path}/s.db"
    prepare_study(make_settings(tmp_path, name="cpu-study"), db, n_trials=4)
    real = _cli._open_existing

    def open_via_sqlite(args):  # the study lives in SQLite here; submit is told a server URL
        study, settings, _ = real(type(args)(**{**vars(args), "storage": db}))
        return study, settings, args.storage

    monkeypatch.setattr(_cli, "_open_existing", open_via_sqlite)
    monkeypatch.chdir(tmp_path)
    assert _cli.main(["submit", "--scheduler", "pbs", "--workers", "2", "--study", "cpu-study", "--storage", URL,
                      "--walltime", "30m"]) == 0
    path = tmp_path / "studies" / "cpu-study" / "workers" / "cpu-study-pbs.sh"
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert "#PBS -l select=1:ncpus=2\n" in text and "#PBS -l walltime=00:30:00" in text and URL in text
    assert _cli.main(["submit", "--scheduler", "pbs", "--workers", "2", "--study", "cpu-study", "--storage", URL,
                      "--gpus-per-worker", "2"]) == 2
