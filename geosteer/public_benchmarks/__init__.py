"""Readers for local copies of public compositional benchmarks, and their runner.

`geosteer eval --bench NAME --root PATH` reads a benchmark you downloaded,
scores its (caption, image) pairs with the plain cosine and with geosteer's
fused score (`geosteer.pairs.score_pairs`: no first stage) and reports the
benchmark's own metric for each. Nothing is downloaded; where to get each
one, the layouts and metrics: docs/public_benchmarks.md.

- `sugarcrepe`: COCO val2017 + positive / negative captions; accuracy per category.
- `aro`: VG-Relation and VG-Attribution; macro accuracy (per relation /
  attribute pair) and micro.
- `winoground`: text, image and group scores.
- `clevr`: captions built from the val scenes' annotations (attribute swap,
  relation flip), regions from approximate object boxes (annotation mode).

Each reader's `read(root, limit=None)` returns a `Benchmark` or raises
`FormatError` naming the file and the entry, key or line. The runner
(`geosteer.public_benchmarks.runner`) encodes and scores.

An application of the library, like `geosteer.geoshapes`: it uses only the
library's public names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from geosteer.public_benchmarks import aro, clevr, sugarcrepe, winoground
from geosteer.public_benchmarks.common import LAYOUTS, Benchmark, Example, FormatError, ImageRef

#: `--bench` name -> its reader.
READERS: dict[str, Callable[..., Benchmark]] = {
    "sugarcrepe": sugarcrepe.read,
    "aro": aro.read,
    "winoground": winoground.read,
    "clevr": clevr.read,
}
BENCHMARKS: tuple[str, ...] = tuple(READERS)


def read_benchmark(name: str, root: str | Path, limit: int | None = None) -> Benchmark:
    """Read benchmark `name` from the folder `root`.

    Args:
        name: one of `BENCHMARKS`.
        root: the local copy (layouts: each reader's module docstring).
        limit: the first `limit` examples of each file (CLEVR: scenes); None: all.

    Raises:
        ValueError: an unknown `name`, a bad `limit`. FormatError: what the reader finds wrong.
    """
    if name not in READERS:
        raise ValueError(f"name must be one of {BENCHMARKS}, got {name!r}")
    return READERS[name](root, limit=limit)


__all__ = ["BENCHMARKS", "LAYOUTS", "READERS", "Benchmark", "Example", "FormatError", "ImageRef", "read_benchmark"]
