"""The tracker's assignment without scipy gives scipy's pairs, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from s4edge.edge.vision.assignment import linear_sum_assignment

scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy is the reference here")


def shapes() -> list[tuple[int, int]]:
    return [(r, c) for r in range(1, 8) for c in range(1, 8)]


@pytest.mark.parametrize(("rows", "cols"), shapes())
def test_random_costs_pair_as_scipy_does(rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows * 100 + cols)
    for _ in range(40):
        cost = rng.random((rows, cols))
        expected = scipy_optimize.linear_sum_assignment(cost)
        got = linear_sum_assignment(cost)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(("rows", "cols"), shapes())
def test_ties_are_broken_as_scipy_breaks_them(rows: int, cols: int) -> None:
    """Small integer costs and the tracker's 1 − IoU with many zero overlaps: many optima."""
    rng = np.random.default_rng(rows * 1000 + cols)
    for _ in range(40):
        small = rng.integers(0, 3, (rows, cols)).astype(float)
        overlap = np.where(rng.random((rows, cols)) < 0.6, 1.0, 1.0 - rng.choice([0.25, 0.5, 0.75], (rows, cols)))
        for cost in (small, overlap, np.ones((rows, cols))):
            expected = scipy_optimize.linear_sum_assignment(cost)
            got = linear_sum_assignment(cost)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


def test_an_empty_matrix_pairs_nothing() -> None:
    for shape in ((0, 0), (0, 3), (3, 0)):
        rows, cols = linear_sum_assignment(np.zeros(shape))
        assert rows.size == 0 and cols.size == 0


def test_bad_costs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        linear_sum_assignment(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="infeasible"):
        linear_sum_assignment(np.array([[np.inf, np.inf]]))
    with pytest.raises(ValueError, match="matrix"):
        linear_sum_assignment(np.zeros(3))
