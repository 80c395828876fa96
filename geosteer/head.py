"""The geosteer head: first stage -> steering -> part matching -> fused ranking."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ContextManager, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geosteer.config import HeadConfig
from geosteer.inputs import GallerySide, QuerySide, gallery_side, num_candidates, query_side, validate
from geosteer.ops.checks import check_rows
from geosteer.ops.first_stage import first_stage as exact_first_stage
from geosteer.ops.part_cost import pad_cost, part_cost
from geosteer.stages.rerank import alignment, match, neighbourhood_cost, neighbours_of
from geosteer.stages.fuse import fused_score
from geosteer.stages.steer import anchor_terms, steer_scores, steering_anchors
from geosteer.stages.structure import relation_score

#: The stages of one forward call, in order; a `stage_hook` sees each one it
#: runs (validate, first_stage and fuse always; the others when configured).
STAGES: tuple[str, ...] = ("validate", "first_stage", "steer", "cost", "assign", "alignment", "structure", "fuse")

#: `stage_hook(name)` returns a context manager wrapped around stage `name`.
StageHook = Callable[[str], ContextManager]


class HeadResult(NamedTuple):
    """What the head returns; every `[Q, K]` field is in final ranking order, K = min(k, N)."""

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
                L2-normalised where valid.
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
                         gallery_part_boxes=gallery_part_boxes, gallery_neighbors=gallery_neighbors)
        parts_mode = uses_parts(cfg, q.parts, g.parts)
        rerank = cfg.lam > 0 or cfg.gamma > 0
        with self._stage("validate"):
            checks_ = validate(cfg, q, g, first_stage, parts_mode, rerank)
            query_emb = F.normalize(q.embeddings, dim=-1)
            num_cands = num_candidates(cfg, g.embeddings.shape[0])
            pool = min(cfg.neighbors, num_cands)
        with self._stage("first_stage"):
            s0, ids = self._candidates(query_emb, g.embeddings, first_stage, num_cands)
            steering = (cfg.beta > 0 or cfg.delta > 0) and q.negatives is not None
            if parts_mode and steering and not rerank:
                # gallery_parts is read in the candidates' rows only: those are
                # checked (finite, L2-normalised where valid). With re-ranking,
                # part_cost checks them on its own read of the same rows
                # (`unit_check`): a separate pass cost as much as part_cost itself.
                checks_ = checks_ + check_rows(g.parts, g.parts_mask, ids, "gallery_parts")
        s, contrast = self._steer(query_emb, q, g if parts_mode else None, g.embeddings, ids, s0, pool)
        align, structure, cols = torch.zeros_like(s0), torch.zeros_like(s0), None
        if rerank:
            align, cols = self._align(query_emb, q, g, ids, parts_mode, pool)
            if cfg.gamma > 0 and q.relations is not None and g.part_boxes is not None:
                with self._stage("structure"):
                    structure = relation_score(cols, ids, g.part_boxes, q.relations)
        with self._stage("fuse"):
            if cols is None:
                cols = torch.full((*ids.shape, 1), -1, dtype=torch.long, device=ids.device)
            return ranked(cfg, ids, s0, s, align, structure, contrast, cols, checks_)

    def _stage(self, name: str) -> ContextManager:
        return contextlib.nullcontext() if self.stage_hook is None else self.stage_hook(name)

    def _candidates(
        self, query: Tensor, gallery: Tensor, first_stage: tuple[Tensor, Tensor] | None, num_cands: int
    ) -> tuple[Tensor, Tensor]:
        """Stage 0: first-stage scores `[Q, K]` float32 (descending) and ids `[Q, K]`."""
        cfg = self.config
        if first_stage is None:
            return exact_first_stage(query, gallery, num_cands, cfg.chunk_elements, cfg.backend, cfg.screen)
        scores, ids = first_stage
        top = scores.float().topk(num_cands, dim=1, sorted=True)  # external order need not be sorted
        return top.values, ids.long().gather(1, top.indices)

    def _steer(
        self, query: Tensor, q: QuerySide, regions: GallerySide | None, gallery: Tensor, ids: Tensor, s0: Tensor,
        pool: int,
    ) -> tuple[Tensor, Tensor]:
        """Stage 1: steered scores q'·c less the β confuser penalty, and the δ contrast C(q, c), both `[Q, K]`.

        With region sets (`regions`, parts mode) the penalty and the contrast
        are measured per object on the regions, else on the pooled
        embeddings (`anchor_terms`: one projection serves both).
        """
        cfg = self.config
        zero = torch.zeros_like(s0)
        if q.negatives is None or not (cfg.alpha > 0 or cfg.beta > 0 or cfg.delta > 0):
            return s0, zero
        with self._stage("steer"):
            pos, neg, neg_mask = steering_anchors(query, q.parts, q.positives, q.negatives, q.negatives_mask)
            s, neg_sims = s0, None
            if cfg.alpha > 0:
                s, neg_sims = steer_scores(query, gallery, ids, s0, pos, neg, neg_mask, pool, cfg.alpha,
                                           cfg.backend, cfg.steer_design)
            parts = gmask = None
            if regions is not None:
                parts = regions.parts
                gmask = regions.parts_mask if regions.parts_mask is not None else _all_true(parts.shape[:2], s0.device)
            penalty, contrast = anchor_terms(pos, neg, neg_mask, ids, gallery, parts, gmask, s0, cfg.beta > 0,
                                             cfg.delta > 0, cfg.backend, neg_sims)
            if penalty is not None:
                s = s - cfg.beta * penalty
            return s, zero if contrast is None else contrast

    def _align(
        self, query: Tensor, q: QuerySide, g: GallerySide, ids: Tensor, parts_mode: bool, pool: int
    ) -> tuple[Tensor, Tensor]:
        """Stage 2: alignment A(q, c) `[Q, K]` and the matched region per part `[Q, K, m]`."""
        cfg = self.config
        with self._stage("cost"):
            if parts_mode:
                qp = F.normalize(q.parts, dim=-1)
                qmask = q.parts_mask if q.parts_mask is not None else _all_true(qp.shape[:2], qp.device)
                gmask = g.parts_mask if g.parts_mask is not None else _all_true(g.parts.shape[:2], qp.device)
                # pad_cost(n, n) >= pad_cost(m, n): as valid for every m, and one value
                # per gallery, so torch.compile(dynamic=True) does not recompile per m.
                pad = pad_cost(g.parts.shape[1], g.parts.shape[1])
                cost = part_cost(qp, qmask, ids, g.parts, gmask, pad, cfg.backend, "gallery_parts")
                num_valid = qmask.sum(dim=1)
            else:
                k = pool
                if g.neighbors is None:
                    nbrs = neighbours_of(g.embeddings, ids, k, cfg.chunk_elements, cfg.backend, cfg.screen)
                else:
                    nbrs = g.neighbors[:, :k][ids]
                cost = neighbourhood_cost(g.embeddings, ids, nbrs, k, cfg.backend)
                num_valid = torch.full((query.shape[0],), k, device=query.device)
        with self._stage("assign"):
            cols = match(cost, cfg.matching, cfg.backend, cfg.solver)
        with self._stage("alignment"):
            return alignment(cost, cols, num_valid)


def _all_true(shape, device) -> Tensor:
    return torch.ones(tuple(shape), dtype=torch.bool, device=device)


def uses_parts(cfg: HeadConfig, query_parts: Tensor | None, gallery_parts: Tensor | None) -> bool:
    """Whether a call matches part sets (parts mode) rather than neighbourhoods; refuses a half-given pair.

    Raises:
        ValueError: mode="parts" without both sets; λ > 0 with only one of them.
    """
    mode = cfg.mode
    if mode == "neighbourhood":
        return False
    if mode == "parts" and (query_parts is None or gallery_parts is None):
        raise ValueError("mode='parts' needs both query_parts [Q, m, D] and gallery_parts [N, n, D]")
    if (query_parts is None) != (gallery_parts is None) and cfg.lam > 0:
        missing = "gallery_parts [N, n, D]" if gallery_parts is None else "query_parts [Q, m, D]"
        raise ValueError(f"part matching needs both part sets; {missing} is missing")
    return query_parts is not None and gallery_parts is not None


def ranked(
    cfg: HeadConfig, ids: Tensor, s0: Tensor, steered: Tensor, align: Tensor, structure: Tensor, contrast: Tensor,
    cols: Tensor, checks: Tensor,
) -> HeadResult:
    """Fuse the candidates' terms (`fused_score`) and sort them (stable): the head's last stage.

    Args:
        cfg: λ, γ, δ.
        ids: `[Q, K]` candidate ids in first-stage order (s0 descending); s0, steered, align, structure,
            contrast `[Q, K]` float32.
        cols: `[Q, K, m]` matched region per part (-1 = none).
        checks: the value checks' zero scalar (added, so a compiler keeps them).

    Returns:
        The `HeadResult`, every field in final order.
    """
    fused = fused_score(cfg, steered, align, structure, contrast) + checks
    scores, order = fused.sort(dim=1, descending=True, stable=True)
    pick = lambda t: t.gather(1, order)  # noqa: E731
    return HeadResult(
        indices=pick(ids), scores=scores, first_stage_scores=pick(s0), steered_scores=pick(steered),
        alignment=pick(align), structure=pick(structure),
        assignment=cols.gather(1, order[..., None].expand(-1, -1, cols.shape[-1])), steering=pick(contrast),
        first_stage_rank=order,  # the candidates came in first-stage order
    )
