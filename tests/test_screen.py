"""The bf16 screen of the first stage: exact results, a sound bound, a fallback.

The screen (geosteer/ops/screen.py) must give the plain first stage's answer:
these tests compare it with a float64 brute force, force its proof to fail
and check the fallback, test the error bound it rests on directly, and pin
the `auto` rule and the gallery cache.
"""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import geosteer
from geosteer import cpu_kernels
from geosteer.ops import screen as screen_mod
from geosteer.ops.first_stage import first_stage, first_stage_reference
from geosteer.ops.screen import gallery_screen, outside_bound, rescore_error, screened_top_k, wants_screen


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def assert_exact_top_k(query, gallery, scores, ids, k, tie=1e-5):
    """`ids`/`scores` are the float64 top-k, except for orderings inside ties."""
    full = query.double() @ gallery.double().t()
    want = full.topk(k + 1, dim=1)
    torch.testing.assert_close(scores.double(), want.values[:, :k], atol=2e-6, rtol=0)
    torch.testing.assert_close(full.gather(1, ids), want.values[:, :k], atol=2e-6, rtol=0)
    # Where the k-th and (k+1)-th scores are apart, the sets must agree.
    clear = (want.values[:, k - 1] - want.values[:, k]) > tie
    same_set = (ids.sort(dim=1).values == want.indices[:, :k].sort(dim=1).values).all(dim=1)
    assert bool(same_set[clear].all())
    assert int(clear.sum()) >= query.shape[0] // 2  # the check above had rows to look at


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_screened_matches_brute_force(dtype):
    query, gallery = unit(40, 64, seed=1, dtype=dtype), unit(4096, 64, seed=2, dtype=dtype)
    scores, ids, stats = screened_top_k(query, gallery, 8, 1 << 16, first_stage_reference)
    assert stats.queries == 40 and stats.fallback == 0 and not stats.gave_up
    assert_exact_top_k(query.float(), gallery.float(), scores, ids, 8)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_op_with_bf16_screen_matches_plain_op():
    query, gallery = unit(33, 48, seed=3), unit(3000, 48, seed=4)
    got = first_stage(query, gallery, 10, 5000, "auto", "bf16")  # chunks of one row
    want = first_stage(query, gallery, 10, 5000, "auto", "off")
    torch.testing.assert_close(got[0], want[0], atol=2e-6, rtol=0)
    assert_exact_top_k(query, gallery, *got, 10)


def test_failed_proof_falls_back_to_the_plain_path():
    # 300 near-copies of the query: the screened K'-th score sits within the
    # bf16 error of the top, so no proof can pass and every row is rescored.
    query = unit(6, 32, seed=5)
    close = F.normalize(query[:, None, :] + 1e-4 * unit(6, 50, 32, seed=6), dim=-1).reshape(300, 32)
    gallery = torch.cat([close, unit(2000, 32, seed=7)])
    scores, ids, stats = screened_top_k(query, gallery, 5, 1 << 20, first_stage_reference)
    assert stats.fallback == 6
    want = first_stage_reference(query, gallery, 5, 1 << 20)
    assert torch.equal(scores, want[0]) and torch.equal(ids, want[1])


def test_gives_up_after_a_chunk_of_failed_proofs():
    query = unit(8, 16, seed=8)
    gallery = torch.cat([F.normalize(query.repeat(40, 1) + 1e-5 * unit(320, 16, seed=9), dim=-1), unit(1000, 16, seed=10)])
    # chunk_elements gives 2-row chunks: the first chunk fails, the rest go plain.
    scores, ids, stats = screened_top_k(query, gallery, 4, 2 * gallery.shape[0], first_stage_reference)
    assert stats.gave_up and stats.fallback == 8
    want = first_stage_reference(query, gallery, 4, 2 * gallery.shape[0])
    assert torch.equal(scores, want[0]) and torch.equal(ids, want[1])


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 300),
    items=st.integers(1, 40),
    rows=st.integers(1, 6),
    q_scale=st.floats(1e-3, 1e3),
    g_scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_bound_covers_every_item(dim, items, rows, q_scale, g_scale, seed):
    # The lemma the screen rests on: an item screened at s̃ has true score at
    # most outside_bound(s̃), for any scales, signs and dimensions.
    gen = torch.Generator().manual_seed(seed)
    query = (torch.randn(rows, dim, generator=gen) * q_scale).float()
    gallery = (torch.randn(items, dim, generator=gen) * g_scale * torch.rand(items, 1, generator=gen)).float()
    screen_mod._GALLERIES.clear()
    screen = gallery_screen(gallery)
    screened = (query.to(torch.bfloat16) @ screen.hi.t()).float()  # [rows, items]
    true = query.double() @ gallery.double().t()
    bound = outside_bound(screened.reshape(-1), query.repeat_interleave(items, dim=0), screen).reshape(rows, items)
    assert bool((true <= bound.double()).all())
    # The float32 re-score error bound holds too.
    rescored = (query[:, None, :] * gallery[None]).sum(-1)
    assert bool(((rescored.double() - true).abs() <= rescore_error(query, screen).double()[:, None]).all())


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "torch"])
def test_rescore_is_within_its_error_bound(compiled):
    if compiled and cpu_kernels.numba_problem() is not None:
        pytest.skip("numba is not installed")
    gen = torch.Generator().manual_seed(21)
    query = torch.randn(7, 300, generator=gen) * 3
    gallery = torch.randn(50, 300, generator=gen) * torch.rand(50, 1, generator=gen)
    ids = torch.randint(0, 50, (7, 20), generator=gen)
    got = screen_mod.rescore(query, gallery, ids, use_numba=compiled)
    true = (query.double()[:, None, :] * gallery.double()[ids]).sum(-1)
    screen_mod._GALLERIES.clear()
    bound = rescore_error(query, gallery_screen(gallery)).double()[:, None]
    assert got.shape == (7, 20) and got.dtype == torch.float32
    assert bool(((got.double() - true).abs() <= bound).all())


def test_cached_gallery_changed_in_place_is_screened_again():
    query, gallery = unit(10, 32, seed=11), unit(2000, 32, seed=12)
    first = first_stage(query, gallery, 5, 1 << 20, "auto", "bf16")
    with torch.no_grad():
        gallery[first[1][:, 0]] *= -1  # every query's best item now points away
    again = first_stage(query, gallery, 5, 1 << 20, "auto", "bf16")
    assert_exact_top_k(query, gallery, *again, 5)
    assert not bool((again[1][:, 0] == first[1][:, 0]).any())


def test_cache_entry_dies_with_its_gallery():
    screen_mod._GALLERIES.clear()
    gallery = unit(500, 16, seed=13)
    gallery_screen(gallery)
    assert len(screen_mod._GALLERIES) == 1
    del gallery
    gc.collect()
    assert len(screen_mod._GALLERIES) == 0


def test_screen_choice(monkeypatch):
    screen_mod._GALLERIES.clear()
    big, few = unit(2048, 512, seed=14), unit(16, 512, seed=15)
    many = unit(128, 512, seed=16)
    assert not wants_screen(few, big, 10, "off")
    assert wants_screen(few, big, 10, "bf16")
    assert not wants_screen(few.double(), big.double(), 10, "bf16")  # float64: the bound is float32's
    assert not wants_screen(few, big[:42], 10, "bf16")  # K' = max(2K, K + 32) = 42 = N: nothing to screen
    monkeypatch.setattr(screen_mod, "native_bf16", lambda: False)
    assert not wants_screen(many, big, 10, "auto")
    monkeypatch.setattr(screen_mod, "native_bf16", lambda: True)
    assert wants_screen(many, big, 10, "auto")  # enough queries to pay for the bf16 copy
    assert not wants_screen(few, big, 10, "auto")  # first sight, few queries: plain
    assert wants_screen(few, big, 10, "auto")  # seen before: worth the copy now
    assert not wants_screen(many, big, 100, "auto")  # N < 16 K'
    assert not wants_screen(many, big[:, :256], 10, "auto")  # gallery under 1M elements
    monkeypatch.setattr(screen_mod, "AUTO_MAX_COPY_BYTES", big.numel() * 2)  # the bf16 copy just fits
    assert wants_screen(many, big, 10, "auto")
    monkeypatch.setattr(screen_mod, "AUTO_MAX_COPY_BYTES", big.numel() * 2 - 2)  # one element over
    assert not wants_screen(many, big, 10, "auto")
    assert wants_screen(many, big, 10, "bf16")  # an explicit choice has no cap
    monkeypatch.setattr(screen_mod, "AUTO_MAX_COPY_BYTES", 4 << 30)
    with torch.inference_mode():
        frozen = big.clone()
    screen_mod._GALLERIES.clear()
    assert not wants_screen(few, frozen, 10, "auto") and not wants_screen(few, frozen, 10, "auto")  # never "seen"
    assert wants_screen(many, frozen, 10, "auto")


def test_rejects_unknown_screen():
    query, gallery = unit(2, 8), unit(20, 8)
    with pytest.raises(ValueError, match="screen"):
        first_stage(query, gallery, 3, 100, "auto", "fp8")
    with pytest.raises(ValueError, match="screen"):
        geosteer.HeadConfig(screen="fp8")


def test_head_with_screen_equals_head_without():
    query, gallery = unit(24, 64, seed=17), unit(5000, 64, seed=18)
    parts = unit(24, 3, 64, seed=19)
    gallery_parts = unit(5000, 4, 64, seed=20)
    kwargs = dict(query_parts=parts, gallery_parts=gallery_parts)
    plain = geosteer.GeoSteerHead(k=10, screen="off")(query, gallery, **kwargs)
    screened = geosteer.GeoSteerHead(k=10, screen="bf16")(query, gallery, **kwargs)
    torch.testing.assert_close(screened.first_stage_scores, plain.first_stage_scores, atol=2e-6, rtol=0)
    torch.testing.assert_close(screened.scores, plain.scores, atol=2e-6, rtol=0)
