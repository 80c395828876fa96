"""The README's Python examples run as written, on a 30-image gallery (smaller than the presets' K = 100)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
NUM_IMAGES = 30


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of `text`, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.fixture(scope="module")
def namespace() -> dict:
    """What the examples leave to the reader: `pil_images` and the tensors of the keyword call, from real images."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from geosteer.encoders import load_clip
    from geosteer.geoshapes import random_scene, render
    from geosteer.index import Indexer

    pil_images = [render(random_scene(random.Random(i))) for i in range(NUM_IMAGES)]
    indexer = Indexer(load_clip("demo"))
    g = indexer.index_images(pil_images, method="grid")
    q = indexer.encode_queries(["a red pentagon to the left of a blue hexagon"])
    return dict(pil_images=pil_images, query=q.embeddings, gallery=g.embeddings, query_parts=q.parts,
                query_parts_mask=q.parts_mask, gallery_parts=g.parts, gallery_parts_mask=g.parts_mask,
                boxes=g.part_boxes, relations=q.relations)


def test_the_use_examples_run_as_written(namespace):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2, "the README's Use section has lost its examples"
    ns = dict(namespace)
    for block in blocks[:2]:
        exec(compile(block, str(README), "exec"), ns)  # noqa: S102 - the README's own code
    result, head = ns["result"], ns["head"]
    assert head.config.k == 100 > NUM_IMAGES  # the preset's K, larger than this gallery
    assert tuple(result.indices.shape) == (1, NUM_IMAGES)  # K = min(k, N)
    assert sorted(result.indices[0].tolist()) == list(range(NUM_IMAGES))
    assert ns["q"].parts.shape == namespace["query_parts"].shape
