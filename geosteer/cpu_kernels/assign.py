"""numba kernel of `geosteer::assign`: shortest augmenting paths over the batch.

The algorithm is SciPy's `linear_sum_assignment` (Crouse 2016: Jonker-Volgenant
style Dijkstra over reduced costs with row/column potentials), compiled with
numba and looped over the batch inside compiled code, so a problem costs no
Python call. Two changes from SciPy, neither affects optimality:

- a greedy start: each row's cheapest column, if still free, is matched with
  `u[i] = row min` and `v = 0`. That is dual feasible with tight matched
  edges (and leaves `v = 0` on free columns, as the rectangular dual needs),
  so the augmenting phase only runs for the rows left over (~1/3 of them on
  random 16 x 16 costs, measured);
- potentials and path costs are float64 whatever the input dtype (as SciPy).

Rows must not outnumber columns (`W <= T`); the caller transposes.
Importing this module needs numba; functions compile on first call and are
cached on disk (`cache=True`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from geosteer.cpu_kernels._threads import run_in_row_chunks

_JIT = {"nogil": True, "cache": True, "boundscheck": False}


OK, INVALID, INFEASIBLE = 0, 1, 2


@numba.njit(**_JIT)
def _solve_one(c, col4row, row4col, u, v, dist, path, seen_rows, seen_cols, remaining) -> int:  # noqa: ANN001
    """Solve one `[W, T]` problem (W <= T) into `col4row`; returns OK / INVALID / INFEASIBLE."""
    rows, cols = c.shape
    for j in range(cols):
        v[j] = 0.0
        row4col[j] = -1
    for i in range(rows):
        best = math.inf
        best_j = -1
        for j in range(cols):
            x = c[i, j]
            if x != x or x == -math.inf:  # NaN or -inf: checked here, where every entry is read anyway
                return INVALID
            if x < best:
                best = x
                best_j = j
        u[i] = best if best < math.inf else 0.0
        col4row[i] = -1
        if best_j >= 0 and row4col[best_j] == -1:
            row4col[best_j] = i
            col4row[i] = best_j

    for cur in range(rows):
        if col4row[cur] != -1:
            continue
        # Dijkstra from row `cur` over reduced costs until a free column.
        min_val = 0.0
        num_left = cols
        for k in range(cols):
            remaining[k] = cols - k - 1
            dist[k] = math.inf
            seen_cols[k] = False
        for k in range(rows):
            seen_rows[k] = False
        sink = -1
        i = cur
        while sink == -1:
            seen_rows[i] = True
            base = min_val - u[i]
            lowest = math.inf
            index = -1
            for k in range(num_left):
                j = remaining[k]
                r = base + c[i, j] - v[j]
                d = dist[j]
                if r < d:
                    path[j] = i
                    dist[j] = r
                    d = r
                # Among equal distances prefer a free column: the search ends sooner.
                if d < lowest or (d == lowest and row4col[j] == -1):
                    lowest = d
                    index = k
            min_val = lowest
            if min_val == math.inf:
                return INFEASIBLE
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            seen_cols[j] = True
            num_left -= 1
            remaining[index] = remaining[num_left]

        u[cur] += min_val
        for k in range(rows):
            if seen_rows[k] and k != cur:
                u[k] += min_val - dist[col4row[k]]
        for j in range(cols):
            if seen_cols[j]:
                v[j] -= min_val - dist[j]
        j = sink
        while True:  # augment along the path back to `cur`
            i = path[j]
            row4col[j] = i
            j, col4row[i] = col4row[i], j
            if i == cur:
                break
    return OK


@numba.njit(**_JIT)
def _solve_range(cost, out, start, stop) -> tuple[int, int]:  # noqa: ANN001
    """Solve problems `start..stop-1` of `cost [B, W, T]` into `out [B, W]`.

    Returns (OK, -1), or (INVALID / INFEASIBLE, index of the problem) at the
    first problem that fails (the rest are not solved).
    """
    _, rows, cols = cost.shape
    col4row = np.empty(rows, np.int64)
    row4col = np.empty(cols, np.int64)
    u = np.empty(rows, np.float64)
    v = np.empty(cols, np.float64)
    dist = np.empty(cols, np.float64)
    path = np.empty(cols, np.int64)
    seen_rows = np.empty(rows, np.bool_)
    seen_cols = np.empty(cols, np.bool_)
    remaining = np.empty(cols, np.int64)
    for b in range(start, stop):
        status = _solve_one(cost[b], col4row, row4col, u, v, dist, path, seen_rows, seen_cols, remaining)
        if status != OK:
            return status, b
        for i in range(rows):
            out[b, i] = col4row[i]
    return OK, -1


#: Below this much work (B * W * W * T) one thread does it all: a thread hand-off
#: costs ~50-100 us, about 40k work units on this machine.
PARALLEL_MIN_WORK = 1 << 20


def solve(cost: np.ndarray, threads: int = 1) -> tuple[np.ndarray, int, int]:
    """Minimum-cost assignment of every problem in `cost`, all in NumPy / numba.

    No torch op runs here: with more torch threads than free cores, each
    OpenMP region of even a tiny torch op can wait a whole scheduler slice
    for a descheduled worker (measured ~40 ms per call on the loaded 2-core
    CI machine), so the CPU path stays out of torch.

    Args:
        cost: `[B, W, T]` C-contiguous float32 or float64, W <= T.
        threads: worker threads (the compiled loop releases the GIL).

    Returns:
        (`[B, W]` int64 column per row, status OK / INVALID / INFEASIBLE, the
        failing problem's index or -1). On failure `out` is incomplete.
    """
    batch, rows, cols = cost.shape
    out = np.empty((batch, rows), dtype=np.int64)
    threads = threads if batch * rows * rows * cols >= PARALLEL_MIN_WORK else 1
    results = run_in_row_chunks(lambda start, stop: _solve_range(cost, out, start, stop), batch, threads)
    for status, bad in results:  # chunks in order: the first failing problem wins
        if status != OK:
            return out, int(status), int(bad)
    return out, OK, -1
