"""geosteer::first_stage: exact chunked top-K against an unchunked brute force.

The op has no Triton kernel (see geosteer/ops/first_stage.py): every backend
runs the same torch code, which these tests pin down.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosteer.ops.first_stage import first_stage, first_stage_reference

from markers import needs_cuda


def make_inputs(num_queries, num_items, dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(num_queries, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    gallery = F.normalize(torch.randn(num_items, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    return query, gallery


def brute_force(query, gallery, k):
    top = (query.double() @ gallery.double().t()).topk(k, dim=1, sorted=True)
    return top.values.float(), top.indices


# (Q, N, D, k, chunk_elements): one chunk; many chunks (chunk < N gives one
# row a chunk); k = 1; k = N; Q = 1; a chunk that does not divide Q.
CASES = [
    (5, 40, 16, 7, 1 << 24),
    (9, 50, 12, 5, 10),
    (4, 30, 8, 1, 64),
    (3, 11, 8, 11, 1 << 24),
    (1, 25, 33, 4, 25),
    (7, 20, 10, 3, 60),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "Q{}N{}D{}k{}chunk{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_matches_brute_force(case, dtype):
    num_queries, num_items, dim, k, chunk = case
    query, gallery = make_inputs(num_queries, num_items, dim, dtype)
    scores, ids = first_stage(query, gallery, k, chunk, "auto")
    want_scores, want_ids = brute_force(query, gallery, k)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    assert scores.shape == ids.shape == (num_queries, k)
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "scores must be sorted descending"
    # On the CPU half inputs are scored in float32, so every dtype is exact
    # to float32 rounding.
    torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=0)
    assert torch.equal(ids, want_ids)


@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_every_backend_runs_the_same_code(backend):
    query, gallery = make_inputs(6, 30, 16)
    got = torch.ops.geosteer.first_stage(query, gallery, 5, 40, backend)
    want = first_stage_reference(query, gallery, 5, 40)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_rejects_unknown_backend():
    query, gallery = make_inputs(2, 10, 4)
    with pytest.raises(ValueError, match="backend"):
        first_stage(query, gallery, 3, 100, "faiss")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype):
    query, gallery = make_inputs(17, 500, 64, dtype)
    scores, ids = first_stage(query.cuda(), gallery.cuda(), 10, 2000, "auto")
    assert scores.device.type == "cuda" and ids.device.type == "cuda"
    want_scores, _ = brute_force(query, gallery, 10)
    torch.testing.assert_close(scores.cpu(), want_scores, atol=2e-3 if dtype == torch.float16 else 1e-5, rtol=0)
