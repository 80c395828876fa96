"""Gather + cost: part-to-part costs between each query and its candidates.

For query part sets `A [Q, m, D]` and candidate ids `ids [Q, K]` into the
gallery part sets `B [N, n, D]`, the cost is `C[q, k, i, j] = 1 - a_i · b_j`
with masked pairs (a padded part on either side) set to `pad`, a finite
value larger than any real cost. A finite pad keeps every assignment
feasible; because `pad > 2 * min(m, n)` exceeds the largest total real cost,
the minimum-cost assignment first maximises the number of real-real pairs,
then minimises their cost. Real pairs are exactly those with cost <= 2.

Compact regions (`geosteer.quantize`, DESIGN §5): `B` may be float16,
or int8 with `gallery_scale [N, n]` float32, b = scale * q row by row, next
to float32 (or the query's dtype) queries. Every implementation reads the
compact rows as they are stored and upcasts only what it gathers: the
reference its `[rows * K, n, D]` block, the numba and Triton kernels each
loaded value in registers. The int8 scale multiplies the dot product.

Dispatch (`geosteer.ops.dispatch`, the rule every op follows): CUDA tensors
run the fused Triton kernel of `geosteer.kernels.part_cost` (no gathered
`[Q, K, n, D]` copy), CPU tensors with float32 / float16 query parts and
float32 / float16 / int8 gallery parts the numba loop of
`geosteer.cpu_kernels.part_cost` (also copy-free; ~1.7x faster for float32),
everything else `part_cost_reference`. A strided CPU gallery takes the
reference too: the numba loop would need a contiguous copy of all of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer import cpu_kernels
from geosteer.ops import checks
from geosteer.ops.dispatch import KernelSpec, check_ids_in_range, resolve, same_device

# The numba kernel upcasts float16 query parts once (Q x m x D, small) and
# reads float16 / int8 gallery rows in place.
SPEC = KernelSpec("geosteer::part_cost", triton=True, numba=(torch.float32, torch.float16, torch.int8),
                  triton_extra=(torch.int8,))

REAL_COST_MAX = 2.0


def pad_cost(m: int, n: int) -> float:
    """The cost of a masked pair for `m x n` problems: above any real total."""
    return 2.0 * min(m, n) + 1.0


def part_cost_reference(
    query_parts: Tensor,
    query_mask: Tensor,
    ids: Tensor,
    gallery_parts: Tensor,
    gallery_mask: Tensor,
    pad: float,
    chunk_elements: int = 1 << 20,
    norms: Tensor | None = None,
    gallery_scale: Tensor | None = None,
) -> Tensor:
    """Plain-torch gather + cost, chunked over queries.

    The chunk is small on purpose: a gathered block of ~4 MB is still in
    cache when the matmul reads it, which made the CPU op 3-6x faster than
    gathering 64 MB blocks (Q=256, K=50, 4x16, D=512 on 2 cores).

    Args:
        query_parts: `[Q, m, D]` float.
        query_mask: `[Q, m]` bool, True = valid.
        ids: `[Q, K]` int64 gallery ids.
        gallery_parts: `[N, n, D]` float, or int8 with `gallery_scale`.
        gallery_mask: `[N, n]` bool.
        pad: cost written where either part is masked.
        chunk_elements: most gathered elements (`rows * K * n * D`) held at once.
        norms: optional `[Q, K, n]` float32 filled with `‖b‖` of each
            candidate part, from the gathered block (no second gather).
        gallery_scale: `[N, n]` float32 scales of int8 `gallery_parts`: the
            gathered block is dequantised (`q.float() * scale`, what
            `geosteer.quantize.dequantize_rows` computes) before the
            matmul, so the costs are those of the dequantised gallery.

    Returns:
        cost `[Q, K, m, n]` float32.
    """
    num_queries, num_parts = query_parts.shape[:2]
    num_cands = ids.shape[1]
    num_regions, dim = gallery_parts.shape[1:]
    compute_dtype = torch.float64 if query_parts.dtype == torch.float64 else torch.float32
    cost = torch.empty(num_queries, num_cands, num_parts, num_regions, dtype=torch.float32, device=query_parts.device)
    rows = max(1, chunk_elements // max(num_cands * num_regions * dim, 1))
    for start in range(0, num_queries, rows):
        stop = min(start + rows, num_queries)
        block_ids = ids[start:stop].reshape(-1)
        cand_parts = gallery_parts.index_select(0, block_ids).to(compute_dtype)  # [r*K, n, D]
        if gallery_scale is not None:
            cand_parts = cand_parts * gallery_scale.index_select(0, block_ids).to(compute_dtype)[..., None]
        cand_parts = cand_parts.view(stop - start, num_cands * num_regions, dim)
        if norms is not None:
            norms[start:stop] = torch.linalg.vector_norm(cand_parts, dim=-1).view(stop - start, num_cands, num_regions)
        sim = torch.bmm(cand_parts, query_parts[start:stop].to(compute_dtype).transpose(1, 2))  # [r, K*n, m]
        sim = sim.view(stop - start, num_cands, num_regions, num_parts).transpose(-1, -2)
        valid = query_mask[start:stop, None, :, None] & gallery_mask.index_select(0, block_ids).view(
            stop - start, num_cands, 1, num_regions
        )
        cost[start:stop] = torch.where(valid, 1.0 - sim, pad).float()
    return cost


@torch.library.custom_op("geosteer::part_cost", mutates_args=())
def part_cost(
    query_parts: Tensor,
    query_mask: Tensor,
    ids: Tensor,
    gallery_parts: Tensor,
    gallery_mask: Tensor,
    pad: float,
    backend: str,
    unit_check: str = "",
    gallery_scale: Tensor | None = None,
) -> Tensor:
    """Costs `[Q, K, m, n]` float32 between query parts and candidates' parts.

    Args:
        query_parts: `[Q, m, D]` float.
        query_mask: `[Q, m]` bool, True = valid.
        ids: `[Q, K]` int64 gallery ids in `[0, N)`.
        gallery_parts: `[N, n, D]` float of `query_parts`' dtype, float16, or
            int8 with `gallery_scale` (compact regions, `geosteer.quantize`).
        gallery_mask: `[N, n]` bool.
        pad: cost of a masked pair (see `pad_cost`).
        backend: "auto" | "triton" | "torch" (`geosteer.ops.dispatch`).
        unit_check: the argument's name (the head: "gallery_parts") to also
            check that every valid candidate part is L2-normalised, from
            norms taken while the rows are read for the costs (numba, torch;
            the Triton path runs `checks.check_rows`), within
            `checks.unit_tolerance` of the rows' dtype (int8: of each row's
            scale); "" = no such check.
        gallery_scale: `[N, n]` float32, one scale per int8 row (the row is
            `scale * q`); None for float rows.

    Raises:
        ValueError: unknown `backend`; int8 `gallery_parts` without a
            `gallery_scale [N, n]` float32 on their device, or a scale with
            float rows; a gathered candidate part (or its scale) holds NaN/inf
            (checked on the costs, far cheaper than scanning all of
            `gallery_parts`); with `unit_check`, a valid candidate part that
            is not unit-norm.
        BackendUnavailable: backend="triton" where the Triton kernel cannot run.
    """
    check_scale(gallery_parts, gallery_scale, unit_check or "gallery_parts")
    impl = resolve(SPEC, backend, query_parts.device, (query_parts.dtype, gallery_parts.dtype))
    args = (query_parts, query_mask, ids, gallery_parts, gallery_mask, pad)
    norms = None
    if impl == "triton":
        cost = part_cost_triton(*args, gallery_scale=gallery_scale)
        if unit_check:
            checks.check_rows(gallery_parts, gallery_mask, ids, unit_check, gallery_scale)
    elif impl == "numba" and gallery_parts.is_contiguous():
        cost, norms = part_cost_numba(*args, want_norms=bool(unit_check), gallery_scale=gallery_scale)
    else:
        if unit_check:
            norms = torch.empty(*ids.shape, gallery_parts.shape[1], dtype=torch.float32, device=ids.device)
        cost = part_cost_reference(*args, norms=norms, gallery_scale=gallery_scale)
    check_cost_finite(cost, unit_check or "gallery_parts", gallery_scale is not None)
    if norms is not None:
        flat_ids = ids.reshape(-1)
        cand_scale = None if gallery_scale is None else gallery_scale.index_select(0, flat_ids).view(norms.shape)
        tolerance = checks.unit_tolerance(gallery_parts.dtype, gallery_parts.shape[2], cand_scale)
        checks.check_unit_norms(norms, gallery_mask.index_select(0, flat_ids).view(norms.shape), tolerance, unit_check)
    return cost


def check_scale(gallery_parts: Tensor, gallery_scale: Tensor | None, name: str = "gallery_parts") -> None:
    """int8 rows come with a float32 scale `[N, n]` on their device; float rows without one.

    Raises:
        ValueError: naming `{name}_scale` and what was expected (before any
            kernel reads the scale through the rows' ids).
    """
    if gallery_parts.dtype != torch.int8:
        if gallery_scale is not None:
            raise ValueError(f"{name}_scale is for int8 {name}; {name} is {gallery_parts.dtype}, pass None")
        return
    expected = list(gallery_parts.shape[:2])
    if gallery_scale is None:
        raise ValueError(f"int8 {name} need {name}_scale [N, n] float32 (one scale per row; geosteer.quantize)")
    if gallery_scale.dtype != torch.float32 or list(gallery_scale.shape) != expected:
        raise ValueError(f"{name}_scale must be float32 {expected}, got {gallery_scale.dtype} {list(gallery_scale.shape)}")
    if gallery_scale.device != gallery_parts.device:
        raise ValueError(f"{name}_scale is on {gallery_scale.device} but {name} is on {gallery_parts.device}")


def part_cost_numba(
    query_parts: Tensor, query_mask: Tensor, ids: Tensor, gallery_parts: Tensor, gallery_mask: Tensor, pad: float,
    want_norms: bool = False, gallery_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The numba kernel on CPU tensors: cost (as `part_cost_reference`) and, with `want_norms`, `[Q, K, n]` norms.

    Query parts float32 or float16 (upcast here: Q x m x D, small); gallery
    parts float32, float16 or int8 with `gallery_scale`, C-contiguous, read in
    place (float16 as its bits: numba has no float16 arrays).

    Raises:
        ValueError: an id outside `[0, N)` (the compiled loop does not check).
    """
    check_ids_in_range(ids, gallery_parts.shape[0], "ids")
    rows = gallery_parts.view(torch.uint16) if gallery_parts.dtype == torch.float16 else gallery_parts
    arrays = [
        t.detach().contiguous().numpy()
        for t in (query_parts.float(), query_mask, ids.long(), rows, gallery_mask)
    ]
    scale = None if gallery_scale is None else gallery_scale.detach().contiguous().numpy()
    cost, norms = cpu_kernels.load("part_cost").part_cost(*arrays, pad, torch.get_num_threads(), want_norms, scale)
    return torch.from_numpy(cost), None if norms is None else torch.from_numpy(norms)


def part_cost_triton(
    query_parts: Tensor, query_mask: Tensor, ids: Tensor, gallery_parts: Tensor, gallery_mask: Tensor, pad: float,
    gallery_scale: Tensor | None = None,
) -> Tensor:
    """The Triton kernel on CUDA tensors, after the checks a launch needs."""
    from geosteer.kernels.part_cost import part_cost_triton as launch

    scale = {} if gallery_scale is None else {"gallery_scale": gallery_scale}
    same_device("geosteer::part_cost", query_parts, query_mask=query_mask, ids=ids, gallery_parts=gallery_parts,
                gallery_mask=gallery_mask, **scale)
    check_ids_in_range(ids, gallery_parts.shape[0], "ids")
    return launch(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad, gallery_scale)


def check_cost_finite(cost: Tensor, name: str = "gallery_parts", scaled: bool = False) -> None:
    """A non-finite cost can only come from a non-finite candidate part (or, `scaled`, its scale)."""
    if cost.numel() and not bool(torch.isfinite(cost).all()):
        if scaled:  # int8 codes are always finite
            raise ValueError(f"{name}_scale contains NaN or inf entries in the candidates' rows; scales must be finite")
        raise ValueError(f"{name} contains NaN or inf entries in the candidates' rows; embeddings must be finite")


@part_cost.register_fake
def _(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad, backend, unit_check="", gallery_scale=None):
    return query_parts.new_empty(
        ids.shape[0], ids.shape[1], query_parts.shape[1], gallery_parts.shape[1], dtype=torch.float32
    )
