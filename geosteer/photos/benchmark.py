"""The real-photo collage benchmark: splits, indexing, the three methods, and what limits them.

A split (`make_split(seed)`) is a list of queries, each naming two photos
of its target collage and their relation ("a cat to the left of a
rocket"), and a gallery in which every query's target comes with its hard
negatives:

- the position-swapped twin: the two named photos trade places;
- the other layout: the same tiles in the same order, stacked instead of
  side by side (or the reverse), so the relation's axis is wrong;
- one-object-replaced collages: each named photo in turn replaced by a
  photo not in the collage.

Collages hold 2-4 photos in a row or a column; framing, tile size, gap
and background are seeded. Every query has exactly one relevant gallery
item (the builder drops a group that would make any query ambiguous).

`evaluate_split` indexes a split with the library's `geosteer.index.Indexer`
(whole collages and the region families of the methods) and runs the
library's head (`geosteer.GeoSteerHead`) for each `Method`, giving R@1,
twin accuracy (the target scored above its swapped twin), layout and
replacement accuracy, and the diagnostics of what limits them: region
recall of the photos' tiles, crop recognition (each tile, cropped exactly,
nearest to its own noun), part localisation (the region the head matched
to a part lies on that photo) and first-stage recall@K.

Every query can be said in each of `geosteer.photos.PHRASINGS`
(`PhotoSplit.phrased(k)`, `index_split(..., phrasing=k)`): the same facts,
targets and gallery, six ways of asking.

This is an application of the library (like `geosteer.geoshapes`): it uses
the library's public names only.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from geosteer import GallerySide, GeoSteerHead, HeadConfig, QuerySide, get_config
from geosteer.encoders.regions import METHODS, crop_regions
from geosteer.index import Indexer, assemble_regions
from geosteer.photos.collages import LAYOUTS, Collage, random_tile, relation_of, render, satisfies
from geosteer.photos.phrasings import phrase, phrasing_index
from geosteer.photos.sources import PHOTOS, load_photos

#: Seeds the method's settings are chosen on, and the seeds reported.
VALIDATION_SEEDS: tuple[int, ...] = (0, 1, 2)
TEST_SEEDS: tuple[int, ...] = (100, 101, 102, 103, 104)
#: Photos per collage.
SIZES: tuple[int, ...] = (2, 3, 4)
#: Tile side range (pixels), gaps and backgrounds a collage is drawn with.
SIDE_RANGE: tuple[int, int] = (128, 160)
GAPS: tuple[int, ...] = (0, 0, 4, 8)
BACKGROUNDS: tuple[int, ...] = (255, 128, 0)
#: The general-purpose region method the benchmark reports (not the flat-colour ones).
DEFAULT_REGIONS = "segments+grid"


@dataclass
class PhotoSplit:
    """Queries and a gallery of collages.

    Attributes:
        seed: what built it.
        gallery: the collages.
        queries: captions, "<noun a> <relation words> <noun b>" (phrasing 0;
            `phrased(k)` says them in phrasing k of `PHRASINGS`).
        named: per query, (subject photo, relation, object photo).
        targets: per query, its one relevant gallery index.
        twins, relaid: per query, the gallery index of its swapped twin and
            of its other-layout collage.
        replaced: per query, gallery indices of its one-object-replaced collages.
    """

    seed: int
    gallery: list[Collage]
    queries: list[str]
    named: list[tuple[str, str, str]]
    targets: list[int]
    twins: list[int]
    relaid: list[int]
    replaced: list[list[int]]
    _images: list[tuple[Image.Image, list]] | None = field(default=None, repr=False)

    def phrased(self, phrasing: int | str = 0) -> list[str]:
        """The queries in phrasing `phrasing` (an index or a name of `geosteer.photos.PHRASINGS`), same order."""
        return [caption(*fact, phrasing=phrasing) for fact in self.named]

    def render(self) -> list[tuple[Image.Image, list]]:
        """(image, tile boxes) of every gallery collage (rendered once)."""
        if self._images is None:
            self._images = [render(c) for c in self.gallery]
        return self._images


def caption(subject: str, relation: str, obj: str, phrasing: int | str = 0) -> str:
    """"a cat to the left of a rocket": the two photos' nouns and their relation, in phrasing `phrasing`.

    Phrasing 0 (the default) is "<noun> <relation words> <noun>"; the others
    are `geosteer.photos.phrase`'s ("a rocket with a cat on its left", ...).
    """
    return phrase(PHOTOS[subject].noun, relation, PHOTOS[obj].noun, phrasing)


def make_split(
    seed: int,
    num_queries: int = 20,
    photos: Sequence[str] | None = None,
    sizes: Sequence[int] = SIZES,
    tries: int = 5000,
) -> PhotoSplit:
    """A seeded split: `num_queries` queries, each with its target, twin, other layout and replaced collages.

    Args:
        seed: fixes everything.
        num_queries: queries (each adds 5 collages to the gallery).
        photos: the photos drawn from (default: every installed one; at least 5).
        sizes: photos per collage, drawn uniformly.
        tries: attempts before giving up on a split that cannot be filled.

    Raises:
        ValueError: fewer than 5 photos, or a size outside 2..len(photos) - 1.
        RuntimeError: not enough unambiguous queries within `tries`.
    """
    names = list(photos) if photos is not None else list(load_photos())
    if len(names) < 5:
        raise ValueError(f"need at least 5 photos, got {len(names)}: {names}")
    if any(not 2 <= n < len(names) for n in sizes):
        raise ValueError(f"sizes must lie in 2..{len(names) - 1}, got {tuple(sizes)}")
    rng = random.Random(f"photos-{seed}")
    gallery: list[Collage] = []
    queries, named, targets, twins, relaid, replaced = [], [], [], [], [], []
    for _ in range(tries):
        if len(queries) == num_queries:
            break
        n = rng.choice(tuple(sizes))
        layout = rng.choice(LAYOUTS)
        chosen = rng.sample(names, n)
        target = Collage(tuple(random_tile(rng, p) for p in chosen), layout, side=rng.randint(*SIDE_RANGE),
                         gap=rng.choice(GAPS), background=rng.choice(BACKGROUNDS))
        i, j = rng.sample(range(n), 2)
        fact = (chosen[i], relation_of(target, i, j), chosen[j])
        others = [p for p in names if p not in chosen]
        group = [target, target.swapped(i, j), target.relaid()]
        group += [target.replaced(k, random_tile(rng, rng.choice(others))) for k in (i, j)]
        # one relevant item per query: the target alone satisfies the new
        # query, and no new collage satisfies an earlier one
        if any(satisfies(g, *fact) for g in gallery + group[1:]):
            continue
        if any(satisfies(g, *f) for g in group for f in named):
            continue
        if caption(*fact) in queries:
            continue
        base = len(gallery)
        gallery += group
        queries.append(caption(*fact))
        named.append(fact)
        targets.append(base)
        twins.append(base + 1)
        relaid.append(base + 2)
        replaced.append([base + 3, base + 4])
    if len(queries) < num_queries:
        raise RuntimeError(f"built only {len(queries)} of {num_queries} unambiguous queries in {tries} tries")
    return PhotoSplit(seed, gallery, queries, named, targets, twins, relaid, replaced)


# ---------------------------------------------------------------- indexing


@dataclass
class PhotoIndex:
    """A split encoded once: whole collages, every family's regions, the queries."""

    split: PhotoSplit
    images: Tensor  # [N, D]
    families: dict  # family -> geosteer.index.RegionFamily
    queries: QuerySide
    sizes: list[tuple[int, int]]  # (width, height) per collage
    seconds: float
    max_regions: int = 16

    def gallery(self, method: str) -> GallerySide:
        """The gallery side for region method `method` (families assembled as `Indexer.index_images` does)."""
        parts, mask, boxes = assemble_regions(self.images, self.families, method, self.max_regions, 0)
        fams = METHODS[method]
        for i, (w, h) in enumerate(self.sizes):
            if not any(self.families[f].boxes[i] for f in fams):
                boxes[i, 0] = torch.tensor([0.0, 0.0, w, h])
        return GallerySide(self.images, parts=parts, parts_mask=mask, part_boxes=boxes)


def index_split(indexer: Indexer, split: PhotoSplit, families: Sequence[str], max_regions: int = 16,
                phrasing: int | str = 0) -> PhotoIndex:
    """Encode a split's collages (with `families`' regions) and queries (said in phrasing `phrasing`)."""
    phrasing_index(phrasing)
    start = time.perf_counter()
    rendered = split.render()
    images = [im for im, _ in rendered]
    emb, fams = indexer.encode_gallery(images, list(families), max_regions, f"photos seed {split.seed}")
    queries = indexer.encode_queries(split.phrased(phrasing))
    return PhotoIndex(split, emb, fams, queries, [im.size for im in images], time.perf_counter() - start, max_regions)


# ---------------------------------------------------------------- methods and metrics


@dataclass(frozen=True)
class Method:
    """A head configuration and the region method its gallery side uses."""

    name: str
    config: HeadConfig
    regions: str = DEFAULT_REGIONS


def default_methods(k: int = 100, lam: float = 0.8, gamma: float = 0.5, regions: str = DEFAULT_REGIONS) -> list[Method]:
    """cosine; rerank (parts only, γ = 0); rerank + structure (γ)."""
    return [
        Method("cosine", get_config("cosine", k=k), regions),
        Method("rerank", get_config("default", k=k, lam=lam, gamma=0.0), regions),
        Method("rerank+structure", get_config("default", k=k, lam=lam, gamma=gamma), regions),
    ]


def run_method(index: PhotoIndex, method: Method):
    """The head's result for every query of the split."""
    cfg = method.config.replace(k=min(method.config.k, index.images.shape[0]))
    gallery = index.gallery(method.regions) if cfg.lam > 0 or cfg.gamma > 0 else GallerySide(index.images)
    queries = index.queries if gallery.parts is not None else QuerySide(index.queries.embeddings)
    return GeoSteerHead(cfg)(queries, gallery)


def _positions(indices: Tensor, items: Sequence[int]) -> Tensor:
    """Rank (0 = first) of items[q] in indices[q], K where absent."""
    want = torch.tensor(list(items))[:, None]
    hit = indices == want
    return torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.tensor(indices.shape[1]))


def metrics(index: PhotoIndex, result) -> dict[str, float]:
    """R@1, R@5, and the share of queries whose target ranks above its twin / other layout / every replaced collage."""
    return ranking_metrics(index.split, result.indices)


def ranking_metrics(split: PhotoSplit, indices: Tensor) -> dict[str, float]:
    """`metrics` of `[Q, K]` gallery indices ranked best first (a target outside them is a miss)."""
    s = split
    indices = indices.cpu()
    if indices.shape[0] != len(s.targets):
        raise ValueError(f"indices must hold one row per query ({len(s.targets)}), got {indices.shape[0]}")
    target = _positions(indices, s.targets)
    twin = _positions(indices, s.twins)
    relaid = _positions(indices, s.relaid)
    replaced = torch.stack([_positions(indices, [r[k] for r in s.replaced]) for k in range(2)], dim=1)
    found = target < indices.shape[1]
    return {
        "r1": float((target == 0).float().mean()),
        "r5": float((found & (target < 5)).float().mean()),
        "twin": float((found & (target < twin)).float().mean()),
        "layout": float((found & (target < relaid)).float().mean()),
        "replaced": float((found & (target[:, None] < replaced).all(dim=1)).float().mean()),
    }


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _inside(box, tile) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return tile[0] <= cx < tile[2] and tile[1] <= cy < tile[3]


def region_recall(index: PhotoIndex, method: str, threshold: float = 0.5) -> float:
    """Share of the gallery's tiles that some region of `method` overlaps with IoU >= `threshold`."""
    g = index.gallery(method)
    hits, total = 0, 0
    for i, (_, tiles) in enumerate(index.split.render()):
        boxes = g.part_boxes[i][g.parts_mask[i]].tolist()
        for t in tiles:
            hits += max(iou(t, b) for b in boxes) >= threshold
            total += 1
    return hits / total


def crop_recognition(indexer: Indexer, index: PhotoIndex) -> float:
    """Share of the targets' tiles, cropped exactly, whose nearest noun (among the split's photos') is their own."""
    s = index.split
    names = sorted({p for c in s.gallery for p in c.photos})
    nouns = indexer.encode_texts([PHOTOS[p].noun for p in names])
    crops, truth = [], []
    for q in range(len(s.queries)):
        image, tiles = s.render()[s.targets[q]]
        crops += crop_regions(image, tiles, indexer.image_size)
        truth += [names.index(p) for p in s.gallery[s.targets[q]].photos]
    emb = indexer.encode_crops(crops)
    return float(((emb @ nouns.T).argmax(dim=1) == torch.tensor(truth)).float().mean())


def part_localisation(index: PhotoIndex, method: Method, result) -> float:
    """Share of (query, named photo) whose region matched by the head in the target collage lies on that photo.

    A target outside the top K, or a part left unmatched, counts as a miss.
    """
    s = index.split
    g = index.gallery(method.regions)
    pos = _positions(result.indices, s.targets)
    hits = 0
    for q, (subject, _, obj) in enumerate(s.named):
        if pos[q] >= result.indices.shape[1]:
            continue
        target = s.gallery[s.targets[q]]
        tiles = s.render()[s.targets[q]][1]
        for part, photo in enumerate((subject, obj)):
            col = int(result.assignment[q, pos[q], part])
            if col >= 0 and _inside(g.part_boxes[s.targets[q], col].tolist(), tiles[target.photos.index(photo)]):
                hits += 1
    return hits / (2 * len(s.queries))


def first_stage_recall(index: PhotoIndex, k: int) -> float:
    """Share of queries whose target is among the cosine top-k."""
    scores = index.queries.embeddings @ index.images.T
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float((top == torch.tensor(index.split.targets)[:, None]).any(dim=1).float().mean())


def summarise(values: Sequence[float]) -> dict[str, float]:
    """mean, std (sample; 0 for one value), n."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
