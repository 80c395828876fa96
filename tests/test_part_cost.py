"""geosteer::part_cost: the Triton gather + cost kernel against its torch reference, and dispatch.

The kernel tests launch `part_cost_triton` directly on CPU tensors, which
runs Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); the
op itself never sends CPU tensors there. The dispatch rule every op
shares is tested in test_dispatch.py.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from geosteer import cpu_kernels
from geosteer.ops import dispatch
from geosteer.ops import part_cost as cost_mod
from geosteer.ops.part_cost import pad_cost, part_cost, part_cost_reference

from markers import HAS_TRITON, needs_cuda, needs_interpreter, needs_numba, needs_triton

# (Q, K, m, n, D, N): odd sizes; K = 1; m > n; m = n = 1; K*n over one row
# block (64); m over one part block (32); D over one D block; Q = 0; and
# neighbourhood mode's call (n = 1, K*k candidates).
SHAPES = [
    (2, 20, 4, 1, 24, 30),
    (3, 5, 4, 3, 37, 11),
    (2, 1, 3, 7, 20, 9),
    (1, 6, 1, 1, 5, 6),
    (2, 9, 5, 9, 70, 13),
    (1, 3, 35, 2, 16, 5),
    (0, 4, 2, 3, 8, 5),
]
# (dtype, atol, rtol): half inputs are multiplied exactly and summed in fp32
# by both sides, so only the summation order differs.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-5, 1e-5), (torch.bfloat16, 1e-5, 1e-5)]


def make_inputs(shape, dtype, seed=0, mask_p=0.3):
    num_queries, num_cands, m, n, dim, num_items = shape
    g = torch.Generator().manual_seed(seed)
    query_parts = F.normalize(torch.randn(num_queries, m, dim, generator=g), dim=-1).to(dtype)
    gallery_parts = F.normalize(torch.randn(num_items, n, dim, generator=g), dim=-1).to(dtype)
    query_mask = torch.rand(num_queries, m, generator=g) > mask_p
    gallery_mask = torch.rand(num_items, n, generator=g) > mask_p
    ids = torch.randint(0, num_items, (num_queries, num_cands), generator=g)
    return query_parts, query_mask, ids, gallery_parts, gallery_mask, pad_cost(m, n)


# --- the kernel (Triton interpreter on CPU) ---------------------------------


@needs_interpreter
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "Q{}K{}m{}n{}D{}N{}".format(*s))
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=lambda v: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else None)
def test_kernel_matches_reference(shape, dtype, atol, rtol):
    from geosteer.kernels.part_cost import part_cost_triton

    inputs = make_inputs(shape, dtype)
    got = part_cost_triton(*inputs)
    want = part_cost_reference(*inputs)
    assert got.dtype == torch.float32 and got.device == want.device
    assert got.shape == want.shape == (shape[0], shape[1], shape[2], shape[3])
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@needs_interpreter
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on the NaN rows we plant
def test_kernel_masked_pairs_get_pad_and_ignore_nan():
    """Masked pairs are exactly `pad`, even where the masked part holds NaN."""
    from geosteer.kernels.part_cost import part_cost_triton

    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = make_inputs((2, 4, 3, 5, 24, 7), torch.float32, mask_p=0.4)
    gallery_parts[~gallery_mask] = float("nan")
    query_parts[~query_mask] = float("inf")
    got = part_cost_triton(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad)
    valid = query_mask[:, None, :, None] & gallery_mask[ids][:, :, None, :]
    assert (~valid).any() and valid.any()
    assert torch.isfinite(got).all()
    assert (got[~valid] == pad).all()
    assert (got[valid] <= 2.0 + 1e-5).all()
    torch.testing.assert_close(got, part_cost_reference(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad))


@needs_interpreter
def test_kernel_strided_inputs_int32_ids_and_mixed_dtypes():
    """Non-contiguous views are read through their strides; int32 ids; fp16 x fp32 upcasts."""
    from geosteer.kernels.part_cost import part_cost_triton

    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = make_inputs((3, 6, 4, 5, 33, 10), torch.float32)
    # Views with non-unit D stride and a transposed layout.
    wide = torch.full((*query_parts.shape[:2], 2 * query_parts.shape[2]), float("nan"))
    wide[..., ::2] = query_parts
    qp = wide[..., ::2]  # D stride 2; the NaNs in between must never be read
    gp = gallery_parts.transpose(0, 1).contiguous().transpose(0, 1)
    gm = gallery_mask.t().contiguous().t()
    assert not qp.is_contiguous() and not gp.is_contiguous() and not gm.is_contiguous()
    got = part_cost_triton(qp, query_mask, ids.int(), gp, gm, pad)
    torch.testing.assert_close(got, part_cost_reference(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad))

    mixed = part_cost_triton(query_parts.half(), query_mask, ids, gallery_parts, gallery_mask, pad)
    want = part_cost_reference(query_parts.half().float(), query_mask, ids, gallery_parts, gallery_mask, pad)
    torch.testing.assert_close(mixed, want, atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_kernel_zero_dim_costs_one():
    """D = 0: every real pair has similarity 0, so cost 1 (the kernel's D loop is empty)."""
    from geosteer.kernels.part_cost import part_cost_triton

    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = make_inputs((2, 3, 2, 3, 0, 4), torch.float32, mask_p=0.0)
    got = part_cost_triton(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad)
    assert torch.equal(got, torch.ones(2, 3, 2, 3))


# --- the op --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_op_on_cpu_never_reaches_triton(backend, monkeypatch):
    """CPU tensors never reach the Triton launcher.

    float32 runs the numba kernel under "auto" (summation order differs from
    the reference's bmm); backend="torch" is the reference itself.
    """
    if HAS_TRITON:
        import geosteer.kernels.part_cost as kernel_mod

        def boom(*args, **kwargs):
            raise AssertionError("CPU tensors were routed into Triton")

        monkeypatch.setattr(kernel_mod, "part_cost_triton", boom)
    inputs = make_inputs((3, 5, 4, 3, 16, 9), torch.float32)
    got = torch.ops.geosteer.part_cost(*inputs, backend)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    exact = backend == "torch" or cpu_kernels.numba_problem() is not None
    torch.testing.assert_close(got, part_cost_reference(*inputs), atol=0 if exact else 1e-6, rtol=0)


def test_op_on_cpu_with_backend_triton_says_it_cannot_run():
    with pytest.raises(dispatch.BackendUnavailable, match="CUDA tensors"):
        torch.ops.geosteer.part_cost(*make_inputs((2, 3, 2, 2, 8, 5), torch.float32), "triton")


# --- the numba CPU kernel ----------------------------------------------------


@needs_numba
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "Q{}K{}m{}n{}D{}N{}".format(*s))
@pytest.mark.parametrize("threads", [1, 2])
def test_numba_kernel_matches_reference(shape, threads, monkeypatch):
    monkeypatch.setattr(cpu_kernels.load("part_cost"), "PARALLEL_MIN_WORK", 0)  # split even tiny batches
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    inputs = make_inputs(shape, torch.float32, seed=3)
    assert dispatch.resolve(cost_mod.SPEC, "auto", inputs[0].device, (torch.float32,)) == "numba"
    got, no_norms = cost_mod.part_cost_numba(*inputs)
    want = part_cost_reference(*inputs)
    assert no_norms is None
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    pad = inputs[-1]
    assert torch.equal(got == pad, want == pad)  # the same pairs masked
    # The norms taken on the way equal the reference's, and the costs do not change.
    got2, norms = cost_mod.part_cost_numba(*inputs, want_norms=True)
    want_norms = torch.empty(norms.shape)
    part_cost_reference(*inputs, norms=want_norms)
    ids, gallery_parts = inputs[2], inputs[3]
    assert torch.equal(got2, got)
    torch.testing.assert_close(norms, gallery_parts[ids].norm(dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(want_norms, norms, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_unit_check_refuses_a_candidates_unnormalised_part_and_exempts_masked_ones(backend):
    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = make_inputs((2, 3, 2, 3, 8, 6), torch.float32)
    gallery_parts = torch.nn.functional.normalize(gallery_parts, dim=-1)
    gallery_mask = torch.ones_like(gallery_mask)
    args = (query_parts, query_mask, ids, gallery_parts, gallery_mask, pad, backend)
    torch.ops.geosteer.part_cost(*args, "gallery_parts")  # unit rows pass
    scaled = gallery_parts.clone()
    scaled[ids[1, 2], 1] *= 3.0
    with pytest.raises(ValueError, match=r"gallery_parts rows must be L2-normalised \(norms 1.000000 to 3.00"):
        torch.ops.geosteer.part_cost(query_parts, query_mask, ids, scaled, gallery_mask, pad, backend, "gallery_parts")
    torch.ops.geosteer.part_cost(query_parts, query_mask, ids, scaled, gallery_mask, pad, backend)  # no check asked
    masked = gallery_mask.clone()
    masked[ids[1, 2], 1] = False  # padding may hold anything finite
    torch.ops.geosteer.part_cost(query_parts, query_mask, ids, scaled, masked, pad, backend, "gallery_parts")


@needs_numba
def test_numba_kernel_rejects_ids_out_of_range():
    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = make_inputs((2, 3, 2, 2, 8, 5), torch.float32)
    ids[1, 2] = 5
    with pytest.raises(ValueError, match="ids"):
        torch.ops.geosteer.part_cost(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad, "auto")


@needs_numba
def test_numba_kernel_is_skipped_where_it_does_not_apply(monkeypatch):
    """backend="torch", float64 and a strided gallery all take the reference, bit for bit."""

    def boom(*args, **kwargs):
        raise AssertionError("the numba kernel ran")

    monkeypatch.setattr(cost_mod, "part_cost_numba", boom)
    inputs = make_inputs((2, 3, 2, 2, 8, 5), torch.float32)
    torch.testing.assert_close(part_cost(*inputs, "torch"), part_cost_reference(*inputs), atol=0, rtol=0)
    as64 = [t.double() if t.is_floating_point() else t for t in inputs[:5]] + [inputs[5]]
    torch.testing.assert_close(part_cost(*as64, "auto"), part_cost_reference(*as64), atol=0, rtol=0)
    strided = list(inputs)
    strided[3] = inputs[3].transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(part_cost(*strided, "auto"), part_cost_reference(*inputs), atol=0, rtol=0)


def test_op_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        part_cost(*make_inputs((1, 2, 2, 2, 4, 3), torch.float32), "cuda")


def test_op_raises_on_nan_in_a_candidate_row_only():
    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = make_inputs((2, 3, 2, 3, 8, 6), torch.float32, mask_p=0.0)
    outside = sorted(set(range(6)) - set(ids.flatten().tolist()))
    if outside:  # a NaN outside the candidates is never read
        poisoned = gallery_parts.clone()
        poisoned[outside[0]] = float("nan")
        assert torch.isfinite(part_cost(query_parts, query_mask, ids, poisoned, gallery_mask, pad, "auto")).all()
    gallery_parts[ids[1, 2], 1, 0] = float("nan")
    with pytest.raises(ValueError, match="gallery_parts"):
        part_cost(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad, "auto")


# --- CUDA (skipped without a GPU) -----------------------------------------------


@needs_cuda
@needs_triton
@pytest.mark.parametrize("shape", [(5, 7, 4, 9, 96, 50), (3, 1, 6, 3, 512, 20), (2, 50, 4, 16, 512, 300)])
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-4, 1e-4), (torch.bfloat16, 1e-4, 1e-4)])
def test_cuda_triton_matches_torch(shape, dtype, atol, rtol):
    inputs = [t.cuda() if isinstance(t, torch.Tensor) else t for t in make_inputs(shape, dtype)]
    got = part_cost(*inputs, "triton")
    want = part_cost(*inputs, "torch")
    assert got.device == inputs[0].device and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@needs_cuda
@needs_triton
def test_cuda_triton_rejects_bad_ids_and_nan():
    query_parts, query_mask, ids, gallery_parts, gallery_mask, pad = (
        t.cuda() if isinstance(t, torch.Tensor) else t for t in make_inputs((2, 3, 2, 3, 32, 6), torch.float16, mask_p=0.0)
    )
    bad_ids = ids.clone()
    bad_ids[0, 0] = 6
    with pytest.raises(ValueError, match="ids"):
        part_cost(query_parts, query_mask, bad_ids, gallery_parts, gallery_mask, pad, "triton")
    gallery_parts[ids[1, 2], 1, 0] = float("nan")
    with pytest.raises(ValueError, match="gallery_parts"):
        part_cost(query_parts, query_mask, ids, gallery_parts, gallery_mask, pad, "triton")
