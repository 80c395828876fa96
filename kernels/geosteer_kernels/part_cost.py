"""Gather + cost in one Triton kernel: `C[q, k, i, j] = 1 - a_{q,i} · b_{ids[q,k], j}`.

Inputs are the query part sets `A [Q, m, D]`, candidate ids `ids [Q, K]`
into the gallery part sets `B [N, n, D]`, and the validity masks
`[Q, m]` / `[N, n]`; masked pairs get the finite cost `pad`. The output is
`[Q, K, m, n]` float32.

Each program owns one query, a block of `BLOCK_R` flattened (candidate,
region) rows and a block of query parts. It loads the candidate rows straight
from `B` through `ids` (the gathered `[Q, K, n, D]` tensor never exists), so
every valid candidate row is read from memory exactly once when `m <= 32`
(masked rows are not read at all), and contracts over D with `tl.dot`:
fp16/bf16 operands on the tensor cores with fp32 accumulation, fp32 (or
mixed) operands upcast to fp32 with IEEE precision (TF32 would move costs
by ~1e-3, enough to reorder candidates).

Compact regions (`geosteer.quantize`): `B` may be int8 with a float32
scale per row, `b = scale * q`. The int8 tile is loaded as bytes and
converted in registers to the query's dtype (exact: |q| <= 127), so int8
regions with fp16 queries still run on the tensor cores; the scale
multiplies each row's finished dot product. float16 regions next to fp32
queries take the mixed (upcast) path.

The torch reference is `geosteer.ops.part_cost.part_cost_reference`; the op and its dispatch are in `geosteer.ops.part_cost`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from geosteer.kernels._launch import block_size, upcast_operands


@triton.jit
def _part_cost_kernel(
    a_ptr, a_mask_ptr, ids_ptr, b_ptr, b_mask_ptr, b_scale_ptr, out_ptr,
    num_cands, num_parts, num_regions, dim, pad,
    s_aq, s_am, s_ad,
    s_amq, s_amm,
    s_iq, s_ik,
    s_bn, s_bj, s_bd,
    s_bmn, s_bmj,
    s_bsn, s_bsj,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # 64-bit offsets: N * n * D exceeds 2**31 for million-item galleries.
    q = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened (k, j)
    i = tl.program_id(2).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < num_cands * num_regions
    k = r // num_regions
    j = r % num_regions
    part_ok = i < num_parts

    item = tl.load(ids_ptr + q * s_iq + k * s_ik, mask=row_ok, other=0).to(tl.int64)
    # Masked regions and parts are never read: their cost is `pad` whatever
    # they hold, and padded region sets cost no bandwidth.
    b_valid = (tl.load(b_mask_ptr + item * s_bmn + j * s_bmj, mask=row_ok, other=0) != 0) & row_ok
    a_valid = (tl.load(a_mask_ptr + q * s_amq + i * s_amm, mask=part_ok, other=0) != 0) & part_ok
    b_rows = b_ptr + item * s_bn + j * s_bj  # [BLOCK_R] row starts, gathered through ids
    a_rows = a_ptr + q * s_aq + i * s_am  # [BLOCK_M]

    acc = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < dim
        # other=0 (not 0.0): int8 rows are loaded as integers.
        b = tl.load(b_rows[:, None] + d[None, :] * s_bd, mask=b_valid[:, None] & d_ok[None, :], other=0)
        a = tl.load(a_rows[None, :] + d[:, None] * s_ad, mask=a_valid[None, :] & d_ok[:, None], other=0.0)
        if UPCAST:
            acc += tl.dot(b.to(tl.float32), a.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(b.to(a.dtype), a)  # a no-op for a half gallery; int8 codes are exact in fp16/bf16

    if HAS_SCALE:
        scale = tl.load(b_scale_ptr + item * s_bsn + j * s_bsj, mask=b_valid, other=0.0)
        acc = acc * scale[:, None]
    cost = tl.where(b_valid[:, None] & a_valid[None, :], 1.0 - acc, pad)

    # out is contiguous [Q, K, m, n]; this tile is (k, j) x i.
    out_offs = ((q * num_cands + k[:, None]) * num_parts + i[None, :]) * num_regions + j[:, None]
    tl.store(out_ptr + out_offs, cost, mask=row_ok[:, None] & part_ok[None, :])


def part_cost_triton(
    query_parts: Tensor,
    query_mask: Tensor,
    ids: Tensor,
    gallery_parts: Tensor,
    gallery_mask: Tensor,
    pad: float,
    gallery_scale: Tensor | None = None,
) -> Tensor:
    """Launch the gather + cost kernel (no input checks beyond what it needs).

    Runs wherever Triton can launch on the tensors' device: CUDA, or CPU
    under `TRITON_INTERPRET=1` (the tests). The ops route only CUDA tensors here.

    Args:
        query_parts: `[Q, m, D]` float16/bfloat16/float32.
        query_mask: `[Q, m]` bool, True = valid.
        ids: `[Q, K]` int32/int64 gallery ids, in range.
        gallery_parts: `[N, n, D]` float16/bfloat16/float32, or int8 with `gallery_scale`.
        gallery_mask: `[N, n]` bool.
        pad: cost written where either part is masked.
        gallery_scale: `[N, n]` float32 scale of each int8 row (b = scale * q), else None.

    Returns:
        cost `[Q, K, m, n]` float32 on the inputs' device.

    Raises:
        TypeError: a mask is not bool (it is read as bytes); int8 rows
            without a scale, or a scale with float rows.
    """
    num_queries, num_parts, dim = query_parts.shape
    num_cands = ids.shape[1]
    num_regions = gallery_parts.shape[1]
    if query_mask.dtype != torch.bool or gallery_mask.dtype != torch.bool:
        raise TypeError(f"query_mask and gallery_mask must be bool, got {query_mask.dtype} and {gallery_mask.dtype}")
    out = torch.empty(num_queries, num_cands, num_parts, num_regions, dtype=torch.float32, device=query_parts.device)
    if out.numel() == 0:
        return out
    # Bool masks are read as bytes (a view, no copy).
    qmask = query_mask.view(torch.uint8)
    gmask = gallery_mask.view(torch.uint8)
    has_scale = gallery_scale is not None
    if has_scale != (gallery_parts.dtype == torch.int8):
        raise TypeError(f"int8 gallery_parts need a gallery_scale and float ones none; got {gallery_parts.dtype} "
                        f"with{'out' if not has_scale else ''} a scale")
    # int8 codes convert exactly to the query's dtype: contract as if the rows had it.
    upcast = upcast_operands(query_parts, query_parts if has_scale else gallery_parts)
    scale = gallery_scale if has_scale else gmask  # an unread stand-in pointer when there is no scale
    block_r = 64
    block_m = block_size(num_parts, 16, 32)
    block_d = block_size(dim, 16, 32 if upcast else 64)
    grid = (num_queries, triton.cdiv(num_cands * num_regions, block_r), triton.cdiv(num_parts, block_m))
    _part_cost_kernel[grid](
        query_parts, qmask, ids, gallery_parts, gmask, scale, out,
        num_cands, num_parts, num_regions, dim, float(pad),
        *query_parts.stride(), *qmask.stride(), *ids.stride(), *gallery_parts.stride(), *gmask.stride(),
        *scale.stride(),
        BLOCK_R=block_r, BLOCK_M=block_m, BLOCK_D=block_d, UPCAST=upcast, HAS_SCALE=has_scale,
        num_warps=4,
    )
    return out
