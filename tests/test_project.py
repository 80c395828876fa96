"""geosteer::project: the Triton gather + projection kernel against its torch reference, and dispatch.

Kernel tests launch `project_triton` directly on CPU tensors (Triton's
interpreter, TRITON_INTERPRET=1 from tests/conftest.py).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from geosteer.ops.project import project, project_reference

from markers import HAS_TRITON, needs_cuda, needs_interpreter, needs_triton

# (Q, K, J, D, N): odd sizes; K = 1; J = 1; K over one candidate block (64);
# J over one vector block (64); D over one D block; Q = 0; J = 0.
SHAPES = [
    (3, 5, 2, 37, 11),
    (2, 1, 3, 20, 9),
    (4, 6, 1, 5, 6),
    (2, 70, 3, 20, 80),
    (1, 4, 67, 16, 9),
    (2, 7, 5, 70, 12),
    (0, 4, 2, 8, 5),
    (2, 3, 0, 8, 5),
]
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-5, 1e-5), (torch.bfloat16, 1e-5, 1e-5)]


def make_inputs(shape, dtype, seed=0):
    num_queries, num_cands, num_vectors, dim, num_items = shape
    g = torch.Generator().manual_seed(seed)
    gallery = F.normalize(torch.randn(num_items, dim, generator=g), dim=-1).to(dtype)
    ids = torch.randint(0, num_items, (num_queries, num_cands), generator=g)
    vectors = F.normalize(torch.randn(num_queries, num_vectors, dim, generator=g), dim=-1).to(dtype)
    return gallery, ids, vectors


@needs_interpreter
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "Q{}K{}J{}D{}N{}".format(*s))
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=lambda v: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else None)
def test_kernel_matches_reference(shape, dtype, atol, rtol):
    from geosteer.kernels.project import project_triton

    inputs = make_inputs(shape, dtype)
    got = project_triton(*inputs)
    want = project_reference(*inputs)
    assert got.dtype == torch.float32 and got.device == want.device
    assert got.shape == (shape[0], shape[1], shape[2])
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@needs_interpreter
def test_kernel_pool_similarities_are_symmetric():
    """Neighbourhood mode projects the pool onto itself: a symmetric matrix with unit diagonal."""
    from geosteer.kernels.project import project_triton

    gallery, ids, _ = make_inputs((2, 9, 1, 24, 40), torch.float32)
    ids = torch.stack([torch.randperm(40, generator=torch.Generator().manual_seed(q))[:9] for q in range(2)])
    sims = project_triton(gallery, ids, gallery[ids])
    torch.testing.assert_close(sims, sims.transpose(1, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(sims.diagonal(dim1=1, dim2=2), torch.ones(2, 9), atol=1e-5, rtol=0)


@needs_interpreter
def test_kernel_strided_inputs_int32_ids_and_mixed_dtypes():
    from geosteer.kernels.project import project_triton

    gallery, ids, vectors = make_inputs((3, 6, 4, 33, 10), torch.float32)
    gt = gallery.t().contiguous().t()  # column-major gallery
    wide = torch.full((*vectors.shape[:2], 2 * vectors.shape[2]), float("nan"))
    wide[..., ::2] = vectors
    vs = wide[..., ::2]  # D stride 2; the NaNs in between must never be read
    ids_t = ids.t().contiguous().t()
    assert not gt.is_contiguous() and not vs.is_contiguous() and not ids_t.is_contiguous()
    want = project_reference(gallery, ids, vectors)
    torch.testing.assert_close(project_triton(gt, ids_t.int(), vs), want)
    mixed = project_triton(gallery.half(), ids, vectors)
    torch.testing.assert_close(mixed, project_reference(gallery.half().float(), ids, vectors), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_op_on_cpu_runs_the_reference_for_every_backend(backend, monkeypatch):
    """CPU tensors never reach the Triton launcher (the op has no numba kernel: the reference runs)."""
    if HAS_TRITON:
        import geosteer.kernels.project as kernel_mod

        def boom(*args, **kwargs):
            raise AssertionError("CPU tensors were routed into Triton")

        monkeypatch.setattr(kernel_mod, "project_triton", boom)
    inputs = make_inputs((3, 5, 2, 16, 9), torch.float32)
    got = torch.ops.geosteer.project(*inputs, backend)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    torch.testing.assert_close(got, project_reference(*inputs), atol=0, rtol=0)


def test_op_on_cpu_with_backend_triton_says_it_cannot_run():
    from geosteer.ops.dispatch import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="CUDA tensors"):
        torch.ops.geosteer.project(*make_inputs((3, 5, 2, 16, 9), torch.float32), "triton")


def test_op_matches_a_plain_gather_and_dot():
    """The reference itself against the definition P[q, k, j] = G[ids[q, k]] · V[q, j], in float64."""
    gallery, ids, vectors = make_inputs((4, 6, 3, 20, 15), torch.float64)
    want = torch.einsum("qkd,qjd->qkj", gallery[ids], vectors).float()
    torch.testing.assert_close(project(gallery, ids, vectors, "auto"), want)


def test_op_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        project(*make_inputs((1, 2, 2, 4, 3), torch.float32), "gpu")


@needs_cuda
@needs_triton
@pytest.mark.parametrize("shape", [(5, 7, 3, 96, 50), (3, 100, 100, 512, 400), (2, 1, 1, 512, 20)])
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-4, 1e-4), (torch.bfloat16, 1e-4, 1e-4)])
def test_cuda_triton_matches_torch(shape, dtype, atol, rtol):
    gallery, ids, vectors = (t.cuda() for t in make_inputs(shape, dtype))
    got = project(gallery, ids, vectors, "triton")
    assert got.device == gallery.device and got.dtype == torch.float32
    torch.testing.assert_close(got, project(gallery, ids, vectors, "torch"), atol=atol, rtol=rtol)


@needs_cuda
@needs_triton
def test_cuda_triton_rejects_out_of_range_ids():
    gallery, ids, vectors = (t.cuda() for t in make_inputs((2, 3, 2, 32, 6), torch.float16))
    ids[1, 1] = -1
    with pytest.raises(ValueError, match="ids"):
        project(gallery, ids, vectors, "triton")
