"""The per-tensor caches never outlive the content they were made from.

Writes through a tensor's numpy view (`g.numpy()[i] = ...`) or through
`g.data[i] = ...` bump no version counter. These tests write that way after
a head call and check that the bf16 screen copy (geosteer/ops/screen.py) and
the gallery-is-finite flag (geosteer/ops/checks.py) never give a stale
ranking or hide a NaN; then they pin the fingerprint that
`geosteer.ops.tensor_cache.TensorCache` checks on every `get`, and the `auto`
rule that follows from its cost.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosteer import GeoSteerHead
from geosteer.ops import checks, tensor_cache
from geosteer.ops import screen as screen_mod
from geosteer.ops.first_stage import first_stage
from geosteer.ops.screen import gallery_screen, wants_screen
from geosteer.ops.tensor_cache import TensorCache, fingerprint


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def write(via: str, x: torch.Tensor, index, value) -> None:
    """`x[index] = value` without bumping `x._version`."""
    if via == "numpy":
        x.numpy()[index] = value.numpy() if isinstance(value, torch.Tensor) else value
    else:
        x.data[index] = value
    assert x._version == 0


@pytest.fixture
def counted(monkeypatch):
    """Count the fingerprint passes (TensorCache looks `fingerprint` up at call time)."""
    calls = []
    real = tensor_cache.fingerprint

    def counting(x):
        calls.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(tensor_cache, "fingerprint", counting)
    return calls


# ---------------------------------------------------------------- the reported cases


@pytest.mark.parametrize("via", ["numpy", "data"])
def test_row_overwritten_without_a_version_bump_is_ranked(via):
    # After one call the bf16 copy is cached; the row then holding an exact
    # copy of query 0 must come first (before the fix it was missing from
    # the screened top-10: the certificate passed on the stale copy).
    query, gallery = unit(4, 48, seed=1), unit(3000, 48, seed=2)
    screened, plain = GeoSteerHead(k=10, lam=0.0, screen="bf16"), GeoSteerHead(k=10, lam=0.0, screen="off")
    screened(query, gallery)
    write(via, gallery, 123, query[0])
    got, want = screened(query, gallery), plain(query, gallery)
    assert int(got.indices[0, 0]) == 123 and abs(float(got.scores[0, 0]) - 1.0) < 1e-6
    assert torch.equal(got.indices[:, 0], want.indices[:, 0])
    torch.testing.assert_close(got.scores, want.scores, atol=2e-6, rtol=0)


@pytest.mark.parametrize("screen", ["bf16", "off"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("via", ["numpy", "data"])
def test_nan_written_without_a_version_bump_is_caught(via, value, screen):
    # Before the fix the head's "gallery is finite" flag stayed set: the NaN
    # row came back ranked first with score NaN (screen="off").
    query, gallery = unit(4, 48, seed=3), unit(3000, 48, seed=4)
    head = GeoSteerHead(k=10, lam=0.0, screen=screen)
    head(query, gallery)
    write(via, gallery, (7, 5), value)
    with pytest.raises(ValueError, match="gallery contains NaN or inf"):
        head(query, gallery)


def test_the_finite_flag_itself_sees_the_write():
    gallery = unit(300, 16, seed=5)
    checks.check_finite(gallery, "gallery")
    write("numpy", gallery, (299, 0), float("nan"))  # the last, partial block of rows
    with pytest.raises(ValueError, match="gallery contains NaN"):
        checks.check_finite(gallery, "gallery")


def test_the_screen_copy_is_remade_after_a_write():
    gallery = unit(500, 16, seed=6)
    before = gallery_screen(gallery)
    write("numpy", gallery, 42, -gallery[42])
    after = gallery_screen(gallery)
    assert after is not before and torch.equal(after.hi, gallery.to(torch.bfloat16))
    assert gallery_screen(gallery) is after  # unchanged since: the cached entry


def test_first_stage_op_after_a_write_equals_the_plain_op():
    query, gallery = unit(10, 32, seed=7), unit(2000, 32, seed=8)
    first = first_stage(query, gallery, 5, 1 << 20, "auto", "bf16")
    write("numpy", gallery, first[1][:, 0].numpy(), -gallery[first[1][:, 0]])  # each best item now points away
    got = first_stage(query, gallery, 5, 1 << 20, "auto", "bf16")
    want = first_stage(query, gallery, 5, 1 << 20, "auto", "off")
    assert torch.equal(got[1], want[1])
    assert not bool((got[1][:, 0] == first[1][:, 0]).any())


# ---------------------------------------------------------------- cost: one pass per use


def test_a_screened_call_reads_the_gallery_once_to_check_its_copy(counted):
    query, gallery = unit(20, 32, seed=9), unit(2000, 32, seed=10)
    first_stage(query, gallery, 5, 1 << 20, "auto", "bf16")  # makes the copy: get + put share one pass
    assert counted == [(2000, 32)]
    counted.clear()
    first_stage(query, gallery, 5, 1 << 20, "auto", "bf16")
    assert counted == [(2000, 32)]


def test_get_then_put_is_one_pass(counted):
    cache, x = TensorCache(2), unit(130, 4, seed=11)
    assert cache.get(x) is None
    cache.put(x, "v")
    assert cache.get(x) == "v" and len(counted) == 2


def test_auto_does_not_screen_under_16_queries_even_when_cached(monkeypatch):
    # Checking the cached copy reads the float32 gallery once, as the plain
    # matmul does: under 16 queries the screen cannot pay.
    monkeypatch.setattr(screen_mod, "native_bf16", lambda: True)
    big = unit(2048, 512, seed=12)
    gallery_screen(big)
    assert not wants_screen(unit(15, 512, seed=13), big, 10, "auto")
    assert wants_screen(unit(16, 512, seed=13), big, 10, "auto")
    assert wants_screen(unit(1, 512, seed=13), big, 10, "bf16")  # an explicit choice still screens


# ---------------------------------------------------------------- the fingerprint


def changed(x: torch.Tensor, edit) -> bool:
    y = x.clone()
    edit(y)
    assert not torch.equal(x, y)
    return not torch.equal(fingerprint(x), fingerprint(y))


@pytest.mark.parametrize(
    "edit",
    [
        lambda y: y.__setitem__(3, y[3] * -1),  # a sign flip of a row
        lambda y: y.__setitem__((3, 0), torch.nextafter(y[3, 0], torch.tensor(9.0)) + 1e-6),  # one element, 1e-6
        lambda y: y.__setitem__([3, 4], y[[4, 3]]),  # a swap inside one block of 64 rows
        lambda y: y.__setitem__([3, 200], y[[200, 3]]),  # a swap across blocks
        lambda y: y.__setitem__(299, y[0]),  # a copy into the last, partial block
        lambda y: y.__setitem__(10, 0.0),  # zeroing
        lambda y: y.__setitem__((10, [0, 1]), y[10, [1, 0]]),  # two columns swapped in a row
        lambda y: y.mul_(1 + 2**-20),  # a global rescale
    ],
    ids=["sign", "element", "swap-in-block", "swap-across", "copy-tail", "zero", "columns", "rescale"],
)
def test_fingerprint_sees_writes(edit):
    assert changed(unit(300, 24, seed=14), edit)


@pytest.mark.parametrize("row", [0, 130, 299])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_content_has_no_fingerprint(row, value):
    x = unit(300, 8, seed=15)
    x[row, 3] = value
    assert fingerprint(x) is None
    cache = TensorCache(2)
    cache.put(x, "clean")  # never stored: a NaN tensor can never be a hit
    assert len(cache) == 0 and cache.get(x) is None


def test_huge_finite_values_that_overflow_are_not_cached():
    x = torch.full((128, 4), 3e38)
    assert fingerprint(x) is None
    cache = TensorCache(2)
    cache.put(x, "v")
    assert cache.get(x) is None


@pytest.mark.parametrize(
    "x",
    [
        unit(100, 8, seed=16, dtype=torch.float16),
        unit(100, 8, seed=16, dtype=torch.bfloat16),
        unit(100, 8, seed=16, dtype=torch.float64),
        torch.arange(300).reshape(100, 3),
        torch.arange(100) % 3 == 0,
        torch.tensor(2.5),
        unit(70, 3, 8, seed=17),
        unit(100, 16, seed=18)[:, ::2],  # not contiguous
        torch.empty(0, 4),
    ],
    ids=["fp16", "bf16", "fp64", "int64", "bool", "0-d", "3-d", "strided", "empty"],
)
def test_fingerprint_covers_dtypes_and_shapes(x):
    fp = fingerprint(x)
    assert fp is not None and torch.equal(fp, fingerprint(x.clone()))
    if x.numel() > 1:
        y = x.clone()
        y.view(-1)[-1] = 0 if y.view(-1)[-1] != 0 else 1
        assert not torch.equal(fp, fingerprint(y))
    cache = TensorCache(2)
    cache.put(x, "v")
    assert cache.get(x) == "v"


def test_complex_tensors_are_not_cached():
    x = torch.ones(4, 2, dtype=torch.complex64)
    assert fingerprint(x) is None
    cache = TensorCache(2)
    cache.put(x, "v")
    assert cache.get(x) is None


def test_reduced_precision_matmuls_sum_in_float64():
    # TF32 / bf16 float32 matmuls would round the fingerprint's sums to ~10 bits.
    x = unit(100, 8, seed=19)
    assert fingerprint(x).dtype == torch.float32
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        assert fingerprint(x).dtype == torch.float64
    finally:
        torch.set_float32_matmul_precision(previous)


# ---------------------------------------------------------------- the cache


def test_cache_hit_and_every_kind_of_write():
    cache, x = TensorCache(4), unit(100, 8, seed=20)
    cache.put(x, "v")
    assert cache.get(x) == "v" and cache.peek(x) == "v"
    write("numpy", x, (5, 5), 0.5)
    assert cache.get(x) is None
    cache.put(x, "w")
    write("data", x, (6, 6), 0.5)
    assert cache.get(x) is None
    cache.put(x, "u")
    with torch.no_grad():
        x[7, 7] = 0.5  # a torch in-place write: the version counter moves too
    assert cache.get(x) is None and cache.peek(x) is None


def test_a_put_uses_the_fingerprint_of_the_get_before_the_value():
    # The value is computed after `get`; a write in between makes the entry a miss.
    cache, x = TensorCache(2), unit(100, 8, seed=21)
    assert cache.get(x) is None
    write("numpy", x, (0, 0), 0.25)  # e.g. another thread, while the value is computed
    cache.put(x, "computed from the new content")
    assert cache.get(x) is None


def test_peek_and_unverified_caches_do_not_read_the_content(counted):
    x = unit(100, 8, seed=22)
    hints = TensorCache(2, verify=False)
    hints.put(x, "seen")
    write("numpy", x, (0, 0), 0.25)
    assert hints.get(x) == "seen" and hints.peek(x) == "seen"  # a hint only: the write goes unseen
    assert counted == []


def test_inference_tensors_are_not_cached():
    with torch.inference_mode():
        x = unit(10, 4, seed=23).clone()
    cache = TensorCache(2)
    cache.put(x, "v")
    assert cache.get(x) is None and len(cache) == 0


def test_oldest_entry_goes_first():
    cache = TensorCache(2)
    xs = [unit(4, 4, seed=s) for s in range(3)]
    for i, x in enumerate(xs):
        cache.put(x, i)
    assert [cache.get(x) for x in xs] == [None, 1, 2] and len(cache) == 2


# ---------------------------------------------------------------- certified galleries (the store's)


def boxes_of(num: int, n: int, seed: int = 0) -> torch.Tensor:
    xy = torch.rand(num, n, 2, generator=torch.Generator().manual_seed(seed)) * 100
    return torch.cat([xy, xy + 10], dim=-1)


def parts_call(num: int = 2000, n: int = 4, dim: int = 32):
    """A parts-mode call with relations: every whole-gallery check the head has (embeddings, boxes, mask)."""
    from geosteer import GallerySide, QuerySide

    mask = torch.ones(num, n, dtype=torch.bool)
    mask[::3, n - 1] = False
    gallery = GallerySide(unit(num, dim, seed=11), parts=unit(num, n, dim, seed=12), parts_mask=mask,
                          part_boxes=boxes_of(num, n))
    queries = QuerySide(unit(3, dim, seed=13), parts=unit(3, 2, dim, seed=14),
                        relations=torch.tensor([[[0, 1, 0]]] * 3))
    return queries, gallery


@pytest.mark.parametrize("screen", ["bf16", "off"])
def test_a_certified_gallery_is_not_passed_over_per_call(counted, screen):
    from geosteer.inputs import certify_gallery

    queries, gallery = parts_call()
    head = GeoSteerHead(k=20, gamma=0.5, screen=screen)
    whole = {tuple(gallery.embeddings.shape), tuple(gallery.part_boxes.shape)}
    head(queries, gallery)
    counted.clear()
    head(queries, gallery)  # uncertified: the cached checks still fingerprint the whole gallery each call
    assert whole <= set(counted)
    certify_gallery(gallery)
    counted.clear()
    want = GeoSteerHead(k=20, gamma=0.5, screen=screen)(queries, parts_call()[1])  # the same, never certified
    counted.clear()
    got = head(queries, gallery)
    assert not whole & set(counted), counted
    assert torch.equal(got.indices, want.indices) and torch.equal(got.scores, want.scores)


def test_a_certified_mask_is_not_scanned_per_call(monkeypatch):
    from geosteer.inputs import certify_gallery

    queries, gallery = parts_call()
    scanned = []
    real = checks._scan_rows_any
    monkeypatch.setattr(checks, "_scan_rows_any", lambda m, name: scanned.append(name) or real(m, name))
    head = GeoSteerHead(k=20)
    head(queries, gallery)
    assert scanned == ["gallery_parts_mask"]
    certify_gallery(gallery)
    assert scanned == ["gallery_parts_mask"] * 2  # certify scans once, now
    head(queries, gallery)
    assert scanned == ["gallery_parts_mask"] * 2


@pytest.mark.parametrize("what", ["embeddings", "boxes", "mask"])
def test_an_in_place_write_to_a_certified_gallery_is_caught(what):
    from geosteer.inputs import certify_gallery

    queries, gallery = parts_call()
    head = GeoSteerHead(k=20, gamma=0.5)
    certify_gallery(gallery)
    head(queries, gallery)
    if what == "embeddings":
        gallery.embeddings[5, 3] = float("nan")  # a torch write bumps the version counter
        match = "gallery contains NaN"
    elif what == "boxes":
        gallery.part_boxes[5, 0, 2] = 1e30
        match = "gallery_part_boxes must lie in"
    else:
        gallery.parts_mask[5] = False
        match = "gallery_parts_mask row 5 is all False"
    assert checks.certified(gallery.embeddings) is (None if what == "embeddings" else "unit")
    with pytest.raises(ValueError, match=match):
        head(queries, gallery)


def test_certify_gives_the_heads_errors():
    from geosteer.inputs import certify_gallery

    _, good = parts_call(num=50)
    cases = {
        "gallery contains NaN": lambda g: g.embeddings.__setitem__((3, 0), float("inf")),
        "gallery rows must be L2-normalised": lambda g: g.embeddings.__setitem__(3, g.embeddings[3] * 2),
        "gallery_part_boxes must lie in": lambda g: g.part_boxes.__setitem__((4, 1, 0), -3e7),
        "gallery_parts_mask row 7 is all False": lambda g: g.parts_mask.__setitem__(7, False),
    }
    for match, spoil in cases.items():
        _, g = parts_call(num=50)
        spoil(g)
        with pytest.raises(ValueError, match=match):
            certify_gallery(g)
        assert checks.certified(g.embeddings) is None or match != "gallery contains NaN"
    certify_gallery(good)
    assert (checks.certified(good.embeddings), checks.certified(good.part_boxes),
            checks.certified(good.parts_mask)) == ("unit", f"range {2.0 ** 24}", "rows_any")
    with pytest.raises(ValueError, match="check must be"):
        checks.certify(good.embeddings, "gallery", "norm")
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        checks.certify(good.embeddings.numpy(), "gallery", "unit")
    with pytest.raises(TypeError, match="items must be a GallerySide, got Tensor"):
        certify_gallery(good.embeddings)


def test_a_certificate_needs_a_version_counter():
    with torch.inference_mode():
        x = unit(10, 8)
    checks.certify(x, "gallery", "unit")  # checked, but nothing to key it by
    assert checks.certified(x) is None
