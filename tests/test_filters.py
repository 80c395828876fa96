"""Filters (issue 23): `allowed` in the head's first stage is the head on the filtered gallery.

Each check builds the filtered gallery itself (the allowed rows of every
gallery tensor), runs the same head on it and maps its ids back, and
compares with the head run on the whole gallery under `allowed`.
"""

from __future__ import annotations

import pytest
import torch

from geosteer import GeoSteerHead
from geosteer.index import Index
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


@pytest.mark.parametrize("scenario", list(EXACT) + ["steer_near"])
@pytest.mark.parametrize("keep", [[3, 17, 18, 40, 59], [17, 40]])  # fewer than K = 12; the second fewer than neighbors = 3
def test_fewer_allowed_than_k_pads_with_minus_one(scenario, keep):
    if scenario == "steer_near":  # the steering neighbourhoods of the nearest pool items: padding kept out
        overrides, keys = SCENARIOS["steer_beta"][:2]
        overrides = {**overrides, "steer_design": "near"}
        if len(keep) < overrides["neighbors"]:
            pytest.skip("near with fewer valid candidates than neighbors is not claimed exact")
    else:
        overrides, keys = EXACT[scenario]
    inputs = make_inputs(seed=2)
    num_items, n = inputs["gallery"].shape[0], len(keep)
    keep = torch.tensor(keep)
    head = GeoSteerHead(**overrides)
    kwargs = {name: inputs[name] for name in keys}
    got = head(inputs["query"], inputs["gallery"], allowed=mask_of(keep, num_items), **kwargs)
    want = filtered_head(head, inputs, keys, keep)  # K' = n columns
    assert got.indices.shape == (inputs["query"].shape[0], 12)
    assert (got.indices[:, n:] == -1).all() and torch.isinf(got.scores[:, n:]).all()
    assert torch.isinf(got.first_stage_scores[:, n:]).all()
    assert_same(got._replace(**{f: getattr(got, f)[:, :n] for f in got._fields if getattr(got, f) is not None}), want)
    # the cosine order: the padding is last there too
    assert (got.first_stage_rank[:, n:] >= n).all()


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


# ---------------------------------------------------------------- the searcher and `where`

PATHS = [f"holidays/2024/{i:02d}.jpg" for i in range(10)] + [f"work/{i:02d}.png" for i in range(10, 20)] + [
    "top.jpg", None]


@pytest.mark.parametrize("where, expected", [
    ("path:holidays/*", list(range(10))),
    ("path:holidays/", list(range(10))),
    ("path:holidays", []),  # no wildcard, no slash: the exact path
    ("path:*.png", list(range(10, 20))),
    ("path:work/1?.png", list(range(10, 20))),
    ("path:top.jpg", [20]),
    ("path:*", list(range(21))),  # an unknown path matches nothing
    ("id:3,5-7", [3, 5, 6, 7]),
    ("id: 0 - 1 , 21", [0, 1, 21]),
    ("path:holidays/* & id:2-12", list(range(2, 10))),
    (["path:*.jpg", "id:9-20"], [9, 20]),
    ("PATH:[hw]*/0[0-1]*", [0, 1]),
])
def test_where_mask(where, expected):
    from geosteer.index.search import where_mask

    assert where_mask(where, PATHS).nonzero().squeeze(1).tolist() == expected


@pytest.mark.parametrize("where, error, message", [
    ("holidays/*", ValueError, "must be one of 'path:GLOB'"),
    ("name:x", ValueError, "must be one of"),
    ("path:", ValueError, "has nothing after 'path:'"),
    ("id:3,x", ValueError, "'x' is not an id or a range"),
    ("id:5-2", ValueError, r"ids must be in \[0, 21\]"),
    ("id:22", ValueError, r"ids must be in \[0, 21\]"),
    ([], ValueError, "where is empty"),
    (3, TypeError, "where must be a str or a list of str"),
])
def test_where_mask_errors_name_the_clause(where, error, message):
    from geosteer.index.search import where_mask

    with pytest.raises(error, match=message):
        where_mask(where, PATHS)


def searcher_inputs(seed: int = 7):
    from geosteer.inputs import gallery_side, query_side

    inputs = make_inputs(seed=seed)
    gallery = gallery_side(inputs["gallery"], gallery_parts=inputs["gallery_parts"],
                           gallery_parts_mask=inputs["gallery_parts_mask"], gallery_part_boxes=inputs["gallery_part_boxes"])
    query = query_side(inputs["query"], query_parts=inputs["query_parts"], query_parts_mask=inputs["query_parts_mask"],
                       query_relations=inputs["query_relations"])
    return gallery, query


@pytest.mark.parametrize("keep, k", [(list(range(0, 60, 2)), 5), ([4, 8, 15, 16], 6)])
def test_searcher_filter_equals_the_searcher_of_the_filtered_gallery(keep, k):
    import dataclasses

    from geosteer import get_config
    from geosteer.index import Searcher
    from geosteer.inputs import map_tensors

    gallery, query = searcher_inputs()
    keep = torch.tensor(keep)
    configs = {"rerank": get_config("default").replace(k=12), "cosine": get_config("cosine")}
    whole = Searcher(gallery, configs=configs, k_max=10)
    part = Searcher(map_tensors(gallery, lambda t: t[keep]), configs=configs, k_max=10)
    for method in configs:
        got = whole.search(query, method, k, allowed=mask_of(keep, 60))
        want = part.search(query, method, k)
        for a, b in zip(got.reranked + got.cosine, want.reranked + want.cosine):
            assert a.ids == keep[b.ids].tolist() and len(a.ids) == min(k, len(keep))
            assert a.scores == pytest.approx(b.scores) and a.boxes == b.boxes
            assert a.ranks_before == b.ranks_before
        assert dataclasses.asdict(got.config) == dataclasses.asdict(whole.heads[method].config)
    with pytest.raises(ValueError, match="allowed selects no image"):
        whole.search(query, k=3, allowed=torch.zeros(60, dtype=torch.bool))
    with pytest.raises(ValueError, match="matches no image"):
        whole.search(query, k=3, where="id:5 & id:6")
    with pytest.raises(TypeError, match="allowed must be a bool tensor"):
        whole.search(query, k=3, allowed=keep)


# ---------------------------------------------------------------- the command

from test_index_cli import images, index_dir, main  # noqa: E402,F401  (its demo-model index, built once per module)


def test_cli_where_searches_a_folder(index_dir, capsys):
    import json

    from geosteer.commands import args as shared

    assert main("search", index_dir, "a green star", "-k", "4", "--where", "path:y/*", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["where"] == ["path:y/*"] and data["images_allowed"] == 6
    rows = data["queries"][0]["reranked"]
    assert len(rows) == 4 and all(r["path"].startswith("y/") for r in rows)
    # the library on the same filter
    from geosteer.index import Searcher

    encoder = shared._load("demo", None, "cpu")
    searcher = Searcher(Index.open(index_dir), encoder, {"rerank": shared.method_configs()["rerank"]}, k_max=4)
    want = searcher.search(["a green star"], k=4, where="path:y/")
    assert [r["id"] for r in rows] == want.reranked[0].ids
    # repeated --where: AND; fewer matches than -k: fewer rows
    assert main("search", index_dir, "a green star", "-k", "4", "--where", "path:y/*", "--where", "id:0-6") == 0
    out = capsys.readouterr().out
    assert "filter path:y/* & id:0-6: 1 images" in out
    assert len([line for line in out.splitlines() if line.rstrip().endswith(".png")]) == 1


@pytest.mark.parametrize("where, message", [("path:z/*", "matches no image"), ("size:3", "must be one of")])
def test_cli_bad_where_is_one_line_status_2(index_dir, capsys, where, message):
    assert main("search", index_dir, "a green star", "--where", where) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--where" in err[0] and message in err[0]
