"""geosteer::part_cost on compact region rows (float16; int8 + a scale per row) in all three implementations.

The oracle is the float32 computation on the dequantised gallery
(`dequantize_rows`, then `part_cost_reference`): the reference must equal it
bit for bit (it dequantises its gathered block the same way), the numba and
Triton kernels to float32 rounding (they apply the scale to the finished dot
product, and sum in another order). The Triton kernel runs in its
interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosteer.ops import checks, dispatch
from geosteer.ops import part_cost as cost_mod
from geosteer.ops.part_cost import pad_cost, part_cost, part_cost_reference
from geosteer.quantize import dequantize_rows, quantize_rows

from markers import needs_cuda, needs_interpreter, needs_numba, needs_triton

# (Q, K, m, n, D, N): odd sizes, K = 1, m > n, m = n = 1, m over the numba
# kernel's 4-part pass, D over one Triton D block, Q = 0.
SHAPES = [(3, 5, 4, 3, 37, 11), (2, 1, 3, 7, 20, 9), (1, 6, 1, 1, 5, 6), (2, 9, 5, 9, 70, 13), (0, 4, 2, 3, 8, 5)]
SHAPE_IDS = ["Q{}K{}m{}n{}D{}N{}".format(*s) for s in SHAPES]


def make_inputs(shape, seed=0, mask_p=0.3):
    """Float32 query parts, unit float32 gallery parts, masks, ids and pad."""
    num_queries, num_cands, m, n, dim, num_items = shape
    g = torch.Generator().manual_seed(seed)
    query_parts = F.normalize(torch.randn(num_queries, m, dim, generator=g), dim=-1)
    gallery_parts = F.normalize(torch.randn(num_items, n, dim, generator=g), dim=-1)
    query_mask = torch.rand(num_queries, m, generator=g) > mask_p
    gallery_mask = torch.rand(num_items, n, generator=g) > mask_p
    ids = torch.randint(0, num_items, (num_queries, num_cands), generator=g)
    return query_parts, query_mask, ids, gallery_parts, gallery_mask, pad_cost(m, n)


def compact_and_oracle(gallery_parts: torch.Tensor, kind: str):
    """(stored rows, scale or None, the float32 gallery they stand for)."""
    if kind == "int8":
        q, scale = quantize_rows(gallery_parts)
        return q, scale, dequantize_rows(q, scale)
    half = gallery_parts.half()
    return half, None, half.float()


KINDS = ["int8", "float16"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_reference_equals_the_float32_computation_on_the_dequantised_gallery(shape, kind):
    qp, qm, ids, gp, gm, pad = make_inputs(shape)
    rows, scale, oracle = compact_and_oracle(gp, kind)
    norms, want_norms = torch.empty(*ids.shape, shape[3]), torch.empty(*ids.shape, shape[3])
    got = part_cost_reference(qp, qm, ids, rows, gm, pad, norms=norms, gallery_scale=scale)
    want = part_cost_reference(qp, qm, ids, oracle, gm, pad, norms=want_norms)
    assert torch.equal(got, want)
    assert torch.equal(norms, want_norms)


@needs_numba
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_numba_kernel_reads_compact_rows_in_place(shape, threads, kind, monkeypatch):
    monkeypatch.setattr(cost_mod.cpu_kernels.load("part_cost"), "PARALLEL_MIN_WORK", 0)  # split even tiny batches
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    qp, qm, ids, gp, gm, pad = make_inputs(shape, seed=3)
    rows, scale, oracle = compact_and_oracle(gp, kind)
    assert dispatch.resolve(cost_mod.SPEC, "auto", qp.device, (qp.dtype, rows.dtype)) == "numba"
    got, norms = cost_mod.part_cost_numba(qp, qm, ids, rows, gm, pad, want_norms=True, gallery_scale=scale)
    want = part_cost_reference(qp, qm, ids, oracle, gm, pad)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # float32 rounding: the scale after the sum
    assert torch.equal(got == pad, want == pad)
    torch.testing.assert_close(norms, oracle[ids].norm(dim=-1), atol=1e-6, rtol=0)
    # float16 query parts are upcast once; the result is the float32 one on the upcast values.
    half_q, _ = cost_mod.part_cost_numba(qp.half(), qm, ids, rows, gm, pad, gallery_scale=scale)
    torch.testing.assert_close(half_q, part_cost_reference(qp.half().float(), qm, ids, oracle, gm, pad), atol=1e-6, rtol=0)


@needs_numba
def test_numba_float16_keeps_nan_inf_and_subnormals():
    """float16 bits are converted exactly: subnormal entries keep their value, NaN / inf reach the costs."""
    qp, qm, ids, gp, gm, pad = make_inputs((2, 4, 2, 3, 16, 6), mask_p=0.0)
    rows = gp.half()
    rows[..., :4] = torch.tensor([1e-7, -3e-6, 6e-5, 0.0], dtype=torch.float16)  # subnormal halves
    assert (rows[..., :3].abs() < torch.finfo(torch.float16).tiny).all()
    got, _ = cost_mod.part_cost_numba(qp, qm, ids, rows, gm, pad)
    torch.testing.assert_close(got, part_cost_reference(qp, qm, ids, rows.float(), gm, pad), atol=1e-6, rtol=0)
    for bad in (float("nan"), float("inf")):
        poisoned = rows.clone()
        poisoned[ids[1, 2], 1, 5] = bad
        got, _ = cost_mod.part_cost_numba(qp, qm, ids, poisoned, gm, pad)
        hit = (ids == ids[1, 2])[:, :, None, None] & (torch.arange(3) == 1)  # every pair that reads the row
        assert torch.equal(~torch.isfinite(got), hit.expand_as(got))


@needs_interpreter
@pytest.mark.parametrize("kind, query_dtype", [("int8", torch.float32), ("int8", torch.float16), ("float16", torch.float32)])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=SHAPE_IDS[:4])
def test_triton_kernel_reads_compact_rows(shape, kind, query_dtype):
    from geosteer.kernels.part_cost import part_cost_triton

    qp, qm, ids, gp, gm, pad = make_inputs(shape)
    qp = qp.to(query_dtype)
    rows, scale, oracle = compact_and_oracle(gp, kind)
    got = part_cost_triton(qp, qm, ids, rows, gm, pad, scale)
    want = part_cost_reference(qp.float(), qm, ids, oracle, gm, pad)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@needs_interpreter
def test_triton_kernel_ignores_masked_rows_and_their_scales():
    from geosteer.kernels.part_cost import part_cost_triton

    qp, qm, ids, gp, gm, pad = make_inputs((2, 4, 3, 5, 24, 7), mask_p=0.4)
    rows, scale = quantize_rows(gp)
    scale[~gm] = float("nan")  # never read: a masked region costs pad
    got = part_cost_triton(qp, qm, ids, rows, gm, pad, scale)
    valid = qm[:, None, :, None] & gm[ids][:, :, None, :]
    assert (~valid).any() and valid.any()
    assert (got[~valid] == pad).all() and torch.isfinite(got).all()
    with pytest.raises(TypeError, match="int8"):
        part_cost_triton(qp, qm, ids, rows, gm, pad)  # int8 without its scale


# --- the op ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_op_unit_check_within_the_quantisation_error(kind, backend):
    """Rows made from unit rows pass; a row 1.5x too long is refused; masked rows are exempt."""
    qp, qm, ids, gp, gm, pad = make_inputs((2, 3, 2, 3, 64, 6), mask_p=0.0)
    rows, scale, _ = compact_and_oracle(gp, kind)
    op = torch.ops.geosteer.part_cost
    op(qp, qm, ids, rows, gm, pad, backend, "gallery_parts", scale)
    long_rows, long_scale, _ = compact_and_oracle(gp * torch.where(torch.arange(6) == ids[1, 2], 1.5, 1.0)[:, None, None], kind)
    with pytest.raises(ValueError, match=r"gallery_parts rows must be L2-normalised \(norms .* to 1.50"):
        op(qp, qm, ids, long_rows, gm, pad, backend, "gallery_parts", long_scale)
    masked = gm.clone()
    masked[ids[1, 2]] = False
    op(qp, qm, ids, long_rows, masked, pad, backend, "gallery_parts", long_scale)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_op_refuses_a_nan_scale_in_a_candidate_row_only(backend):
    qp, qm, ids, gp, gm, pad = make_inputs((2, 3, 2, 3, 8, 6), mask_p=0.0)
    rows, scale = quantize_rows(gp)
    outside = sorted(set(range(6)) - set(ids.flatten().tolist()))
    if outside:  # never read
        poisoned = scale.clone()
        poisoned[outside[0]] = float("nan")
        part_cost(qp, qm, ids, rows, gm, pad, backend, "gallery_parts", poisoned)
    scale[ids[1, 2], 1] = float("inf")
    with pytest.raises(ValueError, match="gallery_parts_scale contains NaN or inf"):
        part_cost(qp, qm, ids, rows, gm, pad, backend, "gallery_parts", scale)


def test_op_checks_the_scale_before_any_kernel():
    qp, qm, ids, gp, gm, pad = make_inputs((2, 3, 2, 3, 8, 6))
    rows, scale = quantize_rows(gp)
    with pytest.raises(ValueError, match=r"int8 gallery_parts need gallery_parts_scale \[N, n\] float32"):
        part_cost(qp, qm, ids, rows, gm, pad, "auto")
    with pytest.raises(ValueError, match="gallery_parts_scale is for int8 gallery_parts"):
        part_cost(qp, qm, ids, gp, gm, pad, "auto", "", scale)
    with pytest.raises(ValueError, match=r"gallery_parts_scale must be float32 \[6, 3\], got torch.float64 \[6, 3\]"):
        part_cost(qp, qm, ids, rows, gm, pad, "auto", "", scale.double())
    with pytest.raises(ValueError, match=r"must be float32 \[6, 3\], got torch.float32 \[6\]"):
        part_cost(qp, qm, ids, rows, gm, pad, "auto", "", scale[:, 0])


@needs_numba
def test_dispatch_of_compact_rows(monkeypatch):
    """CPU: int8 / float16 rows take the numba kernel under "auto"; "torch" and a strided gallery the reference."""
    qp, qm, ids, gp, gm, pad = make_inputs((2, 3, 2, 3, 8, 6))
    rows, scale = quantize_rows(gp)
    seen = []
    real = cost_mod.part_cost_numba
    monkeypatch.setattr(cost_mod, "part_cost_numba", lambda *a, **k: seen.append(a[3].dtype) or real(*a, **k))
    oracle = part_cost_reference(qp, qm, ids, dequantize_rows(rows, scale), gm, pad)
    torch.testing.assert_close(part_cost(qp, qm, ids, rows, gm, pad, "auto", "", scale), oracle, atol=1e-6, rtol=0)
    part_cost(qp, qm, ids, gp.half(), gm, pad, "auto")
    assert seen == [torch.int8, torch.float16]
    assert torch.equal(part_cost(qp, qm, ids, rows, gm, pad, "torch", "", scale), oracle)
    strided = rows.transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(part_cost(qp, qm, ids, strided, gm, pad, "auto", "", scale), oracle)
    assert len(seen) == 2


@pytest.mark.skipif(dispatch.triton_import_problem() is not None, reason="triton is not importable")
def test_dispatch_sends_int8_rows_to_triton_on_cuda(monkeypatch):
    """On CUDA (capability faked) int8 rows are the Triton kernel's, not a reason to fall back."""
    monkeypatch.setattr(dispatch, "_device_problem", lambda device: None)
    monkeypatch.setattr(dispatch, "_warned", set())
    cuda = torch.device("cuda")
    assert dispatch.resolve(cost_mod.SPEC, "auto", cuda, (torch.float16, torch.int8)) == "triton"
    assert dispatch.resolve(cost_mod.SPEC, "triton", cuda, (torch.float32, torch.float16)) == "triton"
    with pytest.warns(RuntimeWarning, match="float64"):
        assert dispatch.resolve(cost_mod.SPEC, "auto", cuda, (torch.float64, torch.int8)) == "torch"


# --- check_rows with scales -------------------------------------------------------


@pytest.mark.parametrize("many", [False, True], ids=["gathered", "streamed"])
def test_check_rows_reads_int8_rows_with_their_scales(many):
    """Gathered (few candidates) and streamed (more than half the gallery) paths alike."""
    g = torch.Generator().manual_seed(5)
    gp = F.normalize(torch.randn(10, 3, 32, generator=g), dim=-1)
    rows, scale = quantize_rows(gp)
    ids = torch.arange(10)[None] if many else torch.tensor([[2, 7]])
    checks.check_rows(rows, None, ids, "gallery_parts", scale)
    bad = scale.clone()
    bad[7, 1] *= 1.2
    with pytest.raises(ValueError, match=r"gallery_parts rows must be L2-normalised .* in the candidates' rows"):
        checks.check_rows(rows, None, ids, "gallery_parts", bad)
    mask = torch.ones(10, 3, dtype=torch.bool)
    mask[7, 1] = False
    checks.check_rows(rows, mask, ids, "gallery_parts", bad)  # a masked row is exempt
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="gallery_parts_scale contains NaN or inf"):
        checks.check_rows(rows, None, ids, "gallery_parts", bad)
    with pytest.raises(ValueError, match="a scale goes with int8 rows"):
        checks.check_rows(gp, None, ids, "gallery_parts", scale)


def test_opcheck_compact_calls():
    qp, qm, ids, gp, gm, pad = make_inputs((4, 6, 3, 5, 16, 30))
    rows, scale = quantize_rows(gp)
    op = torch.ops.geosteer.part_cost.default
    torch.library.opcheck(op, (qp, qm, ids, rows, gm, 7.0, "auto", "gallery_parts", scale))
    torch.library.opcheck(op, (qp, qm, ids, rows, gm, 7.0, "torch", "", scale))
    torch.library.opcheck(op, (qp, qm, ids, gp.half(), gm, 7.0, "auto"))
    torch.library.opcheck(torch.ops.geosteer.check_rows.default, (rows, gm, ids, "gallery_parts", scale))


# --- CUDA (skipped without a GPU) -----------------------------------------------


@needs_cuda
@needs_triton
@pytest.mark.parametrize("kind, query_dtype, atol", [("int8", torch.float32, 1e-5), ("int8", torch.float16, 1e-4),
                                                     ("float16", torch.float32, 1e-5), ("float16", torch.float16, 1e-4)])
@pytest.mark.parametrize("shape", [(5, 7, 4, 9, 96, 50), (2, 50, 4, 16, 512, 300)])
def test_cuda_triton_reads_compact_rows(shape, kind, query_dtype, atol):
    qp, qm, ids, gp, gm, pad = make_inputs(shape)
    rows, scale, oracle = compact_and_oracle(gp, kind)
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    qp = qp.to(query_dtype)
    got = part_cost(cuda(qp), cuda(qm), cuda(ids), cuda(rows), cuda(gm), pad, "triton", "gallery_parts", cuda(scale))
    want = part_cost_reference(qp.float(), qm, ids, oracle, gm, pad)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, atol=atol, rtol=0)
