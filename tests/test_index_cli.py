"""`geosteer index` and `geosteer search` end to end with the shipped demo model; bad arguments exit 2
with one line, before anything is loaded."""

from __future__ import annotations

import base64
import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from geosteer import cli
from geosteer.commands import args as shared
from geosteer.commands import search as search_command
from geosteer.geoshapes import random_scene, render
from geosteer.index import Index

REPO = Path(__file__).resolve().parent.parent


def main(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(12):
        sub = folder / ("x" if i < 6 else "y")
        sub.mkdir(exist_ok=True)
        render(random_scene(random.Random(100 + i)), size=96).save(sub / f"{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def index_dir(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "index"
    assert main("index", images, "--out", out, "--no-progress", "--batch-size", "8", "--shard-size", "5") == 0
    return out


def test_index_writes_an_index_and_a_summary(index_dir, images, capsys):
    index = Index.open(index_dir)
    assert len(index) == 12 and [s["path"] for s in index.skipped] == ["broken.jpg"]
    assert (index.manifest["encoder"]["name"], index.manifest["encoder"]["pretrained"]) == ("demo", None)
    assert index.manifest["regions"] == "grid"
    assert dict(zip(index.paths, index.sizes)) == {p: (96, 96) for p in index.paths}


def test_a_rerun_with_nothing_new_loads_no_model(index_dir, images, capsys, monkeypatch):
    """Indexed and skipped files are known from the manifest: the summary, exit 0, and the model never loads."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded for a re-run with nothing new")

    monkeypatch.setattr(shared, "_load", refuse)
    before = (index_dir / "manifest.json").read_bytes()
    assert main("index", images, "--out", index_dir, "--no-progress") == 0
    out = capsys.readouterr().out
    assert re.search(r"12 images indexed, 1 skipped \(nothing new; model not loaded: 0 encoded, 0 skipped this run\) "
                     r"in [\d.]+ s; model demo, regions grid, n=13, D=384", out), out
    assert (index_dir / "manifest.json").read_bytes() == before  # nothing written either


def test_index_adds_new_images_on_a_rerun(images, tmp_path, capsys):
    folder = tmp_path / "more"
    folder.mkdir()
    for i in range(3):
        render(random_scene(random.Random(i)), size=96).save(folder / f"{i}.png")
    out = tmp_path / "index"
    assert main("index", folder, "--out", out, "--no-progress") == 0
    render(random_scene(random.Random(7)), size=96).save(folder / "new.png")
    assert main("index", folder, "--out", out, "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "1 new images added: 1 encoded" in printed and "images/s; model demo" in printed
    assert Index.open(out).paths == ("0.png", "1.png", "2.png", "new.png")


def test_search_prints_a_table(index_dir, capsys):
    assert main("search", index_dir, "a red square to the left of a blue circle", "a green star", "-k", "4") == 0
    out = capsys.readouterr().out
    assert out.count("rank  before    score   cosine") == 2
    assert "query 1/2: 'a red square to the left of a blue circle'   parts: a red square | a blue circle" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s+-?\d\.\d{4}", line)]
    assert len(rows) == 8 and all(line.rstrip().endswith(".png") for line in rows)


def test_search_json_matches_the_library(index_dir, capsys):
    assert main("search", index_dir, "a green star", "-k", "3", "--method", "cosine", "--json") == 0
    data = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout
    assert (data["k"], data["method"], data["preset"], data["model"], data["images"]) == (3, "cosine", "cosine", "demo", 12)
    q = data["queries"][0]
    assert q["query"] == "a green star" and q["parts"] == ["a green star"]
    assert [r["id"] for r in q["cosine"]] == [r["id"] for r in q["reranked"]]  # cosine method: nothing moves
    from geosteer import get_config

    expected = Index.open(index_dir, encoder=shared._load("demo", None, "cpu")).search(
        ["a green star"], get_config("cosine"), k=3)
    assert [r["id"] for r in q["reranked"]] == expected.reranked[0].ids
    assert [r["score"] for r in q["reranked"]] == pytest.approx(expected.reranked[0].scores)
    assert all((r["width"], r["height"]) == (96, 96) for r in q["reranked"])


def test_search_html_is_self_contained(index_dir, tmp_path, capsys):
    page = tmp_path / "pages" / "out.html"
    assert main("search", index_dir, "a red square to the left of a blue circle", "-k", "3", "--html", page) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    assert "before: cosine top-3" in text and "after: rerank top-3" in text
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(uris) == 6 and "http" not in text.replace("http-equiv", "")
    thumb = Image.open(io.BytesIO(base64.b64decode(uris[3])))  # the first re-ranked hit, boxes drawn in part colours
    assert max(thumb.size) == search_command.THUMB
    colours = {thumb.getpixel((x, y)) for x in range(thumb.width) for y in range(thumb.height)}
    near = lambda c, ref: all(abs(a - b) < 40 for a, b in zip(c, ref))  # noqa: E731  (JPEG)
    assert any(near(c, search_command.PART_COLOURS[0]) for c in colours)


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(n in err[0] for n in names), err[0]
    return err[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model (bad arguments must be caught before)."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(shared, "_load", refuse)


@pytest.mark.parametrize("argv, names", [
    (["index", "{tmp}/none", "--out", "{tmp}/i"], ["IMAGES_DIR", "does not exist"]),
    (["index", "{file}", "--out", "{tmp}/i"], ["IMAGES_DIR", "is not a folder"]),
    (["index", "{images}", "--out", "{file}/i"], ["--out", "is a file, not a folder"]),
    (["index", "{images}", "--out", "/proc/geosteer-index"], ["--out", "not writable"]),
    (["index", "{images}", "--out", "{tmp}/i", "--regions", "blobs"], ["--regions 'blobs'", "grid"]),
    (["index", "{images}", "--out", "{tmp}/i", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["index", "{images}", "--out", "{tmp}/i", "--max-regions", "0"], ["--max-regions must be >= 1"]),
    (["index", "{images}", "--out", "{index}", "--regions", "masked"], ["--regions 'masked' differs from the 'grid'"]),
    (["index", "{images}", "--out", "{index}", "--model", "ViT-B-32"], ["--model 'ViT-B-32' differs", "'demo'"]),
    (["index", "{images}", "--out", "{images}"], ["--out", "exists and is not an index"]),
    (["search", "{tmp}/none", "a cat"], ["INDEX", "does not exist"]),
    (["search", "{images}", "a cat"], ["INDEX", "is not an index"]),
    (["search", "{index}", "a cat", "-k", "0"], ["-k must be >= 1, got 0"]),
    (["search", "{index}", "a cat", "--method", "magic"], ["--method 'magic'", "cosine, rerank, relations"]),
    (["search", "{index}", "  "], ["QUERY", "is empty"]),
    (["search", "{index}", "a cat", "--html", "{file}/x.html"], ["--html", "is a file, not a folder"]),
    (["search", "{index}", "a cat", "--html", "{tmp}"], ["--html", "is a folder"]),
    (["search", "{index}", "a cat", "--device", "cuda:7" if not __import__("torch").cuda.is_available() else "nope"],
     ["--device"]),
])
def test_bad_arguments_exit_2_with_one_line(argv, names, images, index_dir, tmp_path, capsys, no_model):
    file = tmp_path / "a_file.txt"
    file.write_text("x")
    fill = dict(tmp=tmp_path, file=file, images=images, index=index_dir)
    assert main(*[a.format(**fill) for a in argv]) == 2
    _one_error_line(capsys, *names)


def test_an_unfinished_build_is_named_by_search(tmp_path, images, capsys, no_model):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "build.json").write_text("{}")
    assert main("search", tmp_path / "partial", "a cat") == 2
    _one_error_line(capsys, "INDEX", "unfinished build", "geosteer index")


def test_a_model_that_cannot_load_is_one_line(tmp_path, images, capsys):
    assert main("index", images, "--out", tmp_path / "i", "--model", "no-such-arch", "--no-progress") == 2
    _one_error_line(capsys, "--model 'no-such-arch'", "not an open_clip architecture")


def test_the_commands_parse_through_the_console_script(index_dir):
    done = subprocess.run([sys.executable, "-m", "geosteer.cli", "search", str(index_dir), "a blue circle", "-k", "2", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["queries"][0]["reranked"]) == 2


def test_an_index_of_the_previous_format_is_one_line_and_status_1(index_dir, images, tmp_path, capsys, no_model):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(index_dir, old)
    m = json.loads((old / "manifest.json").read_text())
    m["version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    assert main("index", images, "--out", old, "--no-progress") == 1
    _one_error_line(capsys, "format version 1", "rebuild the index")
    assert main("search", old, "a cat") == 1
    _one_error_line(capsys, "geosteer search: error:", "format version 1", "rebuild the index")
