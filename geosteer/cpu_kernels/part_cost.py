"""numba kernel of `geosteer::part_cost`: gather + cost without a gathered copy.

The torch reference gathers each candidate's parts into a buffer and runs a
thin `bmm` (m = 4 columns) on it; both passes are bound by memory traffic.
This loop reads every candidate part row once, straight from the gallery, and
scores it against the query's parts held in cache, four query parts per pass
so each loaded value is used four times: 0.10 s against the reference's
0.17 s on the `cpu` bench workload (Q=1,024, K=50, 4x16, D=512, one thread;
0.06 vs 0.11 s on two).

Gallery rows are float32, or compact (`geosteer.quantize`): float16
(passed as its uint16 bits: numba has no float16 arrays on the CPU) or int8
with one scale per row. Compact rows are upcast one element at a time as
they are loaded (`_to_float32`, vectorised by LLVM: vcvtph2ps for float16,
sign-extend + convert for int8) and the int8 scale multiplies the finished
dot product, so a gallery is never copied to float32. Query parts are
float32. Importing this module needs numba; the functions compile on first
call (once per gallery dtype) and are cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from geosteer.cpu_kernels._threads import run_in_row_chunks

_JIT = {"nogil": True, "cache": True, "boundscheck": False, "fastmath": True}


@intrinsic
def _to_float32(typingctx, x):  # noqa: ANN001, ANN202
    """One gallery element as float32: float32 as is, uint16 read as float16 bits, int8 converted.

    An exact conversion in every case (IEEE half -> single keeps NaN, inf and
    subnormals; int8 fits float32), emitted as one LLVM instruction so the
    loop around it vectorises.
    """
    if x == types.float32:
        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return args[0]
    elif x == types.uint16:
        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    elif x == types.int8:
        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return builder.sitofp(args[0], ir.FloatType())
    else:
        return None
    return types.float32(x), codegen


# Below this many multiply-adds (Q*K*m*n*D) one thread does the whole batch.
PARALLEL_MIN_WORK = 1 << 22


@numba.njit(**_JIT)
def _cost_rows(query_parts, query_mask, ids, gallery_parts, gallery_scale, has_scale, gallery_mask, pad, out, norms,  # noqa: ANN001
               want_norms, start, stop):
    """Fill `out[start:stop]` (`[Q, K, m, n]`) with `1 - a_i·b_j`, or `pad` where masked.

    `b_j` is `gallery_scale[c, j] * gallery_parts[c, j]` when `has_scale`
    (int8 rows), else the row itself; the scale multiplies each dot product
    once, after the sum. With `want_norms`, also `norms[q, k, j] = ‖b_j‖` of
    each candidate part (`[Q, K, n]`), summed in the first four-part pass
    (for m < 4 in a pass of its own while the row is still in L1): the head's
    unit-norm check of the candidates' rows without a second read of them.
    int8 codes square and sum exactly in float32 up to D = 1040.
    """
    num_cands = ids.shape[1]
    num_parts = query_parts.shape[1]
    num_regions = gallery_parts.shape[1]
    dim = query_parts.shape[2]
    one = np.float32(1.0)
    for q in range(start, stop):
        for k in range(num_cands):
            c = ids[q, k]
            for j in range(num_regions):
                # float rows: times 1, exact (and the same code for every dtype).
                scale = gallery_scale[c, j] if has_scale else one
                norm_done = not want_norms
                i = 0
                while i + 4 <= num_parts:
                    s0 = np.float32(0.0)
                    s1 = np.float32(0.0)
                    s2 = np.float32(0.0)
                    s3 = np.float32(0.0)
                    if not norm_done:
                        # The norm rides along the first pass: each element is loaded
                        # and converted once (a second pass cost compact rows 25%).
                        ss = np.float32(0.0)
                        for d in range(dim):
                            g = _to_float32(gallery_parts[c, j, d])
                            s0 += query_parts[q, i, d] * g
                            s1 += query_parts[q, i + 1, d] * g
                            s2 += query_parts[q, i + 2, d] * g
                            s3 += query_parts[q, i + 3, d] * g
                            ss += g * g
                        norms[q, k, j] = np.sqrt(ss) * scale
                        norm_done = True
                    else:
                        for d in range(dim):
                            g = _to_float32(gallery_parts[c, j, d])
                            s0 += query_parts[q, i, d] * g
                            s1 += query_parts[q, i + 1, d] * g
                            s2 += query_parts[q, i + 2, d] * g
                            s3 += query_parts[q, i + 3, d] * g
                    out[q, k, i, j] = one - s0 * scale
                    out[q, k, i + 1, j] = one - s1 * scale
                    out[q, k, i + 2, j] = one - s2 * scale
                    out[q, k, i + 3, j] = one - s3 * scale
                    i += 4
                while i < num_parts:
                    s = np.float32(0.0)
                    for d in range(dim):
                        s += query_parts[q, i, d] * _to_float32(gallery_parts[c, j, d])
                    out[q, k, i, j] = one - s * scale
                    i += 1
                if not norm_done:  # m < 4: a pass of its own
                    ss = np.float32(0.0)
                    for d in range(dim):
                        g = _to_float32(gallery_parts[c, j, d])
                        ss += g * g
                    norms[q, k, j] = np.sqrt(ss) * scale
                if not gallery_mask[c, j]:
                    for i in range(num_parts):
                        out[q, k, i, j] = pad
            for i in range(num_parts):
                if not query_mask[q, i]:
                    for j in range(num_regions):
                        out[q, k, i, j] = pad


def part_cost(
    query_parts: np.ndarray,
    query_mask: np.ndarray,
    ids: np.ndarray,
    gallery_parts: np.ndarray,
    gallery_mask: np.ndarray,
    pad: float,
    threads: int = 1,
    want_norms: bool = False,
    gallery_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Costs `[Q, K, m, n]` float32 (see `geosteer.ops.part_cost.part_cost_reference`), and part norms.

    Args:
        query_parts: `[Q, m, D]` C-contiguous float32.
        query_mask: `[Q, m]` bool.
        ids: `[Q, K]` int64, every id in `[0, N)` (not checked here).
        gallery_parts: `[N, n, D]` C-contiguous float32, uint16 (the bits of
            float16 rows) or int8 (with `gallery_scale`).
        gallery_mask: `[N, n]` bool.
        pad: cost of a masked pair.
        threads: worker threads (the compiled loop releases the GIL).
        want_norms: also return `‖b‖` of every candidate part, `[Q, K, n]` float32.
        gallery_scale: `[N, n]` C-contiguous float32 scales of int8 rows, else None.

    Returns:
        (cost, norms or None).
    """
    num_queries, num_cands = ids.shape
    num_parts, num_regions = query_parts.shape[1], gallery_parts.shape[1]
    out = np.empty((num_queries, num_cands, num_parts, num_regions), dtype=np.float32)
    norms = np.empty((num_queries, num_cands, num_regions) if want_norms else (1, 1, 1), dtype=np.float32)
    work = out.size * query_parts.shape[2]
    has_scale = gallery_scale is not None
    scale = gallery_scale if has_scale else np.ones((1, 1), dtype=np.float32)
    args = (query_parts, query_mask, ids, gallery_parts, scale, has_scale, gallery_mask, np.float32(pad), out, norms,
            want_norms)
    threads = threads if work >= PARALLEL_MIN_WORK else 1
    run_in_row_chunks(lambda start, stop: _cost_rows(*args, start, stop), num_queries, threads)
    return out, (norms if want_norms else None)
