"""CUDA against the CPU references: every op and the whole head, per dtype and backend.

On a GPU machine (`bench/run_gpu.sh` runs this with TRITON_INTERPRET=0):
geosteer::first_stage, part_cost and project on CUDA against the CPU
plain-torch references, the solver on CUDA against SciPy's optimal totals,
the whole head on CUDA (steering off / on) against the CPU head, and
`torch.compile(fullgraph=True)` against eager on CUDA. Inputs are rounded to
the tested dtype once; the references see the same values in float32.

Without a CUDA device every test here skips ("needs a CUDA device").
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import geosteer
from geosteer import GeoSteerHead, HeadConfig
from geosteer.ops.dispatch import BackendUnavailable
from geosteer.ops.first_stage import first_stage_reference
from geosteer.ops.part_cost import pad_cost, part_cost_reference
from geosteer.ops.project import project_reference

from markers import needs_cuda

# The compiled kernels (Triton, Inductor) are what these tests check; the
# interpreter that tests/conftest.py turns on for the CPU tests would run
# neither.
compiled_triton = pytest.mark.skipif(
    torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1",
    reason="the CUDA checks run the compiled Triton kernels: run with TRITON_INTERPRET=0 "
    "(tests/conftest.py defaults it to 1 for the CPU tests)",
)
pytestmark = [needs_cuda, compiled_triton]

DEVICE = torch.device("cuda")
# Max abs error allowed against the float32 reference, per input dtype.
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# The head's top-1 must agree this often (fp16 may swap near-tied candidates).
TOP1_MIN = {torch.float32: 0.98, torch.float16: 0.9, torch.bfloat16: 0.9}
DTYPES = [torch.float32, torch.float16]
BACKENDS = ["auto", "torch", "triton"]

# Queries, gallery items, candidates, query parts, regions per item, dim.
Q, N, K, M, R, D = 64, 1_000, 20, 3, 9, 64
# Solver shapes (W, T): wide, tall, odd, square, one row, one column.
ASSIGN_SHAPES = [(4, 16), (16, 4), (3, 9), (5, 5), (1, 7), (7, 1)]


class Data(NamedTuple):
    """Seeded embeddings (all unit norm but `targets`)."""

    query: Tensor  # [Q, D]
    query_parts: Tensor  # [Q, M, D]
    gallery: Tensor  # [N, D]
    gallery_parts: Tensor  # [N, R, D]
    negatives: Tensor  # [Q, M, D] confusers of the query parts
    targets: Tensor  # [Q] int64: the item each query was planted from

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Data":
        """Floating fields cast to `dtype`, every field moved to `device`."""
        return Data(*(t.to(device=device, dtype=dtype if t.is_floating_point() else None) for t in self))


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


@functools.lru_cache(maxsize=None)
def planted(seed: int = 0) -> Data:
    """Clustered float32 CPU embeddings with planted queries.

    `N / 100` clusters; an item's regions are `unit(centre + noise)`, its
    embedding the unit mean of its regions plus noise; each query's parts
    are `M` regions of a random target plus noise, the query their unit
    mean. The target is a clear top candidate, so rankings are not a
    coin toss between near-ties.
    """
    gen = torch.Generator().manual_seed(seed)
    clusters = N // 100
    centres = _unit(torch.randn(clusters, D, generator=gen))
    cluster_of = torch.arange(N) * clusters // N
    regions = _unit(_unit(torch.randn(N, R, D, generator=gen)) + centres[cluster_of][:, None])
    pooled = regions.mean(dim=1)
    gallery = _unit(pooled + 0.5 * pooled.norm(dim=-1, keepdim=True) * _unit(torch.randn(N, D, generator=gen)))
    targets = torch.randint(0, N, (Q,), generator=gen)
    pick = torch.rand(Q, R, generator=gen).argsort(dim=1)[:, :M]
    base = regions[targets].gather(1, pick[..., None].expand(-1, -1, D))  # [Q, M, D]
    query_parts = _unit(base + 0.5 * _unit(torch.randn(Q, M, D, generator=gen)))
    query = _unit(query_parts.mean(dim=1) + 0.1 * _unit(torch.randn(Q, D, generator=gen)))
    negatives = _unit(query_parts + centres[torch.randint(0, clusters, (Q, M), generator=gen)])
    return Data(query, query_parts, gallery, regions, negatives, targets)


def rounded(dtype: torch.dtype) -> tuple[Data, Data]:
    """The inputs rounded to `dtype` (on CPU) and the same values in float32 (the reference's)."""
    low = planted().to(dtype)
    return low, low.to(torch.float32)


def masks(seed: int = 1) -> tuple[Tensor, Tensor]:
    """Random part masks `[Q, M]`, `[N, R]` bool with the first part of each row valid."""
    gen = torch.Generator().manual_seed(seed)
    qmask = torch.rand(Q, M, generator=gen) > 0.2
    gmask = torch.rand(N, R, generator=gen) > 0.3
    qmask[:, 0] = gmask[:, 0] = True
    return qmask, gmask


def reference_ids(ref: Data) -> Tensor:
    """`[Q, K]` candidate ids from the CPU first stage."""
    return first_stage_reference(ref.query, ref.gallery, K, 1 << 24)[1]


def run(backend: str, fn):
    """`fn()`, skipping where an explicit backend='triton' says it cannot run here."""
    try:
        return fn()
    except BackendUnavailable as error:
        if backend != "triton":
            raise
        pytest.skip(f"backend='triton' is unavailable here: {error}")


def max_err(got: Tensor, want: Tensor) -> float:
    return float((got.cpu().float() - want.float()).abs().max())


# --------------------------------------------------------------------------
# The ops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_first_stage(dtype: torch.dtype, backend: str) -> None:
    low, ref = rounded(dtype)
    tol = TOL[dtype]
    scores, ids = run(backend, lambda: torch.ops.geosteer.first_stage(
        low.query.to(DEVICE), low.gallery.to(DEVICE), K, 1 << 24, backend))
    assert scores.device.type == ids.device.type == DEVICE.type
    assert scores.dtype == torch.float32 and ids.dtype == torch.long and scores.shape == (Q, K)
    scores, ids = scores.cpu(), ids.cpu()
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "scores must be sorted descending"
    exact = ref.query @ ref.gallery.T  # [Q, N]
    want_scores = first_stage_reference(ref.query, ref.gallery, K, 1 << 24)[0]
    assert max_err(scores, want_scores) <= tol
    # Each returned score is its id's true score, and every id is a valid
    # top-K member (near-ties may be ordered differently).
    true = exact.gather(1, ids)
    assert max_err(scores, true) <= tol
    assert bool((true >= exact.topk(K, dim=1).values[:, -1:] - tol).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_part_cost(dtype: torch.dtype, backend: str) -> None:
    low, ref = rounded(dtype)
    qmask, gmask = masks()
    ids = reference_ids(ref)
    pad = pad_cost(M, R)
    out = run(backend, lambda: torch.ops.geosteer.part_cost(
        low.query_parts.to(DEVICE), qmask.to(DEVICE), ids.to(DEVICE), low.gallery_parts.to(DEVICE),
        gmask.to(DEVICE), pad, backend))
    assert out.device.type == DEVICE.type and out.dtype == torch.float32 and out.shape == (Q, K, M, R)
    want = part_cost_reference(ref.query_parts, qmask, ids, ref.gallery_parts, gmask, pad)
    assert max_err(out, want) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_project(dtype: torch.dtype, backend: str) -> None:
    low, ref = rounded(dtype)
    ids = reference_ids(ref)
    out = run(backend, lambda: torch.ops.geosteer.project(
        low.gallery.to(DEVICE), ids.to(DEVICE), low.negatives.to(DEVICE), backend))
    assert out.device.type == DEVICE.type and out.dtype == torch.float32 and out.shape == (Q, K, M)
    want = project_reference(ref.gallery, ids, ref.negatives)
    assert max_err(out, want) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ASSIGN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_assign_matches_scipy(shape: tuple[int, int], backend: str) -> None:
    """Optimal totals equal SciPy's; each matching is one-to-one and avoids forbidden (+inf) edges."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = shape
    gen = torch.Generator().manual_seed(rows * 100 + cols)
    batch = 37
    cost = torch.rand(batch, rows, cols, generator=gen)
    forbid = torch.rand(cost.shape, generator=gen) < 0.1
    diag = torch.arange(min(rows, cols))
    forbid[:, diag, diag] = False  # the diagonal stays allowed: every problem is feasible
    cost = cost.masked_fill(forbid, float("inf"))
    got = run(backend, lambda: geosteer.batch_linear_assignment(cost.to(DEVICE), backend=backend))
    assert got.device.type == DEVICE.type and got.dtype == torch.long and got.shape == (batch, rows)
    got = got.cpu()
    for b in range(batch):
        r, c = linear_sum_assignment(cost[b].numpy())
        best = float(cost[b].numpy()[r, c].sum())
        matched = (got[b] >= 0).nonzero()[:, 0]
        chosen = got[b][matched]
        assert len(chosen) == min(rows, cols) and len(set(chosen.tolist())) == len(chosen), f"problem {b}"
        total = float(cost[b][matched, chosen].sum())
        assert abs(total - best) <= 1e-4, f"problem {b}: total {total} vs SciPy's {best}"


# --------------------------------------------------------------------------
# The whole head


def head_call(head, data: Data, steer: bool):
    """One call in parts mode; with `steer`, the negatives are passed too."""
    extra = {"negatives": data.negatives} if steer else {}
    return head(data.query, data.gallery, query_parts=data.query_parts, gallery_parts=data.gallery_parts, **extra)


def head_config(steer: bool, backend: str = "auto") -> HeadConfig:
    """The default parts-mode config (λ = 0.5) at K, with α = 0.5 when steering."""
    return HeadConfig(k=K, mode="parts", alpha=0.5 if steer else 0.0, backend=backend)


def assert_agree(got, want, dtype: torch.dtype) -> None:
    """Sorted fused scores within 10x the op tolerance; top-1 ids mostly equal."""
    assert got.scores.device.type == DEVICE.type and got.indices.shape == (Q, K)
    err = max_err(got.scores, want.scores.cpu())
    top1 = float((got.indices.cpu()[:, 0] == want.indices.cpu()[:, 0]).float().mean())
    assert err <= 10 * TOL[dtype], f"fused scores differ by {err:.2e}"
    assert top1 >= TOP1_MIN[dtype], f"top-1 agrees on {top1:.3f} of queries"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steer", [False, True], ids=["plain", "steer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head_eager_matches_cpu(dtype: torch.dtype, steer: bool, backend: str) -> None:
    low, ref = rounded(dtype)
    want = head_call(GeoSteerHead(head_config(steer)), ref, steer)
    got = run(backend, lambda: head_call(GeoSteerHead(head_config(steer, backend)), low.to(device=DEVICE), steer))
    assert_agree(got, want, dtype)


@pytest.mark.parametrize("steer", [False, True], ids=["plain", "steer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head_compiled_matches_eager(dtype: torch.dtype, steer: bool) -> None:
    low, _ = rounded(dtype)
    data = low.to(device=DEVICE)
    eager = head_call(GeoSteerHead(head_config(steer)), data, steer)
    compiled = torch.compile(GeoSteerHead(head_config(steer)), fullgraph=True)
    assert_agree(head_call(compiled, data, steer), eager, dtype)
