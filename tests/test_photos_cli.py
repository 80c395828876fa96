"""`geosteer photos`: sample collages of the bundled photos and their queries, written to a folder."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from PIL import Image

from geosteer.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                reason="the sample photos come from scikit-image")


def test_writes_collages_and_queries_that_name_their_target(tmp_path, capsys):
    from geosteer.photos import PHRASINGS, make_split, render

    out = tmp_path / "photos"
    assert main(["photos", str(out), "--queries", "2", "--seed", "7"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"collage-{i:04d}.jpg" for i in range(10)] + ["queries.txt", "queries_all.txt"]  # 5 a query
    pairs = [line.split("\t") for line in (out / "queries.txt").read_text().splitlines()]
    split = make_split(7, num_queries=2, photos=("chelsea", "coffee", "rocket", "camera", "motorcycle"))
    assert [q for q, _ in pairs] == split.queries
    for (_, name), target in zip(pairs, split.targets):
        assert name == f"collage-{target:04d}.jpg"
        with Image.open(out / name) as im:
            assert im.size == render(split.gallery[target])[0].size
    # every query in every phrasing, query by query: query, target file, phrasing
    rows = [line.split("\t") for line in (out / "queries_all.txt").read_text().splitlines()]
    assert rows == [[split.phrased(k)[q], name, PHRASINGS[k]] for q, (_, name) in enumerate(pairs)
                    for k in range(len(PHRASINGS))]
    assert [r[0] for r in rows if r[2] == PHRASINGS[0]] == [q for q, _ in pairs]
    assert "wrote 10 collages" in capsys.readouterr().out


def test_the_default_folder_is_the_same_whatever_else_is_installed(tmp_path, monkeypatch):
    """Only scikit-image's five photos by default: the README's walk-through query is in every user's folder."""
    import geosteer.photos.sources as sources

    out = tmp_path / "default"
    assert main(["photos", str(out)]) == 0
    queries = [line.split("\t")[0] for line in (out / "queries.txt").read_text().splitlines()]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    walk_through = re.search(r'geosteer search my\.index "([^"]+)"', readme).group(1)
    assert len(queries) == 8 and walk_through in queries, (walk_through, queries)
    nouns = {p.noun for p in sources.PHOTOS.values() if p.package != "scikit-image"}
    assert not any(noun in q for q in queries for noun in nouns), queries
    found, missing = sources._load_all()
    only_skimage = ({k: v for k, v in found.items() if sources.PHOTOS[k].package == "scikit-image"},
                    {**missing, **{k: "not installed" for k in found if sources.PHOTOS[k].package != "scikit-image"}})
    monkeypatch.setattr(sources, "_load_all", lambda: only_skimage)
    alone = tmp_path / "skimage-alone"
    assert main(["photos", str(alone)]) == 0
    assert (alone / "queries.txt").read_text() == (out / "queries.txt").read_text()


def test_all_photos_draws_from_every_installed_photo(tmp_path):
    from geosteer.photos import load_photos, make_split

    out = tmp_path / "all"
    assert main(["photos", str(out), "--all-photos", "--queries", "3"]) == 0
    queries = [line.split("\t")[0] for line in (out / "queries.txt").read_text().splitlines()]
    assert queries == make_split(100, num_queries=3, photos=tuple(load_photos())).queries


@pytest.mark.parametrize("argv, message", [
    (["--queries", "0"], "--queries must be >= 1, got 0"),
    (["--queries", "100000"], "--queries 100000:"),
])
def test_bad_arguments_exit_2_naming_them(tmp_path, capsys, argv, message):
    assert main(["photos", str(tmp_path / "p"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["photos", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
