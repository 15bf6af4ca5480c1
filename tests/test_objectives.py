"""Objectives: capacity as the default, its values, constraints only at a fixed load."""

from __future__ import annotations

import dataclasses

import pytest

from tests.capacity_fakes import fake_search
from vtune._errors import VtuneError
from vtune._objectives import (
    DEFAULT_OBJECTIVES,
    measures_capacity,
    objective_values,
    parse_objectives,
    uses_constraints,
)
from vtune._trial import CapacityOptions


def test_capacity_is_the_default_and_maximized() -> None:
    (obj,) = parse_objectives(None)
    assert DEFAULT_OBJECTIVES == "capacity" and obj.name == "capacity" and obj.maximize and obj.is_capacity
    (per,) = parse_objectives("capacity_per_gpu")
    assert per.maximize and per.is_capacity and per.unit == "req/s per GPU"
    assert measures_capacity(parse_objectives("capacity,ttft_p90")) and not uses_constraints(parse_objectives(None))
    assert not measures_capacity(parse_objectives("goodput")) and uses_constraints(parse_objectives("goodput"))
    with pytest.raises(VtuneError, match="use capacity, capacity_per_gpu, goodput"):
        parse_objectives("capacityy")


def test_capacity_values_and_latency_at_capacity() -> None:
    cap = fake_search(12, CapacityOptions(start_streams=4, max_streams=64))  # 0.5 req/s per stream
    objs = parse_objectives("capacity,capacity_per_gpu,ttft_p90,goodput")
    values = objective_values(objs, cap.to_trial_result(), cap, num_gpus=4)
    assert values[:2] == [6.0, 1.5]
    assert values[2] == cap.ttft_ms.p90  # the latency at capacity
    assert values[3] == cap.goodput_requests_per_second


def test_capacity_zero_is_worst_not_the_lightest_probe() -> None:
    cap = fake_search(0, CapacityOptions(start_streams=4, max_streams=64))
    assert cap.capacity_streams == 0 and cap.probes  # 4, 2, 1 all failed
    assert cap.to_trial_result() is not None  # the trial's result: the lightest probe, 0.5 req/s
    assert objective_values(parse_objectives("capacity"), cap.to_trial_result(), cap) == [0.0]


def test_a_capacity_objective_needs_a_capacity_result() -> None:
    cap = fake_search(12, CapacityOptions(start_streams=4, max_streams=64))
    with pytest.raises(ValueError, match="needs a capacity result"):
        parse_objectives("capacity")[0].value(cap.to_trial_result())
    # a bounded search is its own capacity: streams at capacity count, not the probe's requests
    lower = dataclasses.replace(cap, capacity_streams=0)
    assert parse_objectives("capacity")[0].value(None, lower) == 0.0
