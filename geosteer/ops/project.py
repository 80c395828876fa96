"""Projection of each query's candidates onto per-query vectors.

`P[q, k, j] = G[ids[q, k]] · V[q, j]`: candidate-by-anchor similarities for
the steering neighbourhoods, and candidate-by-direction projections for the
steered re-score — one batched op for both.

Dispatch (`geosteer.ops.dispatch`): CUDA tensors run the fused Triton kernel
of `geosteer.kernels.project` (no gathered `[Q, K, D]` copy); everything
else runs `project_reference` (no numba kernel: on the CPU the gather + bmm
is a small share of the head, `python -m bench.bench_head --profile always`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.ops.dispatch import KernelSpec, check_ids_in_range, resolve, same_device

SPEC = KernelSpec("geosteer::project", triton=True)


def project_reference(gallery: Tensor, ids: Tensor, vectors: Tensor, chunk_elements: int = 1 << 20) -> Tensor:
    """Plain-torch gather + batched dot, chunked over queries.

    Chunks of ~4 MB keep the gathered rows in cache for the matmul.

    Args:
        gallery: `[N, D]` float.
        ids: `[Q, K]` int64 gallery ids.
        vectors: `[Q, J, D]` float.

    Returns:
        `[Q, K, J]` float32.
    """
    num_queries, num_cands = ids.shape
    dim = gallery.shape[1]
    compute_dtype = torch.float64 if gallery.dtype == torch.float64 else torch.float32
    out = torch.empty(num_queries, num_cands, vectors.shape[1], dtype=torch.float32, device=gallery.device)
    rows = max(1, chunk_elements // max(num_cands * dim, 1))
    for start in range(0, num_queries, rows):
        stop = start + rows
        cands = gallery[ids[start:stop]].to(compute_dtype)  # [q, K, D]
        out[start:stop] = torch.bmm(cands, vectors[start:stop].to(compute_dtype).transpose(1, 2)).float()
    return out


@torch.library.custom_op("geosteer::project", mutates_args=())
def project(gallery: Tensor, ids: Tensor, vectors: Tensor, backend: str) -> Tensor:
    """`[N, D], [Q, K], [Q, J, D] -> [Q, K, J]` float32 candidate projections.

    Args:
        gallery: `[N, D]` float.
        ids: `[Q, K]` int64 gallery ids in `[0, N)`.
        vectors: `[Q, J, D]` float.
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).

    Raises:
        ValueError: unknown `backend`.
        BackendUnavailable: backend="triton" where the Triton kernel cannot run.
    """
    if resolve(SPEC, backend, gallery.device, (gallery.dtype, vectors.dtype)) == "triton":
        from geosteer.kernels.project import project_triton

        same_device("geosteer::project", gallery, ids=ids, vectors=vectors)
        check_ids_in_range(ids, gallery.shape[0], "ids")
        return project_triton(gallery, ids, vectors)
    return project_reference(gallery, ids, vectors)


@project.register_fake
def _(gallery, ids, vectors, backend):
    return gallery.new_empty(ids.shape[0], ids.shape[1], vectors.shape[1], dtype=torch.float32)
