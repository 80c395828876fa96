"""The geosteer head: first stage -> steering -> part matching -> fused ranking."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ContextManager, NamedTuple

import torch.nn.functional as F
import torch
from torch import Tensor, nn

from geosteer.config import HeadConfig
from geosteer.inputs import GallerySide, QuerySide, gallery_side, num_candidates, query_side, validate
from geosteer.ops.first_stage import first_stage as exact_first_stage
from geosteer.ops.first_stage import masked_first_stage
from geosteer.stages.candidates import candidate_terms, moved_scores, uses_parts
from geosteer.stages.fuse import fused_score
from geosteer.stages.rerank import neighbourhood_cost, neighbours_of
from geosteer.stages.steer import steering_anchors

#: The stages of one forward call, in order; a `stage_hook` sees each one it
#: runs (validate, first_stage and fuse always; the others when configured).
#: "steer" is entered twice when both run: the α query move, then the β / δ
#: terms of the candidates (`geosteer.stages.candidates.candidate_terms`).
STAGES: tuple[str, ...] = ("validate", "first_stage", "steer", "cost", "assign", "alignment", "structure", "fuse")

#: `stage_hook(name)` returns a context manager wrapped around stage `name`.
StageHook = Callable[[str], ContextManager]


class HeadResult(NamedTuple):
    """What the head returns; every `[Q, K]` field is in final ranking order, K = min(k, N).

    Under a filter (`allowed`), a row with fewer than K allowed items ends in
    padding columns: `indices` -1, `scores` and `first_stage_scores` -inf
    (their other fields are meaningless).
    """

    indices: Tensor  # [Q, K] int64 gallery ids, best first
    scores: Tensor  # [Q, K] float32 fused scores S(q, c), descending
    first_stage_scores: Tensor  # [Q, K] float32 q·c
    steered_scores: Tensor  # [Q, K] float32 q'·c (= first stage when α = 0), minus the β penalty
    alignment: Tensor  # [Q, K] float32 A(q, c) (0 when λ = 0)
    structure: Tensor  # [Q, K] float32 R(q, c) (0 without relations)
    assignment: Tensor  # [Q, K, m] int64 region matched to each query part, -1 = none
    steering: Tensor | None = None  # [Q, K] float32 C(q, c), the δ term (0 when δ = 0)
    # [Q, K] int64: each result's position in the first-stage (cosine) order, 0 = the
    # first stage's best; `indices.gather(1, first_stage_rank.argsort(1))` is the cosine top-K.
    first_stage_rank: Tensor | None = None


class GeoSteerHead(nn.Module):
    """Training-free re-ranking head for CLIP-style retrieval.

    Takes embeddings (no model inside): L2-normalised queries `[Q, D]` and
    gallery `[N, D]`, optional part sets, contrast embeddings and relations,
    and returns the top-K re-ranked by
    `S = (1 - λ)·s + λ·A + γ·R + δ·C` where `s` is the (steered) cosine and
    C the per-object contrast toward the positive anchors and away from the
    negatives (`geosteer.stages.steer.anchor_terms`). K is
    `min(config.k, N)`: a gallery smaller than k gives results of N columns.

    Args:
        config: a `HeadConfig`; keyword arguments override its fields
            (`GeoSteerHead(k=20, lam=0.6)` works without one).
        stage_hook: optional `name -> context manager` wrapped around each
            stage of `STAGES` that a call runs (eager use: timing, tracing;
            leave it None under `torch.compile`).
    """

    def __init__(self, config: HeadConfig | None = None, *, stage_hook: StageHook | None = None, **overrides) -> None:
        super().__init__()
        if config is not None and not isinstance(config, HeadConfig):
            raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
        if stage_hook is not None and not callable(stage_hook):
            raise TypeError(f"stage_hook must be callable (name -> context manager), got {type(stage_hook).__name__}")
        self.config = (config or HeadConfig()).replace(**overrides)
        self.stage_hook = stage_hook

    def extra_repr(self) -> str:
        c = self.config
        return (f"k={c.k}, neighbors={c.neighbors}, lam={c.lam}, alpha={c.alpha}, beta={c.beta}, gamma={c.gamma}, "
                f"delta={c.delta}, mode={c.mode}, matching={c.matching}")

    def forward(
        self,
        query: Tensor | QuerySide,
        gallery: Tensor | GallerySide,
        *,
        query_parts: Tensor | None = None,
        query_parts_mask: Tensor | None = None,
        gallery_parts: Tensor | None = None,
        gallery_parts_mask: Tensor | None = None,
        negatives: Tensor | None = None,
        negatives_mask: Tensor | None = None,
        positives: Tensor | None = None,
        query_relations: Tensor | None = None,
        gallery_part_boxes: Tensor | None = None,
        gallery_neighbors: Tensor | None = None,
        first_stage: tuple[Tensor, Tensor] | None = None,
        gallery_parts_scale: Tensor | None = None,
        allowed: Tensor | None = None,
    ) -> HeadResult:
        """Re-rank the gallery for each query.

        Args:
            query: `[Q, D]` float, L2-normalised, or a whole `QuerySide`
                (then its part/anchor keywords stay None).
            gallery: `[N, D]` same dtype/device, L2-normalised, or a whole
                `GallerySide`.
            query_parts: `[Q, m, D]` part embeddings (one per object phrase),
                L2-normalised where valid.
            query_parts_mask: `[Q, m]` bool, True = valid (default all valid).
            gallery_parts: `[N, n, D]` region / annotation embeddings,
                L2-normalised where valid: the query's dtype, or compact
                (DESIGN §5): float16, or int8 with `gallery_parts_scale`.
            gallery_parts_mask: `[N, n]` bool.
            negatives: `[Q, u, D]` contrast (confuser) embeddings for steering,
                L2-normalised where valid.
            negatives_mask: `[Q, u]` bool.
            positives: `[Q, u, D]` or `[Q, 1, D]` L2-normalised positive anchors,
                paired with the negatives; default: the query parts when m == u, else q.
            query_relations: `[Q, r, 3]` int64 (i, j, type) over query parts,
                type indexes `geosteer.RELATIONS`; i < 0 marks padding.
            gallery_part_boxes: `[N, n, 4]` float boxes of gallery parts.
            gallery_neighbors: `[N, k']` int64 kNN graph of the gallery
                (`geosteer.knn_graph`), k' >= neighbors, for neighbourhood mode;
                without it the candidates' neighbours are searched per call
                (Q·K·N·D work: fine for small galleries only).
            first_stage: `(scores [Q, K'], ids [Q, K'])` from an external
                inner-product index (FAISS) with K' >= K and distinct ids per
                row, used instead of the exact first stage.
            gallery_parts_scale: `[N, n]` float32 scale of each int8 row of
                `gallery_parts` (`geosteer.quantize.quantize_rows`); None
                for float parts.
            allowed: a filter: `[N]` bool (every query) or `[Q, N]` bool
                (per query), True = the item may be returned. Applied in the
                first stage (disallowed scores are -inf before the top-K), so
                K allowed candidates still come back and the result is the
                head's on the filtered gallery. A row with fewer than K
                allowed items is padded (id -1, score -inf, last), as shapes
                stay `[Q, K]` under compile. With an external `first_stage`
                its disallowed ids are dropped the same way. Not with
                neighbourhood mode (its neighbour sets span the whole gallery).

        Returns:
            `HeadResult`, every `[Q, K]` field in final order, K = min(k, N).

        Raises:
            TypeError / ValueError: naming the bad argument (DESIGN §5): wrong
                types (a numpy array: use `torch.from_numpy`), shapes, dtypes or
                devices; NaN/inf; embeddings that are not L2-normalised (to a
                dtype's rounding; masked-out rows exempt; `gallery_parts` in
                the candidates' rows only); all-masked rows; ids or relation
                rows out of range; repeated first-stage ids.
        """
        cfg = self.config
        q = query_side(query, query_parts=query_parts, query_parts_mask=query_parts_mask, negatives=negatives,
                       negatives_mask=negatives_mask, positives=positives, query_relations=query_relations)
        g = gallery_side(gallery, gallery_parts=gallery_parts, gallery_parts_mask=gallery_parts_mask,
                         gallery_part_boxes=gallery_part_boxes, gallery_neighbors=gallery_neighbors,
                         gallery_parts_scale=gallery_parts_scale)
        parts_mode = uses_parts(cfg, q.parts, g.parts)
        rerank = cfg.lam > 0 or cfg.gamma > 0
        with self._stage("validate"):
            checks_ = validate(cfg, q, g, first_stage, parts_mode, rerank)
            if allowed is not None:
                check_allowed(allowed, q.embeddings, g.embeddings.shape[0], parts_mode or not rerank)
            query_emb = F.normalize(q.embeddings, dim=-1)
            num_cands = num_candidates(cfg, g.embeddings.shape[0])
            pool = min(cfg.neighbors, num_cands)
        with self._stage("first_stage"):
            s0, ids = self._candidates(query_emb, g.embeddings, first_stage, num_cands, allowed)
            valid = None if allowed is None else allowed.expand(ids.shape[0], -1).gather(1, ids)  # [Q, K]
        anchors = None
        if q.negatives is not None and (cfg.alpha > 0 or cfg.beta > 0 or cfg.delta > 0):
            anchors = steering_anchors(query_emb, q.parts, q.positives, q.negatives, q.negatives_mask)
        s = s0
        if anchors is not None and cfg.alpha > 0:
            with self._stage("steer"):
                s = moved_scores(cfg, query_emb, g.embeddings, ids, s0, anchors, pool, parts_mode, valid)
        terms = candidate_terms(cfg, q, g, ids, s0, anchors, parts_mode=parts_mode, rerank=rerank,
                                neighbourhood_cost=lambda: self._neighbourhood_cost(g, ids, pool),
                                stage=self.stage_hook)
        if terms.penalty is not None:
            s = s - cfg.beta * terms.penalty
        with self._stage("fuse"):
            return ranked(cfg, ids, s0, s, terms.alignment, terms.structure, terms.contrast, terms.assignment,
                          checks_ + terms.checks, valid)

    def _stage(self, name: str) -> ContextManager:
        return contextlib.nullcontext() if self.stage_hook is None else self.stage_hook(name)

    def _candidates(
        self, query: Tensor, gallery: Tensor, first_stage: tuple[Tensor, Tensor] | None, num_cands: int,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Stage 0: first-stage scores `[Q, K]` float32 (descending) and ids `[Q, K]`.

        With `allowed` (`[N]` / `[Q, N]` bool) the allowed candidates come
        first, descending; padding (disallowed picks, true scores) after them.
        """
        cfg = self.config
        if first_stage is None:
            if allowed is not None:
                return masked_first_stage(query, gallery, allowed, num_cands, cfg.chunk_elements)
            return exact_first_stage(query, gallery, num_cands, cfg.chunk_elements, cfg.backend, cfg.screen)
        scores, ids = first_stage
        scores, ids = scores.float(), ids.long()
        key = scores
        if allowed is not None:  # [Q, K'] whether each external id is allowed
            key = scores.masked_fill(~allowed.expand(ids.shape[0], -1).gather(1, ids), float("-inf"))
        top = key.topk(num_cands, dim=1, sorted=True)  # external order need not be sorted
        return scores.gather(1, top.indices), ids.gather(1, top.indices)

    def _neighbourhood_cost(self, g: GallerySide, ids: Tensor, k: int) -> Tensor:
        """Neighbourhood mode's cost `[Q, K, k, k]`: q's k best pool items vs each candidate's k nearest items."""
        cfg = self.config
        if g.neighbors is None:
            nbrs = neighbours_of(g.embeddings, ids, k, cfg.chunk_elements, cfg.backend, cfg.screen)
        else:
            nbrs = g.neighbors[:, :k][ids]
        return neighbourhood_cost(g.embeddings, g.embeddings[ids[:, :k]], nbrs, cfg.backend)


def check_allowed(allowed, query: Tensor, num_items: int, exact: bool) -> None:
    """Static checks of the head's `allowed` filter (DESIGN §5): a `[N]` or `[Q, N]` bool tensor on the query's device.

    Args:
        allowed: the filter.
        query: `[Q, D]` the queries (their count and device).
        num_items: N.
        exact: False in neighbourhood mode, which the filter cannot make exact.

    Raises:
        TypeError: not a bool tensor. ValueError: wrong shape or device; neighbourhood mode.
    """
    if not isinstance(allowed, Tensor):
        raise TypeError(f"allowed must be a bool tensor [N] or [Q, N], got {type(allowed).__name__}")
    if allowed.dtype != torch.bool:
        raise TypeError(f"allowed must be a bool tensor [N] or [Q, N], got dtype {allowed.dtype}")
    num_queries = query.shape[0]
    if allowed.dim() not in (1, 2) or allowed.shape[-1] != num_items or (
            allowed.dim() == 2 and allowed.shape[0] != num_queries):
        raise ValueError(f"allowed must be [N={num_items}] or [Q={num_queries}, N={num_items}] bool, "
                         f"got {list(allowed.shape)}")
    if allowed.device != query.device:
        raise ValueError(f"allowed is on {allowed.device} but query is on {query.device}")
    if not exact:
        raise ValueError("allowed (a filter) does not work with neighbourhood mode, whose neighbour sets span the "
                         "whole gallery; use mode='parts' with part sets, or lam=0 and gamma=0")


def ranked(
    cfg: HeadConfig, ids: Tensor, s0: Tensor, steered: Tensor, align: Tensor, structure: Tensor, contrast: Tensor,
    cols: Tensor, checks: Tensor, valid: Tensor | None = None,
) -> HeadResult:
    """Fuse the candidates' terms (`fused_score`) and sort them (stable): the head's last stage.

    Args:
        cfg: λ, γ, δ.
        ids: `[Q, K]` candidate ids in first-stage order (s0 descending); s0, steered, align, structure,
            contrast `[Q, K]` float32.
        cols: `[Q, K, m]` matched region per part (-1 = none).
        checks: the value checks' zero scalar (added, so a compiler keeps them).
        valid: `[Q, K]` bool, False = a filter's padding column (sorted last:
            id -1, scores -inf); None = all valid.

    Returns:
        The `HeadResult`, every field in final order.
    """
    fused = fused_score(cfg, steered, align, structure, contrast) + checks
    if valid is not None:
        fused = fused.masked_fill(~valid, float("-inf"))
        s0 = s0.masked_fill(~valid, float("-inf"))
        ids = ids.masked_fill(~valid, -1)
    scores, order = fused.sort(dim=1, descending=True, stable=True)
    pick = lambda t: t.gather(1, order)  # noqa: E731
    return HeadResult(
        indices=pick(ids), scores=scores, first_stage_scores=pick(s0), steered_scores=pick(steered),
        alignment=pick(align), structure=pick(structure),
        assignment=cols.gather(1, order[..., None].expand(-1, -1, cols.shape[-1])), steering=pick(contrast),
        first_stage_rank=order,  # the candidates came in first-stage order
    )
