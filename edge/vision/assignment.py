"""The linear sum assignment (the Hungarian problem) for the tracker's small cost matrices,
in plain Python, so that a node need not import ``scipy.optimize`` (about 35 MB of
resident memory for one function: ``s4edge bench vision``, memory).

Shortest augmenting paths after Crouse, "On implementing 2D rectangular assignment
algorithms", IEEE Trans. Aerospace and Electronic Systems 52(4), 2016, pp. 1685-1686,
with the choices that make ``scipy.optimize.linear_sum_assignment`` deterministic, so
that both give the same pairs, ties included: a tall matrix is solved transposed;
columns are scanned from the last to the first; among equally short paths the first
one that ends on a free column wins; the pairs come out ordered by row.

The cost of a tracker's matrix (tracks × detections of one class, a handful each way)
is a few microseconds per pair; anything larger belongs in scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def linear_sum_assignment(cost: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a minimum-cost matching that pairs every row (or every
    column, when there are fewer), rows ascending; as ``scipy.optimize.linear_sum_assignment``."""
    matrix = np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {matrix.shape}")
    if matrix.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if np.isnan(matrix).any() or np.isneginf(matrix).any():
        raise ValueError("cost matrix contains NaN or -inf")
    transpose = matrix.shape[1] < matrix.shape[0]
    rows = (matrix.T if transpose else matrix).tolist()
    col4row = _solve(rows, len(rows), len(rows[0]))
    if transpose:  # rows of the solved matrix are our columns: order by the matched row
        pairs = sorted((row, col) for col, row in enumerate(col4row))
        return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)
    return np.arange(len(col4row), dtype=np.int64), np.array(col4row, np.int64)


def _solve(cost: list[list[float]], nr: int, nc: int) -> list[int]:
    """Column of each row (nr ≤ nc), one augmenting path per row."""
    u = [0.0] * nr  # dual variables of the rows
    v = [0.0] * nc  # and of the columns
    path = [-1] * nc
    col4row = [-1] * nr
    row4col = [-1] * nc
    for current in range(nr):
        sink, min_val, shortest, rows_seen, cols_seen = _augmenting_path(cost, u, v, path, row4col, current, nc)
        u[current] += min_val
        for i in rows_seen:
            if i != current:
                u[i] += min_val - shortest[col4row[i]]
        for j in cols_seen:
            v[j] -= min_val - shortest[j]
        j = sink
        while True:  # flip the path: every row on it takes the column it reached
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == current:
                break
    return col4row


def _augmenting_path(
    cost: list[list[float]], u: list[float], v: list[float], path: list[int], row4col: list[int], i: int, nc: int
) -> tuple[int, float, list[float], list[int], list[int]]:
    """Dijkstra over reduced costs from row ``i`` to the nearest free column."""
    min_val = 0.0
    remaining = list(range(nc - 1, -1, -1))  # reversed: a constant matrix gives the identity
    shortest = [math.inf] * nc
    rows_seen: list[int] = []
    cols_seen: list[int] = []
    while True:
        rows_seen.append(i)
        index, lowest = -1, math.inf
        row, u_i = cost[i], u[i]
        for it, j in enumerate(remaining):
            r = min_val + row[j] - u_i - v[j]
            if r < shortest[j]:
                path[j] = i
                shortest[j] = r
            # among equally short paths, prefer one that ends on a free column
            if shortest[j] < lowest or (shortest[j] == lowest and row4col[j] == -1):
                lowest = shortest[j]
                index = it
        min_val = lowest
        if min_val == math.inf:
            raise ValueError("cost matrix is infeasible")
        j = remaining[index]
        cols_seen.append(j)
        remaining[index] = remaining[-1]
        remaining.pop()
        if row4col[j] == -1:
            return j, min_val, shortest, rows_seen, cols_seen
        i = row4col[j]
