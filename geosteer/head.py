"""The geosteer head: first stage -> steering -> part matching -> fused ranking."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geosteer import validate
from geosteer.config import HeadConfig
from geosteer.ops import checks
from geosteer.ops.cost import pad_cost, part_cost
from geosteer.ops.first_stage import first_stage as exact_first_stage
from geosteer.ops.project import project
from geosteer.rerank import alignment_from_cost, neighbourhood_cost, neighbours_of, relation_score
from geosteer.steer import confuser_penalty, steer_scores


class HeadResult(NamedTuple):
    """What the head returns; every `[Q, K]` field is in final ranking order."""

    indices: Tensor  # [Q, K] int64 gallery ids, best first
    scores: Tensor  # [Q, K] float32 fused scores S(q, c), descending
    first_stage_scores: Tensor  # [Q, K] float32 q·c
    steered_scores: Tensor  # [Q, K] float32 q'·c (= first stage when α = 0), minus the β penalty
    alignment: Tensor  # [Q, K] float32 A(q, c) (0 when λ = 0)
    structure: Tensor  # [Q, K] float32 R(q, c) (0 without relations)
    assignment: Tensor  # [Q, K, m] int64 region matched to each query part, -1 = none


class GeoSteerHead(nn.Module):
    """Training-free re-ranking head for CLIP-style retrieval.

    Takes embeddings (no model inside): L2-normalised queries `[Q, D]` and
    gallery `[N, D]`, optional part sets, contrast embeddings and relations,
    and returns the top-K re-ranked by
    `S = (1 - λ)·s + λ·A + γ·R` where `s` is the (steered) cosine.

    Args:
        config: a `HeadConfig`; keyword arguments override its fields
            (`GeoSteerHead(k=20, lam=0.6)` works without one).
    """

    def __init__(self, config: HeadConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is not None and not isinstance(config, HeadConfig):
            raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
        self.config = (config or HeadConfig()).replace(**overrides)

    def extra_repr(self) -> str:
        c = self.config
        return f"k={c.k}, neighbors={c.neighbors}, lam={c.lam}, alpha={c.alpha}, beta={c.beta}, gamma={c.gamma}, mode={c.mode}, matching={c.matching}"

    def forward(
        self,
        query: Tensor,
        gallery: Tensor,
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
            query: `[Q, D]` float, L2-normalised (re-normalised here).
            gallery: `[N, D]` same dtype/device, L2-normalised.
            query_parts: `[Q, m, D]` part embeddings (one per object phrase).
            query_parts_mask: `[Q, m]` bool, True = valid (default all valid).
            gallery_parts: `[N, n, D]` region / annotation embeddings, L2-normalised.
            gallery_parts_mask: `[N, n]` bool.
            negatives: `[Q, u, D]` contrast (confuser) embeddings for steering.
            negatives_mask: `[Q, u]` bool.
            positives: `[Q, u, D]` or `[Q, 1, D]` positive anchors, paired with
                the negatives; default: the query parts when m == u, else q.
            query_relations: `[Q, r, 3]` int64 (i, j, type) over query parts,
                type indexes `geosteer.RELATIONS`; i < 0 marks padding.
            gallery_part_boxes: `[N, n, 4]` float boxes of gallery parts.
            gallery_neighbors: `[N, k']` int64 kNN graph of the gallery
                (`geosteer.knn_graph`), k' >= neighbors, for neighbourhood mode;
                without it the candidates' neighbours are searched per call
                (Q·K·N·D work: fine for small galleries only).
            first_stage: `(scores [Q, K'], ids [Q, K'])` from an external index
                (FAISS) with K' >= k, used instead of the exact first stage.

        Returns:
            `HeadResult`, every `[Q, K]` field in final order.

        Raises:
            TypeError / ValueError: naming the bad argument (DESIGN §5).
        """
        cfg = self.config
        parts_mode = self._parts_mode(query_parts, gallery_parts)
        rerank = cfg.lam > 0 or cfg.gamma > 0
        checks_ = self._validate(
            query, gallery, query_parts, query_parts_mask, gallery_parts, gallery_parts_mask,
            negatives, negatives_mask, positives, query_relations, gallery_part_boxes, gallery_neighbors,
            first_stage, parts_mode, rerank,
        )
        query = F.normalize(query, dim=-1)
        num_queries = query.shape[0]

        # Stage 0: candidates.
        if first_stage is None:
            s0, ids = exact_first_stage(query, gallery, cfg.k, cfg.chunk_elements, cfg.backend)
        else:
            s0, ids = _take_external(first_stage, cfg.k)

        # Stage 1: steering and the confuser penalty.
        s = s0
        if negatives is not None and (cfg.alpha > 0 or cfg.beta > 0):
            neg = F.normalize(negatives, dim=-1)
            neg_mask = negatives_mask if negatives_mask is not None else _all_true(neg.shape[:2], neg.device)
            pos = self._positives(query, query_parts, positives, neg.shape[1])
            if cfg.alpha > 0:
                s, neg_sims = steer_scores(query, gallery, ids, s0, pos, neg, neg_mask, cfg.pool_neighbors, cfg.alpha, cfg.backend)
            else:
                neg_sims = project(gallery, ids, neg, cfg.backend)
            if cfg.beta > 0:
                s = s - cfg.beta * confuser_penalty(s0, neg_sims, neg_mask)

        # Stage 2: part matching and structure.
        zeros = torch.zeros_like(s0)
        align, structure = zeros, zeros
        cols = torch.full((num_queries, s0.shape[1], 1), -1, dtype=torch.long, device=s0.device)
        if rerank:
            if parts_mode:
                qp = F.normalize(query_parts, dim=-1)
                qmask = query_parts_mask if query_parts_mask is not None else _all_true(qp.shape[:2], qp.device)
                gmask = gallery_parts_mask if gallery_parts_mask is not None else _all_true(gallery_parts.shape[:2], qp.device)
                cost = part_cost(qp, qmask, ids, gallery_parts, gmask, pad_cost(qp.shape[1], gallery_parts.shape[1]), cfg.backend)
                num_valid = qmask.sum(dim=1)
            else:
                if gallery_neighbors is None:
                    nbrs = neighbours_of(gallery, ids, cfg.pool_neighbors, cfg.chunk_elements, cfg.backend)
                else:
                    nbrs = gallery_neighbors[:, : cfg.pool_neighbors][ids]
                cost = neighbourhood_cost(gallery, ids, nbrs, cfg.pool_neighbors, cfg.backend)
                num_valid = torch.full((num_queries,), cfg.pool_neighbors, device=s0.device)
            align, cols = alignment_from_cost(cost, num_valid, cfg.matching, cfg.backend)
            if cfg.gamma > 0 and query_relations is not None and gallery_part_boxes is not None:
                structure = relation_score(cols, ids, gallery_part_boxes, query_relations)

        fused = (1.0 - cfg.lam) * s + cfg.lam * align + cfg.gamma * structure + checks_
        scores, order = fused.sort(dim=1, descending=True, stable=True)
        pick = lambda t: t.gather(1, order)  # noqa: E731
        return HeadResult(
            indices=pick(ids),
            scores=scores,
            first_stage_scores=pick(s0),
            steered_scores=pick(s),
            alignment=pick(align),
            structure=pick(structure),
            assignment=cols.gather(1, order[..., None].expand(-1, -1, cols.shape[-1])),
        )

    def _parts_mode(self, query_parts: Tensor | None, gallery_parts: Tensor | None) -> bool:
        mode = self.config.mode
        if mode == "neighbourhood":
            return False
        if mode == "parts" and (query_parts is None or gallery_parts is None):
            raise ValueError("mode='parts' needs both query_parts [Q, m, D] and gallery_parts [N, n, D]")
        if (query_parts is None) != (gallery_parts is None) and self.config.lam > 0:
            missing = "gallery_parts [N, n, D]" if gallery_parts is None else "query_parts [Q, m, D]"
            raise ValueError(f"part matching needs both part sets; {missing} is missing")
        return query_parts is not None and gallery_parts is not None

    def _positives(self, query: Tensor, query_parts: Tensor | None, positives: Tensor | None, num_neg: int) -> Tensor:
        if positives is not None:
            return F.normalize(positives, dim=-1)
        if query_parts is not None and query_parts.shape[1] == num_neg:
            return F.normalize(query_parts, dim=-1)
        return query[:, None, :]

    def _validate(
        self, query, gallery, query_parts, query_parts_mask, gallery_parts, gallery_parts_mask,
        negatives, negatives_mask, positives, query_relations, gallery_part_boxes, gallery_neighbors,
        first_stage, parts_mode, rerank,
    ) -> Tensor:
        """Static checks now; value checks as ops whose zero sum is returned."""
        cfg = self.config
        validate.embeddings("query", query, 2, "[Q, D]")
        validate.embeddings("gallery", gallery, 2, "[N, D]", like=query)
        num_queries, num_items = query.shape[0], gallery.shape[0]
        validate.nonempty("query", query, 0, "Q")
        validate.nonempty("query", query, 1, "D")
        validate.nonempty("gallery", gallery, 0, "N")
        if cfg.k > num_items:
            raise ValueError(f"k={cfg.k} exceeds the gallery size N={num_items}")
        flags = [checks.check_finite(query, "query"), checks.check_finite(gallery, "gallery")]

        if query_parts is not None:
            validate.embeddings("query_parts", query_parts, 3, "[Q, m, D]", like=query)
            validate.leading("query_parts", query_parts, num_queries, "Q")
            validate.nonempty("query_parts", query_parts, 1, "m")
            flags.append(checks.check_finite(query_parts, "query_parts"))
            if query_parts_mask is not None:
                validate.mask("query_parts_mask", query_parts_mask, tuple(query_parts.shape[:2]), query)
                flags.append(checks.check_rows_any(query_parts_mask, "query_parts_mask"))
        elif query_parts_mask is not None:
            raise ValueError("query_parts_mask was given without query_parts")
        if gallery_parts is not None:
            validate.embeddings("gallery_parts", gallery_parts, 3, "[N, n, D]", like=query)
            validate.leading("gallery_parts", gallery_parts, num_items, "N")
            validate.nonempty("gallery_parts", gallery_parts, 1, "n")
            # Non-finite candidate parts are caught inside geosteer::part_cost,
            # on the gathered rows only: scanning all N x n x D here would cost
            # as much as the re-ranking itself.
            if gallery_parts_mask is not None:
                validate.mask("gallery_parts_mask", gallery_parts_mask, tuple(gallery_parts.shape[:2]), query)
                flags.append(checks.check_rows_any(gallery_parts_mask, "gallery_parts_mask"))
        elif gallery_parts_mask is not None:
            raise ValueError("gallery_parts_mask was given without gallery_parts")

        if negatives is not None:
            validate.embeddings("negatives", negatives, 3, "[Q, u, D]", like=query)
            validate.leading("negatives", negatives, num_queries, "Q")
            validate.nonempty("negatives", negatives, 1, "u")
            flags.append(checks.check_finite(negatives, "negatives"))
            if negatives_mask is not None:
                validate.mask("negatives_mask", negatives_mask, tuple(negatives.shape[:2]), query)
        elif cfg.alpha > 0 or cfg.beta > 0:
            raise ValueError(f"alpha={cfg.alpha} / beta={cfg.beta} steer away from negatives [Q, u, D], but none were given")
        elif negatives_mask is not None:
            raise ValueError("negatives_mask was given without negatives")
        if positives is not None:
            validate.embeddings("positives", positives, 3, "[Q, u, D] or [Q, 1, D]", like=query)
            validate.leading("positives", positives, num_queries, "Q")
            if negatives is not None and positives.shape[1] not in (1, negatives.shape[1]):
                raise ValueError(
                    f"positives has {positives.shape[1]} anchors; expected 1 or u={negatives.shape[1]} (one per negative)"
                )
            flags.append(checks.check_finite(positives, "positives"))

        if cfg.gamma > 0 and (query_relations is not None or gallery_part_boxes is not None):
            if query_relations is None or gallery_part_boxes is None:
                raise ValueError("the structure term needs both query_relations [Q, r, 3] and gallery_part_boxes [N, n, 4]")
            if not parts_mode:
                raise ValueError("query_relations need part sets (query_parts and gallery_parts)")
            validate.tensor("query_relations", query_relations, 3, "[Q, r, 3]")
            if query_relations.dtype != torch.long or query_relations.shape[0] != num_queries or query_relations.shape[2] != 3:
                raise ValueError(
                    f"query_relations must be int64 [Q={num_queries}, r, 3], got {query_relations.dtype} {list(query_relations.shape)}"
                )
            validate.tensor("gallery_part_boxes", gallery_part_boxes, 3, "[N, n, 4]")
            expected = [num_items, gallery_parts.shape[1], 4]
            if list(gallery_part_boxes.shape) != expected or not gallery_part_boxes.is_floating_point():
                raise ValueError(f"gallery_part_boxes must be float {expected}, got {gallery_part_boxes.dtype} {list(gallery_part_boxes.shape)}")
            flags.append(checks.check_finite(gallery_part_boxes, "gallery_part_boxes"))
            flags.append(checks.check_relations(query_relations, query_parts.shape[1], "query_relations"))

        if gallery_neighbors is not None:
            validate.tensor("gallery_neighbors", gallery_neighbors, 2, "[N, k']")
            if gallery_neighbors.dtype != torch.long or gallery_neighbors.shape[0] != num_items:
                raise ValueError(f"gallery_neighbors must be int64 [N={num_items}, k'], got {gallery_neighbors.dtype} {list(gallery_neighbors.shape)}")
            if gallery_neighbors.shape[1] < cfg.pool_neighbors:
                raise ValueError(f"gallery_neighbors has k'={gallery_neighbors.shape[1]} columns but neighbors={cfg.pool_neighbors}")
            flags.append(checks.check_ids(gallery_neighbors, num_items, "gallery_neighbors"))
        elif not parts_mode and rerank and cfg.pool_neighbors >= num_items:
            raise ValueError(f"neighbourhood mode needs neighbors={cfg.pool_neighbors} < N={num_items}")

        if first_stage is not None:
            if not isinstance(first_stage, (tuple, list)) or len(first_stage) != 2:
                raise TypeError("first_stage must be a (scores [Q, K'], ids [Q, K']) pair")
            fs_scores, fs_ids = first_stage
            validate.tensor("first_stage scores", fs_scores, 2, "[Q, K']")
            validate.tensor("first_stage ids", fs_ids, 2, "[Q, K']")
            if fs_ids.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"first_stage ids must be int32/int64, got {fs_ids.dtype}")
            if tuple(fs_scores.shape) != tuple(fs_ids.shape) or fs_ids.shape[0] != num_queries:
                raise ValueError(f"first_stage scores and ids must both be [Q={num_queries}, K'], got {list(fs_scores.shape)} and {list(fs_ids.shape)}")
            if fs_ids.shape[1] < cfg.k:
                raise ValueError(f"first_stage holds K'={fs_ids.shape[1]} candidates but k={cfg.k}")
            flags.append(checks.check_ids(fs_ids, num_items, "first_stage ids"))
            flags.append(checks.check_finite(fs_scores, "first_stage scores"))
        return torch.stack(flags).sum()


def _all_true(shape, device) -> Tensor:
    return torch.ones(tuple(shape), dtype=torch.bool, device=device)


def _take_external(first_stage: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Best `k` of an external (scores, ids), sorted descending."""
    scores, ids = first_stage
    top = scores.float().topk(k, dim=1, sorted=True)
    return top.values, ids.long().gather(1, top.indices)
