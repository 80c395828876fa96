"""Part matching (DESIGN §1, stage 2): costs between sets, the matching, the alignment.

`geosteer.stages.candidates.candidate_terms` runs these as separate stages
(`geosteer.head.STAGES`): the cost op, `match` (the batched solver), then
`alignment`. Neighbourhood mode's sets come from the gallery's kNN graph
(`knn_graph`, `neighbours_of`) and `neighbourhood_cost` measures them.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from geosteer import inputs
from geosteer.ops import checks
from geosteer.ops.assign import assign
from geosteer.ops.dispatch import check_backend
from geosteer.ops.first_stage import first_stage
from geosteer.ops.part_cost import REAL_COST_MAX, pad_cost, part_cost
from geosteer.ops.screen import check_screen


def match(cost: Tensor, matching: str, backend: str = "auto", solver: str = "auto") -> Tensor:
    """The matched column of each query part, `[Q, K, m]` int64 (-1 = unmatched).

    Args:
        cost: `[Q, K, m, n]` float32, masked pairs above `REAL_COST_MAX`.
        matching: "hungarian" (one-to-one, the `geosteer::assign` solver) or
            "max" (each part's cheapest column on its own: the ablation).
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        solver: "auto" | "tla" (`HeadConfig.solver`).
    """
    num_queries, num_cands, num_parts, num_regions = cost.shape
    if matching == "hungarian":
        cols = assign(cost.reshape(num_queries * num_cands, num_parts, num_regions), backend, solver)
        return cols.reshape(num_queries, num_cands, num_parts)
    return cost.argmin(dim=-1)


def alignment(cost: Tensor, cols: Tensor, num_valid_parts: Tensor) -> tuple[Tensor, Tensor]:
    """Alignment A(q, c) = (1/m) Σ_matched a_i·b_j of a matching; padded pairs do not count.

    Args:
        cost: `[Q, K, m, n]` float32, masked pairs above `REAL_COST_MAX`.
        cols: `[Q, K, m]` matched column per part (`match`).
        num_valid_parts: `[Q]` valid query parts m_q (>= 1).

    Returns:
        alignment `[Q, K]` float32; the matching `[Q, K, m]` int64 with
        padded pairs set to -1 (unmatched).
    """
    matched = cost.gather(-1, cols.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [Q, K, m]
    real = (cols >= 0) & (matched <= REAL_COST_MAX)
    cols = torch.where(real, cols, torch.full_like(cols, -1))
    total = torch.where(real, 1.0 - matched, torch.zeros_like(matched)).sum(dim=-1)
    return total / num_valid_parts.to(total.dtype)[:, None], cols


def knn_graph(
    gallery: Tensor, k: int, *, chunk_elements: int = 1 << 24, backend: str = "auto", screen: str = "auto"
) -> Tensor:
    """Each gallery item's `k` nearest other gallery items (self excluded).

    Build it once per gallery and pass it to the head as `gallery_neighbors`
    for neighbourhood mode on large galleries.

    Args:
        gallery: `[N, D]` float16 / bfloat16 / float32 / float64,
            L2-normalised, finite, N > k, D >= 1; any strides.
        k: neighbours per item, an integer (Python or NumPy) in [1, N-1].
        chunk_elements, backend, screen: as in `HeadConfig`
            (`chunk_elements` a positive integer).

    Returns:
        `[N, k]` int64 gallery ids, nearest first, on `gallery`'s device.

    Raises:
        TypeError: `gallery` is not a dense floating tensor (a NumPy array:
            wrap it with `torch.from_numpy`); `k` or `chunk_elements` is not
            an integer (bool and float refused).
        ValueError: `gallery` not `[N, D]` with N >= 2 and D >= 1, or holding
            NaN / inf; k outside [1, N-1]; chunk_elements < 1; unknown
            `backend` or `screen`.
    """
    _check_gallery(gallery)
    num_items = gallery.shape[0]
    k = _integer("k", k)
    if not 1 <= k < num_items:
        raise ValueError(f"k must be an int in [1, N-1] = [1, {num_items - 1}] (gallery has N={num_items}), got {k!r}")
    chunk_elements = _integer("chunk_elements", chunk_elements)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be a positive int, got {chunk_elements!r}")
    check_backend(backend)
    check_screen(screen)
    checks.check_finite(gallery, "gallery")  # one pass, remembered for an unchanged tensor
    ids = torch.arange(num_items, device=gallery.device)
    return neighbours_of(gallery, ids, k, chunk_elements, backend, screen)


def _check_gallery(gallery) -> None:
    """`knn_graph`'s static gallery checks (type, layout, rank, dtype, N >= 2, D >= 1)."""
    if isinstance(gallery, np.ndarray):
        raise TypeError(
            f"gallery must be a torch.Tensor [N, D], got a NumPy array {gallery.shape}; call torch.from_numpy(gallery) first"
        )
    if isinstance(gallery, Tensor) and gallery.layout != torch.strided:
        raise TypeError(
            f"gallery must be a dense (strided) tensor [N, D], got layout {gallery.layout}; call .to_dense() first"
        )
    inputs.embeddings("gallery", gallery, 2, "[N, D]")
    if gallery.shape[0] < 2:
        raise ValueError(f"gallery must hold N >= 2 items for a kNN graph, got shape {tuple(gallery.shape)}")
    inputs.nonempty("gallery", gallery, 1, "D")


def _integer(name: str, value) -> int:
    """`value` as an int: any `numbers.Integral` (NumPy's included) but bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def neighbours_of(gallery: Tensor, ids: Tensor, k: int, chunk_elements: int, backend: str, screen: str) -> Tensor:
    """The `k` nearest gallery items of each item in `ids` (any shape), self excluded.

    Returns:
        `[*ids.shape, k]` int64.
    """
    flat = ids.reshape(-1)
    _, top = first_stage(gallery[flat], gallery, k + 1, chunk_elements, backend, screen)  # [M, k+1]
    # Move the item itself to the end (exact duplicates may hide it: then the
    # last neighbour is dropped instead) and keep the first k.
    is_self = (top == flat[:, None]).to(torch.int8)
    order = is_self.argsort(dim=1, stable=True)
    return top.gather(1, order)[:, :k].reshape(*ids.shape, k)


def neighbourhood_cost(table: Tensor, anchors: Tensor, neighbours: Tensor, backend: str) -> Tensor:
    """Costs between q's kNN set and each candidate's kNN set (neighbourhood mode).

    A_q is q's k best pool items (the head of its first-stage pool); B_c is
    candidate c's k nearest gallery items. The head reads both from the
    gallery; the sharded head from the rows it fetched from their owners.

    Args:
        table: `[R, D]` the rows `neighbours` index (the gallery, or fetched rows).
        anchors: `[Q, k, D]` A_q.
        neighbours: `[Q, C, k]` int64 rows of `table`: B_c of each candidate.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).

    Returns:
        cost `[Q, C, k, k]` float32, `C[q, c, i, j] = 1 - a_i · b_{c,j}`.
    """
    num_queries, num_cands, k = neighbours.shape
    valid_a = torch.ones(num_queries, k, dtype=torch.bool, device=table.device)
    valid_b = torch.ones(table.shape[0], 1, dtype=torch.bool, device=table.device)
    # Each neighbour is a one-element "part set" of the table, so the
    # gather+cost op serves here too: [Q, C*k, k, 1] -> [Q, C, k(i), k(j)].
    cost = part_cost(anchors, valid_a, neighbours.reshape(num_queries, num_cands * k), table[:, None, :], valid_b,
                     pad_cost(1, 1), backend)
    return cost.reshape(num_queries, num_cands, k, k).transpose(-1, -2)
