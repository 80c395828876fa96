"""`geosteer photos`: a folder of sample photos to try `geosteer index` / `search` / `serve` on, nothing downloaded.

`geosteer photos OUT_DIR` writes collages of the real photos that installed packages bundle (scikit-image's cat, coffee, rocket, tripod and motorcycle; scikit-learn's palace and flower and matplotlib's portrait where installed), side by side or stacked, as JPEG files, and `queries.txt`: one query per line ("a cat to the left of a rocket"), the file of its one correct collage after a tab. They are the collage benchmark's split of --seed (the position-swapped twin, the other layout and one-photo-replaced collages of every target are there too).

Needs scikit-image (`pip install -e '.[photos]'`). The folder must be empty or new; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from geosteer.commands.args import UsageError, check_positive, check_writable_folder, fail

DEFAULT_QUERIES = 10  # what 5 photos (scikit-image alone) fill on every seed tried; 8 photos fill 20
DEFAULT_SEED = 100
QUERIES_FILE = "queries.txt"


def add_photos_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer photos`."""
    p.add_argument("out", metavar="OUT_DIR", help="folder to write the collages into (new or empty)")
    p.add_argument("--queries", type=int, default=DEFAULT_QUERIES,
                   help="queries; each brings 5 collages (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default: %(default)s, the first test seed)")


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


def write_photos(out: Path, num_queries: int, seed: int) -> tuple[int, list[tuple[str, str]]]:
    """Render the split of `seed` into `out`: (collages written, [(query, target file)])."""
    from geosteer.photos import make_split, render

    split = make_split(seed, num_queries=num_queries)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"collage-{i:04d}.jpg" for i in range(len(split.gallery))]
    for name, collage in zip(names, split.gallery):
        image, _ = render(collage)
        tmp = out / f".{name}.tmp"
        image.save(tmp, format="JPEG", quality=92)
        os.replace(tmp, out / name)
    pairs = [(q, names[t]) for q, t in zip(split.queries, split.targets)]
    tmp = out / f".{QUERIES_FILE}.tmp"
    tmp.write_text("".join(f"{q}\t{name}\n" for q, name in pairs))
    os.replace(tmp, out / QUERIES_FILE)
    return len(names), pairs


def run_photos(args: argparse.Namespace) -> int:
    """`geosteer photos`; the exit status."""
    try:
        out = check_photos_arguments(args)
        try:
            import skimage  # noqa: F401
        except ImportError:
            raise UsageError("the sample photos need scikit-image: pip install -e '.[photos]'") from None
        from geosteer.photos import PHOTOS, missing_photos

        try:
            count, pairs = write_photos(out, args.queries, args.seed)
        except (ValueError, RuntimeError) as e:  # too few photos installed, or too many queries asked for
            raise UsageError(f"--queries {args.queries}: {e}") from None
    except UsageError as e:
        return fail("photos", str(e))
    missing = missing_photos()
    print(f"wrote {count} collages of {len(PHOTOS) - len(missing)} photos and {QUERIES_FILE} ({len(pairs)} queries) to {out}")
    if missing:
        print("left out (package not installed): " + ", ".join(f"{k} ({v})" for k, v in missing.items()))
    print(f"first query: {pairs[0][0]!r} -> {pairs[0][1]}")
    return 0
