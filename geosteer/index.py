"""Index a GeoShapes split for the head: gallery, region sets, queries, parts, negatives.

`Indexer(encoder).index(split)` renders the gallery, encodes the images and
the region crops of every region family once, and encodes every query text,
part phrase and contrast text once (texts shared between queries, splits and
methods are encoded once per `Indexer`). The result, a `SplitIndex`, hands
the head its tensors for any region method and steering anchors
(`SplitIndex.head_inputs`), so every method compared in one run reads the
same embeddings.

Region families (see `geosteer.encoders.regions`): "components"
(connected components), "colours" (components split by colour), "grid"
(13 overlapping cells), and "masked" (`masked_regions`): the colour regions,
each cropped *alone* — the other foreground pixels painted with the
background colour, the crop framed on the region's own pixels grown by one
pixel inside the foreground (the anti-aliased rim), so a crop of one of two
touching objects looks like the single-object crops the encoder knows. A
region method is families in order, truncated to `max_regions`, as
`propose_regions` orders them; the families are encoded once and the
methods are assembled from them.

Identical crops (empty background cells, cells a twin shares with its
scene) are encoded once: on GeoShapes that removes about a third of the work.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from geosteer.data.geoshapes import COLOURS, SHAPES, object_phrase
from geosteer.data.splits import Split, make_split
from geosteer.encoders.contrast import part_negatives
from geosteer.encoders.regions import COMPONENT_PAD, component_boxes, crop_regions, grid_boxes, masked_regions
from geosteer.rerank import RELATIONS

Box = tuple[int, int, int, int]
#: Region families encoded per image; every method in `METHODS` is built from them.
FAMILIES: tuple[str, ...] = ("components", "colours", "masked", "grid")
#: Method -> the families it concatenates, in order.
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {
    "components": ("components",),
    "colours": ("colours",),
    "grid": ("grid",),
    "both": ("components", "grid"),
    "components+grid": ("components", "grid"),
    "colours+grid": ("colours", "grid"),
    "masked": ("masked",),
    "masked+grid": ("masked", "grid"),
}
#: Steering anchors: "caption" pairs q with each contrast caption of the query
#: (`contrast_texts`); "parts" pairs each object phrase with its own negative
#: phrase (`part_negatives`: per-object directions).
ANCHORS: tuple[str, ...] = ("caption", "parts")
_CACHE_VERSION = 3
#: "a red pentagon", ... for every shape x colour (48 phrases).
LABEL_PHRASES: list[str] = [object_phrase((s, c)) for s in SHAPES for c in COLOURS]


@dataclass
class RegionFamily:
    """One family's regions for every gallery image.

    Attributes:
        boxes: per image, its (x0, y0, x1, y1) pixel boxes.
        embeddings: `[R, D]` float32, the regions of all images, image by image.
        offsets: `[N + 1]` int64; image i owns rows offsets[i]:offsets[i+1].
    """

    boxes: list[list[Box]]
    embeddings: Tensor
    offsets: Tensor


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

    def query_tensors(self, anchors: str = "caption") -> dict[str, Tensor | None]:
        """Query-side tensors of the split (`query_inputs`)."""
        if anchors not in ANCHORS:
            raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
        key = ("queries", anchors)
        if key in self._memo:
            return self._memo[key]
        sp = self.split
        out = query_inputs(self.text, sp.queries, sp.query_parts, sp.query_relations, sp.negatives, anchors)
        self._memo[key] = out
        return out

    def head_inputs(
        self, method: str = "grid", max_regions: int = 16, anchors: str = "caption",
        parts: bool = True, steering: bool = True, relations: bool = True,
    ) -> dict[str, Tensor]:
        """Keyword arguments for `GeoSteerHead.forward`, with `query` and `gallery`.

        Args:
            method: region method for the gallery part sets.
            max_regions: cap of each region set.
            anchors: steering anchors ("caption" or "parts").
            parts, steering, relations: include part sets, steering anchors,
                relations + boxes (a head with λ = γ = 0 or α = β = 0 needs none).
        """
        q = self.query_tensors(anchors)
        out: dict[str, Tensor] = {"query": q["query"], "gallery": self.images}
        if parts:
            gp, gm, gb = self.regions(method, max_regions)
            out.update(query_parts=q["query_parts"], query_parts_mask=q["query_parts_mask"],
                       gallery_parts=gp, gallery_parts_mask=gm)
            if relations:
                out.update(query_relations=q["query_relations"], gallery_part_boxes=gb)
        if steering and q["negatives"] is not None:
            out.update(negatives=q["negatives"], negatives_mask=q["negatives_mask"], positives=q["positives"])
        return out


def _padded(rows: list[Tensor], dim: int) -> tuple[Tensor, Tensor]:
    """Variable-length `[m_q, D]` rows -> `[Q, m, D]` zeros-padded and `[Q, m]` mask."""
    m = max((r.shape[0] for r in rows), default=0)
    out = torch.zeros(len(rows), m, dim)
    mask = torch.zeros(len(rows), m, dtype=torch.bool)
    for q, r in enumerate(rows):
        out[q, : r.shape[0]] = r
        mask[q, : r.shape[0]] = True
    return out, mask


def assemble_regions(
    images: Tensor, families: dict[str, RegionFamily], method: str, max_regions: int, image_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate a method's families per image, cap, pad: the head's region sets.

    Args:
        images: `[N, D]` whole-image embeddings (the fallback region).
        families: family name -> `RegionFamily` over the same N images.
        method: a key of `METHOD_FAMILIES`.
        max_regions: cap per image.
        image_size: pixel side (the fallback box).

    Returns:
        gallery_parts `[N, n, D]`, gallery_parts_mask `[N, n]` bool,
        gallery_part_boxes `[N, n, 4]` float32 pixels. An image with no
        region (no foreground for "components") gets its whole-image box
        and embedding, as `propose_regions` does.
    """
    if method not in METHOD_FAMILIES:
        raise ValueError(f"method must be one of {tuple(METHOD_FAMILIES)}, got {method!r}")
    fams = [families[f] for f in METHOD_FAMILIES[method]]
    num_items, dim = images.shape
    rows: list[Tensor] = []
    boxes: list[list[Box]] = []
    for i in range(num_items):
        emb = torch.cat([f.embeddings[f.offsets[i] : f.offsets[i + 1]] for f in fams])[:max_regions]
        bxs = [b for f in fams for b in f.boxes[i]][:max_regions]
        if not bxs:
            emb = images[i : i + 1]
            bxs = [(0, 0, image_size, image_size)]
        rows.append(emb)
        boxes.append(bxs)
    n = max(len(b) for b in boxes)
    parts = torch.zeros(num_items, n, dim)
    mask = torch.zeros(num_items, n, dtype=torch.bool)
    box_t = torch.zeros(num_items, n, 4)
    for i, (emb, bxs) in enumerate(zip(rows, boxes)):
        parts[i, : len(bxs)] = emb
        mask[i, : len(bxs)] = True
        box_t[i, : len(bxs)] = torch.tensor(bxs, dtype=torch.float32)
    return parts, mask, box_t


def query_inputs(
    text: Callable[[Sequence[str]], Tensor],
    queries: Sequence[str],
    parts: Sequence[Sequence[str]],
    relations: Sequence[Sequence[tuple[int, int, str]]],
    negatives: Sequence[Sequence[str]],
    anchors: str = "parts",
) -> dict[str, Tensor | None]:
    """Query-side tensors for the head from texts.

    Args:
        text: strings -> `[len, D]` embeddings (e.g. `Indexer.encode_texts`).
        queries: the captions.
        parts: per query, one phrase per object (`split_parts`).
        relations: per query, (i, j, relation name) over its parts.
        negatives: per query, its contrast captions (`contrast_texts`);
            used with anchors="caption".
        anchors: "caption" (positive q, negatives = the contrast captions)
            or "parts" (positive = each part, negative = that part's own
            negative phrase, `part_negatives`).

    Returns:
        dict with `query [Q, D]`, `query_parts [Q, m, D]`,
        `query_parts_mask [Q, m]`, `query_relations [Q, r, 3]` int64 with
        `geosteer.RELATIONS` indices, -1 rows as padding (r >= 1),
        `positives [Q, u or 1, D]`, `negatives [Q, u, D]`,
        `negatives_mask [Q, u]` (these three None when no query has a
        negative).
    """
    if anchors not in ANCHORS:
        raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
    query = text(list(queries))
    part_emb, parts_mask = _padded([text(list(p)) for p in parts], query.shape[1])
    # At least one (padding) row, so the tensor can always be passed with
    # region boxes: queries without relations get R = 0.
    r = max([1, *(len(rs) for rs in relations)])
    rel = torch.full((len(queries), r, 3), -1, dtype=torch.long)
    for q, rs in enumerate(relations):
        for k, (i, j, name) in enumerate(rs):
            rel[q, k] = torch.tensor([i, j, RELATIONS.index(name)])
    if anchors == "caption":
        negs = [text(list(n)) for n in negatives]
        positives = query[:, None, :]
    else:
        per_part = [part_negatives(list(p)) for p in parts]
        # a part without a negative phrase ("") repeats itself, masked out below
        negs = [text([n or p for n, p in zip(ns, ps)]) for ns, ps in zip(per_part, parts)]
        positives = part_emb
    neg_emb, negatives_mask = _padded(negs, query.shape[1])
    if anchors == "parts":
        for q, ns in enumerate(per_part):
            negatives_mask[q, : len(ns)] &= torch.tensor([bool(n) for n in ns])
    if neg_emb.shape[1] == 0 or not negatives_mask.any():
        neg_emb, negatives_mask, positives = None, None, None
    return dict(
        query=query, query_parts=part_emb, query_parts_mask=parts_mask, query_relations=rel,
        positives=positives, negatives=neg_emb, negatives_mask=negatives_mask,
    )


def family_regions(image: Image.Image, family: str, out_size: int, max_regions: int = 16) -> tuple[list[Box], list[Image.Image]]:
    """One family's boxes and crops of one image.

    Components and colour regions are cropped square with `COMPONENT_PAD`
    margin (as `region_crops` does), grid cells as they are, "masked"
    regions by `masked_regions`. A family may be empty (no foreground).
    """
    arr = np.asarray(image.convert("RGB"))
    if family == "grid":
        boxes = grid_boxes(arr.shape[1], arr.shape[0])
        return boxes, crop_regions(arr, boxes, out_size)
    if family == "masked":
        return masked_regions(arr, out_size, max_regions)
    if family not in ("components", "colours"):
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    boxes = component_boxes(arr, max_regions=max_regions, by_colour=family == "colours")
    return boxes, crop_regions(arr, boxes, out_size, pad=COMPONENT_PAD, square=True)


def encoder_fingerprint(encoder) -> str:
    """A short hash of the encoder's name and weights (keys the disk cache)."""
    h = hashlib.sha1(encoder.name.encode())
    with torch.no_grad():
        for name, p in encoder.model.named_parameters():
            h.update(name.encode())
            h.update(np.float64(p.detach().double().sum().item()).tobytes())
    return h.hexdigest()[:16]


class Indexer:
    """Encodes splits with one encoder, sharing every text and crop it has seen.

    Args:
        encoder: a `geosteer.encoders.ClipEncoder` (`load_clip(...)`).
        families: region families to encode (default all three).
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
        self.encoder = encoder
        self.families = tuple(families)
        self.max_regions = max_regions
        self.batch_size = batch_size
        self.progress = progress
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._texts: dict[str, Tensor] = {}
        self._fingerprint: str | None = None
        self._splits: dict[tuple, SplitIndex] = {}

    @property
    def image_size(self) -> int:
        """Render side: the encoder's input size, so crops need no rescaling at full size."""
        return int(self.encoder.image_size[0])

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.encoder)
        return self._fingerprint

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """`[len(texts), D]` embeddings; each distinct text encoded once per Indexer."""
        new = sorted({t for t in texts if t not in self._texts})
        if new:
            emb = self.encoder.encode_texts(new, progress=self.progress and len(new) > 512).cpu()
            self._texts.update(zip(new, emb))
        return torch.stack([self._texts[t] for t in texts]) if texts else torch.empty(0, 0)

    def encode_crops(self, crops: list[Image.Image], desc: str = "") -> Tensor:
        """`[len(crops), D]`; identical crops (same pixels) are encoded once."""
        keys = [hashlib.blake2b(c.tobytes(), digest_size=16).digest() for c in crops]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first.values())
        emb = self._encode_images([crops[i] for i in unique], f"{desc}, {len(unique)} distinct" if desc else "")
        pos = {k: j for j, k in enumerate(first)}
        return emb[[pos[k] for k in keys]]

    def _encode_images(self, images: list[Image.Image], desc: str) -> Tensor:
        if not images:
            return torch.empty(0, self.encoder.embed_dim)
        x = torch.stack([self.encoder.preprocess(im) for im in images])
        out = []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(images), desc=desc, unit="img", leave=False)
        for i in range(0, len(images), self.batch_size):
            out.append(self.encoder.encode_images(x[i : i + self.batch_size], batch_size=self.batch_size).cpu())
            if bar is not None:
                bar.update(min(self.batch_size, len(images) - i))
        if bar is not None:
            bar.close()
        return torch.cat(out)

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
            path = self.cache_dir / f"v{_CACHE_VERSION}_{self.fingerprint()}_{tag}_{fam}_{self.max_regions}.pt"
            if path.is_file():
                saved = torch.load(path, weights_only=False)
                idx = SplitIndex(split=split, encoder_name=self.encoder.name, **saved)
                self._texts.update(zip(idx.text_ids, idx.texts))
                self._splits[key] = idx
                return idx
        idx = self._build(split)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            saved = {k: getattr(idx, k) for k in ("image_size", "images", "families", "texts", "text_ids")}
            torch.save(saved, path)
        self._splits[key] = idx
        return idx

    def index_images(
        self, images: Sequence[Image.Image], method: str = "grid", max_regions: int | None = None
    ) -> dict[str, Tensor]:
        """Gallery tensors of your own images, ready for the head.

        Args:
            images: PIL images (any size; each region crop is resized to the
                encoder's input).
            method: region method, a key of `METHOD_FAMILIES`. "grid" is the
                general one; "masked" / "colours" / "components" assume
                flat-colour scenes like GeoShapes.
            max_regions: cap per image (default: the Indexer's).

        Returns:
            `gallery [N, D]`, `gallery_parts [N, n, D]`, `gallery_parts_mask
            [N, n]`, `gallery_part_boxes [N, n, 4]` (pixels of each image).
        """
        if method not in METHOD_FAMILIES:
            raise ValueError(f"method must be one of {tuple(METHOD_FAMILIES)}, got {method!r}")
        images = [im.convert("RGB") for im in images]
        if not images:
            raise ValueError("images must hold at least one image")
        cap = self.max_regions if max_regions is None else max_regions
        emb, families = self._encode_gallery(images, METHOD_FAMILIES[method], cap, "gallery")
        # the fallback box of an image without regions is its own size; sizes may differ
        parts, mask, boxes = assemble_regions(emb, families, method, cap, 0)
        for i, im in enumerate(images):
            if not any(fam.boxes[i] for fam in families.values()):
                boxes[i, 0] = torch.tensor([0.0, 0.0, im.width, im.height])
        return {"gallery": emb, "gallery_parts": parts, "gallery_parts_mask": mask, "gallery_part_boxes": boxes}

    def encode_queries(
        self, captions: Sequence[str], anchors: str = "parts", parts: Sequence[Sequence[str]] | None = None
    ) -> dict[str, Tensor | None]:
        """Query tensors of your own captions, ready for the head.

        Parts and relations come from `split_parts` (or your `parts`, one
        list per caption, then without relations); negatives from
        `contrast_texts` / `part_negatives`.

        Returns:
            as `query_inputs`: `query`, `query_parts`, `query_parts_mask`,
            `query_relations`, `positives`, `negatives`, `negatives_mask`.
        """
        from geosteer.encoders.contrast import contrast_texts
        from geosteer.encoders.parts import split_parts

        if isinstance(captions, str):
            raise TypeError("captions must be a list of str (wrap a single one in a list)")
        split = [split_parts(c) for c in captions]
        if parts is None:
            part_lists = [p for p, _ in split]
            relations = [r for _, r in split]
        else:
            if len(parts) != len(captions):
                raise ValueError(f"parts must hold one list per caption ({len(captions)}), got {len(parts)}")
            part_lists = [list(p) for p in parts]
            relations = [[] for _ in captions]
        negatives = [contrast_texts(c) for c in captions] if anchors == "caption" else [[] for _ in captions]
        return query_inputs(self.encode_texts, captions, part_lists, relations, negatives, anchors)

    def _encode_gallery(
        self, images: list[Image.Image], families: Sequence[str], max_regions: int, where: str
    ) -> tuple[Tensor, dict[str, RegionFamily]]:
        """Whole-image embeddings `[N, D]` and every family's regions."""
        emb = self._encode_images(images, f"{where}: {len(images)} images")
        # All families' crops in one call: a component crop and a colour-class
        # crop of the same separated object are the same pixels, encoded once.
        per_family: dict[str, tuple[list[list[Box]], list[int]]] = {}
        crops: list[Image.Image] = []
        for fam in families:
            boxes, offsets = [], [len(crops)]
            for im in images:
                b, c = family_regions(im, fam, self.image_size, max_regions)
                boxes.append(b)
                crops.extend(c)
                offsets.append(len(crops))
            per_family[fam] = (boxes, offsets)
        crop_emb = self.encode_crops(crops, f"{where}: {len(crops)} regions ({'+'.join(families)})")
        out: dict[str, RegionFamily] = {}
        for fam, (boxes, offsets) in per_family.items():
            rows = crop_emb[offsets[0] : offsets[-1]]
            local = torch.tensor(offsets, dtype=torch.long) - offsets[0]
            out[fam] = RegionFamily(boxes, rows, local)
        return emb, out

    def _build(self, split: Split) -> SplitIndex:
        images = split.images()
        emb, families = self._encode_gallery(images, self.families, self.max_regions, f"{split.name}/{split.seed}")
        texts = list(split.queries)
        for ps in split.query_parts:
            texts += ps
            texts += [n for n in part_negatives(ps) if n]
        for ns in split.negatives:
            texts += ns
        texts += LABEL_PHRASES  # for the region-recognition diagnostic
        texts = list(dict.fromkeys(texts))
        text_emb = self.encode_texts(texts)
        return SplitIndex(
            split=split, image_size=images[0].width, images=emb, families=families, texts=text_emb,
            text_ids={t: i for i, t in enumerate(texts)}, encoder_name=self.encoder.name,
        )
