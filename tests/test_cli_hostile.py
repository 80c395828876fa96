"""`geosteer search` on hostile data: an index whose regions are NaN.

Run in-process through `geosteer.cli.main` on a tiny index built with the
shipped demo model.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from geosteer import cli
from geosteer.geoshapes import random_scene, render
from geosteer.index import format as fmt



def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """An index of 4 images."""
    folder = tmp_path_factory.mktemp("hostile")
    images = folder / "images"
    images.mkdir()
    for i, name in enumerate(["0.png", "1.png", "2.png", "3.png"]):
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
