"""Winoground (Thrush et al., 2022): two images, two captions with the same words in another order.

Layout read (`--root ROOT`), a download of the Hugging Face dataset
repository facebook/winoground with data/images.zip unpacked::

    ROOT/data/examples.jsonl        (or ROOT/examples.jsonl)
    ROOT/data/images/ex_0_img_0.png ...

Each line of examples.jsonl is one example::

    {"id": 0, "caption_0": "...", "caption_1": "...", "image_0": "ex_0_img_0", "image_1": "ex_0_img_1",
     "tag": "...", "secondary_tag": "...", "num_main_preds": 1, "collapsed_tag": "Object"}

Image `image_k` is `images/<image_k>.png`. Metrics, with s(c, i) the score
of caption c for image i, as Winoground defines them:

- text score: s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1);
- image score: s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0);
- group score: both.

Each is the fraction of examples; also reported per `collapsed_tag`.
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
    read_jsonl,
    text,
)

NAME = "winoground"
EXAMPLES = "examples.jsonl"


def read(root: str | Path, limit: int | None = None) -> Benchmark:
    """Read a local Winoground copy.

    Args:
        root: the folder laid out as the module docstring says.
        limit: keep the first `limit` examples (None: all).

    Returns:
        A "winoground" `Benchmark` (one subset, grouped by `collapsed_tag`).

    Raises:
        FormatError: no examples.jsonl, no images/ folder, a line that is
            not JSON or misses `caption_0/1` / `image_0/1`, an image that
            does not exist (named with the file and the line).
    """
    check_limit(limit)
    root = check_root(root, "Winoground")
    data = root / "data" if (root / "data" / EXAMPLES).is_file() else root
    path = data / EXAMPLES
    if not path.is_file():
        raise FormatError(f"{root}: no data/{EXAMPLES} (nor {EXAMPLES}); download the facebook/winoground dataset there")
    images = data / "images"
    if not images.is_dir():
        raise FormatError(f"{images}: no such folder; unzip data/images.zip of facebook/winoground there")
    examples = []
    for lineno, entry in read_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        where = f"{path}: line {lineno}"
        entry = entry_dict(entry, where)
        captions = (text(entry, "caption_0", where), text(entry, "caption_1", where))
        refs = []
        for key in ("image_0", "image_1"):
            name = text(entry, key, where)
            file = images / (name if Path(name).suffix else f"{name}.png")
            if not file.is_file():
                raise FormatError(f"{where}: {key} {name!r}: image {file} not found")
            refs.append(ImageRef(file))
        tag = entry.get("collapsed_tag")
        group = tag if isinstance(tag, str) and tag else "untagged"
        examples.append(Example(captions, tuple(refs), NAME, group, where))
    if not examples:
        raise FormatError(f"{path}: holds no example")
    return Benchmark(NAME, root, "winoground", examples, [path], subsets=[NAME], headline="group")
