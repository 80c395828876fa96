"""`geosteer.pairs.score_pairs`: the head's per-candidate score for given pairs, no first stage, no sorting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosteer import GallerySide, GeoSteerHead, HeadConfig, QuerySide, get_config
from geosteer.pairs import PairScores, score_pairs

Q, N, M, NR, D = 6, 40, 3, 7, 24


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.fixture
def sides(rng) -> tuple[QuerySide, GallerySide]:
    """Random unit embeddings, ragged part sets, relations and boxes that make R vary."""
    query_parts_mask = torch.ones(Q, M, dtype=torch.bool)
    query_parts_mask[0, 2] = query_parts_mask[3, 1:] = False
    gallery_parts_mask = torch.ones(N, NR, dtype=torch.bool)
    gallery_parts_mask[::3, 4:] = False
    corner = torch.rand(N, NR, 2, generator=rng) * 200
    boxes = torch.cat([corner, corner + 10 + 30 * torch.rand(N, NR, 2, generator=rng)], dim=-1)
    relations = torch.tensor([[[0, 1, 0], [1, 2, 2]]] * Q)
    relations[3] = torch.tensor([[-1, 0, 0], [-1, 0, 0]])  # padding only (one valid part)
    queries = QuerySide(_unit(rng, Q, D), parts=_unit(rng, Q, M, D), parts_mask=query_parts_mask,
                        negatives=_unit(rng, Q, M, D), relations=relations)
    gallery = GallerySide(_unit(rng, N, D), parts=_unit(rng, N, NR, D), parts_mask=gallery_parts_mask, part_boxes=boxes)
    return queries, gallery


CONFIGS = {
    "default": get_config("default", k=15),
    "relations": get_config("relations", k=15),
    "max": get_config("default", k=15, matching="max"),
    "steer": get_config("steer", k=15),  # β on regions, λ = 0
    "rerank+beta": get_config("default", k=15, beta=2.0),
    "delta": get_config("default", k=15, delta=0.7),  # the δ contrast on regions
    "torch": get_config("default", k=15, backend="torch"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_pairs_from_a_head_call_reproduce_the_heads_scores(sides, name):
    queries, gallery = sides
    cfg = CONFIGS[name]
    res = GeoSteerHead(cfg)(queries, gallery)
    pairs = score_pairs(queries, gallery, cfg, ids=res.indices)
    assert isinstance(pairs, PairScores) and pairs.scores.shape == res.scores.shape
    for ours, heads in ((pairs.scores, res.scores), (pairs.cosine, res.first_stage_scores),
                        (pairs.steered, res.steered_scores), (pairs.alignment, res.alignment),
                        (pairs.structure, res.structure), (pairs.steering, res.steering)):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, heads, atol=1e-6, rtol=1e-6)
    if cfg.lam > 0:
        assert torch.equal(pairs.assignment, res.assignment)
        assert pairs.structure.any() == (cfg.gamma > 0)  # the boxes make R non-trivial
    # in ids order, nothing is re-sorted: a shuffled ids row gives the shuffled scores
    perm = torch.randperm(res.indices.shape[1], generator=torch.Generator().manual_seed(1))
    shuffled = score_pairs(queries, gallery, cfg, ids=res.indices[:, perm])
    torch.testing.assert_close(shuffled.scores, pairs.scores[:, perm], atol=0, rtol=0)


def test_all_pairs_is_every_candidate_in_gallery_order(sides):
    queries, gallery = sides
    cfg = CONFIGS["relations"]
    res = GeoSteerHead(cfg)(queries, gallery)
    every = score_pairs(queries, gallery, cfg)
    assert every.scores.shape == (Q, N) and every.assignment.shape == (Q, N, M)
    torch.testing.assert_close(every.scores.gather(1, res.indices), res.scores, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(every.cosine, queries.embeddings @ gallery.embeddings.T, atol=1e-6, rtol=1e-6)


def test_keyword_tensors_and_sides_are_one_call(sides):
    queries, gallery = sides
    ids = torch.arange(8).reshape(2, 4).repeat(3, 1)
    whole = score_pairs(queries, gallery, CONFIGS["default"], ids=ids)
    keywords = score_pairs(queries.embeddings, gallery.embeddings, CONFIGS["default"], ids=ids,
                           **{k: v for k, v in queries.as_kwargs().items() if k != "query"},
                           **{k: v for k, v in gallery.as_kwargs().items() if k != "gallery"})
    torch.testing.assert_close(whole.scores, keywords.scores, atol=0, rtol=0)


def test_winoground_layout_two_captions_two_images(sides):
    """Q = 2 captions per example, C = 2 images; repeated ids score the same pair alike."""
    queries, gallery = sides
    ids = torch.tensor([[0, 1], [0, 1], [2, 3], [2, 3], [4, 4], [5, 0]])
    out = score_pairs(queries, gallery, CONFIGS["default"], ids=ids)
    assert out.scores.shape == (6, 2)
    assert out.scores[4, 0] == out.scores[4, 1]
    every = score_pairs(queries, gallery, CONFIGS["default"])
    torch.testing.assert_close(out.scores, every.scores.gather(1, ids), atol=1e-6, rtol=1e-6)


def test_cosine_only_needs_no_parts(rng):
    q, g = _unit(rng, 3, 8), _unit(rng, 5, 8)
    out = score_pairs(q, g, HeadConfig(lam=0.0), ids=torch.tensor([[4], [0], [2]]))
    expected = (q * g[[4, 0, 2]]).sum(-1, keepdim=True)
    torch.testing.assert_close(out.scores, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.cosine, expected, atol=1e-6, rtol=1e-6)
    assert not out.alignment.any() and not out.structure.any() and (out.assignment == -1).all()


def test_pooled_steering_terms_without_part_sets(rng):
    """β and δ without region sets: measured on the pooled embeddings, as in the head."""
    q, g, neg = _unit(rng, 4, 8), _unit(rng, 20, 8), _unit(rng, 4, 2, 8)
    cfg = HeadConfig(k=6, lam=0.0, beta=3.0, delta=0.5)
    res = GeoSteerHead(cfg)(q, g, negatives=neg)
    out = score_pairs(q, g, cfg, ids=res.indices, negatives=neg)
    torch.testing.assert_close(out.scores, res.scores, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.steering, res.steering, atol=1e-6, rtol=1e-6)
    assert (out.steered < out.cosine).any() and out.steering.abs().sum() > 0


def test_float64_inputs(sides):
    queries, gallery = sides
    q64 = QuerySide(queries.embeddings.double(), parts=queries.parts.double(), parts_mask=queries.parts_mask)
    g64 = GallerySide(gallery.embeddings.double(), parts=gallery.parts.double(), parts_mask=gallery.parts_mask)
    cfg = CONFIGS["default"]
    res = GeoSteerHead(cfg)(q64, g64)
    out = score_pairs(q64, g64, cfg, ids=res.indices)
    torch.testing.assert_close(out.scores, res.scores, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("change, error, match", [
    (dict(config="default"), TypeError, "config must be a HeadConfig"),
    (dict(config=HeadConfig(alpha=0.5)), ValueError, "config.alpha=0.5: the query move .* no pool"),
    (dict(config=HeadConfig(mode="neighbourhood")), ValueError, "mode='neighbourhood' .* no pool"),
    (dict(ids=torch.zeros(Q, 2)), TypeError, "ids must be an int64"),
    (dict(ids=torch.zeros(Q, dtype=torch.long)), ValueError, r"ids must have shape \[Q, C\]"),
    (dict(ids=torch.zeros(Q + 1, 2, dtype=torch.long)), ValueError, r"ids must have shape \[Q=6, C\]"),
    (dict(ids=torch.zeros(Q, 0, dtype=torch.long)), ValueError, "C >= 1"),
    (dict(ids=torch.full((Q, 2), N, dtype=torch.long)), ValueError, r"ids holds ids outside \[0, 40\)"),
    (dict(ids=torch.full((Q, 2), -1, dtype=torch.long)), ValueError, "ids holds ids outside"),
    (dict(ids=[[0, 1]] * Q), TypeError, r"ids must be a torch.Tensor \[Q, C\]"),
    (dict(gallery_parts=None), ValueError, "gallery_parts .* is missing"),
    (dict(query_parts=None), ValueError, "query_parts .* is missing"),
    (dict(query=torch.ones(Q, D)), ValueError, "query rows must be L2-normalised"),
    (dict(gallery_part_boxes=torch.zeros(N, NR + 1, 4)), ValueError, "gallery_part_boxes must be float"),
    (dict(config=get_config("steer"), negatives=None), ValueError, "beta=8.0 .*steer away from negatives"),
])
def test_bad_input_names_the_argument(sides, change, error, match):
    queries, gallery = sides
    call = dict(query=queries.embeddings, gallery=gallery.embeddings, config=CONFIGS["relations"],
                ids=torch.zeros(Q, 2, dtype=torch.long), query_parts=queries.parts, query_parts_mask=queries.parts_mask,
                gallery_parts=gallery.parts, gallery_parts_mask=gallery.parts_mask, negatives=queries.negatives,
                query_relations=queries.relations, gallery_part_boxes=gallery.part_boxes)
    call.update(change)
    if call["query_parts"] is None:
        call["query_parts_mask"] = None
    if call["gallery_parts"] is None:
        call["gallery_parts_mask"] = None
    with pytest.raises(error, match=match):
        score_pairs(call.pop("query"), call.pop("gallery"), call.pop("config"), **call)


def test_nan_in_a_scored_candidates_parts_is_caught(sides):
    queries, gallery = sides
    parts = gallery.parts.clone()
    parts[7, 0, 0] = float("nan")
    bad = GallerySide(gallery.embeddings, parts=parts, parts_mask=gallery.parts_mask)
    q = QuerySide(queries.embeddings, parts=queries.parts, parts_mask=queries.parts_mask)
    score_pairs(q, bad, CONFIGS["default"], ids=torch.zeros(Q, 1, dtype=torch.long))  # row 7 is never read
    with pytest.raises(ValueError, match="gallery_parts contains NaN or inf entries in the candidates' rows"):
        score_pairs(q, bad, CONFIGS["default"], ids=torch.full((Q, 1), 7, dtype=torch.long))



@pytest.mark.parametrize("name", ["default", "steer"])  # re-ranking (part_cost checks) and β alone (check_rows)
def test_an_unnormalised_part_of_a_scored_candidate_is_refused(sides, name):
    queries, gallery = sides
    parts = gallery.parts.clone()
    parts[7, 0] *= 3.0  # row 0 is valid in every item
    bad = GallerySide(gallery.embeddings, parts=parts, parts_mask=gallery.parts_mask, part_boxes=gallery.part_boxes)
    score_pairs(queries, bad, CONFIGS[name], ids=torch.zeros(Q, 1, dtype=torch.long))  # row 7 is never read
    with pytest.raises(ValueError, match=r"gallery_parts rows must be L2-normalised \(norms 1.000000 to 3.00"):
        score_pairs(queries, bad, CONFIGS[name], ids=torch.full((Q, 1), 7, dtype=torch.long))

def _by_hand(queries, gallery, ids, s0):
    """Loops over (query, candidate): alignment by SciPy's assignment, penalty and contrast on regions and pooled."""
    from scipy.optimize import linear_sum_assignment

    pos, neg = queries.parts.double(), queries.negatives.double()  # one negative per part: the parts are the positives
    out = {k: torch.zeros(ids.shape, dtype=torch.float64) for k in ("align", "pen", "con", "pooled_pen", "pooled_con")}
    cols = torch.full((*ids.shape, M), -1)
    for q in range(ids.shape[0]):
        valid_parts = queries.parts_mask[q].nonzero()[:, 0]
        for c, i in enumerate(ids[q].tolist()):
            valid_regions = gallery.parts_mask[i].nonzero()[:, 0]
            regions = gallery.parts[i, valid_regions].double()
            sim = (queries.parts[q, valid_parts].double() @ regions.T).numpy()
            rows, picked = linear_sum_assignment(sim, maximize=True)
            out["align"][q, c] = sim[rows, picked].sum() / len(valid_parts)
            cols[q, c, valid_parts[rows]] = valid_regions[picked]
            best_p, best_u = (regions @ pos[q].T).amax(0), (regions @ neg[q].T).amax(0)  # [M]
            out["pen"][q, c] = (best_u - best_p).clamp_min(0).max()
            out["con"][q, c] = (best_p - best_u).mean()
            item = gallery.embeddings[i].double()
            out["pooled_pen"][q, c] = ((neg[q] @ item).max() - s0[q, c].double()).clamp_min(0)
            out["pooled_con"][q, c] = (pos[q] @ item - neg[q] @ item).mean()
    return out, cols


def test_candidate_terms_match_a_computation_by_hand(sides):
    """The one per-candidate function (the head's, score_pairs', the sharded head's) against loops and SciPy."""
    from geosteer.stages.candidates import candidate_terms, moved_scores
    from geosteer.stages.steer import steering_anchors

    queries, gallery = sides
    ids = torch.randint(0, N, (Q, 5), generator=torch.Generator().manual_seed(3))
    s0 = (queries.embeddings[:, None, :] * gallery.embeddings[ids]).sum(-1)
    anchors = steering_anchors(queries.embeddings, queries.parts, None, queries.negatives, None)
    want, want_cols = _by_hand(queries, gallery, ids, s0)
    close = lambda got, key: torch.testing.assert_close(got.double(), want[key], atol=1e-5, rtol=0)  # noqa: E731

    cfg = HeadConfig(lam=0.5, beta=2.0, delta=0.5)
    regions = candidate_terms(cfg, queries, gallery, ids, s0, anchors, parts_mode=True, rerank=True)
    for got, key in ((regions.alignment, "align"), (regions.penalty, "pen"), (regions.contrast, "con")):
        close(got, key)
    assert torch.equal(regions.assignment, want_cols) and regions.structure.abs().sum() == 0  # γ = 0
    pooled = candidate_terms(cfg, queries, gallery, ids, s0, anchors, parts_mode=False, rerank=False)
    close(pooled.penalty, "pooled_pen")
    close(pooled.contrast, "pooled_con")
    assert not pooled.alignment.any() and (pooled.assignment == -1).all() and pooled.assignment.shape == (Q, 5, 1)

    # With α > 0 the pooled penalty is the move's: moved_scores takes it, candidate_terms leaves it out.
    moving = cfg.replace(alpha=0.5)
    assert candidate_terms(moving, queries, gallery, ids, s0, anchors, parts_mode=False, rerank=False).penalty is None
    close(candidate_terms(moving, queries, gallery, ids, s0, anchors, parts_mode=True, rerank=False).penalty, "pen")
    pool = torch.arange(N).repeat(Q, 1)[:, :10]
    pool_s0 = queries.embeddings @ gallery.embeddings[:10].T
    moved = moved_scores(moving, queries.embeddings, gallery.embeddings, pool, pool_s0, anchors, 3, False)
    plain = moved_scores(moving.replace(beta=0.0), queries.embeddings, gallery.embeddings, pool, pool_s0, anchors, 3, False)
    gap = ((gallery.embeddings[:10] @ queries.negatives.transpose(1, 2)).amax(-1) - pool_s0).clamp_min(0)  # [Q, 10]
    torch.testing.assert_close(moved, plain - 2.0 * gap, atol=1e-5, rtol=0)
    assert torch.equal(moved_scores(moving, queries.embeddings, gallery.embeddings, pool, pool_s0, anchors, 3, True), plain)

    # Neighbourhood mode: the caller's cost hook, k sets of one each; A = (1/k) Σ over the best matching of 1 - cost.
    cost = torch.tensor([[0.9, 0.1], [0.2, 0.4]]).expand(Q, 5, 2, 2).contiguous()
    hooked = candidate_terms(HeadConfig(lam=0.5), queries, gallery, ids, s0, None, parts_mode=False, rerank=True,
                             neighbourhood_cost=lambda: cost)
    torch.testing.assert_close(hooked.alignment, torch.full((Q, 5), (0.8 + 0.9) / 2))
    assert (hooked.assignment == torch.tensor([1, 0])).all()
    with pytest.raises(ValueError, match="neighbourhood_cost is needed to re-rank without parts_mode"):
        candidate_terms(HeadConfig(lam=0.5), queries, gallery, ids, s0, None, parts_mode=False, rerank=True)

    # Steering without re-ranking reads the candidates' regions: their rows (and only theirs) are checked.
    bad = gallery.parts.clone()
    bad[N - 1, 0] *= 3.0
    broken = GallerySide(gallery.embeddings, parts=bad, parts_mask=gallery.parts_mask)
    assert ids.max() < N - 1
    candidate_terms(cfg, queries, broken, ids, s0, anchors, parts_mode=True, rerank=False)
    with pytest.raises(ValueError, match="gallery_parts rows must be L2-normalised"):
        candidate_terms(cfg, queries, broken, ids.clamp_min(N - 1), s0, anchors, parts_mode=True, rerank=False)


def test_exported_where_the_library_can_reach_it():
    import geosteer.pairs

    assert geosteer.pairs.score_pairs is score_pairs
    assert not any(name.startswith("geosteer.public_benchmarks") or name.startswith("geosteer.geoshapes")
                   for name in _imports(geosteer.pairs.__file__))


def _imports(path: str) -> list[str]:
    import ast

    tree = ast.parse(open(path).read())
    return [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
