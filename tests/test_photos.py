"""The real-photo collage benchmark (geosteer.photos): splits, rendering, metrics, the layer rule."""

import ast
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tiny_encoder

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
pytestmark = pytest.mark.skipif(not HAS_SKIMAGE, reason="the photo benchmark's photos and segments need scikit-image")

REPO = Path(__file__).resolve().parent.parent


def test_every_caption_parses_into_two_nouns_and_one_relation():
    """Phrasing 0 is the template the regex splitter reads exactly (the spaCy parser: the test below)."""
    from geosteer.encoders.parts import split_parts
    from geosteer.photos import PHOTOS, caption
    from geosteer.relations import AXIS_RELATIONS

    for a in PHOTOS:
        for b in PHOTOS:
            if a != b:
                for rel in AXIS_RELATIONS:
                    parts, relations = split_parts(caption(a, rel, b), parser="regex")
                    assert parts == [PHOTOS[a].noun, PHOTOS[b].noun]
                    assert relations == [(0, 1, rel)]


CONVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


def test_each_phrasing_says_the_fact_in_its_own_words():
    from geosteer.photos import PHRASINGS, caption, phrase, phrasing_index

    assert len(PHRASINGS) >= 5
    expected = {
        "left_of": ["a cat to the left of a rocket", "a rocket to the right of a cat",
                    "a cat on the left and a rocket on the right", "a rocket with a cat on its left",
                    "a cat, and to its right a rocket", "a cat in the left half, a rocket in the right half"],
        "right_of": ["a cat to the right of a rocket", "a rocket to the left of a cat",
                     "a cat on the right and a rocket on the left", "a rocket with a cat on its right",
                     "a cat, and to its left a rocket", "a cat in the right half, a rocket in the left half"],
        "above": ["a cat above a rocket", "a rocket below a cat", "a cat at the top and a rocket at the bottom",
                  "a rocket with a cat above it", "a cat, and below it a rocket",
                  "a cat in the upper half, a rocket in the lower half"],
        "below": ["a cat below a rocket", "a rocket above a cat", "a cat at the bottom and a rocket at the top",
                  "a rocket with a cat below it", "a cat, and above it a rocket",
                  "a cat in the lower half, a rocket in the upper half"],
    }
    for rel, sentences in expected.items():
        assert [phrase("a cat", rel, "a rocket", k) for k in range(len(PHRASINGS))] == sentences
        assert [phrase("a cat", rel, "a rocket", name) for name in PHRASINGS] == sentences
        # the converse fact, said the converse way, is the same sentence
        assert phrase("a rocket", CONVERSE[rel], "a cat", "converse") == sentences[0]
    assert caption("chelsea", "left_of", "rocket") == caption("chelsea", "left_of", "rocket", 0) == expected["left_of"][0]
    assert caption("chelsea", "above", "rocket", "with") == expected["above"][3]
    assert phrasing_index("halves") == 5
    for bad in (6, -1, True, 1.0, "sideways"):
        with pytest.raises(ValueError, match="phrasing must be one of"):
            phrase("a cat", "left_of", "a rocket", bad)
    with pytest.raises(ValueError, match="relation must be one of"):
        phrase("a cat", "on", "a rocket")
    with pytest.raises(ValueError, match="obj must be a non-empty str"):
        phrase("a cat", "left_of", " ")


def test_reads_fact_wants_both_photos_and_the_relation_or_its_converse():
    from geosteer.photos import PHOTOS, reads_fact

    cat, rocket = PHOTOS["chelsea"].noun, PHOTOS["rocket"].noun
    fact = ("chelsea", "left_of", "rocket")
    assert reads_fact([cat, rocket], [(0, 1, "left_of")], fact)
    assert reads_fact([rocket, cat], [(0, 1, "right_of")], fact)  # the converse
    assert not reads_fact([cat, rocket], [(0, 1, "right_of")], fact)  # reversed
    assert not reads_fact([cat, rocket], [], fact)
    assert not reads_fact([cat], [], fact)
    assert not reads_fact([cat, rocket, "a tripod"], [(0, 1, "left_of")], fact)  # a phrase on neither photo
    # a phrase its noun holds lies on its photo: "a woman in uniform" read as woman + uniform
    assert PHOTOS["grace_hopper"].noun == "a woman in uniform"
    assert reads_fact(["a woman", "uniform", cat], [(1, 2, "above")], ("grace_hopper", "above", "chelsea"))
    for bad in (("unicorn", "left_of", "rocket"), ("chelsea", "on", "rocket")):
        with pytest.raises(ValueError, match="fact"):
            reads_fact([cat, rocket], [], bad)


@pytest.mark.skipif(importlib.util.find_spec("spacy") is None, reason="the caption parser needs the parse extra")
@pytest.mark.parametrize("phrasing", ["preposition", "converse", "positions", "with", "apposition", "halves"])
def test_the_caption_parser_reads_every_fact_in_each_phrasing(phrasing):
    from geosteer.encoders.parts import split_captions

    try:
        split_captions(["a cat"], parser="spacy")
    except ImportError as e:  # spaCy without its English model
        pytest.skip(str(e))
    from geosteer.photos import PHOTOS, caption, reads_fact
    from geosteer.relations import AXIS_RELATIONS

    facts = [(a, rel, b) for a in PHOTOS for b in PHOTOS if a != b for rel in AXIS_RELATIONS]
    texts = [caption(*f, phrasing=phrasing) for f in facts]
    wrong = [(t, p, r) for t, (p, r), f in zip(texts, split_captions(texts, parser="spacy"), facts)
             if not reads_fact(p, r, f)]
    assert not wrong, (len(wrong), len(facts), wrong[:5])


def test_a_split_says_its_queries_in_every_phrasing():
    from geosteer.photos import PHRASINGS, caption, make_split

    split = make_split(5, num_queries=4)
    assert split.phrased(0) == split.phrased("preposition") == split.queries
    for k in range(len(PHRASINGS)):
        assert split.phrased(k) == [caption(*fact, phrasing=k) for fact in split.named]
    assert len({q for k in range(len(PHRASINGS)) for q in split.phrased(k)}) == 4 * len(PHRASINGS)


def test_photos_are_bundled_squares():
    from geosteer.photos import PHOTOS, load_photos, missing_photos

    photos = load_photos()
    assert {"chelsea", "coffee", "rocket", "camera", "motorcycle"} <= set(photos)
    assert set(photos) | set(missing_photos()) == set(PHOTOS)
    for im in photos.values():
        assert im.mode == "RGB" and im.width == im.height >= 200
    with pytest.raises(ValueError, match="unknown photo"):
        load_photos(("unicorn",))


def test_collage_render_and_its_variants():
    from geosteer.photos import Collage, Tile, render
    from geosteer.photos.collages import relation_of, satisfies, tile_boxes

    c = Collage((Tile("chelsea"), Tile("coffee", scale=0.8, fx=0.2, flip=True), Tile("rocket")), "row", side=40, gap=4)
    image, boxes = render(c)
    assert image.size == (128, 40) and boxes == tile_boxes(c) == [(0, 0, 40, 40), (44, 0, 84, 40), (88, 0, 128, 40)]
    arr = np.asarray(image)
    assert (arr[:, 40:44] == 255).all()  # the gap shows the background
    twin = c.swapped(0, 2)
    tarr = np.asarray(render(twin)[0])
    assert np.array_equal(tarr[:, :40], arr[:, 88:]) and np.array_equal(tarr[:, 88:], arr[:, :40])  # same pixels, moved
    col = c.relaid()
    carr = np.asarray(render(col)[0])
    assert render(col)[0].size == (40, 128) and np.array_equal(carr[44:84], arr[:, 44:84])
    assert relation_of(c, 0, 2) == "left_of" and relation_of(col, 2, 0) == "below"
    assert satisfies(c, "chelsea", "left_of", "rocket") and not satisfies(twin, "chelsea", "left_of", "rocket")
    assert satisfies(twin, "rocket", "left_of", "chelsea") and not satisfies(col, "chelsea", "left_of", "rocket")
    assert satisfies(col, "chelsea", "above", "rocket") and not satisfies(c, "chelsea", "above", "rocket")
    assert not satisfies(c.replaced(0, Tile("flower")), "chelsea", "left_of", "rocket")


def test_split_is_seeded_and_every_query_has_one_relevant_collage():
    from geosteer.photos import make_split, satisfies

    split = make_split(5, num_queries=12)
    again = make_split(5, num_queries=12)
    assert split.queries == again.queries and split.gallery == again.gallery
    assert make_split(6, num_queries=12).queries != split.queries
    assert len(split.gallery) == 5 * 12
    for q, fact in enumerate(split.named):
        relevant = [i for i, g in enumerate(split.gallery) if satisfies(g, *fact)]
        assert relevant == [split.targets[q]]
        target = split.gallery[split.targets[q]]
        subject, _, obj = fact
        assert set(split.gallery[split.twins[q]].photos) == set(target.photos)
        assert split.gallery[split.twins[q]].photos != target.photos
        assert split.gallery[split.relaid[q]].tiles == target.tiles
        assert split.gallery[split.relaid[q]].layout != target.layout
        assert 2 <= len(target.tiles) <= 4
        for r, missing in zip(split.replaced[q], (subject, obj)):
            assert missing not in split.gallery[r].photos
    with pytest.raises(ValueError, match="sizes"):
        make_split(0, sizes=(1,))


def test_metrics_count_the_hard_negatives():
    from geosteer.photos import metrics, ranking_metrics

    split = SimpleNamespace(targets=[0, 5], twins=[1, 6], relaid=[2, 7], replaced=[[3, 4], [8, 9]])
    index = SimpleNamespace(split=split)
    result = SimpleNamespace(indices=torch.tensor([[0, 1, 2, 3, 4], [6, 5, 8, 7, 3]]))
    m = metrics(index, result)
    assert m == {"r1": 0.5, "r5": 1.0, "twin": 0.5, "layout": 1.0, "replaced": 1.0}
    # a target outside the top K loses every comparison, even to items also outside
    result = SimpleNamespace(indices=torch.tensor([[9, 8, 7], [1, 2, 3]]))
    assert metrics(index, result) == {"r1": 0.0, "r5": 0.0, "twin": 0.0, "layout": 0.0, "replaced": 0.0}
    split.queries = ["q0", "q1"]
    assert ranking_metrics(split, result.indices) == metrics(index, result)
    with pytest.raises(ValueError, match="one row per query"):
        ranking_metrics(split, result.indices[:1])


class TinyEncoder(tiny_encoder.TinyEncoder):
    """Texts as distinct seeded vectors, so queries differ."""

    def encode_texts(self, texts, batch_size=256, progress=False):
        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.rand(len(texts), 3, generator=g) + 0.1, dim=-1)


def test_the_pipeline_runs_end_to_end(tmp_path):
    from geosteer.index import Indexer
    from geosteer.photos import default_methods, index_split, make_split, metrics, run_method
    from geosteer.photos.benchmark import crop_recognition, first_stage_recall, part_localisation, region_recall
    from geosteer.photos.cache import CachedEncoder

    split = make_split(3, num_queries=3)
    encoder = CachedEncoder(TinyEncoder(), tmp_path)
    indexer = Indexer(encoder)
    index = index_split(indexer, split, ["segments", "grid"])
    assert index.images.shape == (15, 3)
    assert encoder.misses > 0
    encoder.save()
    assert CachedEncoder(TinyEncoder(), tmp_path)._table.keys() == encoder._table.keys()
    for method in default_methods(k=10):
        result = run_method(index, method)
        assert result.indices.shape == (3, 10)
        m = metrics(index, result)
        assert all(0.0 <= v <= 1.0 for v in m.values())
        if method.config.lam > 0:
            assert 0.0 <= part_localisation(index, method, result) <= 1.0
    assert region_recall(index, "segments+grid") >= 0.75
    assert region_recall(index, "grid") < region_recall(index, "segments+grid")
    assert first_stage_recall(index, 20) == 1.0
    assert 0.0 <= crop_recognition(indexer, index) <= 1.0
    # a second indexing of the same split is served from the cache
    before = encoder.misses
    index_split(Indexer(encoder), split, ["segments"])
    assert encoder.misses == before
    with pytest.raises(ValueError, match="phrasing must be one of"):
        index_split(Indexer(encoder), split, ["segments"], phrasing=9)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("geosteer.photos"):
            out.add(node.value)
    return out


def test_photos_is_an_application_of_the_public_api():
    # the library (geosteer/ outside the application: photos/, geoshapes/, commands/, cli.py) never imports it ...
    for path in (REPO / "geosteer").rglob("*.py"):
        rel = path.relative_to(REPO / "geosteer").parts
        if rel[0] in ("photos", "geoshapes", "commands") or rel == ("cli.py",):
            continue
        assert not any(m == "geosteer.photos" or m.startswith("geosteer.photos.") for m in _imports(path)), path
    # ... and it imports only public names of the library (and no other application)
    for path in (REPO / "geosteer" / "photos").rglob("*.py"):
        for m in _imports(path):
            if not m.startswith("geosteer.") or m.startswith("geosteer.photos"):
                continue
            assert not m.startswith(("geosteer.geoshapes", "geosteer.cli")), (path, m)
            assert not any(p.startswith("_") and not p.startswith("__") for p in m.split(".")), (path, m)
