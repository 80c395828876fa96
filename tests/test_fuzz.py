"""The head's public call, fuzzed (DESIGN §5): a valid ranking or a ValueError / TypeError, nothing else.

Hypothesis draws shapes (Q, N, D, m, n, u, r and K, K > N included), which
optional inputs are given, masks (all-masked rows included), dtypes (the
four float types, and ints / bools where floats belong), strides
(non-contiguous slices, expanded rows, transposed storage), special values
(NaN, inf, huge, zero rows, un-normalised rows, numpy arrays, another
device) and presets or knobs (bad ones included). Every call must either
raise ValueError / TypeError, or return a ranking that is valid (ids in
range and distinct per row, scores finite and sorted) and equal to the same
config run without the fast paths (`backend="torch"`, `screen="off"`):
scores per candidate within a tolerance, so the order agrees wherever
scores are not tied.

Tensor values come from a torch generator seeded by the drawn `seed`; the
run is derandomised, so CI sees the same 500 examples every time.
"""

from __future__ import annotations

import collections
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geosteer
from geosteer import GeoSteerHead, HeadConfig

EXAMPLES = 500
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NOT_FLOATS = (torch.int64, torch.int32, torch.bool, torch.uint8)
LAYOUTS = ("contiguous", "contiguous", "slice", "transpose", "expand")
SPECIALS = (None,) * 10 + ("nan", "inf", "huge", "zero_row", "scale", "dtype", "numpy", "meta")
SOLVERS = ("auto", "tla") if importlib.util.find_spec("torch_linear_assignment") else ("auto",)
# Tensors the head always reads: a special value there must be refused.
ALWAYS_READ = ("query", "gallery")


# ---------------------------------------------------------------- strategies


def knobs(both_parts: bool, clean: bool) -> st.SearchStrategy[dict]:
    """Config overrides: a preset or knobs, sometimes (not `clean`) a bad one.

    Backend "triton" is left out: on a CPU it raises BackendUnavailable, its
    documented answer, not a bad-input one. mode="parts" mostly where both
    part sets are given (elsewhere it is refused).
    """
    if both_parts:
        modes = ["auto", "auto", "parts", "neighbourhood"]
    else:
        modes = ["auto"] * 3 + ["neighbourhood"] if clean else ["auto"] * 6 + ["parts", "neighbourhood"]
    good = st.fixed_dictionaries(
        {
            "k": st.integers(1, 14),
            "neighbors": st.integers(1, 6),
            "lam": st.sampled_from([0.0, 0.3, 0.5, 1.0]),
            "alpha": st.sampled_from([0.0, 0.0, 0.4]),
            "beta": st.sampled_from([0.0, 0.0, 0.5, 8.0]),
            "gamma": st.sampled_from([0.0, 0.1, 0.5]),
            "delta": st.sampled_from([0.0, 0.0, 0.6]),
            "mode": st.sampled_from(modes),
            "matching": st.sampled_from(["hungarian", "max"]),
            "steer_design": st.sampled_from(["margin", "near", "text", "margin+text"]),
            "solver": st.sampled_from(SOLVERS),
            "screen": st.sampled_from(["auto", "bf16", "off"]),
            "backend": st.sampled_from(["auto", "auto", "torch"]),
        }
    )
    preset = st.builds(lambda name, k: {"preset": name, "k": k},
                       st.sampled_from(sorted(geosteer.PRESETS)), st.sampled_from([None, 3, 100]))
    bad = st.sampled_from([
        {"lam": float("nan")}, {"alpha": float("inf")}, {"delta": float("nan")}, {"gamma": -0.1}, {"lam": "0.5"}, {"k": 5.0}, {"k": True},
        {"beta": None}, {"mode": 3}, {"k": np.int64(4)}, {"lam": np.float32(0.5)}, {"neighbors": 0},
    ])
    # 1 in 12 a bad knob, 2 in 12 a preset (whose k of 50 or 100 exceeds every N here)
    return st.integers(1 if clean else 0, 11).flatmap(lambda i: bad if i == 0 else preset if i < 3 else good)


def pick(draw, clean: bool, anything: list, well_formed: list):
    """One of `anything` (inputs good or bad), or with `clean` one of `well_formed`."""
    return draw(st.sampled_from(well_formed if clean else anything))


@st.composite
def cases(draw, clean: bool = False) -> dict:
    """One call's description. `clean`: only well-formed inputs (strides, dtypes, masks and
    optional inputs still vary; no special values, no malformed ids or rows)."""
    parts = pick(draw, clean, ["both"] * 5 + ["none"] * 2 + ["query only", "gallery only"], ["both"] * 3 + ["none"])
    both = parts == "both"
    structures = (["none"] * 3 + ["valid"] * 3 + ["junk padding"] * 2 + ["bad row", "huge boxes"]) if both else ["none"] * 9 + ["valid"]
    case = dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        Q=draw(st.integers(1, 4)), N=draw(st.integers(1, 12)), D=draw(st.integers(1, 6)),
        m=draw(st.integers(1, 3)), n=draw(st.integers(1, 4)), u=draw(st.integers(1, 3)), r=draw(st.integers(0, 3)),
        dtype=draw(st.sampled_from(FLOATS)),
        knobs=draw(knobs(both, clean)),
        parts=parts,
        masks=pick(draw, clean, ["none"] * 3 + ["some"] * 4 + ["all-masked row"], ["none", "some"]),
        zero_masked=draw(st.booleans()),
        negatives=pick(draw, clean, ["none"] * 2 + ["plain", "masked"] * 2 + ["with positives", "with one positive"],
                       ["plain", "masked", "with positives", "with one positive"]),
        structure=pick(draw, clean, structures, ["none", "valid", "junk padding"] if both else ["none"]),
        graph=pick(draw, clean, ["none"] * 4 + ["knn"] * 2 + ["short"], ["none", "knn"]),
        first_stage=pick(draw, clean, ["none"] * 6 + ["exact", "shuffled int32"] * 2 + ["duplicate", "short", "l2"],
                         ["none"] * 2 + ["exact", "shuffled int32"]),
        layouts={name: draw(st.sampled_from(LAYOUTS)) for name in ("query", "gallery", "query_parts", "gallery_parts")},
        special=pick(draw, clean, list(SPECIALS), [None]),
        target=draw(st.sampled_from(["query", "gallery", "query_parts", "gallery_parts", "negatives", "positives",
                                     "query_parts_mask", "gallery_part_boxes", "first_stage"])),
    )
    return case


# ---------------------------------------------------------------- building one call


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _layout(x: torch.Tensor, how: str) -> torch.Tensor:
    """The same values (or, for "expand", row 0 repeated) in other strides."""
    if how == "slice":  # every other column of a wider buffer
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if how == "transpose":  # column-major storage
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if how == "expand":
        return x[:1].expand(*x.shape)
    return x


def _mask(g: torch.Generator, rows: int, cols: int, how: str) -> torch.Tensor | None:
    if how == "none":
        return None
    mask = torch.rand(rows, cols, generator=g) > 0.4
    mask[torch.arange(rows), torch.randint(0, cols, (rows,), generator=g)] = True
    if how == "all-masked row":
        mask[int(torch.randint(0, rows, (1,), generator=g))] = False
    return mask


def build(case: dict) -> dict:
    """The forward keyword arguments of one case (`query` and `gallery` among them)."""
    g = torch.Generator().manual_seed(case["seed"])
    Q, N, D, m, n, u, r = (case[k] for k in "QNDmnur")
    kw: dict = {"query": _unit(g, Q, D), "gallery": _unit(g, N, D)}
    if case["parts"] in ("both", "query only"):
        kw["query_parts"] = _unit(g, Q, m, D)
        kw["query_parts_mask"] = _mask(g, Q, m, case["masks"])
    if case["parts"] in ("both", "gallery only"):
        kw["gallery_parts"] = _unit(g, N, n, D)
        kw["gallery_parts_mask"] = _mask(g, N, n, case["masks"])
    for name in ("query_parts", "gallery_parts"):
        if case["zero_masked"] and kw.get(f"{name}_mask") is not None:
            kw[name] = kw[name].masked_fill(~kw[f"{name}_mask"][..., None], 0.0)  # padding rows may be zeros
    if case["negatives"] != "none":
        kw["negatives"] = _unit(g, Q, u, D)
        if case["negatives"] == "masked":
            kw["negatives_mask"] = _mask(g, Q, u, "some")
        if case["negatives"] == "with positives":
            kw["positives"] = _unit(g, Q, u, D)
        if case["negatives"] == "with one positive":
            kw["positives"] = _unit(g, Q, 1, D)
    if case["structure"] != "none":
        xy = torch.rand(N, n, 2, generator=g) * 100
        kw["gallery_part_boxes"] = torch.cat([xy, xy + 1 + torch.rand(N, n, 2, generator=g) * 30], dim=-1)
        rel = torch.stack([torch.randint(-1, m, (Q, r), generator=g), torch.randint(0, m, (Q, r), generator=g),
                           torch.randint(0, len(geosteer.RELATIONS), (Q, r), generator=g)], dim=-1)
        if case["structure"] == "junk padding" and r:
            rel[:, 0] = torch.tensor([-1, 99, -7])
        if case["structure"] == "bad row" and r:
            rel[0, 0] = torch.tensor([0, m, 0])
        if case["structure"] == "huge boxes":
            kw["gallery_part_boxes"] = kw["gallery_part_boxes"].double() * 1e300
        kw["query_relations"] = rel
    if case["graph"] != "none":
        width = 6 if case["graph"] == "knn" else 1
        kw["gallery_neighbors"] = torch.randint(0, N, (N, width), generator=g)
    if case["first_stage"] != "none":
        scores = kw["query"] @ kw["gallery"].T
        width = N if case["first_stage"] != "short" else max(N - 1, 1)
        top = scores.topk(width, dim=1)
        values, ids = top.values.float(), top.indices
        if case["first_stage"] == "shuffled int32":
            perm = torch.randperm(width, generator=g)
            values, ids = values[:, perm], ids[:, perm].int()
        if case["first_stage"] == "duplicate" and width > 1:
            ids = ids.clone()
            ids[:, -1] = ids[:, 0]
        if case["first_stage"] == "l2":
            values = 2 - 2 * values
        kw["first_stage"] = (values, ids)
    # dtype and strides of the embeddings (masks, ids and boxes keep theirs)
    for name in ("query", "gallery", "query_parts", "gallery_parts", "negatives", "positives"):
        if name in kw:
            how = case["layouts"].get(name, "contiguous")
            kw[name] = _layout(kw[name].to(case["dtype"]), how)
            if how == "expand" and kw.get(f"{name}_mask") is not None:  # row 0's padding goes with row 0's mask
                kw[f"{name}_mask"] = _layout(kw[f"{name}_mask"], how)
    kw = {k: v for k, v in kw.items() if v is not None}
    _special(case, kw, g)
    return kw


def _special(case: dict, kw: dict, g: torch.Generator) -> None:
    """Spoil the target tensor (if given) with the drawn special value."""
    special, name = case["special"], case["target"]
    if special is None or name not in kw:
        return
    if name == "first_stage":
        scores, ids = kw["first_stage"]
        if special == "numpy":
            kw["first_stage"] = (scores, ids.numpy())
        elif special == "meta":
            kw["first_stage"] = (scores, ids.to("meta"))
        elif special in ("nan", "inf"):
            scores = scores.clone()
            scores[0, 0] = float(special)
            kw["first_stage"] = (scores, ids)
        return
    x = kw[name].clone() if special not in ("numpy", "meta", "dtype") else kw[name]
    if special == "numpy":
        kw[name] = x.numpy() if x.dtype != torch.bfloat16 else x.float().numpy()
    elif special == "meta":
        kw[name] = x.to("meta")
    elif special == "dtype":
        kw[name] = x.to(NOT_FLOATS[case["seed"] % len(NOT_FLOATS)]) if x.dtype != torch.bool else x.float()
    elif x.dtype == torch.bool or not x.numel():
        return
    else:
        index = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in x.shape)
        if special in ("nan", "inf"):
            x[index] = float(special)
        elif special == "huge":
            x[index[:-1]] = 6e4 if x.dtype == torch.float16 else 3e38
        elif special == "zero_row":
            x[index[:-1]] = 0
        elif special == "scale":
            x[index[:-1]] *= 2
        kw[name] = x


def make_head(knobs: dict, **extra) -> GeoSteerHead:
    knobs = dict(knobs)
    preset = knobs.pop("preset", None)
    if knobs.get("k", 0) is None:
        knobs.pop("k")
    cfg = geosteer.get_config(preset) if preset else HeadConfig()
    return GeoSteerHead(cfg, **knobs, **extra)


def call(head: GeoSteerHead, kw: dict):
    kw = dict(kw)
    return head(kw.pop("query"), kw.pop("gallery"), **kw)


# ---------------------------------------------------------------- checking one result


def check_valid(result, num_queries: int, num_items: int, k: int) -> None:
    width = min(k, num_items)
    assert result.indices.shape == result.scores.shape == (num_queries, width)
    assert result.indices.dtype == torch.long and result.scores.dtype == torch.float32
    assert bool(((result.indices >= 0) & (result.indices < num_items)).all()), "ids out of range"
    for row in result.indices.tolist():
        assert len(set(row)) == len(row), f"repeated id in a row: {row}"
    assert bool(torch.isfinite(result.scores).all()), f"non-finite scores {result.scores}"
    assert bool((result.scores[:, :-1] >= result.scores[:, 1:]).all()), "scores not sorted descending"


def check_same_ranking(got, want, atol: float) -> None:
    """Per query: the same candidates (up to first-stage ties at the K-th place) with the same fused scores."""
    for q in range(got.indices.shape[0]):
        g_ids, w_ids = got.indices[q].tolist(), want.indices[q].tolist()
        if set(g_ids) != set(w_ids):
            # Allowed only where first-stage scores tie at the boundary (the bf16 screen may order a tie otherwise).
            g_fs = dict(zip(g_ids, got.first_stage_scores[q].tolist()))
            w_fs = dict(zip(w_ids, want.first_stage_scores[q].tolist()))
            edge = min(w_fs.values())
            for i in set(g_ids) ^ set(w_ids):
                assert abs({**g_fs, **w_fs}[i] - edge) <= atol, f"query {q}: candidates differ beyond a tie"
            continue
        g_score = dict(zip(g_ids, got.scores[q].tolist()))
        w_score = dict(zip(w_ids, want.scores[q].tolist()))
        for i in g_ids:
            assert math.isclose(g_score[i], w_score[i], abs_tol=atol, rel_tol=atol), (
                f"query {q}, item {i}: score {g_score[i]} vs reference {w_score[i]}")


# ---------------------------------------------------------------- the property


def run_property(strategy, counts: collections.Counter) -> None:
    """`EXAMPLES` calls drawn from `strategy`, each a valid ranking equal to the reference, or a named error."""

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=strategy)
    def run(case):
        counts["calls"] += 1
        try:
            head = make_head(case["knobs"])
            kw = build(case)
            result = call(head, kw)
        except (ValueError, TypeError):
            counts["refused"] += 1
            return
        spoilt = case["special"] is not None and case["target"] in ALWAYS_READ
        assert not spoilt, f"{case['special']} in {case['target']} was not refused"
        counts["ranked"] += 1
        counts["K > N"] += head.config.k > case["N"]
        check_valid(result, case["Q"], case["N"], head.config.k)
        reference = GeoSteerHead(head.config, backend="torch", screen="off")
        atol = 1e-4 if case["dtype"] in (torch.float32, torch.float64) else 2e-3
        check_same_ranking(result, call(reference, kw), atol)

    run()


def test_every_head_call_ranks_validly_or_raises_a_named_error():
    """Anything, good or bad: a valid ranking equal to the reference, or ValueError / TypeError."""
    counts: collections.Counter = collections.Counter()
    run_property(cases(), counts)
    print(f"fuzz (anything): {dict(counts)}")
    # The property ran the whole budget, and both outcomes were exercised.
    assert counts["calls"] >= EXAMPLES, counts
    assert counts["ranked"] >= EXAMPLES // 5 and counts["refused"] >= EXAMPLES // 5, counts


def test_well_formed_head_calls_rank_like_the_reference():
    """Well-formed inputs in every dtype, stride and optional-input mix: mostly rankings, all equal to the reference."""
    counts: collections.Counter = collections.Counter()
    run_property(cases(clean=True), counts)
    print(f"fuzz (well-formed): {dict(counts)}")
    assert counts["calls"] >= EXAMPLES, counts
    # What is refused here is only the few combinations the contract refuses
    # (e.g. neighbourhood mode with neighbors >= N, a preset's β without negatives).
    assert counts["ranked"] >= EXAMPLES // 2 and counts["K > N"] >= EXAMPLES // 5, counts


@pytest.mark.parametrize("special", ["nan", "inf", "huge", "zero_row", "scale"])
@pytest.mark.parametrize("target", ALWAYS_READ)
def test_spoilt_query_or_gallery_is_always_refused(special, target):
    """The deterministic core of the property: every special value in the tensors always read raises."""
    case = dict(seed=1, Q=3, N=8, D=4, m=2, n=3, u=2, r=1, dtype=torch.float32, knobs={"k": 4, "lam": 0.5},
                parts="both", masks="some", zero_masked=False, negatives="none", structure="none", graph="none",
                first_stage="none", layouts={}, special=special, target=target)
    kw = build(case)
    with pytest.raises(ValueError, match=target):
        call(make_head(case["knobs"]), kw)
