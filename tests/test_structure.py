"""The structure rules (geosteer.stages.structure): an axis relation holds along its own axis only; on, under,
next_to and in have their own box rules; in_front_of / behind have none and are not counted."""

import itertools
import random

import pytest
import torch

from geosteer import RELATIONS
from geosteer.encoders.regions import grid_boxes
from geosteer.relations import OPPOSITE
from geosteer.stages.structure import (
    CONTACT, CONTAIN, LEVEL, NEAR, READABLE, RULES, SEPARATION, SMALLER, relation_holds, relation_score,
)

LEFT, RIGHT, ABOVE, BELOW = (RELATIONS.index(r) for r in ("left_of", "right_of", "above", "below"))
ON, UNDER, NEXT, IN = (RELATIONS.index(r) for r in ("on", "under", "next_to", "in"))
FRONT, BEHIND = RELATIONS.index("in_front_of"), RELATIONS.index("behind")


def holds(box_i, box_j, kind) -> bool:
    return bool(relation_holds(torch.tensor(box_i, dtype=torch.float32), torch.tensor(box_j, dtype=torch.float32),
                               torch.tensor(kind)))


def score(pairs, relations) -> torch.Tensor:
    """R for one query against candidates, each candidate a list of boxes matched to parts 0, 1, ... in order."""
    boxes = torch.tensor(pairs, dtype=torch.float32)  # [K, m, 4]
    num_cands, m = boxes.shape[:2]
    cols = torch.arange(m).expand(1, num_cands, m).clone()
    ids = torch.arange(num_cands)[None]
    return relation_score(cols, ids, boxes, torch.tensor([relations]))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# two photos of a collage: side by side (448 x 224) and stacked (224 x 448)
SIDE = [(0, 0, 224, 224), (224, 0, 448, 224)]
STACK = [(0, 0, 224, 224), (0, 224, 224, 448)]


def test_side_by_side_holds_and_reads_both_ways():
    a, b = SIDE
    assert holds(a, b, LEFT) and holds(b, a, RIGHT)
    assert not holds(a, b, RIGHT) and not holds(b, a, LEFT)
    assert not holds(a, b, ABOVE) and not holds(a, b, BELOW)


def test_stacked_is_not_left_of_even_a_few_pixels_apart():
    top, bottom = (0, 0, 220, 224), (4, 224, 224, 448)  # the bottom crop's centre is 4 px to the right
    assert holds(top, bottom, ABOVE) and holds(bottom, top, BELOW)
    assert not holds(top, bottom, LEFT) and not holds(bottom, top, RIGHT)
    assert not holds(bottom, top, LEFT) and not holds(top, bottom, RIGHT)
    a, b = STACK
    assert not holds(a, b, LEFT) and not holds(a, b, RIGHT)


def test_swapped_does_not_hold():
    a, b = SIDE
    assert not holds(b, a, LEFT)
    top, bottom = STACK
    assert not holds(bottom, top, ABOVE)


def test_the_offset_must_dominate_the_other_axis():
    a = (0, 0, 10, 10)
    assert holds(a, (30, 20, 40, 30), LEFT)  # 30 along, 20 across
    assert not holds(a, (30, 30, 40, 40), LEFT)  # diagonal: neither dominates
    assert not holds(a, (30, 40, 40, 50), LEFT)  # mostly below
    assert holds(a, (30, 40, 40, 50), ABOVE)


def test_boxes_must_be_separated_along_the_axis():
    # two 100-px boxes: centres d apart hold "left of" iff d > SEPARATION * 100
    for d in (10, 40, 49, 51, 60, 100, 150):
        assert holds((0, 0, 100, 100), (d, 0, d + 100, 100), LEFT) == (d > SEPARATION * 100), d
    # a small box at the edge of a big one: mean extent 60, offset 40
    assert holds((0, 0, 100, 100), (80, 40, 100, 60), LEFT)
    # coincident centres hold nothing
    assert not any(holds((0, 0, 10, 10), (0, 0, 10, 10), k) for k in range(len(RELATIONS)))


def py_holds(box_i, box_j, name) -> bool:
    """The module docstring's rules in plain Python, one pair at a time (written apart from the tensor code)."""
    if name == "under":
        return py_holds(box_j, box_i, "on")
    ix0, iy0, ix1, iy1 = box_i
    jx0, jy0, jx1, jy1 = box_j
    cix, ciy, cjx, cjy = (ix0 + ix1) / 2, (iy0 + iy1) / 2, (jx0 + jx1) / 2, (jy0 + jy1) / 2
    wi, hi, wj, hj = ix1 - ix0, iy1 - iy0, jx1 - jx0, jy1 - jy0
    if name in ("left_of", "right_of", "above", "below"):
        dx, dy = cjx - cix, cjy - ciy
        along, across, extent = {
            "left_of": (dx, abs(dy), (wi + wj) / 2), "right_of": (-dx, abs(dy), (wi + wj) / 2),
            "above": (dy, abs(dx), (hi + hj) / 2), "below": (-dy, abs(dx), (hi + hj) / 2),
        }[name]
        return along > across and along > SEPARATION * extent
    if name == "on":  # i higher, i's centre over j, i's bottom between j's top (less the slack) and j's bottom
        return ciy < cjy and jx0 <= cix <= jx1 and jy0 - CONTACT * (hi + hj) / 2 <= iy1 <= jy1
    if name == "next_to":  # at one level, apart along x, no room for a third between them
        shared = min(iy1, jy1) - max(iy0, jy0)
        width, dx = (wi + wj) / 2, abs(cjx - cix)
        return shared > LEVEL * min(hi, hj) and dx > SEPARATION * width and dx - width < NEAR * width
    if name == "in":  # mostly inside, and the container the bigger by the dedupe margin
        inter = max(0.0, min(ix1, jx1) - max(ix0, jx0)) * max(0.0, min(iy1, jy1) - max(iy0, jy0))
        return inter > CONTAIN * wi * hi and wi * hi <= SMALLER * wj * hj
    return False  # in_front_of, behind: no box rule


def random_boxes(count, seed, span=100.0):
    """`count` boxes in a span x span image, sides 2..60: small enough to be apart, large enough to touch and nest."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * span
    return torch.cat([xy, xy + 2 + torch.rand(count, 2, generator=g) * 58], dim=-1)


def test_readable_relations_are_the_ones_with_a_box_rule():
    assert READABLE == ("left_of", "right_of", "above", "below", "on", "under", "next_to", "in")
    assert set(RULES) == set(READABLE) and RELATIONS[: len(READABLE)] == READABLE
    # a swapped rule reads the converse's rule: under = on reversed
    for name, (rule, swapped) in RULES.items():
        if swapped:
            assert RULES[OPPOSITE[name]] == (rule, False)
    assert RULES["under"] == ("on", True)


def test_every_rule_matches_the_plain_python_rules():
    a, b = random_boxes(4000, 1), random_boxes(4000, 2)
    a[:500] = b[:500]  # identical boxes
    for name in RELATIONS:
        kind = torch.full((len(a),), RELATIONS.index(name))
        got = relation_holds(a, b, kind).tolist()
        want = [py_holds(x, y, name) for x, y in zip(a.tolist(), b.tolist())]
        assert got == want, name
        assert (sum(want) > 20) == (name in READABLE), (name, sum(want))  # each rule holds often enough to be tested


def test_converses_agree():
    a, b = random_boxes(4000, 3), random_boxes(4000, 4)
    def rel(x, y, kind):
        return relation_holds(x, y, torch.full((len(x),), kind))
    assert torch.equal(rel(a, b, ON), rel(b, a, UNDER)) and rel(a, b, ON).any()
    assert torch.equal(rel(a, b, NEXT), rel(b, a, NEXT)) and rel(a, b, NEXT).any()
    assert torch.equal(rel(a, b, LEFT), rel(b, a, RIGHT)) and torch.equal(rel(a, b, ABOVE), rel(b, a, BELOW))
    # on and in are one-way: never both (i, j) and (j, i)
    assert not (rel(a, b, ON) & rel(b, a, ON)).any() and not (rel(a, b, IN) & rel(b, a, IN)).any()


# Boxes as a photo shows them (640 x 480, y down).
TABLE, CUP = (100, 300, 500, 420), (260, 240, 300, 310)  # the cup's bottom inside the tabletop seen in perspective
BED, CAT_ON_BED = (0, 150, 640, 480), (200, 180, 380, 300)  # the cat inside the top part of the bed's box
PLANK, BOOK = (50, 200, 450, 215), (100, 120, 130, 200)  # a book standing on a shelf's plank: edges touching


def test_on_holds_for_things_resting_on_others():
    for top, support in ((CUP, TABLE), (CAT_ON_BED, BED), (BOOK, PLANK), STACK):
        assert holds(top, support, ON) and holds(support, top, UNDER), (top, support)
        assert not holds(support, top, ON) and not holds(top, support, UNDER), (top, support)  # swapped
    # a rider on a horse: wider support, the rider's feet at the horse's belly
    assert holds((220, 60, 300, 250), (120, 150, 420, 380), ON)
    # a big thing on a small one: a table standing on a rug at its feet
    assert holds((100, 100, 300, 300), (50, 280, 350, 320), ON)


def test_on_needs_contact():
    # two 100-px boxes, i above j with a gap d between i's bottom and j's top: contact within CONTACT of their height
    for d in (-30, 0, 5, 9, 11, 20, 100):
        assert holds((0, 0, 100, 100), (0, 100 + d, 100, 200 + d), ON) == (d <= CONTACT * 100), d
    assert not holds((270, 100, 290, 120), TABLE, ON)  # a bird flying over the table


def test_on_is_not_beside_nor_a_containment_low_or_central():
    a, b = SIDE
    assert not holds(a, b, ON) and not holds(b, a, ON)  # side by side, touching: wrong axis
    assert not holds((0, 0, 100, 100), (100, 20, 200, 120), ON)  # touching, a little higher, but beside
    assert not holds((120, 380, 180, 440), BED, ON)  # a box in the bottom part of the bed's: below its centre
    assert not holds((270, 265, 370, 365), BED, ON)  # centred in it: not higher
    assert not holds((150, 100, 250, 450), TABLE, ON)  # a person standing at the table: bottom below the table's
    assert not holds(TABLE, TABLE, ON) and not holds(TABLE, TABLE, UNDER)


def test_next_to_holds_side_by_side_close_either_order():
    dog, cat = (100, 300, 250, 420), (260, 320, 360, 420)
    tree, bench = (80, 20, 160, 430), (170, 330, 400, 420)
    for a, b in ((dog, cat), (tree, bench), SIDE):
        assert holds(a, b, NEXT) and holds(b, a, NEXT), (a, b)
    assert holds((0, 0, 100, 100), (95, 30, 180, 110), NEXT)  # overlapping a little (one partly before the other)


def test_next_to_is_not_stacked_far_or_overlapping():
    top, bottom = STACK
    assert not holds(top, bottom, NEXT) and not holds(bottom, top, NEXT)  # stacked
    assert not holds(CUP, TABLE, NEXT)  # on, not beside
    assert not holds((0, 0, 100, 100), (100, 60, 200, 160), NEXT)  # diagonal: they share 40 of 100 px of height
    # two 100-px boxes at one level: the gap must be less than NEAR mean widths, the overlap less than half
    for d in (10, 49, 51, 100, 150, 199, 201, 400):
        want = SEPARATION * 100 < d and d - 100 < NEAR * 100
        assert holds((0, 0, 100, 100), (d, 0, d + 100, 100), NEXT) == want, d
    assert not holds((0, 0, 100, 100), (0, 0, 100, 100), NEXT)  # identical


def test_in_holds_for_containment():
    room, man = (0, 0, 640, 480), (300, 150, 380, 400)
    box, cat_in_box = (200, 250, 420, 420), (240, 200, 380, 410)  # the cat's head above the box
    field, walker = (0, 200, 640, 480), (300, 150, 340, 330)  # head against the sky above the field
    tiny = (310, 240, 312, 242)
    for a, b in ((man, room), (cat_in_box, box), (walker, field), (tiny, room), (tiny, man), (CAT_ON_BED, BED)):
        assert holds(a, b, IN), (a, b)
        assert not holds(b, a, IN), (a, b)  # swapped: the container is not in its content


def test_in_is_not_half_out_nor_the_same_region():
    big = (0, 0, 100, 100)
    # a 40 x 40 box sliding out of a 100 x 100 one: in while more than half of it is inside
    for x in (0, 60, 70, 79, 81, 90, 120):
        assert holds((x, 30, x + 40, 70), big, IN) == ((100 - x) / 40 > CONTAIN), x
    assert not holds(big, big, IN)  # identical boxes: one region seen twice
    assert not holds((5, 5, 95, 95), big, IN)  # 81% of its area: by the dedupe margin, the same region
    assert holds((10, 10, 90, 90), big, IN)  # 64%
    assert not holds((0, 0, 100, 100), (50, 0, 150, 100), IN)  # same size, half overlapping: beside
    assert not holds((0, 0, 10, 10), (50, 50, 100, 100), IN)  # apart


def test_depth_relations_never_hold():
    a, b = random_boxes(500, 5), random_boxes(500, 6)
    for kind in (FRONT, BEHIND):
        assert not relation_holds(a, b, torch.full((500,), kind)).any()


def best_cells(obj, cells, top=2):
    return sorted(cells, key=lambda c: -iou(obj, c))[:top]


@pytest.mark.parametrize("size", [(448, 224), (224, 224), (300, 200)])
def test_grid_cells_of_side_by_side_objects_still_count(size):
    width, height = size
    cells = grid_boxes(width, height)
    # the two halves of the image, and two smaller objects centred in them
    objects = [((width * 0.08, height * 0.3, width * 0.42, height * 0.7), (width * 0.58, height * 0.3, width * 0.92, height * 0.7))]
    if width > height:  # the two photos of a side-by-side collage (in a square image, see below)
        objects.append(((0, 0, width // 2, height), (width // 2, 0, width, height)))
    for left, right in objects:
        for ci, cj in itertools.product(best_cells(left, cells), best_cells(right, cells)):
            assert holds(ci, cj, LEFT), (ci, cj)
            assert not holds(cj, ci, LEFT) and not holds(ci, cj, ABOVE)
    # the same objects stacked (transposed): their best cells never read "left of"
    cells_t = grid_boxes(height, width)
    for left, right in objects:
        top, bottom = (tuple(v for k in (1, 0, 3, 2) for v in (b[k],)) for b in (left, right))
        for ci, cj in itertools.product(best_cells(top, cells_t), best_cells(bottom, cells_t)):
            assert holds(ci, cj, ABOVE)
            assert not holds(ci, cj, LEFT) and not holds(ci, cj, RIGHT)


def test_diagonal_cells_of_a_square_image_hold_neither():
    # The two halves of a square image are covered equally well by the 2x2
    # cells of their column; the diagonal pair (top-left, bottom-right) is
    # 90 px apart on both axes: it could be side by side or stacked, and
    # counts for neither.
    top_left, bottom_right = grid_boxes(224, 224)[0], grid_boxes(224, 224)[3]
    assert not holds(top_left, bottom_right, LEFT) and not holds(top_left, bottom_right, ABOVE)


def test_adjacent_grid_cells_count_and_overlapping_ones_do_not():
    cells = grid_boxes(100, 100)
    two, three = cells[:4], cells[4:]
    assert holds(two[0], two[1], LEFT)  # 2x2 neighbours: 40 apart, extent 60
    assert holds(three[0], three[1], LEFT)  # 3x3 neighbours: 30 apart, extent 40
    assert not holds(two[0], three[1], LEFT)  # 20 apart, extent 50: mostly the same pixels


def test_grid_cells_read_the_new_relations():
    """What the grid can say: neighbouring rows of one column read "on", cells two rows apart do not;
    neighbouring columns of one row read "next to", neighbouring rows do not; small cells sit in big ones."""
    cells = grid_boxes(300, 300)
    two, three = cells[:4], cells[4:]  # 2x2 and 3x3, row-major
    assert holds(three[0], three[3], ON) and holds(three[3], three[6], ON) and holds(two[0], two[2], ON)
    assert not holds(three[0], three[6], ON)  # 0.2 of the side apart, mean height 0.4: a gap
    assert not holds(three[0], three[1], ON) and not holds(three[0], three[4], ON)  # beside; diagonal
    assert holds(three[0], three[1], NEXT) and holds(three[0], three[2], NEXT) and holds(two[0], two[1], NEXT)
    assert not holds(three[0], three[3], NEXT) and not holds(three[0], three[4], NEXT) and not holds(two[0], two[3], NEXT)
    assert holds(three[0], two[0], IN) and holds(three[4], two[0], IN)  # a corner cell; the centre cell (56%)
    assert not holds(two[0], three[0], IN) and not holds(three[0], three[1], IN)


def test_collage_photos():
    a, b = SIDE
    top, bottom = STACK
    assert holds(a, b, NEXT) and not holds(a, b, ON) and not holds(a, b, IN)
    assert holds(top, bottom, ON) and holds(bottom, top, UNDER) and not holds(top, bottom, NEXT)


def test_score_side_by_side_stacked_swapped():
    a, b = SIDE
    top, bottom = STACK
    r = score([[a, b], [b, a], [top, bottom]], [(0, 1, LEFT)])
    assert r[0].tolist() == [1.0, 0.0, 0.0]
    r = score([[a, b], [b, a], [top, bottom]], [(0, 1, ABOVE)])
    assert r[0].tolist() == [0.0, 0.0, 1.0]


def test_padding_rows_are_not_counted():
    a, b = SIDE
    r = score([[a, b], [b, a]], [(0, 1, LEFT), (-1, -1, -1), (-1, 0, 0)])
    assert r[0].tolist() == [1.0, 0.0]
    # two real relations, one holding: 0.5
    c = (448, 0, 672, 224)
    r = score([[a, b, c]], [(0, 1, LEFT), (2, 1, LEFT), (-1, -1, -1)])
    assert r[0].tolist() == [0.5]
    # a query without relations (padding only) scores 0
    assert score([[a, b]], [(-1, -1, -1)])[0].tolist() == [0.0]


def test_relations_without_a_box_rule_are_not_counted():
    """in_front_of / behind cannot be read from 2-D boxes: a query holding one is scored on its other relations."""
    a, b = SIDE
    r = score([[a, b], [b, a]], [(0, 1, LEFT), (0, 1, FRONT), (1, 0, BEHIND)])
    assert r[0].tolist() == [1.0, 0.0]  # 1 of 1 counted relation, not 1 of 3
    assert score([[a, b]], [(0, 1, FRONT)])[0].tolist() == [0.0]  # nothing countable: 0, as without relations


def test_the_new_relations_are_counted():
    # cup on table, the cup in the scene, the table next to a chair; and one depth relation, not counted
    scene = (0, 0, 640, 480)
    chair = (510, 250, 620, 420)
    rows = [(0, 1, ON), (1, 0, UNDER), (0, 2, IN), (1, 3, NEXT), (3, 1, NEXT), (0, 3, FRONT)]
    r = score([[CUP, TABLE, scene, chair], [TABLE, CUP, scene, chair], [CUP, TABLE, scene, (0, 0, 50, 50)]], rows)
    assert r[0].tolist() == pytest.approx([1.0, 1 / 5, 3 / 5])  # all 5; only IN (the table in the scene); ON, UNDER, IN


def test_unmatched_parts_do_not_hold():
    a, b = SIDE
    boxes = torch.tensor([[a, b]], dtype=torch.float32)
    rel = torch.tensor([[(0, 1, LEFT), (1, 0, RIGHT)]])
    ids = torch.zeros(1, 3, dtype=torch.long)
    cols = torch.tensor([[[0, 1], [0, -1], [-1, -1]]])  # both matched, part 1 unmatched, none matched
    assert relation_score(cols, ids, boxes, rel)[0].tolist() == [1.0, 0.0, 0.0]


def test_batched_queries_match_one_at_a_time():
    """relation_score over [Q, K, r] equals the same queries one at a time, and a plain-Python loop over the rules."""
    g = torch.Generator().manual_seed(0)
    num_items, n, q, k, m, r = 9, 6, 12, 5, 4, 6
    boxes = random_boxes(num_items * n, 7).reshape(num_items, n, 4)
    boxes[0, 1] = boxes[0, 0]  # two regions with one box
    cols = torch.randint(-1, n, (q, k, m), generator=g)
    ids = torch.randint(0, num_items, (q, k), generator=g)
    rel = torch.stack([torch.randint(-1, m, (q, r), generator=g), torch.randint(0, m, (q, r), generator=g),
                       torch.randint(0, len(RELATIONS), (q, r), generator=g)], dim=-1)
    rel[0, :, 2] = FRONT  # a query whose relations are all unreadable
    full = relation_score(cols, ids, boxes, rel)
    held = 0
    for i in range(q):
        one = relation_score(cols[i : i + 1], ids[i : i + 1], boxes, rel[i : i + 1])
        assert torch.equal(full[i : i + 1], one)
        counted = [(a, b, RELATIONS[t]) for a, b, t in rel[i].tolist() if a >= 0 and RELATIONS[t] in READABLE]
        want = []
        for c in range(k):
            item, parts = int(ids[i, c]), cols[i, c].tolist()
            ok = sum(parts[a] >= 0 and parts[b] >= 0
                     and py_holds(boxes[item, parts[a]].tolist(), boxes[item, parts[b]].tolist(), name)
                     for a, b, name in counted)
            held += ok
            want.append(ok / len(counted) if counted else 0.0)
        assert full[i].tolist() == pytest.approx(want)
    assert held > 10 and full[0].tolist() == [0.0] * k
