"""Filters (issue 23): `allowed` in the head's first stage is the head on the filtered gallery.

Each check builds the filtered gallery itself (the allowed rows of every
gallery tensor), runs the same head on it and maps its ids back, and
compares with the head run on the whole gallery under `allowed`.
"""

from __future__ import annotations

import pytest
import torch

from geosteer import GeoSteerHead
from test_compile import PARTS, SCENARIOS, GraphCounter, assert_same, make_inputs

GALLERY_KEYS = ("gallery", "gallery_parts", "gallery_parts_mask", "gallery_part_boxes")
#: scenario -> config and forward arguments (test_compile's), those that a filter can make exact.
EXACT = {name: SCENARIOS[name][:2] for name in ("parts_masked", "steer_beta", "steer_delta", "relations")}
EXACT["cosine"] = (dict(k=12, lam=0.0), ())


def filtered_head(head: GeoSteerHead, inputs: dict, keys, keep: torch.Tensor):
    """The head on the gallery's rows `keep` `[N']`, its ids mapped back to the whole gallery."""
    sub = {name: (t[keep] if name in GALLERY_KEYS else t) for name, t in inputs.items()}
    got = head(sub["query"], sub["gallery"], **{name: sub[name] for name in keys})
    return got._replace(indices=keep[got.indices])


def mask_of(keep: torch.Tensor, num_items: int) -> torch.Tensor:
    allowed = torch.zeros(num_items, dtype=torch.bool)
    allowed[keep] = True
    return allowed


@pytest.mark.parametrize("scenario", list(EXACT))
@pytest.mark.parametrize("count", [40, 12])  # more allowed items than K, and exactly K
def test_allowed_equals_the_head_on_the_filtered_gallery(scenario, count):
    overrides, keys = EXACT[scenario]
    inputs = make_inputs(seed=1)
    num_items = inputs["gallery"].shape[0]
    keep = torch.randperm(num_items, generator=torch.Generator().manual_seed(count))[:count].sort().values
    head = GeoSteerHead(**overrides)
    kwargs = {name: inputs[name] for name in keys}
    got = head(inputs["query"], inputs["gallery"], allowed=mask_of(keep, num_items), **kwargs)
    want = filtered_head(head, inputs, keys, keep)
    assert_same(got, want)
    assert torch.equal(got.first_stage_rank, want.first_stage_rank)


@pytest.mark.parametrize("scenario", ["parts_masked", "relations", "cosine"])
def test_fewer_allowed_than_k_pads_with_minus_one(scenario):
    overrides, keys = EXACT[scenario]
    inputs = make_inputs(seed=2)
    num_items = inputs["gallery"].shape[0]
    keep = torch.tensor([3, 17, 18, 40, 59])
    head = GeoSteerHead(**overrides)
    kwargs = {name: inputs[name] for name in keys}
    got = head(inputs["query"], inputs["gallery"], allowed=mask_of(keep, num_items), **kwargs)
    want = filtered_head(head, inputs, keys, keep)  # K' = 5 columns
    assert got.indices.shape == (inputs["query"].shape[0], 12)
    assert (got.indices[:, 5:] == -1).all() and torch.isinf(got.scores[:, 5:]).all()
    assert torch.isinf(got.first_stage_scores[:, 5:]).all()
    assert_same(got._replace(**{f: getattr(got, f)[:, :5] for f in got._fields if getattr(got, f) is not None}), want)
    # the cosine order: the padding is last there too
    assert (got.first_stage_rank[:, 5:] >= 5).all()


def test_per_query_mask_and_empty_row():
    inputs = make_inputs(seed=3)
    num_q, num_items = inputs["query"].shape[0], inputs["gallery"].shape[0]
    head = GeoSteerHead(k=8, lam=0.5)
    kwargs = {name: inputs[name] for name in PARTS}
    allowed = torch.rand(num_q, num_items, generator=torch.Generator().manual_seed(0)) > 0.5
    allowed[-1] = False  # a query whose filter matches nothing: all padding
    got = head(inputs["query"], inputs["gallery"], allowed=allowed, **kwargs)
    for q in range(num_q - 1):
        keep = allowed[q].nonzero().squeeze(1)
        one = {name: (t[q : q + 1] if name.startswith("query") else t) for name, t in inputs.items()}
        want = filtered_head(head, one, PARTS, keep)
        assert torch.equal(got.indices[q], want.indices[0])
        torch.testing.assert_close(got.scores[q], want.scores[0])
    assert (got.indices[-1] == -1).all()


def test_external_first_stage_drops_disallowed_ids():
    inputs = make_inputs(seed=4)
    num_items = inputs["gallery"].shape[0]
    scores = inputs["query"] @ inputs["gallery"].T
    top = scores.topk(30, dim=1)
    allowed = torch.arange(num_items) % 2 == 0
    head = GeoSteerHead(k=6, lam=0.0)
    got = head(inputs["query"], inputs["gallery"], first_stage=(top.values, top.indices), allowed=allowed)
    want = head(inputs["query"], inputs["gallery"], allowed=allowed)
    assert torch.equal(got.indices, want.indices)
    assert (got.indices % 2 == 0).all()


@pytest.mark.parametrize("bad, error, message", [
    (torch.ones(60, dtype=torch.int64), TypeError, "allowed must be a bool tensor"),
    (torch.ones(59, dtype=torch.bool), ValueError, r"allowed must be \[N=60\]"),
    (torch.ones(2, 60, dtype=torch.bool), ValueError, r"\[Q=5, N=60\]"),
    ([True] * 60, TypeError, "got list"),
])
def test_bad_allowed_is_named(bad, error, message):
    inputs = make_inputs()
    with pytest.raises(error, match=message):
        GeoSteerHead(k=5, lam=0.0)(inputs["query"], inputs["gallery"], allowed=bad)


def test_neighbourhood_mode_refuses_a_filter():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="neighbourhood mode"):
        GeoSteerHead(k=5, lam=0.5, mode="neighbourhood")(inputs["query"], inputs["gallery"],
                                                           allowed=torch.ones(60, dtype=torch.bool))


def test_compiled_head_with_a_filter_is_one_graph():
    torch._dynamo.reset()
    overrides, keys = EXACT["parts_masked"]
    inputs = make_inputs(seed=5)
    kwargs = {name: inputs[name] for name in keys}
    allowed = torch.arange(inputs["gallery"].shape[0]) % 3 != 0
    head = GeoSteerHead(**overrides)
    counter = GraphCounter()
    got = torch.compile(head, fullgraph=True, backend=counter)(inputs["query"], inputs["gallery"],
                                                              allowed=allowed, **kwargs)
    assert_same(got, head(inputs["query"], inputs["gallery"], allowed=allowed, **kwargs))
    assert len(counter.graphs) == 1 and "masked_first_stage" in counter.geosteer_ops()
    torch._dynamo.reset()



@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_filtered_search_feeds_the_head_exactly(kind):
    pytest.importorskip("faiss")
    from geosteer.stages.first_stage_faiss import FaissFirstStage

    inputs = make_inputs(seed=6)
    num_items = inputs["gallery"].shape[0]
    index = FaissFirstStage.build(inputs["gallery"], kind, nlist=4, nprobe=4)
    allowed = torch.arange(num_items) % 3 == 1  # 20 allowed
    head = GeoSteerHead(k=8, lam=0.5)
    kwargs = {name: inputs[name] for name in PARTS}
    scores, ids = index.search(inputs["query"], 8, allowed=allowed)
    assert allowed[ids].all()  # the index searched the subset: 8 allowed items came back
    got = head(inputs["query"], inputs["gallery"], first_stage=(scores, ids), allowed=allowed, **kwargs)
    want = head(inputs["query"], inputs["gallery"], allowed=allowed, **kwargs)
    assert torch.equal(got.indices, want.indices)
    # fewer allowed (3) than k: padded with disallowed ids, which the head marks -1
    few = torch.zeros(num_items, dtype=torch.bool)
    few[[5, 9, 44]] = True
    scores, ids = index.search(inputs["query"], 8, allowed=few)
    got = head(inputs["query"], inputs["gallery"], first_stage=(scores, ids), allowed=few, **kwargs)
    want = head(inputs["query"], inputs["gallery"], allowed=few, **kwargs)
    assert torch.equal(got.indices, want.indices) and (got.indices[:, 3:] == -1).all()
    with pytest.raises(ValueError, match=r"allowed must be \[N=60\]"):
        index.search(inputs["query"], 8, allowed=few[:10])
