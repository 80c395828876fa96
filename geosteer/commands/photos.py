"""`geosteer photos`: a folder of sample photos to try `geosteer index` / `search` / `serve` on, nothing downloaded.

`geosteer photos OUT_DIR` writes collages of the five photos scikit-image bundles (a cat, a cup of coffee, a rocket, a tripod, a motorcycle), side by side or stacked, as JPEG files, and `queries.txt`: one query per line ("a rocket to the right of a cat"), the file of its one correct collage after a tab; `queries_all.txt` says every query in each of the six phrasings of `geosteer.photos.PHRASINGS` ("a cat to the left of a rocket", "a rocket to the right of a cat", "a cat on the left and a rocket on the right", "a rocket with a cat on its left", "a cat, and to its right a rocket", "a cat in the left half, a rocket in the right half"), one per line: query, target file and the phrasing's name, tab-separated (queries.txt holds the first). They are the collage benchmark's split of --seed (the position-swapped twin, the other layout and one-photo-replaced collages of every target are there too). The same photos on every machine with the `photos` extra, so the same folder; --all-photos draws from every installed photo (scikit-learn's palace and flower, matplotlib's portrait too).

Needs scikit-image (`pip install -e '.[photos]'`). The folder must be empty or new; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from geosteer.commands.args import UsageError, check_positive, check_writable_folder, fail

DEFAULT_QUERIES = 8  # what the five scikit-image photos fill on seed 100 (seeds 100-109: 6 to 12)
DEFAULT_SEED = 100
#: The photos `geosteer photos` draws from by default: the `photos` extra (scikit-image) brings them all.
DEFAULT_PACKAGE = "scikit-image"
QUERIES_FILE = "queries.txt"
#: Every query in every phrasing: query <TAB> target file <TAB> phrasing name.
ALL_QUERIES_FILE = "queries_all.txt"


def add_photos_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer photos`."""
    p.add_argument("out", metavar="OUT_DIR", help="folder to write the collages into (new or empty)")
    p.add_argument("--queries", type=int, default=DEFAULT_QUERIES,
                   help="queries; each brings 5 collages (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default: %(default)s, the first test seed)")
    p.add_argument("--all-photos", action="store_true",
                   help=f"draw from every installed photo, not only {DEFAULT_PACKAGE}'s five (the output then depends "
                        "on which packages are installed)")


def check_photos_arguments(args: argparse.Namespace) -> Path:
    """The output folder, once every argument is known good; UsageError naming the bad one."""
    check_positive("--queries", args.queries)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT_DIR {args.out!r} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"OUT_DIR {args.out!r} is not empty; give a new or empty folder")
    check_writable_folder("OUT_DIR", out, args.out)
    return out


def default_photos() -> tuple[str, ...]:
    """The photos drawn from without --all-photos: those `DEFAULT_PACKAGE` bundles."""
    from geosteer.photos import PHOTOS

    return tuple(name for name, photo in PHOTOS.items() if photo.package == DEFAULT_PACKAGE)


def _write_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def write_photos(
    out: Path, num_queries: int, seed: int, photos: tuple[str, ...] | None = None
) -> tuple[int, list[tuple[str, str]]]:
    """Render the split of `seed` over `photos` (None: every installed one) into `out`: (collages written, [(query, target file)]).

    Writes the collages (collage-NNNN.jpg, gallery order), `QUERIES_FILE`
    (query, target file; phrasing 0) and `ALL_QUERIES_FILE` (each query in
    every phrasing of `geosteer.photos.PHRASINGS`, query by query: query,
    target file, phrasing name). The pairs returned are `QUERIES_FILE`'s.
    """
    from geosteer.photos import PHRASINGS, make_split, render

    split = make_split(seed, num_queries=num_queries, photos=photos)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"collage-{i:04d}.jpg" for i in range(len(split.gallery))]
    for name, collage in zip(names, split.gallery):
        image, _ = render(collage)
        tmp = out / f".{name}.tmp"
        image.save(tmp, format="JPEG", quality=92)
        os.replace(tmp, out / name)
    pairs = [(q, names[t]) for q, t in zip(split.queries, split.targets)]
    phrased = [split.phrased(k) for k in range(len(PHRASINGS))]
    _write_text(out / ALL_QUERIES_FILE, "".join(f"{phrased[k][q]}\t{names[t]}\t{PHRASINGS[k]}\n"
                                                for q, t in enumerate(split.targets) for k in range(len(PHRASINGS))))
    _write_text(out / QUERIES_FILE, "".join(f"{q}\t{name}\n" for q, name in pairs))
    return len(names), pairs


def run_photos(args: argparse.Namespace) -> int:
    """`geosteer photos`; the exit status."""
    try:
        out = check_photos_arguments(args)
        try:
            import skimage  # noqa: F401
        except ImportError:
            raise UsageError("the sample photos need scikit-image: pip install -e '.[photos]'") from None
        from geosteer.photos import PHOTOS, PHRASINGS, missing_photos

        photos = None if args.all_photos else default_photos()
        try:
            count, pairs = write_photos(out, args.queries, args.seed, photos)
        except (ValueError, RuntimeError) as e:  # too few photos installed, or too many queries asked for
            raise UsageError(f"--queries {args.queries}: {e}") from None
    except UsageError as e:
        return fail("photos", str(e))
    missing = missing_photos()
    used = len(PHOTOS) - len(missing) if photos is None else len(photos)
    print(f"wrote {count} collages of {used} photos, {QUERIES_FILE} ({len(pairs)} queries) and {ALL_QUERIES_FILE} "
          f"(each in {len(PHRASINGS)} phrasings) to {out}")
    if photos is None and missing:
        print("left out (package not installed): " + ", ".join(f"{k} ({v})" for k, v in missing.items()))
    print(f"first query: {pairs[0][0]!r} -> {pairs[0][1]}")
    return 0
