"""Capacity studies: where each trial's search starts and ends, what an early stop saves, the target rate.

A study whose objectives include ``capacity`` or ``capacity_per_gpu``
(:func:`vtune._objectives.measures_capacity`) measures every trial with the capacity
search (:mod:`vtune.loads._capacity`) instead of the workload's fixed load. Every
launched trial keeps its whole search (user attribute ``capacity``, probes included)
and ``num_gpus`` (TP x PP x DP, CPU-engine ranks on the CPU engine).

**Where a search starts and ends** (:func:`search_bounds`). A trial starts where the
study already knows the answer lies: at the capacity in streams of the best
configuration so far (the mean over its measurements; for ``capacity_per_gpu`` the
best per-GPU streams times this configuration's GPUs), else at the workload's streams
(``--concurrency``), else 4. Two bounds of the configuration clamp it: its batch
``max-num-seqs x DP`` (more streams only queue) and its KV bound, the memory model's
KV cache tokens over the workload's mean request (prompt + output tokens) x DP. The
search goes at most to ``min(2 x max-num-seqs x DP, 2 x KV bound, 1024)`` streams:
twice the batch lets a queue within the TTFT objective count, while a capacity that
hits the cap is recorded as a lower bound (``bounded_by`` ``max_streams``). Bisection
stops at 10% on a GPU and 25% on the CPU engine, whose run-to-run noise (a log-sd of
0.34 on a shared 2-core machine) dwarfs 10% anyway.

**Early stop** (:meth:`vtune.study._pruner.NoiseAwarePruner.prune_capacity`): at the
first probe that fails below the best capacity less the noise allowance. Such a
probe bounds this configuration's capacity below the best, so the search ends
there; the trial is PRUNED (``pruned_by: early_stopping``) with its probes kept.
:func:`gpu_seconds_saved` estimates what the stop saved: the probes a search of this
study usually runs (the median over its finished searches, else 5) less those run,
times the mean wall seconds of this trial's probes, times its GPUs.

**Target rate** (``--target-rate R``, study user attribute ``target_rate_rps``): for
each configuration, ``ceil(R / mean capacity)`` servers of it serve R within the
SLOs (:func:`~vtune.loads._capacity.replicas_for_rate`), each using its GPUs. The
study then prefers the configuration that needs the fewest GPUs, ties broken by the
highest capacity per GPU; a configuration whose capacity is 0 cannot serve R and
ranks last (:func:`target_rate_order`, the selection rule of
:func:`~vtune.study._selection.best_configurations` in a single-objective capacity
study with a target rate).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune.loads._capacity import DEFAULT_MAX_STREAMS, DEFAULT_START_STREAMS, CapacityResult

if TYPE_CHECKING:
    import optuna

    from vtune._memory import MemoryEstimate
    from vtune._serve_config import ServeConfig
    from vtune._trial import CapacityOptions
    from vtune.study._selection import Configuration
    from vtune.study._settings import StudySettings

__all__ = [
    "CPU_TOLERANCE", "GPU_TOLERANCE", "PROBES_GUESS", "best_capacity_streams", "capacity_objective",
    "capacity_options", "gpu_seconds_saved", "mean_capacity", "rate_answer", "search_bounds", "study_target_rate",
    "target_rate_order", "trial_capacity", "trial_gpus",
]

#: Relative bracket width at which a study's bisection stops, on a GPU and on the CPU engine.
GPU_TOLERANCE = 0.1
CPU_TOLERANCE = 0.25
#: Probes a search is assumed to take before the study has finished any (for :func:`gpu_seconds_saved`).
PROBES_GUESS = 5


def trial_capacity(trial: FrozenTrial) -> CapacityResult | None:
    """The capacity result a trial recorded (None: none, or unreadable)."""
    data = trial.user_attrs.get("capacity")
    if not isinstance(data, dict):
        return None
    try:
        return CapacityResult.from_dict(data)
    except VtuneError:
        return None


def trial_gpus(trial: FrozenTrial) -> int:
    """GPUs (CPU-engine ranks) one server of the trial's configuration uses: ``num_gpus``, else TP x PP x DP."""
    n = trial.user_attrs.get("num_gpus")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return n
    c = trial.user_attrs.get("config") or {}
    return max(1, int(c.get("tensor_parallel_size") or 1) * int(c.get("pipeline_parallel_size") or 1)
               * int(c.get("data_parallel_size") or 1))


def capacity_objective(names: Sequence[str]) -> tuple[int, str] | None:
    """Index and name of the first capacity objective among ``names`` (None: a fixed-load study)."""
    for i, name in enumerate(names):
        if name in ("capacity", "capacity_per_gpu"):
            return i, name
    return None


def _study_objectives(study: optuna.Study) -> list[str]:
    return list((study.user_attrs.get("vtune") or {}).get("objectives") or [])


def mean_capacity(trials: Sequence[FrozenTrial]) -> CapacityResult | None:
    """A configuration's capacity as the mean over its measurements (latest result, mean rates and streams).

    None when none of ``trials`` recorded a capacity.
    """
    results = [r for t in trials if (r := trial_capacity(t)) is not None]
    if not results:
        return None
    n = len(results)
    return dataclasses.replace(
        # Rounded up: half a stream of mean capacity still serves (round() would make 0.5 streams 0).
        results[-1], capacity_streams=math.ceil(sum(r.capacity_streams for r in results) / n),
        requests_per_second=sum(r.requests_per_second for r in results) / n,
        output_tokens_per_second=sum(r.output_tokens_per_second for r in results) / n,
        goodput_requests_per_second=sum(r.goodput_requests_per_second for r in results) / n)


def best_capacity_value(study: optuna.Study) -> float | None:
    """The best configuration's mean capacity objective so far (requests/s, per GPU for ``capacity_per_gpu``).

    None when no configuration has measured a capacity, or the best is 0.
    """
    from vtune.study._selection import configurations

    found = capacity_objective(_study_objectives(study))
    if found is None:
        return None
    confs = configurations(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    values = [float(c.values[found[0]]) for c in confs if any(trial_capacity(t) is not None for t in c.trials)]
    return max(values) if values and max(values) > 0 else None


def best_capacity_streams(study: optuna.Study, *, per_gpu: bool = False) -> float | None:
    """Mean capacity in streams of the best configuration so far by its capacity objective (None: none yet).

    With ``per_gpu`` (and for a ``capacity_per_gpu`` study), the best per-GPU streams.
    A best capacity of 0 streams counts as none.
    """
    from vtune.study._selection import configurations

    found = capacity_objective(_study_objectives(study))
    if found is None:
        return None
    idx, name = found
    confs = configurations(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    confs = [c for c in confs if any(trial_capacity(t) is not None for t in c.trials)]
    if not confs:
        return None
    best = max(confs, key=lambda c: float(c.values[idx]))
    results = [r for t in best.trials if (r := trial_capacity(t)) is not None]
    streams = sum(r.capacity_streams for r in results) / len(results)
    if streams <= 0:
        return None
    return streams / trial_gpus(best.trial) if (per_gpu or name == "capacity_per_gpu") else streams


def search_bounds(cfg: ServeConfig, known_streams: float | None, fallback_streams: int | None,
                  estimate: MemoryEstimate | None, request_tokens: float) -> tuple[int, int]:
    """``(start_streams, max_streams)`` of one configuration's search (module docstring).

    Args:
        cfg: The configuration.
        known_streams: Where the study expects the answer (the best capacity so far, scaled
            to this configuration), or None.
        fallback_streams: The workload's streams (None: :data:`DEFAULT_START_STREAMS`).
        estimate: The memory model's estimate for ``cfg`` (None: no KV bound).
        request_tokens: The workload's mean request, prompt plus output tokens.
    """
    dp = max(1, cfg.dp)
    seqs = estimate.max_num_seqs if estimate is not None and estimate.max_num_seqs else cfg.max_num_seqs
    bounds = []
    if seqs:
        bounds.append(int(seqs) * dp)
    if estimate is not None and estimate.kv_cache_tokens > 0 and request_tokens > 0:
        bounds.append(max(1, int(estimate.kv_cache_tokens // request_tokens)) * dp)
    start = round(known_streams) if known_streams else (fallback_streams or DEFAULT_START_STREAMS)
    start = max(1, min([start, *bounds]))
    most = max(start, min([2 * b for b in bounds] + [DEFAULT_MAX_STREAMS]))
    return start, most


def capacity_options(study: optuna.Study, settings: StudySettings, cfg: ServeConfig,
                     estimate: MemoryEstimate | None,
                     on_probe: Callable[[Any], bool] | None = None) -> CapacityOptions:
    """The capacity search of one trial of ``cfg``: bounds from the study's knowledge, the study's probe seconds.

    ``--duration-s`` (``settings.duration_s``) is each probe's measured seconds; else the
    workload's step seconds.
    """
    from vtune._trial import CapacityOptions

    found = capacity_objective([o.name for o in settings.objectives])
    per_gpu = found is not None and found[1] == "capacity_per_gpu"
    known = best_capacity_streams(study, per_gpu=per_gpu)
    if known is not None and per_gpu:
        known *= cfg.num_gpus
    wl = settings.workload
    start, most = search_bounds(cfg, known, wl.load.streams, estimate,
                                wl.prompt_tokens.mean + wl.output_tokens.mean)
    tolerance = CPU_TOLERANCE if settings.target.device == "cpu" else GPU_TOLERANCE
    return CapacityOptions(start_streams=start, max_streams=most, probe_s=settings.duration_s,
                           tolerance=tolerance, on_probe=on_probe)


def gpu_seconds_saved(study: optuna.Study, cap: CapacityResult, num_gpus: int) -> float:
    """GPU-seconds an early stop saved (estimate, module docstring): probes not run x probe seconds x GPUs."""
    runs = sorted(len(r.probes) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if (r := trial_capacity(t)) is not None and r.bounded_by != "stopped")
    usual = runs[len(runs) // 2] if runs else PROBES_GUESS
    left = max(1, usual - len(cap.probes))
    per_probe = [p.wall_s or (p.seconds + cap.warmup_s) for p in cap.probes]
    probe_s = sum(per_probe) / len(per_probe) if per_probe else cap.probe_s + cap.warmup_s
    return left * probe_s * max(1, num_gpus)


def study_target_rate(study: optuna.Study) -> float | None:
    """The study's ``target_rate_rps`` user attribute (None: absent or not a number)."""
    rate = study.user_attrs.get("target_rate_rps")
    if isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate) and rate > 0:
        return float(rate)
    return None


def rate_answer(conf: Configuration, rate_rps: float) -> tuple[int, int] | None:
    """(servers, GPUs) of ``conf`` for ``rate_rps`` requests/s by its mean capacity (None: capacity 0 or none)."""
    from vtune.loads._capacity import gpus_for_rate, replicas_for_rate

    mean = mean_capacity(conf.trials)
    if mean is None:
        return None
    gpus = trial_gpus(conf.trial)
    try:
        return replicas_for_rate(mean, rate_rps), gpus_for_rate(mean, rate_rps, gpus)
    except VtuneError:
        return None


def target_rate_order(confs: list[Configuration], rate_rps: float) -> list[Configuration]:
    """``confs`` by the GPUs they need for ``rate_rps`` (fewest first), ties by capacity per GPU (highest first).

    Configurations that cannot serve it (capacity 0) come last, in their given order.
    """
    def key(item: tuple[int, Configuration]) -> tuple[float, float, int]:
        i, conf = item
        answer = rate_answer(conf, rate_rps)
        mean = mean_capacity(conf.trials)
        per_gpu = mean.requests_per_second / trial_gpus(conf.trial) if mean is not None else 0.0
        return (math.inf if answer is None else answer[1], -per_gpu, i)

    return [c for _, c in sorted(enumerate(confs), key=key)]
