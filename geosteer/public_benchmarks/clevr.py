"""CLEVR (Johnson et al., 2017) scenes as a caption benchmark in annotation mode.

Layout read (`--root ROOT`), the CLEVR_v1.0 download::

    ROOT/scenes/CLEVR_val_scenes.json
    ROOT/images/val/CLEVR_val_000000.png ...

The scenes file is `{"info": ..., "scenes": [scene, ...]}`; each scene has
`image_index`, `image_filename`, `split`, `objects` (each with `color`,
`size`, `shape`, `material`, `3d_coords`, `pixel_coords`, `rotation`) and
`relationships` (`"left"`, `"right"`, `"front"`, `"behind"`: entry i lists
the objects that lie in that direction from object i). CLEVR's questions
are not used: captions are built from the annotations.

**Regions from the annotations (annotation mode).** CLEVR scenes carry no
bounding boxes, so one is derived per object (`object_box`): a square of
half-side MARGIN · r · f / z around the object's projected centre
`pixel_coords = (x, y, z)`, z its depth from the camera, r CLEVR's object
radius (0.7 for "large", 0.35 for "small"), f = FOCAL · W the focal length
in pixels (W the image width; FOCAL = 35/32, a 35 mm lens on a 32 mm
sensor: our assumption about CLEVR's Blender camera) and MARGIN = 1.2 for
the perspective and height of the shapes. Without a positive depth the
half-side is FALLBACK · W by size. The box is an approximation (shadows,
tall cylinders seen from above and occlusion are ignored); each is cropped
from the image and encoded as the object's region, with the box itself
for the structure term.

**Queries (two per scene where the scene allows).**

- "attribute_swap": the first pair of objects (in annotation order) with
  different colours that also differ in size, material or shape: the
  positive "a large red rubber cube and a small blue metal sphere", the
  negative the same with the two colours swapped. A pair is skipped when
  the scene holds both swapped objects (the negative would be true).
- "relation_flip": among pairs (i, j) with j in relationships["left"][i]
  whose descriptions are unique in the scene and whose centres lie mostly
  side by side in the image (|dx| > |dy|), the one furthest apart in x:
  "<j> to the left of <i>" against "<j> to the right of <i>" (even image
  index) or "<i> to the right of <j>" against "<i> to the left of <j>"
  (odd), so that neither relation word is always the true one.

Metric: per kind, the accuracy of S(positive, image) > S(negative, image)
(ties count as wrong), and their mean.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path

from PIL import Image

from geosteer.public_benchmarks.common import (
    Benchmark,
    Box,
    Example,
    FormatError,
    ImageRef,
    check_limit,
    check_root,
    entry_dict,
    listing,
    read_json,
    text,
)

NAME = "clevr"
SCENES = Path("scenes") / "CLEVR_val_scenes.json"
#: CLEVR's object radius by size, in scene units.
RADIUS: dict[str, float] = {"large": 0.7, "small": 0.35}
#: Focal length as a fraction of the image width (35 mm lens, 32 mm sensor: assumed).
FOCAL = 35.0 / 32.0
#: Growth of the projected radius for the perspective and height of the shapes.
MARGIN = 1.2
#: Half-side as a fraction of the width where the depth is unknown, by size.
FALLBACK: dict[str, float] = {"large": 0.09, "small": 0.045}
ATTRIBUTES = ("size", "color", "material", "shape")
KINDS: tuple[str, ...] = ("attribute_swap", "relation_flip")


def object_box(obj: dict, width: int, height: int) -> Box:
    """The approximate pixel box of a CLEVR object (the module docstring's rule), clipped to the image.

    Args:
        obj: a scene object with `size` ("large" / "small") and
            `pixel_coords` (x, y[, depth]).
        width, height: the image's size in pixels.

    Returns:
        (x0, y0, x1, y1) integer pixels, x1/y1 exclusive, at least 1 x 1.
    """
    x, y = float(obj["pixel_coords"][0]), float(obj["pixel_coords"][1])
    depth = float(obj["pixel_coords"][2]) if len(obj["pixel_coords"]) > 2 else 0.0
    size = obj["size"]
    half = MARGIN * RADIUS[size] * FOCAL * width / depth if depth > 0 else FALLBACK[size] * width
    x0, x1 = _span(x - half, x + half, width)
    y0, y1 = _span(y - half, y + half, height)
    return (x0, y0, x1, y1)


def describe(obj: dict) -> str:
    """"a large red rubber cube": the object's four attributes."""
    return f"a {obj['size']} {obj['color']} {obj['material']} {obj['shape']}"


def attribute_query(objects: list[dict]) -> tuple[str, str] | None:
    """(positive, negative) of the "attribute_swap" kind, or None when no pair qualifies."""
    present = {_attrs(o) for o in objects}
    for a, b in combinations(objects, 2):
        if a["color"] == b["color"] or _but_colour(a) == _but_colour(b):
            continue  # swapping the colours of look-alikes names the same scene
        swapped_a, swapped_b = {**a, "color": b["color"]}, {**b, "color": a["color"]}
        if _attrs(swapped_a) in present and _attrs(swapped_b) in present:
            continue
        return f"{describe(a)} and {describe(b)}", f"{describe(swapped_a)} and {describe(swapped_b)}"
    return None


def relation_query(objects: list[dict], left: list[list[int]], image_index: int) -> tuple[str, str] | None:
    """(positive, negative) of the "relation_flip" kind, or None when no pair qualifies.

    Args:
        objects: the scene's objects.
        left: `relationships["left"]`: left[i] lists the objects left of object i.
        image_index: picks the phrasing (even: "left of" true, odd: "right of").
    """
    counts = Counter(_attrs(o) for o in objects)
    best = None
    for i, lefts in enumerate(left):
        for j in lefts:
            if counts[_attrs(objects[i])] > 1 or counts[_attrs(objects[j])] > 1:
                continue  # "the red cube" must name one object
            dx = float(objects[i]["pixel_coords"][0]) - float(objects[j]["pixel_coords"][0])
            dy = abs(float(objects[i]["pixel_coords"][1]) - float(objects[j]["pixel_coords"][1]))
            if dx > dy and (best is None or dx > best[0]):
                best = (dx, i, j)
    if best is None:
        return None
    _, i, j = best
    a, b = describe(objects[i]), describe(objects[j])
    if image_index % 2 == 0:
        return f"{b} to the left of {a}", f"{b} to the right of {a}"
    return f"{a} to the right of {b}", f"{a} to the left of {b}"


def read(root: str | Path, limit: int | None = None) -> Benchmark:
    """Read a local CLEVR copy (val scenes) and build its caption pairs.

    Args:
        root: the folder laid out as the module docstring says.
        limit: use the first `limit` scenes (None: all).

    Returns:
        A "pair" `Benchmark` with subsets `KINDS`; each image carries its
        objects' approximate boxes as annotation regions.

    Raises:
        FormatError: no scenes file, no images folder, a file that is not
            JSON or lacks `scenes`, a scene or object missing a key or with
            a bad value (an unknown size, pixel_coords that are not 2-3
            numbers, relationships of the wrong length or with ids out of
            range), an image that does not exist or does not open (named
            with the file and `scenes[k]...`).
    """
    check_limit(limit)
    root = check_root(root, "CLEVR")
    path = root / SCENES
    if not path.is_file():
        raise FormatError(f"{root}: no {SCENES} (the CLEVR_v1.0 folder holds scenes/ and images/)")
    data = entry_dict(read_json(path), str(path))
    scenes = listing(data, "scenes", str(path))
    examples = []
    for k, scene in enumerate(scenes[:limit] if limit is not None else scenes):
        where = f"{path}: scenes[{k}]"
        scene = entry_dict(scene, where)
        filename = text(scene, "image_filename", where)
        split = scene.get("split", "val")
        image = root / "images" / str(split) / filename
        if not image.is_file():
            raise FormatError(f"{where}: image {image} not found")
        objects = [_object(o, f"{where}.objects[{i}]") for i, o in enumerate(listing(scene, "objects", where))]
        left = _left(scene, len(objects), where)
        try:
            with Image.open(image) as im:
                width, height = im.size
        except OSError as e:
            raise FormatError(f"{where}: image {image} does not open ({e})") from None
        index = scene.get("image_index", k)
        index = index if isinstance(index, int) and not isinstance(index, bool) else k
        ref = ImageRef(image, regions=tuple(object_box(o, width, height) for o in objects))
        for kind, pair in (("attribute_swap", attribute_query(objects)), ("relation_flip", relation_query(objects, left, index))):
            if pair is not None:
                examples.append(Example(pair, (ref,), kind, kind, where))
    if not examples:
        raise FormatError(f"{path}: no scene gives a query (scenes need two objects that differ)")
    return Benchmark(NAME, root, "pair", examples, [path], subsets=[s for s in KINDS if any(e.subset == s for e in examples)],
                     headline="accuracy",
                     notes="captions built from the scene annotations (attribute swap, relation flip); regions are "
                           "approximate object boxes from pixel_coords and size (docs/public_benchmarks.md)")


def _attrs(obj: dict) -> tuple[str, str, str, str]:
    return tuple(obj[a] for a in ATTRIBUTES)


def _but_colour(obj: dict) -> tuple[str, str, str]:
    return obj["size"], obj["material"], obj["shape"]


def _object(obj, where: str) -> dict:
    """A scene object with its four attributes (strings) and pixel_coords (2-3 numbers) checked."""
    obj = entry_dict(obj, where)
    for a in ATTRIBUTES:
        text(obj, a, where)
    if obj["size"] not in RADIUS:
        raise FormatError(f"{where}: key 'size' must be one of {sorted(RADIUS)}, got {obj['size']!r}")
    coords = listing(obj, "pixel_coords", where)
    if not 2 <= len(coords) <= 3 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords):
        raise FormatError(f"{where}: key 'pixel_coords' must be [x, y, depth] numbers, got {coords!r}"[:300])
    return obj


def _left(scene: dict, num_objects: int, where: str) -> list[list[int]]:
    """`relationships["left"]`, checked: one list of object ids in range per object."""
    rel = entry_dict(scene.get("relationships"), f"{where}.relationships") if "relationships" in scene else None
    if rel is None:
        raise FormatError(f"{where}: missing key 'relationships'")
    left = listing(rel, "left", f"{where}.relationships")
    if len(left) != num_objects:
        raise FormatError(f"{where}.relationships: 'left' has {len(left)} entries for {num_objects} objects")
    for i, ids in enumerate(left):
        if not isinstance(ids, list) or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < num_objects and j != i for j in ids):
            raise FormatError(f"{where}.relationships.left[{i}]: must list object ids in 0..{num_objects - 1} "
                              f"(not {i} itself), got {ids!r}"[:300])
    return left


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """[lo, hi) rounded and clipped to [0, size), at least one pixel long."""
    a = min(max(0, round(lo)), size - 1)
    return a, max(a + 1, min(size, round(hi)))
