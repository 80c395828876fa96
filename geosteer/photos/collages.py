"""Collages of real photos: tiles side by side ("row") or stacked ("column"), seeded.

A `Collage` is a layout and a tuple of `Tile`s (a photo and how it is
framed); `render` draws it and returns the tiles' pixel boxes (the ground
truth of region recall). The position-swapped twin (`swapped`), the other
layout (`relaid`) and a collage with one photo replaced (`replaced`) keep
every other tile's pixels exactly: only what the query is about changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image

from geosteer.photos.sources import load_photos

LAYOUTS: tuple[str, ...] = ("row", "column")
#: The relations a layout can state: row -> left/right, column -> above/below.
LAYOUT_RELATIONS: dict[str, tuple[str, str]] = {"row": ("left_of", "right_of"), "column": ("above", "below")}

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tile:
    """One photo in a collage, framed: a square window of the photo's centre square.

    Attributes:
        photo: a key of `geosteer.photos.PHOTOS`.
        scale: the window's side as a fraction of the photo's (0, 1].
        fx, fy: where the window sits in the slack, 0 (left/top) .. 1 (right/bottom).
        flip: mirrored left-right.
    """

    photo: str
    scale: float = 1.0
    fx: float = 0.5
    fy: float = 0.5
    flip: bool = False


@dataclass(frozen=True)
class Collage:
    """Tiles in a row (left to right) or a column (top to bottom), `gap` pixels apart on a grey background."""

    tiles: tuple[Tile, ...]
    layout: str = "row"
    side: int = 144
    gap: int = 0
    background: int = 255

    @property
    def photos(self) -> tuple[str, ...]:
        return tuple(t.photo for t in self.tiles)

    def swapped(self, i: int, j: int) -> "Collage":
        """Tiles i and j trade places (the position-swapped twin)."""
        tiles = list(self.tiles)
        tiles[i], tiles[j] = tiles[j], tiles[i]
        return replace(self, tiles=tuple(tiles))

    def relaid(self) -> "Collage":
        """The same tiles in the same order in the other layout (row <-> column)."""
        return replace(self, layout="column" if self.layout == "row" else "row")

    def replaced(self, i: int, tile: Tile) -> "Collage":
        """Tile i replaced by `tile`."""
        tiles = list(self.tiles)
        tiles[i] = tile
        return replace(self, tiles=tuple(tiles))


def random_tile(rng: random.Random, photo: str) -> Tile:
    """A seeded framing of `photo`: 80-100% of its centre square, anywhere in the slack, maybe mirrored."""
    return Tile(photo, scale=rng.uniform(0.8, 1.0), fx=rng.random(), fy=rng.random(), flip=rng.random() < 0.5)


def tile_boxes(collage: Collage) -> list[Box]:
    """Pixel boxes (x0, y0, x1, y1), x1/y1 exclusive, of the tiles in order."""
    step = collage.side + collage.gap
    if collage.layout == "row":
        return [(k * step, 0, k * step + collage.side, collage.side) for k in range(len(collage.tiles))]
    return [(0, k * step, collage.side, k * step + collage.side) for k in range(len(collage.tiles))]


def collage_size(collage: Collage) -> tuple[int, int]:
    """(width, height) in pixels."""
    n = len(collage.tiles)
    long = n * collage.side + (n - 1) * collage.gap
    return (long, collage.side) if collage.layout == "row" else (collage.side, long)


def render_tile(tile: Tile, side: int) -> Image.Image:
    """The tile's window of its photo, `side` x `side`."""
    photo = load_photos((tile.photo,))[tile.photo]
    full = photo.width
    win = max(1, round(tile.scale * full))
    x0, y0 = round(tile.fx * (full - win)), round(tile.fy * (full - win))
    im = photo.crop((x0, y0, x0 + win, y0 + win)).resize((side, side), Image.BICUBIC)
    return im.transpose(Image.FLIP_LEFT_RIGHT) if tile.flip else im


def render(collage: Collage) -> tuple[Image.Image, list[Box]]:
    """The collage as an RGB image, and its tiles' boxes (`tile_boxes`)."""
    if collage.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {collage.layout!r}")
    boxes = tile_boxes(collage)
    canvas = Image.new("RGB", collage_size(collage), (collage.background,) * 3)
    for tile, (x0, y0, _, _) in zip(collage.tiles, boxes):
        canvas.paste(render_tile(tile, collage.side), (x0, y0))
    return canvas, boxes


def relation_of(collage: Collage, i: int, j: int) -> str:
    """The relation tile i stands in to tile j (positions i != j of the layout)."""
    if i == j:
        raise ValueError("a tile stands in no relation to itself")
    first, second = LAYOUT_RELATIONS[collage.layout]
    return first if i < j else second


def satisfies(collage: Collage, subject: str, relation: str, obj: str) -> bool:
    """Whether "<subject photo> <relation> <object photo>" is true of the collage (some tile of each)."""
    for i, a in enumerate(collage.photos):
        for j, b in enumerate(collage.photos):
            if i != j and a == subject and b == obj and relation in LAYOUT_RELATIONS[collage.layout]:
                if relation_of(collage, i, j) == relation:
                    return True
    return False
