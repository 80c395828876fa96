"""Exact batched linear assignment, registered as `geosteer::assign`.

Contract (torch-linear-assignment's): `cost [B, W, T]` float, returns int64
`[B, W]` column ids, -1 for rows left unmatched when W > T; +inf marks a
forbidden edge; NaN or -inf is invalid; no feasible full matching is an error.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _validate_cost(cost: Tensor) -> Tensor:
    if not isinstance(cost, Tensor):
        raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    if cost.ndim != 3:
        raise ValueError(f"cost must have shape [B, W, T], got {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise TypeError(f"cost must be a floating tensor, got {cost.dtype}")
    if cost.dtype in (torch.float16, torch.bfloat16):
        cost = cost.float()
    if cost.numel() and bool((torch.isnan(cost) | (cost == float("-inf"))).any()):
        raise ValueError("cost has invalid numeric entries (NaN or -inf)")
    return cost


def assign_reference(cost: Tensor) -> Tensor:
    """SciPy per problem, through torch-linear-assignment's CPU path."""
    from torch_linear_assignment import batch_linear_assignment as tla_solve

    batch, rows, cols = cost.shape
    if batch == 0 or rows == 0 or cols == 0:
        return torch.full((batch, rows), -1, dtype=torch.long, device=cost.device)
    try:
        return tla_solve(cost.cpu()).to(cost.device)
    except ValueError as error:
        raise ValueError(f"cost matrix is infeasible: {error}") from error


@torch.library.custom_op("geosteer::assign", mutates_args=())
def assign(cost: Tensor, backend: str) -> Tensor:
    """Minimum-cost assignment `[B, W, T] -> [B, W]` int64 (see module doc)."""
    return assign_reference(cost)


@assign.register_fake
def _(cost: Tensor, backend: str) -> Tensor:
    return cost.new_empty(cost.shape[0], cost.shape[1], dtype=torch.long)


def batch_linear_assignment(cost: Tensor, *, maximize: bool = False, backend: str = "auto") -> Tensor:
    """Solve a batch of rectangular linear assignment problems exactly.

    Args:
        cost: `[B, W, T]` float (fp16/bf16 promoted to fp32); +inf = forbidden.
        maximize: maximise the total instead of minimising it.
        backend: "auto" | "triton" | "torch".

    Returns:
        `[B, W]` int64 column id per row, -1 where a row is unmatched (W > T).

    Raises:
        TypeError: `cost` is not a floating tensor.
        ValueError: wrong rank, NaN / -inf entries, or an infeasible problem.
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    cost = _validate_cost(cost)
    if maximize:
        cost = -cost
        if cost.numel() and bool((cost == float("-inf")).any()):
            raise ValueError("cost has invalid numeric entries (+inf when maximizing)")
    return assign(cost, backend)
