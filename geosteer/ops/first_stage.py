"""First-stage retrieval: exact top-K cosine, chunked over queries.

Never holds the whole `[Q, N]` score matrix: queries go through in chunks of
at most `chunk_elements // N` rows.

On CPUs with bf16 dot products the op can screen the gallery in bf16 and
re-score a shortlist exactly, with a per-query proof that nothing outside the
shortlist belongs in the top-K (`screen`, geosteer/ops/screen.py): 0.41 s
instead of 1.42 s on the `cpu` bench workload (one thread), the same result
up to float32 rounding.

There is no Triton kernel for this op: on CUDA the chunked matmul runs on
cuBLAS in the embeddings' dtype and `torch.topk` selects, which a fused
Triton top-k has yet to be shown to beat. The one numba kernel
(`geosteer.cpu_kernels.first_stage`) re-scores the screen's shortlist;
`backend` picks it as for every op (`geosteer.ops.dispatch`: "auto" and
"triton" use it for float32 CPU galleries, "torch" the gather + bmm).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.ops.dispatch import KernelSpec, resolve
from geosteer.ops.screen import check_screen, screened_top_k, wants_screen

SPEC = KernelSpec("geosteer::first_stage", numba=(torch.float32,))


def first_stage_reference(query: Tensor, gallery: Tensor, k: int, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Top-`k` inner products of each query against the gallery.

    Args:
        query: `[Q, D]` float.
        gallery: `[N, D]` float, same dtype and device.
        k: candidates per query, `1 <= k <= N`.
        chunk_elements: most scores held at once.

    Returns:
        scores `[Q, k]` float32, descending; ids `[Q, k]` int64 into the gallery.
    """
    num_queries, num_items = query.shape[0], gallery.shape[0]
    rows = max(1, chunk_elements // max(num_items, 1))
    # CPU half-precision matmul is slow and lossy; score in float32 there.
    if query.dtype == torch.float64:
        compute_dtype = torch.float64
    elif query.device.type == "cpu":
        compute_dtype = torch.float32
    else:
        compute_dtype = query.dtype
    gallery_t = gallery.to(compute_dtype).t()
    scores = torch.empty(num_queries, k, dtype=torch.float32, device=query.device)
    ids = torch.empty(num_queries, k, dtype=torch.long, device=query.device)
    for start in range(0, num_queries, rows):
        block = query[start : start + rows].to(compute_dtype) @ gallery_t
        top = block.float().topk(k, dim=1, sorted=True)
        scores[start : start + rows] = top.values
        ids[start : start + rows] = top.indices
    return scores, ids


@torch.library.custom_op("geosteer::first_stage", mutates_args=())
def first_stage(
    query: Tensor, gallery: Tensor, k: int, chunk_elements: int, backend: str, screen: str = "off"
) -> tuple[Tensor, Tensor]:
    """Exact top-`k` retrieval `[Q, D] x [N, D] -> ([Q, k] float32, [Q, k] int64)`.

    Args:
        query: `[Q, D]` float.
        gallery: `[N, D]` float, same dtype and device.
        k: candidates per query, `1 <= k <= N`.
        chunk_elements: most scores held at once.
        backend: "auto" | "triton" | "torch" (module docstring).
        screen: "off" (plain matmul), "bf16" (screen wherever it is sound:
            CPU, float32/16 inputs) or "auto" (screen where it also pays);
            see `geosteer.ops.screen.wants_screen`.

    Raises:
        ValueError: unknown `backend` or `screen`.
    """
    impl = resolve(SPEC, backend, query.device, (gallery.dtype,))
    check_screen(screen)
    if wants_screen(query, gallery, k, screen):
        scores, ids, _ = screened_top_k(query, gallery, k, chunk_elements, first_stage_reference, impl == "numba")
        return scores, ids
    return first_stage_reference(query, gallery, k, chunk_elements)


@first_stage.register_fake
def _(
    query: Tensor, gallery: Tensor, k: int, chunk_elements: int, backend: str, screen: str = "off"
) -> tuple[Tensor, Tensor]:
    num_queries = query.shape[0]
    return (
        query.new_empty(num_queries, k, dtype=torch.float32),
        query.new_empty(num_queries, k, dtype=torch.long),
    )


def masked_first_stage_reference(
    query: Tensor, gallery: Tensor, allowed: Tensor, k: int, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Top-`k` inner products among the allowed gallery rows only (filters, DESIGN §1 stage 0).

    Disallowed scores are set to -inf before `topk`, so a row with at least
    `k` allowed items gets the top-`k` of its allowed items (what the plain
    first stage returns on the filtered gallery). A row with fewer allowed
    items gets them first, then disallowed ones as padding (the head marks
    them: id -1 in its result).

    Args:
        query: `[Q, D]` float.
        gallery: `[N, D]` float, same dtype and device.
        allowed: `[N]` or `[Q, N]` bool, True = the row may be returned.
        k: candidates per query, `1 <= k <= N`.
        chunk_elements: most scores held at once.

    Returns:
        scores `[Q, k]` float32, the true q·c of each pick (descending over
        the allowed picks; padding after them, in any order); ids `[Q, k]` int64.
    """
    num_queries, num_items = query.shape[0], gallery.shape[0]
    rows = max(1, chunk_elements // max(num_items, 1))
    compute_dtype = torch.float64 if query.dtype == torch.float64 else (
        torch.float32 if query.device.type == "cpu" else query.dtype)
    gallery_t = gallery.to(compute_dtype).t()
    scores = torch.empty(num_queries, k, dtype=torch.float32, device=query.device)
    ids = torch.empty(num_queries, k, dtype=torch.long, device=query.device)
    for start in range(0, num_queries, rows):
        block = (query[start : start + rows].to(compute_dtype) @ gallery_t).float()
        keep = allowed if allowed.dim() == 1 else allowed[start : start + rows]
        top = block.masked_fill(~keep, float("-inf")).topk(k, dim=1, sorted=True)
        scores[start : start + rows] = block.gather(1, top.indices)
        ids[start : start + rows] = top.indices
    return scores, ids


@torch.library.custom_op("geosteer::masked_first_stage", mutates_args=())
def masked_first_stage(
    query: Tensor, gallery: Tensor, allowed: Tensor, k: int, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Exact top-`k` among the allowed rows `[Q, D] x [N, D], [N] | [Q, N] bool -> ([Q, k] float32, [Q, k] int64)`.

    `masked_first_stage_reference` on every device (the matmul runs on
    cuBLAS on CUDA); the bf16 screen is not used under a mask. A custom op,
    so the chunk loop stays out of a compiled graph.
    """
    return masked_first_stage_reference(query, gallery, allowed, k, chunk_elements)


@masked_first_stage.register_fake
def _(query: Tensor, gallery: Tensor, allowed: Tensor, k: int, chunk_elements: int) -> tuple[Tensor, Tensor]:
    num_queries = query.shape[0]
    return (
        query.new_empty(num_queries, k, dtype=torch.float32),
        query.new_empty(num_queries, k, dtype=torch.long),
    )
