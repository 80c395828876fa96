"""The FAISS first stage (geosteer.first_stage_faiss) and the head's checks of
an external `first_stage=(scores, ids)` pair.

FAISS tests skip when `faiss` is not importable (it is the optional `faiss`
extra); the head-validation and missing-faiss tests always run.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from geosteer import GeoSteerHead
from geosteer.stages.first_stage_faiss import FaissFirstStage, import_faiss, recall_at_k
from geosteer.ops.first_stage import first_stage_reference

try:
    import faiss  # noqa: F401  (only whether it imports)

    HAS_FAISS = True
except ImportError:
    HAS_FAISS = False

needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (pip install 'geosteer[faiss]')")


def clustered(num_items: int, dim: int, num_queries: int, seed: int = 0):
    """Unit vectors in 20 clusters; queries are noisy copies of gallery items."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(20, dim, generator=g), dim=-1)
    gallery = F.normalize(centres[torch.randint(0, 20, (num_items,), generator=g)] + 0.6 * F.normalize(
        torch.randn(num_items, dim, generator=g), dim=-1), dim=-1)
    picks = torch.randint(0, num_items, (num_queries,), generator=g)
    query = F.normalize(gallery[picks] + 0.3 * F.normalize(torch.randn(num_queries, dim, generator=g), dim=-1), dim=-1)
    return query, gallery


def part_sets(num_queries: int, num_items: int, dim: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    query_parts = F.normalize(torch.randn(num_queries, 2, dim, generator=g), dim=-1)
    gallery_parts = F.normalize(torch.randn(num_items, 5, dim, generator=g), dim=-1)
    return query_parts, gallery_parts


# --------------------------------------------------------------------------
# FAISS first stage


@needs_faiss
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_exhaustive_search_is_exact(kind):
    """Flat, and IVF probing every list, return the exact top-k (ids and scores)."""
    query, gallery = clustered(700, 24, 13)
    index = FaissFirstStage.build(gallery, kind, nlist=8, nprobe=8)
    scores, ids = index.search(query, 17)
    ref_scores, ref_ids = first_stage_reference(query, gallery, 17, 1 << 20)
    assert scores.shape == ids.shape == (13, 17)
    assert scores.dtype == torch.float32 and ids.dtype == torch.long
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    assert recall_at_k(ids, ref_ids) == 1.0
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


@needs_faiss
def test_hnsw_and_partial_ivf_recall():
    """Approximate indexes find most of the exact top-k on clustered data."""
    query, gallery = clustered(2_000, 32, 40)
    _, exact = first_stage_reference(query, gallery, 10, 1 << 20)
    hnsw = FaissFirstStage.build(gallery, "hnsw", hnsw_m=16)
    assert recall_at_k(hnsw.search(query, 10)[1], exact) >= 0.9
    ivf = FaissFirstStage.build(gallery, "ivf", nlist=32, nprobe=4, seed=3)
    assert ivf.timings["train"] >= 0 and ivf.timings["add"] >= 0
    recall = recall_at_k(ivf.search(query, 10)[1], exact)
    assert 0.5 <= recall <= 1.0


@needs_faiss
def test_head_accepts_faiss_candidates():
    """Exact FAISS candidates give the same ranking as the head's own first stage."""
    query, gallery = clustered(500, 16, 9)
    query_parts, gallery_parts = part_sets(9, 500, 16)
    head = GeoSteerHead(k=12)
    index = FaissFirstStage.build(gallery, "flat")
    fs = index.search(query, 20)  # K' > k: the head keeps the best k
    got = head(query, gallery, query_parts=query_parts, gallery_parts=gallery_parts, first_stage=fs)
    ref = head(query, gallery, query_parts=query_parts, gallery_parts=gallery_parts)
    assert torch.equal(got.indices, ref.indices)
    torch.testing.assert_close(got.scores, ref.scores, atol=1e-5, rtol=0)


@needs_faiss
def test_results_follow_the_query_dtype_and_unnormalised_query():
    """fp16 query / gallery and an unnormalised query: scores are cosines, as the head's."""
    query, gallery = clustered(300, 16, 5)
    index = FaissFirstStage.build(gallery.half(), "flat")
    scores, ids = index.search(3.0 * query.half(), 4)
    ref_scores, _ = first_stage_reference(query.half().float(), gallery.half().float(), 4, 1 << 20)
    torch.testing.assert_close(scores, ref_scores, atol=2e-3, rtol=0)
    assert ids.device == query.device


@needs_faiss
def test_too_few_results_names_nprobe():
    """IVF lists smaller than k with nprobe=1: FAISS pads with -1; we refuse and say what to raise."""
    query, gallery = clustered(400, 8, 6)
    index = FaissFirstStage.build(gallery, "ivf", nlist=10, nprobe=1, train_size=400)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(query, 200)


@needs_faiss
def test_bad_arguments():
    query, gallery = clustered(100, 8, 3)
    with pytest.raises(ValueError, match="kind"):
        FaissFirstStage.build(gallery, "lsh")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        FaissFirstStage.build(gallery[0], "flat")
    with pytest.raises(TypeError, match="gallery"):
        FaissFirstStage.build(gallery.tolist(), "flat")
    with pytest.raises(TypeError, match="float"):
        FaissFirstStage.build(gallery.long(), "flat")
    with pytest.raises(ValueError, match="NaN"):
        FaissFirstStage.build(torch.full((10, 8), float("nan")), "flat")
    with pytest.raises(ValueError, match="nlist"):
        FaissFirstStage.build(gallery, "ivf", nlist=0)
    index = FaissFirstStage.build(gallery, "flat")
    with pytest.raises(ValueError, match="k must be"):
        index.search(query, 101)
    with pytest.raises(ValueError, match=r"\[Q, D=8\]"):
        index.search(query[:, :4], 5)
    with pytest.raises(ValueError, match="NaN"):
        index.search(torch.full((2, 8), float("nan")), 5)


def test_missing_faiss_names_the_extra(monkeypatch):
    """Without faiss the error says how to install it (and is an ImportError)."""
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"geosteer\[faiss\]"):
        import_faiss()
    with pytest.raises(ImportError, match="faiss-cpu"):
        FaissFirstStage.build(torch.randn(4, 3), "flat")


def test_recall_at_k():
    exact = torch.tensor([[1, 2, 3], [4, 5, 6]])
    approx = torch.tensor([[3, 9, 1, 7], [8, 9, 10, 11]])
    assert recall_at_k(approx, exact) == pytest.approx(2 / 6)
    assert recall_at_k(exact, exact) == 1.0
    with pytest.raises(ValueError, match="same Q"):
        recall_at_k(approx[:1], exact)


# --------------------------------------------------------------------------
# The head's validation of an external first stage (no faiss needed)


@pytest.fixture
def inputs():
    query, gallery = clustered(60, 8, 4)
    query_parts, gallery_parts = part_sets(4, 60, 8)
    scores, ids = first_stage_reference(query, gallery, 6, 1 << 20)
    return query, gallery, dict(query_parts=query_parts, gallery_parts=gallery_parts), scores, ids


@pytest.mark.parametrize(
    "make_pair, error, match",
    [
        (lambda s, i: s, TypeError, "pair"),  # not a pair
        (lambda s, i: (s, i, i), TypeError, "pair"),
        (lambda s, i: (s, i.float()), TypeError, "int32/int64"),
        (lambda s, i: (s[:, :3], i), ValueError, "must both be"),  # shape mismatch
        (lambda s, i: (s[:2], i[:2]), ValueError, "must both be"),  # wrong Q
        (lambda s, i: (s[:, :4], i[:, :4]), ValueError, "K'=4"),  # fewer than k
        (lambda s, i: (s, torch.where(i == i[0, 0], -1, i)), ValueError, "outside"),  # FAISS -1 padding
        (lambda s, i: (s, i + 60), ValueError, "outside"),  # id >= N
        (lambda s, i: (s.masked_fill(s == s[0, 0], float("nan")), i), ValueError, "NaN"),
        (lambda s, i: (s[0], i[0]), ValueError, r"\[Q, K'\]"),  # rank 1
    ],
)
def test_head_rejects_bad_first_stage(inputs, make_pair, error, match):
    query, gallery, parts, scores, ids = inputs
    head = GeoSteerHead(k=5)
    with pytest.raises(error, match=match):
        head(query, gallery, first_stage=make_pair(scores, ids), **parts)


def test_head_accepts_int32_ids_and_extra_candidates(inputs):
    """int32 ids (FAISS on some builds) and K' > k work, matching the exact first stage."""
    query, gallery, parts, scores, ids = inputs
    head = GeoSteerHead(k=5)
    got = head(query, gallery, first_stage=(scores, ids.int()), **parts)
    ref = head(query, gallery, **parts)
    assert torch.equal(got.indices, ref.indices)
    assert got.indices.dtype == torch.long
