"""The trial budget: which trials spend ``--n-trials``, and baselines that must run again.

A trial spends the budget when its result (or its failure) says something about its
configuration: COMPLETE, PRUNED (before launch or stopped early) and FAIL for an engine
that crashed, ran out of memory, rejected a flag... A FAIL that says nothing about the
configuration does not: the study was interrupted (Ctrl-C, SIGTERM, a killed vtune
process), the worker that ran it was lost, or the load tool failed. Those trials stay
in the study (FAIL, with ``failure.kind`` saying why) and the budget hands out another
trial instead, so a resumed study still measures everything it planned to (the
memory model's guess, vLLM's defaults...).

A RUNNING trial spends the budget while it runs (it is likely to finish). WAITING
(enqueued, not yet claimed) trials do not.

A baseline whose trial did not count is enqueued again, with the same ``baseline``
user attribute, by :func:`requeue_baselines` (called on resume and after each trial).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "LOAD_FAILURES", "MAX_LOAD_FAILURES_IN_A_ROW", "NOT_COUNTED_FAILURES", "BudgetSpent", "counts_toward_budget",
    "requeue_baselines",
]

#: ``failure.kind`` of a trial whose load tool (GuideLLM) failed, not its engine.
LOAD_FAILURES = frozenset({"load_error", "load_stalled"})

#: ``failure.kind`` of FAIL trials that do not spend ``--n-trials``: nothing was learnt about the config.
NOT_COUNTED_FAILURES = frozenset({"interrupted", "worker_lost"}) | LOAD_FAILURES

#: Load-tool failures in a row after which a process stops its study (they do not spend the
#: budget, so a broken load tool would otherwise retry forever).
MAX_LOAD_FAILURES_IN_A_ROW = 3

#: The trial states that can spend the budget (a FAIL only with a failure kind not listed above).
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


class BudgetSpent(Exception):
    """Raised by the storage instead of claiming or creating a trial once the study's budget is handed out."""


def failure_kind(trial: FrozenTrial) -> str | None:
    """The trial's ``failure.kind`` user attribute (None without one)."""
    failure = trial.user_attrs.get("failure")
    return failure.get("kind") if isinstance(failure, dict) else None


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether ``trial`` spends ``--n-trials``: finished or running, except failures not caused by its config.

    A FAIL without a recorded failure counts (the safe side: a study cannot loop forever on it).
    """
    if trial.user_attrs.get("remeasure_of") is not None:
        return False  # an end-of-study re-measurement (vtune.study._remeasure), beyond --n-trials
    if trial.state == TrialState.FAIL:
        return failure_kind(trial) not in NOT_COUNTED_FAILURES
    return trial.state in BUDGET_STATES


def requeue_baselines(study: optuna.Study) -> list[str]:
    """Enqueues again every baseline none of whose trials counted, nor waits or runs; returns their names.

    Stateless (it looks at the trials), so calling it twice, or from two processes under the
    storage's claim lock, enqueues each baseline once. The new trial has the same parameters
    and ``baseline``/``baseline_config`` user attributes, plus ``requeued_from`` (the number of
    the trial that did not count).
    """
    by_name: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("baseline")
        if name:
            by_name.setdefault(str(name), []).append(t)
    requeued = []
    for name, trials in by_name.items():
        settled = any(t.state in (TrialState.WAITING, TrialState.RUNNING) or counts_toward_budget(t) for t in trials)
        if settled:
            continue
        last = max(trials, key=lambda t: t.number)
        params: dict[str, Any] = dict(last.system_attrs.get("fixed_params") or last.params)
        attrs: dict[str, Any] = {k: last.user_attrs[k] for k in ("baseline", "baseline_config")
                                 if k in last.user_attrs}
        attrs["requeued_from"] = last.number
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        requeued.append(name)
    return requeued
