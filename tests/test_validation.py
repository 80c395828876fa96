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
    # empty sets, all-masked rows, K > N
    "Q = 0": (replace("query", lambda i: i["query"][:0]), ValueError, "query has Q=0"),
    "N = 0": (replace("gallery", lambda i: i["gallery"][:0]), ValueError, "gallery has N=0"),
    "m = 0": (replace("query_parts", lambda i: i["query_parts"][:, :0]), ValueError, "query_parts has m=0"),
    "n = 0": (replace("gallery_parts", lambda i: i["gallery_parts"][:, :0]), ValueError, "gallery_parts has n=0"),
    "u = 0": (replace("negatives", lambda i: i["negatives"][:, :0]), ValueError, "negatives has u=0"),
    "all-masked query row": (with_value("query_parts_mask", 1, False), ValueError, "query_parts_mask row 1 is all False"),
    "all-masked gallery row": (with_value("gallery_parts_mask", 4, False), ValueError, "gallery_parts_mask row 4 is all False"),
    "K > N": (replace("gallery", lambda i: i["gallery"][:3]), ValueError, "k=5 exceeds the gallery size N=3"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_naming_the_argument(case):
    change, error, message = CASES[case]
    inputs = good_inputs()
    if case == "K > N":
        inputs = {k: v for k, v in inputs.items() if not k.startswith("gallery_parts")}
        inputs.pop("query_parts"), inputs.pop("query_parts_mask")
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
    # Their float32 sum overflows; the exact check must still let them through.
    inputs = good_inputs()
    gallery = inputs["gallery"] * 3e38
    result = GeoSteerHead(k=5, lam=0.0)(inputs["query"], gallery)
    assert result.indices.shape == (Q, 5)
