"""The runner: the objective function of the study (one call = one trial).

Each trial: sample -> pre-launch checks (PRUNED at zero launches) -> lease of GPUs/cores ->
real engine and load in steps, each step reported to the pruner -> result, SLO constraints,
artifacts under ``studies/<name>/trials/<n>/``; every real start calibrates the memory model.

In a capacity study (:func:`vtune._objectives.measures_capacity`) the load is the
capacity search instead (:mod:`vtune.study._capacity`: its start and cap from what the
study knows); each probe goes to the pruner's ``prune_capacity``, the whole search is
kept as the trial's ``capacity`` user attribute, and no SLO constraint is set.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import optuna
from optuna.trial import TrialState

from vtune._checks import first_error, precheck
from vtune._errors import VtuneError
from vtune._memory import Calibration, estimate_memory
from vtune._model_shape import ModelShape
from vtune._objectives import Objective, measures_capacity, objective_summary, objective_values, slo_constraints
from vtune._serve_config import ServeConfig
from vtune._space import layout_name, param_value
from vtune._trial import CapacityOptions, TrialRecord, run_trial
from vtune.study._baselines import suggest_baseline
from vtune.study._budget import BUDGET_STATES, LOAD_FAILURES, counts_toward_budget
from vtune.study._capacity import capacity_options, gpu_seconds_saved
from vtune.study._packing import LeaseAborted
from vtune.study._settings import StudySettings
from vtune.study._signals import StopSignals
from vtune.study._storage import _worker_id

__all__ = [
    "GPU_MEMORY_TOLERANCE_MIB", "GPU_MEMORY_WAIT_S", "GpuMemoryNotBack", "REUSE_AFTER",
    "TrialFailed", "count_done", "count_started", "elapsed_s",
]


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
    """The objective function of the study (one call = one trial).

    Args:
        settings: The study's settings.
        shape: The model's shape (for the memory model).
        study: The study.
        progress: Where the progress lines go.
        gpu_allocator: A :class:`~vtune.study._packing.ResourcePool` leasing GPUs/cores to
            each trial, or None (one trial at a time, no leases).
        trial_fn: How a trial is measured.
        cores_per_rank: CPU cores each engine rank gets on the CPU engine.
        pin: Pin each CPU-engine trial to its leased cores (trials packed at once). Without
            pinning a CPU-engine trial leases every core of the pool and runs unpinned.
        stop: The study's stop signals (default: none installed; a KeyboardInterrupt out of
            a trial still stops the study).
    """

    def __init__(self, settings: StudySettings, shape: ModelShape, study: optuna.Study, progress: _Progress,
                 gpu_allocator: Any = None, trial_fn: TrialFn = run_trial, cores_per_rank: int = 1, *,
                 pin: bool = True, stop: StopSignals | None = None) -> None:
        self.s = settings
        self.shape = shape
        self.study = study
        self.progress = progress
        self.alloc = gpu_allocator  # a ResourcePool, or None: one trial at a time without leases
        self.trial_fn = trial_fn
        self.cores_per_rank = max(1, cores_per_rank)
        self.pin = pin
        self.cache_dir = settings.study_dir / "cache"
        self._lock = threading.Lock()
        self.stop = stop or StopSignals()
        #: Set on a stop signal (or a KeyboardInterrupt out of a trial): no new engine starts,
        #: failures read "interrupted".
        self.interrupted = self.stop.event
        #: Trials this runner recorded as interrupted.
        self.interrupted_trials: list[int] = []
        #: Load-tool failures (:data:`LOAD_FAILURES`) in a row here, and the last one.
        self.load_failures_in_a_row = 0
        self.last_load_failure: tuple[int, str] | None = None
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

        With a pool the lease holds across processes (machine-wide lock files, unless the
        pool was made without them). A GPU trial leases its TP x PP x DP GPUs; a CPU trial
        its cores (pinned), or without pinning every core of the pool (``cpu_cores`` is then
        None: the engine runs unpinned on the whole machine, alone). Without a pool a GPU
        trial takes the first GPUs and a CPU trial the whole machine; ``lease`` is then None.

        Args:
            cfg: The configuration.
            on_wait: Called once before blocking, when the units are not free now.

        Raises:
            LeaseAborted: The study stopped while the trial waited.
        """
        n = self.units_needed(cfg)
        if self.alloc is None:
            gpus = list(self.s.target.gpus[:n]) if self.s.target.device == "gpu" else None
            return gpus, None, None
        gpu = self.s.target.device == "gpu"
        want = n if gpu or self.pin else self.alloc.size
        try:
            units = self.alloc.acquire(want, timeout_s=0)
        except TimeoutError:
            if on_wait is not None:
                on_wait()
            units = self.alloc.acquire(want, abort=self.interrupted)
        if gpu:
            return list(units), None, units
        return None, (list(units) if self.pin else None), units

    def release(self, lease: list[int] | None) -> None:
        """Gives a lease back (no-op for None)."""
        if lease is not None and self.alloc is not None:
            self.alloc.release(lease)

    def capacity_options(self, cfg: ServeConfig, estimate: Any = None,
                         on_probe: Any = None) -> CapacityOptions | None:
        """The capacity search of a trial of ``cfg`` (None: the study measures the fixed load).

        Args:
            cfg: The configuration.
            estimate: The memory model's estimate for it (None: made here, calibrated).
            on_probe: Called with each probe; False stops the search.
        """
        if not measures_capacity(self.s.objectives):
            return None
        if estimate is None:
            estimate = estimate_memory(self.shape, cfg, self.s.target.gpu, device=self.s.target.device,
                                       calibration=self.calibration(), num_gpus=self.s.target.num_gpus or None)
        return capacity_options(self.study, self.s, cfg, estimate, on_probe=on_probe)

    def values_of(self, rec: TrialRecord, cfg: ServeConfig) -> list[float]:
        """The objective values of one measured record (capacity objectives from ``rec.capacity``).

        Raises:
            TrialFailed: A capacity study's trial function measured no capacity.
        """
        if measures_capacity(self.s.objectives) and rec.capacity is None:
            raise TrialFailed("the trial function measured no capacity (a capacity study needs "
                              "TrialRecord.capacity); pass --objectives goodput for a fixed-load measurement")
        return objective_values(self.s.objectives, rec.result, rec.capacity, cfg.num_gpus)

    def _waiting_for(self) -> str:
        """The progress phase of a trial waiting for its units (naming other processes that hold them)."""
        what = "GPUs" if self.s.target.device == "gpu" else "CPU cores"
        holders = self.alloc.held_elsewhere() if self.alloc is not None else {}
        pids = sorted({p for p in holders.values() if p is not None and p != os.getpid()})
        if holders and pids:
            return f"waiting for free {what} ({len(holders)} held by vtune pid {', '.join(map(str, pids))})"
        return f"waiting for free {what}"

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
        if self.interrupted.is_set():  # claimed while the study was stopping: record it, start nothing
            self._interrupted(trial, None, "before it started", trial.user_attrs.get("baseline") or "", 0.0)
        baseline = trial.user_attrs.get("baseline")
        if baseline and trial.user_attrs.get("baseline_config"):
            cfg = suggest_baseline(trial, s)  # its parameters are exactly what it runs with
        else:
            cfg = s.space.sample(trial, s.base)
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("flags", cfg.to_flags_line())
        trial.set_user_attr("num_gpus", cfg.num_gpus)
        what = baseline or " ".join(f"{k}={param_value(v)}" for k, v in trial.params.items())
        done = count_done(self.study)
        reused = self._reuse(trial, cfg)
        if reused is not None:
            self.progress.line(done + 1, trial.number, what, "reused: this configuration was measured "
                               f"{len(trial.user_attrs['reused_from'])} times already", 0)
            return reused
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
        # The pre-launch checks shared with `vtune validate` (vLLM's own config rules, the memory model).
        problem = first_error(precheck(cfg, shape=self.shape, gpu=s.target.gpu, device=s.target.device,
                                       num_gpus=s.target.num_gpus or None, estimate=est, calibration=cal,
                                       workload_max_len=s.workload.max_model_len_hint,
                                       strict_memory=s.strict_memory))
        if problem is not None:
            trial.set_user_attr("pruned_by", "memory_model" if problem.basis == "memory" else "invalid_config")
            trial.set_user_attr("reason_code", problem.code)
            trial.set_user_attr("reason", problem.message)
            self.progress.line(done, trial.number, what, f"pruned before launch ({problem.message})", 0)
            raise optuna.TrialPruned(problem.message)

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

        capacity_run = measures_capacity(s.objectives)
        stopped_at_probe: list[int] = []
        prune_capacity = getattr(self.study.pruner, "prune_capacity", None)

        def on_probe(probe: Any) -> bool:
            if not single or prune_capacity is None:
                return True
            if prune_capacity(self.study, trial, probe, num_gpus=cfg.num_gpus,
                              per_gpu=objective.name == "capacity_per_gpu"):
                stopped_at_probe.append(probe.index)
                return False
            return True

        def on_launch(server: Any) -> None:
            trial.set_user_attr("engine", {"pid": server.pid, "pgid": server.pgid, **_worker_id()})

        def on_phase(phase: str) -> None:
            if phase == "stopping":
                self.stop.hold()  # a signal during the teardown must not cut it short
            self.progress.line(done, trial.number, what, phase, time.monotonic() - t0)

        try:
            gpus, cores, lease = self.lease(cfg, on_wait=lambda: on_phase(self._waiting_for()))
        except LeaseAborted:
            self._interrupted(trial, None, "while it waited for free units", what, time.monotonic() - t0)
        trial.set_user_attr("gpus", gpus)
        trial.set_user_attr("cpu_cores", cores)
        trial.set_user_attr("lease", {"device": s.target.device, "units": lease, **_worker_id()}
                            if lease is not None else None)
        if self.interrupted.is_set():
            self.release(lease)
            self._interrupted(trial, None, "before its engine started", what, time.monotonic() - t0)
        extra: dict[str, Any] = {"cpu_cores": cores} if cores is not None else {}
        if capacity_run:
            extra["capacity"] = self.capacity_options(cfg, est, on_probe=on_probe)
        rec: TrialRecord | None = None
        try:
            with self.stop.raising():  # in the main thread a stop signal interrupts the measurement itself
                rec = self.trial_fn(cfg, s.workload, run_dir, gpus=gpus, duration_s=s.duration_s,
                                    cache_dir=self.cache_dir, on_step=on_step, on_phase=on_phase,
                                    on_launch=on_launch, **extra)
            if gpus and rec.teardown.get("gpu_memory_back") is False and not self.interrupted.is_set():
                self._wait_for_gpu_memory(trial, rec, gpus, on_phase)
        except KeyboardInterrupt as exc:  # a stop signal in the main thread, or Ctrl-C inside a trial function
            self.stop.note(exc)
        except Exception as exc:
            if not isinstance(exc.__context__, KeyboardInterrupt):
                raise
            self.stop.note(exc.__context__)  # the trial function broke while recording its interruption
        finally:
            self.release(lease)
        if rec is None:
            rec = _saved_record(run_dir)  # what run_trial saved before re-raising, if it did
            if rec is not None:
                self._record(trial, rec, est)
            self._interrupted(trial, rec, "while it ran; its engine was stopped", what, time.monotonic() - t0)
        self._record(trial, rec, est)
        if self.interrupted.is_set() and rec.failure is not None:  # its engine or load was stopped for the signal
            self._interrupted(trial, rec, "while it ran; its engine was stopped", what, time.monotonic() - t0)
        if rec.startup is not None and s.target.device == "gpu":
            with self._lock:  # trials finishing at once in this process must not drop an observation
                self._save_calibration(self.calibration().observe(est, rec.startup.to_dict()))
        if rec.failure is not None:
            self._note_load_failure(trial.number, rec)
            self.progress.line(done + 1, trial.number, what, f"FAILED {rec.failure.kind}", time.monotonic() - t0)
            raise TrialFailed(f"{rec.failure.kind}: {rec.failure.message}")
        self.load_failures_in_a_row = 0
        if capacity_run:  # no SLO constraint: the capacity meets the SLOs by construction (vtune._objectives)
            values = self.values_of(rec, cfg)
            assert rec.capacity is not None
            if stopped_at_probe and rec.capacity.bounded_by == "stopped":
                probe = rec.capacity.probes[stopped_at_probe[0]]
                trial.set_user_attr("pruned_by", "early_stopping")
                trial.set_user_attr("gpu_seconds_saved", gpu_seconds_saved(
                    self.study, rec.capacity, cfg.num_gpus if gpus else 1))
                trial.set_user_attr("reason", f"stopped after probe {probe.index + 1}: it failed the SLOs at "
                                              f"{probe.streams} streams serving {probe.requests_per_second:.2f} "
                                              "req/s, below the best capacity so far less the noise allowance")
                self.progress.line(done + 1, trial.number, what, "stopped early", time.monotonic() - t0)
                raise optuna.TrialPruned(trial.user_attrs["reason"])
            summary = objective_summary(s.objectives, values)
            self.progress.line(done + 1, trial.number, what, f"done: {summary} at {rec.capacity.capacity_streams} "
                               f"streams ({len(rec.capacity.probes)} probes)", time.monotonic() - t0)
            return values[0] if single else values
        assert rec.result is not None
        for key, value in slo_constraints(rec.result, s.workload.slo).items():
            trial.set_constraint(key, value)
        values = self.values_of(rec, cfg)
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

    def _interrupted(self, trial: optuna.Trial, rec: TrialRecord | None, when: str, what: str,
                     elapsed: float) -> NoReturn:
        """Records the trial FAIL as interrupted (one classification, in the study and on the console)."""
        self.stop.note()
        signal_name = self.stop.signal_name or "SIGINT"
        trial.set_user_attr("failure", _interrupted_failure(when, rec.failure.to_dict() if rec and rec.failure
                                                            else None, signal_name))
        with self._lock:
            self.interrupted_trials.append(trial.number)
        self.progress.line(count_done(self.study), trial.number, what,
                           f"interrupted by {signal_name} {when}: recorded as failed, not counted", elapsed)
        raise TrialFailed(f"interrupted by {signal_name} {when}")

    def _note_load_failure(self, number: int, rec: TrialRecord) -> None:
        """Counts load-tool failures in a row (they do not spend the budget, so they must not loop forever)."""
        assert rec.failure is not None
        if rec.failure.kind in LOAD_FAILURES:
            self.load_failures_in_a_row += 1
            self.last_load_failure = (number, rec.failure.message)
        else:
            self.load_failures_in_a_row = 0

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
        from vtune.engines import wait_gpu_memory_back

        on_phase("waiting for GPU memory to come back")
        wait = wait_gpu_memory_back(rec.teardown.get("gpu_memory_before_mib") or {},
                                    tolerance_mib=GPU_MEMORY_TOLERANCE_MIB, timeout_s=GPU_MEMORY_WAIT_S, poll_s=2.0)
        excess, waited = wait.excess_mib, wait.waited_s
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
        if rec.capacity is not None:  # every probe, so that nothing is measured twice to draw a curve
            trial.set_user_attr("capacity", rec.capacity.to_dict())
        trial.set_user_attr("metrics", rec.metrics)
        trial.set_user_attr("teardown", {k: rec.teardown.get(k) for k in ("clean", "port_free", "leftover_pids",
                                                                           "gpu_memory_back", "stop_s")})
        trial.set_user_attr("timings", {"engine_start_s": rec.engine_start_s, "load_s": rec.load_s,
                                        "teardown_s": rec.teardown_s, "total_s": rec.total_s,
                                        "overhead_s": rec.overhead_s})
        if rec.startup is not None and rec.startup.kv_cache_tokens and est is not None and est.kv_cache_tokens:
            trial.set_user_attr("kv_tokens_error", est.kv_cache_tokens / rec.startup.kv_cache_tokens - 1)

def _interrupted_failure(when: str, engine: dict[str, Any] | None = None,
                         signal_name: str = "SIGINT") -> dict[str, Any]:
    """The ``failure`` user attribute of a trial stopped by a stop signal (as :func:`recover_stale_trials` writes).

    ``engine_failure`` keeps what the trial's engine or load reported when it was stopped.
    """
    how = "Ctrl-C, SIGINT" if signal_name == "SIGINT" else signal_name
    return {"kind": "interrupted", "message": f"the study was interrupted ({how}) {when}", "signal": signal_name,
            "log_line": (engine or {}).get("log_line"), "exit_code": (engine or {}).get("exit_code"),
            "engine_failure": engine}

def _saved_record(run_dir: Path) -> TrialRecord | None:
    """The trial's ``trial.json``, as :func:`vtune._trial.run_trial` saves it even when interrupted."""
    try:
        return TrialRecord.from_dict(json.loads((run_dir / "trial.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None

def count_done(study: optuna.Study) -> int:
    """Trials that spent ``--n-trials`` and finished (:func:`~vtune.study._budget.counts_toward_budget`)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                   TrialState.FAIL)) if counts_toward_budget(t))

def count_started(study: optuna.Study) -> int:
    """Trials that spent ``--n-trials``, finished or running: what a study's budget has handed out.

    Interrupted trials, those of lost workers and load-tool failures do not count
    (:data:`~vtune.study._budget.NOT_COUNTED_FAILURES`).
    """
    return sum(1 for t in study.get_trials(deepcopy=False, states=BUDGET_STATES) if counts_toward_budget(t))

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
