"""What every benchmark reader returns, and the checks they share.

A reader turns a local copy of a public benchmark into a `Benchmark`: a list
of `Example`s, each a few captions and a few images whose (caption, image)
pairs are all scored. Two layouts cover the four benchmarks:

- "pair": 2 captions x 1 image, the true caption first (SugarCrepe, ARO,
  the CLEVR queries): correct when S(true, image) > S(false, image).
- "winoground": 2 captions x 2 images, caption k belongs to image k.

Everything a reader finds wrong raises `FormatError`, a `ValueError` whose
message starts with the file (or folder) and names the entry, key or line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
Box = tuple[float, float, float, float]
LAYOUTS = ("pair", "winoground")


class FormatError(ValueError):
    """A benchmark folder or file not in its expected format; the message names the file and the entry, key or line."""


@dataclass(frozen=True)
class ImageRef:
    """One image of an example.

    Attributes:
        path: the image file.
        crop: box to crop the file to before anything else (ARO: the
            relation's bounding box), or None for the whole image.
        regions: annotation boxes in the (cropped) image's pixels, for
            annotation mode (CLEVR's objects); None: regions are proposed
            from the pixels (`geosteer.encoders.regions.METHODS`).
    """

    path: Path
    crop: Box | None = None
    regions: tuple[Box, ...] | None = None


@dataclass(frozen=True)
class Example:
    """Captions and images whose every (caption, image) pair is scored.

    Attributes:
        captions: "pair" layout: (true, false); "winoground": (caption_0, caption_1).
        images: "pair": (image,); "winoground": (image_0, image_1).
        subset: what results are reported per (a SugarCrepe category, an ARO
            dataset, a CLEVR query kind, "winoground").
        group: the unit a macro average runs over inside the subset (an ARO
            relation or attribute pair, Winoground's collapsed tag; else the subset).
        source: where it was read, "<file>: entry '<key>'" / "<file>: line <n>".
    """

    captions: tuple[str, ...]
    images: tuple[ImageRef, ...]
    subset: str
    group: str
    source: str


@dataclass
class Benchmark:
    """A benchmark read from disk, ready to encode and score.

    Attributes:
        name: its `geosteer eval --bench` name.
        root: the folder it was read from.
        layout: a key of `LAYOUTS`.
        examples: in file order.
        files: the annotation files read.
        subsets: subset names in report order.
        headline: the metric the summary line reports ("accuracy", "macro" or "group").
        notes: how the examples were made, for the report (CLEVR's generated queries).
    """

    name: str
    root: Path
    layout: str
    examples: list[Example]
    files: list[Path]
    subsets: list[str] = field(default_factory=list)
    headline: str = "accuracy"
    notes: str = ""


def check_root(root: str | Path, what: str) -> Path:
    """`root` as a Path to an existing folder; FormatError naming it otherwise."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FormatError(f"{path}: no such folder (the {what} root)")
    if not path.is_dir():
        raise FormatError(f"{path}: is a file, not a folder (the {what} root)")
    return path


def read_json(path: Path) -> Any:
    """The parsed JSON file; FormatError with the line and column of a syntax error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot be read ({e.strerror or e})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line; FormatError naming a bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise FormatError(f"{path}: line {lineno}: not valid JSON (column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot be read ({e.strerror or e})") from None


def entry_dict(entry: Any, where: str) -> dict:
    """`entry` if it is a JSON object."""
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: expected a JSON object, got {_kind(entry)}")
    return entry


def text(entry: dict, key: str, where: str) -> str:
    """`entry[key]`, a non-empty string."""
    value = _get(entry, key, where)
    if not isinstance(value, str) or not value.strip():
        raise FormatError(f"{where}: key {key!r} must be a non-empty string, got {_kind(value)} {value!r}"[:300])
    return value


def number(entry: dict, key: str, where: str) -> float:
    """`entry[key]`, a finite number (not a bool)."""
    value = _get(entry, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{where}: key {key!r} must be a number, got {_kind(value)} {value!r}"[:300])
    return float(value)


def listing(entry: dict, key: str, where: str) -> list:
    """`entry[key]`, a JSON array."""
    value = _get(entry, key, where)
    if not isinstance(value, list):
        raise FormatError(f"{where}: key {key!r} must be a list, got {_kind(value)}")
    return value


def image_file(path: Path, where: str) -> Path:
    """`path` if it is an existing file; FormatError naming it and the entry that names it."""
    if not path.is_file():
        raise FormatError(f"{where}: image {path} not found")
    return path


def limited(items: Iterable, limit: int | None) -> Iterator:
    """The first `limit` items (all when None)."""
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item


def check_limit(limit: int | None) -> int | None:
    """`limit` if None or a positive int."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return limit


def _get(entry: dict, key: str, where: str) -> Any:
    if key not in entry:
        raise FormatError(f"{where}: missing key {key!r} (keys: {', '.join(sorted(map(str, entry))) or 'none'})"[:400])
    return entry[key]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
