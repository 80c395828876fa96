"""The structure term R(q, c) (DESIGN §1, stage 2): do the matched regions' boxes keep the query's relations?

A relation row (i, j, type) of the query says part i stands in relation
`RELATIONS[type]` to part j. Let b_i, b_j be the boxes (x0, y0, x1, y1) of
the regions matched to parts i and j, in image coordinates (x right, y
down), c their centres, w their widths and h their heights. Each relation
that a pair of 2-D boxes can show has one box rule (`RULES`: the rule and
whether it reads the pair swapped); `relation_holds` applies them
elementwise.

The axis rule (left_of, right_of, above, below). `geosteer.relations.GEOMETRY`
gives the relation's axis a (0 = x, 1 = y) and sign s (+1: j lies further
along the axis than i). With

    along  = s * (c_j - c_i)[a]          the centre offset along the relation's axis
    across = |(c_j - c_i)[1 - a]|        the centre offset along the other axis
    extent = (w_i[a] + w_j[a]) / 2       the boxes' mean extent along the axis

the relation holds when both

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

The on rule (on; under = on read swapped: "i under j" is "j on i"). With
h = (h_i + h_j) / 2 the boxes' mean height, "i on j" holds when all of

1. c_i[y] < c_j[y]: i is the higher of the two. Whatever the view, the
   thing on top has its centre above its support's: a cup on a table sits
   at the top edge of the table's box, a cat on a bed (a box inside the
   top part of the bed's) above the bed's centre, a rider above the
   horse's. Strict, so identical boxes hold nothing, and a box inside the
   lower part or the middle of another is not on it.
2. j[x0] <= c_i[x] <= j[x1]: i's centre lies over j's width. A thing
   resting on another has its centre over its support; one whose centre
   is beside j (even touching it, even a little higher) is next to it.
3. j[y0] - CONTACT * h <= i[y1] <= j[y1], CONTACT = 0.1: i's bottom edge,
   where it rests, reaches j. Either it touches j's top edge (a book on a
   shelf's plank) or it lies inside j's height (a cup on the tabletop
   seen in perspective, a cat on a bed); i's bottom below j's bottom is i
   standing on the ground in front of j (a person by a dog, a chair before
   a table), and a visible gap above j (a lamp hanging over a table, a
   bird flying over a fence) is no contact. The slack CONTACT * h is for
   box edges that are drawn, not measured: segments come from a copy of
   about 32,768 pixels (about 181 a side), where the smallest segment
   (`SEGMENT_MIN_AREA`, 1% of the image) is about 18 pixels tall and a
   tenth of it is the one or two pixels a segment's edge can be off by;
   larger boxes get proportionally more. A gap between two objects that a
   person would see is wider than a tenth of their mean height. Grid cells
   of one column in neighbouring rows overlap (they read "on"), cells two
   rows apart are 0.2 of the side apart with mean height 0.4 (they do not).

The next_to rule (symmetric: "i next to j" is "j next to i"). With
w = (w_i + w_j) / 2 the mean width and dx = |c_j[x] - c_i[x]|, it holds
when all of

1. overlap of the y-extents > LEVEL * min(h_i, h_j), LEVEL = 0.5: more
   than half of the shorter box shares the other's height, so they stand
   side by side, not stacked. A bench beside a tree has all its height
   inside the tree's, two animals on one floor most of theirs even when
   one stands nearer the camera (lower); stacked boxes share none, and
   cells of one grid scale in neighbouring rows at most a third (2x2: 0.2
   of 0.6; 3x3: 0.1 of 0.4).
2. dx > SEPARATION * w: apart along x as the axis rule's rule 2 asks
   (overlapping by less than half their mean width; the same reasons:
   adjacent grid columns count, a cell and the cell covering most of it
   do not, nor do boxes centred one over the other).
3. dx - w < NEAR * w, NEAR = 1: the gap between them is narrower than
   their mean width, so no third object of their size fits between them.
   Touching or overlapping boxes have gap <= 0; objects at the two far
   edges of a photo do not count unless they are as wide as the space
   between them. Together with 2: the centres are between half and twice
   their mean width apart.

The in rule ("i in j": containment). With A the box areas and I the area
of the intersection, it holds when both

1. I > CONTAIN * A_i, CONTAIN = 0.5: more of i lies inside j than out.
   "Mostly inside", not wholly: a cat in a box shows its head above the
   box, a man in a field stands with his head against the sky above the
   field's box, fruit in a bowl is heaped over its rim; a box half out of
   j is as much beside j as in it.
2. A_i <= SMALLER * A_j, SMALLER = 0.8: the container is the bigger box
   by the margin the region methods use to call two boxes different
   regions (`segment_boxes` drops a box whose IoU with a kept one exceeds
   `SEGMENT_DEDUPE_IOU` = 0.8, and for a box inside another the IoU is the
   ratio of their areas). Identical boxes (one region seen twice) and the
   swapped pair (the container in its content) hold nothing.

`in` and `on` are not exclusive: a cat on a bed seen from above is inside
the bed's box too. A thing hung on a wall ("a clock on the wall") is `in`
to the boxes, and reads as `on` only when it hangs in the upper half.

No rule: in_front_of and behind. Depth is not in a pair of 2-D boxes:
the one monocular cue boxes carry (on a common ground, the nearer thing's
bottom is lower in the frame) fails for what captions put in front of
things ("a man in front of a building", whose base is hidden or far
below; "a sign in front of a tree"), occlusion needs pixels, and no
annotated boxes of these relations are here to measure a rule on. They
are left out of R.

A relation whose part i or j is unmatched (`cols` = -1, e.g. a part left
over when m > n) does not hold; padding rows (i < 0) and relations without a
box rule (not in `READABLE`) are not counted; R(q, c) = held / counted
rows, 0 for a query without counted relations. A padding row's j and type
are never used as indices (it reads part 0 and is masked out), so padding
may hold anything; real rows are validated up front
(`geosteer.ops.checks.check_relations`).

Everything is batched tensor algebra over (query, candidate, relation):
every rule is computed for every row and the row's own is selected with
`torch.where` (no Python loop over queries or relations and no
data-dependent control flow), so the stage traces under
`torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.relations import GEOMETRY, RELATIONS

#: The box rules, by name.
RULE_NAMES: tuple[str, ...] = ("axis", "on", "next_to", "in")
#: Relation -> (its box rule, whether the rule reads the pair swapped). A
#: relation not here has no box rule and is not counted in R.
RULES: dict[str, tuple[str, bool]] = {
    **{name: ("axis", False) for name in GEOMETRY},
    "on": ("on", False),
    "under": ("on", True),  # i under j = j on i
    "next_to": ("next_to", False),
    "in": ("in", False),
}
#: Relations a pair of 2-D boxes can show: R counts only these.
READABLE: tuple[str, ...] = tuple(r for r in RELATIONS if r in RULES)

# Per relation type id: the rule's index in RULE_NAMES (-1: none), whether it
# reads (j, i), and for the axis rule the axis and sign (0, 0 otherwise).
_RULE = tuple(RULE_NAMES.index(RULES[r][0]) if r in RULES else -1 for r in RELATIONS)
_SWAP = tuple(r in RULES and RULES[r][1] for r in RELATIONS)
_AXIS = tuple(GEOMETRY.get(r, (0, 0))[0] for r in RELATIONS)
_SIGN = tuple(float(GEOMETRY.get(r, (0, 0))[1]) for r in RELATIONS)
_READABLE = tuple(r in READABLE for r in RELATIONS)
_AXIS_RULE, _ON_RULE, _NEXT_TO_RULE, _IN_RULE = range(len(RULE_NAMES))

#: Axis rule 2 and next_to rule 2: the centre offset along the axis must exceed
#: this fraction of the boxes' mean extent along it (they overlap by less than half of it).
SEPARATION = 0.5
#: on rule 3: i's bottom edge may sit this fraction of the boxes' mean height above j's top.
CONTACT = 0.1
#: next_to rule 1: the y-extents share more than this fraction of the shorter box's height.
LEVEL = 0.5
#: next_to rule 3: the gap along x is less than this many mean widths.
NEAR = 1.0
#: in rule 1: more than this fraction of i's area lies inside j.
CONTAIN = 0.5
#: in rule 2: i's area is at most this fraction of j's.
SMALLER = 0.8


def _axis_holds(box_i: Tensor, box_j: Tensor, kind: Tensor) -> Tensor:
    """The axis rule for every row, with the row's own axis and sign (sign 0: never holds)."""
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


def _on_holds(a: Tensor, b: Tensor) -> Tensor:
    """The on rule: box a on box b."""
    ax0, ay0, ax1, ay1 = a.unbind(-1)
    bx0, by0, bx1, by1 = b.unbind(-1)
    centre_ax, centre_ay, centre_by = (ax0 + ax1) * 0.5, (ay0 + ay1) * 0.5, (by0 + by1) * 0.5
    height = ((ay1 - ay0) + (by1 - by0)) * 0.5
    higher = centre_ay < centre_by
    over = (bx0 <= centre_ax) & (centre_ax <= bx1)
    rests = (ay1 >= by0 - CONTACT * height) & (ay1 <= by1)
    return higher & over & rests


def _next_to_holds(a: Tensor, b: Tensor) -> Tensor:
    """The next_to rule: boxes a and b side by side along x, close (symmetric)."""
    ax0, ay0, ax1, ay1 = a.unbind(-1)
    bx0, by0, bx1, by1 = b.unbind(-1)
    shared = torch.minimum(ay1, by1) - torch.maximum(ay0, by0)
    level = shared > LEVEL * torch.minimum(ay1 - ay0, by1 - by0)
    dx = ((bx0 + bx1) * 0.5 - (ax0 + ax1) * 0.5).abs()
    width = ((ax1 - ax0) + (bx1 - bx0)) * 0.5
    return level & (dx > SEPARATION * width) & (dx - width < NEAR * width)


def _in_holds(a: Tensor, b: Tensor) -> Tensor:
    """The in rule: box a (mostly) inside the bigger box b."""
    ax0, ay0, ax1, ay1 = a.unbind(-1)
    bx0, by0, bx1, by1 = b.unbind(-1)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp_min(0) * (
        torch.minimum(ay1, by1) - torch.maximum(ay0, by0)
    ).clamp_min(0)
    area_a = (ax1 - ax0) * (ay1 - ay0)
    area_b = (bx1 - bx0) * (by1 - by0)
    return (inter > CONTAIN * area_a) & (area_a <= SMALLER * area_b)


def relation_holds(box_i: Tensor, box_j: Tensor, kind: Tensor) -> Tensor:
    """Whether "i <RELATIONS[kind]> j" holds between boxes, elementwise (the module's rules).

    Every rule is computed for every element and each element's own is
    selected (`RULES`); a relation without a box rule (in_front_of, behind)
    never holds.

    Args:
        box_i, box_j: `[..., 4]` boxes (x0, y0, x1, y1), image coordinates (x right, y down).
        kind: `[...]` int64 relation type ids (clamped into range).

    Returns:
        `[...]` bool.
    """
    box_i, box_j = box_i.float(), box_j.float()
    kind = kind.clamp(0, len(RELATIONS) - 1)
    rule = torch.tensor(_RULE, device=kind.device)[kind]
    swap = torch.tensor(_SWAP, device=kind.device)[kind][..., None]
    box_a = torch.where(swap, box_j, box_i)  # the pair as its rule reads it
    box_b = torch.where(swap, box_i, box_j)
    held = _axis_holds(box_i, box_j, kind) & (rule == _AXIS_RULE)
    held = held | (_on_holds(box_a, box_b) & (rule == _ON_RULE))
    held = held | (_next_to_holds(box_a, box_b) & (rule == _NEXT_TO_RULE))
    return held | (_in_holds(box_a, box_b) & (rule == _IN_RULE))


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
