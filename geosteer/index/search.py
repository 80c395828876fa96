"""One way to search a gallery with captions: heads built once, one result shape, one JSON form.

`Searcher(index, encoder, configs)` holds an opened `Index` (or a
`GallerySide`), the encoder it was built with and one `GeoSteerHead` per
method, each built once (and compiled where that pays: on CUDA, or when
asked). `searcher.search(captions, method, k)` encodes the captions
(`Indexer.encode_queries`), runs the method's head over the whole gallery
and returns a `SearchResult`: per query the cosine top-k and the re-ranked
top-k (`Ranking`s), with each hit's path, (width, height) and the region
matched to each query part. `SearchResult.to_dict()` is the one JSON form
that `geosteer search --json`, `geosteer serve`'s `POST /search` and
`python -m geosteer.distributed.search --json` print.

Every head re-ranks K = `head_k(config.k, k_max, N)` candidates: its
preset's own K, or more when a search may ask for more results, never more
than the gallery holds.

Filters: `searcher.search(..., where="path:holidays/*")` (or `allowed=`, a
`[N]` bool mask) searches a subset of the gallery; `where_mask` parses the
expressions. The head applies the mask in its first stage, so the results
are the search of the filtered gallery; fewer allowed images than k give
fewer results.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from geosteer.config import HeadConfig, get_config
from geosteer.encoders.clip import _check_device, check_positive_int, check_texts
from geosteer.head import GeoSteerHead, HeadResult
from geosteer.index.indexer import Indexer, caption_parts
from geosteer.inputs import GallerySide, QuerySide, map_tensors

#: One caption per shape family a compiled head specialises on (`dynamic=True`
#: still specialises sizes 0 and 1): one part and no relation, two parts and
#: one relation, three parts and two relations. `Searcher.warm_up` runs them.
WARM_UP_QUERIES: tuple[str, ...] = (
    "a pentagon", "a red pentagon to the left of a blue hexagon", "a star above a circle to the left of a square",
)
#: Largest k a `Searcher` serves unless told otherwise.
DEFAULT_K_MAX = 100

#: A pixel box (x0, y0, x1, y1).
Box = tuple[float, float, float, float]


def head_k(config_k: int, k: int, num_items: int) -> int:
    """K, the candidates a head re-ranks to serve k results: its config's K, or k if larger, at most the gallery's N.

    Raises:
        ValueError: an argument that is not a positive int (named).
    """
    return min(max(check_positive_int("config_k", config_k), check_positive_int("k", k)),
               check_positive_int("num_items", num_items))


# ---------------------------------------------------------------- filters

#: What a `where` clause may name.
WHERE_FIELDS = ("path", "id")
_ID_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def where_mask(where: str | Sequence[str], paths: Sequence[str | None], num_items: int | None = None) -> Tensor:
    """The `[N]` bool mask of the gallery rows a `where` filter selects.

    Grammar: one expression, or a list of them (all must hold: AND); an
    expression is clauses joined by `&` (AND); a clause is

    - `path:GLOB`: `fnmatch` (case-sensitive, `*` also crosses `/`) on the
      row's path as the index records it (relative to its image folder):
      `path:holidays/*`, `path:*.png`, `path:holidays/2024/beach.jpg`;
    - `path:PREFIX/`: a folder: every path under it (`path:holidays/`);
    - `id:SPEC`: row ids, a comma list of ids and inclusive ranges: `id:3,5-9`.

    Args:
        where: the expression(s).
        paths: `[N]` the rows' paths (None where unknown: never matched by `path:`).
        num_items: N (default: `len(paths)`).

    Returns:
        `[N]` bool on the CPU, True = selected.

    Raises:
        TypeError: `where` neither a str nor a sequence of str.
        ValueError: an empty or malformed clause, an unknown field, an id out
            of range; each names `where` and the clause.
    """
    if isinstance(where, str):
        exprs = [where]
    elif isinstance(where, Sequence) and all(isinstance(w, str) for w in where):
        exprs = list(where)
    else:
        raise TypeError(f"where must be a str or a list of str (e.g. 'path:holidays/*'), got {type(where).__name__}")
    num = len(paths) if num_items is None else num_items
    mask = torch.ones(num, dtype=torch.bool)
    if not exprs:
        raise ValueError("where is empty; give an expression such as 'path:holidays/*' or 'id:3,5-9'")
    for expr in exprs:
        for clause in expr.split("&"):
            mask &= _clause_mask(clause.strip(), paths, num)
    return mask


def _clause_mask(clause: str, paths: Sequence[str | None], num: int) -> Tensor:
    """One `field:value` clause as a `[N]` bool mask."""
    field, sep, value = clause.partition(":")
    field = field.strip().lower()
    if not sep or field not in WHERE_FIELDS:
        raise ValueError(f"where clause {clause!r} must be one of 'path:GLOB', 'path:PREFIX/', 'id:3,5-9'")
    if not value:
        raise ValueError(f"where clause {clause!r} has nothing after '{field}:'")
    if field == "path":
        if value.endswith("/") and not any(c in value for c in "*?["):
            hit = lambda p: p.startswith(value)  # noqa: E731
        else:
            hit = lambda p: fnmatch.fnmatchcase(p, value)  # noqa: E731
        return torch.tensor([p is not None and hit(p) for p in paths], dtype=torch.bool).reshape(num)
    mask = torch.zeros(num, dtype=torch.bool)
    for part in value.split(","):
        m = _ID_PART.match(part)
        if m is None:
            raise ValueError(f"where clause {clause!r}: {part.strip()!r} is not an id or a range a-b")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= num:
            raise ValueError(f"where clause {clause!r}: ids must be in [0, {num - 1}] with a <= b, got {part.strip()!r}")
        mask[lo : hi + 1] = True
    return mask


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Catalog:
    """What a result shows of each gallery row, looked up by row id.

    Each field is indexable by id: a sequence over every row (an `Index`),
    a mapping holding only the rows asked for (a sharded gallery gathers
    its hits' rows), or None (unknown for every row).

    Attributes:
        paths: the image path of each row.
        sizes: (width, height) of each row's image, the pixels its boxes are in; None where unknown.
        part_boxes: per row, `[n, 4]` pixel boxes of its regions.
        parts_mask: per row, `[n]` bool, True = a region.
    """

    paths: Sequence[str | None] | Mapping[int, str | None] | None = None
    sizes: Sequence[tuple[int, int] | None] | Mapping[int, tuple[int, int] | None] | None = None
    part_boxes: Tensor | Mapping[int, Tensor] | None = None
    parts_mask: Tensor | Mapping[int, Tensor] | None = None

    def box(self, i: int, region: int) -> Box | None:
        """Pixel box of region `region` of row `i`; None for no region (-1, padding, unknown)."""
        if region < 0 or self.part_boxes is None or self.parts_mask is None or not bool(self.parts_mask[i][region]):
            return None
        return tuple(float(v) for v in self.part_boxes[i][region].tolist())


@dataclass
class Ranking:
    """One query's top-k, best first (the cosine order, or the re-ranked one).

    Attributes:
        ids: row ids in the gallery.
        paths: their image paths (as the index records them; None where unknown).
        scores: the ranking's own scores: cosine q·c for the cosine ranking,
            fused S(q, c) for the re-ranked one.
        first_stage: cosine q·c.
        alignment: A(q, c), 0 without re-ranking.
        structure: R(q, c), 0 without relations.
        boxes: per result, per query part, the (x0, y0, x1, y1) pixel box of
            the region matched to it, or None (no match; always None in the
            cosine ranking, which matches nothing).
        ranks_before: per result, its 1-based rank by cosine among the K candidates.
        sizes: per result, (width, height) of its image (None where unknown).
        parts: the query's part phrases (what `boxes` are per).
    """

    ids: list[int]
    paths: list[str | None]
    scores: list[float]
    first_stage: list[float]
    alignment: list[float]
    structure: list[float]
    boxes: list[list[Box | None]]
    ranks_before: list[int]
    sizes: list[tuple[int, int] | None]
    parts: list[str]

    def rows(self) -> list[dict[str, Any]]:
        """The JSON form of each result (`SearchResult.to_dict` holds these lists).

        Each: rank (1-based), id, path, score, first_stage, alignment,
        structure, rank_before (1-based cosine rank among the K candidates),
        width, height (null if unknown), matches: one {"part", "text",
        "box" (pixels), "box_frac" (fractions of the image, null if its size
        is unknown)} per matched query part. Non-finite numbers are null.
        """
        out = []
        for r, i in enumerate(self.ids):
            size = self.sizes[r]
            matches = [{"part": j, "text": self.parts[j], "box": list(box),
                        "box_frac": None if size is None else _box_frac(box, size)}
                       for j, box in enumerate(self.boxes[r]) if box is not None]
            out.append({"rank": r + 1, "id": int(i), "path": self.paths[r], "score": _num(self.scores[r]),
                        "first_stage": _num(self.first_stage[r]), "alignment": _num(self.alignment[r]),
                        "structure": _num(self.structure[r]), "rank_before": int(self.ranks_before[r]),
                        "width": None if size is None else size[0], "height": None if size is None else size[1],
                        "matches": matches})
        return out


@dataclass
class SearchResult:
    """What a search returns: per query the cosine and the re-ranked top-k.

    Attributes:
        queries: the captions (None for a `QuerySide` given whole).
        parts: per query, its part phrases (what `boxes` are per); "part j"
            labels for a `QuerySide`.
        cosine: per query, the cosine top-k.
        reranked: per query, the head's top-k.
        head: the head's raw `HeadResult` over all K candidates (`[Q, K]`).
        config: the head's config (its K capped at the gallery size).
        k: results per query (k capped at the gallery size).
        method: the name of the method (head) that ran.
    """

    queries: list[str] | None
    parts: list[list[str]]
    cosine: list[Ranking]
    reranked: list[Ranking]
    head: HeadResult
    config: HeadConfig
    k: int
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form: {"method", "k", "config", "queries": [{"query", "parts", "cosine", "reranked"}]}.

        "cosine" and "reranked" are lists of `Ranking.rows()`; "query" is
        null for a `QuerySide` given whole.
        """
        return {
            "method": self.method, "k": self.k, "config": dataclasses.asdict(self.config),
            "queries": [{"query": None if self.queries is None else self.queries[q], "parts": self.parts[q],
                         "cosine": self.cosine[q].rows(), "reranked": self.reranked[q].rows()}
                        for q in range(len(self.parts))],
        }


def _box_frac(box: Sequence[float], size: tuple[int, int]) -> list[float]:
    """A pixel box as fractions of its image, clamped to [0, 1] (a page draws it at any thumbnail size)."""
    w, h = max(1, size[0]), max(1, size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    clamp = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return [clamp(x0 / w), clamp(y0 / h), clamp(x1 / w), clamp(y1 / h)]


def _num(x) -> float | None:
    """A JSON-safe float (NaN / inf, never expected, become null rather than invalid JSON)."""
    v = float(x)
    return v if math.isfinite(v) else None


def search_result(
    result: HeadResult,
    catalog: Catalog,
    *,
    queries: list[str] | None,
    parts: list[list[str]],
    config: HeadConfig,
    k: int,
    method: str | None = None,
) -> SearchResult:
    """A head's `HeadResult` over K candidates as a `SearchResult`: the cosine and re-ranked top-k of each query.

    The cosine top-k is the candidates' first-stage order
    (`HeadResult.first_stage_rank`), not a second sort of their scores. A
    filter's padding columns (id -1) are left out: a query whose filter
    allows fewer than k images gets fewer results.

    Args:
        result: `[Q, K]` fields, K >= k, `first_stage_rank` set.
        catalog: paths, sizes and region boxes of the gallery's rows.
        queries / parts: per query, its caption (or None) and part labels.
        config: the head's config; k: results per query; method: its name.

    Raises:
        TypeError: `result`, `catalog` or `config` of the wrong type.
        ValueError: a result without `first_stage_rank`; k not a positive
            int or more than K; `queries` / `parts` not one entry per query.
    """
    if not isinstance(result, HeadResult):
        raise TypeError(f"result must be a geosteer.HeadResult, got {type(result).__name__}")
    if result.first_stage_rank is None:
        raise ValueError("result has no first_stage_rank; pass a HeadResult of geosteer.GeoSteerHead")
    if not isinstance(catalog, Catalog):
        raise TypeError(f"catalog must be a geosteer.index.Catalog, got {type(catalog).__name__}")
    if not isinstance(config, HeadConfig):
        raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
    num_queries, num_cands = result.indices.shape
    if check_positive_int("k", k) > num_cands:
        raise ValueError(f"k={k} is more than the result's K={num_cands} candidates")
    if queries is not None and len(queries) != num_queries:
        raise ValueError(f"queries must hold one caption per query ({num_queries}) or be None, got {len(queries)}")
    if parts is None or len(parts) != num_queries:
        raise ValueError(f"parts must hold one list of labels per query ({num_queries}), got "
                         f"{None if parts is None else len(parts)}")
    result = HeadResult(*(None if t is None else t.cpu() for t in result))  # [Q, K] each: read row by row below
    cosine, reranked = [], []
    for q in range(result.indices.shape[0]):
        before = result.first_stage_rank[q]  # [K]: each column's position in the cosine order
        by_cosine = before.argsort()  # the columns in cosine order
        found = min(k, int((result.indices[q] >= 0).sum()))  # a filter's padding (id -1) is last in both orders
        for order, matched, into in ((by_cosine[:found], False, cosine), (torch.arange(found), True, reranked)):
            cols = order.tolist()
            ids = result.indices[q, order].tolist()
            boxes = [[catalog.box(i, int(result.assignment[q, c, j]) if matched and j < result.assignment.shape[-1]
                                  else -1) for j in range(len(parts[q]))] for c, i in zip(cols, ids)]
            scores = result.scores if matched else result.first_stage_scores
            into.append(Ranking(
                ids=ids, paths=[None if catalog.paths is None else catalog.paths[i] for i in ids],
                scores=scores[q, order].tolist(), first_stage=result.first_stage_scores[q, order].tolist(),
                alignment=result.alignment[q, order].tolist(), structure=result.structure[q, order].tolist(),
                boxes=boxes, ranks_before=(before[order] + 1).tolist(),
                sizes=[None if catalog.sizes is None or catalog.sizes[i] is None else tuple(catalog.sizes[i])
                       for i in ids],
                parts=list(parts[q])))
    return SearchResult(queries, [list(p) for p in parts], cosine, reranked, result, config, k, method)


# ---------------------------------------------------------------- the searcher


def query_side(
    queries: Sequence[str] | QuerySide, indexer: Indexer | None
) -> tuple[list[str] | None, list[list[str]], QuerySide]:
    """What a search runs: (the captions or None, part labels per query, the `QuerySide`).

    Captions go through `indexer.encode_queries`: parts and relations from
    `caption_parts` (one parser batch: spaCy's parse when installed, else the
    regex splitter), a caption naming no object its own single part (split
    once: its phrases are also the labels). A `QuerySide` given whole
    is labelled "part j"; without relations it gets one padding row (R = 0),
    since an index always holds region boxes.

    Raises:
        TypeError / ValueError: naming the bad caption; ValueError for
            captions without an indexer (no encoder); TypeError for an
            `indexer` that is neither an `Indexer` nor None.
    """
    if indexer is not None and not isinstance(indexer, Indexer):
        raise TypeError(f"indexer must be a geosteer.index.Indexer or None, got {type(indexer).__name__}")
    if isinstance(queries, QuerySide):
        num_q = queries.embeddings.shape[0]
        if queries.parts is not None and queries.relations is None:
            pad = torch.full((num_q, 1, 3), -1, dtype=torch.long, device=queries.parts.device)
            queries = dataclasses.replace(queries, relations=pad)
        m = 0 if queries.parts is None else queries.parts.shape[1]
        return None, [[f"part {j + 1}" for j in range(m)] for _ in range(num_q)], queries
    captions = check_texts(queries, "queries")
    if indexer is None:
        raise ValueError("captions need the index's encoder: Index.open(path, encoder=...), search(..., "
                         "encoder=...) or Searcher(index, encoder)")
    split = caption_parts(captions)
    return captions, split[0], indexer.encode_queries(captions, split=split)


def _on(side, device: torch.device):
    """A `QuerySide` / `GallerySide` with every tensor on `device` (the same object if already there)."""
    if all(t is None or t.device == device for t in (getattr(side, f.name) for f in dataclasses.fields(side))):
        return side
    return map_tensors(side, lambda t: t.to(device))


def _first_stage_of(first_stage: Any, index: Any, num_items: int):
    """`Searcher`'s `first_stage` argument as a FAISS first stage, or None for the exact one."""
    if isinstance(first_stage, str):
        if first_stage == "exact":
            return None
        if first_stage == "auto":
            return None if isinstance(index, GallerySide) else index.first_stage
    elif hasattr(first_stage, "search") and hasattr(first_stage, "num_items"):
        if first_stage.num_items != num_items:
            raise ValueError(f"first_stage indexes {first_stage.num_items} items but the gallery has N={num_items}")
        return first_stage
    raise TypeError(f"first_stage must be 'auto', 'exact' or a FaissFirstStage, got {first_stage!r}")


class Searcher:
    """Search an index (or a gallery) with captions: one head per method, built once.

    Args:
        index: an opened `geosteer.index.Index`, or a `GallerySide` (then
            paths and sizes are unknown: null in the results).
        encoder: the encoder the index was built with (for captions; checked
            against an `Index`'s manifest); None: `QuerySide`s only.
        configs: method name -> `HeadConfig` (one head each), one
            `HeadConfig` (method "config"), or None (the "default" preset).
        method: the method `search` runs when none is named (default: the first).
        k_max: the largest k a search may ask for (capped at the gallery size).
        device: where the heads run (default: the gallery's device); the
            gallery is moved there once.
        compile: compile each head (`head.compile(fullgraph=True,
            dynamic=True)`); None: where that pays, on CUDA. On a CPU a
            compiled search costs what an eager one does (1.01 vs 1.04 ms on
            2 cores) after 5 s or more of compilation per query shape family.
        vocabulary: concept -> nearest confuser for the queries' per-part negatives.
        first_stage: where the candidates come from: "auto" (an `Index`'s
            stored FAISS first stage, `Index.build_first_stage`, when it has
            a current one; else exact), "exact" (every embedding scored), or
            a `FaissFirstStage` over this gallery. A FAISS first stage
            serves filters given as one `[N]` mask (its `IDSelector`); a
            per-query `[Q, N]` mask is searched exactly.

    Raises:
        TypeError / ValueError: naming the bad argument; ValueError when
            `encoder` is not the index's. StoreError: corrupt embeddings.
    """

    def __init__(
        self,
        index,
        encoder=None,
        configs: Mapping[str, HeadConfig] | HeadConfig | None = None,
        *,
        method: str | None = None,
        k_max: int = DEFAULT_K_MAX,
        device: torch.device | str | None = None,
        compile: bool | None = None,
        vocabulary: Mapping[str, str] | None = None,
        first_stage: Any = "auto",
    ) -> None:
        if isinstance(index, GallerySide):
            gallery, self.catalog = index, Catalog(part_boxes=index.part_boxes, parts_mask=index.parts_mask)
        elif hasattr(index, "gallery") and hasattr(index, "check_encoder"):
            if encoder is not None:
                index.check_encoder(encoder)
            gallery = index.gallery  # checks the embeddings' checksums
            self.catalog = Catalog(index.paths, index.sizes, gallery.part_boxes, gallery.parts_mask)
        else:
            raise TypeError(f"index must be a geosteer.index.Index or a GallerySide, got {type(index).__name__}")
        if configs is None:
            configs = {"default": get_config("default")}
        elif isinstance(configs, HeadConfig):
            configs = {"config": configs}
        if not isinstance(configs, Mapping) or not configs or not all(
                isinstance(c, HeadConfig) for c in configs.values()):
            raise TypeError("configs must be a HeadConfig or a non-empty mapping of method name -> HeadConfig "
                            "(geosteer.get_config(...))")
        if method is not None and method not in configs:
            raise ValueError(f"method must be one of {tuple(configs)}, got {method!r}")
        if compile is not None and not isinstance(compile, bool):
            raise TypeError(f"compile must be True, False or None (on CUDA only), got {compile!r}")
        num = int(gallery.embeddings.shape[0])
        self.device = gallery.embeddings.device if device is None else _check_device(device)
        self.first_stage = _first_stage_of(first_stage, index, num)
        # an on-disk index searched where it is mapped reads its candidates' region rows ahead (Index.prefetch)
        self._prefetch = None if isinstance(index, GallerySide) or self.device.type != "cpu" else getattr(
            index, "prefetch", None)
        self.gallery = _on(gallery, self.device)
        self.encoder = encoder
        self.indexer = None if encoder is None else Indexer(encoder, vocabulary=vocabulary)
        self.method = method if method is not None else next(iter(configs))
        self.k_max = min(check_positive_int("k_max", k_max), num)
        self.compiled = self.device.type == "cuda" if compile is None else compile
        self.heads: dict[str, GeoSteerHead] = {}
        for name, cfg in configs.items():
            self.heads[name] = GeoSteerHead(cfg.replace(k=head_k(cfg.k, self.k_max, num)))
            if self.compiled:
                self.heads[name].compile(fullgraph=True, dynamic=True)

    def __len__(self) -> int:
        return int(self.gallery.embeddings.shape[0])

    def query_side(self, queries: Sequence[str] | QuerySide) -> tuple[list[str] | None, list[list[str]], QuerySide]:
        """`query_side(queries, self.indexer)` with the `QuerySide` on the heads' device."""
        texts, parts, side = query_side(queries, self.indexer)
        return texts, parts, _on(side, self.device)

    def where(self, where: str | Sequence[str]) -> Tensor:
        """`where_mask(where, paths)` over this searcher's rows: `[N]` bool on its device.

        Raises:
            TypeError / ValueError: a malformed filter (`where_mask`), or one
                that selects no image (named).
        """
        paths = self.catalog.paths if self.catalog.paths is not None else [None] * len(self)
        mask = where_mask(where, paths, len(self))
        if not bool(mask.any()):
            raise ValueError(f"where={where!r} matches no image of the {len(self)} in the index")
        return mask.to(self.device)

    def search(
        self,
        queries: Sequence[str] | QuerySide,
        method: str | None = None,
        k: int = 10,
        *,
        where: str | Sequence[str] | None = None,
        allowed: Tensor | None = None,
    ) -> SearchResult:
        """The cosine top-k and the re-ranked top-k of each query.

        Args:
            queries: captions (a list of str) or a `QuerySide`.
            method: a key of `heads` (default: the searcher's method).
            k: results per query, a positive int (capped at the gallery size;
                at most `k_max`).
            where: a filter expression, or a list of them (AND): `path:GLOB`,
                `path:PREFIX/`, `id:3,5-9` (`where_mask`). The search runs on
                the selected images only (in the head's first stage: the
                result is the search of the filtered gallery).
            allowed: the same as a mask: `[N]` or `[Q, N]` bool (True = may
                be returned); with `where`, both must hold.

        Returns:
            A `SearchResult`: per query the cosine and the re-ranked top-k
            (`Ranking`s of k; fewer where a filter allows fewer images), and
            the head's `[Q, K]` `HeadResult` (a filter's padding: id -1).

        Raises:
            TypeError / ValueError: naming the bad argument; ValueError for a
                filter that selects no image.
        """
        name = self.method if method is None else method
        if name not in self.heads:
            raise ValueError(f"method must be one of {tuple(self.heads)}, got {method!r}")
        k = min(check_positive_int("k", k), len(self))
        if k > self.k_max:
            raise ValueError(f"k={k} is more than this searcher's k_max={self.k_max}")
        mask = self._allowed(where, allowed)
        head = self.heads[name]
        with torch.inference_mode():
            texts, parts, q = self.query_side(queries)
            if mask is not None and mask.dim() == 2 and mask.shape[0] != q.embeddings.shape[0]:
                raise ValueError(f"allowed must be [N={len(self)}] or [Q={q.embeddings.shape[0]}, N] bool, "
                                 f"got {list(mask.shape)}")
            # A filtered or FAISS search runs the head eagerly: a mask or external candidates would add a graph
            # to every shape family a compiled head keeps, past dynamo's recompile limit (a hard error under
            # fullgraph=True).
            fs = self.first_stage
            if fs is not None and (mask is None or mask.dim() == 1):
                cands = fs.search(q.embeddings, head.config.k, allowed=mask, gallery=self.gallery.embeddings)
                if self._prefetch is not None and self.gallery.parts is not None:
                    self._prefetch(cands[1])
                result = head.forward(q, self.gallery, first_stage=cands, allowed=mask)
            else:
                result = head(q, self.gallery) if mask is None else head.forward(q, self.gallery, allowed=mask)
        return search_result(result, self.catalog, queries=texts, parts=parts, config=head.config, k=k, method=name)

    def _allowed(self, where: str | Sequence[str] | None, allowed: Tensor | None) -> Tensor | None:
        """`where` and `allowed` as one bool mask `[N]` / `[Q, N]` on the device, or None for no filter."""
        mask = None if where is None else self.where(where)
        if allowed is None:
            return mask
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
            got = allowed.dtype if isinstance(allowed, Tensor) else type(allowed).__name__
            raise TypeError(f"allowed must be a bool tensor [N={len(self)}] or [Q, N], got {got}")
        if allowed.dim() not in (1, 2) or allowed.shape[-1] != len(self):
            raise ValueError(f"allowed must be [N={len(self)}] or [Q, N] bool, got {list(allowed.shape)}")
        if not bool(allowed.any()):
            raise ValueError(f"allowed selects no image of the {len(self)} in the index")
        allowed = allowed.to(self.device)
        return allowed if mask is None else allowed & mask

    def warm_up(self) -> float:
        """Run `WARM_UP_QUERIES` through every head; the seconds it took.

        The compiled heads compile here (one graph per shape family, which
        every later query reuses), and numba's and the text tower's first
        calls happen here, not in the first searches.
        """
        t0 = time.perf_counter()
        for name in self.heads:
            for query in WARM_UP_QUERIES:
                self.search([query], name, 1)
        return time.perf_counter() - t0
