"""Index a GeoShapes split for the head: gallery, region sets, queries, parts, negatives.

`SplitIndexer(encoder).index(split)` renders the gallery, encodes the images
and the region crops of every region family once, and encodes every query
text, part phrase and contrast text once (through the library's
`geosteer.index.Indexer`, so texts shared between queries, splits and
methods are encoded once per indexer). The result, a `SplitIndex`, hands
the head its inputs for any region method and steering anchors
(`SplitIndex.head_inputs`), so every method compared in one run reads the
same embeddings.

Region families (`geosteer.encoders.regions`): "components", "colours",
"masked" and "grid"; a region method is families in order, truncated to
`max_regions`, as `propose_regions` orders them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from geosteer import GallerySide, QuerySide
from geosteer.encoders import part_negatives
from geosteer.encoders.regions import FAMILIES
from geosteer.geoshapes.splits import Split, make_split
from geosteer.geoshapes.vocabulary import CONFUSERS, LABEL_PHRASES
from geosteer.index import ANCHORS, Indexer, RegionFamily, assemble_regions, query_inputs
_CACHE_VERSION = 3


@dataclass
class SplitIndex:
    """Every embedding one split needs, for any region method and anchor kind.

    Attributes:
        split: the split (scenes, captions, targets).
        image_size: pixel side the gallery was rendered at.
        images: `[N, D]` gallery image embeddings.
        families: region family name -> `RegionFamily`.
        texts: `[T, D]` embeddings of every distinct text of the split.
        text_ids: text -> its row in `texts`.
        encoder_name: what encoded it.
    """

    split: Split
    image_size: int
    images: Tensor
    families: dict[str, RegionFamily]
    texts: Tensor
    text_ids: dict[str, int]
    encoder_name: str = ""
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def targets(self) -> Tensor:
        """`[Q]` int64 gallery id of each query's single correct scene."""
        return torch.tensor(self.split.targets, dtype=torch.long)

    def text(self, strings: Sequence[str]) -> Tensor:
        """`[len(strings), D]` embeddings of texts of this split."""
        return self.texts[[self.text_ids[s] for s in strings]]

    def regions(self, method: str = "grid", max_regions: int = 16) -> tuple[Tensor, Tensor, Tensor]:
        """Region sets of `method`, padded for the head (memoised `assemble_regions`)."""
        key = ("regions", method, max_regions)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = assemble_regions(self.images, self.families, method, max_regions, self.image_size)
        return self._memo[key]

    def query_tensors(self, anchors: str = "caption") -> QuerySide:
        """The split's query side (`query_inputs` with `CONFUSERS`)."""
        if anchors not in ANCHORS:
            raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
        key = ("queries", anchors)
        if key in self._memo:
            return self._memo[key]
        sp = self.split
        out = query_inputs(self.text, sp.queries, sp.query_parts, sp.query_relations, sp.negatives, anchors, CONFUSERS)
        self._memo[key] = out
        return out

    def head_inputs(
        self, method: str = "grid", max_regions: int = 16, anchors: str = "caption",
        parts: bool = True, steering: bool = True, relations: bool = True,
    ) -> tuple[QuerySide, GallerySide]:
        """The query and gallery sides of a head call over this split: `head(*index.head_inputs(...))`.

        Args:
            method: region method for the gallery part sets.
            max_regions: cap of each region set.
            anchors: steering anchors ("caption" or "parts").
            parts, steering, relations: include part sets, steering anchors,
                relations + boxes (a head with λ = γ = 0 or α = β = 0 needs none).
        """
        q = self.query_tensors(anchors)
        queries, gallery = QuerySide(q.embeddings), GallerySide(self.images)
        if parts:
            gallery.parts, gallery.parts_mask, boxes = self.regions(method, max_regions)
            queries.parts, queries.parts_mask = q.parts, q.parts_mask
            if relations:
                queries.relations, gallery.part_boxes = q.relations, boxes
        if steering and q.negatives is not None:
            queries.negatives, queries.negatives_mask, queries.positives = q.negatives, q.negatives_mask, q.positives
        return queries, gallery


class SplitIndexer:
    """Indexes GeoShapes splits with one encoder, sharing every text and crop it has seen.

    Args:
        encoder: a `geosteer.encoders.ClipEncoder` (`load_clip(...)`).
        families: region families to encode (default all of `FAMILIES`).
        max_regions: cap per family and image.
        batch_size: images per forward pass.
        progress: tqdm bars while encoding.
        cache_dir: optional folder; indexed splits are saved there (keyed by
            the encoder's weights and the split's arguments) and reloaded.
    """

    def __init__(
        self,
        encoder,
        families: Sequence[str] = FAMILIES,
        max_regions: int = 16,
        batch_size: int = 128,
        progress: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        for f in families:
            if f not in FAMILIES:
                raise ValueError(f"families must be drawn from {FAMILIES}, got {f!r}")
        self.indexer = Indexer(encoder, max_regions=max_regions, batch_size=batch_size, progress=progress,
                               vocabulary=CONFUSERS)
        self.families = tuple(families)
        self.max_regions = max_regions
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._splits: dict[tuple, SplitIndex] = {}

    @property
    def encoder(self):
        """The encoder every split is indexed with."""
        return self.indexer.encoder

    @property
    def image_size(self) -> int:
        """Render side: the encoder's input size, so crops need no rescaling at full size."""
        return self.indexer.image_size

    def fingerprint(self) -> str:
        """The encoder's fingerprint (keys the disk cache)."""
        return self.indexer.fingerprint()

    def split(self, name: str, seed: int, num_queries: int = 100, distractors: int | None = None) -> SplitIndex:
        """`make_split(name, seed, ...)` rendered at `image_size` and indexed."""
        return self.index(make_split(name, seed, num_queries=num_queries, image_size=self.image_size, distractors=distractors))

    def index(self, split: Split) -> SplitIndex:
        """Encode one split (memoised per split arguments; disk-cached with `cache_dir`)."""
        key = (split.name, split.seed, len(split.queries), len(split.gallery), split.image_size)
        if key in self._splits:
            return self._splits[key]
        path = None
        if self.cache_dir is not None:
            tag = "_".join(str(k) for k in key)
            fam = "-".join(self.families)
            path = self.cache_dir / f"v{_CACHE_VERSION}_{self.indexer.fingerprint()}_{tag}_{fam}_{self.max_regions}.pt"
            if path.is_file():
                saved = torch.load(path, weights_only=False)
                idx = SplitIndex(split=split, encoder_name=self.indexer.encoder.name, **saved)
                self.indexer.remember_texts(idx.text_ids, idx.texts)
                self._splits[key] = idx
                return idx
        idx = self._build(split)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            saved = {k: getattr(idx, k) for k in ("image_size", "images", "families", "texts", "text_ids")}
            torch.save(saved, path)
        self._splits[key] = idx
        return idx

    def _build(self, split: Split) -> SplitIndex:
        images = split.images()
        emb, families = self.indexer.encode_gallery(images, self.families, self.max_regions, f"{split.name}/{split.seed}")
        texts = list(split.queries)
        for ps in split.query_parts:
            texts += ps
            texts += [n for n in part_negatives(ps, vocabulary=CONFUSERS) if n]
        for ns in split.negatives:
            texts += ns
        texts += LABEL_PHRASES  # for the region-recognition diagnostic
        texts = list(dict.fromkeys(texts))
        text_emb = self.indexer.encode_texts(texts)
        return SplitIndex(
            split=split, image_size=images[0].width, images=emb, families=families, texts=text_emb,
            text_ids={t: i for i, t in enumerate(texts)}, encoder_name=self.indexer.encoder.name,
        )
