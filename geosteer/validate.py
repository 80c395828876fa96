"""Static input checks for the head: types, ranks, shapes, dtypes, devices.

They read only metadata, so they run eagerly and under torch.compile alike;
value checks (NaN/inf, empty masks, id ranges) are the ops in
`geosteer.ops.checks`. Every failure names the argument and what was expected.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
