"""Query-conditioned local steering (DESIGN §1, stage 1).

Each anchor pair j (a positive anchor p_j: what the query asks for; a
negative anchor u_j: one of its confusers) gives a direction

    d_j = normalise(mean(N+_j) - mean(N-_j)),

where N+_j / N-_j are the `neighbors` candidates of the query's own pool
nearest p_j / u_j. Directions are made orthogonal to q and to each other
(Gram-Schmidt) and never averaged into one vector; the query moves to
q' = normalise(q + α Σ_j d_j) and every candidate is re-scored with q'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer.ops.project import project

_EPS = 1e-6


def neighbourhood_means(gallery: Tensor, ids: Tensor, anchor_sims: Tensor, neighbors: int) -> Tensor:
    """Mean embedding of the `neighbors` pool items nearest each anchor.

    Args:
        gallery: `[N, D]`.
        ids: `[Q, K]` candidate pool.
        anchor_sims: `[Q, K, J]` pool-by-anchor similarities.
        neighbors: k of the neighbourhoods.

    Returns:
        `[Q, J, D]` float32.
    """
    num_queries, _, num_anchors = anchor_sims.shape
    top = anchor_sims.topk(neighbors, dim=1).indices  # [Q, k, J] positions in the pool
    member_ids = ids.gather(1, top.reshape(num_queries, -1))  # [Q, k*J]
    members = gallery[member_ids].float().reshape(num_queries, neighbors, num_anchors, -1)
    return members.mean(dim=1)


def orthogonal_directions(query: Tensor, raw: Tensor, valid: Tensor) -> Tensor:
    """Gram-Schmidt of the raw directions against q and each other.

    Args:
        query: `[Q, D]` float32, unit norm.
        raw: `[Q, J, D]` float32 (need not be normalised).
        valid: `[Q, J]` bool; invalid pairs give a zero direction.

    Returns:
        `[Q, J, D]` float32: unit, mutually orthogonal and orthogonal to q, or zero.
    """
    basis = [query]
    out = []
    for j in range(raw.shape[1]):  # J is small and static: fine under torch.compile
        v = raw[:, j]
        for b in basis:
            v = v - (v * b).sum(-1, keepdim=True) * b
        norm = v.norm(dim=-1, keepdim=True)
        keep = (norm > _EPS) & valid[:, j : j + 1]
        v = torch.where(keep, v / norm.clamp_min(_EPS), torch.zeros_like(v))
        basis.append(v)
        out.append(v)
    return torch.stack(out, dim=1)


def steer_scores(
    query: Tensor,
    gallery: Tensor,
    ids: Tensor,
    first_scores: Tensor,
    positives: Tensor,
    negatives: Tensor,
    negatives_mask: Tensor,
    neighbors: int,
    alpha: float,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Steered scores of the pool and the pool-by-negative similarities.

    Args:
        query: `[Q, D]` unit-norm queries.
        gallery: `[N, D]`.
        ids: `[Q, K]` candidate pool.
        first_scores: `[Q, K]` q·c, float32.
        positives: `[Q, J, D]` or `[Q, 1, D]` (shared by every negative).
        negatives: `[Q, J, D]` confusers.
        negatives_mask: `[Q, J]` bool.
        neighbors: neighbourhood size k.
        alpha: step size α.
        backend: kernel choice for CUDA tensors.

    Returns:
        steered `[Q, K]` float32 = q'·c; negative sims `[Q, K, J]` float32.
    """
    num_anchors = negatives.shape[1]
    pos_sims = project(gallery, ids, positives, backend)
    neg_sims = project(gallery, ids, negatives, backend)
    pos_means = neighbourhood_means(gallery, ids, pos_sims, neighbors)
    neg_means = neighbourhood_means(gallery, ids, neg_sims, neighbors)
    raw = pos_means.expand(-1, num_anchors, -1) - neg_means
    query32 = query.float()
    dirs = orthogonal_directions(query32, raw, negatives_mask)
    dir_sims = project(gallery, ids, dirs, backend)  # [Q, K, J]
    moved = query32 + alpha * dirs.sum(dim=1)
    steered = (first_scores + alpha * dir_sims.sum(dim=-1)) / moved.norm(dim=-1, keepdim=True)
    return steered, neg_sims


def confuser_penalty(first_scores: Tensor, negative_sims: Tensor, negatives_mask: Tensor) -> Tensor:
    """relu(max_j c·u_j - c·q): how much better a candidate fits a confuser. `[Q, K]`."""
    masked = negative_sims.masked_fill(~negatives_mask[:, None, :], float("-inf"))
    return F.relu(masked.amax(dim=-1) - first_scores)
