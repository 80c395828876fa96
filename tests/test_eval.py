"""The index pipeline and the evaluation: structure (with a tiny stand-in encoder), metrics,
the quality table, and one end-to-end run with the shipped demo model."""

from __future__ import annotations

import importlib.util
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geosteer
from geosteer import HeadConfig
from geosteer.encoders.regions import propose_regions
from geosteer.geoshapes.eval import Method, default_methods, evaluate, evaluate_index, ranks, scores_from_ranks, summarise
from geosteer.head import HeadResult
from geosteer.encoders.regions import METHODS, family_regions
from geosteer.geoshapes.eval import DEFAULT_REGIONS
from geosteer.geoshapes.index import SplitIndexer
from geosteer.index import Indexer

REPO = Path(__file__).resolve().parent.parent


class FakeEncoder:
    """A deterministic stand-in for `ClipEncoder`: images by mean colour, texts by hash."""

    def __init__(self, dim: int = 16, size: int = 48) -> None:
        self.name = "fake"
        self.model = nn.Linear(3, dim, bias=False)
        torch.nn.init.normal_(self.model.weight, generator=torch.Generator().manual_seed(0))
        self.image_size = (size, size)
        self.embed_dim = dim
        self.image_calls = 0
        self.text_calls = 0

    def preprocess(self, image):
        image = image.convert("RGB").resize(self.image_size)  # as a real transform resizes
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def encode_images(self, x, batch_size=64, progress=False):
        self.image_calls += x.shape[0]
        with torch.no_grad():
            return F.normalize(self.model(x.mean(dim=(2, 3))), dim=-1)

    def encode_texts(self, texts, batch_size=256, progress=False):
        self.text_calls += len(texts)
        seeds = [zlib.crc32(t.encode()) for t in texts]
        return F.normalize(torch.stack([torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]), dim=-1)


@pytest.fixture(scope="module")
def fake_index():
    enc = FakeEncoder()
    return enc, SplitIndexer(enc).split("relation", 3, num_queries=6)


def test_region_sets_are_exactly_the_proposals_of_each_method(fake_index):
    _, idx = fake_index
    images = idx.split.images()
    assert images[0].width == 48  # rendered at the encoder's input size
    from geosteer.encoders.regions import METHODS

    for method in METHODS:
        parts, mask, boxes = idx.regions(method)
        assert parts.shape[:2] == mask.shape == boxes.shape[:2]
        for i, im in enumerate(images):
            got = [tuple(int(v) for v in b) for b in boxes[i][mask[i]].tolist()]
            assert got == [tuple(b) for b in propose_regions(im, method)]
        # padding rows are zero and masked; real rows are unit vectors
        assert torch.all(parts[~mask] == 0)
        torch.testing.assert_close(parts[mask].norm(dim=-1), torch.ones(int(mask.sum())))


def test_masked_regions_are_colour_regions_cropped_alone():
    import random

    from geosteer.geoshapes import COLOUR_RGB, place, render
    from geosteer.encoders.regions import masked_regions

    rng = random.Random(0)
    for _ in range(20):
        scene = place(rng, [("pentagon", "red"), ("hexagon", "blue")], placement="touching")
        arr = np.asarray(render(scene, 96))
        boxes, crops = masked_regions(arr, 96)
        colour_boxes = propose_regions(arr, "colours")
        assert len(boxes) == len(crops) == len(colour_boxes) == 2
        for (x0, y0, x1, y1), (c0, r0, c1, r1) in zip(boxes, colour_boxes):
            # the colour region grown by its one-pixel rim
            assert x0 <= c0 and y0 <= r0 and x1 >= c1 and y1 >= r1
            assert c0 - x0 <= 1 and r0 - y0 <= 1 and x1 - c1 <= 1 and y1 - r1 <= 1
        # each crop shows one of the two colours, not the other
        for crop in crops:
            px = np.asarray(crop).reshape(-1, 3).astype(int)
            near = {c: int((np.abs(px - COLOUR_RGB[c]).max(axis=1) < 40).sum()) for c in ("red", "blue")}
            assert min(near.values()) <= 0.02 * max(near.values()), near


def test_identical_crops_are_encoded_once():
    enc = FakeEncoder()
    idx = SplitIndexer(enc, families=("grid",)).split("binding", 0, num_queries=4)
    num_images = idx.images.shape[0]
    cells = idx.families["grid"].embeddings.shape[0]
    assert cells == 13 * num_images
    assert enc.image_calls < num_images + cells  # empty background cells (and more) shared
    # ... and sharing changes nothing: a cell equals the encoding of its own crop
    im = idx.split.images()[1]
    _, crops = family_regions(im, "grid", 48)
    direct = enc.encode_images(torch.stack([enc.preprocess(c) for c in crops]))
    fam = idx.families["grid"]
    torch.testing.assert_close(fam.embeddings[fam.offsets[1] : fam.offsets[2]], direct)


def test_query_tensors_carry_parts_relations_and_negatives(fake_index):
    enc, idx = fake_index
    sp = idx.split
    q = idx.query_tensors("caption")
    num_queries = len(sp.queries)
    assert q["query"].shape == (num_queries, 16)
    assert q["query_relations"].dtype == torch.long and q["query_relations"].shape[0] == num_queries
    for i, rels in enumerate(sp.query_relations):
        for k, (a, b, name) in enumerate(rels):
            assert q["query_relations"][i, k].tolist() == [a, b, geosteer.RELATIONS.index(name)]
        assert torch.all(q["query_relations"][i, len(rels):] == -1)
        assert int(q["query_parts_mask"][i].sum()) == len(sp.query_parts[i])
        assert int(q["negatives_mask"][i].sum()) == len(sp.negatives[i])
        torch.testing.assert_close(q["negatives"][i, : len(sp.negatives[i])], enc.encode_texts(sp.negatives[i]))
    assert q["positives"].shape == (num_queries, 1, 16)
    p = idx.query_tensors("parts")
    assert p["negatives"].shape == p["query_parts"].shape  # one negative per part
    torch.testing.assert_close(p["positives"], p["query_parts"])


def test_disk_cache_round_trip(tmp_path):
    enc = FakeEncoder()
    first = SplitIndexer(enc, cache_dir=tmp_path).split("count", 1, num_queries=3)
    calls = enc.image_calls
    again = SplitIndexer(enc, cache_dir=tmp_path).split("count", 1, num_queries=3)
    assert enc.image_calls == calls  # nothing re-encoded
    assert len(list(tmp_path.iterdir())) == 1
    torch.testing.assert_close(again.images, first.images)
    for method in ("colours+grid", "components"):
        for a, b in zip(again.regions(method), first.regions(method)):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(again.query_tensors()["negatives"], first.query_tensors()["negatives"])


def test_ranks_and_metrics():
    ids = torch.tensor([[3, 1, 2, 0, 4, 5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11]])
    zeros = torch.zeros(ids.shape)
    result = HeadResult(ids, zeros, zeros, zeros, zeros, zeros, ids[..., None])
    r = ranks(result, torch.tensor([3, 7, 12]))
    assert r[0] == 1 and r[1] == 8 and math.isinf(r[2])
    m = scores_from_ranks(r)
    assert m["r1"] == pytest.approx(1 / 3) and m["r5"] == pytest.approx(1 / 3)
    assert m["ndcg10"] == pytest.approx((1.0 + 1 / math.log2(9)) / 3)
    s = summarise([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.2) and s["sem"] == pytest.approx(0.2 / math.sqrt(3))


def test_methods_follow_the_presets():
    methods = {m.name: m for m in default_methods(k=30)}
    assert set(methods) == {"cosine", "rerank", "rerank-max", "steer"}
    assert all(m.config.k == 30 for m in methods.values())
    assert methods["cosine"].config.lam == 0 and not methods["cosine"].uses_steering
    assert methods["rerank-max"].config.matching == "max"
    assert methods["rerank-max"].config.replace(matching="hungarian") == methods["rerank"].config
    assert methods["steer"].uses_steering and methods["steer"].config.lam == 0
    # the confuser penalty is measured on region sets, so steering is fed them too
    assert methods["steer"].uses_parts == (methods["steer"].config.beta > 0)
    with pytest.raises(ValueError, match="method names"):
        default_methods(names=["nope"])


def test_cosine_method_is_plain_cosine_ranking(fake_index):
    _, idx = fake_index
    res = evaluate_index(idx, [Method("cosine", HeadConfig(k=10, lam=0.0))])
    sims = idx.query_tensors()["query"] @ idx.images.T
    target_sims = sims.gather(1, idx.targets[:, None])
    expected_r1 = float((sims.max(dim=1).values == target_sims[:, 0]).float().mean())
    assert res["cosine"]["r1"] == pytest.approx(expected_r1)
    assert 0.0 <= res["_diagnostics"]["cosine_beats_hard"] <= 1.0


def _load_quality_module():
    spec = importlib.util.spec_from_file_location("make_quality_table", REPO / "bench" / "make_quality_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quality_table_from_eval_json(tmp_path):
    enc = FakeEncoder()
    results = evaluate(SplitIndexer(enc), splits=["binding", "control"], seeds=[0, 1], num_queries=3,
                       methods=default_methods(k=8))
    mod = _load_quality_module()
    text = mod.markdown(json.loads(json.dumps(results)))
    assert "| split | cosine | rerank | steer |" in text
    assert "| binding |" in text and "| control |" in text and "per-part max" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{mod.START}\nold\n{mod.END}\noutro\n")
    mod.write_between_markers(readme, text)
    doc = readme.read_text()
    assert doc.startswith("intro\n") and doc.endswith("outro\n") and "old" not in doc and "| binding |" in doc
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="quality:start"):
        mod.write_between_markers(readme, text)
    # A file from before 2026-12 also holds "rerank+steer" (the default preset again): its column is left out.
    old = json.loads(json.dumps(results))
    for table in (old["methods"], *old["summary"].values(), *old["vs_cosine"].values(),
                  *(seed for split in old["per_seed"].values() for seed in split.values())):
        table["rerank+steer"] = table["rerank"]
    assert mod.markdown(old) == text


# ---------------------------------------------------------------- the shipped demo model


@pytest.fixture(scope="module")
def demo_indexer():
    from geosteer.encoders.clip import load_demo_model

    return SplitIndexer(load_demo_model(), families=METHODS[DEFAULT_REGIONS])


def test_rerank_beats_cosine_on_binding_with_the_demo_model(demo_indexer):
    results = evaluate(demo_indexer, splits=["binding"], seeds=[100], num_queries=20,
                       methods=default_methods(names=["cosine", "rerank"]))
    cos = results["summary"]["binding"]["cosine"]["r1"]["mean"]
    rer = results["summary"]["binding"]["rerank"]["r1"]["mean"]
    # cosine cannot tell a scene from its colour-swapped twin; region matching can
    assert results["diagnostics"]["binding"]["100"]["cosine_beats_hard"] < 0.8
    assert rer >= cos + 0.2, (cos, rer)
    assert rer >= 0.7


def test_one_to_one_matching_beats_per_part_max_on_count(demo_indexer):
    # "two red pentagons" vs a scene holding one: per-part max lets one region answer twice
    results = evaluate(demo_indexer, splits=["count"], seeds=[100], num_queries=20,
                       methods=default_methods(names=["rerank", "rerank-max"]))
    hungarian = results["summary"]["count"]["rerank"]["r1"]["mean"]
    per_part_max = results["summary"]["count"]["rerank-max"]["r1"]["mean"]
    assert hungarian >= per_part_max + 0.1, (hungarian, per_part_max)


def test_steering_beats_cosine_on_fine_grained_shapes(demo_indexer):
    results = evaluate(demo_indexer, splits=["fine"], seeds=[100], num_queries=20,
                       methods=default_methods(names=["cosine", "steer"]))
    cos = results["summary"]["fine"]["cosine"]["r1"]["mean"]
    steered = results["summary"]["fine"]["steer"]["r1"]["mean"]
    assert steered >= cos + 0.1, (cos, steered)


# ---------------------------------------------------------------- region confuser penalty


def test_region_confuser_penalty_demotes_the_twin_whose_region_fits_the_confuser():
    """The twin is a hair closer on the pooled embedding; one of its regions fits the negative part."""
    g = torch.Generator().manual_seed(0)
    dim, num_queries = 24, 6
    unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    query, part, confuser, other, noise_t, noise_w = (unit(torch.randn(num_queries, dim, generator=g)) for _ in range(6))
    target = unit(query + 0.30 * noise_t)
    twin = unit(query + 0.25 * noise_w)  # closer to q: cosine ranks it first
    gallery = torch.cat([target, twin])
    regions = torch.stack([
        torch.cat([unit(part + 0.2 * confuser), unit(confuser + 0.2 * part)]),  # the object that differs
        torch.cat([other, other]),  # the object they share
        torch.zeros(2 * num_queries, dim),  # a padded slot
    ], dim=1)
    mask = torch.tensor([[True, True, False]]).expand(2 * num_queries, -1).clone()
    targets = torch.arange(num_queries)
    cosine = geosteer.GeoSteerHead(k=2, lam=0.0)(query, gallery)
    assert (cosine.indices[:, 0] == targets + num_queries).all()
    anchors = dict(negatives=confuser[:, None], positives=part[:, None])
    steered = geosteer.GeoSteerHead(k=2, lam=0.0, beta=1.0)(
        query, gallery, query_parts=part[:, None], gallery_parts=regions, gallery_parts_mask=mask, **anchors)
    assert (steered.indices[:, 0] == targets).all()
    # penalty = relu(r(twin, u) - r(twin, p)) > 0 for the twin, 0 for the target
    penalty = (steered.first_stage_scores - steered.steered_scores)
    assert torch.all(penalty[:, 0] == 0) and torch.all(penalty[:, 1] > 0.1)
    # the same penalty on the pooled embeddings (no region sets) cannot see the difference
    pooled = geosteer.GeoSteerHead(k=2, lam=0.0, beta=1.0)(query, gallery, **anchors)
    assert (pooled.indices[:, 0] == targets + num_queries).all()


def test_own_images_and_captions_feed_the_head():
    from geosteer.geoshapes import Scene, ShapeObject, render

    enc = FakeEncoder()
    indexer = Indexer(enc, vocabulary={"circle": "hexagon"})
    scenes = [Scene((ShapeObject("circle", "red", 0.3, 0.5, 0.3), ShapeObject("star", "blue", 0.7, 0.5, 0.3))),
              Scene((ShapeObject("square", "green", 0.5, 0.5, 0.4),))]
    images = [render(scenes[0], 64), render(scenes[1], 40)]  # sizes may differ
    gallery = indexer.index_images(images, method="masked")
    assert isinstance(gallery, geosteer.GallerySide)
    assert gallery["gallery"].shape == gallery.embeddings.shape == (2, 16)
    assert gallery["gallery_parts_mask"].sum(1).tolist() == [2, 1]
    from geosteer.geoshapes import object_boxes

    # boxes are in each image's own pixels
    torch.testing.assert_close(gallery["gallery_part_boxes"][1, 0], torch.tensor(object_boxes(scenes[1], 40)[0]), atol=1.5, rtol=0)
    queries = indexer.encode_queries(["a red circle to the left of a blue star", "a green square"])
    assert isinstance(queries, geosteer.QuerySide)
    assert queries["query_parts_mask"].sum(1).tolist() == [2, 1]
    assert queries["query_relations"][0, 0].tolist() == [0, 1, geosteer.RELATIONS.index("left_of")]
    assert queries["query_relations"][1, 0].tolist() == [-1, -1, -1]
    head = geosteer.GeoSteerHead(geosteer.get_config("default", k=2))
    result = head(**queries, **gallery)
    assert result.indices.shape == (2, 2)
    typed = head(queries, gallery)  # the same call with the typed sides
    assert torch.equal(typed.indices, result.indices) and torch.equal(typed.scores, result.scores)
    grid = indexer.index_images(images, method="grid")
    assert grid["gallery_parts_mask"].sum(1).tolist() == [13, 13]
    with pytest.raises(ValueError, match="method must be one of"):
        indexer.index_images(images, method="nope")
