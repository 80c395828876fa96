"""Encode images, region crops and captions for the head: the library's indexer.

`Indexer(encoder)` turns your own images into a `GallerySide`
(`index_images`: whole-image embeddings plus the region sets of a region
method, boxes included) and captions into a `QuerySide` (`encode_queries`:
parts, relations, per-object negatives). Region families
(`geosteer.encoders.regions.FAMILIES`) are encoded once each and a method's
sets assembled from them (`assemble_regions`), so one index can serve every
method; identical crops (empty background cells, cells a twin shares with
its scene) and repeated texts are encoded once.

Images may be of any kind `geosteer.encoders.clip.as_rgb_image` converts
(PIL images of any mode, file paths, numpy arrays, torch tensors); every
argument is checked before anything is encoded (DESIGN §5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from geosteer.encoders.clip import check_positive_int, check_texts
from geosteer.encoders.images import ImageLike, as_rgb_image, check_images
from geosteer.encoders.contrast import contrast_texts, part_negatives
from geosteer.encoders.parts import split_captions
from geosteer.encoders.regions import FAMILIES, Box, check_method, family_regions
from geosteer.inputs import GallerySide, QuerySide
from geosteer.relations import relation_id

#: Steering anchors: "caption" pairs q with each contrast caption of the query
#: (`contrast_texts`); "parts" pairs each object phrase with its own negative
#: phrase (`part_negatives`: per-object directions).
ANCHORS: tuple[str, ...] = ("caption", "parts")


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
        method: a key of `geosteer.encoders.regions.METHODS`.
        max_regions: cap per image.
        image_size: pixel side (the fallback box).

    Returns:
        gallery_parts `[N, n, D]`, gallery_parts_mask `[N, n]` bool,
        gallery_part_boxes `[N, n, 4]` float32 pixels. An image with no
        region (no foreground for "components") gets its whole-image box
        and embedding, as `propose_regions` does.
    """
    fams = [families[f] for f in check_method(method)]
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
    vocabulary: Mapping[str, str] | None = None,
) -> QuerySide:
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
        vocabulary: concept -> nearest confuser for `part_negatives`
            (None: attribute swaps only).

    Returns:
        A `QuerySide`: embeddings `[Q, D]`, parts `[Q, m, D]`, parts_mask
        `[Q, m]`, relations `[Q, r, 3]` int64 with `geosteer.RELATIONS`
        ids, -1 rows as padding (r >= 1), positives `[Q, u or 1, D]`,
        negatives `[Q, u, D]`, negatives_mask `[Q, u]` (these three None
        when no query has a negative).
    """
    if anchors not in ANCHORS:
        raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
    for name, per_query in (("parts", parts), ("relations", relations), ("negatives", negatives)):
        if len(per_query) != len(queries):
            raise ValueError(f"{name} must hold one list per query ({len(queries)}), got {len(per_query)}")
    for q, p in enumerate(parts):
        if not p:
            raise ValueError(f"parts[{q}] is empty: every query needs at least one part (its caption, if nothing else)")
    query = text(list(queries))
    part_emb, parts_mask = _padded([text(list(p)) for p in parts], query.shape[1])
    # At least one (padding) row, so the tensor can always be passed with
    # region boxes: queries without relations get R = 0.
    r = max([1, *(len(rs) for rs in relations)])
    rel = torch.full((len(queries), r, 3), -1, dtype=torch.long)
    for q, rs in enumerate(relations):
        for k, (i, j, name) in enumerate(rs):
            rel[q, k] = torch.tensor([i, j, relation_id(name)])
    if anchors == "caption":
        negs = [text(list(n)) for n in negatives]
        positives = query[:, None, :]
    else:
        # each query's parts read as its caption's parse read them (cached: caption_parts parsed them)
        per_part = [part_negatives(list(p), vocabulary=vocabulary, caption=c) for c, p in zip(queries, parts)]
        # a part without a negative phrase ("") repeats itself, masked out below
        negs = [text([n or p for n, p in zip(ns, ps)]) for ns, ps in zip(per_part, parts)]
        positives = part_emb
    neg_emb, negatives_mask = _padded(negs, query.shape[1])
    if anchors == "parts":
        for q, ns in enumerate(per_part):
            negatives_mask[q, : len(ns)] &= torch.tensor([bool(n) for n in ns])
    if neg_emb.shape[1] == 0 or not negatives_mask.any():
        neg_emb, negatives_mask, positives = None, None, None
    return QuerySide(query, parts=part_emb, parts_mask=parts_mask, relations=rel,
                     positives=positives, negatives=neg_emb, negatives_mask=negatives_mask)


#: What `caption_parts` returns: per caption its phrases, its relations (i, j, name), whether an object was found.
CaptionSplit = tuple[list[list[str]], list[list[tuple[int, int, str]]], list[bool]]


def caption_parts(captions: Sequence[str], parser: str | None = None) -> CaptionSplit:
    """Per caption: its object phrases, its relations over them, and whether the parser found an object.

    The captions are split in one batch (`geosteer.encoders.parts.split_captions`:
    spaCy's parse when installed, else the regex splitter; `parser`). A
    caption naming no object ("at night") is its own one part, without
    relations: it is matched as a whole. What `Indexer.encode_queries`
    encodes, and what a search shows as its parts (`geosteer.index.query_side`
    hands its split to `encode_queries`, so each caption is split once).

    Args:
        captions: a list of str.
        parser: as `split_parts`' (None: `$GEOSTEER_PARSER`, unset "auto").

    Returns:
        (parts, relations, found): three lists of len(captions).

    Raises:
        TypeError: `captions` is a bare str or holds a non-str (`captions[i]`).
    """
    texts = check_texts(captions, "captions")
    parts, relations, found = [], [], []
    for c, (p, r) in zip(texts, split_captions(texts, parser)):
        ok = bool(p)
        parts.append(p if ok else [c.strip()])  # names no object: the caption is its own one part
        relations.append(r)
        found.append(ok)
    return parts, relations, found


def encoder_fingerprint(encoder) -> str:
    """A short hash of the encoder's name and weights (keys the disk cache, checks an index's encoder).

    The weights' bytes are hashed, not a floating-point sum of them: a sum
    depends on torch's thread count (torchrun starts ranks with one thread,
    `geosteer index` uses every core), so the same model had two fingerprints.
    """
    h = hashlib.sha1(encoder.name.encode())
    with torch.no_grad():
        for name, p in encoder.model.named_parameters():
            h.update(name.encode())
            h.update(str(p.dtype).encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Indexer:
    """Encodes images, their regions and queries with one encoder, each distinct text and crop once.

    Args:
        encoder: a `geosteer.encoders.ClipEncoder` (`load_clip(...)`), or
            anything with its `preprocess`, `encode_images`, `encode_texts`,
            `embed_dim` and `image_size`.
        max_regions: cap per region family and image, a positive int.
        batch_size: images per forward pass, a positive int.
        progress: tqdm bars while encoding.
        vocabulary: concept -> nearest confuser (str -> str) for the
            per-object negatives of `encode_queries` (None: attribute swaps only).

    Raises:
        TypeError: `encoder` is not an encoder, `progress` not a bool,
            `vocabulary` not a str -> str mapping. ValueError: `max_regions`
            or `batch_size` not a positive int.
    """

    def __init__(
        self,
        encoder,
        max_regions: int = 16,
        batch_size: int = 128,
        progress: bool = False,
        vocabulary: Mapping[str, str] | None = None,
    ) -> None:
        # getattr_static first: a property such as embed_dim may run the model;
        # hasattr only for wrappers that delegate through __getattr__
        missing = [a for a in _ENCODER_API if inspect.getattr_static(encoder, a, None) is None and not hasattr(encoder, a)]
        if missing:
            raise TypeError(
                f"encoder must be a ClipEncoder (geosteer.encoders.load_clip(...)), got {type(encoder).__name__} "
                f"without {', '.join(missing)}"
            )
        if not isinstance(progress, (bool, np.bool_)):
            raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
        self.encoder = encoder
        self.max_regions = check_positive_int("max_regions", max_regions)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.progress = bool(progress)
        self.vocabulary = _check_vocabulary(vocabulary)
        self._texts: dict[str, Tensor] = {}
        self._fingerprint: str | None = None

    @property
    def image_size(self) -> int:
        """Render side: the encoder's input size, so crops need no rescaling at full size."""
        return int(self.encoder.image_size[0])

    def fingerprint(self) -> str:
        """`encoder_fingerprint` of the encoder (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.encoder)
        return self._fingerprint

    def encode_texts(self, texts: Iterable[str]) -> Tensor:
        """`[len(texts), D]` embeddings; each distinct text encoded once per Indexer.

        Raises:
            TypeError: `texts` is a bare str or holds a non-str (named by position).
        """
        texts = check_texts(texts)
        if not texts:
            return torch.empty(0, self.encoder.embed_dim)
        new = sorted({t for t in texts if t not in self._texts})
        if new:
            emb = self.encoder.encode_texts(new, progress=self.progress and len(new) > 512).cpu()
            self._texts.update(zip(new, emb))
        return torch.stack([self._texts[t] for t in texts])

    def remember_texts(self, texts: Sequence[str], embeddings: Tensor) -> None:
        """Take `[len(texts), D]` embeddings encoded earlier (a cache) instead of encoding those texts again."""
        self._texts.update(zip(texts, embeddings))

    def encode_crops(self, crops: Iterable[ImageLike], desc: str = "") -> Tensor:
        """`[len(crops), D]`; identical crops (same pixels) are encoded once.

        Args:
            crops: images of any kind `as_rgb_image` takes (named `crops[i]` in errors).
            desc: label of the progress bar.
        """
        crops = _rgb_images(crops, "crops")
        unique, positions = _distinct(crops)
        emb = self._encode_images(unique, f"{desc}, {len(unique)} distinct" if desc else "")
        return emb[positions]

    def _encode_images(self, images: list[Image.Image], desc: str,
                       on_batch: Callable[[int], None] | None = None) -> Tensor:
        """RGB PIL images -> `[N, D]` on the CPU, preprocessed a batch at a time; `on_batch(size)` after each."""
        if not images:
            return torch.empty(0, self.encoder.embed_dim)
        out = []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(images), desc=desc, unit="img", leave=False)
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.encoder.preprocess(im) for im in images[i : i + self.batch_size]])
            out.append(self.encoder.encode_images(x, batch_size=self.batch_size).cpu())
            if bar is not None:
                bar.update(x.shape[0])
            if on_batch is not None:
                on_batch(x.shape[0])
        if bar is not None:
            bar.close()
        return torch.cat(out)

    def index_images(
        self,
        images: Iterable[ImageLike],
        method: str = "grid",
        max_regions: int | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> GallerySide:
        """The gallery side of your own images, ready for the head.

        Args:
            images: a list (or any iterable) of images, any size from 1 x 1
                pixels: PIL images of any mode, file paths, `[H, W]` /
                `[H, W, 3]` / `[H, W, 4]` numpy arrays or `[C, H, W]` tensors
                (`geosteer.encoders.clip.as_rgb_image`; each region crop is
                resized to the encoder's input).
            method: region method, a key of `geosteer.encoders.regions.METHODS`.
                "grid" is the general one; "masked" / "colours" /
                "components" assume flat-colour scenes like GeoShapes.
            max_regions: cap per image, a positive int (default: the Indexer's).
            on_progress: called after each encoder batch with the images'
                worth of work it did (fractions; they sum to len(images)),
                so a progress bar moves within a batch of images.

        Returns:
            A `GallerySide`: embeddings `[N, D]`, parts `[N, n, D]`,
            parts_mask `[N, n]`, part_boxes `[N, n, 4]` (pixels of each image,
            of the RGB image `as_rgb_image` makes: files upright by EXIF).

        Raises:
            ValueError: an unknown `method`, `max_regions` not a positive int,
                no image, or an image that does not convert (a file that
                does not decode, an array of another shape or range: named
                `images[i]`, with the path). TypeError: `images` is one image
                rather than a list, or holds something else (`images[i]`).
        """
        families_of = check_method(method)
        cap = self.max_regions if max_regions is None else check_positive_int("max_regions", max_regions)
        items = check_images(images)
        if not items:
            raise ValueError("images must hold at least one image")
        rgb = [as_rgb_image(im, f"images[{i}]") for i, im in enumerate(items)]
        emb, families = self.encode_gallery(rgb, families_of, cap, "gallery", on_progress)
        # the fallback box of an image without regions is its own size; sizes may differ
        parts, mask, boxes = assemble_regions(emb, families, method, cap, 0)
        for i, im in enumerate(rgb):
            if not any(fam.boxes[i] for fam in families.values()):
                boxes[i, 0] = torch.tensor([0.0, 0.0, im.width, im.height])
        return GallerySide(emb, parts=parts, parts_mask=mask, part_boxes=boxes)

    def encode_queries(
        self,
        captions: Iterable[str],
        anchors: str = "parts",
        parts: Iterable[Iterable[str]] | None = None,
        *,
        split: CaptionSplit | None = None,
    ) -> QuerySide:
        """The query side of your own captions, ready for the head.

        Parts and relations come from `caption_parts` (the captions split in
        one batch by `split_captions`: spaCy's parse when installed, else the
        regex splitter; or your `parts`, one list per caption, then without
        relations); negatives from `contrast_texts` / `part_negatives` with
        the Indexer's `vocabulary`, on the same (cached) parse.
        A caption that names no object ("at night"), and an
        empty list in `parts`, make the whole caption the query's one part,
        without relations or contrast captions. A caption longer than the
        text tower's context is cut to it by the tokenizer (its parts are
        encoded each on its own).

        Args:
            captions: a list (or any iterable) of non-empty str.
            anchors: a key of `ANCHORS`.
            parts: None, or one list of phrases (non-empty str) per caption.
            split: `caption_parts(captions)` when the caller has it already
                (a search shows its phrases as the parts' labels), so the
                captions are not split twice; None: split here.

        Returns:
            A `QuerySide`, as `query_inputs` makes it.

        Raises:
            TypeError: `captions` is a bare str or holds a non-str; `parts`
                is not a list of lists of str (named `parts[i]` / `parts[i][j]`).
            ValueError: no caption, an empty caption (`captions[i]`), an
                unknown `anchors`, `parts` of another length than `captions`,
                an empty phrase in it; a `split` that is not three lists of
                len(captions).
        """
        captions = check_texts(captions, "captions")
        if not captions:
            raise ValueError("captions must hold at least one caption")
        for i, c in enumerate(captions):
            if not c.strip():
                raise ValueError(f"captions[{i}] must hold at least one word, got {c!r}")
        if anchors not in ANCHORS:
            raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
        given = None if parts is None else _check_parts(parts, len(captions))
        part_lists, relations, splittable = caption_parts(captions) if split is None else _check_split(split, len(captions))
        if given is not None:
            part_lists = [g or [c.strip()] for g, c in zip(given, captions)]
            relations = [[] for _ in captions]
        negatives = [
            contrast_texts(c, self.vocabulary) if anchors == "caption" and ok else []
            for c, ok in zip(captions, splittable)
        ]
        return query_inputs(self.encode_texts, captions, part_lists, relations, negatives, anchors, self.vocabulary)

    def steering_request(
        self, queries: QuerySide, toward: Sequence[str | Sequence[str]], away: Sequence[str | Sequence[str]]
    ) -> QuerySide:
        """`queries` steered toward texts and away from their confusers, for the head's δ (and α, β).

        Per query, one pair ("a red star", "an orange star") or several
        (one per object: `["a red star", "a blue circle"]` / `["an orange
        star", "a purple circle"]`), each pair kept apart (never averaged into
        one direction). The query's own parts, relations and embedding stay;
        its positives / negatives (and their mask) become the request's.

        Args:
            queries: a `QuerySide` of Q queries (`encode_queries`).
            toward: Q entries, each a str or a non-empty list of str.
            away: Q entries of the same lengths as `toward`'s.

        Returns:
            A new `QuerySide`: positives `[Q, u, D]`, negatives `[Q, u, D]`,
            negatives_mask `[Q, u]` (u = the most pairs of one query).

        Raises:
            TypeError / ValueError: naming `toward[i]` / `away[i]`.
        """
        if not isinstance(queries, QuerySide):
            raise TypeError(f"queries must be a QuerySide (Indexer.encode_queries), got {type(queries).__name__}")
        num_queries = queries.embeddings.shape[0]
        sides = {}
        for name, given in (("toward", toward), ("away", away)):
            if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
                raise TypeError(f"{name} must be a list with one str or list of str per query, got {type(given).__name__}")
            if len(given) != num_queries:
                raise ValueError(f"{name} must hold one entry per query ({num_queries}), got {len(given)}")
            rows = []
            for i, entry in enumerate(given):
                phrases = check_texts([entry] if isinstance(entry, str) else entry, f"{name}[{i}]")
                if not phrases or not all(p.strip() for p in phrases):
                    raise ValueError(f"{name}[{i}] must hold at least one non-empty phrase, got {entry!r}")
                rows.append(phrases)
            sides[name] = rows
        for i, (t, a) in enumerate(zip(sides["toward"], sides["away"])):
            if len(t) != len(a):
                raise ValueError(f"toward[{i}] has {len(t)} phrases but away[{i}] has {len(a)}: one away per toward")
        dim = queries.embeddings.shape[1]
        positives, mask = _padded([self.encode_texts(t) for t in sides["toward"]], dim)
        negatives, _ = _padded([self.encode_texts(a) for a in sides["away"]], dim)
        device = queries.embeddings.device
        return dataclasses.replace(queries, positives=positives.to(device), negatives=negatives.to(device),
                                   negatives_mask=mask.to(device))

    def encode_gallery(
        self,
        images: Iterable[ImageLike],
        families: Sequence[str],
        max_regions: int,
        where: str,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[Tensor, dict[str, RegionFamily]]:
        """Whole-image embeddings `[N, D]` and every family's regions.

        Args:
            images: images of any kind `as_rgb_image` takes (RGB PIL images pass as they are).
            families: region families (`geosteer.encoders.regions.FAMILIES`) to encode.
            max_regions: cap per family and image, a positive int.
            where: label of the progress bars.
            on_progress: as `index_images`'.
        """
        check_positive_int("max_regions", max_regions)
        for f in families:
            if f not in FAMILIES:
                raise ValueError(f"families must be drawn from {FAMILIES}, got {f!r}")
        images = _rgb_images(images, "images")
        # All families' crops in one call: a component crop and a colour-class
        # crop of the same separated object are the same pixels, encoded once.
        # Cut before anything is encoded, so progress knows the whole count:
        # each encoder input (an image or a distinct crop) costs the same.
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
        unique, positions = _distinct(crops)
        on_batch = None
        if on_progress is not None:
            per_input = len(images) / max(1, len(images) + len(unique))
            on_batch = lambda size: on_progress(size * per_input)  # noqa: E731
        emb = self._encode_images(images, f"{where}: {len(images)} images", on_batch)
        crop_emb = self._encode_images(
            unique, f"{where}: {len(crops)} regions ({'+'.join(families)}), {len(unique)} distinct", on_batch
        )[positions]
        out: dict[str, RegionFamily] = {}
        for fam, (boxes, offsets) in per_family.items():
            rows = crop_emb[offsets[0] : offsets[-1]]
            local = torch.tensor(offsets, dtype=torch.long) - offsets[0]
            out[fam] = RegionFamily(boxes, rows, local)
        return emb, out


#: What `Indexer` calls on its encoder.
_ENCODER_API: tuple[str, ...] = ("preprocess", "encode_images", "encode_texts", "embed_dim", "image_size")


def _distinct(crops: list[Image.Image]) -> tuple[list[Image.Image], list[int]]:
    """(the distinct crops, in first-seen order; per crop, its position among them): same pixels, one entry."""
    keys = [hashlib.blake2b(c.tobytes(), digest_size=16).digest() + repr(c.size).encode() for c in crops]
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    pos = {k: j for j, k in enumerate(first)}
    return [crops[i] for i in first.values()], [pos[k] for k in keys]


def _rgb_images(images, name: str) -> list[Image.Image]:
    """Every image of `images` as RGB PIL (`as_rgb_image`), named `name[i]` in errors."""
    return [as_rgb_image(im, f"{name}[{i}]") for i, im in enumerate(check_images(images, name))]


def _check_vocabulary(vocabulary) -> dict[str, str] | None:
    if vocabulary is None:
        return None
    if not isinstance(vocabulary, Mapping):
        raise TypeError(f"vocabulary must be a mapping of str -> str (concept -> confuser) or None, got {type(vocabulary).__name__}")
    for k, v in vocabulary.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"vocabulary must map str -> str, got {k!r}: {v!r}")
    return dict(vocabulary)


def _check_split(split, num_captions: int) -> CaptionSplit:
    """The caller's `split` of `encode_queries`: `caption_parts`' three lists, one entry per caption each."""
    if not isinstance(split, tuple) or len(split) != 3 or not all(isinstance(x, list) for x in split):
        raise TypeError(f"split must be caption_parts(captions): a tuple of three lists, got {type(split).__name__}")
    if any(len(x) != num_captions for x in split):
        raise ValueError(f"split must hold one entry per caption ({num_captions}) in each of its three lists, "
                         f"got {[len(x) for x in split]}")
    return split


def _check_parts(parts, num_captions: int) -> list[list[str]]:
    """The caller's `parts` of `encode_queries` as lists of phrases (an empty list stays empty)."""
    if isinstance(parts, (str, bytes)):
        raise TypeError(f"parts must be a list of lists of str (one list per caption), got {type(parts).__name__}")
    try:
        rows = list(parts)
    except TypeError:
        raise TypeError(f"parts must be a list of lists of str (one list per caption), got {type(parts).__name__}") from None
    if len(rows) != num_captions:
        raise ValueError(f"parts must hold one list per caption ({num_captions}), got {len(rows)}")
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)):
            raise TypeError(f"parts[{i}] must be a list of str (one phrase per object), got a bare {type(row).__name__} {row!r}")
        phrases = check_texts(row, f"parts[{i}]")
        for j, p in enumerate(phrases):
            if not p.strip():
                raise ValueError(f"parts[{i}][{j}] must be a non-empty phrase, got {p!r}")
        out.append(phrases)
    return out
