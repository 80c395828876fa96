"""Static input checks for the head: types, ranks, shapes, dtypes, devices.

They read only metadata, so they run eagerly and under torch.compile alike;
value checks (NaN/inf, empty masks, id ranges) are the ops in
`geosteer.ops.checks`. Every failure names the argument and what was expected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from geosteer.ops import checks

if TYPE_CHECKING:
    from geosteer.config import HeadConfig

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, x, ndim: int, shape_doc: str) -> Tensor:
    """Check `x` is a Tensor of rank `ndim`; return it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(x.shape)}")
    return x


def embeddings(name: str, x, ndim: int, shape_doc: str, like: Tensor | None = None) -> Tensor:
    """A floating embedding tensor; with `like`, same dtype, device and dim D."""
    tensor(name, x, ndim, shape_doc)
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")
    if like is not None:
        if x.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but query has {like.dtype}; cast them to one dtype")
        if x.device != like.device:
            raise ValueError(f"{name} is on {x.device} but query is on {like.device}")
        if x.shape[-1] != like.shape[-1]:
            raise ValueError(f"{name} has dim D={x.shape[-1]} but query has D={like.shape[-1]}")
    return x


def mask(name: str, m, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A bool mask of exactly `shape` on `like`'s device."""
    tensor(name, m, len(shape), str(list(shape)))
    if m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid), got {m.dtype}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(m.shape)}")
    if m.device != like.device:
        raise ValueError(f"{name} is on {m.device} but query is on {like.device}")
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
    name: str, parts, parts_mask, rows: int, rows_name: str, set_name: str, query: Tensor, check_values: bool
) -> list[Tensor]:
    """Check an optional part set `[R, s, D]` and its mask `[R, s]`; return value-check flags."""
    flags = []
    if parts is None:
        if parts_mask is not None:
            raise ValueError(f"{name}_mask was given without {name}")
        return flags
    embeddings(name, parts, 3, f"[{rows_name}, {set_name}, D]", like=query)
    leading(name, parts, rows, rows_name)
    nonempty(name, parts, 1, set_name)
    if check_values:
        flags.append(checks.check_finite(parts, name))
    if parts_mask is not None:
        mask(f"{name}_mask", parts_mask, tuple(parts.shape[:2]), query)
        flags.append(checks.check_rows_any(parts_mask, f"{name}_mask"))
    return flags


def head_inputs(
    cfg: HeadConfig, query, gallery, query_parts, query_parts_mask, gallery_parts, gallery_parts_mask,
    negatives, negatives_mask, positives, query_relations, gallery_part_boxes, gallery_neighbors,
    first_stage, parts_mode, rerank,
) -> Tensor:
    """Check every input of `GeoSteerHead.forward` (DESIGN §5).

    Static checks raise here; value checks run as `geosteer::check_*` ops
    whose zero outputs are summed and returned, for the head to add to its
    scores (so a compiler cannot drop them).

    Returns:
        a float32 zero scalar.
    """
    embeddings("query", query, 2, "[Q, D]")
    embeddings("gallery", gallery, 2, "[N, D]", like=query)
    num_queries, num_items = query.shape[0], gallery.shape[0]
    nonempty("query", query, 0, "Q")
    nonempty("query", query, 1, "D")
    nonempty("gallery", gallery, 0, "N")
    if cfg.k > num_items:
        raise ValueError(f"k={cfg.k} exceeds the gallery size N={num_items}")
    flags = [checks.check_finite(query, "query"), checks.check_finite(gallery, "gallery")]

    flags += part_set("query_parts", query_parts, query_parts_mask, num_queries, "Q", "m", query, check_values=True)
    # Non-finite candidate parts are caught inside geosteer::part_cost, on the
    # gathered rows only: scanning all N x n x D here would cost as much as
    # the re-ranking itself.
    flags += part_set("gallery_parts", gallery_parts, gallery_parts_mask, num_items, "N", "n", query, check_values=False)

    if negatives is not None:
        embeddings("negatives", negatives, 3, "[Q, u, D]", like=query)
        leading("negatives", negatives, num_queries, "Q")
        nonempty("negatives", negatives, 1, "u")
        flags.append(checks.check_finite(negatives, "negatives"))
        if negatives_mask is not None:
            mask("negatives_mask", negatives_mask, tuple(negatives.shape[:2]), query)
    elif cfg.alpha > 0 or cfg.beta > 0:
        raise ValueError(f"alpha={cfg.alpha} / beta={cfg.beta} steer away from negatives [Q, u, D], but none were given")
    elif negatives_mask is not None:
        raise ValueError("negatives_mask was given without negatives")
    if positives is not None:
        embeddings("positives", positives, 3, "[Q, u, D] or [Q, 1, D]", like=query)
        leading("positives", positives, num_queries, "Q")
        if negatives is not None and positives.shape[1] not in (1, negatives.shape[1]):
            raise ValueError(
                f"positives has {positives.shape[1]} anchors; expected 1 or u={negatives.shape[1]} (one per negative)"
            )
        flags.append(checks.check_finite(positives, "positives"))

    if cfg.gamma > 0 and (query_relations is not None or gallery_part_boxes is not None):
        if query_relations is None or gallery_part_boxes is None:
            raise ValueError("the structure term needs both query_relations [Q, r, 3] and gallery_part_boxes [N, n, 4]")
        if not parts_mode:
            raise ValueError("query_relations need part sets (query_parts and gallery_parts)")
        tensor("query_relations", query_relations, 3, "[Q, r, 3]")
        if query_relations.dtype != torch.long or query_relations.shape[0] != num_queries or query_relations.shape[2] != 3:
            raise ValueError(
                f"query_relations must be int64 [Q={num_queries}, r, 3], got {query_relations.dtype} {list(query_relations.shape)}"
            )
        tensor("gallery_part_boxes", gallery_part_boxes, 3, "[N, n, 4]")
        expected = [num_items, gallery_parts.shape[1], 4]
        if list(gallery_part_boxes.shape) != expected or not gallery_part_boxes.is_floating_point():
            raise ValueError(f"gallery_part_boxes must be float {expected}, got {gallery_part_boxes.dtype} {list(gallery_part_boxes.shape)}")
        flags.append(checks.check_finite(gallery_part_boxes, "gallery_part_boxes"))
        flags.append(checks.check_relations(query_relations, query_parts.shape[1], "query_relations"))

    if gallery_neighbors is not None:
        tensor("gallery_neighbors", gallery_neighbors, 2, "[N, k']")
        if gallery_neighbors.dtype != torch.long or gallery_neighbors.shape[0] != num_items:
            raise ValueError(f"gallery_neighbors must be int64 [N={num_items}, k'], got {gallery_neighbors.dtype} {list(gallery_neighbors.shape)}")
        if gallery_neighbors.shape[1] < cfg.pool_neighbors:
            raise ValueError(f"gallery_neighbors has k'={gallery_neighbors.shape[1]} columns but neighbors={cfg.pool_neighbors}")
        flags.append(checks.check_ids(gallery_neighbors, num_items, "gallery_neighbors"))
    elif not parts_mode and rerank and cfg.pool_neighbors >= num_items:
        raise ValueError(f"neighbourhood mode needs neighbors={cfg.pool_neighbors} < N={num_items}")

    if first_stage is not None:
        if not isinstance(first_stage, (tuple, list)) or len(first_stage) != 2:
            raise TypeError("first_stage must be a (scores [Q, K'], ids [Q, K']) pair")
        fs_scores, fs_ids = first_stage
        tensor("first_stage scores", fs_scores, 2, "[Q, K']")
        tensor("first_stage ids", fs_ids, 2, "[Q, K']")
        if fs_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"first_stage ids must be int32/int64, got {fs_ids.dtype}")
        if tuple(fs_scores.shape) != tuple(fs_ids.shape) or fs_ids.shape[0] != num_queries:
            raise ValueError(f"first_stage scores and ids must both be [Q={num_queries}, K'], got {list(fs_scores.shape)} and {list(fs_ids.shape)}")
        if fs_ids.shape[1] < cfg.k:
            raise ValueError(f"first_stage holds K'={fs_ids.shape[1]} candidates but k={cfg.k}")
        flags.append(checks.check_ids(fs_ids, num_items, "first_stage ids"))
        flags.append(checks.check_finite(fs_scores, "first_stage scores"))
    return torch.stack(flags).sum()
