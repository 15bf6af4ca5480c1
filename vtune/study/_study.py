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
  real engine and load in steps, each step reported to a noise-aware pruner ->
  result, SLO constraints, artifacts under ``studies/<name>/trials/<n>/``;
* resume: re-running the same command continues; a trial left RUNNING by a
  killed process is marked FAIL with the reason and its engine is killed;
  ``--n-trials`` and ``--timeout`` count what was already done;
* at the end the best few are re-measured and the best config is exported.

Scale-out:

* packing: with ``max_concurrent_trials`` > 1 (default on the CLI: as many as
  fill the node, :func:`default_concurrency`) trials run in threads, each on a
  lease of disjoint GPUs (TP x PP x DP of them) or CPU cores (one per rank) from
  a :class:`vtune.study._scheduler.ResourcePool`; a trial needing more than the node
  has is pruned before launch (``pruned_by: resources``). Ports, logs and trial
  folders are per trial; the compile caches under ``studies/<name>/cache`` stay
  shared by the study's trials (entries are keyed by content hash; the IPC
  sockets in its tmp folder by UUID). The sampler sees running
  trials: TPE with ``constant_liar`` (single- and multi-objective).
* several machines: :func:`run_worker` (``vtune worker``) joins a study from its
  storage (PostgreSQL), with this machine's hardware. Only :func:`run_study`
  (``vtune study``) enqueues baselines, and it re-measures and exports only
  once no trial runs anywhere; workers just run trials. The budget is the
  study's, stored with it; trials started at the same instant by two workers
  can overshoot it by one each (Optuna's own distributed budget has the same
  race). Optuna claims each trial atomically (``SELECT ... FOR UPDATE``; on
  SQLite vtune adds a lock), so two workers never run the same trial.
* lost workers: every running trial sends heartbeats; a trial whose worker was
  silent for the grace period is failed by the next worker that looks, with
  ``failure = {"kind": "worker_lost", ...}`` in its user attributes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune._memory import Calibration, estimate_memory, parameter_count
from vtune._model_shape import ModelShape, load_model_shape
from vtune._objectives import (
    NoiseAwarePruner,
    Objective,
    config_groups,
    config_measurements,
    is_feasible,
    objective_summary,
    slo_constraints,
)
from vtune._serve_config import ServeConfig
from vtune._space import SearchSpace, apply_values, layout_name, parse_layout
from vtune._target import Target
from vtune._trial import TrialRecord, run_trial
from vtune._workload import Workload

__all__ = [
    "SCHEMA_VERSION", "StudySettings", "StudySummary", "default_concurrency", "default_storage", "load_settings",
    "make_storage", "prepare_study", "run_study", "run_worker", "wait_for_running", "worker_target",
]

SCHEMA_VERSION = 1
ATTR = "vtune"  # study user attribute holding the settings
#: max-num-seqs above this multiple of the predicted KV concurrency is pruned with --strict-memory.
STRICT_SEQS_FACTOR = 2.0


class TrialFailed(Exception):
    """A trial whose engine or load failed (recorded as FAIL, the study goes on)."""


class GpuMemoryNotBack(VtuneError):
    """A trial's GPUs did not return to their idle memory: the study stops with this message."""


#: A configuration measured this many times is not launched again: its trials reuse the mean.
REUSE_AFTER = 2
#: How long a finished trial waits for its GPUs' memory to come back before the study stops.
GPU_MEMORY_WAIT_S = 120.0
#: Used memory above the level before the engine started that still counts as back.
GPU_MEMORY_TOLERANCE_MIB = 256


@dataclass
class StudySettings:
    """Everything that defines a study (stored with it, so workers can join).

    Attributes:
        name: Study name (file names under ``studies/`` and ``configs/``).
        model: Model folder (or hub id) served by every trial.
        workload: The workload (load shape and SLOs).
        space: The search space.
        base: Fixed flags applied to every trial (``-- <flags>``).
        objectives: What to optimize.
        target: The hardware.
        duration_s: Measured load seconds per trial (None: the workload's).
        strict_memory: Also prune max-num-seqs far above the predicted KV concurrency.
        remeasure_top_k: Best configs re-measured at the end.
        enqueue: Extra configurations (flag lists) enqueued at the start.
        seed: Sampler seed.
        studies_dir: Folder of the study's artifacts.
        configs_dir: Folder the best config is exported to.
    """

    name: str
    model: str
    workload: Workload
    space: SearchSpace
    base: ServeConfig
    objectives: list[Objective]
    target: Target
    duration_s: float | None = None
    strict_memory: bool = False
    remeasure_top_k: int = 2
    enqueue: list[list[str]] = field(default_factory=list)
    seed: int | None = None
    studies_dir: Path = Path("studies")
    configs_dir: Path = Path("configs")

    @property
    def study_dir(self) -> Path:
        """``studies/<name>/``."""
        return self.studies_dir / self.name

    def to_attr(self) -> dict[str, Any]:
        """The study user attribute."""
        return {
            "schema_version": SCHEMA_VERSION,
            "description": "vtune study settings; fields: vtune.study._study.StudySettings",
            "model": self.model,
            "workload": self.workload.to_dict(),
            "workload_source": self.workload.source,
            "space": self.space.to_dict(),
            "base": self.base.to_dict(),
            "objectives": [o.name for o in self.objectives],
            "target": self.target.to_dict(),
            "duration_s": self.duration_s,
            "strict_memory": self.strict_memory,
            "remeasure_top_k": self.remeasure_top_k,
        }


def default_storage(name: str, studies_dir: Path) -> str:
    """``sqlite:///studies/<name>.db`` (absolute, so the dashboard finds it from anywhere)."""
    studies_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(studies_dir / f'{name}.db').resolve()}"


#: Seconds between a running trial's heartbeats in the storage.
HEARTBEAT_INTERVAL_S = 20
#: Seconds without a heartbeat after which a RUNNING trial's worker counts as lost.
GRACE_PERIOD_S = 60


class _VtuneRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose heartbeat sweep also records why a trial failed.

    Optuna marks a RUNNING trial whose worker stopped sending heartbeats FAIL
    (``optuna.storages.fail_stale_trials``, run by every worker before each new
    trial). Once FAIL a trial's user attributes can no longer be written, so the
    reason is written here, while the sweep finds the trial and it is still
    RUNNING: ``failure = {"kind": "worker_lost", ...}``.

    On SQLite it also makes claiming a waiting (enqueued) trial atomic: Optuna
    relies on ``SELECT ... FOR UPDATE``, which SQLite ignores, so two threads or
    processes could both start the same enqueued trial. Claims are serialized by
    a lock (threads) and a lock file next to the database (processes).
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._claim_lock = threading.Lock()
        self._claim_file: str | None = None
        if url.startswith("sqlite:///") and url.removeprefix("sqlite:///"):
            self._claim_file = url.removeprefix("sqlite:///") + ".claim-lock"

    def __getstate__(self) -> dict[Any, Any]:
        state = dict(super().__getstate__())
        state.pop("_claim_lock", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._claim_lock = threading.Lock()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING or not self.engine.name == "sqlite":
            return super().set_trial_state_values(trial_id, state, values)
        with self._claim_lock:
            if self._claim_file is None:
                return super().set_trial_state_values(trial_id, state, values)
            import fcntl

            with open(self._claim_file, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    return super().set_trial_state_values(trial_id, state, values)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = list(super()._get_stale_trial_ids(study_id))
        for trial_id in stale:
            _note_worker_lost(self, trial_id, self.grace_period or 2 * (self.heartbeat_interval or 0))
        return stale


def _note_worker_lost(storage: optuna.storages.BaseStorage, trial_id: int, grace_s: float) -> None:
    """Writes the ``worker_lost`` failure of a trial whose worker stopped sending heartbeats."""
    try:
        trial = storage.get_trial(trial_id)
    except KeyError:
        return
    if trial.state != TrialState.RUNNING:
        return
    worker = trial.user_attrs.get("worker") or {}
    who = f"pid {worker.get('pid')} on {worker.get('host')}" if worker else "an unknown worker"
    engine_stopped = False
    if worker.get("host") == socket.gethostname() and not _process_alive(worker):
        engine_stopped = _kill_stale_engine(trial.user_attrs.get("engine") or {})
    message = (f"worker lost: no heartbeat from the vtune worker ({who}) for more than {grace_s:g} s "
               f"(killed, crashed or cut off from the storage); marked failed by pid {os.getpid()} on "
               f"{socket.gethostname()}{' and its engine was stopped' if engine_stopped else ''}")
    failure = {"kind": "worker_lost", "message": message, "log_line": None, "exit_code": None,
               "worker": worker, "noticed_by": _worker_id()}
    try:
        storage.set_trial_user_attr(trial_id, "failure", failure)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another worker failed it first (and wrote the reason)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 means psycopg 3 by it, vtune ships psycopg2."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def make_storage(url: str, *, heartbeat: bool = True, heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
                 grace_period_s: int = GRACE_PERIOD_S) -> optuna.storages.BaseStorage:
    """An Optuna storage with heartbeats: dead workers' trials become FAIL, with the reason.

    Args:
        url: ``sqlite:///path.db``, ``postgresql://...``, ``mysql://...`` or ``journal:/path.log``.
        heartbeat: Send heartbeats from running trials and fail stale ones (RDB storages only).
        heartbeat_interval_s: Seconds between heartbeats (whole seconds, as Optuna wants).
        grace_period_s: Seconds without heartbeat after which a trial's worker is lost;
            every worker of a study should use the same value.

    Raises:
        VtuneError: An unknown scheme or a database that cannot be opened.
    """
    if url.startswith(("sqlite", "postgresql", "mysql")):
        kw: dict[str, Any] = {}
        if heartbeat:
            if heartbeat_interval_s < 1 or grace_period_s <= heartbeat_interval_s:
                raise VtuneError(f"heartbeat every {heartbeat_interval_s} s with a grace period of {grace_period_s} s: "
                                 "use an interval >= 1 s and a longer grace period")
            kw.update(heartbeat_interval=int(heartbeat_interval_s), grace_period=int(grace_period_s))
        engine_kwargs = {"pool_pre_ping": True} if url.startswith("postgresql") else {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _VtuneRDBStorage(_with_driver(url), engine_kwargs=engine_kwargs, **kw)
        except Exception as exc:
            raise VtuneError(f"--storage {url}: cannot open it ({str(exc).splitlines()[0]})") from None
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    raise VtuneError(f"--storage {url}: use sqlite:///path.db, postgresql://user@host/db or journal:/path.log")


# --------------------------------------------------------------------- baselines
def baseline_configs(
    settings: StudySettings, shape: ModelShape
) -> list[tuple[str, ServeConfig]]:
    """The enqueued baselines: the memory model's guess, vLLM's defaults, the size preset.

    The guess goes first: it is the configuration vtune expects to be best before any
    measurement, so a study stopped early has it, and the early-stopping pruner's bar
    comes from a strong trial. Baselines are never stopped early, so the order does not
    change what the report compares.
    """
    target = settings.target
    # vLLM's defaults take only the user's fixed flags; the other baselines also take the
    # space's fixed dimensions (e.g. eager mode on the CPU engine), as every sampled trial does.
    fixed_dims = {d.name: d.fixed for d in settings.space.dimensions if d.enabled and d.fixed is not None}
    out: list[tuple[str, ServeConfig]] = [("vllm-defaults", settings.base)]
    base = apply_values(settings.base, fixed_dims)
    gpus = max(1, target.num_gpus)
    params_b = parameter_count(shape) / 1e9
    preset = {"max_num_seqs": 512, "max_num_batched_tokens": 8192}
    if target.device == "gpu":
        preset["gpu_memory_utilization"] = 0.95  # type: ignore[assignment]
        if params_b < 7:
            tp = 1
        elif params_b <= 20:
            tp = min(2, gpus)
            preset.update(max_num_seqs=256)
        else:
            tp = gpus
            preset.update(max_num_seqs=128)
        tp = _largest_valid_tp(shape, tp)
        preset["parallel_layout"] = layout_name(tp, 1, gpus // tp)  # type: ignore[assignment]
    out.append(("size-preset", apply_values(base, preset)))
    guess = _memory_guess(settings, shape, base)
    if guess is not None:
        out.insert(0, ("memory-model-guess", guess))
    for i, flags in enumerate(settings.enqueue):
        from vtune._serve_config import parse_serve_args

        out.append((f"enqueued-{i}", parse_serve_args(flags, base=base)))
    return out


def _largest_valid_tp(shape: ModelShape, tp: int) -> int:
    from vtune._memory import check_layout

    while tp > 1 and check_layout(shape, tp, 1) is not None:
        tp -= 1
    return tp


def _memory_guess(settings: StudySettings, shape: ModelShape, base: ServeConfig) -> ServeConfig | None:
    """The memory model's pick of a layout, with max-num-seqs from its KV cache.

    Among the layouts that fit, those whose KV cache holds the workload's
    concurrent streams at its request length (in all replicas) are preferred, and
    of those the one with the most data-parallel replicas: tensor parallelism
    only buys KV room and latency with communication, and once the room is there
    more replicas serve more (measured: DP=2 served 1.7-2.8x the tokens of TP=2 for
    an 8B shape on two H200s; ``validate`` warns about TP on such models). When
    none holds them (or the load has no stream count), the layout whose KV cache
    holds the most requests in all.
    """
    space, target = settings.space, settings.target
    layout_dim = space.get("parallel_layout")
    layouts = (layout_dim.choices or []) if layout_dim and layout_dim.active else [None]
    tokens = 8192 if target.device == "gpu" else 2048
    per_req = max(1, settings.workload.max_model_len_hint)
    streams = settings.workload.load.streams
    seqs_dim = space.get("max_num_seqs")
    hi = int(seqs_dim.high or 1024) if seqs_dim else 1024
    fitting: list[tuple[float, int, ServeConfig]] = []  # (requests held in all replicas, replicas, config)
    for layout in layouts:
        values: dict[str, Any] = {"max_num_batched_tokens": tokens}
        if layout:
            values["parallel_layout"] = layout
        if target.device == "gpu":
            values["gpu_memory_utilization"] = 0.92
        cfg = apply_values(base, values)
        est = estimate_memory(shape, cfg, target.gpu, device=target.device, num_gpus=target.num_gpus or None)
        if not est.fits:
            continue
        conc = est.kv_cache_tokens / per_req  # requests of the workload's length one replica holds
        seqs = 2 ** max(1, int(math.log2(max(2.0, min(conc, hi)))))
        fitting.append((conc * cfg.dp, cfg.dp, apply_values(cfg, {"max_num_seqs": seqs})))
    if not fitting:
        return None
    holding = [f for f in fitting if streams and f[0] >= streams]
    if holding:
        return max(holding, key=lambda f: (f[1], f[0]))[2]
    return max(fitting, key=lambda f: f[0])[2]


# ------------------------------------------------------------------------ trials
def _worker_id() -> dict[str, Any]:
    """Who runs here: host, pid and the pid's start time (to tell a reused pid apart)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_started(os.getpid())}


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def _process_alive(worker: dict[str, Any]) -> bool:
    """Whether the worker process recorded as ``{host, pid, started}`` still runs on this host."""
    import psutil

    pid = worker.get("pid")
    if not pid or not psutil.pid_exists(pid):
        return False
    started = worker.get("started")
    if started is not None:
        now = _process_started(pid)
        return now is not None and abs(now - float(started)) < 0.05
    return _is_vtune(pid)


def config_problem(cfg: ServeConfig) -> str | None:
    """A combination vLLM rejects at startup, found without launching."""
    if cfg.max_num_batched_tokens is not None and cfg.max_num_seqs is not None:
        if cfg.max_num_batched_tokens < cfg.max_num_seqs:
            return (f"max-num-batched-tokens {cfg.max_num_batched_tokens} < max-num-seqs {cfg.max_num_seqs} "
                    "(vLLM requires batched tokens >= seqs)")
    if (cfg.enable_chunked_prefill is False and cfg.max_num_batched_tokens is not None
            and cfg.max_model_len is not None and cfg.max_num_batched_tokens < cfg.max_model_len):
        return (f"without chunked prefill max-num-batched-tokens {cfg.max_num_batched_tokens} must be >= "
                f"max-model-len {cfg.max_model_len}")
    return None


class _Progress:
    """One live line per trial and a study-level bar, on stderr."""

    def __init__(self, total: int, objectives: list[Objective], quiet: bool = False) -> None:
        self.total = total
        self.objectives = objectives
        self.quiet = quiet
        self.best = ""

    def line(self, done: int, number: int, what: str, phase: str, elapsed_s: float) -> None:
        if self.quiet:
            return
        width = 20
        filled = int(width * min(done, self.total) / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        best = f" | best {self.best}" if self.best else ""
        print(f"[{bar}] {done}/{self.total} trial {number} {what}: {phase} {elapsed_s:.0f}s{best}",
              file=sys.stderr, flush=True)


#: The pluggable measurement: same signature and result as :func:`vtune._trial.run_trial`.
#: A study normally launches real engines; a replay of a recorded landscape passes a
#: function that looks the configuration up instead, and the rest of the study is unchanged.
TrialFn = Any


class _Runner:
    """The objective function of the study (one call = one trial)."""

    def __init__(self, settings: StudySettings, shape: ModelShape, study: optuna.Study, progress: _Progress,
                 gpu_allocator: Any = None, trial_fn: TrialFn = run_trial, cores_per_rank: int = 1) -> None:
        self.s = settings
        self.shape = shape
        self.study = study
        self.progress = progress
        self.alloc = gpu_allocator  # a ResourcePool when trials run at once, else None
        self.trial_fn = trial_fn
        self.cores_per_rank = max(1, cores_per_rank)
        self.cache_dir = settings.study_dir / "cache"
        self._lock = threading.Lock()
        #: Set on Ctrl-C while trials run in threads: no new engine starts, failures read "interrupted".
        self.interrupted = threading.Event()
        self._in_flight = 0

    # -- calibration lives in the study, shared with workers
    def calibration(self) -> Calibration:
        data = self.study.user_attrs.get("calibration")
        return Calibration.from_dict(data) if data else Calibration()

    def _save_calibration(self, cal: Calibration) -> None:
        self.study.set_user_attr("calibration", cal.to_dict())

    # -- resources: GPUs, or CPU cores on the CPU engine
    def units_needed(self, cfg: ServeConfig) -> int:
        """GPUs (TP x PP x DP), or CPU cores (that many ranks x cores per rank), a config takes."""
        return cfg.num_gpus * (1 if self.s.target.device == "gpu" else self.cores_per_rank)

    def resource_problem(self, cfg: ServeConfig) -> str | None:
        """Why this node can never run ``cfg`` (None: it can)."""
        target = self.s.target
        n = self.units_needed(cfg)
        have = target.num_gpus if target.device == "gpu" else len(target.cpu_cores)
        if n <= have:
            return None
        what = "GPU" if target.device == "gpu" else "CPU core"
        layout = layout_name(cfg.tp, cfg.pp, cfg.dp)
        return f"{layout} needs {n} {what}s but this node (pid {os.getpid()} on {socket.gethostname()}) has {have}"

    def lease(self, cfg: ServeConfig, on_wait: Any = None) -> tuple[list[int] | None, list[int] | None,
                                                                      list[int] | None]:
        """``(gpus, cpu_cores, lease)`` for a trial of ``cfg``; blocks while the units are busy.

        Without a pool (one trial at a time) a GPU trial takes the first GPUs and a
        CPU trial the whole machine (no pinning); ``lease`` is then None.

        Args:
            cfg: The configuration.
            on_wait: Called once before blocking, when the units are not free now.
        """
        n = self.units_needed(cfg)
        if self.alloc is None:
            gpus = list(self.s.target.gpus[:n]) if self.s.target.device == "gpu" else None
            return gpus, None, None
        try:
            units = self.alloc.acquire(n, timeout_s=0)
        except TimeoutError:
            if on_wait is not None:
                on_wait()
            units = self.alloc.acquire(n)
        if self.s.target.device == "gpu":
            return list(units), None, units
        return None, list(units), units

    def release(self, lease: list[int] | None) -> None:
        """Gives a lease back (no-op for None)."""
        if lease is not None and self.alloc is not None:
            self.alloc.release(lease)

    def __call__(self, trial: optuna.Trial) -> Any:
        with self._lock:
            self._in_flight += 1
        try:
            return self._run(trial)
        finally:
            with self._lock:
                self._in_flight -= 1

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no trial of this process is in flight; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self._in_flight

    def _run(self, trial: optuna.Trial) -> Any:
        t0 = time.monotonic()
        s = self.s
        trial.set_user_attr("worker", _worker_id())
        cfg = s.space.sample(trial, s.base)
        baseline = trial.user_attrs.get("baseline")
        if baseline and trial.user_attrs.get("baseline_config"):
            cfg = ServeConfig.from_dict(trial.user_attrs["baseline_config"]).replace(model=s.model)
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("flags", cfg.to_flags_line())
        what = baseline or " ".join(f"{k}={v}" for k, v in trial.params.items())
        done = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.FAIL)))
        reused = self._reuse(trial, cfg)
        if reused is not None:
            self.progress.line(done + 1, trial.number, what, "reused: this configuration was measured "
                               f"{len(trial.user_attrs['reused_from'])} times already", 0)
            return reused
        problem = config_problem(cfg)
        if problem:
            trial.set_user_attr("pruned_by", "invalid_config")
            trial.set_user_attr("reason", problem)
            self.progress.line(done, trial.number, what, f"pruned ({problem})", 0)
            raise optuna.TrialPruned(problem)
        too_big = self.resource_problem(cfg)
        if too_big:
            trial.set_user_attr("pruned_by", "resources")
            trial.set_user_attr("reason", too_big)
            self.progress.line(done, trial.number, what, f"pruned before launch ({too_big})", 0)
            raise optuna.TrialPruned(too_big)
        cal = self.calibration()
        est = estimate_memory(self.shape, cfg, s.target.gpu, device=s.target.device, calibration=cal,
                              num_gpus=s.target.num_gpus or None)
        trial.set_user_attr("prediction", est.to_dict())
        reason = est.reason if not est.fits else None
        if reason is None and s.strict_memory and est.max_num_seqs > STRICT_SEQS_FACTOR * est.max_concurrency:
            reason = (f"max-num-seqs {est.max_num_seqs} is more than {STRICT_SEQS_FACTOR:g}x the "
                      f"{est.max_concurrency:.2f} requests the KV cache holds (--strict-memory)")
        if reason:
            trial.set_user_attr("pruned_by", "memory_model")
            trial.set_user_attr("reason", reason)
            self.progress.line(done, trial.number, what, f"pruned before launch ({reason})", 0)
            raise optuna.TrialPruned(reason)

        run_dir = s.study_dir / "trials" / str(trial.number)
        single = len(s.objectives) == 1
        objective = s.objectives[0]
        steps_total = s.workload.steps
        step_s = (s.duration_s or s.workload.duration_s) / steps_total
        pruned_at: list[int] = []

        def on_step(index: int, cumulative: Any) -> bool:
            if not single:
                return True
            trial.report(objective.value(cumulative), index)
            if trial.should_prune() and index < steps_total - 1:
                pruned_at.append(index)
                return False
            return True

        def on_launch(server: Any) -> None:
            trial.set_user_attr("engine", {"pid": server.pid, "pgid": server.pgid, **_worker_id()})

        def on_phase(phase: str) -> None:
            self.progress.line(done, trial.number, what, phase, time.monotonic() - t0)

        gpus, cores, lease = self.lease(cfg, on_wait=lambda: on_phase(
            "waiting for free " + ("GPUs" if s.target.device == "gpu" else "CPU cores")))
        trial.set_user_attr("gpus", gpus)
        trial.set_user_attr("cpu_cores", cores)
        trial.set_user_attr("lease", {"device": s.target.device, "units": lease, **_worker_id()}
                            if lease is not None else None)
        if self.interrupted.is_set():
            self.release(lease)
            trial.set_user_attr("failure", _interrupted_failure("before its engine started"))
            raise TrialFailed("interrupted before launch")
        extra: dict[str, Any] = {"cpu_cores": cores} if cores is not None else {}
        try:
            rec = self.trial_fn(cfg, s.workload, run_dir, gpus=gpus, duration_s=s.duration_s,
                                cache_dir=self.cache_dir, on_step=on_step, on_phase=on_phase, on_launch=on_launch,
                                **extra)
            if gpus and rec.teardown.get("gpu_memory_back") is False:
                self._wait_for_gpu_memory(trial, rec, gpus, on_phase)
        finally:
            self.release(lease)
        self._record(trial, rec, est)
        if self.interrupted.is_set() and rec.failure is not None:
            trial.set_user_attr("failure", _interrupted_failure("while it ran; its engine was stopped",
                                                                rec.failure.to_dict()))
        if rec.startup is not None and s.target.device == "gpu":
            with self._lock:  # trials finishing at once in this process must not drop an observation
                self._save_calibration(self.calibration().observe(est, rec.startup.to_dict()))
        if rec.failure is not None:
            self.progress.line(done + 1, trial.number, what, f"FAILED {rec.failure.kind}", time.monotonic() - t0)
            raise TrialFailed(f"{rec.failure.kind}: {rec.failure.message}")
        assert rec.result is not None
        for key, value in slo_constraints(rec.result, s.workload.slo).items():
            trial.set_constraint(key, value)
        values = [o.value(rec.result) for o in s.objectives]
        if pruned_at:
            saved = (steps_total - 1 - pruned_at[0]) * step_s * max(1, cfg.num_gpus if gpus else 1)
            trial.set_user_attr("pruned_by", "early_stopping")
            trial.set_user_attr("gpu_seconds_saved", saved)
            trial.set_user_attr("reason", f"stopped after step {pruned_at[0] + 1} of {steps_total}: clearly "
                                          f"worse than the best ({objective_summary(s.objectives, values)})")
            self.progress.line(done + 1, trial.number, what, "stopped early", time.monotonic() - t0)
            raise optuna.TrialPruned(trial.user_attrs["reason"])
        summary = objective_summary(s.objectives, values)
        self.progress.line(done + 1, trial.number, what, f"done: {summary}", time.monotonic() - t0)
        return values[0] if single else values

    def _reuse(self, trial: optuna.Trial, cfg: ServeConfig) -> Any:
        """The mean result of a configuration already measured :data:`REUSE_AFTER` times, else None.

        TPE proposes a promising configuration again and again; the second
        measurement is worth its launch (it shows the noise and confirms the
        best), later ones are not: the trial then costs no launch and takes the
        mean of the earlier measurements (and their mean SLO constraints).
        """
        key = cfg.to_flags_line()
        same = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("flags") == key and t.values and not t.user_attrs.get("reused_from")]
        if len(same) < REUSE_AFTER:
            return None
        trial.set_user_attr("reused_from", [t.number for t in same])
        for name in same[-1].constraints:
            values = [t.constraints.get(name, 0.0) for t in same]
            trial.set_constraint(name, sum(values) / len(values))
        means = [sum(float(t.values[i]) for t in same) / len(same) for i in range(len(same[0].values))]
        return means[0] if len(means) == 1 else means

    def _wait_for_gpu_memory(self, trial: optuna.Trial, rec: TrialRecord, gpus: list[int], on_phase: Any) -> None:
        """Holds the trial's GPUs until their memory is back to its level before the engine started.

        Raises:
            GpuMemoryNotBack: Still not back after :data:`GPU_MEMORY_WAIT_S`; the
                study stops (resuming later continues it).
        """
        from vtune._hardware import gpu_memory_used_bytes

        before = {int(k): int(v) for k, v in (rec.teardown.get("gpu_memory_before_mib") or {}).items()}
        on_phase("waiting for GPU memory to come back")
        t0 = time.monotonic()
        excess: dict[int, int] = {}
        while True:
            used = {g: b // (1 << 20) for g, b in gpu_memory_used_bytes(gpus).items()}
            excess = {g: used[g] - before.get(g, used[g]) for g in used
                      if used[g] - before.get(g, used[g]) > GPU_MEMORY_TOLERANCE_MIB}
            if not excess or time.monotonic() - t0 >= GPU_MEMORY_WAIT_S:
                break
            time.sleep(2)
        waited = time.monotonic() - t0
        trial.set_user_attr("gpu_memory_wait_s", waited)
        if excess:
            trial.set_user_attr("gpu_memory_not_back_mib", {str(g): v for g, v in excess.items()})
            listing = ", ".join(f"GPU {g}: {v:,} MiB" for g, v in sorted(excess.items()))
            raise GpuMemoryNotBack(
                f"after trial {trial.number} the GPU memory did not return to its level before the engine started "
                f"({listing} more after {waited:.0f} s; a process outside vtune's control?); the study stops so "
                "that no trial runs on a half-full GPU: free that memory (nvidia-smi shows who holds it), then re-run "
                "the same command to resume"
            )

    def _record(self, trial: optuna.Trial, rec: TrialRecord, est: Any) -> None:
        trial.set_user_attr("run_dir", rec.run_dir)
        trial.set_user_attr("status", rec.status)
        trial.set_user_attr("failure", rec.failure.to_dict() if rec.failure else None)
        trial.set_user_attr("startup", rec.startup.to_dict() if rec.startup else None)
        trial.set_user_attr("result", rec.result.to_dict() if rec.result else None)
        trial.set_user_attr("metrics", rec.metrics)
        trial.set_user_attr("teardown", {k: rec.teardown.get(k) for k in ("clean", "port_free", "leftover_pids",
                                                                           "gpu_memory_back", "stop_s")})
        trial.set_user_attr("timings", {"engine_start_s": rec.engine_start_s, "load_s": rec.load_s,
                                        "teardown_s": rec.teardown_s, "total_s": rec.total_s,
                                        "overhead_s": rec.overhead_s})
        if rec.startup is not None and rec.startup.kv_cache_tokens and est.kv_cache_tokens:
            trial.set_user_attr("kv_tokens_error", est.kv_cache_tokens / rec.startup.kv_cache_tokens - 1)


def _interrupted_failure(when: str, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``failure`` user attribute of a trial stopped by Ctrl-C (as :func:`recover_stale_trials` writes)."""
    return {"kind": "interrupted", "message": f"the study was interrupted (Ctrl-C) {when}",
            "log_line": (engine or {}).get("log_line"), "exit_code": (engine or {}).get("exit_code"),
            "engine_failure": engine}


# ------------------------------------------------------------------- lifecycle
def _kill_stale_engine(info: dict[str, Any]) -> bool:
    """Kills a dead worker's engine group if it is still alive on this host."""
    import signal

    import psutil

    if not info or info.get("host") != socket.gethostname():
        return False
    pgid = info.get("pgid")
    if not pgid:
        return False
    members = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid:
                members.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    if not members:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        _, alive = psutil.wait_procs(members, timeout=10)
        if not alive:
            return True
    return True


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Marks trials left RUNNING by a dead process on this host as FAIL, with the reason.

    A trial is stale when its worker process (recorded as host and pid) is gone;
    trials of other hosts are left to Optuna's heartbeat. The engine such a
    trial left behind is killed.
    """
    marked = []
    here = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != here:
            continue
        pid = worker.get("pid")
        if pid == os.getpid() or _process_alive(worker):
            continue
        killed = _kill_stale_engine(t.user_attrs.get("engine") or {})
        reason = (f"interrupted: the vtune process (pid {pid} on {here}) died while this trial ran; "
                  f"marked failed on resume{' and its engine was stopped' if killed else ''}")
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, "failure", {"kind": "interrupted", "message": reason,
                                                             "log_line": None, "exit_code": None})
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        marked.append(t.number)
    return marked


def _is_vtune(pid: int) -> bool:
    import psutil

    try:
        return "vtune" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def load_settings(study: optuna.Study, *, studies_dir: Path, configs_dir: Path) -> StudySettings:
    """Rebuilds a study's settings from its storage (for workers, best, report).

    Raises:
        VtuneError: The study was not created by vtune.
    """
    from vtune._hardware import cpu_cores
    from vtune._memory import Gpu
    from vtune._objectives import parse_objectives

    data = study.user_attrs.get(ATTR)
    if not data:
        raise VtuneError(f"study {study.study_name!r} has no vtune settings; it was not created by `vtune study`")
    wl = Workload.from_dict(data["workload"], source=data.get("workload_source", "<study>"))
    t = data["target"]
    gpu = Gpu(t["gpu"], t["gpu_memory_gib"]) if t.get("gpu") else None
    target = Target(device=t["device"], gpus=tuple(t.get("gpus") or ()), gpu=gpu,
                    gpu_names=tuple(t.get("gpu_names") or ()), nvlink=t.get("nvlink"),
                    cpu_cores=tuple(cpu_cores()))
    return StudySettings(
        name=study.study_name, model=data["model"], workload=wl, space=SearchSpace.from_dict(data["space"]),
        base=ServeConfig.from_dict(data["base"]), objectives=parse_objectives(",".join(data["objectives"])),
        target=target, duration_s=data.get("duration_s"), strict_memory=bool(data.get("strict_memory")),
        remeasure_top_k=int(data.get("remeasure_top_k", 2)), studies_dir=studies_dir, configs_dir=configs_dir,
    )


@dataclass
class StudySummary:
    """What a study run did."""

    name: str
    storage: str
    finished_trials: int
    launches: int
    pruned_before_launch: int
    stopped_early: int
    failed: int
    gpu_seconds_saved: float
    best_trial: int | None
    best_values: list[float] | None
    best_flags: str | None
    exported: list[str]
    recovered: list[int]
    ran_here: list[int] = field(default_factory=list)
    max_concurrent_trials: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


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


def open_study(settings: StudySettings, storage_url: str, *, heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
               grace_period_s: int = GRACE_PERIOD_S) -> optuna.Study:
    """Creates the study or loads it (resume); stores the settings on creation."""
    storage = make_storage(storage_url, heartbeat_interval_s=heartbeat_interval_s, grace_period_s=grace_period_s)
    directions: list[Any] = [o.direction for o in settings.objectives]
    study = optuna.create_study(
        study_name=settings.name, storage=storage, directions=directions, load_if_exists=True,
        sampler=_make_sampler(settings), pruner=NoiseAwarePruner(),
    )
    existing = study.user_attrs.get(ATTR)
    if existing is None:
        study.set_user_attr(ATTR, settings.to_attr())
    else:
        old = [d for d in existing.get("objectives", [])]
        if old != [o.name for o in settings.objectives]:
            raise VtuneError(
                f"study {settings.name!r} exists with objectives {old}; use the same --objectives or another --study"
            )
    return study


def count_done(study: optuna.Study) -> int:
    """Trials that count against ``--n-trials``: finished in any way."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def count_started(study: optuna.Study) -> int:
    """Trials finished or running: what a study's budget has handed out."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                         TrialState.RUNNING)))


def elapsed_s(study: optuna.Study) -> float:
    """Wall seconds already spent in finished trials (counts against ``--timeout``).

    Trials that ran at once (packed on one node, or on several workers) count
    once: this is the length of the union of the trials' intervals.
    """
    spans = sorted((t.datetime_start, t.datetime_complete) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        if t.datetime_start and t.datetime_complete)
    total = 0.0
    cur_start, cur_end = None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_start is not None and cur_end is not None:
                total += (cur_end - cur_start).total_seconds()
            cur_start, cur_end = start, end
        elif end > cur_end:
            cur_end = end
    if cur_start is not None and cur_end is not None:
        total += (cur_end - cur_start).total_seconds()
    return total


def layout_sizes(settings: StudySettings) -> list[int]:
    """Units (GPUs, or CPU-engine ranks) each parallel layout the study can sample takes."""
    dim = settings.space.get("parallel_layout")
    if dim is not None and dim.enabled and dim.fixed is not None:
        names = [str(dim.fixed)]
    elif dim is not None and dim.active and dim.choices:
        names = [str(c) for c in dim.choices]
    else:
        return [settings.base.num_gpus]
    sizes = []
    for name in names:
        tp, pp, dp = parse_layout(name)
        sizes.append(tp * pp * dp)
    return sizes


def default_concurrency(settings: StudySettings) -> int:
    """Trials at once that fill the node: units // the smallest layout's size (at least 1).

    Units are the GPUs on a GPU target and the cores on the CPU engine (one per
    rank). A space whose layouts all take the whole node (the default GPU space:
    every layout uses every GPU) gives 1.

    On the CPU engine every trial also holds its KV cache space and the model
    in host memory, so there the count is also capped by the memory available
    now: one trial per :func:`cpu_trial_memory_gib` (a 64-core box does not start
    64 engines with 4 GiB of KV cache each on 128 GiB).
    """
    units = settings.target.num_gpus if settings.target.device == "gpu" else len(settings.target.cpu_cores)
    smallest = max(1, min(layout_sizes(settings)))
    k = max(1, units // smallest)
    if settings.target.device == "cpu":
        import psutil

        available_gib = psutil.virtual_memory().available / 2**30
        k = min(k, max(1, int(available_gib // cpu_trial_memory_gib(settings))))
    return k


#: Host memory (GiB) a CPU-engine trial takes besides its KV cache: API server, engine core, GuideLLM.
CPU_TRIAL_OVERHEAD_GIB = 2.5


def cpu_trial_memory_gib(settings: StudySettings) -> float:
    """Most host memory one CPU-engine trial of the study may take: largest KV space + weights + overhead."""
    from vtune._target import CPU_DEFAULT_KV_SPACE_GIB

    dim = settings.space.get("VLLM_CPU_KVCACHE_SPACE")
    if dim is not None and dim.enabled and dim.fixed is not None:
        kv = float(dim.fixed)
    elif dim is not None and dim.active:
        kv = float(max(dim.choices or [0])) if dim.kind == "categorical" else float(dim.high or 0)
    else:
        kv = float(settings.base.env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_DEFAULT_KV_SPACE_GIB)
    try:
        weights = parameter_count(load_model_shape(settings.model)) * 4 / 2**30  # float32 at most
    except Exception:
        weights = 0.0
    return kv + weights + CPU_TRIAL_OVERHEAD_GIB


def enqueue_baselines(study: optuna.Study, settings: StudySettings, shape: ModelShape) -> int:
    """Enqueues the baselines once per study (a resumed study does not repeat them)."""
    if study.user_attrs.get("baselines_enqueued"):
        return 0
    n = 0
    for name, cfg in baseline_configs(settings, shape):
        values = {"max_num_seqs": cfg.max_num_seqs, "max_num_batched_tokens": cfg.max_num_batched_tokens,
                  "gpu_memory_utilization": cfg.gpu_memory_utilization,
                  "parallel_layout": layout_name(cfg.tp, cfg.pp, cfg.dp)}
        for dim in settings.space.active:
            if dim.name.isupper() and dim.name in cfg.env:
                values[dim.name] = cfg.env[dim.name]
            elif hasattr(cfg, dim.name) and getattr(cfg, dim.name) is not None:
                values[dim.name] = getattr(cfg, dim.name)
        values = {k: v for k, v in values.items() if v is not None}
        # The defaults have no value for many dimensions; use each dimension's middle/first value.
        params = settings.space.project(values)
        for dim in settings.space.active:
            if dim.name not in params:
                params[dim.name] = dim.project(dim.choices[0] if dim.kind == "categorical" and dim.choices
                                               else math.sqrt(float(dim.low or 1) * float(dim.high or 1))
                                               if dim.log else (float(dim.low or 0) + float(dim.high or 0)) / 2)
        study.enqueue_trial(params, user_attrs={"baseline": name, "baseline_config": cfg.to_dict()},
                            skip_if_exists=False)
        n += 1
    study.set_user_attr("baselines_enqueued", n)
    return n


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
        timeout_s: Wall seconds in all, counting time already spent (None: no limit).
        quiet: No progress lines.
        max_concurrent_trials: Trials run at once here on disjoint GPUs/cores
            (None: as many as fill the node, :func:`default_concurrency`).
        trial_fn: How a trial is measured (default: a real engine and load,
            :func:`vtune._trial.run_trial`; a replay passes a table lookup).
        export: Write the best config under ``configs/`` at the end.
        heartbeat_interval_s: Seconds between a running trial's heartbeats.
        grace_period_s: Seconds without heartbeat after which a worker is lost.

    Raises:
        VtuneError: Bad input (e.g. ``max_concurrent_trials`` below 1).
    """
    study, shape, recovered, url = prepare_study(settings, storage_url, n_trials=n_trials, timeout_s=timeout_s,
                                                 heartbeat_interval_s=heartbeat_interval_s,
                                                 grace_period_s=grace_period_s)
    runner, ran, k = _run_trials_here(study, settings, shape, n_trials=n_trials, timeout_s=timeout_s, quiet=quiet,
                                      max_concurrent_trials=max_concurrent_trials, trial_fn=trial_fn)
    wait_for_running(study, quiet=quiet)
    remeasure(study, settings, runner)
    exported = export_best(study, settings) if export else []
    summary = summarize(study, settings, url, exported, recovered)
    summary.ran_here, summary.max_concurrent_trials = sorted(ran), k
    return summary


def prepare_study(
    settings: StudySettings,
    storage_url: str | None = None,
    *,
    n_trials: int | None = 10,
    timeout_s: float | None = None,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
) -> tuple[optuna.Study, ModelShape, list[int], str]:
    """Creates (or resumes) a study ready for trials, without running any.

    Stores the settings (on creation) and the budget, fails trials left running
    by dead processes of this host, and enqueues the baselines once. What
    :func:`run_study` does first; a study prepared so can be run by workers alone.

    Returns:
        The study, the model's shape, the trials marked failed on resume, the storage URL.
    """
    url = storage_url or default_storage(settings.name, settings.studies_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # vtune prints its own progress lines
    shape = load_model_shape(settings.model)
    study = open_study(settings, url, heartbeat_interval_s=heartbeat_interval_s, grace_period_s=grace_period_s)
    recovered = recover_stale_trials(study)
    enqueue_baselines(study, settings, shape)
    study.set_user_attr("budget", {"n_trials": n_trials, "timeout_s": timeout_s})
    return study, shape, recovered, url


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

    Raises:
        VtuneError: No such study, one not made by vtune, or hardware that does not match it.
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
    study = optuna.load_study(study_name=name, storage=storage, sampler=_make_sampler(settings),
                              pruner=NoiseAwarePruner())
    shape = load_model_shape(settings.model)
    recovered = recover_stale_trials(study)
    budget = study.user_attrs.get("budget") or {}
    study_n = budget.get("n_trials")
    runner, ran, k = _run_trials_here(study, settings, shape, n_trials=study_n, own_cap=n_trials,
                                      timeout_s=budget.get("timeout_s"), quiet=quiet,
                                      max_concurrent_trials=max_concurrent_trials, trial_fn=trial_fn)
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
) -> tuple[_Runner, list[int], int]:
    """Runs trials in this process until the study's budget (or ``own_cap``) is reached.

    Shared by :func:`run_study` and :func:`run_worker`. Trials run in
    ``max_concurrent_trials`` threads, each on a lease of disjoint units of
    this node (:class:`~vtune.study._scheduler.ResourcePool`).

    Returns:
        The runner, the numbers of the trials this process ran, and the trials it ran at once.
    """
    k = default_concurrency(settings) if max_concurrent_trials is None else max_concurrent_trials
    if k < 1:
        raise VtuneError(f"--max-concurrent-trials must be >= 1, got {k}")
    remaining = None if n_trials is None else max(0, n_trials - count_started(study))
    if own_cap is not None:
        remaining = own_cap if remaining is None else min(remaining, own_cap)
    time_left = None if timeout_s is None else max(0.0, timeout_s - elapsed_s(study))
    done = count_done(study)
    progress = _Progress(n_trials or done + (remaining or 1), settings.objectives, quiet)
    progress.best = _best_text(study, settings)
    allocator = None
    cores_per_rank = 1
    if k > 1:
        from vtune.engines._vllm import _install_safety_net
        from vtune.study._scheduler import ResourcePool

        allocator = ResourcePool(settings.target)
        if settings.target.device == "cpu":
            cores_per_rank = max(1, len(settings.target.cpu_cores) // (k * max(1, min(layout_sizes(settings)))))
        _install_safety_net()  # from the main thread: SIGTERM stops the engines of every trial thread
    runner = _Runner(settings, shape, study, progress, allocator, trial_fn, cores_per_rank=cores_per_rank)
    ran: list[int] = []

    def on_done(st: optuna.Study, t: FrozenTrial) -> None:
        ran.append(t.number)
        progress.best = _best_text(st, settings)
        if n_trials is not None and count_started(st) >= n_trials:
            st.stop()  # the study's budget is handed out (here or on other workers)

    if (remaining is None or remaining > 0) and (time_left is None or time_left > 0):
        with _stop_engines_on_ctrl_c(runner, k > 1):
            study.optimize(runner, n_trials=remaining, timeout=time_left, catch=(TrialFailed,),
                           callbacks=[on_done], n_jobs=k, gc_after_trial=False)
    return runner, ran, k


@contextmanager
def _stop_engines_on_ctrl_c(runner: _Runner, threaded: bool) -> Iterator[None]:
    """While trials run in threads, Ctrl-C stops their engines at once.

    Optuna's thread pool waits for the running trials before the
    KeyboardInterrupt leaves ``optimize``; without this a packed study would
    go on measuring for minutes after Ctrl-C (Optuna returns at once but leaves
    them running). The engines are stopped, their trials recorded as failed
    (``interrupted``), no new trial starts, and then the KeyboardInterrupt goes on.
    """
    import signal

    if not threaded or threading.current_thread() is not threading.main_thread():
        yield
        return
    from vtune.engines._vllm import _kill_live_groups

    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: Any) -> None:
        if not runner.interrupted.is_set():
            runner.interrupted.set()
            print("interrupted: stopping the running trials' engines", file=sys.stderr, flush=True)
            threading.Thread(target=_kill_live_groups, name="vtune-stop-engines", daemon=True).start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        # Optuna returns at once and leaves the trial threads running: wait while they
        # stop their engines and record their trials as failed (a second Ctrl-C gives up).
        signal.signal(signal.SIGINT, previous)
        runner.wait_idle(timeout_s=120)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_for_running(study: optuna.Study, *, quiet: bool = False, poll_s: float | None = None) -> None:
    """Waits until no trial of the study runs anywhere; fails those of lost workers meanwhile.

    Without heartbeats (a journal storage) only trials left by dead processes of
    this host are failed, and trials of other hosts are not waited for.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        recover_stale_trials(study)
        return
    interval = float(storage.get_heartbeat_interval() or 1)  # type: ignore[attr-defined]
    poll = poll_s if poll_s is not None else min(5.0, interval)
    announced: set[int] = set()
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        numbers = {t.number for t in running}
        if not quiet and not numbers <= announced:
            print(f"waiting for trial(s) {sorted(numbers)} running on other workers", file=sys.stderr, flush=True)
            announced |= numbers
        time.sleep(poll)


def _best_text(study: optuna.Study, settings: StudySettings) -> str:
    best = best_trials(study)
    if not best:
        return ""
    t = best[0]
    group = config_measurements(study.get_trials(deepcopy=False), t)
    if len(group) == 1:
        return f"{objective_summary(settings.objectives, t.values)} (trial {t.number})"
    return (f"{objective_summary(settings.objectives, mean_values(group))} (mean of trials "
            f"{', '.join(str(g.number) for g in group)})")


def mean_values(group: list[FrozenTrial]) -> list[float]:
    """Objective values averaged over a configuration's measurements."""
    return [sum(float(t.values[i]) for t in group) / len(group) for i in range(len(group[0].values))]


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible best trials: the best one, or the Pareto front (multi-objective)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None]
    feasible = [t for t in done if is_feasible(t)] or done
    if not feasible:
        return []
    if len(study.directions) == 1:
        # Rank configurations by the mean of their measurements (a configuration the sampler
        # proposed twice is not judged by its luckier draw); each is represented by its latest trial.
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        groups = config_groups(feasible).values()
        ranked = sorted(groups, key=lambda g: -sign * sum(float(t.values[0]) for t in g) / len(g))
        return [g[-1] for g in ranked]
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    return _get_pareto_front_trials_by_trials(feasible, study.directions)


def remeasure(study: optuna.Study, settings: StudySettings, runner: _Runner) -> None:
    """Re-measures the best few configurations once each (kept in the study's user attrs)."""
    k = settings.remeasure_top_k
    if k <= 0:
        return
    done: dict[str, list[float]] = dict(study.user_attrs.get("remeasurements") or {})
    top = best_trials(study)[:k]
    for t in top:
        if str(t.number) in done:
            continue
        cfg = ServeConfig.from_dict(t.user_attrs["config"]).replace(model=settings.model)
        if runner.resource_problem(cfg):
            continue  # measured on a bigger worker than this machine
        run_dir = settings.study_dir / "remeasure" / str(t.number)
        runner.progress.line(count_done(study), t.number, "re-measure", "launching", 0)
        # The same resources as the trials had (one lease of the pool when they were packed).
        gpus, cores, lease = runner.lease(cfg)
        extra: dict[str, Any] = {"cpu_cores": cores} if cores is not None else {}
        try:
            rec = runner.trial_fn(cfg, settings.workload, run_dir, gpus=gpus, duration_s=settings.duration_s,
                                  cache_dir=runner.cache_dir, **extra)
        finally:
            runner.release(lease)
        if rec.result is None:
            continue
        values = [o.value(rec.result) for o in settings.objectives]
        done[str(t.number)] = [float(t.values[0]), values[0]]
        study.set_user_attr("remeasurements", done)


def export_best(study: optuna.Study, settings: StudySettings, pick: str | None = None) -> list[str]:
    """Writes ``configs/<name>.yaml``, ``.flags`` and ``.env`` for the best trial."""
    trial = pick_trial(study, settings, pick)
    if trial is None:
        return []
    cfg = ServeConfig.from_dict(trial.user_attrs["config"])
    settings.configs_dir.mkdir(parents=True, exist_ok=True)
    stem = settings.configs_dir / settings.name
    yaml_cfg = cfg.replace(env={})
    header = (f"# vtune study {settings.name}, trial {trial.number}: "
              f"{objective_summary(settings.objectives, trial.values)}\n"
              f"# workload {settings.workload.name}; {settings.target.describe()}\n")
    if cfg.env:
        header += f"# environment: see {stem.name}.env ({' '.join(f'{k}={v}' for k, v in cfg.env.items())})\n"
    paths = [stem.with_suffix(".yaml"), stem.with_suffix(".flags"), stem.with_suffix(".env")]
    paths[0].write_text(header + yaml_cfg.to_yaml())
    paths[1].write_text(cfg.to_flags_line() + "\n")
    paths[2].write_text("".join(f"{k}={v}\n" for k, v in sorted(cfg.env.items())))
    return [str(p) for p in paths]


def pick_trial(study: optuna.Study, settings: StudySettings, pick: str | None = None) -> FrozenTrial | None:
    """The best trial; with ``pick`` (e.g. ``ttft_p99<500``), the best of the front meeting it.

    The first objective ranks the candidates; ``pick`` filters them by another
    objective's bound.

    Raises:
        VtuneError: A malformed ``--pick`` or no trial meeting it.
    """
    import re

    front = best_trials(study)
    if not front:
        return None
    if not pick:
        return front[0] if len(study.directions) == 1 else _rank_front(front, settings)[0]
    m = re.match(r"^\s*([a-z0-9_]+)\s*(<=|<|>=|>)\s*([0-9.]+)\s*$", pick)
    names = [o.name for o in settings.objectives]
    if not m or m.group(1) not in names:
        raise VtuneError(f"--pick {pick}: write OBJECTIVE<VALUE with an objective of the study ({', '.join(names)})")
    idx, op, bound = names.index(m.group(1)), m.group(2), float(m.group(3))
    ok = {"<": lambda v: v < bound, "<=": lambda v: v <= bound, ">": lambda v: v > bound,
          ">=": lambda v: v >= bound}[op]
    chosen = [t for t in _rank_front(front, settings) if ok(float(t.values[idx]))]
    if not chosen:
        raise VtuneError(f"--pick {pick}: no trial on the Pareto front meets it")
    return chosen[0]


def _rank_front(front: list[FrozenTrial], settings: StudySettings) -> list[FrozenTrial]:
    first = settings.objectives[0]
    return sorted(front, key=lambda t: -float(t.values[0]) if first.maximize else float(t.values[0]))


def summarize(study: optuna.Study, settings: StudySettings, url: str, exported: list[str],
              recovered: list[int]) -> StudySummary:
    """Counts of what the study did."""
    trials = study.get_trials(deepcopy=False)
    pruned_before = [t for t in trials if t.user_attrs.get("pruned_by") in ("memory_model", "invalid_config")]
    early = [t for t in trials if t.user_attrs.get("pruned_by") == "early_stopping"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    launches = [t for t in trials if t.user_attrs.get("run_dir")]
    best = pick_trial(study, settings)
    return StudySummary(
        name=settings.name, storage=url,
        finished_trials=count_done(study), launches=len(launches), pruned_before_launch=len(pruned_before),
        stopped_early=len(early), failed=len(failed),
        gpu_seconds_saved=sum(float(t.user_attrs.get("gpu_seconds_saved", 0.0)) for t in early),
        best_trial=best.number if best else None,
        best_values=mean_values(config_measurements(trials, best)) if best else None,
        best_flags=best.user_attrs.get("flags") if best else None, exported=exported, recovered=recovered,
    )


def json_safe(obj: Any) -> Any:
    """``obj`` with infinities and NaN as None (JSON has neither), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dump_json(obj: Any) -> str:
    """JSON text with non-finite floats as null."""
    return json.dumps(json_safe(obj), indent=2, default=str)
