"""Compact region vectors end to end: `geosteer.quantize`, the head and `score_pairs` on float16 / int8 galleries.

The independent computation each compact result is held to: the same head
on the float32 gallery those rows stand for (`dequantize_rows` for int8,
`.float()` for float16), built here outside the head. Rankings must be the
same and scores equal to float32 rounding. The kernels themselves are
tested in tests/test_part_cost_compact.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.compile_fx import compile_fx

from geosteer import GallerySide, GeoSteerHead, QuerySide, get_config
from geosteer.inputs import map_tensors
from geosteer.ops import checks
from geosteer.pairs import score_pairs
from geosteer.quantize import COMPACT_DTYPES, INT8_LEVELS, compact_parts, dequantize_rows, quantize_rows

Q, N, M, NR, D = 6, 50, 3, 7, 48


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.fixture
def sides(rng) -> tuple[QuerySide, GallerySide]:
    """Random unit embeddings, ragged part sets, negatives, relations and boxes that make R vary."""
    query_parts_mask = torch.ones(Q, M, dtype=torch.bool)
    query_parts_mask[0, 2] = query_parts_mask[3, 1:] = False
    gallery_parts_mask = torch.ones(N, NR, dtype=torch.bool)
    gallery_parts_mask[::3, 4:] = False
    corner = torch.rand(N, NR, 2, generator=rng) * 200
    boxes = torch.cat([corner, corner + 10 + 30 * torch.rand(N, NR, 2, generator=rng)], dim=-1)
    relations = torch.tensor([[[0, 1, 0], [1, 2, 2]]] * Q)
    queries = QuerySide(_unit(rng, Q, D), parts=_unit(rng, Q, M, D), parts_mask=query_parts_mask,
                        negatives=_unit(rng, Q, M, D), relations=relations)
    gallery = GallerySide(_unit(rng, N, D), parts=_unit(rng, N, NR, D), parts_mask=gallery_parts_mask, part_boxes=boxes)
    return queries, gallery


def compact_sides(gallery: GallerySide, dtype: torch.dtype) -> tuple[GallerySide, GallerySide]:
    """(the gallery with compact parts, the gallery with the float32 parts they stand for)."""
    rows, scale = compact_parts(gallery.parts, dtype)
    oracle = dequantize_rows(rows, scale) if scale is not None else rows.float()
    as_stored = GallerySide(gallery.embeddings, parts=rows, parts_mask=gallery.parts_mask,
                            part_boxes=gallery.part_boxes, parts_scale=scale)
    as_float = GallerySide(gallery.embeddings, parts=oracle, parts_mask=gallery.parts_mask, part_boxes=gallery.part_boxes)
    return as_stored, as_float


CONFIGS = {
    "default": get_config("default", k=15),
    "relations": get_config("relations", k=15),
    "max": get_config("default", k=15, matching="max"),
    "steer": get_config("steer", k=15),  # β on regions with λ = 0: the candidates' rows checked by check_rows
    "rerank+beta+delta": get_config("default", k=15, beta=2.0, delta=0.7),
    "torch": get_config("default", k=15, backend="torch"),
}
DTYPES = {"int8": torch.int8, "float16": torch.float16}


# --- quantize_rows ------------------------------------------------------------------


def test_quantize_rows_is_symmetric_per_row_and_within_half_a_step(rng):
    x = _unit(rng, 5, 4, 33)
    x[1, 2] = 0.0  # a padding row
    x[2, 0] = F.normalize(torch.tensor([1.0] + [1e-3] * 32), dim=0)  # one dominant entry
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and q.shape == x.shape and scale.dtype == torch.float32 and scale.shape == (5, 4)
    torch.testing.assert_close(scale, x.abs().amax(dim=-1) / INT8_LEVELS, atol=0, rtol=0)
    assert q.abs().amax(dim=-1)[scale > 0].eq(INT8_LEVELS).all()  # the largest entry takes the top level
    assert scale[1, 2] == 0 and not q[1, 2].any()
    err = (dequantize_rows(q, scale) - x).abs()
    assert (err <= scale[..., None] / 2 * (1 + 1e-5)).all()
    assert torch.equal(quantize_rows(dequantize_rows(q, scale))[0], q)  # a fixed point
    # Chunked like any other input: a half input, several chunks, the same codes as one chunk of float32.
    many = _unit(rng, 3000, 1, 8).half()
    import geosteer.quantize as quant

    old, quant._CHUNK_ELEMENTS = quant._CHUNK_ELEMENTS, 1000
    try:
        assert torch.equal(quantize_rows(many)[0], (q_all := quantize_rows(many.float()))[0])
    finally:
        quant._CHUNK_ELEMENTS = old
    assert q_all[1].shape == (3000, 1)


def test_quantize_and_compact_refuse_bad_input():
    with pytest.raises(TypeError, match="floating"):
        quantize_rows(torch.ones(3, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_rows(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="float16 or torch.int8"):
        compact_parts(torch.ones(2, 3), torch.bfloat16)
    with pytest.raises(ValueError, match=r"scale must have shape \[2\]"):
        dequantize_rows(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(3))
    assert COMPACT_DTYPES == (torch.float16, torch.int8)


def test_unit_tolerance_never_refuses_a_quantised_unit_row_and_refuses_a_long_one(rng):
    """The int8 bound (sqrt(D) * scale / 2 + 1e-3) holds for dense, spiky and sparse unit rows alike.

    It is a worst case (every entry off by half a step), so it is as wide as
    the row's scale: dense rows (scale ~1e-3 at D = 512) are refused 2% long,
    a sparse row (a few large entries) only further out; every kind 1.5x long.
    """
    from geosteer.ops.checks import unit_tolerance

    def refused(rows):
        q, scale = quantize_rows(rows)
        return (dequantize_rows(q, scale).norm(dim=-1) - 1).abs() > unit_tolerance(torch.int8, rows.shape[-1], scale)

    dense = _unit(rng, 400, 512)
    spiky = F.normalize(torch.randn(400, 512, generator=rng) * (torch.rand(400, 512, generator=rng) > 0.99) * 50
                        + torch.randn(400, 512, generator=rng), dim=-1)
    sparse = F.normalize(torch.randn(400, 512, generator=rng) * (torch.rand(400, 512, generator=rng) > 0.95), dim=-1)
    for rows in (dense, spiky, sparse, _unit(rng, 400, 7)):
        assert not refused(rows).any()
        assert refused(rows * 1.5).all() and refused(rows / 1.5).all()
    assert refused(dense * 1.02).all()
    assert unit_tolerance(torch.float16, 512) == 2e-3


# --- the head and score_pairs ------------------------------------------------------------


@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("name", CONFIGS)
def test_head_on_compact_regions_ranks_as_on_the_float32_regions_they_stand_for(sides, name, kind, monkeypatch):
    queries, gallery = sides
    cfg = CONFIGS[name]
    stored, as_float = compact_sides(gallery, DTYPES[kind])
    got = GeoSteerHead(cfg)(queries, stored)
    # The float32 rows int8 stands for are unit only to int8's error, which is
    # more than float32's tolerance: the oracle call accepts them as int8 does.
    monkeypatch.setitem(checks.UNIT_TOLERANCE, torch.float32, 0.05)
    want = GeoSteerHead(cfg)(queries, as_float)
    monkeypatch.undo()
    assert torch.equal(got.indices, want.indices)
    for field in ("scores", "first_stage_scores", "steered_scores", "alignment", "structure", "steering"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), atol=2e-6, rtol=0, msg=field)
    assert torch.equal(got.assignment, want.assignment)
    if cfg.lam > 0:
        assert got.alignment.abs().sum() > 0
    # The keyword call is the same call; score_pairs gives the head's numbers for its pairs.
    kw = GeoSteerHead(cfg)(queries.embeddings, stored.embeddings, **{k: v for k, v in queries.as_kwargs().items() if k != "query"},
                           **{k: v for k, v in stored.as_kwargs().items() if k != "gallery"})
    assert torch.equal(kw.indices, got.indices) and torch.equal(kw.scores, got.scores)
    pairs = score_pairs(queries, stored, cfg, ids=got.indices)
    torch.testing.assert_close(pairs.scores, got.scores, atol=1e-6, rtol=1e-6)


def test_the_gallery_side_carries_the_scale_through_row_slices(sides):
    _, gallery = sides
    stored, _ = compact_sides(gallery, torch.int8)
    assert "gallery_parts_scale" in stored.as_kwargs()
    shard = map_tensors(stored, lambda t: t[10:20])  # what the sharded gallery does
    assert torch.equal(shard.parts_scale, stored.parts_scale[10:20]) and shard.parts.dtype == torch.int8


def test_the_head_refuses_bad_compact_regions(sides):
    queries, gallery = sides
    stored, _ = compact_sides(gallery, torch.int8)
    head = GeoSteerHead(k=10)
    call = lambda **g: head(queries, GallerySide(gallery.embeddings, **g))  # noqa: E731
    rows, scale, mask = stored.parts, stored.parts_scale, stored.parts_mask
    with pytest.raises(ValueError, match=r"int8 gallery_parts need gallery_parts_scale \[N, n\] float32"):
        call(parts=rows, parts_mask=mask)
    with pytest.raises(ValueError, match="gallery_parts_scale is for int8 gallery_parts; gallery_parts are torch.float16"):
        call(parts=rows.half(), parts_mask=mask, parts_scale=scale)
    with pytest.raises(ValueError, match="gallery_parts_scale was given without gallery_parts"):
        GeoSteerHead(k=10, lam=0.0)(queries, GallerySide(gallery.embeddings, parts_scale=scale))
    with pytest.raises(ValueError, match=r"gallery_parts_scale must be float32 \[50, 7\], got torch.float16"):
        call(parts=rows, parts_mask=mask, parts_scale=scale.half())
    with pytest.raises(ValueError, match=r"gallery_parts_scale must have shape \[N, n\]"):
        call(parts=rows, parts_mask=mask, parts_scale=scale[None])
    with pytest.raises(TypeError, match="gallery_parts has dtype torch.bfloat16 but query has torch.float32; .*int8 with gallery_parts_scale"):
        call(parts=gallery.parts.bfloat16(), parts_mask=mask)
    with pytest.raises(TypeError, match="gallery_parts must be float16/bfloat16/float32/float64, or store them compact"):
        call(parts=rows.to(torch.int16), parts_mask=mask)
    # Values, in the candidates' rows: a row quantised from a long row, a NaN scale.
    ids = head(queries, gallery).indices
    long_scale = scale.clone()
    long_scale[ids[2, 3]] *= 1.5
    with pytest.raises(ValueError, match=r"gallery_parts rows must be L2-normalised \(norms .* to 1.50"):
        call(parts=rows, parts_mask=mask, parts_scale=long_scale)
    nan_scale = scale.clone()
    nan_scale[ids[2, 3], 0] = float("nan")
    with pytest.raises(ValueError, match="gallery_parts_scale contains NaN or inf"):
        call(parts=rows, parts_mask=mask, parts_scale=nan_scale)
    for cfg in (CONFIGS["steer"], get_config("default", k=10, backend="torch")):  # check_rows; the reference
        with pytest.raises(ValueError, match="gallery_parts rows must be L2-normalised"):
            GeoSteerHead(cfg)(queries, GallerySide(gallery.embeddings, parts=rows, parts_mask=mask,
                                                   part_boxes=gallery.part_boxes, parts_scale=long_scale))


class _GraphCounter:
    """A torch.compile backend: inductor, recording every graph it is given."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return compile_fx(gm, example_inputs)


def test_compiled_head_on_int8_regions_is_one_graph_equal_to_eager(sides):
    """fullgraph=True with re-ranking and the δ contrast on int8 regions (part_cost reads them twice)."""
    torch._dynamo.reset()
    try:
        queries, gallery = sides
        stored, _ = compact_sides(gallery, torch.int8)
        head = GeoSteerHead(CONFIGS["rerank+beta+delta"])
        counter = _GraphCounter()
        compiled = torch.compile(head, fullgraph=True, backend=counter)
        got, want = compiled(queries, stored), head(queries, stored)
        assert len(counter.graphs) == 1
        assert torch.equal(got.indices, want.indices) and torch.equal(got.assignment, want.assignment)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=1e-5)
        ops = {str(n.target) for gm in counter.graphs for n in gm.graph.nodes if n.op == "call_function"}
        assert any("geosteer.part_cost" in op for op in ops)
        bad = stored.parts_scale.clone()
        bad[want.indices[0, 0]] = float("nan")
        with pytest.raises(ValueError, match="gallery_parts_scale contains NaN or inf"):
            compiled(queries, GallerySide(stored.embeddings, parts=stored.parts, parts_mask=stored.parts_mask,
                                          part_boxes=stored.part_boxes, parts_scale=bad))
    finally:
        torch._dynamo.reset()
