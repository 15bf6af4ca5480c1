"""What a study optimizes and the SLO constraints (the pruner lives in :mod:`vtune.study._pruner`).

Objective names (``--objectives``, comma-separated for a Pareto study):

* ``capacity`` (the default): requests/s served within the SLOs at the highest load
  that met them (:attr:`CapacityResult.requests_per_second
  <vtune.loads._capacity.CapacityResult>`; 0.0 when no load did), measured by the
  capacity search (maximize);
* ``capacity_per_gpu``: that divided by the GPUs (CPU-engine ranks) one server uses,
  TP x PP x DP (maximize): what answers TP vs DP vs more replicas;
* ``goodput``: requests/s meeting every per-request SLO at the workload's fixed load
  (``--concurrency`` sets it) (maximize);
* ``throughput``: output tokens/s (maximize);
* ``requests``: completed requests/s (maximize);
* ``<metric>_p<N>`` with metric ``ttft``, ``itl``, ``tpot`` or ``e2e`` and N in
  50/90/99, e.g. ``ttft_p99``: that latency percentile in ms (minimize).

A study with a capacity objective measures every trial by the capacity search;
its other objectives are read at capacity (the probe at capacity, e.g. ``ttft_p90``
is the TTFT at capacity). The fixed-load objectives measure the workload's load.

SLO violations of a fixed-load trial are Optuna constraints (``trial.set_constraint``),
one per SLO: ``observed / limit - 1`` at the SLO's percentile; a trial is feasible when
all are <= 0. They are not folded into the objective. A capacity trial sets none
(:func:`uses_constraints`): its capacity meets the SLOs by construction, and a
capacity of 0 (no load met them) is feasible but the worst value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vtune._errors import VtuneError
from vtune._workload import Slo
from vtune.loads._results import TrialResult

if TYPE_CHECKING:
    from vtune.loads._capacity import CapacityResult

__all__ = [
    "CAPACITY_OBJECTIVES", "DEFAULT_OBJECTIVES", "Objective", "measures_capacity", "objective_summary",
    "objective_values", "parse_objectives", "slo_constraints", "uses_constraints",
]

#: Objectives measured by the capacity search.
CAPACITY_OBJECTIVES = ("capacity", "capacity_per_gpu")
#: ``--objectives`` when none is given.
DEFAULT_OBJECTIVES = "capacity"

_LATENCY = re.compile(r"^(ttft|itl|tpot|e2e)_p(50|90|99)$")
_LATENCY_FIELD = {"ttft": "ttft_ms", "itl": "itl_ms", "tpot": "tpot_ms", "e2e": "e2e_latency_ms"}


@dataclass(frozen=True)
class Objective:
    """One optimization target.

    Attributes:
        name: As given on the command line.
        direction: ``maximize`` or ``minimize``.
        unit: For display.
    """

    name: str
    direction: str
    unit: str

    @property
    def is_capacity(self) -> bool:
        """Whether the capacity search measures it."""
        return self.name in CAPACITY_OBJECTIVES

    def value(self, result: TrialResult | None, capacity: CapacityResult | None = None, num_gpus: int = 1) -> float:
        """The objective's value (NaN-free).

        Args:
            result: The trial's result (for a capacity trial: the probe at capacity).
            capacity: The capacity search's result (needed by the capacity objectives).
            num_gpus: GPUs one server uses (for ``capacity_per_gpu``).

        Raises:
            ValueError: A capacity objective without a capacity result, or another
                objective without a result.
        """
        if self.is_capacity:
            if capacity is None:
                raise ValueError(f"objective {self.name} needs a capacity result")
            rps = float(capacity.requests_per_second) if capacity.capacity_streams > 0 else 0.0
            return rps / max(1, num_gpus) if self.name == "capacity_per_gpu" else rps
        if result is None:
            raise ValueError(f"objective {self.name} needs a measured result")
        if self.name == "goodput":
            return float(result.goodput_requests_per_second)
        if self.name == "throughput":
            return float(result.output_tokens_per_second)
        if self.name == "requests":
            return float(result.requests_per_second)
        m = _LATENCY.match(self.name)
        assert m is not None
        pct = getattr(result, _LATENCY_FIELD[m.group(1)])
        v = getattr(pct, "p" + m.group(2))
        return float(v) if v is not None and math.isfinite(v) else 1e12

    @property
    def maximize(self) -> bool:
        """Whether higher is better."""
        return self.direction == "maximize"


def parse_objectives(text: str | None) -> list[Objective]:
    """Parses ``--objectives``.

    Raises:
        VtuneError: An unknown name.
    """
    names = [n.strip() for n in (text or DEFAULT_OBJECTIVES).split(",") if n.strip()]
    out = []
    for name in names:
        if name == "capacity":
            out.append(Objective(name, "maximize", "req/s"))
        elif name == "capacity_per_gpu":
            out.append(Objective(name, "maximize", "req/s per GPU"))
        elif name == "goodput":
            out.append(Objective(name, "maximize", "req/s"))
        elif name == "throughput":
            out.append(Objective(name, "maximize", "tok/s"))
        elif name == "requests":
            out.append(Objective(name, "maximize", "req/s"))
        elif _LATENCY.match(name):
            out.append(Objective(name, "minimize", "ms"))
        else:
            raise VtuneError(
                f"--objectives {text}: unknown objective {name!r}; use capacity, capacity_per_gpu, goodput, "
                "throughput, requests or a latency percentile like ttft_p99, itl_p90, e2e_p50"
            )
    if len({o.name for o in out}) != len(out):
        raise VtuneError(f"--objectives {text}: an objective is listed twice")
    return out


def measures_capacity(objectives: list[Objective]) -> bool:
    """Whether a study of ``objectives`` measures its trials by the capacity search."""
    return any(o.is_capacity for o in objectives)


def uses_constraints(objectives: list[Objective]) -> bool:
    """Whether a study's trials carry SLO constraints (fixed-load studies only; see the module docstring)."""
    return not measures_capacity(objectives)


def objective_values(objectives: list[Objective], result: TrialResult | None,
                     capacity: CapacityResult | None = None, num_gpus: int = 1) -> list[float]:
    """Every objective's value for one measurement (:meth:`Objective.value`)."""
    return [o.value(result, capacity, num_gpus) for o in objectives]


def slo_constraints(result: TrialResult, slo: Slo) -> dict[str, float]:
    """``observed / limit - 1`` per SLO at its percentile (<= 0 is met)."""
    out = {}
    for key, target in slo.items():
        observed = result.slo_observed_ms.get(key)
        if observed is None or not math.isfinite(observed):
            out[key] = 1.0  # nothing measured: treat as violated
        else:
            out[key] = observed / target.max_ms - 1.0
    return out


def objective_summary(objectives: list[Objective], values: Any) -> str:
    """``goodput 5.20 req/s`` style text."""
    vals = list(values) if isinstance(values, list | tuple) else [values]
    return ", ".join(f"{o.name} {v:.2f} {o.unit}" for o, v in zip(objectives, vals, strict=False))


