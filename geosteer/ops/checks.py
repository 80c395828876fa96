"""Data-dependent input checks, as custom ops.

Shape and dtype checks are static and run in plain Python (they trace fine
under torch.compile). Checks that must look at values (NaN/inf, all-masked
rows, ids out of range) would break a `fullgraph=True` trace, so they live in
opaque custom ops that return a zero scalar; the head adds that zero to its
scores so the compiler cannot drop the check.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.ops.tensor_cache import TensorCache
from geosteer.relations import RELATIONS

# Tensors already found finite. Serving code passes the same gallery on every
# call; re-scanning 100k x 512 floats each time cost ~15% of the first stage
# on 2 cores. An in-place change bumps the version counter, so a modified
# tensor is scanned again.
_FINITE_SEEN = TensorCache(max_entries=8)


@torch.library.custom_op("geosteer::check_finite", mutates_args=())
def check_finite(x: Tensor, name: str) -> Tensor:
    """Raise `ValueError` if `x` holds NaN or ±inf; else return a float32 zero."""
    if x.numel() and _FINITE_SEEN.get(x) is None:
        # Any NaN/inf makes the sum non-finite, so a finite sum proves the
        # tensor clean with one streaming pass and no [N, D] bool temporary;
        # only a non-finite sum (a fault, or an overflow of huge finite
        # values) pays for the exact element-wise check.
        if not bool(torch.isfinite(x.sum(dtype=torch.float32))) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf entries; embeddings must be finite")
        _FINITE_SEEN.put(x, True)
    return torch.zeros((), dtype=torch.float32, device=x.device)


@check_finite.register_fake
def _(x: Tensor, name: str) -> Tensor:
    return x.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_rows_any", mutates_args=())
def check_rows_any(mask: Tensor, name: str) -> Tensor:
    """Raise `ValueError` if a row of the bool `mask [R, n]` has no True entry."""
    if mask.shape[0] and not bool(mask.any(dim=1).all()):
        bad = int((~mask.any(dim=1)).nonzero()[0])
        raise ValueError(f"{name} row {bad} is all False: every set needs at least one valid entry")
    return torch.zeros((), dtype=torch.float32, device=mask.device)


@check_rows_any.register_fake
def _(mask: Tensor, name: str) -> Tensor:
    return mask.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_ids", mutates_args=())
def check_ids(ids: Tensor, size: int, name: str) -> Tensor:
    """Raise `ValueError` unless every id lies in `[0, size)`."""
    if ids.numel() and not bool(((ids >= 0) & (ids < size)).all()):
        raise ValueError(f"{name} holds ids outside [0, {size}) (FAISS pads missing results with -1)")
    return torch.zeros((), dtype=torch.float32, device=ids.device)


@check_ids.register_fake
def _(ids: Tensor, size: int, name: str) -> Tensor:
    return ids.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_relations", mutates_args=())
def check_relations(relations: Tensor, num_parts: int, name: str) -> Tensor:
    """Raise `ValueError` unless rows (i, j, type) have parts in [0, m) (or i < 0 = padding) and type indexes `RELATIONS`."""
    if relations.numel():
        real = relations[..., 0] >= 0
        i, j, kind = relations[..., 0], relations[..., 1], relations[..., 2]
        bad = real & ((i >= num_parts) | (j < 0) | (j >= num_parts) | (kind < 0) | (kind >= len(RELATIONS)))
        if bool(bad.any()):
            raise ValueError(f"{name} rows must be (i, j, type) with 0 <= i, j < m={num_parts} and type in 0..{len(RELATIONS) - 1} ({RELATIONS})")
    return torch.zeros((), dtype=torch.float32, device=relations.device)


@check_relations.register_fake
def _(relations: Tensor, num_parts: int, name: str) -> Tensor:
    return relations.new_empty((), dtype=torch.float32)
