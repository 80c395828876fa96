"""Region proposals for photos: the "segments" and "halves" families and their methods."""

import builtins
import importlib.util

import numpy as np
import pytest
from PIL import Image
from tiny_encoder import TinyEncoder

from geosteer.encoders.regions import (
    FAMILIES,
    METHODS,
    PHOTO_FAMILIES,
    check_method,
    family_regions,
    halves_boxes,
    propose_regions,
    region_crops,
    segment_boxes,
)

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_skimage = pytest.mark.skipif(not HAS_SKIMAGE, reason="the 'segments' family needs scikit-image (geosteer[photos])")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def photo(name: str, side: int) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    im = Image.fromarray(arr).convert("RGB")
    s = min(im.size)
    return im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width - s) // 2 + s, (im.height - s) // 2 + s)).resize((side, side))


def collage(names, side: int = 96, layout: str = "row", gap: int = 0):
    tiles = [photo(n, side) for n in names]
    step = side + gap
    size = (len(tiles) * step - gap, side) if layout == "row" else (side, len(tiles) * step - gap)
    canvas = Image.new("RGB", size, (255, 255, 255))
    boxes = []
    for k, t in enumerate(tiles):
        xy = (k * step, 0) if layout == "row" else (0, k * step)
        canvas.paste(t, xy)
        boxes.append((xy[0], xy[1], xy[0] + side, xy[1] + side))
    return canvas, boxes


def test_registry_holds_the_photo_families():
    assert {"segments", "halves"} <= set(FAMILIES)
    assert set(PHOTO_FAMILIES) == {"grid", "segments", "halves"}
    assert check_method("segments") == ("segments",)
    assert check_method("segments+grid") == ("segments", "grid")
    assert check_method("segments+halves") == ("segments", "halves")
    assert check_method("halves") == ("halves",)
    for families in METHODS.values():
        assert all(f in FAMILIES for f in families)
    with pytest.raises(ValueError, match="method"):
        check_method("selective-search")


def test_halves_are_the_four_half_images():
    assert halves_boxes(100, 60) == [(0, 0, 50, 60), (50, 0, 100, 60), (0, 0, 100, 30), (0, 30, 100, 60)]
    im = Image.new("RGB", (100, 60))
    assert propose_regions(im, "halves") == halves_boxes(100, 60)
    boxes, crops = family_regions(im, "halves", 32)
    assert boxes == halves_boxes(100, 60) and [c.size for c in crops] == [(32, 32)] * 4


@needs_skimage
@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("names", [("chelsea", "coffee"), ("rocket", "chelsea", "coffee"), ("coffee", "rocket", "astronaut", "chelsea")])
def test_segments_find_the_photos_of_a_collage(names, layout):
    image, tiles = collage(names, layout=layout, gap=4)
    boxes = propose_regions(image, "segments")
    assert 1 <= len(boxes) <= 16
    w, h = image.size
    assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in boxes)
    found = [max(iou(t, b) for b in boxes) for t in tiles]
    assert sum(v >= 0.5 for v in found) >= len(tiles) - 1, found
    # no proposal is (almost) the whole collage
    assert all(iou(b, (0, 0, w, h)) < 0.9 for b in boxes)


@needs_skimage
def test_segments_are_deterministic_and_scale_with_the_image():
    image, _ = collage(("chelsea", "rocket"), side=96)
    a = segment_boxes(image)
    assert a == segment_boxes(np.asarray(image))
    big = image.resize((image.width * 2, image.height * 2), Image.BILINEAR)
    b = segment_boxes(big)  # segmented at the same working size: the same segments, boxes x2
    assert len(b) >= 1
    for box in a[:3]:
        doubled = tuple(2 * v for v in box)
        assert max(iou(doubled, o) for o in b) > 0.8


@needs_skimage
def test_segments_respect_max_regions_and_flat_images_fall_back():
    image, _ = collage(("chelsea", "coffee", "rocket", "astronaut"), side=96)
    assert len(segment_boxes(image, max_regions=3)) <= 3
    assert len(propose_regions(image, "segments+grid", max_regions=5)) == 5
    flat = Image.new("RGB", (80, 60), (30, 60, 90))
    assert segment_boxes(flat) == []  # one segment covering everything is dropped
    assert propose_regions(flat, "segments") == [(0, 0, 80, 60)]
    boxes, crops = region_crops(flat, "segments", out_size=24)
    assert boxes == [(0, 0, 80, 60)] and crops[0].size == (24, 24)


@needs_skimage
def test_segment_crops_are_the_boxes_resized():
    image, _ = collage(("chelsea", "coffee"), side=64)
    boxes, crops = family_regions(image, "segments", 40)
    assert len(boxes) == len(crops) >= 1
    for box, crop in zip(boxes, crops):
        want = image.crop(box).resize((40, 40), Image.BILINEAR)
        assert crop.size == (40, 40)
        assert np.array_equal(np.asarray(crop), np.asarray(want))


def test_segments_without_scikit_image_name_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("skimage"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"geosteer\[photos\]"):
        propose_regions(Image.new("RGB", (32, 32)), "segments")
    # the other photo families need nothing
    assert len(propose_regions(Image.new("RGB", (32, 32)), "grid")) == 13
    assert len(propose_regions(Image.new("RGB", (32, 32)), "halves")) == 4


@needs_skimage
def test_indexer_takes_the_photo_methods():
    from geosteer.index import Indexer

    images = [collage(("chelsea", "coffee"), side=48)[0], collage(("rocket", "chelsea", "coffee"), side=48, layout="column")[0]]
    indexer = Indexer(TinyEncoder())
    for method in ("segments", "segments+grid", "halves", "segments+halves"):
        g = indexer.index_images(images, method=method)
        assert g.parts.shape[:2] == g.parts_mask.shape == g.part_boxes.shape[:2]
        for i, im in enumerate(images):
            got = [tuple(int(v) for v in b) for b in g.part_boxes[i][g.parts_mask[i]].tolist()]
            assert got == propose_regions(im, method)
