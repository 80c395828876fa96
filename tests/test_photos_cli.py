"""`geosteer photos`: sample collages of the bundled photos and their queries, written to a folder."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image

from geosteer.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                reason="the sample photos come from scikit-image")


def test_writes_collages_and_queries_that_name_their_target(tmp_path, capsys):
    from geosteer.photos import make_split, render

    out = tmp_path / "photos"
    assert main(["photos", str(out), "--queries", "2", "--seed", "7"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"collage-{i:04d}.jpg" for i in range(10)] + ["queries.txt"]  # 5 collages a query
    pairs = [line.split("\t") for line in (out / "queries.txt").read_text().splitlines()]
    split = make_split(7, num_queries=2)
    assert [q for q, _ in pairs] == split.queries
    for (_, name), target in zip(pairs, split.targets):
        assert name == f"collage-{target:04d}.jpg"
        with Image.open(out / name) as im:
            assert im.size == render(split.gallery[target])[0].size
    assert "wrote 10 collages" in capsys.readouterr().out


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
