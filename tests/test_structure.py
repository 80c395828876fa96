"""The structure rule (geosteer.stages.structure): a relation holds along its own axis only."""

import itertools

import pytest
import torch

from geosteer import RELATIONS
from geosteer.encoders.regions import grid_boxes
from geosteer.stages.structure import SEPARATION, relation_holds, relation_score

LEFT, RIGHT, ABOVE, BELOW = (RELATIONS.index(r) for r in ("left_of", "right_of", "above", "below"))


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
    front, behind = RELATIONS.index("in_front_of"), RELATIONS.index("behind")
    r = score([[a, b], [b, a]], [(0, 1, LEFT), (0, 1, front), (1, 0, behind)])
    assert r[0].tolist() == [1.0, 0.0]  # 1 of 1 counted relation, not 1 of 3
    assert score([[a, b]], [(0, 1, front)])[0].tolist() == [0.0]  # nothing countable: 0, as without relations


def test_unmatched_parts_do_not_hold():
    a, b = SIDE
    boxes = torch.tensor([[a, b]], dtype=torch.float32)
    rel = torch.tensor([[(0, 1, LEFT), (1, 0, RIGHT)]])
    ids = torch.zeros(1, 3, dtype=torch.long)
    cols = torch.tensor([[[0, 1], [0, -1], [-1, -1]]])  # both matched, part 1 unmatched, none matched
    assert relation_score(cols, ids, boxes, rel)[0].tolist() == [1.0, 0.0, 0.0]


def test_batched_queries_match_one_at_a_time():
    g = torch.Generator().manual_seed(0)
    num_items, n, q, k, m, r = 7, 5, 4, 3, 3, 4
    xy = torch.rand(num_items, n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(num_items, n, 2, generator=g) * 40], dim=-1)
    cols = torch.randint(-1, n, (q, k, m), generator=g)
    ids = torch.randint(0, num_items, (q, k), generator=g)
    rel = torch.stack([torch.randint(-1, m, (q, r), generator=g), torch.randint(0, m, (q, r), generator=g),
                       torch.randint(0, len(RELATIONS), (q, r), generator=g)], dim=-1)
    full = relation_score(cols, ids, boxes, rel)
    for i in range(q):
        one = relation_score(cols[i : i + 1], ids[i : i + 1], boxes, rel[i : i + 1])
        assert torch.equal(full[i : i + 1], one)
        want = []
        for c in range(k):
            valid = [row for row in rel[i].tolist() if row[0] >= 0]
            ok = sum(cols[i, c, a] >= 0 and cols[i, c, b] >= 0
                     and holds(boxes[ids[i, c], cols[i, c, a]].tolist(), boxes[ids[i, c], cols[i, c, b]].tolist(), t)
                     for a, b, t in valid)
            want.append(ok / max(1, len(valid)))
        assert full[i].tolist() == pytest.approx([float(w) for w in want])
