"""Query-conditioned local steering (DESIGN §1, stage 1).

Three levers, all driven by contrastive anchor pairs (a positive anchor p_j:
what the query asks for; a negative anchor u_j: one of its confusers, e.g.
"a red pentagon" / "a red hexagon"):

**The confuser penalty β** demotes a candidate that fits a confuser better
than the query. With region sets (the head's parts mode) it is measured per
object on the candidate's regions: β · max_j relu(r(c, u_j) - r(c, p_j)),
r = the best region's similarity (`candidate_anchor_sims`, then
`confuser_penalty` in its paired form). On the pooled embedding
(`confuser_penalty`: β · relu(max_j c·u_j - c·q)) the same contrast is near
chance on GeoShapes, because a scene embedding barely separates a scene
from its pentagon/hexagon or colour-swapped twin; regions do
(bench/tune_defaults.py measures both). `anchor_terms` gives the penalty
and the δ contrast of every candidate from one projection; the head, pair
scoring and the sharded head reach it through
`geosteer.stages.candidates.candidate_terms`.

**The query move α**: each pair gives a direction d_j; how d_j is built is
the *design*:

- "near" (the first sketch in DESIGN §1): N+_j / N-_j are the `neighbors`
  pool items nearest p_j / u_j, d_j = mean(N+_j) - mean(N-_j). On GeoShapes
  the two neighbourhoods are mostly the same images (a scene and its twin
  are near both texts), so d_j is mostly noise.
- "margin": pool items are ranked by their *contrast margin*
  c·p_j - c·u_j, so N+_j holds the items that prefer p_j over u_j most and
  N-_j those that prefer u_j most; each member is weighted by its margin
  (relu), so a pool with no preference (p_j = u_j) gives no direction.
- "text": d_j = p_j - u_j, the contrast in the text space itself.
- "margin+text": the two, each normalised, summed.

Directions are made orthogonal to q and to each other (Gram-Schmidt) and
never averaged into one vector; the query moves to
q' = normalise(q + α Σ_j d_j) and every candidate is re-scored with q'.

**The request term δ** re-ranks the pool toward what the user asks for and
away from its confuser, per object: δ · mean_j r(c, p_j) - r(c, u_j)
(`anchor_contrast`, through `anchor_terms`). It is the lever that controls result sets
(docs/steering.md): the query move α works in the pooled space, which
cannot bind "red" to "star".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer.choices import check_choice
from geosteer.ops.part_cost import pad_cost, part_cost
from geosteer.ops.project import project

_EPS = 1e-6
#: The direction designs (`HeadConfig.steer_design`). No design raised R@1 at
#: any α tried on the validation seeds (bench/results/tune_2026-11-29.json:
#: 4 designs x 2 anchor kinds x α 0.1-1 x k 3-10), so the presets keep α = 0.
DESIGNS: tuple[str, ...] = ("near", "margin", "text", "margin+text")


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


def weighted_means(gallery: Tensor, ids: Tensor, weights: Tensor, neighbors: int) -> tuple[Tensor, Tensor]:
    """Weighted mean of the `neighbors` pool items with the largest weight, per anchor.

    Args:
        gallery: `[N, D]`.
        ids: `[Q, K]` candidate pool.
        weights: `[Q, K, J]` non-negative.
        neighbors: k of the neighbourhoods.

    Returns:
        means `[Q, J, D]` float32 (zero where every weight is 0) and the
        total weight `[Q, J]`.
    """
    num_queries, _, num_anchors = weights.shape
    top = weights.topk(neighbors, dim=1)  # [Q, k, J]
    member_ids = ids.gather(1, top.indices.reshape(num_queries, -1))
    members = gallery[member_ids].float().reshape(num_queries, neighbors, num_anchors, -1)
    w = top.values.float()  # [Q, k, J]
    total = w.sum(dim=1)  # [Q, J]
    means = (members * w[..., None]).sum(dim=1) / total.clamp_min(_EPS)[..., None]
    return means, total


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


def raw_directions(
    gallery: Tensor,
    ids: Tensor,
    positives: Tensor,
    negatives: Tensor,
    pos_sims: Tensor,
    neg_sims: Tensor,
    neighbors: int,
    design: str = "margin",
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Un-orthogonalised directions of one design, and which are usable.

    Args:
        gallery: `[N, D]`.
        ids: `[Q, K]` candidate pool.
        positives: `[Q, J or 1, D]` unit anchors; negatives `[Q, J, D]`.
        pos_sims, neg_sims: `[Q, K, J or 1]`, `[Q, K, J]` pool-by-anchor similarities.
        neighbors: k of the neighbourhoods.
        design: one of `DESIGNS`.
        valid: `[Q, K]` bool, False = a filter's padding (head `allowed`):
            never a neighbourhood member ("near": its similarities are
            -inf; "margin": its margin is 0, so its weight is 0). Exact
            against the filtered pool for "margin" always, for "near" when
            at least `neighbors` candidates are valid. None = all valid.

    Returns:
        raw `[Q, J, D]` float32, usable `[Q, J]` bool (False where the design
        finds no contrast, e.g. identical anchors).
    """
    check_choice("design", design, DESIGNS)
    num_anchors = negatives.shape[1]
    usable = torch.ones(negatives.shape[:2], dtype=torch.bool, device=negatives.device)
    parts = []
    if design == "near":
        if valid is not None:
            pad = ~valid[..., None]
            pos_sims, neg_sims = pos_sims.masked_fill(pad, float("-inf")), neg_sims.masked_fill(pad, float("-inf"))
        pos_means = neighbourhood_means(gallery, ids, pos_sims, neighbors)
        neg_means = neighbourhood_means(gallery, ids, neg_sims, neighbors)
        return pos_means.expand(-1, num_anchors, -1) - neg_means, usable
    if design in ("margin", "margin+text"):
        margin = pos_sims.float() - neg_sims.float()  # [Q, K, J]
        if valid is not None:
            margin = margin.masked_fill(~valid[..., None], 0.0)
        plus, w_plus = weighted_means(gallery, ids, F.relu(margin), neighbors)
        minus, w_minus = weighted_means(gallery, ids, F.relu(-margin), neighbors)
        usable = usable & (w_plus > _EPS) & (w_minus > _EPS)
        parts.append(F.normalize(plus - minus, dim=-1))
    if design in ("text", "margin+text"):
        parts.append(F.normalize(positives.float().expand(-1, num_anchors, -1) - negatives.float(), dim=-1))
    return torch.stack(parts).sum(dim=0), usable


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
    backend: str,
    design: str,
    valid: Tensor | None = None,
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
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        design: how each direction is built (`DESIGNS`, `HeadConfig.steer_design`).
        valid: `[Q, K]` bool, a filter's padding False (`raw_directions`); None = all valid.

    Returns:
        steered `[Q, K]` float32 = q'·c; negative sims `[Q, K, J]` float32.
    """
    # One projection for both anchor sets: the candidate rows are read once.
    pos_sims, neg_sims = candidate_anchor_sims(positives, negatives, ids, gallery, None, None, backend)
    raw, usable = raw_directions(gallery, ids, positives, negatives, pos_sims, neg_sims, neighbors, design, valid)
    query32 = query.float()
    dirs = orthogonal_directions(query32, raw, negatives_mask & usable)
    dir_sims = project(gallery, ids, dirs, backend)  # [Q, K, J]
    moved = query32 + alpha * dirs.sum(dim=1)
    steered = (first_scores + alpha * dir_sims.float().sum(dim=-1)) / moved.norm(dim=-1, keepdim=True)
    return steered, neg_sims


def confuser_penalty(first_scores: Tensor, negative_sims: Tensor, negatives_mask: Tensor) -> Tensor:
    """relu(max_j c·u_j - c·q): how much better a candidate fits a confuser. `[Q, K]`.

    `first_scores` may also be `[Q, K, J]` (or `[Q, K, 1]`): the candidate's
    similarity to the positive anchor of each pair, giving the paired form
    max_j relu(c·u_j - c·p_j).
    """
    if first_scores.ndim == 2:
        masked = negative_sims.masked_fill(~negatives_mask[:, None, :], float("-inf"))
        return F.relu(masked.amax(dim=-1) - first_scores)
    gap = F.relu(negative_sims - first_scores)  # [Q, K, J]
    return gap.masked_fill(~negatives_mask[:, None, :], 0.0).amax(dim=-1)


def region_anchor_sims(
    anchors: Tensor, ids: Tensor, gallery_parts: Tensor, gallery_parts_mask: Tensor, backend: str = "auto",
    gallery_parts_scale: Tensor | None = None,
) -> Tensor:
    """Each candidate's best region for each anchor: max_b a_j·b over its valid regions.

    The regions of the K candidates are gathered as K·n rows of the
    flattened `[N·n, D]` region table and projected on the anchors with the
    `geosteer::project` op (a fused Triton gather + projection on CUDA).
    int8 regions (`gallery_parts_scale` given) go through `geosteer::part_cost`
    instead, the op that reads them with their scales: the similarities are
    1 - its costs (equal to the projection up to float32 rounding).

    Args:
        anchors: `[Q, J, D]` unit anchors (part phrases, their negatives).
        ids: `[Q, K]` candidate pool.
        gallery_parts: `[N, n, D]` region embeddings (float, or compact); gallery_parts_mask `[N, n]`.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        gallery_parts_scale: `[N, n]` float32 scales of int8 regions, else None.

    Returns:
        `[Q, K, J]` float32.
    """
    num_items, num_regions, dim = gallery_parts.shape
    num_queries, num_cands = ids.shape
    if gallery_parts_scale is not None:
        every = torch.ones(anchors.shape[:2], dtype=torch.bool, device=anchors.device)
        cost = part_cost(anchors, every, ids, gallery_parts, gallery_parts_mask, pad_cost(anchors.shape[1], num_regions),
                         backend, "", gallery_parts_scale)  # [Q, K, J, n]
        valid = gallery_parts_mask[ids][:, :, None, :]  # [Q, K, 1, n]
        return (1.0 - cost).masked_fill(~valid, float("-inf")).amax(dim=3)
    offsets = torch.arange(num_regions, device=ids.device)
    region_ids = (ids[..., None] * num_regions + offsets).reshape(num_queries, num_cands * num_regions)
    sims = project(gallery_parts.reshape(num_items * num_regions, dim), region_ids, anchors, backend)
    sims = sims.reshape(num_queries, num_cands, num_regions, anchors.shape[1])
    valid = gallery_parts_mask[ids][..., None]  # [Q, K, n, 1]
    return sims.masked_fill(~valid, float("-inf")).amax(dim=2)


def candidate_anchor_sims(
    positives: Tensor,
    negatives: Tensor,
    ids: Tensor,
    gallery: Tensor | None,
    gallery_parts: Tensor | None,
    gallery_parts_mask: Tensor | None,
    backend: str = "auto",
    gallery_parts_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Each candidate's similarity to every positive and negative anchor, in one projection.

    With region sets, the candidate's best valid region (`region_anchor_sims`);
    without them (`gallery_parts` None), its pooled embedding c·a.

    Args:
        positives: `[Q, J or 1, D]`; negatives `[Q, J, D]`.
        ids: `[Q, K]` candidates; gallery `[N, D]` (read only without regions).
        gallery_parts: `[N, n, D]` or None; gallery_parts_mask `[N, n]`.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        gallery_parts_scale: `[N, n]` scales of int8 `gallery_parts`, else None.

    Returns:
        pos_sims `[Q, K, J or 1]`, neg_sims `[Q, K, J]`, float32.
    """
    anchors = torch.cat([positives, negatives.to(positives.dtype)], dim=1)
    if gallery_parts is None:
        sims = project(gallery, ids, anchors, backend).float()
    else:
        sims = region_anchor_sims(anchors, ids, gallery_parts, gallery_parts_mask, backend, gallery_parts_scale)
    pos_sims, neg_sims = sims.split([positives.shape[1], negatives.shape[1]], dim=2)
    return pos_sims, neg_sims


def anchor_terms(
    positives: Tensor,
    negatives: Tensor,
    negatives_mask: Tensor,
    ids: Tensor,
    gallery: Tensor,
    gallery_parts: Tensor | None,
    gallery_parts_mask: Tensor | None,
    first_scores: Tensor,
    penalty: bool,
    contrast: bool,
    backend: str = "auto",
    gallery_parts_scale: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """The β confuser penalty and the δ contrast of every candidate, from one pass over its anchors.

    Every scorer of candidates takes both terms here
    (`geosteer.stages.candidates.candidate_terms`). With region sets both
    are per object on the regions: r(c, a) is the similarity of candidate
    c's best valid region to anchor a, so "a red star" vs "an orange star"
    is decided by the star's own region; the penalty is
    max_j relu(r(c, u_j) - r(c, p_j)) (`confuser_penalty`, paired form) and
    the contrast `anchor_contrast`. Without region sets the penalty compares
    the confusers with the query's own score `first_scores`
    (`confuser_penalty`) and the contrast uses the pooled embeddings.

    Args:
        positives, negatives, negatives_mask: the anchor pairs (`steering_anchors`).
        ids: `[Q, K]` candidates; gallery `[N, D]`.
        gallery_parts: `[N, n, D]` or None (pooled); gallery_parts_mask `[N, n]`.
        first_scores: `[Q, K]` q·c (read by the pooled penalty only).
        penalty, contrast: which terms to compute.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        gallery_parts_scale: `[N, n]` scales of int8 `gallery_parts`, else None.

    Returns:
        (penalty `[Q, K]` or None, contrast `[Q, K]` or None), float32.
    """
    if not (penalty or contrast):
        return None, None
    regions = gallery_parts is not None
    if regions or contrast:
        pos_sims, neg_sims = candidate_anchor_sims(positives, negatives, ids, gallery, gallery_parts,
                                                   gallery_parts_mask, backend, gallery_parts_scale)
    elif penalty:  # pooled penalty alone: the positive is the query's own score
        neg_sims = project(gallery, ids, negatives, backend)
    pen = confuser_penalty(pos_sims if regions else first_scores, neg_sims, negatives_mask) if penalty else None
    con = anchor_contrast(pos_sims, neg_sims, negatives_mask) if contrast else None
    return pen, con


def anchor_contrast(pos_sims: Tensor, neg_sims: Tensor, negatives_mask: Tensor) -> Tensor:
    """C(q, c) = mean over valid pairs j of sim(c, p_j) - sim(c, u_j).

    Each pair is measured on its own (per object) and only the scalar
    contrasts are averaged, so a candidate that fits every requested object
    scores above one that fits some.

    Args:
        pos_sims: `[Q, K, J]` or `[Q, K, 1]` (one positive shared by every negative).
        neg_sims: `[Q, K, J]`; negatives_mask `[Q, J]` bool.

    Returns:
        `[Q, K]` float32 in [-2, 2]; 0 for a query without a valid pair.
    """
    valid = negatives_mask[:, None, :].float()
    diff = (pos_sims.float() - neg_sims.float()) * valid
    return diff.sum(dim=-1) / valid.sum(dim=-1).clamp_min(1.0)


def steering_anchors(
    query: Tensor, query_parts: Tensor | None, positives: Tensor | None, negatives: Tensor, negatives_mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The anchor pairs every steering term reads: (positives, negatives, negatives_mask), normalised.

    Positives: the given ones; else the query parts when there is one per
    negative (per-object pairs); else q itself, `[Q, 1, D]`, shared by every
    negative.

    Args:
        query: `[Q, D]` unit queries; query_parts `[Q, m, D]` or None;
            positives `[Q, u or 1, D]` or None; negatives `[Q, u, D]`;
            negatives_mask `[Q, u]` bool or None (all valid).

    Returns:
        positives `[Q, u or 1, D]`, negatives `[Q, u, D]`, negatives_mask `[Q, u]`.
    """
    neg = F.normalize(negatives, dim=-1)
    if negatives_mask is None:
        negatives_mask = torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device)
    if positives is not None:
        pos = F.normalize(positives, dim=-1)
    elif query_parts is not None and query_parts.shape[1] == neg.shape[1]:
        pos = F.normalize(query_parts, dim=-1)
    else:
        pos = query[:, None, :]
    return pos, neg, negatives_mask
