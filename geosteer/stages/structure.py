"""The structure term R(q, c) (DESIGN §1, stage 2): do the matched regions' boxes keep the query's relations?

The rule. A relation row (i, j, type) of the query says part i stands in
relation `RELATIONS[type]` to part j; `geosteer.relations.GEOMETRY[type]`
gives its axis a (0 = x, 1 = y) and sign s (+1: j lies further along the
axis than i). Let b_i, b_j be the boxes of the regions matched to parts i
and j, c their centres, w their extents (x1 - x0, y1 - y0), and

    along  = s * (c_j - c_i)[a]          the centre offset along the relation's axis
    across = |(c_j - c_i)[1 - a]|        the centre offset along the other axis
    extent = (w_i[a] + w_j[a]) / 2       the boxes' mean extent along the axis

The relation holds when both

1. along > across: the offset along the relation's axis dominates the
   offset across it ("left of" means mostly sideways, not mostly above), and
2. along > SEPARATION * extent, SEPARATION = 0.5: the boxes are separated
   along the axis. For boxes that overlap along the axis the overlap is
   extent - along, so this says they overlap by less than half their mean
   extent.

Both are strict, so coincident centres hold nothing. Why these numbers:
two objects side by side (a 2-photo collage, two shapes of a scene) are
found by overlapping 2x2 (cells 0.6 of the side, stride 0.4) and 3x3 (0.4,
0.3) grid cells; two adjacent 2x2 cells are 0.4 apart with extent 0.6
(0.4 > 0.3) and the 3x3 cells of neighbouring columns 0.3 apart with
extent 0.4 (0.3 > 0.2), so they count; a 2x2 cell and the 3x3 cell that
overlaps most of it (0.2 apart, extent 0.5) do not, nor does a diagonal
pair of cells (as far apart on both axes: side by side or stacked, the
boxes cannot tell). A stacked pair (one above the other, a few pixels
apart sideways) fails rule 1 for left_of / right_of; the swapped pair
fails both (along < 0).

A relation whose part i or j is unmatched (`cols` = -1, e.g. a part left
over when m > n) does not hold; padding rows (i < 0) and relations without a
box rule (`READABLE`: today the axis relations) are not counted;
R(q, c) = held / valid rows, 0 for a query without relations. A padding
row's j and type are never used as indices (it reads part 0 and is masked
out), so padding may hold anything; real rows are validated up front
(`geosteer.ops.checks.check_relations`).

Everything is batched tensor algebra over (query, candidate, relation):
no Python loop over queries and no data-dependent control flow, so the
stage traces under `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.relations import GEOMETRY, RELATIONS

# Per relation type id: the axis compared and the sign of (centre_j - centre_i) that holds;
# relations without a box rule yet get sign 0 (never hold) and are not counted in R.
_AXIS = tuple(GEOMETRY.get(r, (0, 0))[0] for r in RELATIONS)
_SIGN = tuple(float(GEOMETRY.get(r, (0, 0))[1]) for r in RELATIONS)
#: Relations a pair of 2-D boxes can show: R counts only these.
READABLE: tuple[str, ...] = tuple(GEOMETRY)
_READABLE = tuple(r in READABLE for r in RELATIONS)
#: Rule 2: the centre offset along the axis must exceed this fraction of the
#: boxes' mean extent along it (they overlap by less than half of it).
SEPARATION = 0.5


def relation_holds(box_i: Tensor, box_j: Tensor, kind: Tensor) -> Tensor:
    """Whether "i <RELATIONS[kind]> j" holds between boxes, elementwise (the module's rule).

    Args:
        box_i, box_j: `[..., 4]` boxes (x0, y0, x1, y1).
        kind: `[...]` int64 relation type ids (clamped into range).

    Returns:
        `[...]` bool.
    """
    box_i, box_j = box_i.float(), box_j.float()
    kind = kind.clamp(0, len(RELATIONS) - 1)
    axis = torch.tensor(_AXIS, device=kind.device)[kind][..., None]  # [..., 1]
    sign = torch.tensor(_SIGN, device=kind.device)[kind]
    centre_i = (box_i[..., :2] + box_i[..., 2:]) * 0.5
    centre_j = (box_j[..., :2] + box_j[..., 2:]) * 0.5
    delta = centre_j - centre_i  # [..., 2]
    along = sign * delta.gather(-1, axis).squeeze(-1)
    across = delta.gather(-1, 1 - axis).squeeze(-1).abs()
    extent_i = (box_i[..., 2:] - box_i[..., :2]).gather(-1, axis).squeeze(-1)
    extent_j = (box_j[..., 2:] - box_j[..., :2]).gather(-1, axis).squeeze(-1)
    extent = (extent_i + extent_j) * 0.5
    return (along > across) & (along > SEPARATION * extent)


def relation_score(cols: Tensor, ids: Tensor, boxes: Tensor, relations: Tensor) -> Tensor:
    """R(q, c): fraction of the query's relations that hold between matched regions (the module's rule).

    Args:
        cols: `[Q, K, m]` matched region per query part, -1 = unmatched.
        ids: `[Q, K]` candidate ids.
        boxes: `[N, n, 4]` region boxes (x0, y0, x1, y1), image coordinates.
        relations: `[Q, r, 3]` int64 rows (i, j, type), type indexing
            `geosteer.relations.RELATIONS`; rows with i < 0 are padding.

    Returns:
        `[Q, K]` float32 in [0, 1]; 0 for queries without relations.
    """
    num_queries, num_cands, _ = cols.shape
    num_rel = relations.shape[1]
    cand_boxes = boxes.float()[ids]  # [Q, K, n, 4]
    matched = cand_boxes.gather(2, cols.clamp_min(0)[..., None].expand(-1, -1, -1, 4))  # [Q, K, m, 4]
    ok = cols >= 0
    readable = torch.tensor(_READABLE, device=relations.device)[relations[..., 2].clamp(0, len(RELATIONS) - 1)]
    valid = (relations[..., 0] >= 0) & readable  # [Q, r]
    # Padding rows (i < 0) may hold anything in j and type: they index part 0.
    zero = torch.zeros_like(relations[..., 0])
    part_i = torch.where(valid, relations[..., 0], zero)[:, None, :].expand(num_queries, num_cands, num_rel)
    part_j = torch.where(valid, relations[..., 1], zero)[:, None, :].expand(num_queries, num_cands, num_rel)
    box_i = matched.gather(2, part_i[..., None].expand(-1, -1, -1, 4))  # [Q, K, r, 4]
    box_j = matched.gather(2, part_j[..., None].expand(-1, -1, -1, 4))
    kind = relations[..., 2][:, None, :].expand(num_queries, num_cands, num_rel)
    holds = relation_holds(box_i, box_j, kind)
    holds = holds & ok.gather(2, part_i) & ok.gather(2, part_j) & valid[:, None, :]
    count = valid.sum(dim=1).clamp_min(1).float()[:, None]
    return holds.float().sum(dim=-1) / count
