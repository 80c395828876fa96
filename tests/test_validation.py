"""Bad input (DESIGN §5): a ValueError/TypeError naming the argument, before any work."""

from __future__ import annotations

import pytest
import torch

from geosteer import GeoSteerHead
from planted import unit

Q, N, D, M, NP = 4, 30, 8, 2, 3


def good_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        query=unit(torch.randn(Q, D, generator=g)),
        gallery=unit(torch.randn(N, D, generator=g)),
        query_parts=unit(torch.randn(Q, M, D, generator=g)),
        query_parts_mask=torch.ones(Q, M, dtype=torch.bool),
        gallery_parts=unit(torch.randn(N, NP, D, generator=g)),
        gallery_parts_mask=torch.ones(N, NP, dtype=torch.bool),
        negatives=unit(torch.randn(Q, M, D, generator=g)),
    )


def with_value(name, index, value):
    def change(inputs):
        inputs[name] = inputs[name].clone()
        inputs[name][index] = value
    return change


def replace(name, make):
    def change(inputs):
        inputs[name] = make(inputs)
    return change


def drop(name):
    def change(inputs):
        inputs.pop(name)
    return change


nan, inf = float("nan"), float("inf")

CASES = {
    # wrong types, ranks, dims
    "query not a tensor": (replace("query", lambda i: i["query"].tolist()), TypeError, "query"),
    "query int dtype": (replace("query", lambda i: (i["query"] * 10).long()), TypeError, "query"),
    "query rank 3": (replace("query", lambda i: i["query"][None]), ValueError, r"query must have shape \[Q, D\]"),
    "gallery dim mismatch": (replace("gallery", lambda i: i["gallery"][:, :5]), ValueError, "gallery has dim D=5"),
    "gallery dtype mismatch": (replace("gallery", lambda i: i["gallery"].double()), TypeError, "gallery has dtype"),
    "gallery device mismatch": (replace("gallery", lambda i: i["gallery"].to("meta")), ValueError, "gallery is on meta"),
    "query_parts wrong Q": (replace("query_parts", lambda i: i["query_parts"][:2]), ValueError, "query_parts has 2 rows"),
    "query_parts rank 2": (replace("query_parts", lambda i: i["query_parts"][:, 0]), ValueError, r"query_parts must have shape \[Q, m, D\]"),
    "gallery_parts wrong N": (replace("gallery_parts", lambda i: i["gallery_parts"][:5]), ValueError, "gallery_parts has 5 rows"),
    "gallery_parts dim": (replace("gallery_parts", lambda i: i["gallery_parts"][..., :3]), ValueError, "gallery_parts has dim"),
    "negatives wrong Q": (replace("negatives", lambda i: i["negatives"][:1]), ValueError, "negatives has 1 rows"),
    "mask not bool": (replace("query_parts_mask", lambda i: i["query_parts_mask"].int()), TypeError, "query_parts_mask must be a bool"),
    "mask wrong shape": (replace("gallery_parts_mask", lambda i: i["gallery_parts_mask"][:, :2]), ValueError, "gallery_parts_mask must have shape"),
    "mask without parts": (drop("gallery_parts"), ValueError, "gallery_parts"),
    # NaN / inf
    "query NaN": (with_value("query", (1, 2), nan), ValueError, "query contains NaN or inf"),
    "gallery inf": (with_value("gallery", (7, 0), inf), ValueError, "gallery contains NaN or inf"),
    "query_parts NaN": (with_value("query_parts", (0, 1, 3), nan), ValueError, "query_parts contains NaN or inf"),
    "negatives inf": (with_value("negatives", (2, 0, 0), -inf), ValueError, "negatives contains NaN or inf"),
    "gallery_parts NaN everywhere": (replace("gallery_parts", lambda i: torch.full_like(i["gallery_parts"], nan)), ValueError, "gallery_parts contains NaN or inf"),
    # empty sets, all-masked rows
    "Q = 0": (replace("query", lambda i: i["query"][:0]), ValueError, "query has Q=0"),
    "N = 0": (replace("gallery", lambda i: i["gallery"][:0]), ValueError, "gallery has N=0"),
    "m = 0": (replace("query_parts", lambda i: i["query_parts"][:, :0]), ValueError, "query_parts has m=0"),
    "n = 0": (replace("gallery_parts", lambda i: i["gallery_parts"][:, :0]), ValueError, "gallery_parts has n=0"),
    "u = 0": (replace("negatives", lambda i: i["negatives"][:, :0]), ValueError, "negatives has u=0"),
    "all-masked query row": (with_value("query_parts_mask", 1, False), ValueError, "query_parts_mask row 1 is all False"),
    "all-masked gallery row": (with_value("gallery_parts_mask", 4, False), ValueError, "gallery_parts_mask row 4 is all False"),
    # numpy arrays where the head takes tensors
    "query numpy": (replace("query", lambda i: i["query"].numpy()), TypeError, r"query must be a torch.Tensor .*torch.from_numpy\(query\)"),
    "gallery numpy": (replace("gallery", lambda i: i["gallery"].numpy()), TypeError, r"torch.from_numpy\(gallery\)"),
    "gallery_parts numpy": (replace("gallery_parts", lambda i: i["gallery_parts"].numpy()), TypeError, r"torch.from_numpy\(gallery_parts\)"),
    "mask numpy": (replace("query_parts_mask", lambda i: i["query_parts_mask"].numpy()), TypeError, r"torch.from_numpy\(query_parts_mask\)"),
    # un-normalised embeddings
    "gallery norms 0.5-3": (replace("gallery", lambda i: i["gallery"] * torch.linspace(0.5, 3, N)[:, None]), ValueError,
                            r"gallery rows must be L2-normalised \(norms 0.50 to 3.00\); pass torch.nn.functional.normalize\(gallery, dim=-1\)"),
    "gallery zero row": (with_value("gallery", 3, 0.0), ValueError, r"gallery rows must be L2-normalised \(norms 0.00 to"),
    "query norm 2": (replace("query", lambda i: i["query"] * 2), ValueError, r"query rows must be L2-normalised \(norms 2.00 to 2.00"),
    "query_parts norm 0.5": (replace("query_parts", lambda i: i["query_parts"] * 0.5), ValueError, "query_parts rows must be L2-normalised"),
    "gallery_parts norm 3": (replace("gallery_parts", lambda i: i["gallery_parts"] * 3), ValueError,
                             r"gallery_parts rows must be L2-normalised \(norms 3.00 to 3.00 in the candidates' rows"),
    "negatives norm 1.1": (replace("negatives", lambda i: i["negatives"] * 1.1), ValueError, "negatives rows must be L2-normalised"),
    "positives norm 2": (lambda i: i.update(positives=i["negatives"] * 2), ValueError, "positives rows must be L2-normalised"),
    "gallery huge finite": (replace("gallery", lambda i: i["gallery"] * 3e38), ValueError, r"gallery rows must be L2-normalised \(norms inf"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_naming_the_argument(case):
    change, error, message = CASES[case]
    inputs = good_inputs()
    change(inputs)
    head = GeoSteerHead(k=5, lam=0.5, alpha=0.3)
    query, gallery = inputs.pop("query"), inputs.pop("gallery")
    with pytest.raises(error, match=message):
        head(query, gallery, **inputs)


def test_good_inputs_pass():
    inputs = good_inputs()
    result = GeoSteerHead(k=5, lam=0.5, alpha=0.3)(inputs.pop("query"), inputs.pop("gallery"), **inputs)
    assert result.indices.shape == (Q, 5)


def test_nan_in_a_candidate_part_is_caught_before_it_can_rank():
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.5)
    first = head(inputs["query"], inputs["gallery"]).indices
    inputs["gallery_parts"][first[0, 0], 1, 2] = float("nan")
    with pytest.raises(ValueError, match="gallery_parts contains NaN or inf"):
        head(inputs["query"], inputs["gallery"], query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"])


def test_steering_needs_negatives():
    inputs = good_inputs()
    with pytest.raises(ValueError, match="negatives"):
        GeoSteerHead(k=5, alpha=0.3)(inputs["query"], inputs["gallery"])


def test_positives_must_pair_with_negatives():
    inputs = good_inputs()
    with pytest.raises(ValueError, match="positives has 3 anchors"):
        GeoSteerHead(k=5, alpha=0.3)(
            inputs["query"], inputs["gallery"], negatives=inputs["negatives"], positives=inputs["query_parts"].repeat(1, 2, 1)[:, :3]
        )


def test_mode_parts_needs_parts():
    inputs = good_inputs()
    with pytest.raises(ValueError, match="mode='parts' needs both"):
        GeoSteerHead(k=5, mode="parts")(inputs["query"], inputs["gallery"])


def test_bad_relations_and_boxes():
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.5, gamma=0.5)
    parts = dict(query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"])
    boxes = torch.rand(N, NP, 4)
    with pytest.raises(ValueError, match="query_relations rows must be"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes,
             query_relations=torch.tensor([[[0, 5, 0]]] * Q))
    with pytest.raises(ValueError, match="query_relations must be int64"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes,
             query_relations=torch.zeros(Q, 1, 3))
    with pytest.raises(ValueError, match="gallery_part_boxes must be float"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes[:, :2],
             query_relations=torch.zeros(Q, 1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs both query_relations"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes)
    bad_boxes = boxes.clone()
    bad_boxes[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="gallery_part_boxes contains NaN"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=bad_boxes,
             query_relations=torch.zeros(Q, 1, 3, dtype=torch.long))


def test_bad_external_first_stage():
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.0)
    scores, ids = (inputs["query"] @ inputs["gallery"].T).topk(6)
    with pytest.raises(ValueError, match=r"first_stage ids holds ids outside \[0, 30\)"):
        head(inputs["query"], inputs["gallery"], first_stage=(scores, torch.where(ids == ids[0, 0], -1, ids)))
    with pytest.raises(ValueError, match="K'=4 candidates but k=5"):
        head(inputs["query"], inputs["gallery"], first_stage=(scores[:, :4], ids[:, :4]))
    with pytest.raises(TypeError, match="first_stage must be"):
        head(inputs["query"], inputs["gallery"], first_stage=scores)
    with pytest.raises(TypeError, match="first_stage ids must be int"):
        head(inputs["query"], inputs["gallery"], first_stage=(scores, ids.float()))


def test_bad_knn_graph():
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.5, neighbors=3)
    with pytest.raises(ValueError, match="gallery_neighbors has k'=2 columns"):
        head(inputs["query"], inputs["gallery"], gallery_neighbors=torch.zeros(N, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="gallery_neighbors holds ids outside"):
        head(inputs["query"], inputs["gallery"], gallery_neighbors=torch.full((N, 3), N, dtype=torch.long))


def test_nan_written_in_place_after_a_clean_call_is_still_caught():
    # The finite check remembers clean tensors; an in-place write must void that.
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.0)
    head(inputs["query"], inputs["gallery"])
    head(inputs["query"], inputs["gallery"])
    inputs["gallery"][3, 1] = float("nan")
    with pytest.raises(ValueError, match="gallery contains NaN or inf"):
        head(inputs["query"], inputs["gallery"])
    with torch.inference_mode():
        bad = inputs["gallery"].clone()
        with pytest.raises(ValueError, match="gallery contains NaN or inf"):
            head(inputs["query"], bad)


def test_huge_finite_values_are_not_mistaken_for_inf():
    # Their float32 sum overflows; the exact check must tell them from NaN/inf,
    # and the norm check refuses them (their scores would overflow to inf).
    inputs = good_inputs()
    with pytest.raises(ValueError, match=r"gallery rows must be L2-normalised \(norms inf to inf\)"):
        GeoSteerHead(k=5, lam=0.0)(inputs["query"], inputs["gallery"] * 3e38)


# ---------------------------------------------------------------- L2 norms: tolerance, masks, caching


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_normalised_inputs_pass_in_every_dtype(dtype):
    """A row normalised in float32 and cast keeps its norm within the dtype's rounding: it passes."""
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in good_inputs().items()}
    result = GeoSteerHead(k=5, lam=0.5, alpha=0.3)(inputs.pop("query"), inputs.pop("gallery"), **inputs)
    assert result.indices.shape == (Q, 5)
    off = unit(torch.randn(N, D, generator=torch.Generator().manual_seed(1))).to(dtype) * 1.05
    with pytest.raises(ValueError, match="gallery rows must be L2-normalised"):
        GeoSteerHead(k=5, lam=0.0)(good_inputs()["query"].to(dtype), off)


def test_masked_out_rows_may_be_zeros_but_not_nan():
    inputs = good_inputs()
    for name in ("query_parts", "gallery_parts"):
        inputs[name] = inputs[name].clone()
        inputs[name][:, -1] = 0.0
        inputs[f"{name}_mask"] = inputs[f"{name}_mask"].clone()
        inputs[f"{name}_mask"][:, -1] = False
    inputs["negatives_mask"] = torch.tensor([[True, False]] * Q)
    inputs["negatives"] = inputs["negatives"].clone()
    inputs["negatives"][:, 1] = 0.0
    inputs["positives"] = inputs["negatives"].clone()  # paired: the masked pair's positive is exempt too
    inputs["positives"][:, 0] = inputs["query"]
    head = GeoSteerHead(k=5, lam=0.5, beta=0.5)
    result = head(inputs["query"], inputs["gallery"], **{k: v for k, v in inputs.items() if k not in ("query", "gallery")})
    assert torch.isfinite(result.scores).all()
    # A masked-out query part must still be finite (it is small and may still be read as a positive).
    inputs["query_parts"][0, -1, 0] = float("nan")
    with pytest.raises(ValueError, match="query_parts contains NaN or inf"):
        head(inputs["query"], inputs["gallery"], **{k: v for k, v in inputs.items() if k not in ("query", "gallery")})


def test_norm_check_of_a_cached_gallery_sees_in_place_writes():
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.5)
    parts = dict(query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"])
    first = head(inputs["query"], inputs["gallery"], **parts).indices
    inputs["gallery"][7] *= 2.0
    with pytest.raises(ValueError, match=r"gallery rows must be L2-normalised \(norms 1.000000 to 2.00\)"):
        head(inputs["query"], inputs["gallery"], **parts)
    inputs["gallery"][7] /= 2.0
    # gallery_parts: the candidates' rows were checked once; a later write to one of them is seen.
    inputs["gallery_parts"][first[0, 0], 1] *= 3.0
    with pytest.raises(ValueError, match="gallery_parts rows must be L2-normalised"):
        head(inputs["query"], inputs["gallery"], **parts)


def test_gallery_parts_are_checked_where_a_new_query_reads_them():
    """Rows checked once are remembered; rows first read by a later query are checked then."""
    inputs = good_inputs()
    head = GeoSteerHead(k=3, lam=0.5)
    gallery_parts = inputs["gallery_parts"].clone()
    query = inputs["query"][:1]
    seen = set(head(query, inputs["gallery"]).indices[0].tolist())
    unseen = next(i for i in range(N) if i not in seen)
    gallery_parts[unseen] *= 2.0  # never a candidate of `query`
    head(query, inputs["gallery"], query_parts=inputs["query_parts"][:1], gallery_parts=gallery_parts)
    with pytest.raises(ValueError, match="gallery_parts rows must be L2-normalised"):
        head(inputs["gallery"][unseen:unseen + 1], inputs["gallery"], query_parts=inputs["query_parts"][:1],
             gallery_parts=gallery_parts)


# ---------------------------------------------------------------- config knobs: NaN/inf, types, integral k


@pytest.mark.parametrize("field", ["lam", "alpha", "beta", "gamma"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_float_knobs_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        GeoSteerHead(**{field: value})


WRONG_TYPES = [
    ("k", "5"), ("k", 5.0), ("k", True), ("neighbors", 2.5), ("chunk_elements", None), ("lam", "0.5"), ("lam", None),
    ("alpha", True), ("beta", [0.1]), ("gamma", torch.tensor(0.1)), ("steer_design", 1), ("mode", None),
    ("matching", b"max"), ("backend", 0), ("solver", None), ("screen", False),
]


@pytest.mark.parametrize("field, value", WRONG_TYPES, ids=[f"{f}={v!r}" for f, v in WRONG_TYPES])
def test_every_config_field_names_itself_on_a_wrong_type(field, value):
    with pytest.raises(TypeError, match=f"^{field} must be"):
        GeoSteerHead(**{field: value})


def test_integral_and_numpy_knobs_are_accepted_as_plain_python_values():
    np = pytest.importorskip("numpy")
    cfg = GeoSteerHead(k=np.int64(5), neighbors=np.int32(3), lam=np.float32(0.5), alpha=1, beta=np.float64(0.25),
                       mode=np.str_("parts")).config
    assert (cfg.k, cfg.neighbors, cfg.lam, cfg.alpha, cfg.beta, cfg.mode) == (5, 3, 0.5, 1.0, 0.25, "parts")
    assert [type(v) for v in (cfg.k, cfg.neighbors, cfg.lam, cfg.alpha, cfg.mode)] == [int, int, float, float, str]
    inputs = good_inputs()
    assert GeoSteerHead(k=np.int64(5), lam=0.0)(inputs["query"], inputs["gallery"]).indices.shape == (Q, 5)
    with pytest.raises(TypeError, match="unknown HeadConfig field"):
        GeoSteerHead(lamda=0.5)
    with pytest.raises(ValueError, match="beta must be a non-negative number <= 1e"):
        GeoSteerHead(beta=1e30)


# ---------------------------------------------------------------- external first stage, devices, relations, boxes


def test_repeated_first_stage_ids_are_refused():
    inputs = good_inputs()
    scores, ids = (inputs["query"] @ inputs["gallery"].T).topk(6)
    ids[2, 3] = ids[2, 0]
    with pytest.raises(ValueError, match=f"first_stage ids row 2 holds gallery id {int(ids[2, 0])} twice"):
        GeoSteerHead(k=5, lam=0.0)(inputs["query"], inputs["gallery"], first_stage=(scores, ids))


def test_first_stage_scores_must_be_cosines():
    inputs = good_inputs()
    scores, ids = (inputs["query"] @ inputs["gallery"].T).topk(6)
    with pytest.raises(ValueError, match=r"first_stage scores must lie in \[-1.01, 1.01\]"):
        GeoSteerHead(k=5, lam=0.5)(inputs["query"], inputs["gallery"], first_stage=(2.0 - 2.0 * scores, ids))  # L2 distances
    with pytest.raises(ValueError, match=r"first_stage scores must lie in"):
        GeoSteerHead(k=5, lam=0.5)(inputs["query"], inputs["gallery"], first_stage=(scores.double() * 1e300, ids))
    with pytest.raises(TypeError, match="first_stage scores must be a float tensor"):
        GeoSteerHead(k=5, lam=0.5)(inputs["query"], inputs["gallery"], first_stage=(ids, ids))
    # With λ = 1 and no steering the scores only pick the candidates: any finite scale is fine.
    lam1 = GeoSteerHead(k=5, lam=1.0)(inputs["query"], inputs["gallery"], query_parts=inputs["query_parts"],
                                      gallery_parts=inputs["gallery_parts"], first_stage=(scores * 100, ids))
    assert torch.isfinite(lam1.scores).all()


def test_arguments_on_another_device_are_named():
    inputs = good_inputs()
    scores, ids = (inputs["query"] @ inputs["gallery"].T).topk(6)
    parts = dict(query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"])
    boxes = torch.rand(N, NP, 4)
    relations = torch.tensor([[[0, 1, 0]]] * Q)
    head = GeoSteerHead(k=5, lam=0.5, gamma=0.5)
    calls = {
        "first_stage ids": dict(first_stage=(scores, ids.to("meta"))),
        "first_stage scores": dict(first_stage=(scores.to("meta"), ids)),
        "gallery_part_boxes": dict(**parts, gallery_part_boxes=boxes.to("meta"), query_relations=relations),
        "query_relations": dict(**parts, gallery_part_boxes=boxes, query_relations=relations.to("meta")),
        "gallery_neighbors": dict(gallery_neighbors=torch.zeros(N, 5, dtype=torch.long, device="meta")),
    }
    for name, kwargs in calls.items():
        with pytest.raises(ValueError, match=f"^{name} is on meta but query is on cpu"):
            head(inputs["query"], inputs["gallery"], **kwargs)


def test_relation_padding_rows_are_never_read():
    """A padding row (i < 0) may hold anything; it must neither crash late nor count."""
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.5, gamma=0.5)
    parts = dict(query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"])
    boxes = torch.rand(N, NP, 4)
    boxes[..., 2:] += boxes[..., :2]
    clean = torch.tensor([[[0, 1, 0], [-1, -1, -1]]] * Q)
    want = head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes, query_relations=clean)
    for junk in ([-1, 7, 0], [-5, -9, 99], [-1, 0, 4]):
        relations = torch.tensor([[[0, 1, 0], junk]] * Q)
        got = head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes, query_relations=relations)
        assert torch.equal(got.indices, want.indices) and torch.equal(got.structure, want.structure)
    # Real rows are checked up front, naming the row.
    with pytest.raises(ValueError, match=r"query_relations rows must be .* row \[0, 1\] is \[1, 2, 0\]"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes,
             query_relations=torch.tensor([[[0, 1, 0], [1, 2, 0]]] * Q))


def test_boxes_of_an_absurd_magnitude_are_refused():
    inputs = good_inputs()
    head = GeoSteerHead(k=5, lam=0.5, gamma=0.5)
    parts = dict(query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"])
    relations = torch.tensor([[[0, 1, 0]]] * Q)
    boxes = torch.rand(N, NP, 4, dtype=torch.float64)
    boxes[3, 1] = 1e300  # finite in float64, inf once the structure term reads it in float32
    with pytest.raises(ValueError, match=r"gallery_part_boxes must lie in \[-1.67772e\+07, 1.67772e\+07\]"):
        head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=boxes, query_relations=relations)
    pixels = torch.rand(N, NP, 4) * 4000  # pixel coordinates of large photos are fine
    assert head(inputs["query"], inputs["gallery"], **parts, gallery_part_boxes=pixels, query_relations=relations).indices.shape == (Q, 5)


# ---------------------------------------------------------------- K = min(k, N)


def test_k_above_the_gallery_size_keeps_every_item():
    inputs = good_inputs()
    small = {k: v[:7] if k.startswith("gallery") else v for k, v in inputs.items()}
    result = GeoSteerHead(k=100, lam=0.5)(small.pop("query"), small.pop("gallery"), **small)
    assert result.indices.shape == result.scores.shape == (Q, 7)
    assert all(sorted(row.tolist()) == list(range(7)) for row in result.indices)
    # Plain cosine stays exact: the whole gallery, sorted.
    cosine = GeoSteerHead(k=100, lam=0.0)(inputs["query"], inputs["gallery"][:7])
    expected = (inputs["query"] @ inputs["gallery"][:7].T).sort(dim=1, descending=True)
    assert torch.equal(cosine.indices, expected.indices)
    torch.testing.assert_close(cosine.scores, expected.values)
    # An external first stage must then hold K = min(k, N) candidates.
    scores, ids = (inputs["query"] @ inputs["gallery"][:7].T).topk(5)
    with pytest.raises(ValueError, match=r"K'=5 candidates but k=100 \(K = min\(k, N=7\) = 7\)"):
        GeoSteerHead(k=100, lam=0.0)(inputs["query"], inputs["gallery"][:7], first_stage=(scores, ids))


def test_presets_run_as_written_on_a_small_gallery():
    import geosteer

    inputs = good_inputs()
    boxes = torch.rand(N, NP, 4)
    boxes[..., 2:] += boxes[..., :2]
    kwargs = dict(query_parts=inputs["query_parts"], gallery_parts=inputs["gallery_parts"], negatives=inputs["negatives"],
                  gallery_part_boxes=boxes, query_relations=torch.tensor([[[0, 1, 0]]] * Q))
    for name in geosteer.PRESETS:
        cfg = geosteer.get_config(name)
        assert cfg.k > N
        result = GeoSteerHead(cfg)(inputs["query"], inputs["gallery"], **kwargs)
        assert result.indices.shape == (Q, min(cfg.k, N)), name
