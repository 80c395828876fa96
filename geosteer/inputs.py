"""What the head reads: the query side and the gallery side, and their checks.

`QuerySide` and `GallerySide` are the two small types everything that feeds
the head produces (`geosteer.index.Indexer`, and later the on-disk index and
the sharded gallery). Both also behave as mappings from the head's keyword
names to tensors, so `head(**queries, **gallery)` and `head(queries, gallery)`
are the same call, and so is the keyword-tensor call
`head(q, g, query_parts=..., gallery_parts=...)`.

`validate` checks one call in one place (DESIGN §5). The static checks read
only metadata, so they run eagerly and under torch.compile alike; value
checks (NaN/inf, L2 norms, magnitudes, empty masks, id ranges and repeats,
relation rows) are the ops in `geosteer.ops.checks`.
Every failure names the argument and what was expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from geosteer.ops import checks
from geosteer.quantize import COMPACT_DTYPES

if TYPE_CHECKING:
    from geosteer.config import HeadConfig


class _KeywordView:
    """Mapping access under the head's keyword names (None fields are left out)."""

    _KEYWORDS: dict[str, str] = {}  # field -> forward keyword

    def keys(self) -> Iterator[str]:
        return (kw for f, kw in self._KEYWORDS.items() if getattr(self, f) is not None)

    def __getitem__(self, keyword: str) -> Tensor:
        for f, kw in self._KEYWORDS.items():
            if kw == keyword:
                return getattr(self, f)
        raise KeyError(keyword)

    def as_kwargs(self) -> dict[str, Tensor]:
        """The non-None fields under the head's keyword names."""
        return {kw: self[kw] for kw in self.keys()}


@dataclass
class QuerySide(_KeywordView):
    """The query side of a head call.

    Attributes:
        embeddings: `[Q, D]` float, L2-normalised (`query`).
        parts: `[Q, m, D]` one embedding per object phrase (`query_parts`).
        parts_mask: `[Q, m]` bool, True = valid (`query_parts_mask`).
        negatives: `[Q, u, D]` confuser anchors for steering (`negatives`).
        negatives_mask: `[Q, u]` bool (`negatives_mask`).
        positives: `[Q, u or 1, D]` positive anchors paired with the negatives (`positives`).
        relations: `[Q, r, 3]` int64 (i, j, type) over parts, i < 0 = padding (`query_relations`).
    """

    embeddings: Tensor
    parts: Tensor | None = None
    parts_mask: Tensor | None = None
    negatives: Tensor | None = None
    negatives_mask: Tensor | None = None
    positives: Tensor | None = None
    relations: Tensor | None = None

    _KEYWORDS = {
        "embeddings": "query", "parts": "query_parts", "parts_mask": "query_parts_mask", "negatives": "negatives",
        "negatives_mask": "negatives_mask", "positives": "positives", "relations": "query_relations",
    }


@dataclass
class GallerySide(_KeywordView):
    """The gallery side of a head call.

    Attributes:
        embeddings: `[N, D]` float, L2-normalised (`gallery`).
        parts: `[N, n, D]` region / annotation embeddings (`gallery_parts`): the
            embeddings' dtype, or compact (DESIGN §5): float16, or int8 with
            `parts_scale` (`geosteer.quantize.quantize_rows`).
        parts_mask: `[N, n]` bool (`gallery_parts_mask`).
        part_boxes: `[N, n, 4]` float (x0, y0, x1, y1) boxes of the parts (`gallery_part_boxes`).
        neighbors: `[N, k']` int64 kNN graph (`geosteer.knn_graph`, `gallery_neighbors`).
        parts_scale: `[N, n]` float32 scale of each int8 part row, the row being
            `parts_scale[i, j] * parts[i, j]`; None for float parts (`gallery_parts_scale`).
    """

    embeddings: Tensor
    parts: Tensor | None = None
    parts_mask: Tensor | None = None
    part_boxes: Tensor | None = None
    neighbors: Tensor | None = None
    parts_scale: Tensor | None = None

    _KEYWORDS = {
        "embeddings": "gallery", "parts": "gallery_parts", "parts_mask": "gallery_parts_mask",
        "part_boxes": "gallery_part_boxes", "neighbors": "gallery_neighbors", "parts_scale": "gallery_parts_scale",
    }


def _side(cls, name: str, value, keywords: dict[str, Tensor | None]):
    """`value` as a `cls`: built from the keyword tensors, or given whole (then no keyword may be set too)."""
    if isinstance(value, cls):
        given = [kw for kw, v in keywords.items() if v is not None]
        if given:
            raise ValueError(f"{name} is a {cls.__name__}; pass {', '.join(given)} inside it, not as keywords too")
        return value
    fields = {f: keywords[kw] for f, kw in cls._KEYWORDS.items() if kw in keywords}
    return cls(value, **fields)


def query_side(query, **keywords: Tensor | None) -> QuerySide:
    """The `QuerySide` of a head call: `query` itself, or built from `query` and the keyword tensors."""
    return _side(QuerySide, "query", query, keywords)


def gallery_side(gallery, **keywords: Tensor | None) -> GallerySide:
    """The `GallerySide` of a head call: `gallery` itself, or built from `gallery` and the keyword tensors."""
    return _side(GallerySide, "gallery", gallery, keywords)


def map_tensors(side: QuerySide | GallerySide, fn: Callable[[Tensor], Tensor]) -> QuerySide | GallerySide:
    """A new side of the same type with `fn` applied to each of its tensors (rows, a slice, a device); None stays None.

    Raises:
        TypeError: `side` is neither a `QuerySide` nor a `GallerySide`.
    """
    if not isinstance(side, (QuerySide, GallerySide)):
        raise TypeError(f"side must be a QuerySide or a GallerySide, got {type(side).__name__}")
    return type(side)(**{f.name: None if (t := getattr(side, f.name)) is None else fn(t)
                         for f in dataclasses.fields(side)})

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# What a gallery region set may also be (DESIGN §5), for the dtype messages.
_COMPACT_HINT = ", or store them compact: float16, or int8 with gallery_parts_scale (geosteer.quantize)"


def _not_a_tensor(name: str, x, shape_doc: str) -> TypeError:
    if type(x).__module__ == "numpy" and type(x).__name__ == "ndarray":
        return TypeError(f"{name} must be a torch.Tensor {shape_doc}, got a numpy.ndarray; pass torch.from_numpy({name})")
    return TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")


def tensor(name: str, x, ndim: int, shape_doc: str) -> Tensor:
    """Check `x` is a Tensor of rank `ndim`; return it."""
    if not isinstance(x, Tensor):
        raise _not_a_tensor(name, x, shape_doc)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(x.shape)}")
    return x


def on_device(name: str, x: Tensor, like: Tensor) -> None:
    """`x` must live on `like`'s (the query's) device."""
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but query is on {like.device}")


def embeddings(name: str, x, ndim: int, shape_doc: str, like: Tensor | None = None, compact: bool = False) -> Tensor:
    """A floating embedding tensor; with `like`, same dtype, device and dim D.

    With `compact` (the gallery's region sets) the dtype may also be one of
    `geosteer.quantize.COMPACT_DTYPES` (float16; int8, whose scales the
    caller checks).
    """
    tensor(name, x, ndim, shape_doc)
    hint = _COMPACT_HINT if compact else ""
    is_compact = compact and x.dtype in COMPACT_DTYPES
    if x.dtype not in _FLOAT_TYPES and not is_compact:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64{hint}, got {x.dtype}")
    if like is not None:
        if x.dtype != like.dtype and not is_compact:
            raise TypeError(f"{name} has dtype {x.dtype} but query has {like.dtype}; cast them to one dtype{hint}")
        on_device(name, x, like)
        if x.shape[-1] != like.shape[-1]:
            raise ValueError(f"{name} has dim D={x.shape[-1]} but query has D={like.shape[-1]}")
    return x


def mask(name: str, m, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A bool mask of exactly `shape` on `like`'s device."""
    # Shapes are formatted only when raising: under torch.compile(dynamic=True)
    # they are symbolic, and formatting one is a graph break.
    if not isinstance(m, Tensor):
        raise _not_a_tensor(name, m, "[" + ", ".join(str(d) for d in shape) + "]")
    if m.ndim != len(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid), got {m.dtype}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(m.shape)}")
    on_device(name, m, like)
    return m


def leading(name: str, x: Tensor, size: int, what: str) -> None:
    """`x.shape[0]` must equal `size` (Q or N)."""
    if x.shape[0] != size:
        raise ValueError(f"{name} has {x.shape[0]} rows but {what}={size}")


def nonempty(name: str, x: Tensor, dim: int, what: str) -> None:
    """`x.shape[dim]` must be at least 1."""
    if x.shape[dim] == 0:
        raise ValueError(f"{name} has {what}=0 (shape {tuple(x.shape)}); sets must not be empty")


def part_set(
    name: str, parts, parts_mask, rows: int, rows_name: str, set_name: str, query: Tensor, check_values: bool,
    compact: bool = False,
) -> list[Tensor]:
    """Check an optional part set `[R, s, D]` and its mask `[R, s]`; return value-check flags.

    With `check_values` the set must be finite and its valid rows
    L2-normalised (masked-out rows are exempt from the norm check). With
    `compact` it may be float16 or int8 whatever the query's dtype (`embeddings`).
    """
    flags = []
    if parts is None:
        if parts_mask is not None:
            raise ValueError(f"{name}_mask was given without {name}")
        return flags
    embeddings(name, parts, 3, f"[{rows_name}, {set_name}, D]", like=query, compact=compact)
    leading(name, parts, rows, rows_name)
    nonempty(name, parts, 1, set_name)
    if parts_mask is not None:
        mask(f"{name}_mask", parts_mask, tuple(parts.shape[:2]), query)
        flags.append(checks.check_rows_any(parts_mask, f"{name}_mask"))
    if check_values:
        flags.append(checks.check_finite(parts, name, True, parts_mask))
    return flags


def gallery_parts(items: GallerySide, query: Tensor) -> list[Tensor]:
    """Check the gallery's part set `[N, n, D]`, its mask and, for int8 parts, their scales `[N, n]`.

    The parts have the query's dtype or are compact (DESIGN §5): float16, or
    int8 with `gallery_parts_scale` float32 `[N, n]`. Only metadata is read
    here; values are checked in the candidates' rows.

    Returns:
        the mask's value-check flags.
    """
    parts, scale, num_items = items.parts, items.parts_scale, items.embeddings.shape[0]
    if scale is not None and parts is None:
        raise ValueError("gallery_parts_scale was given without gallery_parts")
    flags = part_set("gallery_parts", parts, items.parts_mask, num_items, "N", "n", query, check_values=False,
                     compact=True)
    if parts is None:
        return flags
    if parts.dtype == torch.int8:
        if scale is None:
            raise ValueError("int8 gallery_parts need gallery_parts_scale [N, n] float32, one scale per row "
                             "(geosteer.quantize.quantize_rows)")
        tensor("gallery_parts_scale", scale, 2, "[N, n]")
        if scale.dtype != torch.float32 or tuple(scale.shape) != tuple(parts.shape[:2]):
            raise ValueError(f"gallery_parts_scale must be float32 {list(parts.shape[:2])}, "
                             f"got {scale.dtype} {list(scale.shape)}")
        on_device("gallery_parts_scale", scale, query)
    elif scale is not None:
        raise ValueError(f"gallery_parts_scale is for int8 gallery_parts; gallery_parts are {parts.dtype}, pass None")
    return flags


def certify_gallery(items: GallerySide) -> None:
    """Check a gallery's whole-gallery tensors once, for an owner that passes it to every call and never writes it.

    The embeddings `[N, D]` (finite, unit rows), the part boxes `[N, n, 4]`
    (finite, within `MAX_BOX_COORD`) and the parts mask `[N, n]` (no empty
    set) get the scans `validate` gives them, now; later head calls skip
    those scans of these tensor objects while their version counters are
    unchanged (`geosteer.ops.checks.certify`: no per-call pass over an
    N-row gallery). `gallery_parts` need nothing here: their values are
    checked in the candidates' rows on every call.

    Raises:
        TypeError: `items` is not a `GallerySide`.
        ValueError: as the head would, naming the tensor.
    """
    if not isinstance(items, GallerySide):
        raise TypeError(f"items must be a GallerySide, got {type(items).__name__}")
    checks.certify(items.embeddings, "gallery", "unit")
    if items.part_boxes is not None:
        checks.certify(items.part_boxes, "gallery_part_boxes", "range", bound=MAX_BOX_COORD, hint=_BOX_HINT)
    if items.parts_mask is not None:
        checks.certify(items.parts_mask, "gallery_parts_mask", "rows_any")


def num_candidates(cfg: HeadConfig, num_items: int) -> int:
    """K = min(k, N): the candidates a call keeps and the result's width."""
    return min(cfg.k, num_items)


def validate(
    cfg: HeadConfig, queries: QuerySide, items: GallerySide, first_stage, parts_mode: bool, rerank: bool
) -> Tensor:
    """Check every input of one `GeoSteerHead.forward` call (DESIGN §5).

    Static checks raise here; value checks run as `geosteer::check_*` ops
    whose zero outputs are summed and returned, for the head to add to its
    scores (so a compiler cannot drop them). The one value check that needs
    the candidates (`gallery_parts`' rows) is the head's, after the first
    stage (`checks.check_rows`).

    Args:
        cfg: the head's config.
        queries, items: the two sides of the call.
        first_stage: the external `(scores, ids)` pair, or None.
        parts_mode: the head matches part sets (else neighbourhoods).
        rerank: λ > 0 or γ > 0.

    Returns:
        a float32 zero scalar.
    """
    query = queries.embeddings
    embeddings("query", query, 2, "[Q, D]")
    embeddings("gallery", items.embeddings, 2, "[N, D]", like=query)
    num_queries, num_items = query.shape[0], items.embeddings.shape[0]
    nonempty("query", query, 0, "Q")
    nonempty("query", query, 1, "D")
    nonempty("gallery", items.embeddings, 0, "N")
    num_cands = num_candidates(cfg, num_items)
    # One pass each: NaN/inf and row norms. The gallery's result is cached
    # per tensor (checks._FINITE_SEEN) until TensorCache sees it change.
    flags = [checks.check_finite(query, "query", True), checks.check_finite(items.embeddings, "gallery", True)]
    flags += part_set("query_parts", queries.parts, queries.parts_mask, num_queries, "Q", "m", query, check_values=True)
    # Values of gallery_parts (and their int8 scales) are checked in the
    # candidates' rows only (part_cost / checks.check_rows, after the first
    # stage): scanning all N x n x D here would cost as much as the re-ranking.
    flags += gallery_parts(items, query)
    flags += _anchors(cfg, queries)
    flags += _structure(cfg, queries, items, parts_mode)
    flags += _neighbors(cfg, items, parts_mode, rerank, num_cands)
    if first_stage is not None:
        flags += _first_stage(cfg, first_stage, query, num_items, num_cands)
    return torch.stack(flags).sum()


def _anchors(cfg: HeadConfig, queries: QuerySide) -> list[Tensor]:
    """Steering anchors: negatives `[Q, u, D]` (+ mask `[Q, u]`), positives `[Q, u or 1, D]`."""
    query, negatives, positives = queries.embeddings, queries.negatives, queries.positives
    num_queries = query.shape[0]
    flags = []
    neg_mask = queries.negatives_mask
    if negatives is not None:
        embeddings("negatives", negatives, 3, "[Q, u, D]", like=query)
        leading("negatives", negatives, num_queries, "Q")
        nonempty("negatives", negatives, 1, "u")
        if neg_mask is not None:
            mask("negatives_mask", neg_mask, tuple(negatives.shape[:2]), query)
        flags.append(checks.check_finite(negatives, "negatives", True, neg_mask))
    elif cfg.alpha > 0 or cfg.beta > 0 or cfg.delta > 0:
        raise ValueError(f"alpha={cfg.alpha} / beta={cfg.beta} / delta={cfg.delta} steer away from negatives "
                         "[Q, u, D], but none were given")
    elif neg_mask is not None:
        raise ValueError("negatives_mask was given without negatives")
    if positives is not None:
        embeddings("positives", positives, 3, "[Q, u, D] or [Q, 1, D]", like=query)
        leading("positives", positives, num_queries, "Q")
        nonempty("positives", positives, 1, "u")
        if negatives is not None and positives.shape[1] not in (1, negatives.shape[1]):
            raise ValueError(
                f"positives has {positives.shape[1]} anchors; expected 1 or u={negatives.shape[1]} (one per negative)"
            )
        # A positive paired with a masked-out negative is never read.
        paired = negatives is not None and neg_mask is not None and positives.shape[1] == negatives.shape[1]
        flags.append(checks.check_finite(positives, "positives", True, neg_mask if paired else None))
    return flags


#: Largest |coordinate| of a part box: float32 box arithmetic (centres,
#: offsets, extents) is exact to the pixel up to 2^24, and far from overflow.
MAX_BOX_COORD = float(2**24)
_BOX_HINT = "box coordinates; float32 box arithmetic is exact to the pixel up to 2^24"


def _structure(cfg: HeadConfig, queries: QuerySide, items: GallerySide, parts_mode: bool) -> list[Tensor]:
    """The structure term's inputs: relations `[Q, r, 3]` int64 and part boxes `[N, n, 4]`.

    Given ones are always type-, rank- and device-checked; their values and
    the pair only when γ > 0 reads them.
    """
    relations, boxes, query = queries.relations, items.part_boxes, queries.embeddings
    if relations is not None:
        tensor("query_relations", relations, 3, "[Q, r, 3]")
        on_device("query_relations", relations, query)
    if boxes is not None:
        tensor("gallery_part_boxes", boxes, 3, "[N, n, 4]")
        on_device("gallery_part_boxes", boxes, query)
    # `not γ > 0`, never `γ == 0`: under torch.compile(dynamic=True) a float
    # equality specialises the graph on γ's value (one recompile per preset).
    if not cfg.gamma > 0 or (relations is None and boxes is None):
        return []
    num_queries, num_items = query.shape[0], items.embeddings.shape[0]
    if relations is None or boxes is None:
        raise ValueError("the structure term needs both query_relations [Q, r, 3] and gallery_part_boxes [N, n, 4]")
    if not parts_mode:
        raise ValueError("query_relations need part sets (query_parts and gallery_parts)")
    if relations.dtype != torch.long or relations.shape[0] != num_queries or relations.shape[2] != 3:
        raise ValueError(
            f"query_relations must be int64 [Q={num_queries}, r, 3], got {relations.dtype} {list(relations.shape)}"
        )
    expected = [num_items, items.parts.shape[1], 4]
    if list(boxes.shape) != expected or not boxes.is_floating_point():
        raise ValueError(f"gallery_part_boxes must be float {expected}, got {boxes.dtype} {list(boxes.shape)}")
    return [checks.check_range(boxes, "gallery_part_boxes", MAX_BOX_COORD, _BOX_HINT),
            checks.check_relations(relations, queries.parts.shape[1], "query_relations")]


def _neighbors(cfg: HeadConfig, items: GallerySide, parts_mode: bool, rerank: bool, num_cands: int) -> list[Tensor]:
    """Neighbourhood mode: the kNN graph `[N, k']` int64, or a gallery large enough to search one."""
    graph, num_items = items.neighbors, items.embeddings.shape[0]
    pool = min(cfg.neighbors, num_cands)
    if graph is None:
        if not parts_mode and rerank and pool >= num_items:
            raise ValueError(f"neighbourhood mode needs neighbors={pool} < N={num_items}")
        return []
    tensor("gallery_neighbors", graph, 2, "[N, k']")
    on_device("gallery_neighbors", graph, items.embeddings)
    if graph.dtype != torch.long or graph.shape[0] != num_items:
        raise ValueError(f"gallery_neighbors must be int64 [N={num_items}, k'], got {graph.dtype} {list(graph.shape)}")
    if graph.shape[1] < pool:
        raise ValueError(f"gallery_neighbors has k'={graph.shape[1]} columns but neighbors={pool}")
    return [checks.check_ids(graph, num_items, "gallery_neighbors")]


#: External first-stage scores must be cosines q·c of L2-normalised
#: embeddings, in [-1, 1]; this much more is rounding (an fp16 index, PQ).
MAX_FIRST_STAGE_SCORE = 1.01


def _first_stage(cfg: HeadConfig, first_stage, query: Tensor, num_items: int, num_cands: int) -> list[Tensor]:
    """An external first stage: `(scores [Q, K'], ids [Q, K'])`, K' >= K, distinct ids in `[0, N)` per row."""
    if not isinstance(first_stage, (tuple, list)) or len(first_stage) != 2:
        raise TypeError("first_stage must be a (scores [Q, K'], ids [Q, K']) pair")
    num_queries = query.shape[0]
    fs_scores, fs_ids = first_stage
    tensor("first_stage scores", fs_scores, 2, "[Q, K']")
    tensor("first_stage ids", fs_ids, 2, "[Q, K']")
    if not fs_scores.is_floating_point():
        raise TypeError(f"first_stage scores must be a float tensor, got {fs_scores.dtype}")
    if fs_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"first_stage ids must be int32/int64, got {fs_ids.dtype}")
    on_device("first_stage scores", fs_scores, query)
    on_device("first_stage ids", fs_ids, query)
    if tuple(fs_scores.shape) != tuple(fs_ids.shape) or fs_ids.shape[0] != num_queries:
        raise ValueError(f"first_stage scores and ids must both be [Q={num_queries}, K'], got {list(fs_scores.shape)} and {list(fs_ids.shape)}")
    if fs_ids.shape[1] < num_cands:
        capped = f" (K = min(k, N={num_items}) = {num_cands})" if num_cands != cfg.k else ""
        raise ValueError(f"first_stage holds K'={fs_ids.shape[1]} candidates but k={cfg.k}{capped}")
    flags = [checks.check_ids(fs_ids, num_items, "first_stage ids", True)]
    if cfg.lam < 1 or cfg.alpha > 0 or cfg.beta > 0:
        # The scores enter the fused score (and the steering) as s(q, c).
        flags.append(checks.check_range(fs_scores, "first_stage scores", MAX_FIRST_STAGE_SCORE,
                                        "cosines q·c of L2-normalised embeddings; an L2 index returns distances: "
                                        "use an inner-product index"))
    else:
        flags.append(checks.check_finite(fs_scores, "first_stage scores"))  # they only pick the top K
    return flags
