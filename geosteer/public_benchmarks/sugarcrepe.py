"""SugarCrepe (Hsieh et al., 2023): COCO val2017 images, a true caption and a hard negative.

Layout read (`--root ROOT`)::

    ROOT/replace_obj.json ... add_att.json     (or ROOT/data/*.json, as in a clone of RAIVNLab/sugar-crepe)
    ROOT/val2017/000000397133.jpg ...          (COCO val2017; a symlink to your copy works)

Each file is one category, a JSON object keyed by example index::

    {"0": {"filename": "000000397133.jpg", "caption": "...", "negative_caption": "..."}, ...}

The categories present are read (at least one). Metric: per category the
accuracy of S(positive, image) > S(negative, image), ties counting as wrong,
and their mean over the categories read.
"""

from __future__ import annotations

from pathlib import Path

from geosteer.public_benchmarks.common import (
    Benchmark,
    Example,
    FormatError,
    ImageRef,
    check_limit,
    check_root,
    entry_dict,
    image_file,
    limited,
    read_json,
    text,
)

NAME = "sugarcrepe"
#: The seven category files, in the paper's order.
CATEGORIES: tuple[str, ...] = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
IMAGES = "val2017"


def read(root: str | Path, limit: int | None = None) -> Benchmark:
    """Read a local SugarCrepe copy.

    Args:
        root: the folder laid out as the module docstring says.
        limit: keep the first `limit` examples of each category (None: all).

    Returns:
        A "pair" `Benchmark`, one subset per category file present.

    Raises:
        FormatError: no category file, no val2017/ folder, a file that is not
            JSON or not keyed by index, an entry without `filename` /
            `caption` / `negative_caption`, an image that does not exist
            (named with the file and the entry's key).
    """
    check_limit(limit)
    root = check_root(root, "SugarCrepe")
    folder = root if any((root / f"{c}.json").is_file() for c in CATEGORIES) else root / "data"
    present = [c for c in CATEGORIES if (folder / f"{c}.json").is_file()]
    if not present:
        raise FormatError(f"{root}: holds none of the SugarCrepe files {', '.join(c + '.json' for c in CATEGORIES)} "
                          "(nor a data/ folder with them)")
    images = root / IMAGES
    if not images.is_dir():
        raise FormatError(f"{images}: no such folder; SugarCrepe's images are COCO val2017 (put or link the "
                          f"val2017/ folder there)")
    examples, files = [], []
    for category in present:
        path = folder / f"{category}.json"
        files.append(path)
        data = read_json(path)
        if not isinstance(data, dict):
            raise FormatError(f"{path}: expected a JSON object keyed by example index ('0', '1', ...), "
                              f"got a {type(data).__name__}")
        if not data:
            raise FormatError(f"{path}: holds no example")
        for key, entry in limited(data.items(), limit):
            where = f"{path}: entry {key!r}"
            entry = entry_dict(entry, where)
            filename = text(entry, "filename", where)
            positive, negative = text(entry, "caption", where), text(entry, "negative_caption", where)
            image = image_file(images / filename, where)
            examples.append(Example((positive, negative), (ImageRef(image),), category, category, where))
    return Benchmark(NAME, root, "pair", examples, files, subsets=present, headline="accuracy")
