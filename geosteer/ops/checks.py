"""Data-dependent input checks, as custom ops.

Shape and dtype checks are static and run in plain Python (they trace fine
under torch.compile). Checks that must look at values (NaN/inf, row norms,
magnitudes, all-masked rows, ids out of range or repeated) would break a
`fullgraph=True` trace, so they live in opaque custom ops that return a zero
scalar; the head adds that zero to its scores so the compiler cannot drop
the check.

What is scanned when (the README's "Guarantees" list):

- `check_finite`: the whole tensor on every call, except that a tensor
  checked without a mask (the gallery, above all) is remembered once clean
  (`_FINITE_SEEN`) and not scanned again until it changes.
- `check_range`: the same, for boxes and external first-stage scores.
- `check_rows`: only the candidates' rows of `gallery_parts`, on every call
  (each distinct candidate once); int8 rows with their scales.
- `certify`: a tensor its owner checked once with the same scan and does
  not write (the store's mapped gallery, `geosteer.index.Index.gallery`) is
  skipped by `check_finite`, `check_range` and `check_rows_any` while its
  version counter is unchanged, with no per-call fingerprint pass (at 1M x
  512 that pass alone took ~200 ms a call). In-place torch writes bump the
  version and bring the per-call checks back; writes through `.numpy()` or
  `.data` are not seen (for a store's tensors: use `index.add` / `sync`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.ops.tensor_cache import TensorCache
from geosteer.relations import RELATIONS

# Tensors already found clean: the value is "unit" (finite, unit rows),
# "finite" or "range <bound>". Serving code passes the same gallery on every
# call; re-scanning 100k x 512 floats each time cost ~15% of the first stage
# on 2 cores. A tensor changed since (as `TensorCache` tells) is scanned again.
_FINITE_SEEN = TensorCache(max_entries=8)
# Tensors `certify` checked for their owner: the value is the check that
# passed ("unit", "finite", "range <bound>", "rows_any"); keyed by object and
# version counter only (no fingerprint), see `certify`.
_CERTIFIED = TensorCache(max_entries=64, verify=False)

#: Largest |1 - ‖row‖| accepted as "L2-normalised", per dtype: 4 units of
#: rounding of the dtype (a row normalised in float32 and cast keeps its norm
#: within one unit), at least 1e-3.
UNIT_TOLERANCE = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# Rows gathered at once by `check_rows` (elements of the [rows, n, D] block).
_ROWS_CHUNK_ELEMENTS = 1 << 22


def unit_tolerance(dtype: torch.dtype, dim: int, scale: Tensor | None = None) -> float | Tensor:
    """Largest |1 - ‖row‖| accepted for a row of `dtype` (int8: the row's value `scale * q`).

    Float dtypes: `UNIT_TOLERANCE[dtype]`. float16 rounds each entry to within
    a relative 2^-11, so a unit row cast to float16 keeps its norm within
    4.9e-4; 2e-3 is 4 such units, room for the float32 norm's own rounding.

    int8 (`geosteer.quantize.quantize_rows`): each entry of `scale * q` is
    within `scale / 2` of the unit row it came from, so the error vector's norm
    is at most `sqrt(D) * scale / 2` and, by the triangle inequality, so is the
    change of the row's norm. The tolerance is that bound plus float32's
    `UNIT_TOLERANCE`, per row: never refuses a row quantised from a unit row,
    whatever its spread (a row with one large entry has a large scale). With
    127 levels and max|x| <= 1 the bound is at most sqrt(D) / 254 (0.089 at
    D = 512); dense D = 512 embeddings (max|x| ~ 0.15) get ~0.014, far below
    the norms of 5-30 an encoder that forgot to normalise gives.

    Args:
        dtype: the rows' dtype.
        dim: D, the row length (int8 only).
        scale: int8 only: the rows' scales, any shape.

    Returns:
        a float, or (int8) a float32 tensor shaped like `scale`.
    """
    if dtype == torch.int8:
        if scale is None:
            raise ValueError("int8 rows need their scale to be checked")
        return UNIT_TOLERANCE[torch.float32] + 0.5 * dim**0.5 * scale.float()
    return UNIT_TOLERANCE[dtype]


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32, device=x.device)


def _row_norms(x: Tensor, scale: Tensor | None = None) -> Tensor:
    """‖row‖ over the last dim, in float32 (float64 for float64), one streaming pass.

    int8 rows (a gathered block, not a gallery) are upcast and their norms
    multiplied by `scale` (`x.shape[:-1]`): the norm of `scale * q`.
    """
    if x.dtype == torch.int8:
        return torch.linalg.vector_norm(x.float(), dim=-1) * scale
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value - 1.0) >= 0.01 else f"{value:.6f}"


def _raise_not_unit(name: str, norms: Tensor, where: str = "") -> None:
    lo, hi = float(norms.min()), float(norms.max())
    raise ValueError(
        f"{name} rows must be L2-normalised (norms {_fmt(lo)} to {_fmt(hi)}{where}); "
        f"pass torch.nn.functional.normalize({name}, dim=-1)"
    )


def _not_finite(name: str) -> ValueError:
    return ValueError(f"{name} contains NaN or inf entries; embeddings must be finite")


@torch.library.custom_op("geosteer::check_finite", mutates_args=())
def check_finite(x: Tensor, name: str, unit_rows: bool = False, mask: Tensor | None = None) -> Tensor:
    """Raise `ValueError` if `x` holds NaN or ±inf, or (`unit_rows`) a row whose L2 norm is not 1.

    Args:
        x: `[..., D]` float.
        name: the argument's name, for the message.
        unit_rows: also check every row (last dim) is L2-normalised, within
            `UNIT_TOLERANCE[x.dtype]`; one pass computes the row norms, which
            are non-finite exactly when a row holds NaN/inf or overflows.
        mask: `x.shape[:-1]` bool, True = valid: rows masked out are exempt
            from the norm check (padding may be zeros), not from the finite
            check. With a mask the result is not cached.

    Returns:
        a float32 zero scalar.
    """
    if not x.numel():
        return _zero(x)
    level = "unit" if unit_rows else "finite"
    cacheable = mask is None
    if cacheable and _CERTIFIED.peek(x) in ("unit", level):
        return _zero(x)
    seen = _FINITE_SEEN.get(x) if cacheable else None
    if seen == "unit" or seen == level:
        return _zero(x)
    _scan_finite(x, name, unit_rows, mask)
    if cacheable:
        _FINITE_SEEN.put(x, level)
    return _zero(x)


def _scan_finite(x: Tensor, name: str, unit_rows: bool, mask: Tensor | None) -> None:
    """`check_finite`'s scan of a non-empty `x`, uncached: raise or return."""
    if unit_rows:
        norms = _row_norms(x)
        if not bool(torch.isfinite(norms).all()) and not bool(torch.isfinite(x).all()):
            raise _not_finite(name)
        valid = norms if mask is None else norms[mask]
        if valid.numel() and not bool(((valid - 1.0).abs() <= UNIT_TOLERANCE[x.dtype]).all()):
            _raise_not_unit(name, valid, "" if mask is None else f" over the rows {name}_mask keeps; masked-out rows are exempt")
    # Any NaN/inf makes the sum non-finite, so a finite sum proves the
    # tensor clean with one streaming pass and no [N, D] bool temporary;
    # only a non-finite sum (a fault, or an overflow of huge finite values)
    # pays for the exact element-wise check.
    elif not bool(torch.isfinite(x.sum(dtype=torch.float32))) and not bool(torch.isfinite(x).all()):
        raise _not_finite(name)


@check_finite.register_fake
def _(x: Tensor, name: str, unit_rows: bool = False, mask: Tensor | None = None) -> Tensor:
    return x.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_range", mutates_args=())
def check_range(x: Tensor, name: str, bound: float, hint: str) -> Tensor:
    """Raise `ValueError` unless every entry of `x` is finite with |value| <= `bound` (`hint` says why).

    One pass (`aminmax`, which NaN propagates through); a tensor found clean
    is remembered like the gallery in `check_finite`.
    """
    level = f"range {bound}"
    if not x.numel() or _CERTIFIED.peek(x) == level or _FINITE_SEEN.get(x) == level:
        return _zero(x)
    _scan_range(x, name, bound, hint)
    _FINITE_SEEN.put(x, level)
    return _zero(x)


def _scan_range(x: Tensor, name: str, bound: float, hint: str) -> None:
    """`check_range`'s scan of a non-empty `x`, uncached: raise or return."""
    lo, hi = (float(v) for v in torch.aminmax(x.float() if not x.is_floating_point() else x))
    if not (-bound <= lo and hi <= bound):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf entries; it must be finite")
        raise ValueError(f"{name} must lie in [-{bound:g}, {bound:g}] ({hint}), got values from {lo:.4g} to {hi:.4g}")


@check_range.register_fake
def _(x: Tensor, name: str, bound: float, hint: str) -> Tensor:
    return x.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_rows", mutates_args=())
def check_rows(parts: Tensor, mask: Tensor | None, ids: Tensor, name: str, scale: Tensor | None = None) -> Tensor:
    """Raise `ValueError` if a candidate's valid row of `parts [N, n, D]` is not finite and L2-normalised.

    Only the rows of the items in `ids` are checked (the rows the head reads),
    each distinct item once per call: gathered in blocks, or, when they are
    more than half the gallery, read in one streaming pass over `parts`. So a
    call costs at most one pass over `parts` (for one query, serving: K rows). Nothing is cached: remembering which items passed
    would need a proof per call that `parts` is unchanged, and the content
    fingerprint `TensorCache` takes for that reads all N x n x D. Rows that
    `mask [N, n]` masks out are exempt (padding may be zeros or anything).

    Args:
        parts: `[N, n, D]` float, or int8 with `scale`.
        mask: `[N, n]` bool or None (all valid).
        ids: `[Q, K]` int candidate ids in `[0, N)`.
        name: the argument's name, for the message.
        scale: `[N, n]` float32 scales of int8 `parts` (`geosteer.quantize`),
            else None; a row's norm is `scale * ‖q‖`, checked within
            `unit_tolerance` (a NaN/inf or negative scale fails).
    """
    if not parts.numel() or not ids.numel():
        return _zero(parts)
    if (parts.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{name}: a scale goes with int8 rows and only with them (got {parts.dtype} rows, "
                         f"scale {'given' if scale is not None else 'None'})")
    items = ids.reshape(-1).unique()
    rows = max(1, _ROWS_CHUNK_ELEMENTS // max(parts.shape[1] * parts.shape[2], 1))
    dim = parts.shape[2]
    # Gathering a row costs about two streamed ones: past half the gallery,
    # stream all of it in slices (no copy) and keep the candidates' norms.
    streamed = None
    if 2 * items.numel() > parts.shape[0]:
        streamed = torch.cat([_row_norms(parts[i : i + rows], None if scale is None else scale[i : i + rows])
                              for i in range(0, parts.shape[0], rows)])
    for block in items.split(rows):
        block_scale = None if scale is None else scale.index_select(0, block)
        norms = (_row_norms(parts.index_select(0, block), block_scale) if streamed is None
                 else streamed.index_select(0, block))  # [b, n]
        tol = unit_tolerance(parts.dtype, dim, block_scale)
        if mask is not None:
            kept = mask.index_select(0, block)
            norms = norms[kept]
            tol = tol if block_scale is None else tol[kept]
        if bool(((norms - 1.0).abs() <= tol).all()):
            continue
        if not bool(torch.isfinite(norms).all()):
            raw = parts.index_select(0, block)
            raw = raw if mask is None else raw[mask.index_select(0, block)]
            if not bool(torch.isfinite(raw).all()):
                raise ValueError(f"{name} contains NaN or inf entries in the candidates' rows; embeddings must be finite")
            if block_scale is not None:
                raise ValueError(f"{name}_scale contains NaN or inf entries in the candidates' rows; scales must be finite")
        _raise_not_unit(name, norms, " in the candidates' rows" + ("" if mask is None else f" that {name}_mask keeps"))
    return _zero(parts)


def check_unit_norms(norms: Tensor, valid: Tensor, tolerance: float | Tensor, name: str) -> None:
    """Raise `ValueError` unless every `valid` entry of `norms` is 1 within `tolerance`.

    For norms a kernel took on its way (`geosteer::part_cost` with
    `unit_check`): the candidates' rows, with the message `check_rows` gives.

    Args:
        norms: `[...]` float32 row norms; valid: the same shape, bool.
        tolerance: `unit_tolerance` of the rows: a float, or a tensor shaped
            like `norms` (int8 rows).
        name: the argument, for the message.
    """
    kept = norms[valid]
    tol = tolerance[valid] if isinstance(tolerance, Tensor) else tolerance
    if kept.numel() and not bool(((kept - 1.0).abs() <= tol).all()):
        _raise_not_unit(name, kept, f" in the candidates' rows that {name}_mask keeps")


@check_rows.register_fake
def _(parts: Tensor, mask: Tensor | None, ids: Tensor, name: str, scale: Tensor | None = None) -> Tensor:
    return parts.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_rows_any", mutates_args=())
def check_rows_any(mask: Tensor, name: str) -> Tensor:
    """Raise `ValueError` if a row of the bool `mask [R, n]` has no True entry."""
    if mask.shape[0] and _CERTIFIED.peek(mask) != "rows_any":
        _scan_rows_any(mask, name)
    return _zero(mask)


def _scan_rows_any(mask: Tensor, name: str) -> None:
    """`check_rows_any`'s scan: raise or return."""
    if not bool(mask.any(dim=1).all()):
        bad = int((~mask.any(dim=1)).nonzero()[0])
        raise ValueError(f"{name} row {bad} is all False: every set needs at least one valid entry")


@check_rows_any.register_fake
def _(mask: Tensor, name: str) -> Tensor:
    return mask.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_ids", mutates_args=())
def check_ids(ids: Tensor, size: int, name: str, distinct: bool = False) -> Tensor:
    """Raise `ValueError` unless every id lies in `[0, size)` (and, `distinct`, no row of `ids [R, K]` repeats one)."""
    if ids.numel() and not bool(((ids >= 0) & (ids < size)).all()):
        raise ValueError(f"{name} holds ids outside [0, {size}) (FAISS pads missing results with -1)")
    if distinct and ids.numel() and ids.shape[-1] > 1:
        ordered = ids.sort(dim=-1).values
        repeat = ordered[..., 1:] == ordered[..., :-1]
        if bool(repeat.any()):
            row, col = (int(v) for v in repeat.nonzero()[0][-2:])
            raise ValueError(
                f"{name} row {row} holds gallery id {int(ordered[row, col])} twice; each candidate must appear once "
                "per row (merge duplicates before the head, keeping each id's best score)"
            )
    return _zero(ids)


@check_ids.register_fake
def _(ids: Tensor, size: int, name: str, distinct: bool = False) -> Tensor:
    return ids.new_empty((), dtype=torch.float32)


@torch.library.custom_op("geosteer::check_relations", mutates_args=())
def check_relations(relations: Tensor, num_parts: int, name: str) -> Tensor:
    """Raise `ValueError` unless rows (i, j, type) have parts in [0, m) and type indexing `RELATIONS`.

    Rows with i < 0 are padding: their j and type are never read
    (`geosteer.stages.structure.relation_score` masks them before indexing),
    so they may hold anything.
    """
    if relations.numel():
        real = relations[..., 0] >= 0
        i, j, kind = relations[..., 0], relations[..., 1], relations[..., 2]
        bad = real & ((i >= num_parts) | (j < 0) | (j >= num_parts) | (kind < 0) | (kind >= len(RELATIONS)))
        if bool(bad.any()):
            q, r = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"{name} rows must be (i, j, type) with 0 <= i, j < m={num_parts} and type in 0..{len(RELATIONS) - 1} "
                f"({RELATIONS}), i < 0 for padding; row [{q}, {r}] is {relations[q, r].tolist()}"
            )
    return _zero(relations)


@check_relations.register_fake
def _(relations: Tensor, num_parts: int, name: str) -> Tensor:
    return relations.new_empty((), dtype=torch.float32)


def certify(x: Tensor, name: str, check: str, bound: float | None = None, hint: str = "") -> None:
    """Check `x` now, once, and let the head's per-call check of it pass without a pass over it.

    For a tensor its owner hands to the head on every call and does not
    write: the store's mapped gallery (`geosteer.index.Index.gallery`
    certifies its embeddings, boxes and mask when first read). Runs the same
    scan the head's check runs (and raises the same error); afterwards
    `check_finite` / `check_range` / `check_rows_any` of this very tensor
    object return at once while its version counter is unchanged. An
    in-place torch write bumps the counter and brings the per-call check
    back; a write through `.numpy()` or `.data` is not seen, which is why
    only an owner that does not write may certify. Tensors without a
    version counter (made under `torch.inference_mode`) are checked but not
    remembered.

    Args:
        x: the tensor.
        name: the argument's name, for the message.
        check: "unit" (finite, unit rows, as the head checks `gallery`),
            "finite", "range" (|x| <= `bound`, as for `gallery_part_boxes`)
            or "rows_any" (bool `[R, n]`, every row has a True entry).
        bound, hint: for "range".

    Raises:
        ValueError: the head's message, when `x` fails the check; on a bad
            `check` name. TypeError: `x` is not a tensor.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if check in ("unit", "finite"):
        level = check
        if x.numel():
            _scan_finite(x, name, check == "unit", None)
    elif check == "range":
        if bound is None:
            raise ValueError("certify(check='range') needs bound")
        level = f"range {bound}"
        if x.numel():
            _scan_range(x, name, bound, hint)
    elif check == "rows_any":
        level = check
        if x.shape[0]:
            _scan_rows_any(x, name)
    else:
        raise ValueError(f"check must be 'unit', 'finite', 'range' or 'rows_any', got {check!r}")
    _CERTIFIED.put(x, level)


def certified(x: Tensor) -> str | None:
    """The check `certify` recorded for `x` (e.g. "unit"), or None: never certified, or changed since (version)."""
    return _CERTIFIED.peek(x)
