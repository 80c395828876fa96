"""torch.library.opcheck on every geosteer:: op (schema, fake kernel, autograd registration, AOT dispatch).

opcheck runs each op for real and under FakeTensor / AOT tracing and
compares; a wrong `register_fake` (shape, dtype, device) or a schema that
lies about mutation fails here before it breaks `torch.compile`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import geosteer  # noqa: F401  (registers the ops)

from markers import needs_cuda


def _unit(*shape, g, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(dtype)


def samples(device: str = "cpu"):
    """(id, op, args) for every geosteer op, with small valid inputs."""
    g = torch.Generator().manual_seed(0)
    query, gallery = _unit(4, 16, g=g), _unit(30, 16, g=g)
    query_parts, gallery_parts = _unit(4, 3, 16, g=g), _unit(30, 5, 16, g=g)
    query_mask = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    gallery_mask = torch.rand(30, 5, generator=g) > 0.3
    gallery_mask[:, 0] = True
    ids = torch.randint(0, 30, (4, 6), generator=g)
    vectors = _unit(4, 2, 16, g=g)
    relations = torch.tensor([[[0, 1, 0], [-1, 0, 0]]] * 4)
    cost = torch.rand(6, 3, 5, generator=g)
    cases = [
        ("first_stage", torch.ops.geosteer.first_stage.default, (query, gallery, 5, 64, "auto")),
        ("first_stage_half", torch.ops.geosteer.first_stage.default, (query.half(), gallery.half(), 3, 1 << 20, "torch")),
        ("first_stage_screen", torch.ops.geosteer.first_stage.default, (query, _unit(80, 16, g=g), 4, 160, "auto", "bf16")),
        ("masked_first_stage", torch.ops.geosteer.masked_first_stage.default, (query, gallery, torch.arange(30) % 3 != 0, 5, 64)),
        ("masked_first_stage_per_query", torch.ops.geosteer.masked_first_stage.default, (query, gallery, gallery_mask[:4, :1].expand(4, 30).contiguous(), 4, 64)),
        ("part_cost", torch.ops.geosteer.part_cost.default, (query_parts, query_mask, ids, gallery_parts, gallery_mask, 7.0, "auto")),
        ("part_cost_half", torch.ops.geosteer.part_cost.default, (query_parts.half(), query_mask, ids[:, :1], gallery_parts.half(), gallery_mask, 7.0, "auto")),
        ("project", torch.ops.geosteer.project.default, (gallery, ids, vectors, "auto")),
        ("project_pool", torch.ops.geosteer.project.default, (gallery, ids, gallery[ids], "torch")),
        ("check_finite", torch.ops.geosteer.check_finite.default, (query, "query")),
        ("check_finite_unit_masked", torch.ops.geosteer.check_finite.default, (query_parts, "query_parts", True, query_mask)),
        ("check_range", torch.ops.geosteer.check_range.default, (gallery_parts[..., :4], "gallery_part_boxes", 2.0, "boxes")),
        ("check_rows", torch.ops.geosteer.check_rows.default, (gallery_parts, gallery_mask, ids, "gallery_parts")),
        ("check_rows_unmasked", torch.ops.geosteer.check_rows.default, (gallery_parts, None, ids, "gallery_parts")),
        ("check_ids_distinct", torch.ops.geosteer.check_ids.default, (ids.sort(dim=1).values[:, :1], 30, "ids", True)),
        ("check_rows_any", torch.ops.geosteer.check_rows_any.default, (gallery_mask, "gallery_parts_mask")),
        ("check_ids", torch.ops.geosteer.check_ids.default, (ids, 30, "ids")),
        ("check_relations", torch.ops.geosteer.check_relations.default, (relations, 3, "query_relations")),
        ("assign", torch.ops.geosteer.assign.default, (cost, "auto")),
        ("assign_tall", torch.ops.geosteer.assign.default, (cost.transpose(1, 2).contiguous(), "torch")),
    ]
    move = lambda a: a.to(device) if isinstance(a, torch.Tensor) else a  # noqa: E731
    return [(name, op, tuple(move(a) for a in args)) for name, op, args in cases]


CPU_CASES = samples("cpu")


def test_every_registered_op_is_covered():
    """A new geosteer op must be added to `samples` (and so to opcheck)."""
    registered = {name.split("::")[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names() if name.startswith("geosteer::")}
    covered = {op._schema.name.split("::")[1] for _, op, _ in CPU_CASES}
    assert registered, "no geosteer ops registered"
    assert registered <= covered, f"ops without an opcheck sample: {sorted(registered - covered)}"


@pytest.mark.parametrize("name, op, args", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_opcheck_cpu(name, op, args):
    torch.library.opcheck(op, args)


@needs_cuda
@pytest.mark.parametrize("name", [c[0] for c in CPU_CASES])
def test_opcheck_cuda(name):
    _, op, args = next(c for c in samples("cuda") if c[0] == name)
    torch.library.opcheck(op, args)
