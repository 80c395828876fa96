"""torch.compile(GeoSteerHead, fullgraph=True) on the CPU matches eager.

One compile per head configuration (a few seconds each on 2 cores): parts
mode with masks, neighbourhood mode, steering with the confuser penalty,
and the structure term. Each compiled graph must be a single graph that
calls the geosteer ops as opaque ops (not traced through), and a compiled
head must still raise the head's ValueError on bad values. A last test
compiles the Triton kernels for sm_80 / sm_90 without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.compile_fx import compile_fx

from geosteer import GeoSteerHead

from markers import needs_cuda

Q, N, D, M, NP, U = 5, 60, 24, 3, 4, 2  # queries, gallery, dim, query parts, gallery parts, negatives


def make_inputs(seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    query_parts_mask = torch.rand(Q, M, generator=g) > 0.3
    query_parts_mask[:, 0] = True
    gallery_parts_mask = torch.rand(N, NP, generator=g) > 0.3
    gallery_parts_mask[:, 0] = True
    xy = torch.rand(N, NP, 2, generator=g)
    boxes = torch.cat([xy, xy + 0.1], dim=-1)
    relations = torch.tensor([[0, 1, 0], [1, 2, 2], [-1, 0, 0]]).expand(Q, 3, 3).contiguous()
    inputs = dict(
        query=unit(Q, D),
        gallery=unit(N, D),
        query_parts=unit(Q, M, D),
        query_parts_mask=query_parts_mask,
        gallery_parts=unit(N, NP, D),
        gallery_parts_mask=gallery_parts_mask,
        negatives=unit(Q, U, D),
        negatives_mask=torch.tensor([[True, False]] * (Q - 1) + [[True, True]]),
        query_relations=relations,
        gallery_part_boxes=boxes,
    )
    return {name: t.to(device) for name, t in inputs.items()}


# name -> (head overrides, forward arguments taken from make_inputs, geosteer
# ops the graph must call)
PARTS = ("query_parts", "query_parts_mask", "gallery_parts", "gallery_parts_mask")
BASE_OPS = {"check_finite", "first_stage", "part_cost", "assign"}
SCENARIOS = {
    "parts_masked": (dict(k=12, lam=0.5), PARTS, BASE_OPS | {"check_rows_any"}),
    "neighbourhood": (dict(k=12, neighbors=4, lam=0.6, mode="neighbourhood"), (), BASE_OPS),
    "bf16_screen": (dict(k=12, lam=0.5, screen="bf16"), PARTS, BASE_OPS | {"check_rows_any"}),
    "steer_beta": (
        dict(k=12, neighbors=3, lam=0.5, alpha=0.4, beta=0.3),
        PARTS + ("negatives", "negatives_mask"),
        BASE_OPS | {"check_rows_any", "project"},
    ),
    "steer_delta": (
        dict(k=12, lam=0.5, delta=0.7),
        PARTS + ("negatives", "negatives_mask"),
        BASE_OPS | {"check_rows_any", "project"},
    ),
    "relations": (
        dict(k=12, lam=0.5, gamma=0.5),
        PARTS + ("query_relations", "gallery_part_boxes"),
        BASE_OPS | {"check_rows_any", "check_relations"},
    ),
    # torch-linear-assignment's solver runs inside geosteer::assign: still one graph
    "solver_tla": (dict(k=12, lam=0.5, solver="tla"), PARTS, BASE_OPS | {"check_rows_any"}),
}


class GraphCounter:
    """A torch.compile backend: inductor, recording every graph it is given."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return compile_fx(gm, example_inputs)

    def geosteer_ops(self) -> set[str]:
        return {
            str(node.target).split(".")[1]
            for gm in self.graphs
            for node in gm.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("geosteer.")
        }


def run_both(overrides, keys, device="cpu"):
    head = GeoSteerHead(**overrides)
    inputs = make_inputs(device=device)
    kwargs = {name: inputs[name] for name in keys}
    counter = GraphCounter()
    compiled = torch.compile(head, fullgraph=True, backend=counter)
    got = compiled(inputs["query"], inputs["gallery"], **kwargs)
    want = head(inputs["query"], inputs["gallery"], **kwargs)
    return got, want, counter, compiled, inputs, kwargs


def assert_same(got, want):
    assert torch.equal(got.indices, want.indices)
    for field in ("scores", "first_stage_scores", "steered_scores", "alignment", "structure"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), atol=1e-5, rtol=1e-5, msg=field)
    assert torch.equal(got.assignment, want.assignment)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_compiled_head_matches_eager(scenario):
    overrides, keys, expected_ops = SCENARIOS[scenario]
    got, want, counter, compiled, inputs, kwargs = run_both(overrides, keys)
    assert_same(got, want)
    assert len(counter.graphs) == 1, "fullgraph compile produced more than one graph"
    ops = counter.geosteer_ops()
    assert expected_ops <= ops, f"ops traced through instead of called: {sorted(expected_ops - ops)}"
    assert want.alignment.abs().sum() > 0  # the re-ranking term is live
    if scenario == "relations":
        assert want.structure.abs().sum() > 0
    if scenario == "steer_beta":
        assert not torch.equal(want.steered_scores, want.first_stage_scores)  # steering moved scores
    if scenario == "steer_delta":
        assert want.steering.abs().sum() > 0  # the δ term is live

    # The same compiled graph, new values: still equal to eager, and the
    # value checks still raise (they are ops, so compilation cannot drop them).
    query = F.normalize(inputs["query"] + 0.3 * torch.randn(Q, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert_same(compiled(query, inputs["gallery"], **kwargs), GeoSteerHead(**overrides)(query, inputs["gallery"], **kwargs))
    assert len(counter.graphs) == 1, "new values recompiled the head"
    bad = query.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="query contains NaN"):
        compiled(bad, inputs["gallery"], **kwargs)


def test_compiled_head_takes_the_typed_sides():
    """head(QuerySide, GallerySide) compiles to one graph and equals the keyword call."""
    from geosteer import GallerySide, QuerySide

    inputs = make_inputs()
    queries = QuerySide(inputs["query"], parts=inputs["query_parts"], parts_mask=inputs["query_parts_mask"],
                        relations=inputs["query_relations"])
    gallery = GallerySide(inputs["gallery"], parts=inputs["gallery_parts"], parts_mask=inputs["gallery_parts_mask"],
                          part_boxes=inputs["gallery_part_boxes"])
    head = GeoSteerHead(k=12, lam=0.5, gamma=0.5)
    counter = GraphCounter()
    compiled = torch.compile(head, fullgraph=True, backend=counter)
    got = compiled(queries, gallery)
    want = head(inputs["query"], inputs["gallery"], **{k: inputs[k] for k in PARTS + ("query_relations", "gallery_part_boxes")})
    assert_same(got, want)
    assert len(counter.graphs) == 1


def test_dynamic_compile_is_one_graph_for_every_query_shape():
    """dynamic=True: queries of 6, 4, 2 and 7 parts (2 to 5 relations) share one graph and equal eager.

    Torch specialises sizes 0 and 1, and its duck sizing ties a first call's
    size to any other size equal to it (the relation rows' width 3, Q, n, ...):
    such a size recompiles once, at the next different value, then stays
    dynamic. The first call here has sizes no other dim has; `geosteer serve`
    warms up with 1, 2 and 3 parts to pay those recompiles at start-up.
    """
    head = GeoSteerHead(k=12, lam=0.5, gamma=0.5)
    counter = GraphCounter()
    compiled = torch.compile(head, fullgraph=True, dynamic=True, backend=counter)
    base = make_inputs()
    g = torch.Generator().manual_seed(3)
    n = 8  # gallery parts: more than any m here, as region sets are
    xy = torch.rand(N, n, 2, generator=g)
    gallery = dict(gallery_parts=F.normalize(torch.randn(N, n, D, generator=g), dim=-1),
                   gallery_parts_mask=torch.rand(N, n, generator=g) > 0.2, gallery_part_boxes=torch.cat([xy, xy + 0.1], -1))
    gallery["gallery_parts_mask"][:, 0] = True
    chain = [[0, 1, 0], [1, 2, 2], [2, 3, 1], [3, 4, 3], [4, 5, 0]]
    for m, r in ((6, 2), (4, 3), (2, 4), (7, 5)):
        relations = [row if row[1] < m else [-1, 0, 0] for row in chain[:r]]
        kwargs = dict(gallery, query_parts=F.normalize(torch.randn(Q, m, D, generator=g), dim=-1),
                      query_parts_mask=torch.ones(Q, m, dtype=torch.bool),
                      query_relations=torch.tensor(relations).expand(Q, -1, 3).contiguous())
        assert_same(compiled(base["query"], base["gallery"], **kwargs), head(base["query"], base["gallery"], **kwargs))
    graphs = [gm for gm in counter.graphs if len(gm.graph.nodes)]  # dynamo also hands over an empty wrapper graph
    assert len(graphs) == 1, f"{len(graphs)} graphs: a query shape recompiled or broke the graph"


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_compiled_head_matches_eager_cuda(backend):
    overrides, keys, _ = SCENARIOS["steer_beta"]
    got, want, counter, *_ = run_both(dict(overrides, backend=backend), keys, device="cuda")
    assert got.indices.device.type == "cuda"
    assert_same(got, want)
    assert len(counter.graphs) == 1


# --- the Triton kernels lower to GPU code (no GPU needed) ----------------------

AOT_SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from geosteer.kernels.part_cost import _part_cost_kernel
from geosteer.kernels.project import _project_kernel

KERNELS = {
    _part_cost_kernel: ({"a_ptr": "*{dt}", "a_mask_ptr": "*u8", "ids_ptr": "*i64", "b_ptr": "*{gt}", "b_mask_ptr": "*u8",
                         "b_scale_ptr": "*fp32", "out_ptr": "*fp32", "pad": "fp32"}, {"BLOCK_R": 64, "BLOCK_M": 16}),
    _project_kernel: ({"g_ptr": "*{dt}", "ids_ptr": "*i64", "v_ptr": "*{dt}", "out_ptr": "*fp32"}, {"BLOCK_K": 64, "BLOCK_J": 16}),
}
# (query dtype, gallery dtype): the float galleries, and part_cost's int8 regions
# (compact, with a scale per row) next to fp16 and fp32 queries.
CASES = [("fp16", "fp16"), ("fp32", "fp32"), ("fp16", "i8"), ("fp32", "i8")]
for arch in (80, 90):
    for dt, gt in CASES:
        for fn, (types, blocks) in KERNELS.items():
            if gt == "i8" and fn is not _part_cost_kernel:
                continue
            consts = dict(blocks, BLOCK_D=32 if dt == "fp32" else 64, UPCAST=dt == "fp32")
            if fn is _part_cost_kernel:
                consts["HAS_SCALE"] = gt == "i8"
            sig = {a: "constexpr" if a in consts else types.get(a, "i32").format(dt=dt, gt=gt) for a in fn.arg_names}
            compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32))
            mma = "mma" in compiled.asm["ptx"]
            print(fn.__name__, arch, dt if gt == dt else f"{dt}-{gt}", len(compiled.asm["cubin"]), mma)
'''


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")
def test_triton_kernels_compile_for_sm80_and_sm90():
    """Both kernels lower to cubin for A100 / H100-H200 targets, on the CPU.

    A separate process without TRITON_INTERPRET (tests run with it on, which
    turns every @triton.jit into the interpreter at import). Half inputs must
    reach the tensor cores (an `mma` instruction in the PTX), int8 regions
    with fp16 queries too (the codes are converted to fp16 in registers).
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert len(lines) == 12, proc.stdout
    for name, arch, dtype, cubin_bytes, mma in lines:
        assert int(cubin_bytes) > 0
        if dtype.startswith("fp16"):
            assert mma == "True", f"{name} sm_{arch} fp16 does not use the tensor cores"
