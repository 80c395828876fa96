"""Region proposals on rendered GeoShapes scenes; padded sets for the head."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from geosteer.geoshapes import BACKGROUND_RGB, SHAPES, Scene, ShapeObject, object_boxes, object_crop, random_scene, render
from geosteer.encoders.regions import (
    crop_regions,
    grid_boxes,
    pad_boxes,
    propose_regions,
    region_crops,
    region_sets,
)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_components_find_each_separated_object(noise):
    rng = random.Random(1)
    for _ in range(40):
        scene = random_scene(rng, num_objects=(1, 3))
        boxes = propose_regions(render(scene, 96, noise=noise), "components")
        truth = object_boxes(scene, 96)
        assert len(boxes) == len(truth)
        for t in truth:
            assert max(_iou(t, b) for b in boxes) > 0.5
        # and each proposal belongs to a different object
        best = [max(range(len(boxes)), key=lambda k: _iou(t, boxes[k])) for t in truth]
        assert len(set(best)) == len(truth)


def test_overlapping_objects_merge_into_one_component():
    # the documented failure mode of components (why the grid exists)
    rng = random.Random(2)
    merged = 0
    for _ in range(20):
        scene = random_scene(rng, num_objects=2, placement="overlapping")
        merged += len(propose_regions(render(scene, 96), "components")) == 1
    assert merged >= 18


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_colour_components_separate_touching_objects(noise):
    # touching / overlapping objects of different colours stay apart with "colours"
    rng = random.Random(4)
    exact = 0
    for k in range(20):
        scene = random_scene(rng, num_objects=(2, 3), placement=("touching", "overlapping")[k % 2])
        boxes = propose_regions(render(scene, 96, noise=noise), "colours")
        truth = object_boxes(scene, 96)
        exact += len(boxes) == len(truth)
        assert sum(max(_iou(t, b) for b in boxes) > 0.5 for t in truth) >= len(truth) - 1
    assert exact >= 18
    # separated scenes: same answer as plain components
    for _ in range(10):
        img = render(random_scene(rng, num_objects=(1, 3)), 96, noise=noise)
        assert len(propose_regions(img, "colours")) == len(propose_regions(img, "components"))


def test_grid_is_13_overlapping_boxes_covering_the_image():
    boxes = grid_boxes(96, 96)
    assert len(boxes) == 13 == len(propose_regions(render(random_scene(random.Random(0)), 96), "grid"))
    covered = np.zeros((96, 96), bool)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    # 2x2 cells overlap their neighbours; 3x3 cells too
    assert boxes[0][2] > boxes[1][0] and boxes[4][2] > boxes[5][0]
    assert len(grid_boxes(64, 48)) == 13 and grid_boxes(64, 48)[3][2:] == (64, 48)


def test_both_and_max_regions():
    scene = random_scene(random.Random(5), num_objects=3)
    img = render(scene, 96)
    both = propose_regions(img, "both", max_regions=16)
    assert both[:3] == propose_regions(img, "components") and both[3:] == grid_boxes(96, 96)
    assert propose_regions(img, "components+grid", max_regions=5) == both[:5]
    with pytest.raises(ValueError, match="method"):
        propose_regions(img, "sam")
    with pytest.raises(ValueError, match="max_regions"):
        propose_regions(img, "grid", max_regions=0)
    with pytest.raises(TypeError, match="image"):
        propose_regions(3)
    with pytest.raises(TypeError, match="image is a tensor of dtype torch.int32"):
        propose_regions(torch.zeros(3, 8, 8, dtype=torch.int32))


def test_blank_image_gets_whole_image_region():
    blank = Image.new("RGB", (40, 30), BACKGROUND_RGB)
    assert propose_regions(blank, "components") == [(0, 0, 40, 30)]


def test_region_sets_padded_and_masked():
    rng = random.Random(3)
    scenes = [random_scene(rng, num_objects=n) for n in (1, 3, 2)]
    images = [render(s, 96) for s in scenes]
    boxes, mask = region_sets(images, "components")
    assert boxes.shape == (3, 3, 4) and boxes.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == [1, 3, 2]
    assert (boxes[~mask] == 0).all()
    boxes, mask = region_sets(images, "both", max_regions=16)
    assert boxes.shape == (3, 16, 4) and mask.sum(dim=1).tolist() == [14, 16, 15]
    empty_boxes, empty_mask = pad_boxes([])
    assert empty_boxes.shape == (0, 0, 4) and empty_mask.shape == (0, 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_component_crop_matches_training_crop(shape):
    # the crop of a detected object looks like `object_crop` of that object,
    # so a tower trained on object crops sees the same thing at indexing time
    for size in (0.24, 0.36):
        obj = ShapeObject(shape, "green", 0.3, 0.6, size)
        boxes, crops = region_crops(render(Scene((obj,)), 96), "components", out_size=48)
        ref = np.asarray(object_crop(obj, 48), dtype=np.float32)
        assert len(crops) == 1 and np.abs(ref - np.asarray(crops[0], dtype=np.float32)).mean() < 8.0


def test_crops():
    obj = ShapeObject("pentagon", "red", 0.3, 0.6, 0.3)
    scene_img = render(Scene((obj,)), 96)
    boxes, crops = region_crops(scene_img, "both", out_size=48)
    assert len(crops) == len(boxes) == 14 and all(c.size == (48, 48) for c in crops)
    # grid crops are the cells themselves: the first 2x2 cell is the top-left 58 px
    cell = np.asarray(scene_img.crop((0, 0, 58, 58)).resize((48, 48), Image.BILINEAR), dtype=np.float32)
    assert np.abs(cell - np.asarray(crops[1], dtype=np.float32)).max() == 0
    # a box reaching outside the image is filled with the background colour
    edge = crop_regions(scene_img, [(-10, -10, 10, 10)], out_size=20)[0]
    assert tuple(np.asarray(edge)[0, 0]) == BACKGROUND_RGB
    with pytest.raises(ValueError, match="boxes"):
        crop_regions(scene_img, [(5, 5, 5, 9)])
