"""The real-photo collage benchmark: an application of the library, like `geosteer.geoshapes`.

Collages of 2-4 real photos bundled with installed packages (scikit-image,
scikit-learn, matplotlib; nothing is downloaded), side by side or stacked,
and queries that name two of the photos and their relation ("a cat to the
left of a rocket"). Every target comes with its position-swapped twin, the
same photos in the other layout and one-object-replaced collages. Run it
with `python -m bench.bench_photos`.

- `geosteer.photos.sources`: `PHOTOS` (photo -> noun), `load_photos`;
- `geosteer.photos.collages`: `Collage`, `Tile`, `render`, `satisfies`;
- `geosteer.photos.phrasings`: `PHRASINGS`, `phrase`: one fact (A,
  relation, B) said six ways ("a cat to the left of a rocket", "a rocket
  with a cat on its left", "a cat on the left and a rocket on the right", ...);
- `geosteer.photos.benchmark`: `make_split` (`PhotoSplit.phrased(k)`: its
  queries in phrasing k), `index_split`, `Method`, `run_method`, `metrics`,
  `ranking_metrics` and the diagnostics;
- `geosteer.photos.cache`: `CachedEncoder`, a disk cache of image embeddings.

It imports the library's public names only; the library never imports it.
"""

from geosteer.photos.benchmark import (
    DEFAULT_REGIONS,
    TEST_SEEDS,
    VALIDATION_SEEDS,
    Method,
    PhotoIndex,
    PhotoSplit,
    caption,
    default_methods,
    index_split,
    make_split,
    metrics,
    ranking_metrics,
    run_method,
)
from geosteer.photos.collages import LAYOUTS, Collage, Tile, render, satisfies
from geosteer.photos.phrasings import PHRASINGS, phrase, phrasing_index, reads_fact
from geosteer.photos.sources import PHOTOS, Photo, load_photos, missing_photos

__all__ = [
    "DEFAULT_REGIONS", "LAYOUTS", "PHOTOS", "PHRASINGS", "TEST_SEEDS", "VALIDATION_SEEDS", "Collage", "Method", "Photo",
    "PhotoIndex", "PhotoSplit", "Tile", "caption", "default_methods", "index_split", "load_photos", "make_split",
    "metrics", "missing_photos", "phrase", "phrasing_index", "ranking_metrics", "reads_fact", "render", "run_method", "satisfies",
]
