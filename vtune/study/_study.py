"""The study: a Bayesian, benchmark-driven search over vLLM flags.

:func:`run_study` ties the memory model (pruning before launch, calibrated by
every real start) to the trial machinery (:func:`vtune._trial.run_trial`)
inside an Optuna study:

* storage: SQLite at ``studies/<name>.db`` by default, any Optuna storage URL
  (PostgreSQL for several machines) with ``--storage``; everything a worker
  needs (model, workload, space, objectives, fixed flags, calibration) is kept
  in the study's user attributes;
* enqueued baselines: vLLM's defaults, the rule-of-thumb preset for the model's
  size, and the memory model's own best guess;
* each trial: sample -> validity and memory check (PRUNED at zero launches) ->
  real engine and, by default, the capacity search (each probe reported to the
  noise-aware pruner; its start and cap from what the study knows,
  :mod:`vtune.study._capacity`), or with a fixed-load objective the workload's
  load in steps, each reported to the pruner -> result (SLO constraints at a
  fixed load), artifacts under ``studies/<name>/trials/<n>/``;
* resume: re-running the same command continues; a trial left RUNNING by a
  killed process is marked FAIL with the reason and its engine is killed;
  ``--n-trials`` and ``--timeout`` count what was already done, except trials
  that failed for no fault of their configuration (interrupted, worker lost,
  load tool failed: :mod:`vtune.study._budget`), and an interrupted baseline is
  enqueued again;
* stop signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the running trials'
  engines, record the trials as interrupted and leave with
  :class:`~vtune.study._signals.StudyInterrupted` (exit 130/143/129 on the CLI);
* before anything is written the fixed flags are parsed with the installed
  vLLM's own parser (:func:`check_fixed_flags`);
* at the end the best few are re-measured and the best config is exported.

Scale-out:

* packing: with ``max_concurrent_trials`` > 1 (default on the CLI: as many as
  fill the node, :func:`default_concurrency`) trials run in threads, each on a
  lease of disjoint GPUs (TP x PP x DP of them) or CPU cores (one per rank) from
  a :class:`vtune.study._packing.ResourcePool`; a trial needing more than the node
  has is pruned before launch (``pruned_by: resources``). Ports, logs and trial
  folders are per trial; the compile caches under ``studies/<name>/cache`` stay
  shared by the study's trials (entries are keyed by content hash; the IPC
  sockets in its tmp folder by UUID). The sampler sees running
  trials: TPE with ``constant_liar`` (single- and multi-objective).
* several machines: :func:`run_worker` (``vtune worker``) joins a study from its
  storage (PostgreSQL), with this machine's hardware. Only :func:`run_study`
  (``vtune study``) enqueues baselines, and it re-measures and exports only
  once no trial runs anywhere; workers just run trials. The budget is the
  study's, stored with it, and checked by the storage whenever a trial is
  claimed or created, under a claim lock (a lock file next to a SQLite
  database, a PostgreSQL advisory lock), so processes together never start
  more trials than it allows. Optuna claims each trial atomically (``SELECT
  ... FOR UPDATE``; on SQLite the claim lock), so two workers never run the
  same trial. Processes on one machine lease GPUs/cores through machine-wide
  lock files (:mod:`vtune.study._locks`): they never share a unit.
* lost workers: every running trial sends heartbeats; a trial whose worker was
  silent for the grace period is failed by the next worker that looks, with
  ``failure = {"kind": "worker_lost", ...}`` in its user attributes.
"""

from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from vtune._errors import VtuneError
from vtune._model_shape import ModelShape, load_model_shape
from vtune._target import Target
from vtune._trial import run_trial
from vtune.study._baselines import InSpaceSampler, enqueue_baselines
from vtune.study._budget import MAX_LOAD_FAILURES_IN_A_ROW, BudgetSpent, counts_toward_budget, requeue_baselines
from vtune.study._export import StudySummary, export_best, summarize
from vtune.study._packing import default_concurrency, layout_sizes
from vtune.study._pruner import NoiseAwarePruner
from vtune.study._remeasure import Remeasured, remeasure
from vtune.study._runner import TrialFailed, TrialFn, _Progress, _Runner, count_done, count_started, elapsed_s
from vtune.study._selection import _best_text
from vtune.study._settings import ATTR, StudySettings, load_settings
from vtune.study._signals import StopSignals, active_stop, handles_stop_signals
from vtune.study._storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    claim,
    default_storage,
    make_storage,
    recover_stale_trials,
    wait_for_running,
)

__all__ = ["Remeasured", "open_study", "prepare_study", "remeasure", "run_study", "run_worker", "worker_target"]


def _make_sampler(settings: StudySettings) -> optuna.samplers.BaseSampler:
    """TPE with constant liar, for one objective and for several.

    Trials run at once (threads of one process, or workers on other machines)
    must not all sample the same promising spot: with ``constant_liar`` TPE counts
    every RUNNING trial of the study, read from the storage at each sample, as a
    bad result near its parameters. Optuna's TPE applies the liar to
    multi-objective studies as well (a running trial is ranked with the worst),
    so a Pareto study uses TPE too (NSGA-II ignores running trials and, with a
    population of 8, is little better than random in the few dozen trials a
    study has). Few trials and a mixed categorical/integer space: multivariate
    TPE after a short random start.
    """
    return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=4, multivariate=True,
                                      constant_liar=True)

def _study_sampler(settings: StudySettings, sampler: optuna.samplers.BaseSampler | None) -> InSpaceSampler:
    """The given sampler (default TPE with constant liar), kept from the off-space baselines."""
    return InSpaceSampler(sampler if sampler is not None else _make_sampler(settings))


def open_study(settings: StudySettings, storage_url: str, *, heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
               grace_period_s: int = GRACE_PERIOD_S, sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Creates the study or loads it (resume); stores the settings on creation.

    Args:
        settings: The study's settings.
        storage_url: Its storage.
        heartbeat_interval_s: Seconds between a running trial's heartbeats.
        grace_period_s: Seconds without heartbeat after which a worker is lost.
        sampler: Samples the trials (default: TPE with constant liar, :func:`_make_sampler`); it
            never sees the baselines run outside the space (:class:`~vtune.study._baselines.InSpaceSampler`).
        pruner: Stops trials early (default: :class:`NoiseAwarePruner`).
    """
    storage = make_storage(storage_url, heartbeat_interval_s=heartbeat_interval_s, grace_period_s=grace_period_s)
    directions: list[Any] = [o.direction for o in settings.objectives]
    study = optuna.create_study(
        study_name=settings.name, storage=storage, directions=directions, load_if_exists=True,
        sampler=_study_sampler(settings, sampler), pruner=pruner if pruner is not None else NoiseAwarePruner(),
    )
    names = [o.name for o in settings.objectives]
    with claim(study):  # two processes creating the study at once: one writes the settings
        existing = study.user_attrs.get(ATTR)
        if existing is None:
            study.set_user_attr(ATTR, settings.to_attr())
        else:
            old = [d for d in existing.get("objectives", [])]
            if old != names:
                raise VtuneError(f"study {settings.name!r} exists with objectives {old}; use the same --objectives "
                                 "or another --study")
            if existing.get("vllm_version") != settings.vllm_version:  # one release's accounting per study
                was = existing.get("vllm_version") or "the installed vLLM's"
                raise VtuneError(f"study {settings.name!r} exists planned for {was} accounting; resume it with the "
                                 f"same --vllm-version ({existing.get('vllm_version') or 'none'}) or use another "
                                 "--study")
        if study.metric_names != names:  # the dashboard's and the dataframes' labels ("goodput", not "Objective 0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
    return study

@handles_stop_signals
def run_study(
    settings: StudySettings,
    *,
    storage_url: str | None = None,
    n_trials: int | None = 10,
    timeout_s: float | None = None,
    quiet: bool = False,
    max_concurrent_trials: int | None = 1,
    trial_fn: TrialFn = run_trial,
    export: bool = True,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
    machine_locks: bool | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> StudySummary:
    """Runs (or resumes) a study to its budget, re-measures the best and exports it.

    The study's budget (``n_trials``, ``timeout_s``) is stored with it, so that
    workers on other machines (:func:`run_worker`) stop at the same budget. This
    function alone enqueues the baselines, and, once no trial of the study is
    running anywhere (trials of lost workers are failed on the way), re-measures
    the best and exports it; workers only run trials.

    Args:
        settings: What to tune and how.
        storage_url: Optuna storage URL (default ``sqlite:///studies/<name>.db``).
        n_trials: Trials in all, counting those already done or running anywhere (None: no limit).
        timeout_s: Wall seconds in all, counting time already spent (None: no limit); the
            re-measurements at the end run only while the time left covers one more.
        quiet: No progress lines.
        max_concurrent_trials: Trials run at once here on disjoint GPUs/cores
            (None: as many as fill the node, :func:`default_concurrency`).
        trial_fn: How a trial is measured (default: a real engine and load,
            :func:`vtune._trial.run_trial`; a replay passes a table lookup).
        export: Write the best config under ``configs/`` at the end.
        heartbeat_interval_s: Seconds between a running trial's heartbeats.
        grace_period_s: Seconds without heartbeat after which a worker is lost.
        machine_locks: Lease GPUs/cores through machine-wide lock files, so that other
            vtune processes here never use them at the same time (None: when trials
            launch real engines, i.e. ``trial_fn`` is :func:`vtune._trial.run_trial`).
        sampler: Samples the trials (default: TPE with constant liar); it never sees the
            baselines run outside the space.
        pruner: Stops trials early (default: :class:`NoiseAwarePruner`).

    Raises:
        VtuneError: Bad input (e.g. ``max_concurrent_trials`` below 1; fixed flags vLLM's parser rejects,
            checked before anything is written when trials launch real engines).
        StudyInterrupted: A stop signal (SIGINT, SIGTERM, SIGHUP) or Ctrl-C: the running
            trials' engines were stopped and the trials recorded as interrupted
            (:mod:`vtune.study._signals`); a ``KeyboardInterrupt``.
    """
    study, shape, recovered, url = prepare_study(settings, storage_url, n_trials=n_trials, timeout_s=timeout_s,
                                                 heartbeat_interval_s=heartbeat_interval_s,
                                                 grace_period_s=grace_period_s, check_flags=trial_fn is run_trial,
                                                 sampler=sampler, pruner=pruner)
    deadline_s = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s - elapsed_s(study))
    runner, ran, k = _run_trials_here(study, settings, shape, n_trials=n_trials, timeout_s=timeout_s, quiet=quiet,
                                      max_concurrent_trials=max_concurrent_trials, trial_fn=trial_fn,
                                      machine_locks=machine_locks)
    wait_for_running(study, quiet=quiet)
    again = remeasure(study, settings, runner, deadline_s=deadline_s)
    exported = export_best(study, settings) if export else []
    summary = summarize(study, settings, url, exported, recovered)
    summary.ran_here, summary.max_concurrent_trials = sorted(ran), k
    summary.remeasured, summary.remeasure_skipped = again.remeasured, again.skipped
    return summary

def prepare_study(
    settings: StudySettings,
    storage_url: str | None = None,
    *,
    n_trials: int | None = 10,
    timeout_s: float | None = None,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
    check_flags: bool = True,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, ModelShape, list[int], str]:
    """Creates (or resumes) a study ready for trials, without running any.

    Checks the fixed flags with vLLM's own parser (before anything is written), stores
    the settings (on creation) and the budget, fails trials left running by dead
    processes of this host, enqueues the baselines once and again those whose trial
    was interrupted. What :func:`run_study` does first; a study prepared so can be run
    by workers alone.

    Args:
        settings: What to tune and how.
        storage_url: Optuna storage URL (default ``sqlite:///studies/<name>.db``).
        n_trials: The study's trial budget (None: no limit).
        timeout_s: The study's wall-time budget (None: no limit).
        heartbeat_interval_s: Seconds between a running trial's heartbeats.
        grace_period_s: Seconds without heartbeat after which a worker is lost.
        check_flags: Parse the fixed flags with the installed vLLM first (:func:`check_fixed_flags`).
        sampler: As in :func:`open_study`.
        pruner: As in :func:`open_study`.

    Raises:
        VtuneError: Fixed flags vLLM rejects, or a storage that cannot be opened.

    Returns:
        The study, the model's shape, the trials marked failed on resume, the storage URL.
    """
    shape = load_model_shape(settings.model)
    if check_flags:
        check_fixed_flags(settings)
    url = storage_url or default_storage(settings.name, settings.studies_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # vtune prints its own progress lines
    try:
        study = open_study(settings, url, heartbeat_interval_s=heartbeat_interval_s, grace_period_s=grace_period_s,
                           sampler=sampler, pruner=pruner)
    except VtuneError as exc:
        if storage_url is not None:
            raise
        # The default database: name it as such, not as a --storage the user never passed.
        raise VtuneError(str(exc).replace(f"--storage {url}", f"the study database {url.removeprefix('sqlite:///')} "
                                          f"(the default for --study {settings.name})", 1)) from None
    recovered = recover_stale_trials(study)
    with claim(study):  # two `vtune study` processes starting together enqueue the baselines once
        enqueue_baselines(study, settings, shape)
        requeue_baselines(study)  # those a killed process left interrupted
        study.set_user_attr("budget", {"n_trials": n_trials, "timeout_s": timeout_s})
        if settings.target_rate_rps is not None:  # the latest --target-rate is the study's
            study.set_user_attr("target_rate_rps", settings.target_rate_rps)
    return study, shape, recovered, url

def check_fixed_flags(settings: StudySettings) -> None:
    """Parses the study's fixed flags with the installed vLLM's own parser, before anything is launched.

    A flag vLLM rejects would fail every trial at its engine's start (launches wasted, then
    "no trial finished with a result"); here it stops the study with one line instead.
    Nothing is checked when vLLM is not installed here.

    Raises:
        VtuneError: vLLM's parser rejects the fixed flags.
    """
    argv = (settings.base.model or settings.model, *settings.base.to_cli_args(include_model=False))
    problem = _vllm_rejects(argv)
    if problem:
        raise VtuneError(f"the flags fixed for every trial (after --) are rejected by vLLM's own parser: {problem}; "
                         "fix or drop them (`vtune validate -- MODEL FLAGS` checks a command line)")

@functools.lru_cache(maxsize=32)
def _vllm_rejects(argv: tuple[str, ...]) -> str | None:
    from vtune._checks import check_flags_with_vllm

    return check_flags_with_vllm(list(argv))

@handles_stop_signals
def run_worker(
    name: str,
    storage_url: str | None = None,
    *,
    gpus: str | None = None,
    n_trials: int | None = None,
    max_concurrent_trials: int | None = None,
    studies_dir: Path = Path("studies"),
    quiet: bool = False,
    trial_fn: TrialFn = run_trial,
    target: Target | None = None,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    machine_locks: bool | None = None,
) -> StudySummary:
    """Joins a running study and runs its trials on this machine's GPUs (or CPU cores).

    Everything (model, workload, space, objectives, fixed flags, budget,
    calibration) comes from the storage; the hardware is this machine's. A
    worker never enqueues baselines, re-measures or exports: ``vtune study``
    does. It returns when it has run ``n_trials`` trials, or when the study's
    budget is spent and no trial is running anywhere any more (it fails the
    trials of lost workers on the way, like every worker before each trial).

    Args:
        name: The study.
        storage_url: Its storage (default ``sqlite:///studies/<name>.db``: a worker on the same machine).
        gpus: GPU indices this worker uses, e.g. ``0,1`` (default: all found here).
        n_trials: Most trials this worker runs (None: until the study's budget is spent).
        max_concurrent_trials: Trials at once here (None: as many as fill the node).
        studies_dir: Where this worker keeps the trials' logs and results.
        quiet: No progress lines.
        trial_fn: How a trial is measured (see :func:`run_study`).
        target: The hardware to use instead of finding it (tests).
        heartbeat_interval_s: Seconds between a running trial's heartbeats.
        grace_period_s: Seconds without heartbeat after which a worker is lost
            (use the same value as the study's other processes).
        sampler: Samples this worker's trials (default: TPE with constant liar); it never
            sees the baselines run outside the space.
        pruner: Stops this worker's trials early (default: :class:`NoiseAwarePruner`).
        machine_locks: Lease GPUs/cores through machine-wide lock files (see :func:`run_study`).

    Raises:
        VtuneError: No such study, one not made by vtune, or hardware that does not match it.
        StudyInterrupted: A stop signal or Ctrl-C (see :func:`run_study`).
    """
    if n_trials is not None and n_trials < 1:
        raise VtuneError(f"--n-trials must be >= 1, got {n_trials}")
    url = storage_url or default_storage(name, studies_dir)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise VtuneError(f"--study {name}: no study database at {url.removeprefix('sqlite:///')}; "
                         "start the study with `vtune study` first or pass its --storage")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(url, heartbeat_interval_s=heartbeat_interval_s, grace_period_s=grace_period_s)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise VtuneError(f"--study {name}: no such study in {url}; start it with `vtune study --study {name} "
                         f"--storage {url}` first") from None
    settings = load_settings(study, studies_dir=studies_dir, configs_dir=Path("configs"))
    settings.target = target or worker_target(settings.target, gpus)
    settings.model = _local_model(settings.model)
    settings.base = settings.base.replace(model=settings.model)
    study = optuna.load_study(study_name=name, storage=storage, sampler=_study_sampler(settings, sampler),
                              pruner=pruner if pruner is not None else NoiseAwarePruner())
    shape = load_model_shape(settings.model)
    recovered = recover_stale_trials(study)
    budget = study.user_attrs.get("budget") or {}
    study_n = budget.get("n_trials")
    runner, ran, k = _run_trials_here(study, settings, shape, n_trials=study_n, own_cap=n_trials,
                                      timeout_s=budget.get("timeout_s"), quiet=quiet,
                                      max_concurrent_trials=max_concurrent_trials, trial_fn=trial_fn,
                                      machine_locks=machine_locks)
    if n_trials is None or len(ran) < n_trials:
        wait_for_running(study, quiet=quiet)
    summary = summarize(study, settings, url, [], recovered)
    summary.ran_here, summary.max_concurrent_trials = sorted(ran), k
    return summary

def worker_target(stored: Target, gpus: str | None = None) -> Target:
    """The hardware here, for a worker of a study made on ``stored``.

    Raises:
        VtuneError: A CPU-engine study asked for GPUs, or a GPU study on a machine
            without GPUs or with another GPU model.
    """
    from vtune._hardware import cpu_cores
    from vtune._target import resolve_target

    if stored.device == "cpu":
        if gpus:
            raise VtuneError(f"--gpus {gpus}: this study runs on vLLM's CPU engine; drop --gpus")
        return Target(device="cpu", cpu_cores=tuple(cpu_cores()))
    here = resolve_target(gpus, device="gpu")
    want = stored.gpu_names[0] if stored.gpu_names else (stored.gpu.name if stored.gpu else None)
    have = here.gpu_names[0] if here.gpu_names else None
    if want and have and want != have:
        raise VtuneError(f"this machine has {have} GPUs but the study was made on {want}; "
                         "results from different GPU models cannot be compared: join with the same GPU model")
    return here

def _local_model(model: str) -> str:
    """The study's model on this machine (the built-in model is rebuilt here if its folder is elsewhere)."""
    path = Path(model)
    if path.exists() or not path.is_absolute():
        return model
    from vtune._tiny_model import MODEL_NAME, build_tiny_model

    if path.name == MODEL_NAME:
        return str(build_tiny_model())
    raise VtuneError(f"the study's model {model} is not on this machine; put it at the same path "
                     "(e.g. a shared file system) before starting a worker")

def _run_trials_here(
    study: optuna.Study,
    settings: StudySettings,
    shape: ModelShape,
    *,
    n_trials: int | None,
    timeout_s: float | None,
    quiet: bool,
    max_concurrent_trials: int | None,
    trial_fn: TrialFn,
    own_cap: int | None = None,
    machine_locks: bool | None = None,
) -> tuple[_Runner, list[int], int]:
    """Runs trials in this process until the study's budget (or ``own_cap``) is reached.

    Shared by :func:`run_study` and :func:`run_worker`. Trials run in
    ``max_concurrent_trials`` threads, each on a lease of disjoint units of
    this node (:class:`~vtune.study._packing.ResourcePool`; with machine-wide
    locks, disjoint from other processes' trials too).

    The budget is the study's: a trial is claimed or created only while fewer than
    ``n_trials`` trials spend it (checked by the storage under its claim lock, across
    processes; :mod:`vtune.study._budget` says which trials count). A stop signal ends
    the loop at the next trial boundary with :class:`StudyInterrupted`.

    Returns:
        The runner, the numbers of the trials this process ran, and the trials it ran at once.

    Raises:
        StudyInterrupted: A stop signal or a KeyboardInterrupt out of a trial.
        VtuneError: The load tool failed :data:`MAX_LOAD_FAILURES_IN_A_ROW` trials in a row.
    """
    k = default_concurrency(settings) if max_concurrent_trials is None else max_concurrent_trials
    if k < 1:
        raise VtuneError(f"--max-concurrent-trials must be >= 1, got {k}")
    if machine_locks is None:
        machine_locks = trial_fn is run_trial
    remaining = None if n_trials is None else max(0, n_trials - count_started(study))
    if own_cap is not None:
        remaining = own_cap if remaining is None else min(remaining, own_cap)
    time_left = None if timeout_s is None else max(0.0, timeout_s - elapsed_s(study))
    done = count_done(study)
    progress = _Progress(n_trials or done + (remaining or 1), settings.objectives, quiet)
    progress.best = _best_text(study, settings)
    allocator = None
    cores_per_rank = 1
    if k > 1 or machine_locks:
        from vtune.study._packing import ResourcePool

        allocator = ResourcePool(settings.target, machine_wide=machine_locks)
        if settings.target.device == "cpu" and k > 1:
            cores_per_rank = max(1, len(settings.target.cpu_cores) // (k * max(1, min(layout_sizes(settings)))))
    with active_stop() or StopSignals() as stop:
        runner = _Runner(settings, shape, study, progress, allocator, trial_fn, cores_per_rank=cores_per_rank,
                         pin=k > 1, stop=stop)
        ran: list[int] = []

        def on_done(st: optuna.Study, t: FrozenTrial) -> None:
            ran.append(t.number)
            progress.best = _best_text(st, settings)
            if t.user_attrs.get("baseline") and not counts_toward_budget(t):
                with claim(st):
                    requeue_baselines(st)  # measured on the next run (or by the next trial here)
            if stop.stopped or runner.load_failures_in_a_row >= MAX_LOAD_FAILURES_IN_A_ROW:
                st.stop()
            elif n_trials is not None and count_started(st) >= n_trials:
                st.stop()  # the study's budget is handed out (here or on other workers)

        if (remaining is None or remaining > 0) and (time_left is None or time_left > 0):
            try:
                with stop.deferred():  # the main thread is in Optuna's loop: trials wind down, then it ends
                    study.optimize(runner, n_trials=own_cap, timeout=time_left, catch=(TrialFailed,),
                                   callbacks=[on_done], n_jobs=k, gc_after_trial=False)
            except BudgetSpent:
                pass  # the budget was handed out (maybe to another process) when this one asked for a trial
            except KeyboardInterrupt as exc:  # a second signal: raised at once wherever the main thread was
                stop.note(exc)
                raise stop.interrupted(runner.interrupted_trials) from None
        if stop.stopped:
            raise stop.interrupted(runner.interrupted_trials)
    if runner.load_failures_in_a_row >= MAX_LOAD_FAILURES_IN_A_ROW and runner.last_load_failure is not None:
        number, message = runner.last_load_failure
        raise VtuneError(
            f"the load tool failed {runner.load_failures_in_a_row} trials in a row (last: trial {number}: {message}); "
            "such failures do not spend --n-trials, so the study stops here instead of retrying: fix the load "
            f"(see {settings.study_dir / 'trials' / str(number) / 'load'}) and re-run the same command to resume")
    return runner, ran, k
