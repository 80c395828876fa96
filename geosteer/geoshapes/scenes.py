"""GeoShapes: seeded synthetic scenes of flat-colour shapes, with captions.

A scene holds 1-3 objects (shape x colour, centre, size) on a dark, flat
background. `render` draws it with PIL (4x supersampled, then box-filtered,
so edges are anti-aliased and pentagons still read as pentagons at 96 px);
`caption` describes it ("a red pentagon and a blue hexagon", "two red
pentagons", "a red pentagon to the left of a blue hexagon"). Everything that
is random takes an explicit `random.Random` or seed, so a seed fixes a scene,
its pixels and its noise.

Coordinates: `ShapeObject.cx, cy, size` are image-relative in [0, 1]
(y down); `object_boxes` gives pixel boxes (x0, y0, x1, y1).
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from geosteer.relations import AXIS_RELATIONS, WORDS

SHAPES: tuple[str, ...] = ("circle", "triangle", "square", "pentagon", "hexagon", "star")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

#: Hues at least ~25 degrees apart, all bright against the dark background.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 20),
    "green": (30, 190, 40),
    "cyan": (0, 210, 220),
    "blue": (40, 80, 255),
    "purple": (150, 50, 220),
    "pink": (255, 110, 190),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
BACKGROUND_RGB: tuple[int, int, int] = (24, 24, 28)

#: GeoShapes' relations (the axis ones of `geosteer.RELATIONS`) -> caption words, subject first.
RELATION_WORDS: dict[str, str] = {r: WORDS[r] for r in AXIS_RELATIONS}
#: Prefix templates a caption can be wrapped in; `{}` is the object list.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a picture of {}",
    "an image of {}",
    "a photo of {}",
    "there is {}",
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")

_SUPERSAMPLE = 4
# Vertex angle offsets (degrees, 0 = +x, y down) and point counts per polygon.
# Triangle, pentagon and star point up; the hexagon is flat-topped so its
# silhouette differs from the pentagon's at the top as well as the bottom.
_POLYGONS: dict[str, tuple[int, float]] = {
    "triangle": (3, -90.0),
    "square": (4, -45.0),
    "pentagon": (5, -90.0),
    "hexagon": (6, 0.0),
}
_STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
_CIRCLE_SCALE = 1.0  # full diameter: a smaller circle is hard to tell from a hexagon at 96 px


@dataclass(frozen=True)
class ShapeObject:
    """One object: `size` is its circumscribed diameter / image side."""

    shape: str
    colour: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.colour not in COLOUR_RGB:
            raise ValueError(f"colour must be one of {COLOURS}, got {self.colour!r}")
        if not 0.0 < self.size <= 2.0:  # > 1 only in close-up crops of squares
            raise ValueError(f"size must lie in (0, 2], got {self.size!r}")

    @property
    def label(self) -> tuple[str, str]:
        """(shape, colour): what a caption says about the object."""
        return (self.shape, self.colour)


@dataclass(frozen=True)
class Scene:
    """1-3 objects, drawn in order (later objects cover earlier ones)."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 3:
            raise ValueError(f"a scene holds 1-3 objects, got {len(self.objects)}")


# ---------------------------------------------------------------- geometry

def _outline(obj: ShapeObject, side: float) -> list[tuple[float, float]] | None:
    """Polygon vertices in pixels of an image `side` wide; None for a circle."""
    cx, cy, r = obj.cx * side, obj.cy * side, obj.size * side / 2.0
    if obj.shape == "circle":
        return None
    if obj.shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * _STAR_INNER
            a = math.radians(-90.0 + 36.0 * k)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    n, start = _POLYGONS[obj.shape]
    return [
        (cx + r * math.cos(math.radians(start + 360.0 * k / n)),
         cy + r * math.sin(math.radians(start + 360.0 * k / n)))
        for k in range(n)
    ]


def _box(obj: ShapeObject, side: float) -> tuple[float, float, float, float]:
    pts = _outline(obj, side)
    if pts is None:
        cx, cy = obj.cx * side, obj.cy * side
        r = obj.size * side / 2.0 * _CIRCLE_SCALE
        return (cx - r, cy - r, cx + r, cy + r)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


def object_boxes(scene: Scene, size: int) -> list[tuple[float, float, float, float]]:
    """Tight pixel box (x0, y0, x1, y1) of each object, clipped to the image.

    Args:
        scene: the scene.
        size: image side in pixels.

    Returns:
        One box per object, in `scene.objects` order.
    """
    out = []
    for obj in scene.objects:
        x0, y0, x1, y1 = _box(obj, float(size))
        out.append((max(0.0, x0), max(0.0, y0), min(float(size), x1), min(float(size), y1)))
    return out


# ---------------------------------------------------------------- rendering

def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, side: float) -> None:
    rgb = COLOUR_RGB[obj.colour]
    pts = _outline(obj, side)
    if pts is None:
        draw.ellipse(_box(obj, side), fill=rgb)
    else:
        draw.polygon(pts, fill=rgb)


def _noise_seed(scene: Scene, size: int) -> int:
    # A stable per-scene seed (hash() of str is salted per process).
    return zlib.crc32(f"{scene!r}|{size}".encode())


def render(scene: Scene, size: int = 96, noise: float = 0.0, seed: int | None = None) -> Image.Image:
    """Draw a scene: flat colours on `BACKGROUND_RGB`, anti-aliased edges.

    Args:
        scene: the objects to draw.
        size: image side in pixels.
        noise: std of additive Gaussian pixel noise, as a fraction of 255.
        seed: noise seed; None derives one from the scene, so the same
            arguments always give the same pixels.

    Returns:
        An RGB `PIL.Image` of `size x size`.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND_RGB)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj, float(big))
    img = img.reduce(_SUPERSAMPLE)  # box filter: area-averaged anti-aliasing
    if noise > 0:
        rng = np.random.default_rng(_noise_seed(scene, size) if seed is None else seed)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0.0, noise * 255.0, size=arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


def object_crop(
    obj: ShapeObject, size: int = 96, fill: float | None = 0.77, noise: float = 0.0, seed: int | None = None
) -> Image.Image:
    """One object rendered alone, its tight box centred (for region-aware training).

    Args:
        obj: the object; its position is ignored.
        size: image side in pixels.
        fill: longer side of the object's tight box / image side; None
            keeps `obj.size` (circumscribed diameter) and centres the
            circumcentre. 0.77 = 1 / (1 + 2 * 0.15) is what
            `geosteer.encoders.regions` makes of a connected
            component (square crop, 15% margin a side), so training crops
            and region crops of the same object look alike.
        noise, seed: as in `render`.

    Returns:
        An RGB `PIL.Image` of `size x size`.
    """
    if fill is None:
        centred = replace(obj, cx=0.5, cy=0.5)
    else:
        if not 0.0 < fill <= 1.0:
            raise ValueError(f"fill must lie in (0, 1] or be None, got {fill!r}")
        unit = replace(obj, cx=0.5, cy=0.5, size=1.0)
        x0, y0, x1, y1 = _box(unit, 1.0)
        scale = fill / max(x1 - x0, y1 - y0)
        # scale about the circumcentre, then move the box centre to 0.5
        bx, by = ((x0 + x1) / 2 - 0.5) * scale, ((y0 + y1) / 2 - 0.5) * scale
        centred = replace(obj, cx=0.5 - bx, cy=0.5 - by, size=scale)
    return render(Scene((centred,)), size=size, noise=noise, seed=seed)


# ---------------------------------------------------------------- captions

def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def object_phrase(obj: ShapeObject | tuple[str, str]) -> str:
    """"a red pentagon" / "an orange star" for an object or (shape, colour)."""
    shape, colour = obj.label if isinstance(obj, ShapeObject) else obj
    return _article(f"{colour} {shape}")


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """Whether `a <relation> b` holds between object centres (y down)."""
    if relation == "left_of":
        return a.cx < b.cx
    if relation == "right_of":
        return a.cx > b.cx
    if relation == "above":
        return a.cy < b.cy
    if relation == "below":
        return a.cy > b.cy
    raise ValueError(f"relation must be one of {AXIS_RELATIONS}, got {relation!r}")


def caption(scene: Scene, relation: str | None = None, template: str = "{}") -> str:
    """Describe a scene in words.

    Without a relation, identical objects are counted ("two red pentagons")
    and the rest listed in scene order. With a relation the scene must hold
    exactly two objects and the caption reads "<objects[0]> <relation>
    <objects[1]>"; the relation must hold.

    Args:
        scene: the scene.
        relation: None or a key of `RELATION_WORDS`.
        template: one of `CAPTION_TEMPLATES` (any string with one `{}`).

    Returns:
        The caption.

    Raises:
        ValueError: relation unknown, not two objects, or not true of the scene.
    """
    if relation is not None:
        if relation not in RELATION_WORDS:
            raise ValueError(f"relation must be one of {tuple(RELATION_WORDS)} or None, got {relation!r}")
        if len(scene.objects) != 2:
            raise ValueError(f"a relation caption needs exactly 2 objects, got {len(scene.objects)}")
        a, b = scene.objects
        if not relation_holds(a, b, relation):
            raise ValueError(f"relation {relation!r} does not hold between the scene's objects")
        body = f"{object_phrase(a)} {RELATION_WORDS[relation]} {object_phrase(b)}"
    else:
        counts: dict[tuple[str, str], int] = {}
        for obj in scene.objects:
            counts[obj.label] = counts.get(obj.label, 0) + 1
        items = []
        for (shape, colour), n in counts.items():
            items.append(object_phrase((shape, colour)) if n == 1 else f"{NUMBER_WORDS[n]} {colour} {PLURALS[shape]}")
        body = _join(items)
    if template.count("{}") != 1:
        raise ValueError(f"template must hold exactly one '{{}}', got {template!r}")
    return template.format(body)


# ---------------------------------------------------------------- sampling

def _pick_objects(
    rng: random.Random, n: int, shapes: tuple[str, ...], colours: tuple[str, ...], distinct: bool
) -> list[tuple[str, str]]:
    if not distinct:
        return [(rng.choice(shapes), rng.choice(colours)) for _ in range(n)]
    if n > len(shapes) or n > len(colours):
        raise ValueError(f"distinct=True needs >= {n} shapes and colours")
    return list(zip(rng.sample(list(shapes), n), rng.sample(list(colours), n)))


def place(
    rng: random.Random,
    labels: list[tuple[str, str]],
    size_range: tuple[float, float] = (0.24, 0.36),
    placement: str = "separate",
    gap: float = 0.05,
    margin: float = 0.02,
    tries: int = 500,
) -> Scene:
    """Place given (shape, colour) objects at random, seeded positions.

    Args:
        rng: the random source.
        labels: (shape, colour) per object, in drawing order.
        size_range: object diameters (image-relative) are uniform in it.
        placement: "separate" (circumscribed circles `gap` apart, so pixel
            components never merge), "touching" (each object after the
            first is placed at 0.75-0.95 x the sum of radii from an earlier
            one: edges touch or just overlap) or "overlapping" (0.55-0.75 x).
        gap: minimum free space between circumscribed circles ("separate").
        margin: minimum space between any object and the image border.
        tries: rejection-sampling budget before giving up.

    Returns:
        The scene.

    Raises:
        ValueError: unknown placement; RuntimeError: nothing fits in `tries`.
    """
    if placement not in ("separate", "touching", "overlapping"):
        raise ValueError(f"placement must be 'separate', 'touching' or 'overlapping', got {placement!r}")
    lo, hi = size_range
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"size_range must satisfy 0 < lo <= hi < 1, got {size_range!r}")
    near = {"touching": (0.75, 0.95), "overlapping": (0.55, 0.75)}.get(placement)
    for _ in range(tries):
        objs: list[ShapeObject] = []
        for shape, colour in labels:
            size = rng.uniform(lo, hi)
            r = size / 2.0
            for _ in range(100):
                if near is None or not objs:
                    cx = rng.uniform(r + margin, 1.0 - r - margin)
                    cy = rng.uniform(r + margin, 1.0 - r - margin)
                else:
                    anchor = rng.choice(objs)
                    d = (anchor.size / 2.0 + r) * rng.uniform(*near)
                    a = rng.uniform(0.0, 2.0 * math.pi)
                    cx, cy = anchor.cx + d * math.cos(a), anchor.cy + d * math.sin(a)
                    if not (r + margin <= cx <= 1 - r - margin and r + margin <= cy <= 1 - r - margin):
                        continue
                ok = True
                for o in objs:
                    dist = math.hypot(cx - o.cx, cy - o.cy)
                    need = o.size / 2.0 + r
                    # separate: a clear gap; touching/overlapping: no object
                    # may hide most of another.
                    if dist < (need + gap if near is None else need * 0.5):
                        ok = False
                        break
                if ok:
                    objs.append(ShapeObject(shape, colour, cx, cy, size))
                    break
            else:
                break
        if len(objs) == len(labels):
            return Scene(tuple(objs))
    raise RuntimeError(f"could not place {len(labels)} objects with size_range={size_range} in {tries} tries")


def random_scene(
    rng: random.Random,
    num_objects: int | tuple[int, int] = (1, 3),
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = COLOURS,
    size_range: tuple[float, float] = (0.24, 0.36),
    placement: str = "separate",
    distinct: bool = True,
) -> Scene:
    """A random scene, fully determined by the state of `rng`.

    Args:
        rng: the random source (`random.Random(seed)`).
        num_objects: a count, or an inclusive (lo, hi) range.
        shapes, colours: the vocabularies to draw from.
        size_range, placement: as in `place`.
        distinct: objects of one scene differ in shape and in colour (so
            every caption phrase names exactly one object).

    Returns:
        The scene.
    """
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    if isinstance(num_objects, int):
        n = num_objects
    else:
        n = rng.randint(num_objects[0], num_objects[1])
    if not 1 <= n <= 3:
        raise ValueError(f"num_objects must lie in 1..3, got {num_objects!r}")
    return place(rng, _pick_objects(rng, n, shapes, colours, distinct), size_range, placement)
