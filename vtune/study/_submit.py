"""Slurm/PBS job-array scripts that start ``vtune worker`` processes on a study's shared storage."""

from __future__ import annotations

from vtune._errors import VtuneError

__all__ = ["walltime_hms", "worker_job_script"]


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
