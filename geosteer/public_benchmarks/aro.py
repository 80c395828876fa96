"""ARO (Yuksekgonul et al., 2023): VG-Relation and VG-Attribution, a true and a false caption per crop.

Layout read (`--root ROOT`), as the ARO code downloads it::

    ROOT/visual_genome_relation.json
    ROOT/visual_genome_attribution.json
    ROOT/images/2323639.jpg ...

Each file is a JSON list of objects with `image_id` (or `image_path`),
`bbox_x`, `bbox_y`, `bbox_w`, `bbox_h`, `true_caption`, `false_caption` and
`relation_name` (VG-Relation) or `attributes`, a pair of strings
(VG-Attribution). The image is cropped to the box first, as ARO does. The
files present are read (at least one).

Metric, per dataset: macro accuracy of S(true, crop) > S(false, crop) over
the relations (VG-Relation) or the attribute pairs (VG-Attribution), every
one present counted, and the micro accuracy over all examples. (ARO's own
tables may leave out some relations; this report averages every one in the
file.)
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
    limited,
    listing,
    number,
    read_json,
    text,
)

NAME = "aro"
#: subset -> (file name, the key its macro average groups by).
FILES: dict[str, tuple[str, str]] = {
    "vg_relation": ("visual_genome_relation.json", "relation_name"),
    "vg_attribution": ("visual_genome_attribution.json", "attributes"),
}
IMAGES = "images"


def read(root: str | Path, limit: int | None = None) -> Benchmark:
    """Read a local ARO (VG-Relation / VG-Attribution) copy.

    Args:
        root: the folder laid out as the module docstring says.
        limit: keep the first `limit` examples of each file (None: all).

    Returns:
        A "pair" `Benchmark`, one subset per file present; each image
        cropped to its entry's box.

    Raises:
        FormatError: neither file, no images/ folder, a file that is not a
            JSON list, an entry missing a key or with a bad value (an empty
            box, `attributes` not two strings), an image that does not
            exist (named with the file and the entry's index).
    """
    check_limit(limit)
    root = check_root(root, "ARO")
    present = [s for s, (fname, _) in FILES.items() if (root / fname).is_file()]
    if not present:
        raise FormatError(f"{root}: holds neither ARO file ({', '.join(f for f, _ in FILES.values())})")
    images = root / IMAGES
    if not images.is_dir():
        raise FormatError(f"{images}: no such folder (ARO's Visual Genome images)")
    examples, files = [], []
    for subset in present:
        fname, group_key = FILES[subset]
        path = root / fname
        files.append(path)
        data = read_json(path)
        if not isinstance(data, list):
            raise FormatError(f"{path}: expected a JSON list of examples, got a {type(data).__name__}")
        if not data:
            raise FormatError(f"{path}: holds no example")
        for k, entry in enumerate(limited(data, limit)):
            where = f"{path}: entry [{k}]"
            entry = entry_dict(entry, where)
            x, y = number(entry, "bbox_x", where), number(entry, "bbox_y", where)
            w, h = number(entry, "bbox_w", where), number(entry, "bbox_h", where)
            if w <= 0 or h <= 0:
                raise FormatError(f"{where}: the box must have bbox_w > 0 and bbox_h > 0, got {w:g} x {h:g}")
            captions = (text(entry, "true_caption", where), text(entry, "false_caption", where))
            if group_key == "attributes":
                attrs = listing(entry, "attributes", where)
                if len(attrs) != 2 or not all(isinstance(a, str) for a in attrs):
                    raise FormatError(f"{where}: key 'attributes' must be a pair of strings, got {attrs!r}"[:300])
                group = f"{attrs[0]}_{attrs[1]}"  # ARO groups by the ordered pair
            else:
                group = text(entry, "relation_name", where)
            image = _image(entry, images, root, where)
            examples.append(Example(captions, (ImageRef(image, crop=(x, y, x + w, y + h)),), subset, group, where))
    return Benchmark(NAME, root, "pair", examples, files, subsets=present, headline="macro")


def _image(entry: dict, images: Path, root: Path, where: str) -> Path:
    """The entry's image: `image_path` under images/ (or under the root), else images/<image_id>.jpg."""
    if "image_path" in entry:
        rel = text(entry, "image_path", where)
        for candidate in (images / rel, root / rel):
            if candidate.is_file():
                return candidate
        raise FormatError(f"{where}: image {images / rel} not found")
    if "image_id" not in entry:
        raise FormatError(f"{where}: missing key 'image_id' (or 'image_path')")
    image_id = entry["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or not str(image_id).strip():
        raise FormatError(f"{where}: key 'image_id' must be a string or an int, got {image_id!r}"[:300])
    path = images / f"{image_id}.jpg"
    if not path.is_file():
        raise FormatError(f"{where}: image {path} not found")
    return path
