"""Compact region vectors: the gallery's region embeddings as float16, or int8 with a scale per row.

A million images with 16 regions of D = 512 float32 each is 32 KiB an image,
32 GB in all; float16 halves that and int8 quarters it. The head reads the
compact rows directly (`geosteer::part_cost` upcasts only the candidates'
rows it gathers), so no float32 copy of the gallery is ever made.

int8 is symmetric with one float32 scale per row (DESIGN §5):

    scale = max_d |x_d| / 127,   q_d = round(x_d / scale)   (q in [-127, 127])

so the row's value is `scale * q` and each entry is off by at most
`scale / 2`. A row of zeros (padding) has scale 0 and q = 0. The scale is
not clipped to a percentile: the largest entry is kept exactly (up to
float32 rounding), which the unit-norm check's bound relies on
(`geosteer.ops.checks.unit_tolerance`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COMPACT_DTYPES", "INT8_LEVELS", "compact_parts", "dequantize_rows", "quantize_rows"]

#: Region dtypes the head reads besides the query's own: float16, and int8 with a scale per row.
COMPACT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.int8)

#: Largest |q| of an int8 row (symmetric: -128 is never used, so -q is always representable).
INT8_LEVELS = 127

# Elements quantised per step: bounds the float32 temporaries to ~16 MB
# whatever the size of the input (an index builder quantises millions of rows).
_CHUNK_ELEMENTS = 1 << 22


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantisation with one scale per row of the last dim.

    Args:
        x: `[..., D]` float (e.g. region embeddings `[N, n, D]`), finite.

    Returns:
        (q `[..., D]` int8 in [-127, 127], scale `[...]` float32 >= 0), with
        `scale = max|x| / 127` and `q = round(x / scale)` (half to even);
        all-zero rows get scale 0 and q 0. `dequantize_rows(q, scale)` is
        within `scale / 2` of `x` in every entry.

    Raises:
        TypeError: `x` is not a floating tensor.
        ValueError: `x` has no last dim, or holds NaN/inf (it would become a
            silent garbage code).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor [..., D], got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 0:
        raise ValueError("x must have shape [..., D], got a scalar")
    dim = x.shape[-1]
    rows = x.reshape(-1, dim)
    q = torch.empty(rows.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
    step = max(1, _CHUNK_ELEMENTS // max(dim, 1))
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step].float()
        if not bool(torch.isfinite(block).all()):
            raise ValueError("x contains NaN or inf entries; only finite rows can be quantised")
        s = block.abs().amax(dim=1) / INT8_LEVELS if dim else block.new_zeros(block.shape[0])
        # Zero rows divide by 1 instead of 0 (their q is 0 either way).
        codes = (block / torch.where(s > 0, s, 1.0)[:, None]).round_().clamp_(-INT8_LEVELS, INT8_LEVELS)
        q[start : start + step] = codes.to(torch.int8)
        scale[start : start + step] = s
    return q.view(x.shape), scale.view(x.shape[:-1])


def dequantize_rows(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """`scale * q` row by row: the values int8 rows stand for.

    Meant for small blocks (tests, a handful of gathered rows): on a whole
    gallery it makes exactly the float copy compact regions avoid.

    Args:
        q: `[..., D]` int8.
        scale: `[...]` float, one per row.
        dtype: the result's floating dtype.

    Returns:
        `[..., D]` `dtype`, computed as `q.to(dtype) * scale.to(dtype)[..., None]`
        (the product `geosteer::part_cost`'s reference forms on its gathered rows).

    Raises:
        TypeError: `q` is not int8.
        ValueError: `scale` is not `q.shape[:-1]`.
    """
    if q.dtype != torch.int8:
        raise TypeError(f"q must be int8, got {q.dtype}")
    if tuple(scale.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"scale must have shape {list(q.shape[:-1])} (one per row of q), got {list(scale.shape)}")
    return q.to(dtype) * scale.to(dtype)[..., None]


def compact_parts(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Region embeddings in a compact dtype: float16 (no scale) or int8 (+ scale per row).

    Args:
        x: `[..., D]` float region embeddings.
        dtype: torch.float16 or torch.int8.

    Returns:
        (`[..., D]` in `dtype`, scale `[...]` float32 for int8 else None):
        what `GallerySide.parts` / `GallerySide.parts_scale` hold.

    Raises:
        ValueError: `dtype` is not one of `COMPACT_DTYPES`.
    """
    if dtype == torch.int8:
        return quantize_rows(x)
    if dtype == torch.float16:
        return x.to(torch.float16), None
    raise ValueError(f"dtype must be torch.float16 or torch.int8, got {dtype}")
