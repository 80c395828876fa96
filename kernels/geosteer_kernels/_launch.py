"""Launch-time helpers shared by the gather kernels (no kernels here)."""

from __future__ import annotations

import os

import torch
import triton
from torch import Tensor


def upcast_operands(x: Tensor, y: Tensor) -> bool:
    """Contract in fp32 unless both operands share a half dtype.

    The Triton interpreter (TRITON_INTERPRET=1, the CPU tests) multiplies the
    raw bit patterns of bfloat16 `tl.dot` operands (triton-lang/triton#11584,
    not supported upstream), so there bfloat16 is upcast too.
    """
    if x.dtype != y.dtype or x.dtype not in (torch.float16, torch.bfloat16):
        return True
    return x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(size: int, low: int, high: int) -> int:
    """The power of two covering `size`, clamped to `[low, high]`."""
    return max(low, min(high, triton.next_power_of_2(max(size, 1))))
