"""Candidate projections in one Triton kernel: `P[q, k, j] = G[ids[q, k]] · V[q, j]`.

Inputs are the gallery `G [N, D]`, candidate ids `ids [Q, K]` and per-query
vectors `V [Q, J, D]` (steering anchors or directions, or the pool itself in
neighbourhood mode); the output is `[Q, K, J]` float32.

Each program owns one query, a block of `BLOCK_K` candidates and a block of
`BLOCK_J` vectors. It loads candidate rows straight from `G` through `ids`
(no gathered `[Q, K, D]` copy), so each candidate row is read once when
`J <= 64` (one vector block), and contracts over D with `tl.dot`: fp16/bf16
on the tensor cores with fp32 accumulation, fp32 (or mixed) operands in
fp32 with IEEE precision.

The torch reference is `geosteer.ops.project.project_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from geosteer.kernels._launch import block_size, upcast_operands


@triton.jit
def _project_kernel(
    g_ptr, ids_ptr, v_ptr, out_ptr,
    num_cands, num_vectors, dim,
    s_gn, s_gd,
    s_iq, s_ik,
    s_vq, s_vj, s_vd,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    # 64-bit offsets: N * D exceeds 2**31 for large galleries.
    q = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    j = tl.program_id(2).to(tl.int64) * BLOCK_J + tl.arange(0, BLOCK_J)
    k_ok = k < num_cands
    j_ok = j < num_vectors

    item = tl.load(ids_ptr + q * s_iq + k * s_ik, mask=k_ok, other=0).to(tl.int64)
    g_rows = g_ptr + item * s_gn  # [BLOCK_K], gathered through ids
    v_rows = v_ptr + q * s_vq + j * s_vj  # [BLOCK_J]

    acc = tl.zeros((BLOCK_K, BLOCK_J), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < dim
        c = tl.load(g_rows[:, None] + d[None, :] * s_gd, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_rows[None, :] + d[:, None] * s_vd, mask=j_ok[None, :] & d_ok[:, None], other=0.0)
        if UPCAST:
            acc += tl.dot(c.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(c, v)

    # out is contiguous [Q, K, J].
    out_offs = (q * num_cands + k[:, None]) * num_vectors + j[None, :]
    tl.store(out_ptr + out_offs, acc, mask=k_ok[:, None] & j_ok[None, :])


def project_triton(gallery: Tensor, ids: Tensor, vectors: Tensor) -> Tensor:
    """Launch the projection kernel (no input checks beyond what it needs).

    Runs wherever Triton can launch on the tensors' device: CUDA, or CPU
    under `TRITON_INTERPRET=1` (the tests). The ops route only CUDA tensors here.

    Args:
        gallery: `[N, D]` float16/bfloat16/float32.
        ids: `[Q, K]` int32/int64 gallery ids, in range.
        vectors: `[Q, J, D]` float16/bfloat16/float32.

    Returns:
        `[Q, K, J]` float32 on the inputs' device.
    """
    num_queries, num_cands = ids.shape
    num_vectors, dim = vectors.shape[1], vectors.shape[2]
    out = torch.empty(num_queries, num_cands, num_vectors, dtype=torch.float32, device=gallery.device)
    if out.numel() == 0:
        return out
    upcast = upcast_operands(gallery, vectors)
    block_k = block_size(num_cands, 16, 64)
    block_j = block_size(num_vectors, 16, 64)
    block_d = block_size(dim, 16, 32 if upcast else 64)
    grid = (num_queries, triton.cdiv(num_cands, block_k), triton.cdiv(num_vectors, block_j))
    _project_kernel[grid](
        gallery, ids, vectors, out,
        num_cands, num_vectors, dim,
        *gallery.stride(), *ids.stride(), *vectors.stride(),
        BLOCK_K=block_k, BLOCK_J=block_j, BLOCK_D=block_d, UPCAST=upcast,
        num_warps=4,
    )
    return out
