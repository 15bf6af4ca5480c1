"""What a study optimizes and the SLO constraints (the pruner lives in :mod:`vtune.study._pruner`).

Objective names (``--objectives``, comma-separated for a Pareto study):

* ``goodput``: requests/s meeting every per-request SLO (maximize; the default);
* ``throughput``: output tokens/s (maximize);
* ``requests``: completed requests/s (maximize);
* ``<metric>_p<N>`` with metric ``ttft``, ``itl``, ``tpot`` or ``e2e`` and N in
  50/90/99, e.g. ``ttft_p99``: that latency percentile in ms (minimize).

SLO violations are Optuna constraints (``trial.set_constraint``), one per SLO:
``observed / limit - 1`` at the SLO's percentile; a trial is feasible when all
are <= 0. They are not folded into the objective.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from vtune._errors import VtuneError
from vtune._workload import Slo
from vtune.loads._results import TrialResult

__all__ = ["Objective", "objective_summary", "parse_objectives", "slo_constraints"]

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

    def value(self, result: TrialResult) -> float:
        """The objective's value from a measured result (NaN-free)."""
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
    names = [n.strip() for n in (text or "goodput").split(",") if n.strip()]
    out = []
    for name in names:
        if name == "goodput":
            out.append(Objective(name, "maximize", "req/s"))
        elif name == "throughput":
            out.append(Objective(name, "maximize", "tok/s"))
        elif name == "requests":
            out.append(Objective(name, "maximize", "req/s"))
        elif _LATENCY.match(name):
            out.append(Objective(name, "minimize", "ms"))
        else:
            raise VtuneError(
                f"--objectives {text}: unknown objective {name!r}; use goodput, throughput, requests or a latency "
                "percentile like ttft_p99, itl_p90, e2e_p50"
            )
    if len({o.name for o in out}) != len(out):
        raise VtuneError(f"--objectives {text}: an objective is listed twice")
    return out


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


