"""Steering toward / away from anchors: the head's δ term, the text-level request, the controllability benchmark."""

import pytest
import torch
import torch.nn.functional as F
from tiny_encoder import TinyEncoder

from geosteer import GallerySide, GeoSteerHead, HeadConfig, QuerySide
from geosteer.index import Indexer
from geosteer.stages.steer import anchor_contrast, anchor_terms

Q, N, M, NR, D, U = 3, 20, 2, 4, 8, 2


def _unit(g, *shape):
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        query=_unit(g, Q, D), gallery=_unit(g, N, D), query_parts=_unit(g, Q, M, D), gallery_parts=_unit(g, N, NR, D),
        gallery_parts_mask=torch.rand(N, NR, generator=g) > 0.3, negatives=_unit(g, Q, U, D),
        positives=_unit(g, Q, U, D), negatives_mask=torch.tensor([[True, True], [True, False], [False, True]]),
    )


def _region_contrast_by_hand(kw, ids):
    """mean over valid j of max_b p_j·b - max_b u_j·b, over each candidate's valid regions."""
    out = torch.zeros(ids.shape)
    for q in range(ids.shape[0]):
        for c, i in enumerate(ids[q].tolist()):
            regions = kw["gallery_parts"][i][kw["gallery_parts_mask"][i]]
            diffs = [float((regions @ kw["positives"][q, j]).max() - (regions @ kw["negatives"][q, j]).max())
                     for j in range(U) if kw["negatives_mask"][q, j]]
            out[q, c] = sum(diffs) / max(1, len(diffs))
    return out


def test_delta_adds_the_per_object_region_contrast_to_the_fused_score():
    kw = _inputs()
    plain = GeoSteerHead(k=N, lam=0.5)(**kw)
    steered = GeoSteerHead(k=N, lam=0.5, delta=0.7)(**kw)
    assert torch.equal(plain.steering, torch.zeros_like(plain.scores))  # δ = 0: no term, nothing read
    want = _region_contrast_by_hand(kw, steered.indices)
    torch.testing.assert_close(steered.steering, want, atol=1e-5, rtol=0)
    # K = N: every candidate is scored with and without δ; the difference is exactly δ·C.
    for q in range(Q):
        before = dict(zip(plain.indices[q].tolist(), plain.scores[q].tolist()))
        for i, s, c in zip(steered.indices[q].tolist(), steered.scores[q].tolist(), steered.steering[q].tolist()):
            assert s == pytest.approx(before[i] + 0.7 * c, abs=1e-5)
    assert not torch.equal(plain.indices, steered.indices)  # it re-ranks


def test_delta_without_region_sets_uses_the_pooled_embedding():
    kw = _inputs()
    kw = {k: v for k, v in kw.items() if not k.startswith(("query_parts", "gallery_parts"))}
    res = GeoSteerHead(k=10, lam=0.0, delta=1.0, mode="neighbourhood")(**kw)
    cands = kw["gallery"][res.indices]  # [Q, K, D]
    pos = torch.einsum("qkd,qjd->qkj", cands, kw["positives"])
    neg = torch.einsum("qkd,qjd->qkj", cands, kw["negatives"])
    torch.testing.assert_close(res.steering, anchor_contrast(pos, neg, kw["negatives_mask"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.scores, res.first_stage_scores + res.steering, atol=1e-5, rtol=0)


def test_anchor_contrast_masks_and_a_shared_positive():
    kw = _inputs()
    ids = torch.arange(N).repeat(Q, 1)
    one = kw["positives"][:, :1]
    unused = torch.zeros(Q, N)  # first_scores: read by the pooled penalty only
    _, got = anchor_terms(one, kw["negatives"], kw["negatives_mask"], ids, kw["gallery"], kw["gallery_parts"],
                          kw["gallery_parts_mask"], unused, False, True)
    kw2 = dict(kw, positives=one.expand(-1, U, -1))
    torch.testing.assert_close(got, _region_contrast_by_hand(kw2, ids), atol=1e-5, rtol=0)
    none_valid = torch.zeros(Q, U, dtype=torch.bool)
    _, zero = anchor_terms(one, kw["negatives"], none_valid, ids, kw["gallery"], None, None, unused, False, True)
    assert torch.equal(zero, torch.zeros(Q, N))


def test_delta_needs_negatives_and_a_finite_value():
    kw = _inputs()
    for key in ("negatives", "negatives_mask", "positives"):
        kw.pop(key)
    with pytest.raises(ValueError, match="delta=0.5"):
        GeoSteerHead(delta=0.5)(**kw)
    with pytest.raises(ValueError, match="delta must be a finite number"):
        HeadConfig(delta=float("nan"))
    with pytest.raises(ValueError, match="delta"):
        HeadConfig(delta=-1.0)
    assert "delta=0.25" in repr(GeoSteerHead(delta=0.25))


def test_delta_rows_of_gallery_parts_are_checked_in_the_candidates():
    kw = _inputs()
    res = GeoSteerHead(k=3, lam=0.0, delta=1.0)(**kw)
    bad = kw["gallery_parts"].clone()
    bad[res.indices[0, 0], 0] *= 3.0
    kw["gallery_parts_mask"] = torch.ones(N, NR, dtype=torch.bool)
    with pytest.raises(ValueError, match="gallery_parts"):
        GeoSteerHead(k=3, lam=0.0, delta=1.0)(**dict(kw, gallery_parts=bad))


def test_steering_request_builds_paired_anchors_from_texts():
    idx = Indexer(TinyEncoder())
    queries = idx.encode_queries(["a star", "a red shape"])
    req = idx.steering_request(queries, toward=["a red star", ["a red pentagon", "a blue circle"]],
                               away=["an orange star", ["a red hexagon", "a purple circle"]])
    assert req.positives.shape == req.negatives.shape == (2, 2, 3)
    assert req.negatives_mask.tolist() == [[True, False], [True, True]]
    assert torch.equal(req.embeddings, queries.embeddings) and torch.equal(req.parts, queries.parts)
    assert queries.negatives is None or not torch.equal(queries.negatives, req.negatives)  # a new QuerySide
    gallery = GallerySide(F.normalize(torch.rand(5, 3), dim=-1))
    GeoSteerHead(k=5, lam=0.0, delta=1.0, mode="neighbourhood")(req, gallery)  # the head takes it as it is


@pytest.mark.parametrize("toward, away, match", [
    ("a red star", ["an orange star"], "toward must be a list"),
    (["a red star", "a"], ["an orange star"], "away must hold one entry per query"),
    (["a red star", ["a", "b"]], ["x", ["y"]], r"toward\[1\] has 2 phrases but away\[1\] has 1"),
    (["a red star", []], ["x", []], r"toward\[1\] must hold at least one"),
    (["a red star", " "], ["x", "y"], r"toward\[1\] must hold at least one"),
    (["a red star", 3], ["x", "y"], r"toward\[1\]"),
])
def test_steering_request_errors_name_the_entry(toward, away, match):
    idx = Indexer(TinyEncoder())
    queries = idx.encode_queries(["a star", "a red shape"])
    with pytest.raises((TypeError, ValueError), match=match):
        idx.steering_request(queries, toward=toward, away=away)
    with pytest.raises(TypeError, match="QuerySide"):
        idx.steering_request(queries.embeddings, toward=["a"], away=["b"])


def test_benchmark_metrics_on_hand_made_rankings():
    from geosteer.geoshapes.steering import ndcg_at, paired, precision_at

    good = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    ranking = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    assert precision_at(ranking, good, 2).tolist() == [0.5, 0.5]
    ndcg = ndcg_at(ranking, good, 3)
    ideal = 1 + 1 / torch.log2(torch.tensor(3.0))
    assert ndcg[0].item() == pytest.approx(float((1 + 1 / torch.log2(torch.tensor(4.0))) / ideal))
    assert ndcg[1].item() == pytest.approx(1.0)
    mean, se = paired(torch.tensor([3.0, 5.0]), torch.tensor([1.0, 1.0]))
    assert (mean, se) == (pytest.approx(3.0), pytest.approx(1.0))


def test_benchmark_requests_and_relevance():
    from geosteer.geoshapes.scenes import Scene, ShapeObject
    from geosteer.geoshapes.steering import Request, all_requests

    r = Request("star", None, "red", "orange")
    assert (r.query, r.toward, r.away, r.words) == ("a star", "a red star", "an orange star", "red, not orange")
    red_star = Scene((ShapeObject("star", "red", 0.3, 0.3, 0.3),))
    red_and_star = Scene((ShapeObject("circle", "red", 0.3, 0.3, 0.3), ShapeObject("star", "blue", 0.7, 0.7, 0.3)))
    assert r.relevant(red_star) and r.satisfied(red_star)
    assert r.relevant(red_and_star) and not r.satisfied(red_and_star)  # red must be bound to the star
    c = Request(None, "red", "pentagon", "hexagon")
    assert (c.query, c.toward, c.away) == ("a red shape", "a red pentagon", "a red hexagon")
    assert len(all_requests()) == 96


def test_controllability_on_a_small_gallery_with_the_demo_model():
    """The benchmark end to end (one seed, 240 scenes): δ on re-ranking lifts P@10 of the request, keeps the query."""
    from geosteer.encoders import load_clip
    from geosteer.geoshapes import steering as st
    from geosteer.geoshapes.index import SplitIndexer

    task = st.build_task(SplitIndexer(load_clip("demo"), families=("masked",)), seed=7, size=240)
    none = st.metrics(st.rank(task, "none", 0.0), task)
    steered = [st.metrics(st.rank(task, "geosteer-rerank+delta", w), task) for w in (0.1, 0.3, 0.5)]
    assert steered[-1]["p10"] >= none["p10"] + 30, (none, steered)
    assert steered[-1]["ndcg10"] >= none["ndcg10"] - 2, (none, steered)
    assert steered[0]["p10"] <= steered[1]["p10"] <= steered[2]["p10"]  # the knob acts monotonically here


def test_anchor_terms_reads_nothing_when_neither_term_is_asked(monkeypatch):
    """The α move alone calls anchor_terms with both terms off: no projection of the regions may run."""
    from geosteer.stages import steer as steer_stage

    kw = _inputs()
    calls = []
    monkeypatch.setattr(steer_stage, "candidate_anchor_sims", lambda *a, **k: calls.append(a))
    ids = torch.arange(N).repeat(Q, 1)
    pos, neg, mask = steer_stage.steering_anchors(kw["query"], None, kw["positives"], kw["negatives"], kw["negatives_mask"])
    assert steer_stage.anchor_terms(pos, neg, mask, ids, kw["gallery"], kw["gallery_parts"], kw["gallery_parts_mask"],
                                    torch.zeros(Q, N), False, False) == (None, None)
    assert calls == []
