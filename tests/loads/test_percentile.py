"""The percentile rule at its exact boundaries (vtune.loads._results.percentile).

The rule: the smallest value whose cumulative weight reaches ``pct`` percent of the
total (the inverse of the empirical CDF, no interpolation), decided exactly: numpy's
``inverted_cdf`` and GuideLLM's cumsum compare floats and pick the next value at some
exact boundaries (p99.9 of 1000 values is the 1000th there).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from vtune.loads._results import percentile

TEN = [float(v) for v in range(1, 11)]


def test_p50_of_two_values_is_the_first() -> None:
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([2.0, 1.0], 50) == 1.0  # order of the input does not matter
    assert percentile([1.0, 2.0], 50.0001) == 2.0


def test_p90_of_ten_values_is_the_ninth() -> None:
    # 0.1 summed nine times is 0.8999999999999999 < 0.9: a float cumulative fraction picks the 10th.
    assert percentile(TEN, 90) == 9.0
    assert percentile(TEN, 90.0001) == 10.0
    assert percentile(TEN, 89.9999) == 9.0


@pytest.mark.parametrize("pct", [10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
def test_every_decile_of_ten_values(pct: int) -> None:
    assert percentile(TEN, pct) == pct / 10


@pytest.mark.parametrize("n", [3, 7, 10, 20, 30, 50, 100, 1000])
@pytest.mark.parametrize("pct", [1, 10, 25, 33.3, 50, 75, 90, 95, 99, 99.9, 100])
def test_matches_the_exact_rank(n: int, pct: float) -> None:
    # The k-th smallest of n values, k the least integer with k / n >= pct / 100, in exact arithmetic.
    values = [float(v) for v in range(1, n + 1)]
    share = Fraction(str(pct)) / 100 * n
    k = max(1, math.ceil(share))
    assert percentile(values, pct) == float(k)


def test_p99_of_hundred_values_is_the_99th() -> None:
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0


def test_weights_at_the_boundary() -> None:
    # Weights 1, 1, 2: cumulative 25%, 50%, 100%.
    assert percentile([1.0, 2.0, 3.0], 50, weights=[1, 1, 2]) == 2.0
    assert percentile([1.0, 2.0, 3.0], 50.01, weights=[1, 1, 2]) == 3.0
    assert percentile([1.0, 2.0, 3.0], 25, weights=[1, 1, 2]) == 1.0
    # Fractional weights that do not sum exactly in floats: ten of 0.1.
    assert percentile(TEN, 90, weights=[0.1] * 10) == 9.0
    assert percentile(TEN, 30, weights=[0.1] * 10) == 3.0
    # Weights scale freely: the same distribution at 3x.
    assert percentile(TEN, 90, weights=[3] * 10) == 9.0
    # A weight of zero never reaches a boundary on its own.
    assert percentile([1.0, 2.0, 3.0], 50, weights=[1, 0, 1]) == 1.0
    assert percentile([1.0, 2.0, 3.0], 51, weights=[1, 0, 1]) == 3.0


def test_edges() -> None:
    assert percentile([7.0], 0) == 7.0
    assert percentile([7.0], 100) == 7.0
    assert percentile(TEN, 0) == 1.0
    assert math.isnan(percentile([], 50))
    assert math.isnan(percentile([1.0, 2.0], 50, weights=[0, 0]))
