"""Exact batched linear assignment, registered as `geosteer::assign`.

Contract (torch-linear-assignment's, i.e. SciPy's `linear_sum_assignment`
per problem): `cost [B, W, T]` real (bool / integer costs are solved in
float64, as SciPy casts them), returns int64 `[B, W]` column ids, -1
for rows left unmatched when W > T; +inf marks a forbidden edge; NaN or -inf
is invalid; a problem with no finite matching of all min(W, T) rows is an
error. Ties may pick a different (equally cheap) matching than SciPy.

Algorithms. Two rules pick one: `geosteer.ops.dispatch.resolve` picks the
implementation from `backend` and the device (as for every op), then, on
CUDA, `CUDA_ROUTES` picks the solver from that implementation and the
problem size r = min(W, T) (`GPU_DP_MAX_ROWS`):

| device, implementation (`resolve`) | shape | algorithm (`CUDA_ROUTES` on CUDA) |
|---|---|---|
| CPU, numba ("auto") | any | compiled shortest augmenting paths over the batch (`geosteer.cpu_kernels.assign`) |
| CPU, reference ("torch", or no numba) | any | SciPy per problem |
| CUDA, Triton ("auto", "triton") | r <= 6 | `"triton_dp"`: subset-DP Triton kernel (`geosteer.kernels.assign`) |
| CUDA, Triton | r > 6 | `"tla"`: torch-linear-assignment's Triton kernel; it needs capability >= 8.0 (below it: `BackendUnavailable` for "triton", the reference's route with a one-time warning for "auto") |
| CUDA, reference ("torch", or "auto" where Triton cannot run) | r <= 6 | `"torch_dp"`: subset DP in torch ops on the GPU (`assign_dp_reference`) |
| CUDA, reference | r > 6 | `"cpu"`: the CPU path, and back |

`solver="tla"` (`HeadConfig.solver`) runs torch-linear-assignment's
`batch_linear_assignment` instead, on every device: the peer the benchmarks
compare with, inside the same op so the head still compiles.

The CPU rule is measured; the GPU threshold r <= 6 is not yet
(`GPU_DP_MAX_ROWS`). Why this CPU rule (measured on the 2-core CI machine,
under load, one thread): augmenting paths in numba beat a numba subset DP (a prototype, not
kept) at every shape, 21.5 vs 42.4 ms on 51,200 x 4x16, 4.4 vs 165 ms on
4,096 x 8x8, 94 ms vs 12.7 s on 51,200 x 10x10 (same runs). Without numba the
SciPy loop beats the torch subset DP everywhere (`python -m bench.bench_assign
--threads 1 --providers torch_dp scipy`: 51,200 x 4x16 128 vs 443 ms,
1,024 x 8x8 2.9 vs 126 ms), so the torch DP serves only as the GPU fallback
and as the Triton kernel's reference.

W > T is solved as the transposed `[B, T, W]` problem.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from geosteer import cpu_kernels
from geosteer.choices import check_choice
from geosteer.ops.dispatch import BackendUnavailable, KernelSpec, check_backend, resolve, warn_once

_OP = "geosteer::assign"
SPEC = KernelSpec(_OP, triton=True, numba=(torch.float32, torch.float64))
#: The solvers `HeadConfig.solver` names: geosteer's own, or torch-linear-assignment's.
SOLVERS = ("auto", "tla")

#: On CUDA the subset DPs run for r = min(W, T) <= 6 (2^6 = 64 states; the
#: Triton kernel's int8 choice workspace is B * T * 64 bytes); larger problems
#: go to torch-linear-assignment's kernel or the CPU. Not yet measured on a GPU:
#: re-check with `python -m bench.bench_assign --device cuda` and move the
#: threshold to the crossover.
GPU_DP_MAX_ROWS = 6
#: The second routing rule on CUDA (the module doc's table): the solver for
#: (the implementation `dispatch.resolve` picked, r <= GPU_DP_MAX_ROWS).
CUDA_ROUTES: dict[tuple[str, bool], str] = {
    ("triton", True): "triton_dp",
    ("triton", False): "tla",  # capability >= 8.0; below it, the ("torch", False) route (or an error)
    ("torch", True): "torch_dp",
    ("torch", False): "cpu",
}
#: Compute capability torch-linear-assignment's Triton kernel needs.
_TLA_MIN_CAPABILITY = (8, 0)
# The torch DP keeps a [T, chunk, 2^r] int8 choice table; bound it.
_DP_CHUNK_BYTES = 1 << 26

def check_cost_type(cost: Tensor) -> Tensor:
    """Static checks (trace fine under torch.compile); returns float32 / float64.

    fp16 / bf16 are promoted to float32; bool and integer costs to float64
    (exact up to 2^53, as SciPy's cast), so integer costs give SciPy's matching.

    Raises:
        TypeError: not a dense tensor, or complex.
        ValueError: not `[B, W, T]`.
    """
    if not isinstance(cost, Tensor):
        hint = " (call torch.from_numpy on it first)" if isinstance(cost, np.ndarray) else ""
        raise TypeError(f"cost must be a torch.Tensor [B, W, T]{hint}, got {type(cost).__name__}")
    if cost.layout != torch.strided:
        raise TypeError(f"cost must be a dense (strided) tensor, got layout {cost.layout}; call .to_dense() first")
    if cost.ndim != 3:
        raise ValueError(
            f"cost must have shape [B, W, T] (expected a matrix [W, T] per problem b), got {tuple(cost.shape)}"
        )
    if cost.is_complex():
        raise TypeError(f"cost must be a real (floating, integer or bool) tensor, got {cost.dtype}")
    if not cost.is_floating_point():
        return cost.double()
    if cost.dtype not in (torch.float32, torch.float64):
        cost = cost.float()
    return cost


def check_cost_values(cost: Tensor) -> None:
    """Value check (a host sync: inside the op only).

    Raises:
        ValueError: NaN or -inf entries.
    """
    if cost.numel() and bool((torch.isnan(cost) | torch.isneginf(cost)).any()):
        raise ValueError(
            "cost contains invalid numeric entries: NaN, or -inf (+inf with maximize=True); "
            "+inf (-inf with maximize=True) marks a forbidden edge"
        )


def _infeasible(problem: int, rows: int) -> ValueError:
    return ValueError(
        f"cost matrix is infeasible: problem {problem} has no matching of all {rows} rows "
        "that avoids forbidden entries (+inf; -inf with maximize=True)"
    )


# --------------------------------------------------------------------------
# Solvers for one orientation: cost [B, W, T] with 1 <= W <= T, B >= 1.


def assign_dp_reference(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Subset dynamic programme in plain torch (any device); the Triton kernel's reference.

    `dp[s]` is the cheapest way to give the rows in bit set `s` distinct
    columns among those swept so far; column j either stays unused or goes to
    a row i of s (rows tried in order, strict `<`, so ties keep the earlier
    choice). The choice per (column, state) is kept to read the matching
    back. Work `T * 2^W * W` per problem, vectorised over the batch; sums
    in float64.

    Args:
        cost: `[B, W, T]` float32 / float64, 1 <= W <= T, no NaN / -inf.

    Returns:
        (`[B, W]` int64 column per row, `[B]` bool infeasible). Rows of an
        infeasible problem hold unspecified ids.
    """
    batch, rows, cols = cost.shape
    device = cost.device
    num_states = 1 << rows
    state = torch.arange(num_states, device=device)
    has_row = [(state >> i) & 1 == 1 for i in range(rows)]  # [S] each
    without_row = [state ^ (1 << i) for i in range(rows)]
    cost = cost.double()  # float64 sums, as the kernel (see its module doc) and SciPy
    dp = torch.full((batch, num_states), float("inf"), dtype=torch.float64, device=device)
    dp[:, 0] = 0
    choices = torch.empty((cols, batch, num_states), dtype=torch.int8, device=device)
    for j in range(cols):
        new = dp
        choice = torch.full((batch, num_states), -1, dtype=torch.int8, device=device)
        for i in range(rows):
            cand = dp[:, without_row[i]] + cost[:, i, j, None]
            better = has_row[i] & (cand < new)
            new = torch.where(better, cand, new)
            choice = torch.where(better, torch.tensor(i, dtype=torch.int8, device=device), choice)
        dp = new
        choices[j] = choice
    infeasible = torch.isinf(dp[:, -1])

    # Read back: from the full set, each column's choice says which row took it.
    out = torch.full((batch, rows + 1), -1, dtype=torch.long, device=device)  # last column: a sink
    taken = torch.full((batch, 1), num_states - 1, dtype=torch.long, device=device)
    for j in range(cols - 1, -1, -1):
        row = choices[j].gather(1, taken).long()  # [B, 1]
        took = row >= 0
        out.scatter_(1, torch.where(took, row, rows), j)
        taken = torch.where(took, taken ^ (1 << row.clamp_min(0)), taken)
    return out[:, :rows], infeasible


def _dp_chunked(cost: Tensor) -> tuple[Tensor, Tensor]:
    batch, rows, cols = cost.shape
    chunk = max(1, _DP_CHUNK_BYTES // (cols << rows))
    if batch <= chunk:
        return assign_dp_reference(cost)
    parts = [assign_dp_reference(cost[start : start + chunk]) for start in range(0, batch, chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _scipy_loop(cost: Tensor) -> Tensor:
    """SciPy per problem (CPU); raises on the first infeasible problem."""
    from scipy.optimize import linear_sum_assignment

    array = cost.detach().cpu().numpy()
    out = np.empty(cost.shape[:2], dtype=np.int64)
    for b in range(array.shape[0]):
        try:
            _, out[b] = linear_sum_assignment(array[b])
        except ValueError as error:
            raise _infeasible(b, cost.shape[1]) from error
    return torch.from_numpy(out)


def _solve_cpu(cost: Tensor) -> Tensor:
    """An oriented CPU `cost` (1 <= W <= T), values already checked: numba where installed, else SciPy."""
    _, rows, _ = cost.shape
    numba_solver = cpu_kernels.load("assign")
    if numba_solver is None:
        return _scipy_loop(cost)
    cols, status, bad = numba_solver.solve(cost.detach().contiguous().numpy(), torch.get_num_threads())
    if status != numba_solver.OK:
        raise _infeasible(bad, rows)
    return torch.from_numpy(cols)


def _solve_cpu_numba(cost: Tensor) -> Tensor:
    """CPU tensors with numba: checks, orientation and solve in NumPy / numba, no torch op.

    (See `geosteer.cpu_kernels.assign.solve` for why torch ops are avoided here.)
    """
    numba_solver = cpu_kernels.load("assign")
    batch, rows, cols = cost.shape
    if batch == 0 or rows == 0 or cols == 0:
        return torch.full((batch, rows), -1, dtype=torch.long)
    array = cost.detach().numpy()
    tall = rows > cols
    work = np.ascontiguousarray(array.transpose(0, 2, 1) if tall else array)
    found, status, bad = numba_solver.solve(work, torch.get_num_threads())
    if status != numba_solver.OK:
        # Invalid entries win over infeasibility wherever they are.
        if status == numba_solver.INVALID or np.isnan(array).any() or np.isneginf(array).any():
            check_cost_values(cost)
        raise _infeasible(bad, min(rows, cols))
    if not tall:
        return torch.from_numpy(found)
    out = np.full((batch, rows), -1, dtype=np.int64)
    out[np.arange(batch)[:, None], found] = np.arange(cols)[None, :]
    return torch.from_numpy(out)


def _raise_if_any(infeasible: Tensor, rows: int) -> None:
    if bool(infeasible.any()):
        raise _infeasible(int(infeasible.nonzero()[0, 0]), rows)


def _solve_cuda(cost: Tensor, backend: str, impl: str) -> Tensor:
    """Solve an oriented CUDA `cost` by the route `CUDA_ROUTES` gives; `impl` from `dispatch.resolve`."""
    rows = cost.shape[1]
    route = CUDA_ROUTES[impl, rows <= GPU_DP_MAX_ROWS]
    if route == "tla":
        capability = torch.cuda.get_device_capability(cost.device)
        if capability >= _TLA_MIN_CAPABILITY:
            return _solve_tla(cost)
        problem = (f"torch-linear-assignment's Triton kernel (r = {rows} > {GPU_DP_MAX_ROWS}) needs capability "
                   f">= 8.0, {cost.device} has {capability[0]}.{capability[1]}")
        if backend == "triton":
            raise BackendUnavailable(f"{_OP}: backend='triton' cannot run: {problem}; use backend='auto' or 'torch'")
        warn_once(f"{_OP}: backend='auto' solves on the CPU because {problem}", stacklevel=4)
        route = CUDA_ROUTES["torch", False]
    if route == "cpu":
        return _solve_cpu(cost.cpu()).to(cost.device)
    if route == "triton_dp":
        from geosteer.kernels.assign import assign_dp_triton

        cols, infeasible = assign_dp_triton(cost)
    else:  # "torch_dp"
        cols, infeasible = _dp_chunked(cost)
    _raise_if_any(infeasible, rows)
    return cols


def _solve_tla(cost: Tensor) -> Tensor:
    """torch-linear-assignment's batch solver (Triton on CUDA, SciPy per problem on the CPU)."""
    if cost.is_cuda:
        from torch_linear_assignment.assignment import batch_linear_assignment_cuda as tla
    else:
        from torch_linear_assignment import batch_linear_assignment as tla
    try:
        return tla(cost.contiguous())
    except ValueError as error:  # its only ValueError left here is infeasibility
        raise ValueError(f"cost matrix is infeasible: {error}") from error


def check_solver(solver: str) -> str:
    """Validate the `solver` string; return it.

    Raises:
        ValueError: not one of `SOLVERS`.
    """
    return check_choice("solver", solver, SOLVERS)


def solve(cost: Tensor, backend: str = "auto", solver: str = "auto") -> Tensor:
    """Validate, orient (W <= T) and dispatch; the body of `geosteer::assign`.

    Args:
        cost: `[B, W, T]` real; fp16 / bf16 are promoted to float32, bool /
            integer to float64.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        solver: "auto" (geosteer's, the module doc's rule) or "tla"
            (torch-linear-assignment's, the benchmarks' peer).

    Returns:
        `[B, W]` int64 column per row, -1 = unmatched, on `cost`'s device.
    """
    check_backend(backend)
    check_solver(solver)
    cost = check_cost_type(cost)
    # Every kernel reads the float32 / float64 that check_cost_type leaves (the
    # Triton DP sums in float64 either way), so no dtype narrows the choice.
    impl = resolve(SPEC, backend, cost.device, ())
    if impl == "numba" and solver == "auto":
        return _solve_cpu_numba(cost)
    check_cost_values(cost)
    batch, rows, cols = cost.shape
    if batch == 0 or rows == 0 or cols == 0:
        return torch.full((batch, rows), -1, dtype=torch.long, device=cost.device)
    tall = rows > cols
    work = cost.transpose(1, 2).contiguous() if tall else cost.contiguous()
    if solver == "tla":
        found = _solve_tla(work)
    elif work.is_cuda:
        found = _solve_cuda(work, backend, impl)
    else:  # the CPU reference ("torch", or no numba); numba with solver="auto" returned above
        found = _scipy_loop(work)
    found = found.to(cost.device)
    if not tall:
        return found
    # found[b, j] = the row that column j took; invert into a column per row.
    out = torch.full((batch, rows), -1, dtype=torch.long, device=cost.device)
    return out.scatter_(1, found, torch.arange(cols, device=cost.device).expand(batch, cols).contiguous())


@torch.library.custom_op(_OP, mutates_args=())
def assign(cost: Tensor, backend: str, solver: str = "auto") -> Tensor:
    """Minimum-cost assignment `[B, W, T] -> [B, W]` int64 (see module doc).

    Runs as one opaque op under `torch.compile`: the value checks, host syncs
    and NumPy / numba calls stay inside it.

    Raises:
        TypeError / ValueError: see `batch_linear_assignment`.
        BackendUnavailable: backend="triton" where the Triton kernel cannot run.
    """
    return solve(cost, backend, solver)


@assign.register_fake
def _(cost: Tensor, backend: str, solver: str = "auto") -> Tensor:
    return cost.new_empty(cost.shape[0], cost.shape[1], dtype=torch.long)


def batch_linear_assignment(cost: Tensor, *, maximize: bool = False, backend: str = "auto") -> Tensor:
    """Solve a batch of rectangular linear assignment problems exactly.

    Drop-in for `torch_linear_assignment.batch_linear_assignment` (plus
    `maximize` and `backend`); each problem is SciPy's
    `linear_sum_assignment(cost[b], maximize=maximize)`.

    Forbidden edges: with `maximize=False`, +inf marks a forbidden edge and
    -inf is invalid. With `maximize=True` the problem is solved on `-cost`
    (as SciPy does), so it is the other way round: -inf marks a forbidden
    edge (a pair worth "minus infinity" is never taken) and +inf is invalid.

    Args:
        cost: `[B, W, T]` real tensor, any device: float32 / float64 as
            given, fp16 / bf16 promoted to float32, bool / integer to
            float64 (SciPy's cast); any strides.
        maximize: maximise the total instead of minimising it.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`; the
            module doc says which algorithm each picks).

    Returns:
        `[B, W]` int64 column id per row on `cost`'s device, -1 where a row
        is unmatched (W > T).

    Raises:
        TypeError: `cost` is not a dense real tensor (a NumPy array, a
            sparse or a complex tensor).
        ValueError: wrong rank, unknown `backend`, invalid numeric entries
            (NaN, or -inf / +inf when minimising / maximising), or an
            infeasible problem.
        BackendUnavailable: backend="triton" where the Triton kernel cannot
            run (CPU tensors, no Triton, an old GPU).
    """
    check_backend(backend)
    cost = check_cost_type(cost)
    if maximize:
        # Negated, a forbidden -inf becomes +inf and an invalid +inf becomes
        # -inf, which the op rejects (values are checked inside the op so that
        # this function traces under torch.compile).
        cost = -cost
    return assign(cost, backend)
