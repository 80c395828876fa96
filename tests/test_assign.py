"""geosteer::assign: exactness against SciPy, errors, every solver path, compile.

Each CPU path is checked on total cost against `scipy.optimize.linear_sum_assignment`
(hypothesis-generated costs): the compiled solver (default), the SciPy-loop
fallback (numba absent), the torch subset DP, and the Triton subset DP
(launched directly on CPU tensors under TRITON_INTERPRET=1, tiny shapes).
The Triton kernel must also return the same ids as its torch reference.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import geosteer
import geosteer.ops.assign as assign_mod
from geosteer.ops.assign import assign, assign_dp_reference, batch_linear_assignment

from markers import HAS_NUMBA, HAS_TRITON, needs_cuda, needs_interpreter, needs_numba

INF = float("inf")


# --------------------------------------------------------------------------
# Oracle and generators


def scipy_totals(cost: torch.Tensor, maximize: bool = False) -> np.ndarray:
    array = cost.double().cpu().numpy()
    out = []
    for c in array:
        rows, cols = linear_sum_assignment(c, maximize=maximize)
        out.append(c[rows, cols].sum())
    return np.array(out)


def check_matching(cost: torch.Tensor, cols: torch.Tensor, maximize: bool = False) -> None:
    """`cols` is a valid matching on `cost`'s device whose totals equal SciPy's."""
    batch, rows, width = cost.shape
    assert cols.dtype == torch.long and cols.shape == (batch, rows) and cols.device == cost.device
    cols = cols.cpu()
    assert ((cols >= -1) & (cols < max(width, 1))).all()
    matched = cols >= 0
    assert (matched.sum(1) == min(rows, width)).all()  # every row of the smaller side is matched
    for b in range(batch):
        used = cols[b][matched[b]]
        assert used.unique().numel() == used.numel()  # one-to-one
    values = cost.double().cpu().gather(2, cols.clamp_min(0)[..., None])[..., 0]
    assert torch.isfinite(values[matched]).all()  # no forbidden edge
    totals = torch.where(matched, values, torch.zeros_like(values)).sum(1).numpy()
    finite = cost.double().cpu()[torch.isfinite(cost.cpu())]
    scale = float(finite.abs().max()) * min(rows, width) if finite.numel() else 1.0
    np.testing.assert_allclose(totals, scipy_totals(cost, maximize), rtol=0, atol=1e-9 * max(scale, 1.0))


@st.composite
def costs(draw, max_side: int = 7, max_batch: int = 4, orient: str = "any") -> torch.Tensor:
    """Costs `[B, W, T]` of one of several kinds; +inf only where a full matching stays feasible."""
    batch = draw(st.integers(1, max_batch))
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    if orient == "wide":
        rows, cols = min(rows, cols), max(rows, cols)
    kind = draw(st.sampled_from(["uniform", "integer", "ties", "wide", "forbidden"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shape = (batch, rows, cols)
    if kind == "uniform":
        c = rng.random(shape)
    elif kind == "integer":
        c = rng.integers(-20, 20, shape).astype(np.float64)
    elif kind == "ties":
        c = rng.integers(0, 2, shape).astype(np.float64)  # many equally cheap matchings
    elif kind == "wide":
        c = rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-6, 6, shape)
    else:
        c = rng.random(shape)
        keep = np.zeros(shape, dtype=bool)  # a planted feasible matching stays finite
        for b in range(batch):
            perm_rows, perm_cols = rng.permutation(rows), rng.permutation(cols)
            k = min(rows, cols)
            keep[b, perm_rows[:k], perm_cols[:k]] = True
        c[(rng.random(shape) < 0.6) & ~keep] = np.inf
    return torch.from_numpy(c).to(dtype)


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Exactness, every path


@given(cost=costs(), maximize=st.booleans())
@PROPS
def test_default_cpu_path_matches_scipy(cost, maximize):
    if maximize:
        cost = torch.where(torch.isinf(cost), -cost, cost)  # forbidden is -inf when maximising
    check_matching(cost, batch_linear_assignment(cost, maximize=maximize), maximize)


@given(cost=costs())
@settings(max_examples=60, deadline=None)
def test_scipy_reference_matches_scipy(cost):
    """backend="torch" on the CPU is the reference path: SciPy per problem."""
    check_matching(cost, batch_linear_assignment(cost, backend="torch"))


def test_without_numba_the_cpu_takes_scipy_with_one_warning(without_numba):
    cost = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(3))
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        got = batch_linear_assignment(cost)
    check_matching(cost, got)


@given(cost=costs(max_side=6, orient="wide"))
@settings(max_examples=60, deadline=None)
def test_torch_dp_reference_matches_scipy(cost):
    cols, infeasible = assign_dp_reference(cost)
    assert not infeasible.any()
    check_matching(cost, cols)


@needs_interpreter
@given(cost=costs(max_side=5, max_batch=5, orient="wide"))
@settings(max_examples=60, deadline=None)
def test_triton_dp_matches_scipy_and_reference(cost):
    from geosteer.kernels.assign import assign_dp_triton

    cols, infeasible = assign_dp_triton(cost)
    assert not infeasible.any()
    check_matching(cost, cols)
    ref_cols, _ = assign_dp_reference(cost)
    assert torch.equal(cols, ref_cols)  # same sweep order and tie rule


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_dp_block_edges_and_infeasible_flag(dtype):
    from geosteer.kernels.assign import _TILE, assign_dp_triton

    g = torch.Generator().manual_seed(1)
    rows, cols = 6, 7
    block = _TILE >> rows  # problems per program
    cost = torch.randint(0, 4, (block + 3, rows, cols), generator=g).to(dtype)  # two programs, ties
    cost[block + 1, :, :] = INF  # infeasible in the second program
    got, infeasible = assign_dp_triton(cost)
    ref, ref_infeasible = assign_dp_reference(cost)
    assert infeasible.tolist() == ref_infeasible.tolist() == [b == block + 1 for b in range(block + 3)]
    ok = ~infeasible
    assert torch.equal(got[ok], ref[ok])
    check_matching(cost[ok], got[ok])


HAS_NVIDIA_BACKEND = HAS_TRITON and importlib.util.find_spec("triton.backends.nvidia") is not None

# Compiles the kernel for a real GPU (sm_90, PTX and cubin through Triton's
# bundled ptxas) without one, so a kernel that only works in the interpreter
# fails on CPU CI. A subprocess, because TRITON_INTERPRET=1 is set here.
_AOT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from geosteer.kernels.assign import _assign_dp_kernel
for W, fp64 in [(1, False), (4, False), (6, True)]:
    sig = {"cost_ptr": "*fp64" if fp64 else "*fp32", "choice_ptr": "*i8", "out_ptr": "*i64", "infeasible_ptr": "*i8",
           "num_problems": "i32", "num_cols": "i32", "W": "constexpr", "S": "constexpr", "BLOCK_B": "constexpr"}
    src = ASTSource(fn=_assign_dp_kernel, signature=sig, constexprs={"W": W, "S": 1 << W, "BLOCK_B": 1024 >> W})
    assert "ld.global" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
print("compiled")
"""


@pytest.mark.skipif(not HAS_NVIDIA_BACKEND, reason="needs triton's NVIDIA backend")
def test_triton_dp_compiles_for_sm90_without_a_gpu():
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@needs_numba
def test_numba_threads_agree_and_report_first_failure(monkeypatch):
    from geosteer.cpu_kernels import assign as _assign_numba

    g = torch.Generator().manual_seed(2)
    cost = torch.rand(301, 5, 9, generator=g, dtype=torch.float64)
    one, status, _ = _assign_numba.solve(cost.numpy(), 1)
    monkeypatch.setattr(_assign_numba, "PARALLEL_MIN_WORK", 1)
    three, status3, _ = _assign_numba.solve(cost.numpy(), 3)
    assert status == status3 == _assign_numba.OK and np.array_equal(one, three)
    cost[250, 2] = INF  # row 2 forbidden everywhere: the third chunk fails...
    cost[120, :, 4:] = INF  # ...and the second fails first: five rows, four columns
    _, status, bad = _assign_numba.solve(cost.numpy(), 3)
    assert (status, bad) == (_assign_numba.INFEASIBLE, 120)


def test_unmatched_rows_and_orientation():
    cost = torch.tensor([[[5.0, 1.0], [1.0, 5.0], [9.0, 8.0]]])  # W=3 > T=2
    assert batch_linear_assignment(cost).tolist() == [[1, 0, -1]]
    assert batch_linear_assignment(cost.transpose(1, 2)).tolist() == [[1, 0]]
    assert batch_linear_assignment(cost, maximize=True).tolist() == [[-1, 1, 0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_promoted(dtype):
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(20, 4, 6, generator=g).to(dtype)
    got = batch_linear_assignment(cost)
    assert torch.equal(got, batch_linear_assignment(cost.float()))
    check_matching(cost.float(), got)


def test_non_contiguous_and_grad_inputs():
    g = torch.Generator().manual_seed(4)
    base = torch.rand(6, 8, 5, generator=g, requires_grad=True)
    view = base.transpose(1, 2)  # [6, 5, 8], not contiguous
    check_matching(view.detach(), batch_linear_assignment(view))


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)])
@pytest.mark.parametrize("no_numba", [False, True])
def test_empty_shapes(shape, no_numba):
    out = batch_linear_assignment(torch.zeros(shape), backend="torch" if no_numba else "auto")
    assert out.shape == shape[:2] and out.dtype == torch.long and (out == -1).all()


# --------------------------------------------------------------------------
# Errors


def _paths():
    return ["numba", "scipy"] if HAS_NUMBA else ["scipy"]


@pytest.fixture(params=_paths())
def cpu_path(request):
    """The backend that takes each CPU solver path: numba ("auto") and SciPy ("torch")."""
    return "auto" if request.param == "numba" else "torch"


@pytest.mark.parametrize("bad", [float("nan"), -INF])
@pytest.mark.parametrize("solver", ["auto", "tla"])
def test_nan_and_minus_inf_are_invalid(bad, cpu_path, solver):
    cost = torch.rand(3, 2, 3)
    cost[2, 1, 0] = bad
    with pytest.raises(ValueError, match="contains invalid numeric entries"):  # SciPy's wording
        assign(cost, cpu_path, solver)


def test_invalid_entries_win_over_an_earlier_infeasible_problem(cpu_path):
    cost = torch.rand(4, 2, 2)
    cost[0, 0] = INF  # problem 0 infeasible
    cost[3, 1, 1] = float("nan")  # problem 3 invalid
    with pytest.raises(ValueError, match="invalid numeric entries"):
        batch_linear_assignment(cost, backend=cpu_path)


def test_plus_inf_is_invalid_when_maximising_and_minus_inf_is_forbidden():
    with pytest.raises(ValueError, match="invalid numeric entries"):
        batch_linear_assignment(torch.tensor([[[1.0, INF], [2.0, 3.0]]]), maximize=True)
    cost = torch.tensor([[[9.0, -INF, 1.0], [-INF, 1.0, 7.0]]])  # 9 + 7 avoids both forbidden pairs
    assert batch_linear_assignment(cost, maximize=True).tolist() == [[0, 2]]
    cost[0, 0, 0] = -INF
    assert batch_linear_assignment(cost, maximize=True).tolist() == [[2, 1]]


@pytest.mark.parametrize("shape", [(2, 2, 3), (2, 3, 2)])
def test_infeasible_raises(shape, cpu_path):
    cost = torch.rand(*shape)
    cost[1, :, 0] = INF
    cost[1, 0, :] = INF  # problem 1: row 0 (and column 0) forbidden everywhere
    with pytest.raises(ValueError, match="cost matrix is infeasible"):  # SciPy's wording
        batch_linear_assignment(cost, backend=cpu_path)
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        batch_linear_assignment(-cost, maximize=True, backend=cpu_path)  # -inf forbidden when maximising


def test_infeasible_raises_on_the_torch_dp():
    cost = torch.rand(3, 2, 4)
    cost[2, :, 1:] = INF  # two rows, one usable column
    cols, infeasible = assign_dp_reference(cost)
    assert infeasible.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="infeasible"):
        assign_mod._raise_if_any(infeasible, 2)


def test_bad_types_shapes_and_backend():
    with pytest.raises(TypeError, match=r"cost must be a torch.Tensor .*torch.from_numpy"):
        batch_linear_assignment(np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="cost must be a torch.Tensor"):
        batch_linear_assignment([[[1.0]]])
    with pytest.raises(TypeError, match="cost must be a real .* got torch.complex64"):
        batch_linear_assignment(torch.ones(2, 2, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="cost must be a dense"):
        batch_linear_assignment(torch.ones(2, 2, 2).to_sparse())
    for shape in [(2, 2), (1, 2, 2, 2), (3,)]:
        with pytest.raises(ValueError, match=r"cost must have shape \[B, W, T\] \(expected a matrix"):
            batch_linear_assignment(torch.ones(shape))
    with pytest.raises(ValueError, match="backend"):
        batch_linear_assignment(torch.ones(1, 2, 2), backend="cuda")


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("maximize", [False, True])
def test_integer_and_bool_costs_are_solved_like_scipy(dtype, maximize, cpu_path):
    """SciPy (and torch-linear-assignment) take integer / bool costs; here in float64, exact below 2^53."""
    g = torch.Generator().manual_seed(8)
    high = 2 if dtype == torch.bool else 100
    cost = torch.randint(0, high, (6, 3, 5), generator=g).to(dtype)
    if dtype == torch.int64:
        cost = cost * 2**40 + 1  # float32 would round these to ties
    got = batch_linear_assignment(cost, maximize=maximize, backend=cpu_path)
    check_matching(cost.double(), got, maximize)
    tall = batch_linear_assignment(cost.transpose(1, 2), maximize=maximize, backend=cpu_path)
    check_matching(cost.transpose(1, 2).double(), tall, maximize)


def test_odd_strides_expanded_and_sliced(cpu_path):
    g = torch.Generator().manual_seed(9)
    row = torch.rand(1, 3, 5, generator=g)
    for cost in [row.expand(4, 3, 5), torch.rand(1, 1, 1, generator=g).expand(2, 3, 4), row[:, ::2, 1::2],
                 torch.rand(5, 7, 4, generator=g, dtype=torch.float64).permute(2, 0, 1)]:
        check_matching(cost, batch_linear_assignment(cost, backend=cpu_path))
        check_matching(cost, batch_linear_assignment(cost, maximize=True, backend=cpu_path), maximize=True)


def test_grad_inputs_when_maximising():
    cost = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(10), requires_grad=True)
    got = batch_linear_assignment(cost, maximize=True)
    assert not got.requires_grad
    check_matching(cost.detach(), got, maximize=True)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_shapes_maximise_and_integer(shape):
    for cost in [torch.zeros(shape), torch.zeros(shape, dtype=torch.long)]:
        out = batch_linear_assignment(cost, maximize=True)
        assert out.shape == shape[:2] and out.dtype == torch.long and (out == -1).all()


# --------------------------------------------------------------------------
# torch-linear-assignment's contract: [B, W] int64 column per row, -1 when
# W > T, on the input's device; the same matching as its solver.


@pytest.mark.parametrize("shape", [(5, 3, 7), (5, 7, 3), (4, 6, 6), (1, 1, 1), (3, 9, 1)])
def test_same_as_torch_linear_assignment(shape):
    tla = pytest.importorskip("torch_linear_assignment")
    cost = torch.rand(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)  # one optimum
    want = tla.batch_linear_assignment(cost)
    for backend in ("auto", "torch"):
        got = batch_linear_assignment(cost, backend=backend)
        assert got.dtype == want.dtype == torch.long and got.shape == want.shape == shape[:2]
        assert torch.equal(got, want)
        assert ((got == -1).sum(1) == max(0, shape[1] - shape[2])).all()
        rows, cols = tla.assignment_to_indices(got)  # SciPy's format, per problem
        for b in range(shape[0]):
            want_rows, want_cols = linear_sum_assignment(cost[b].numpy())
            assert rows[b].tolist() == want_rows.tolist() and cols[b].tolist() == want_cols.tolist()


def test_same_as_torch_linear_assignment_on_integer_costs():
    tla = pytest.importorskip("torch_linear_assignment")
    cost = torch.randint(0, 50, (8, 4, 6), generator=torch.Generator().manual_seed(12))
    got, want = batch_linear_assignment(cost), tla.batch_linear_assignment(cost)
    assert got.dtype == want.dtype == torch.long and got.shape == want.shape
    check_matching(cost.double(), got)
    check_matching(cost.double(), want)


# --------------------------------------------------------------------------
# torch.library and torch.compile


@pytest.mark.parametrize(
    "cost",
    [torch.rand(5, 4, 7), torch.rand(3, 6, 2, dtype=torch.float64), torch.rand(0, 3, 3), torch.rand(2, 1, 1),
     torch.randint(0, 9, (3, 4, 5))],
    ids=["wide", "tall_fp64", "empty", "one", "int64"],
)
def test_opcheck(cost):
    torch.library.opcheck(torch.ops.geosteer.assign.default, (cost, "auto"))


def test_compile_fullgraph_matches_eager():
    def matched_cost(cost: torch.Tensor) -> torch.Tensor:
        cols = assign(cost * 2.0, "auto")
        return cost.gather(2, cols.clamp_min(0)[..., None]).squeeze(-1).sum(-1)

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(16, 4, 9, generator=g)
    compiled = torch.compile(matched_cost, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(cost), matched_cost(cost))
    maximised = torch.compile(lambda c: batch_linear_assignment(c, maximize=True), fullgraph=True, backend="aot_eager")
    assert torch.equal(maximised(cost), batch_linear_assignment(cost, maximize=True))


def test_public_names():
    assert geosteer.batch_linear_assignment is batch_linear_assignment
    assert torch.ops.geosteer.assign.default is not None


# --------------------------------------------------------------------------
# The CUDA routing rule (CUDA_ROUTES), run here on CPU tensors with the device query faked


@pytest.mark.parametrize("impl, rows, capability, backend, route", [
    pytest.param("triton", 4, (9, 0), "auto", "triton_dp", marks=needs_interpreter),
    ("triton", 7, (9, 0), "auto", "tla"),
    ("triton", 7, (7, 5), "auto", "cpu"),  # torch-linear-assignment's kernel needs 8.0: the reference's route
    ("torch", 6, (9, 0), "torch", "torch_dp"),
    ("torch", 7, (9, 0), "torch", "cpu"),
])
def test_cuda_routes_run_the_documented_solver(monkeypatch, impl, rows, capability, backend, route):
    """min(W, T) <= 6: a subset DP (Triton or torch); above: torch-linear-assignment's kernel (>= 8.0) or the CPU."""
    from geosteer.ops import dispatch

    ran = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            ran.append(name)
            return fn(*args, **kwargs)
        return wrapped

    spied = [("tla", assign_mod, "_solve_tla"), ("torch_dp", assign_mod, "_dp_chunked"), ("cpu", assign_mod, "_solve_cpu")]
    if HAS_TRITON:
        from geosteer.kernels import assign as triton_assign

        spied.append(("triton_dp", triton_assign, "assign_dp_triton"))
    for name, module, attr in spied:
        monkeypatch.setattr(module, attr, spy(name, getattr(module, attr)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(dispatch, "_warned", set())
    pytest.importorskip("torch_linear_assignment")
    cost = torch.rand(5, rows, rows + 2, generator=torch.Generator().manual_seed(rows))
    if capability < (8, 0):
        with pytest.warns(RuntimeWarning, match="needs capability >= 8.0"):
            cols = assign_mod._solve_cuda(cost, backend, impl)
        with pytest.raises(assign_mod.BackendUnavailable, match="backend='triton' cannot run"):
            assign_mod._solve_cuda(cost, "triton", impl)
    else:
        cols = assign_mod._solve_cuda(cost, backend, impl)
    assert ran[0] == route
    check_matching(cost, cols)


# --------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@needs_cuda
@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
@pytest.mark.parametrize("shape", [(300, 4, 16), (70, 16, 5), (40, 10, 10), (9, 7, 3)])
def test_cuda_backends_match_scipy(backend, shape):
    g = torch.Generator().manual_seed(6)
    cost = torch.randint(0, 5, shape, generator=g).float()
    cost[:, 0, -1] = INF
    got = batch_linear_assignment(cost.cuda(), backend=backend)
    assert got.is_cuda
    check_matching(cost, got.cpu())


@needs_cuda
def test_cuda_triton_dp_matches_reference_and_errors():
    from geosteer.kernels.assign import assign_dp_triton

    g = torch.Generator().manual_seed(7)
    cost = torch.randint(0, 3, (2_000, 5, 8), generator=g).float().cuda()
    cols, infeasible = assign_dp_triton(cost)
    ref, _ = assign_dp_reference(cost)
    assert not infeasible.any() and torch.equal(cols, ref)
    cost[1_999, :, :] = INF
    with pytest.raises(ValueError, match="infeasible"):
        batch_linear_assignment(cost, backend="triton")
    cost[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="invalid numeric entries"):
        batch_linear_assignment(cost)


@needs_cuda
@pytest.mark.parametrize("shape", [(64, 3, 7), (64, 7, 3), (16, 12, 9), (8, 9, 12)])
def test_cuda_same_as_torch_linear_assignment(shape):
    tla = pytest.importorskip("torch_linear_assignment")
    cost = torch.rand(shape, generator=torch.Generator().manual_seed(13)).cuda()
    want = tla.batch_linear_assignment(cost)
    for backend in ("auto", "torch"):
        got = batch_linear_assignment(cost, backend=backend)
        assert got.device == cost.device and got.dtype == torch.long and got.shape == shape[:2]
        assert torch.equal(got, want)
    for other in (cost.half(), (cost * 100).long()):  # promoted on the GPU: float32, float64
        got = batch_linear_assignment(other)
        assert got.device == cost.device and got.dtype == torch.long
        check_matching(other.double().cpu(), got.cpu())
    with pytest.raises(ValueError, match="contains invalid numeric entries"):
        batch_linear_assignment(torch.where(cost > 0.99, float("nan"), cost))
