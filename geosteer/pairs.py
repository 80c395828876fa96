"""Pair scoring: the head's fused score for given (query, candidate) pairs, with no first stage.

`GeoSteerHead` retrieves: it picks each query's top-K candidates by cosine,
re-scores and re-sorts them. Benchmarks of the "which caption fits this
image better" kind (SugarCrepe, ARO, Winoground) instead fix the pairs in
advance and compare their scores. `score_pairs` computes, for exactly the
pairs asked for,

    S(q, c) = (1 - λ)·s(q, c) + λ·A(q, c) + γ·R(q, c) + δ·C(q, c)

with the head's own per-candidate function
(`geosteer.stages.candidates.candidate_terms`: the β confuser penalty, the
δ contrast, part cost, matching, alignment, structure) and its fuse: the
same number the head gives a candidate it keeps, without the first stage,
the candidate pool or sorting.

Pair layout: `ids [Q, C]` int64 rows into the candidate side. Query q is
scored against candidates `ids[q, 0..C-1]`; `ids=None` means every query
against every candidate (C = N, column c = candidate c). One image against
two captions is Q = 2 captions, C = 1 (`ids = [[0], [0]]`); a Winoground
example is Q = 2 captions, C = 2 images. Ids may repeat within a row.

What needs the candidate pool cannot be scored per pair and is refused:
the query move (α > 0: its directions come from the pool's
neighbourhoods) and neighbourhood mode (its sets are the pool's head and
each candidate's kNN). The β penalty and the δ contrast are per candidate
and are applied.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer.config import HeadConfig
from geosteer.inputs import GallerySide, QuerySide, gallery_side, on_device, query_side, tensor, validate
from geosteer.ops import checks
from geosteer.ops.project import project
from geosteer.stages.candidates import candidate_terms, uses_parts
from geosteer.stages.fuse import fused_score
from geosteer.stages.steer import steering_anchors


class PairScores(NamedTuple):
    """Per-pair terms of the fused score; every field is `[Q, C]` in the order of `ids` (no sorting)."""

    scores: Tensor  # [Q, C] float32 fused S(q, c)
    cosine: Tensor  # [Q, C] float32 s = q·c
    steered: Tensor  # [Q, C] float32 q·c less the β penalty (= cosine when β = 0 or without negatives)
    alignment: Tensor  # [Q, C] float32 A(q, c) (0 when λ = 0 and γ = 0)
    structure: Tensor  # [Q, C] float32 R(q, c) (0 without γ, relations or boxes)
    assignment: Tensor  # [Q, C, m] int64 candidate part matched to each query part, -1 = none
    steering: Tensor  # [Q, C] float32 C(q, c), the δ contrast (0 when δ = 0 or without negatives)


def score_pairs(
    query: Tensor | QuerySide,
    gallery: Tensor | GallerySide,
    config: HeadConfig | None = None,
    *,
    ids: Tensor | None = None,
    query_parts: Tensor | None = None,
    query_parts_mask: Tensor | None = None,
    gallery_parts: Tensor | None = None,
    gallery_parts_mask: Tensor | None = None,
    negatives: Tensor | None = None,
    negatives_mask: Tensor | None = None,
    positives: Tensor | None = None,
    query_relations: Tensor | None = None,
    gallery_part_boxes: Tensor | None = None,
    gallery_parts_scale: Tensor | None = None,
) -> PairScores:
    """Score given (query, candidate) pairs with the head's fused score, no first stage.

    Takes the head's inputs (a `QuerySide` / `GallerySide` or the keyword
    tensors, same names and shapes as `GeoSteerHead.forward`) and which
    pairs to score.

    Args:
        query: `[Q, D]` float, L2-normalised, or a whole `QuerySide`.
        gallery: the candidates, `[N, D]` same dtype/device, L2-normalised,
            or a whole `GallerySide`.
        config: a `HeadConfig` (λ, γ, β, δ, matching, backend, solver are read;
            k, neighbors and the first-stage knobs are not); default
            `HeadConfig()`, as the head's.
        ids: `[Q, C]` int64 (or int32) candidate rows in `[0, N)`, C >= 1:
            row q lists the candidates query q is scored against; None = all
            pairs (C = N, in gallery order).
        query_parts, query_parts_mask, gallery_parts, gallery_parts_mask,
        negatives, negatives_mask, positives, query_relations,
        gallery_part_boxes, gallery_parts_scale: as in `GeoSteerHead.forward`
        (compact region sets, DESIGN §5, included).

    Returns:
        `PairScores`, each field `[Q, C]` (assignment `[Q, C, m]`, m = 1
        without part matching), column c for candidate `ids[q, c]`. For a
        pair the head keeps, the fields equal the head's `scores`,
        `first_stage_scores`, `steered_scores`, `alignment`, `structure`,
        `assignment`, `steering` (`tests/test_pairs.py`).

    Raises:
        TypeError: `config` is not a HeadConfig; `ids` is not an integer
            tensor; the head's type errors (DESIGN §5).
        ValueError: `config.alpha > 0` or neighbourhood mode (both need a
            candidate pool); λ > 0 without both part sets; `ids` not
            `[Q, C]` on the query's device or holding rows outside `[0, N)`;
            the head's value errors (shapes, NaN/inf, norms, masks,
            relations, boxes), naming the argument.

    Cost: the part costs are `[Q, C, m, n]`; all pairs (`ids=None`) of a
    large gallery are Q·N problems, so pass `ids` there.
    """
    if config is not None and not isinstance(config, HeadConfig):
        raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
    cfg = config or HeadConfig()
    if cfg.alpha > 0:
        raise ValueError(
            f"config.alpha={cfg.alpha}: the query move builds its directions from the candidate pool's "
            "neighbourhoods, and pair scoring has no pool; use alpha=0 (beta, the confuser penalty, is per pair)"
        )
    q = query_side(query, query_parts=query_parts, query_parts_mask=query_parts_mask, negatives=negatives,
                   negatives_mask=negatives_mask, positives=positives, query_relations=query_relations)
    g = gallery_side(gallery, gallery_parts=gallery_parts, gallery_parts_mask=gallery_parts_mask,
                     gallery_part_boxes=gallery_part_boxes, gallery_parts_scale=gallery_parts_scale)
    parts_mode = uses_parts(cfg, q.parts, g.parts, pool=False)
    rerank = (cfg.lam > 0 or cfg.gamma > 0) and parts_mode  # γ > 0 alone without part sets: nothing to match
    # validate's neighbourhood-mode checks do not apply to pairs (rerank only with part sets).
    flags = validate(cfg, q, g, None, parts_mode, rerank)
    ids, id_flag = _pair_ids(ids, q.embeddings, g.embeddings.shape[0])
    query_emb = F.normalize(q.embeddings, dim=-1)  # as the head: a no-op on unit rows, kept for identical numbers
    anchors = None
    if (cfg.beta > 0 or cfg.delta > 0) and q.negatives is not None:
        anchors = steering_anchors(query_emb, q.parts, q.positives, q.negatives, q.negatives_mask)
    cosine = project(g.embeddings, ids, query_emb[:, None, :], cfg.backend)[..., 0]
    terms = candidate_terms(cfg, q, g, ids, cosine, anchors, parts_mode=parts_mode, rerank=rerank)
    steered = cosine if terms.penalty is None else cosine - cfg.beta * terms.penalty
    fused = fused_score(cfg, steered, terms.alignment, terms.structure, terms.contrast) + flags + id_flag + terms.checks
    return PairScores(scores=fused, cosine=cosine, steered=steered, alignment=terms.alignment,
                      structure=terms.structure, assignment=terms.assignment, steering=terms.contrast)


def _pair_ids(ids, query: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """`ids` as `[Q, C]` int64 (all pairs when None) and its range-check flag."""
    num_queries = query.shape[0]
    if ids is None:
        ids = torch.arange(num_items, device=query.device).expand(num_queries, num_items)
        return ids, torch.zeros((), device=query.device)  # in range by construction
    tensor("ids", ids, 2, "[Q, C]")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids must be an int64 (or int32) tensor [Q, C] of candidate rows, got {ids.dtype}")
    on_device("ids", ids, query)
    if ids.shape[0] != num_queries or ids.shape[1] == 0:
        raise ValueError(f"ids must have shape [Q={num_queries}, C] with C >= 1, got {list(ids.shape)}")
    ids = ids.long()
    return ids, checks.check_ids(ids, num_items, "ids")
