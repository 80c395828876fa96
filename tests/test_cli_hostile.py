"""`geosteer search` on hostile data: an index whose regions are NaN, an image whose file name is not UTF-8.

Run in-process through `geosteer.cli.main` on a tiny index built with the
shipped demo model. pytest's captured stdout encodes strictly (as a UTF-8
terminal outside the C locale does), so a name that cannot be encoded
fails here as it fails for a user.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from geosteer import cli
from geosteer.geoshapes import random_scene, render
from geosteer.index import format as fmt

#: A file name that is not UTF-8: `os.fsdecode` makes it 'bad\udcffname.png' (surrogateescape).
BAD_NAME = os.fsdecode(b"bad\xffname.png")
#: How the table and the page show it: the undecodable byte as `\xff`, like `ls -b`.
SHOWN = "bad\\xffname.png"


def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """An index of 4 images, one of them named with the byte 0xff (every image ranks: -k 4)."""
    folder = tmp_path_factory.mktemp("hostile")
    images = folder / "images"
    images.mkdir()
    for i, name in enumerate(["0.png", "1.png", "2.png", BAD_NAME]):
        render(random_scene(random.Random(300 + i)), size=64).save(images / name)
    assert main("index", images, "--out", folder / "index", "--no-progress") == 0
    return folder / "index"


def _one_error_line(capsys, command: str, *names: str) -> None:
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"geosteer {command}: error: "), lines[0]
    assert all(n in lines[0] for n in names), lines[0]


def test_nan_regions_are_one_line_and_status_2(index_dir, tmp_path, capsys):
    """The head's ValueError (non-finite region embeddings) is the message; the CLI prints it as one line."""
    folder = tmp_path / "nan"
    shutil.copytree(index_dir, folder)
    shard = folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["file"]
    header, start, _ = fmt.read_header(shard)
    a, b = header["parts"]["data_offsets"]
    parts = np.memmap(shard, dtype=np.float32, mode="r+", offset=start + a, shape=((b - a) // 4,))
    parts[:] = np.nan  # region bytes are checksummed only by verify(): open and the embeddings pass
    parts.flush()
    del parts
    capsys.readouterr()
    assert main("search", folder, "a red circle", "-k", "2") == 2
    _one_error_line(capsys, "search", "NaN or inf", "gallery_parts")


def test_a_non_utf8_name_in_the_table(index_dir, capsys):
    capsys.readouterr()
    assert main("search", index_dir, "a red circle", "-k", "4") == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s+-?\d\.\d{4}", line)]
    assert len(rows) == 4 and sum(line.endswith(f"  {SHOWN}") for line in rows) == 1, rows


def test_a_non_utf8_name_in_json_stays_a_usable_path(index_dir, capsys):
    capsys.readouterr()
    assert main("search", index_dir, "a red circle", "-k", "4", "--json") == 0
    out = capsys.readouterr().out
    assert out.isascii()  # every non-ASCII character is a JSON escape
    hits = json.loads(out)["queries"][0]["reranked"]
    paths = [h["path"] for h in hits]
    assert BAD_NAME in paths
    root = Path(json.loads((index_dir / "manifest.json").read_text())["root"])
    # the escape decodes to the surrogate os.fsdecode made: os.fsencode gives back the file's real bytes
    assert (root / BAD_NAME).is_file() and os.fsencode(root / BAD_NAME).endswith(b"/bad\xffname.png")


def test_a_non_utf8_name_on_the_html_page(index_dir, tmp_path, capsys):
    page = tmp_path / "out.html"
    capsys.readouterr()
    assert main("search", index_dir, "a red circle", "-k", "4", "--html", page) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_bytes().decode("utf-8")  # strict: the page is valid UTF-8
    assert text.count(f'<span class="path">{SHOWN}</span>') == 2  # in the cosine and the re-ranked column
    assert "image unavailable" not in text  # its thumbnail was read from the real file


def test_a_non_utf8_output_path(index_dir, tmp_path, capsys):
    """A name from the command line is surrogate-escaped too: the page is written where asked, the line prints."""
    page = tmp_path / os.fsdecode(b"page\xfe.html")
    capsys.readouterr()
    assert main("search", index_dir, "a red circle", "-k", "2", "--html", page) == 0
    assert f"wrote {tmp_path}/page\\xfe.html" in capsys.readouterr().out
    assert os.path.isfile(os.fsencode(tmp_path) + b"/page\xfe.html")


def test_a_query_that_is_not_utf8_is_refused_before_loading(index_dir, capsys, monkeypatch):
    """Bytes from a terminal in another encoding: no caption parser reads them; one line naming the byte."""
    from geosteer.commands import args as shared

    monkeypatch.setattr(shared, "_load", lambda *a, **k: pytest.fail("the model loaded for a query it cannot read"))
    capsys.readouterr()
    assert main("search", index_dir, "a red circle", os.fsdecode(b"a caf\xe9"), "-k", "2") == 2
    _one_error_line(capsys, "search", "QUERY 'a caf\\xe9' is not UTF-8 text", "byte 0xe9")
