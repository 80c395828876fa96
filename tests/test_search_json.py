"""The one JSON form of a search: `geosteer search --json` and the sharded search entry
(`python -m geosteer.distributed.search ... --json`, one rank without torchrun) print the same
document for the same caption, both loading the encoder the index's manifest records."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from geosteer import cli
from geosteer.geoshapes import random_scene, render

REPO = Path(__file__).resolve().parent.parent
QUERY = "a red square to the left of a blue circle"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    images = tmp_path_factory.mktemp("images")
    for i in range(10):
        render(random_scene(random.Random(300 + i)), size=64).save(images / f"{i:02d}.png")
    out = tmp_path_factory.mktemp("out") / "index"
    assert cli.main(["index", str(images), "--out", str(out), "--no-progress"]) == 0
    return out


def test_search_and_the_sharded_entry_print_one_form(index_dir, capsys):
    assert cli.main(["search", str(index_dir), QUERY, "-k", "4", "--method", "relations", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    done = subprocess.run([sys.executable, "-m", "geosteer.distributed.search", str(index_dir), QUERY, "-k", "4",
                           "--preset", "relations", "--json", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads(done.stdout)
    assert sharded["ranks"] == 1 and sharded["images"] == printed["images"] == 10
    assert printed["method"] == "relations" and sharded["method"] == "relations"  # the method, the preset
    assert printed["config"] == sharded["config"] and printed["k"] == sharded["k"] == 4
    (mine,), (theirs,) = printed["queries"], sharded["queries"]
    assert mine["query"] == theirs["query"] == QUERY and mine["parts"] == theirs["parts"] == ["a red square", "a blue circle"]
    for column in ("cosine", "reranked"):
        for a, b in zip(mine[column], theirs[column], strict=True):
            assert list(a) == list(b)  # the same keys, in the same order
            # paths: as the manifest records them / the files the ranks opened
            assert Path(b["path"]).name == Path(a["path"]).name and Path(b["path"]).is_absolute()
            same = {key: a[key] for key in a if key not in ("path", "score", "first_stage", "alignment", "structure")}
            assert same == {key: b[key] for key in same}  # ids, ranks, sizes, matched boxes
            for key in ("score", "first_stage", "alignment", "structure"):
                assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert any(hit["matches"] for hit in mine["reranked"]) and all(hit["width"] == 64 for hit in mine["reranked"])
