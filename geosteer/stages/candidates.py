"""The per-candidate terms of the fused score: one function for every scorer of candidates (DESIGN §1).

`GeoSteerHead` scores its pool of K candidates, `geosteer.score_pairs` the
pairs it is given, the sharded head (`geosteer.distributed`) the pool
members one rank owns. All three call `candidate_terms` on their own
`ids [Q, C]` and fuse its result with `fused_score`, so a candidate's
β penalty, δ contrast, alignment A, structure R and the gallery-rows check
are computed by one copy of the code.

What differs between them stays with them: the first stage, the α query
move (its directions need the whole pool: `moved_scores`, called by the two
heads), how neighbourhood mode finds its kNN sets (the head searches or
reads its graph; the sharded head fetches rows from their owners: a
`neighbourhood_cost` hook), and the sort.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ContextManager, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer.config import HeadConfig
from geosteer.inputs import GallerySide, QuerySide
from geosteer.ops.checks import check_rows
from geosteer.ops.part_cost import pad_cost, part_cost
from geosteer.stages.rerank import alignment, match
from geosteer.stages.steer import anchor_terms, confuser_penalty, steer_scores
from geosteer.stages.structure import relation_score

#: The anchor pairs of `geosteer.stages.steer.steering_anchors`: positives
#: `[Q, u or 1, D]`, negatives `[Q, u, D]`, negatives_mask `[Q, u]`.
Anchors = tuple[Tensor, Tensor, Tensor]


class CandidateTerms(NamedTuple):
    """What `candidate_terms` returns; every `[Q, C]` field is in the order of `ids` (no sorting)."""

    # [Q, C] float32 confuser gap that β multiplies, or None when it is not taken here (β = 0, no
    # anchors, or pooled with α > 0: then `moved_scores` takes it from the move's own similarities).
    penalty: Tensor | None
    contrast: Tensor  # [Q, C] float32 C(q, c), the δ term (0 when δ = 0 or without anchors)
    alignment: Tensor  # [Q, C] float32 A(q, c) (0 without re-ranking)
    structure: Tensor  # [Q, C] float32 R(q, c) (0 without γ, relations or boxes)
    assignment: Tensor  # [Q, C, w] int64 set member matched to each query member, -1 = none; w = 1 without re-ranking
    checks: Tensor  # float32 zero scalar: the candidates' rows check; add it to the scores so a compiler keeps it


def candidate_terms(
    cfg: HeadConfig,
    q: QuerySide,
    g: GallerySide,
    ids: Tensor,
    first_scores: Tensor,
    anchors: Anchors | None,
    *,
    parts_mode: bool,
    rerank: bool,
    neighbourhood_cost: Callable[[], Tensor] | None = None,
    stage: Callable[[str], ContextManager] | None = None,
) -> CandidateTerms:
    """The per-candidate terms of S(q, c) for the candidates `ids` of each query.

    Stage 1's β penalty and δ contrast (`anchor_terms`: per object on the
    candidates' regions in parts mode, else on the pooled embeddings), then
    stage 2: the cost between the query's set and each candidate's
    (`part_cost` with the pad `pad_cost(n, n)`, or neighbourhood mode's
    cost from `neighbourhood_cost`), the matching, the alignment and the
    structure term. In parts mode without re-ranking the candidates' rows of
    `gallery_parts` are value-checked here (with re-ranking `part_cost`
    checks them on its own read of the same rows).

    Args:
        cfg: λ, γ, β, δ, α (whether the move took the pooled penalty),
            matching, backend, solver.
        q: the query side; `parts` `[Q, m, D]` (normalised here), `parts_mask`
            `[Q, m]`, `relations` `[Q, r, 3]` are read, the rest is not.
        g: the gallery side; `embeddings` `[N, D]`, `parts` `[N, n, D]` (float,
            or compact: float16, int8 with `parts_scale` `[N, n]`),
            `parts_mask` `[N, n]`, `part_boxes` `[N, n, 4]` are read.
        ids: `[Q, C]` int64 candidate rows of `g`.
        first_scores: `[Q, C]` float32 q·c, read by the pooled penalty only.
        anchors: the anchor pairs (`steering_anchors`), None = no β / δ.
        parts_mode: match part sets (`uses_parts`), else neighbourhoods.
        rerank: compute A and R (λ > 0 or γ > 0).
        neighbourhood_cost: neighbourhood mode (`rerank` without
            `parts_mode`): returns the cost `[Q, C, k, k]`
            (`geosteer.stages.rerank.neighbourhood_cost`), built by the
            caller from its view of the kNN sets; called inside the cost stage.
        stage: the head's `stage_hook` (name -> context manager) or None.

    Returns:
        `CandidateTerms`.

    Raises:
        ValueError: neighbourhood mode (`rerank` without `parts_mode`) without
            a `neighbourhood_cost`.
    """
    if rerank and not parts_mode and neighbourhood_cost is None:
        raise ValueError("neighbourhood_cost is needed to re-rank without parts_mode: a callable returning the "
                         "cost [Q, C, k, k] (geosteer.stages.rerank.neighbourhood_cost)")
    timed = (lambda name: contextlib.nullcontext()) if stage is None else stage  # noqa: E731
    flags = first_scores.new_zeros((), dtype=torch.float32)
    gmask = None
    if parts_mode:
        gmask = g.parts_mask if g.parts_mask is not None else _all_true(g.parts.shape[:2], ids.device)
    # With α > 0 the pooled penalty is the move's (`moved_scores`), from the sims it already has.
    penalty_here = anchors is not None and cfg.beta > 0 and (parts_mode or not cfg.alpha > 0)
    contrast_here = anchors is not None and cfg.delta > 0
    penalty, contrast = None, torch.zeros_like(first_scores)
    if penalty_here or contrast_here:
        with timed("steer"):
            if parts_mode and not rerank:
                flags = flags + check_rows(g.parts, gmask, ids, "gallery_parts", g.parts_scale)
            pos, neg, neg_mask = anchors
            penalty, con = anchor_terms(pos, neg, neg_mask, ids, g.embeddings, g.parts if parts_mode else None, gmask,
                                        first_scores, penalty_here, contrast_here, cfg.backend,
                                        g.parts_scale if parts_mode else None)
            contrast = contrast if con is None else con
    align, structure = torch.zeros_like(first_scores), torch.zeros_like(first_scores)
    cols = torch.full((*ids.shape, 1), -1, dtype=torch.long, device=ids.device)
    if rerank:
        with timed("cost"):
            if parts_mode:
                qp = F.normalize(q.parts, dim=-1)
                qmask = q.parts_mask if q.parts_mask is not None else _all_true(qp.shape[:2], qp.device)
                # pad_cost(n, n) >= pad_cost(m, n): valid for every m, and one value per
                # gallery, so torch.compile(dynamic=True) does not recompile per m.
                pad = pad_cost(g.parts.shape[1], g.parts.shape[1])
                cost = part_cost(qp, qmask, ids, g.parts, gmask, pad, cfg.backend, "gallery_parts", g.parts_scale)
                num_valid = qmask.sum(dim=1)
            else:
                cost = neighbourhood_cost()
                num_valid = torch.full((ids.shape[0],), cost.shape[2], device=ids.device)
        with timed("assign"):
            cols = match(cost, cfg.matching, cfg.backend, cfg.solver)
        with timed("alignment"):
            align, cols = alignment(cost, cols, num_valid)
        if cfg.gamma > 0 and q.relations is not None and g.part_boxes is not None:
            with timed("structure"):
                structure = relation_score(cols, ids, g.part_boxes, q.relations)
    return CandidateTerms(penalty, contrast, align, structure, cols, flags)


def moved_scores(
    cfg: HeadConfig, query: Tensor, gallery: Tensor, ids: Tensor, first_scores: Tensor, anchors: Anchors,
    neighbors: int, parts_mode: bool, valid: Tensor | None = None,
) -> Tensor:
    """Stage 1's query move: q'·c `[Q, K]` float32, less the β penalty when it is pooled.

    The pooled penalty relu(max_j c·u_j - c·q) is taken from the move's own
    candidate-by-negative similarities (one projection of the pool's rows);
    `candidate_terms` leaves it out whenever α > 0.

    Args:
        cfg: α, β, backend, steer_design.
        query: `[Q, D]` unit queries; gallery `[N', D]` the rows `ids` index.
        ids: `[Q, K]` the candidate pool, best first; first_scores `[Q, K]` q·c.
        anchors: the anchor pairs (`steering_anchors`).
        neighbors: k of the neighbourhoods, at most K.
        parts_mode: the penalty is measured on regions (by `candidate_terms`), not here.
        valid: `[Q, K]` bool, False = a filter's padding, kept out of the
            steering neighbourhoods (`steer_scores`); None = all valid.
    """
    pos, neg, neg_mask = anchors
    s, neg_sims = steer_scores(query, gallery, ids, first_scores, pos, neg, neg_mask, neighbors, cfg.alpha,
                               cfg.backend, cfg.steer_design, valid)
    if cfg.beta > 0 and not parts_mode:
        s = s - cfg.beta * confuser_penalty(first_scores, neg_sims, neg_mask)
    return s


def uses_parts(cfg: HeadConfig, query_parts: Tensor | None, gallery_parts: Tensor | None, *, pool: bool = True) -> bool:
    """Whether the candidates are scored by matching part sets (parts mode) rather than neighbourhoods.

    Args:
        cfg: mode, λ, γ.
        query_parts, gallery_parts: the call's part sets, or None.
        pool: the caller has a candidate pool (the heads). Without one
            (`score_pairs`) neighbourhood mode cannot run, so re-ranking
            needs both part sets.

    Raises:
        ValueError: mode="parts" without both sets; λ > 0 with only one of
            them (without a pool: without both); without a pool,
            mode="neighbourhood" with λ > 0 or γ > 0.
    """
    have = query_parts is not None and gallery_parts is not None
    if not pool and cfg.mode == "neighbourhood" and (cfg.lam > 0 or cfg.gamma > 0):
        raise ValueError(
            "config.mode='neighbourhood' matches neighbourhoods of the candidate pool, and pair scoring has no pool; "
            "use mode='parts' or 'auto' with query_parts [Q, m, D] and gallery_parts [N, n, D]"
        )
    if cfg.mode == "neighbourhood":
        return False
    if cfg.mode == "parts" and not have:
        raise ValueError("mode='parts' needs both query_parts [Q, m, D] and gallery_parts [N, n, D]")
    half = (query_parts is None) != (gallery_parts is None)
    if cfg.lam > 0 and not have and (half or not pool):
        missing = "gallery_parts [N, n, D]" if query_parts is not None else "query_parts [Q, m, D]"
        hint = "" if pool else (" (neighbourhood mode needs a candidate pool, and pair scoring has none); "
                                "pass both part sets, or lam=0 for the cosine alone")
        raise ValueError(f"part matching needs both part sets; {missing} is missing{hint}")
    return have


def _all_true(shape: torch.Size | tuple[int, ...], device: torch.device) -> Tensor:
    return torch.ones(tuple(shape), dtype=torch.bool, device=device)
