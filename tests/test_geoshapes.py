"""GeoShapes renderer and captions: determinism, geometry, caption forms."""

import random

import numpy as np
import pytest

from geosteer.geoshapes import (
    BACKGROUND_RGB,
    COLOUR_RGB,
    COLOURS,
    SHAPES,
    Scene,
    ShapeObject,
    caption,
    object_boxes,
    object_crop,
    random_scene,
    render,
)


def _fg(img) -> np.ndarray:
    """Pixels that differ clearly from the background, `[H, W]` bool."""
    arr = np.asarray(img, dtype=np.int16)
    return np.abs(arr - np.array(BACKGROUND_RGB, dtype=np.int16)).max(axis=2) > 40


def test_same_seed_same_pixels_different_seed_different():
    for seed in range(5):
        a = render(random_scene(random.Random(seed)), 96)
        b = render(random_scene(random.Random(seed)), 96)
        c = render(random_scene(random.Random(seed + 1000)), 96)
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_noise_is_seeded():
    scene = random_scene(random.Random(3))
    clean = np.asarray(render(scene, 64), dtype=np.int16)
    n1 = np.asarray(render(scene, 64, noise=0.1, seed=7), dtype=np.int16)
    n2 = np.asarray(render(scene, 64, noise=0.1, seed=7), dtype=np.int16)
    n3 = np.asarray(render(scene, 64, noise=0.1, seed=8), dtype=np.int16)
    auto1 = np.asarray(render(scene, 64, noise=0.1))
    auto2 = np.asarray(render(scene, 64, noise=0.1))
    assert np.array_equal(n1, n2) and np.array_equal(auto1, auto2)
    assert not np.array_equal(n1, n3)
    # the noise has roughly the asked std (clipping at 0 shrinks it a little)
    assert 0.05 * 255 < (n1 - clean).std() < 0.12 * 255


@pytest.mark.parametrize("seed", range(12))
def test_objects_drawn_where_boxes_say(seed):
    scene = random_scene(random.Random(seed), num_objects=(1, 3))
    size = 96
    img = render(scene, size)
    arr = np.asarray(img, dtype=np.int16)
    fg = _fg(img)
    covered = np.zeros_like(fg)
    for obj, (x0, y0, x1, y1) in zip(scene.objects, object_boxes(scene, size)):
        # every object's own colour fills the middle of its box ...
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert np.abs(arr[cy, cx] - np.array(COLOUR_RGB[obj.colour])).max() <= 3
        # ... and its foreground reaches (to within 1.5 px) each side of the box
        xi0, yi0, xi1, yi1 = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
        colour_mask = np.abs(arr - np.array(COLOUR_RGB[obj.colour])).max(axis=2) < 60
        ys, xs = np.nonzero(colour_mask[yi0:yi1, xi0:xi1])
        assert xs.min() + xi0 <= x0 + 1.5 and xs.max() + xi0 + 1 >= x1 - 1.5
        assert ys.min() + yi0 <= y0 + 1.5 and ys.max() + yi0 + 1 >= y1 - 1.5
        covered[max(0, yi0 - 1): yi1 + 1, max(0, xi0 - 1): xi1 + 1] = True
    # nothing is drawn outside the boxes
    assert not (fg & ~covered).any()


def test_every_shape_and_colour_renders_distinctly():
    crops = {s: _fg(object_crop(ShapeObject(s, "red", 0.5, 0.5, 0.24), 96, fill=None)) for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                inter = (crops[a] & crops[b]).sum()
                union = (crops[a] | crops[b]).sum()
                # even at the smallest default size (23 px across) the masks differ
                assert inter / union < 0.9, (a, b)
    # pentagon vs hexagon (the fine-grained pair): >= 10% of their pixels
    # (~47 px at this size) differ, enough for a small ViT to learn
    p, h = crops["pentagon"], crops["hexagon"]
    assert (p ^ h).sum() >= max(30, 0.10 * (p | h).sum())
    means = [np.asarray(object_crop(ShapeObject("circle", c, 0, 0, 0.3)))[48, 48] for c in COLOURS]
    assert len({tuple(m) for m in means}) == len(COLOURS) >= 6


def test_object_crop_centred():
    img = object_crop(ShapeObject("square", "blue", 0.1, 0.9, 0.2), size=64, fill=0.75)
    ys, xs = np.nonzero(_fg(img))
    assert abs(xs.mean() - 31.5) < 1.5 and abs(ys.mean() - 31.5) < 1.5


def test_captions():
    a = ShapeObject("pentagon", "red", 0.25, 0.5, 0.3)
    b = ShapeObject("hexagon", "blue", 0.75, 0.5, 0.3)
    c = ShapeObject("star", "orange", 0.5, 0.2, 0.2)
    assert caption(Scene((a,))) == "a red pentagon"
    assert caption(Scene((a, b))) == "a red pentagon and a blue hexagon"
    assert caption(Scene((a, b, c))) == "a red pentagon, a blue hexagon and an orange star"
    assert caption(Scene((a, b)), relation="left_of") == "a red pentagon to the left of a blue hexagon"
    assert caption(Scene((b, a)), relation="right_of") == "a blue hexagon to the right of a red pentagon"
    a2 = ShapeObject("pentagon", "red", 0.7, 0.7, 0.3)
    assert caption(Scene((a, a2))) == "two red pentagons"
    assert caption(Scene((a, a2, b))) == "two red pentagons and a blue hexagon"
    assert caption(Scene((a,)), template="a picture of {}") == "a picture of a red pentagon"
    with pytest.raises(ValueError, match="relation"):
        caption(Scene((a, b)), relation="right_of")  # does not hold
    with pytest.raises(ValueError, match="relation"):
        caption(Scene((a, b)), relation="inside")
    with pytest.raises(ValueError, match="2 objects"):
        caption(Scene((a, b, c)), relation="left_of")


def test_random_scene_options():
    rng = random.Random(0)
    for _ in range(30):
        s = random_scene(rng, num_objects=3)
        assert len(s.objects) == 3
        assert len({o.shape for o in s.objects}) == 3 and len({o.colour for o in s.objects}) == 3
        for o in s.objects:  # inside the image
            assert o.size / 2 <= o.cx <= 1 - o.size / 2 and o.size / 2 <= o.cy <= 1 - o.size / 2
        for i in range(3):  # separate: circumscribed circles do not meet
            for j in range(i + 1, 3):
                oi, oj = s.objects[i], s.objects[j]
                assert np.hypot(oi.cx - oj.cx, oi.cy - oj.cy) > (oi.size + oj.size) / 2
    touching = [random_scene(rng, num_objects=2, placement="overlapping") for _ in range(20)]
    for s in touching:
        oi, oj = s.objects
        assert np.hypot(oi.cx - oj.cx, oi.cy - oj.cy) < (oi.size + oj.size) / 2
    with pytest.raises(ValueError, match="num_objects"):
        random_scene(rng, num_objects=4)
    with pytest.raises(ValueError, match="placement"):
        random_scene(rng, placement="stacked")
    with pytest.raises(TypeError, match="rng"):
        random_scene(0)
    with pytest.raises(ValueError, match="shape"):
        ShapeObject("oval", "red", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError, match="colour"):
        ShapeObject("circle", "teal", 0.5, 0.5, 0.3)
