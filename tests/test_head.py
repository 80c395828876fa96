"""The head's method on planted problems (DESIGN §1) and its invariances."""

from __future__ import annotations

import pytest
import torch

import geosteer
from geosteer import GeoSteerHead, HeadConfig
from geosteer.stages.steer import orthogonal_directions
from planted import binding_problem, cluster_problem, unit


def random_parts_problem(seed: int = 0, num_queries: int = 12, num_items: int = 80, dim: int = 32, m: int = 3, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    return dict(
        query=unit(torch.randn(num_queries, dim, generator=g)),
        gallery=unit(torch.randn(num_items, dim, generator=g)),
        query_parts=unit(torch.randn(num_queries, m, dim, generator=g)),
        gallery_parts=unit(torch.randn(num_items, n, dim, generator=g)),
    )


def top1_rate(result, targets) -> float:
    return (result.indices[:, 0] == targets).float().mean().item()


def test_lambda_alpha_zero_is_plain_cosine_top_k():
    data = random_parts_problem()
    expected = (data["query"] @ data["gallery"].T).topk(10, dim=1)
    for kwargs in ({}, {"query_parts": data["query_parts"], "gallery_parts": data["gallery_parts"]}):
        result = GeoSteerHead(k=10, lam=0.0, alpha=0.0)(data["query"], data["gallery"], **kwargs)
        assert torch.equal(result.indices, expected.indices)
        torch.testing.assert_close(result.scores, expected.values)
        torch.testing.assert_close(result.first_stage_scores, expected.values)
        assert torch.all(result.alignment == 0)


def test_result_shapes_and_order():
    data = random_parts_problem()
    result = GeoSteerHead(k=7, lam=0.5)(**data)
    assert result.indices.shape == result.scores.shape == (12, 7)
    assert result.indices.dtype == torch.long and result.scores.dtype == torch.float32
    assert result.assignment.shape == (12, 7, 3)
    assert torch.all(result.scores[:, :-1] >= result.scores[:, 1:])
    fused = 0.5 * result.first_stage_scores + 0.5 * result.alignment
    torch.testing.assert_close(result.scores, fused)
    # Each query's candidates are distinct gallery ids.
    assert all(len(set(row.tolist())) == 7 for row in result.indices)


def test_first_stage_rank_recovers_the_cosine_top_k():
    data = random_parts_problem(num_items=60)
    result = GeoSteerHead(k=9, lam=0.7)(**data)
    expected = (data["query"] @ data["gallery"].T).topk(9, dim=1)  # computed apart from the head
    assert result.first_stage_rank.dtype == torch.long and result.first_stage_rank.shape == (12, 9)
    by_cosine = result.first_stage_rank.argsort(dim=1)
    assert torch.equal(result.indices.gather(1, by_cosine), expected.indices)
    torch.testing.assert_close(result.first_stage_scores.gather(1, by_cosine), expected.values)
    assert not torch.equal(result.first_stage_rank, torch.arange(9).expand(12, 9))  # re-ranking moved something


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binding_rerank_fixes_what_cosine_cannot(seed):
    problem = binding_problem(seed=seed)
    cosine = GeoSteerHead(k=10, lam=0.0)(problem.query, problem.gallery)
    head = GeoSteerHead(k=10, lam=0.5)(
        problem.query, problem.gallery, query_parts=problem.query_parts, gallery_parts=problem.gallery_parts
    )
    # Pooled embeddings of a scene and its twin coincide: cosine is a coin flip between them.
    assert 0.25 <= top1_rate(cosine, problem.targets) <= 0.75
    assert top1_rate(head, problem.targets) >= 0.95
    # The target's parts match one-to-one; the twin's only half-way.
    assert torch.all(head.alignment[:, 0] > 0.95)


def test_neighbourhood_mode_demotes_confuser_edges():
    problem = cluster_problem()
    own = torch.arange(problem.query.shape[0])
    cosine = GeoSteerHead(k=12, lam=0.0)(problem.query, problem.gallery)
    assert (problem.edge_of[cosine.indices[:, 0]] == own).float().mean() >= 0.9
    head = GeoSteerHead(k=12, lam=0.5, neighbors=5)
    result = head(problem.query, problem.gallery)
    assert (problem.cluster_of[result.indices[:, 0]] == own).float().mean() >= 0.9
    # A precomputed kNN graph gives the same ranking as the per-call search.
    graph = geosteer.knn_graph(problem.gallery, 8)
    assert graph.shape == (problem.gallery.shape[0], 8)
    assert not torch.any(graph == torch.arange(problem.gallery.shape[0])[:, None])
    with_graph = head(problem.query, problem.gallery, gallery_neighbors=graph)
    assert torch.equal(with_graph.indices, result.indices)


def steering_problem(seed: int = 0, num_queries: int = 20, dim: int = 48, per_side: int = 6):
    """q sits between a positive and a negative direction; the gallery has items on both sides."""
    g = torch.Generator().manual_seed(seed)
    queries, positives, negatives, gallery, side = [], [], [], [], []
    for _ in range(num_queries):
        q = unit(torch.randn(dim, generator=g))
        basis = torch.linalg.qr(torch.cat([q[:, None], torch.randn(dim, 2, generator=g)], dim=1)).Q
        p_dir, u_dir = basis[:, 1], basis[:, 2]
        queries.append(q)
        positives.append(unit(q + p_dir))
        negatives.append(unit(q + u_dir))
        for sign, direction in ((1, p_dir), (-1, u_dir)):
            for _ in range(per_side):
                gallery.append(unit(q + 0.6 * direction + 0.35 * unit(torch.randn(dim, generator=g))))
                side.append(sign)
    return (
        torch.stack(queries), torch.stack(gallery), torch.stack(positives)[:, None], torch.stack(negatives)[:, None],
        torch.tensor(side),
    )


def test_steering_moves_ranking_toward_positives_and_away_from_negatives():
    query, gallery, positives, negatives, side = steering_problem()
    cosine = GeoSteerHead(k=12, lam=0.0)(query, gallery)
    steered = GeoSteerHead(k=12, lam=0.0, alpha=0.5, neighbors=3)(query, gallery, positives=positives, negatives=negatives)
    before = (side[cosine.indices[:, :5]] == 1).float().mean()
    after = (side[steered.indices[:, :5]] == 1).float().mean()
    assert before < 0.7
    assert after >= 0.95
    # Scores move: positive-side items gain on negative-side ones.
    gain = steered.steered_scores - steered.first_stage_scores
    is_pos = side[steered.indices] == 1
    assert gain[is_pos].mean() > gain[~is_pos].mean() + 0.05


def test_confuser_penalty_demotes_items_closer_to_a_negative():
    query, gallery, positives, negatives, side = steering_problem(seed=1)
    result = GeoSteerHead(k=12, lam=0.0, beta=2.0)(query, gallery, negatives=negatives)
    assert (side[result.indices[:, :5]] == 1).float().mean() >= 0.9


def test_steering_with_identical_anchors_changes_nothing():
    query, gallery, positives, _, _ = steering_problem()
    cosine = GeoSteerHead(k=12, lam=0.0)(query, gallery)
    same = GeoSteerHead(k=12, lam=0.0, alpha=0.5)(query, gallery, positives=positives, negatives=positives)
    assert torch.equal(same.indices, cosine.indices)
    torch.testing.assert_close(same.scores, cosine.scores)


def test_directions_are_orthonormal_and_orthogonal_to_query():
    g = torch.Generator().manual_seed(3)
    query = unit(torch.randn(5, 16, generator=g))
    raw = torch.randn(5, 4, 16, generator=g)
    valid = torch.ones(5, 4, dtype=torch.bool)
    valid[0, 2] = False
    dirs = orthogonal_directions(query, raw, valid)
    gram = dirs @ dirs.transpose(1, 2)
    expected = torch.diag_embed(valid.float())
    torch.testing.assert_close(gram, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close((dirs * query[:, None]).sum(-1), torch.zeros(5, 4), atol=1e-5, rtol=0)


def test_padded_parts_never_match():
    problem = binding_problem(num_queries=20, seed=4)
    q_parts, g_parts = problem.query_parts, problem.gallery_parts
    num_queries, num_items = q_parts.shape[0], g_parts.shape[0]
    # Padding that would match perfectly if it were used: a gallery part as the
    # query's padding row, the query's own parts as the gallery's padding.
    q_pad = torch.cat([q_parts, g_parts[problem.twins][:, :1]], dim=1)
    q_mask = torch.tensor([True, True, False]).expand(num_queries, 3)
    g_pad = torch.cat([g_parts, q_parts[torch.arange(num_items) % num_queries]], dim=1)
    g_mask = torch.tensor([True, True, False, False]).expand(num_items, 4)
    head = GeoSteerHead(k=10, lam=0.7)
    plain = head(problem.query, problem.gallery, query_parts=q_parts, gallery_parts=g_parts)
    padded = head(
        problem.query, problem.gallery, query_parts=q_pad, query_parts_mask=q_mask,
        gallery_parts=g_pad, gallery_parts_mask=g_mask,
    )
    assert torch.equal(padded.indices, plain.indices)
    torch.testing.assert_close(padded.alignment, plain.alignment)
    assert torch.all(padded.assignment[..., 2] == -1)  # the padded query part
    assert torch.all(padded.assignment < 2)  # never a padded region


def test_hungarian_one_to_one_differs_from_per_part_max():
    dim = 16
    g = torch.Generator().manual_seed(5)
    red_pentagon, other, filler = unit(torch.randn(3, dim, generator=g))
    query = unit(red_pentagon)[None]
    query_parts = torch.stack([red_pentagon, red_pentagon])[None]  # "two red pentagons"
    gallery = unit(torch.stack([red_pentagon + 0.01 * other, red_pentagon + 0.02 * other]))
    gallery_parts = torch.stack([
        torch.stack([red_pentagon, other]),  # holds only one red pentagon
        torch.stack([red_pentagon, red_pentagon]),  # holds two
    ])
    kwargs = dict(query_parts=query_parts, gallery_parts=gallery_parts)
    hung = GeoSteerHead(k=2, lam=1.0, matching="hungarian")(query, gallery, **kwargs)
    best = GeoSteerHead(k=2, lam=1.0, matching="max")(query, gallery, **kwargs)
    align_h = dict(zip(hung.indices[0].tolist(), hung.alignment[0].tolist()))
    align_m = dict(zip(best.indices[0].tolist(), best.alignment[0].tolist()))
    assert align_m[0] == pytest.approx(1.0, abs=1e-5) and align_m[1] == pytest.approx(1.0, abs=1e-5)
    assert align_h[1] == pytest.approx(1.0, abs=1e-5)
    assert align_h[0] < 0.75
    assert hung.indices[0, 0] == 1
    # One region answered both parts under "max"; one-to-one forbids it.
    assert best.assignment[0][best.indices[0] == 0].tolist() == [[0, 0]]


def test_structure_term_prefers_the_right_layout():
    dim = 16
    g = torch.Generator().manual_seed(6)
    a, b = unit(torch.randn(2, dim, generator=g))
    query = unit(a + b)[None]
    query_parts = torch.stack([a, b])[None]
    gallery = unit(torch.stack([a + b, a + b + 0.001 * torch.randn(dim, generator=g)]))
    gallery_parts = torch.stack([torch.stack([a, b]), torch.stack([a, b])])
    left, right = torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([50.0, 0.0, 60.0, 10.0])
    boxes = torch.stack([torch.stack([right, left]), torch.stack([left, right])])  # only item 1 has a left of b
    relations = torch.tensor([[[0, 1, geosteer.RELATIONS.index("left_of")]]])
    result = GeoSteerHead(k=2, lam=0.5, gamma=0.5)(
        query, gallery, query_parts=query_parts, gallery_parts=gallery_parts,
        query_relations=relations, gallery_part_boxes=boxes,
    )
    assert result.indices[0].tolist() == [1, 0]
    assert result.structure[0].tolist() == [1.0, 0.0]
    # Padding rows (i < 0) are ignored; "right_of" flips the answer.
    relations2 = torch.tensor([[[0, 1, geosteer.RELATIONS.index("right_of")], [-1, -1, -1]]])
    result2 = GeoSteerHead(k=2, lam=0.5, gamma=0.5)(
        query, gallery, query_parts=query_parts, gallery_parts=gallery_parts,
        query_relations=relations2, gallery_part_boxes=boxes,
    )
    assert result2.indices[0].tolist() == [0, 1]


def test_permuted_gallery_gives_the_same_ranking():
    data = random_parts_problem(seed=7)
    perm = torch.randperm(data["gallery"].shape[0], generator=torch.Generator().manual_seed(1))
    for head in (GeoSteerHead(k=8, lam=0.5), GeoSteerHead(k=8, lam=0.5, mode="neighbourhood", neighbors=3)):
        base = head(**data)
        permuted = head(
            data["query"], data["gallery"][perm], query_parts=data["query_parts"], gallery_parts=data["gallery_parts"][perm]
        )
        assert torch.equal(perm[permuted.indices], base.indices)
        torch.testing.assert_close(permuted.scores, base.scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    problem = binding_problem(seed=2)
    kwargs = dict(query_parts=problem.query_parts, gallery_parts=problem.gallery_parts)
    head = GeoSteerHead(k=10, lam=0.5)
    ref = head(problem.query, problem.gallery, **kwargs)
    low = head(
        problem.query.to(dtype), problem.gallery.to(dtype),
        **{k: v.to(dtype) for k, v in kwargs.items()},
    )
    assert low.scores.dtype == torch.float32 and low.indices.dtype == torch.long
    assert top1_rate(low, problem.targets) >= 0.95
    tol = 1e-5 if dtype == torch.float64 else 2e-2
    # Lower ranks may swap near-ties in half precision; the best answer's score may not move.
    torch.testing.assert_close(low.scores[:, 0], ref.scores[:, 0], atol=tol, rtol=0)
    if dtype == torch.float64:
        assert torch.equal(low.indices, ref.indices)


def test_external_first_stage_matches_exact_first_stage():
    data = random_parts_problem(seed=8)
    head = GeoSteerHead(k=6, lam=0.5)
    exact = head(**data)
    wide = (data["query"] @ data["gallery"].T).topk(15, dim=1)
    shuffled = torch.randperm(15, generator=torch.Generator().manual_seed(2))  # external order need not be sorted
    external = head(**data, first_stage=(wide.values[:, shuffled], wide.indices[:, shuffled].int()))
    assert torch.equal(external.indices, exact.indices)
    torch.testing.assert_close(external.scores, exact.scores)


def test_first_stage_chunking_does_not_change_results():
    data = random_parts_problem(seed=9)
    big = GeoSteerHead(k=5, lam=0.5)(**data)
    small = GeoSteerHead(k=5, lam=0.5, chunk_elements=100)(**data)  # one query row per chunk
    assert torch.equal(big.indices, small.indices)
    torch.testing.assert_close(big.scores, small.scores)


def test_config_presets_and_overrides():
    head = GeoSteerHead(HeadConfig(k=9, lam=0.3), neighbors=4)
    assert head.config.k == 9 and head.config.lam == 0.3 and head.config.neighbors == 4
    assert geosteer.get_config("cosine").lam == 0.0
    assert geosteer.get_config("default", k=20).k == 20
    assert "lam=0.3" in repr(head)
    with pytest.raises(ValueError, match="unknown preset"):
        geosteer.get_config("nope")
    with pytest.raises(TypeError, match="config"):
        GeoSteerHead("default")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("k", 0, "k must be"),
        ("neighbors", 0, "neighbors must be"),
        ("lam", 1.5, "lam must lie"),
        ("alpha", -1.0, "alpha must be"),
        ("gamma", -0.1, "gamma must be"),
        ("mode", "grid", "mode must be"),
        ("matching", "greedy", "matching must be"),
        ("backend", "cuda", "backend must be"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**{field: value})


def test_config_refuses_wrong_types_with_type_error():
    # Every field: tests/test_validation.py::test_every_config_field_names_itself_on_a_wrong_type.
    with pytest.raises(TypeError, match="k must be an int"):
        HeadConfig(k=2.5)


def test_k_above_n_compiles_to_one_graph_and_stays_plain_cosine():
    """K = min(k, N) under torch.compile(fullgraph=True): one graph, equal to eager and to plain cosine."""
    from torch._inductor.compile_fx import compile_fx

    torch._dynamo.reset()
    data = random_parts_problem(seed=3, num_items=20)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    try:
        for head in (GeoSteerHead(k=100, lam=0.0), GeoSteerHead(k=100, lam=0.5)):
            compiled = torch.compile(head, fullgraph=True, backend=backend)
            got, want = compiled(**data), head(**data)
            assert got.indices.shape == (12, 20)
            assert torch.equal(got.indices, want.indices)
            torch.testing.assert_close(got.scores, want.scores)
        assert len(graphs) == 2
        expected = (data["query"] @ data["gallery"].T).sort(dim=1, descending=True)
        cosine = GeoSteerHead(k=100, lam=0.0, alpha=0.0, beta=0.0, gamma=0.0)(data["query"], data["gallery"])
        assert torch.equal(cosine.indices, expected.indices)
        torch.testing.assert_close(cosine.scores, expected.values)
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------- the head's boundary: typed sides, stage hook, knobs


def test_typed_sides_keywords_and_mappings_are_one_call():
    data = random_parts_problem(seed=4)
    queries = geosteer.QuerySide(data["query"], parts=data["query_parts"])
    gallery = geosteer.GallerySide(data["gallery"], parts=data["gallery_parts"])
    head = GeoSteerHead(k=8, lam=0.6)
    keyword = head(data["query"], data["gallery"], query_parts=data["query_parts"], gallery_parts=data["gallery_parts"])
    for result in (head(queries, gallery), head(**queries, **gallery), head(queries, data["gallery"], gallery_parts=data["gallery_parts"])):
        assert torch.equal(result.indices, keyword.indices) and torch.equal(result.scores, keyword.scores)
    assert sorted(queries.keys()) == ["query", "query_parts"]
    with pytest.raises(ValueError, match="query is a QuerySide; pass query_parts inside it"):
        head(queries, gallery, query_parts=data["query_parts"])


def test_stage_hook_sees_every_stage_a_call_runs_in_order():
    import contextlib

    data = random_parts_problem(seed=5)
    seen: list[str] = []

    @contextlib.contextmanager
    def hook(name):
        seen.append(name)
        yield

    boxes = torch.rand(data["gallery"].shape[0], data["gallery_parts"].shape[1], 4)
    boxes[..., 2:] += boxes[..., :2]
    relations = torch.tensor([[[0, 1, 0]]]).expand(data["query"].shape[0], 1, 3).contiguous()
    negatives = unit(torch.randn(data["query"].shape[0], 3, data["query"].shape[1], generator=torch.Generator().manual_seed(1)))
    head = GeoSteerHead(k=8, lam=0.5, alpha=0.3, gamma=0.2, stage_hook=hook)
    result = head(data["query"], data["gallery"], query_parts=data["query_parts"], gallery_parts=data["gallery_parts"],
                  negatives=negatives, query_relations=relations, gallery_part_boxes=boxes)
    assert seen == list(geosteer.STAGES)
    plain = GeoSteerHead(head.config)(data["query"], data["gallery"], query_parts=data["query_parts"],
                                      gallery_parts=data["gallery_parts"], negatives=negatives,
                                      query_relations=relations, gallery_part_boxes=boxes)
    assert torch.equal(result.indices, plain.indices)  # the hook observes, it changes nothing
    seen.clear()
    GeoSteerHead(k=8, lam=0.0, stage_hook=hook)(data["query"], data["gallery"])
    assert seen == ["validate", "first_stage", "fuse"]
    with pytest.raises(TypeError, match="stage_hook"):
        GeoSteerHead(stage_hook="time")


@pytest.mark.parametrize("design", ["near", "margin", "text", "margin+text"])
def test_steer_design_is_a_config_knob(design):
    """Each design moves the scores its own way; the head reads it from its config, nothing else."""
    data = random_parts_problem(seed=6)
    negatives = unit(torch.randn(data["query"].shape[0], 3, data["query"].shape[1], generator=torch.Generator().manual_seed(2)))
    runs = {d: GeoSteerHead(k=10, lam=0.0, alpha=0.5, steer_design=d)(data["query"], data["gallery"], negatives=negatives)
            for d in ("near", "margin", "text", "margin+text")}
    mine = runs[design].steered_scores.sort(dim=1).values
    others = [r.steered_scores.sort(dim=1).values for d, r in runs.items() if d != design]
    assert all(not torch.allclose(mine, o) for o in others)
    with pytest.raises(ValueError, match="steer_design"):
        HeadConfig(steer_design="mean")


def test_solver_tla_gives_the_same_alignment():
    data = random_parts_problem(seed=7)
    ours = GeoSteerHead(k=10, lam=0.5)(data["query"], data["gallery"], query_parts=data["query_parts"], gallery_parts=data["gallery_parts"])
    tla = GeoSteerHead(k=10, lam=0.5, solver="tla")(data["query"], data["gallery"], query_parts=data["query_parts"], gallery_parts=data["gallery_parts"])
    torch.testing.assert_close(tla.alignment, ours.alignment)  # exact solvers: the same optimum
    assert torch.equal(tla.indices, ours.indices)
    with pytest.raises(ValueError, match="solver"):
        HeadConfig(solver="lapjv")
