"""The on-disk index (`geosteer.index.format` / `builder` / `store`): build -> open -> search equals the
in-memory head; add, resume after a crash or a kill, every bad file named, images of every mode, undecodable
ones skipped, sizes recorded, the encoder recorded and loaded again, the progress bar moving within a batch."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import geosteer
from geosteer import GallerySide, GeoSteerHead, get_config
from geosteer.geoshapes import random_scene, render
from geosteer.index import (
    Index,
    Indexer,
    Searcher,
    StoreError,
    encoder_fingerprint,
    index_state,
    load_image,
    to_rgb,
    write_index,
)
from geosteer.index import format as fmt

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


class FakeEncoder:
    """A deterministic stand-in for `ClipEncoder`: images by mean colour, texts by hash (as in test_eval).

    `delay` seconds of sleep per image batch (GEOSTEER_TEST_DELAY in a subprocess) make a build slow
    enough to be killed mid-way; it does not change the weights, so not the fingerprint either.
    """

    def __init__(self, dim: int = 16, size: int = 48, seed: int = 0, delay: float = 0.0) -> None:
        self.name = "fake"
        self.model = nn.Linear(3, dim, bias=False)
        torch.nn.init.normal_(self.model.weight, generator=torch.Generator().manual_seed(seed))
        self.image_size = (size, size)
        self.embed_dim = dim
        self.delay = delay

    def preprocess(self, image):
        image = image.convert("RGB").resize(self.image_size)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def encode_images(self, x, batch_size=64, progress=False):
        if self.delay:
            time.sleep(self.delay)
        with torch.no_grad():
            return F.normalize(self.model(x.mean(dim=(2, 3))), dim=-1)

    def encode_texts(self, texts, batch_size=256, progress=False):
        seeds = [zlib.crc32(t.encode()) for t in texts]
        return F.normalize(torch.stack([torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(s))
                                        for s in seeds]), dim=-1)


QUERIES = ["a red square to the left of a blue circle", "a green star", "a yellow hexagon above a purple triangle"]


def make_images(folder: Path, count: int, start: int = 0, size: int = 48) -> list[Path]:
    """Rendered GeoShapes scenes as PNG files, half of them in a subfolder (the search is recursive)."""
    paths = []
    for i in range(start, start + count):
        sub = folder / ("b" if i % 2 else "a")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"scene_{i:03d}.png"
        render(random_scene(random.Random(i)), size=size).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    make_images(folder, 22)
    return folder


@pytest.fixture(scope="module")
def built(images, encoder, tmp_path_factory) -> Index:
    """An index of `images` in several shards, merged at the end."""
    return Index.build(images, tmp_path_factory.mktemp("idx") / "index", encoder, shard_size=6, batch_size=4,
                       progress=False)


def sorted_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*.png")), key=lambda p: p.relative_to(folder).as_posix())


def assert_same_result(a, b) -> None:
    for name in a._fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def tensors(index: Index) -> dict[str, torch.Tensor]:
    g = index.gallery
    return {"embeddings": g.embeddings, "parts": g.parts, "parts_mask": g.parts_mask, "part_boxes": g.part_boxes}


def manifest_core(index: Index) -> dict:
    m = dict(index.manifest)
    m.pop("created")
    return m


# ---------------------------------------------------------------- round trip


def test_build_open_search_equals_the_in_memory_head(built, images, encoder):
    files = sorted_files(images)
    index = Index.open(built.path, encoder=encoder)
    assert len(index) == len(files) == 22
    assert list(index.paths) == [f.relative_to(images).as_posix() for f in files]
    assert index.files == [f.resolve() for f in files]
    assert len(index.manifest["shards"]) == 1  # 4 build shards merged: every tensor maps whole
    m = index.manifest
    assert (m["regions"], m["max_regions"], m["n"], m["dim"], m["count"]) == ("grid", 16, 13, 16, 22)
    assert m["encoder"] == {"name": "fake", "pretrained": None, "fingerprint": encoder_fingerprint(encoder),
                            "embed_dim": 16, "image_size": 48}

    # the stored tensors are what the in-memory indexer makes of the same images
    memory = Indexer(encoder, batch_size=4).index_images([load_image(f) for f in files], method="grid")
    for name, t in tensors(index).items():
        torch.testing.assert_close(t, getattr(memory, name), rtol=0, atol=1e-6, msg=name)

    for preset in ("default", "cosine", "relations"):
        cfg = get_config(preset)
        result = index.search(QUERIES, cfg, k=5)
        queries = Indexer(encoder).encode_queries(QUERIES)
        expected = GeoSteerHead(cfg.replace(k=22))(queries, index.gallery)  # K capped at N
        assert_same_result(result.head, expected)
        on_memory = GeoSteerHead(cfg.replace(k=22))(queries, memory)
        assert torch.equal(result.head.indices, on_memory.indices)
        assert result.k == 5 and result.config.k == 22
        for q in range(len(QUERIES)):
            rr, cos = result.reranked[q], result.cosine[q]
            assert rr.ids == expected.indices[q, :5].tolist()
            assert rr.paths == [index.paths[i] for i in rr.ids]
            assert rr.scores == expected.scores[q, :5].tolist()
            # the cosine column is the plain cosine top-k
            plain = GeoSteerHead(get_config("cosine", k=5))(queries, index.gallery)
            assert cos.ids == plain.indices[q].tolist()
            torch.testing.assert_close(torch.tensor(cos.scores), plain.scores[q])
            assert all(b is None for row in cos.boxes for b in row)
            assert sorted(cos.ranks_before) == cos.ranks_before == [1, 2, 3, 4, 5]


def test_search_boxes_are_the_matched_regions(built, encoder):
    index = Index.open(built.path, encoder=encoder)
    result = index.search(QUERIES[:1], k=4)
    g = index.gallery
    assert result.parts[0] == ["a red square", "a blue circle"]
    for r, i in enumerate(result.reranked[0].ids):
        for j in range(2):
            c = int(result.head.assignment[0, r, j])
            assert result.reranked[0].boxes[r][j] == tuple(g.part_boxes[i, c].tolist())
    rows = json.loads(json.dumps(result.to_dict()))["queries"][0]["reranked"]
    assert [row["id"] for row in rows] == result.reranked[0].ids
    assert [m["part"] for m in rows[0]["matches"]] == [0, 1]
    assert rows[0]["matches"][0]["box"] == list(result.reranked[0].boxes[0][0])


def test_small_index_and_large_k(built, encoder):
    index = Index.open(built.path, encoder=encoder)
    result = index.search(["a green star"], k=100)  # k > N: every image, ranked
    assert result.k == 22 and sorted(result.reranked[0].ids) == list(range(22))
    one = index.search(["a green star"], get_config("default", k=3), k=5)  # K grows to k
    assert one.config.k == 5 and len(one.reranked[0].ids) == 5


def test_search_takes_a_query_side_and_a_searcher_builds_its_heads_once(built, encoder):
    index = Index.open(built.path)
    queries = Indexer(encoder).encode_queries(QUERIES)
    searcher = Searcher(index, configs={"rerank": get_config("default", k=10), "cosine": get_config("cosine")},
                        k_max=3)
    head = searcher.heads["rerank"]
    assert head.config == get_config("default", k=10) and searcher.heads["cosine"].config.k == 22  # K capped at N
    result = searcher.search(queries, k=3)
    assert result.method == "rerank" and not searcher.compiled  # a CPU: eager unless asked
    assert_same_result(result.head, GeoSteerHead(get_config("default", k=10))(queries, index.gallery))
    assert result.queries is None and result.parts[0] == ["part 1", "part 2"]
    assert searcher.heads["rerank"] is head  # nothing rebuilt by a search
    assert_same_result(index.search(queries, get_config("default", k=10), k=3).head, result.head)
    with pytest.raises(ValueError, match="need the index's encoder"):
        index.search(["a green star"])
    with pytest.raises(ValueError, match=r"k=4 is more than this searcher's k_max=3"):
        searcher.search(queries, k=4)
    with pytest.raises(ValueError, match="method must be one of"):
        searcher.search(queries, "relations")
    with pytest.raises(TypeError, match="queries must be a list of str"):
        index.search("a green star", encoder=encoder)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(queries, k=0)


def test_the_search_pieces_name_a_bad_argument(built, encoder):
    """head_k, search_result and Searcher's device refuse bad input with a TypeError / ValueError naming it."""
    from geosteer.index import Catalog, head_k, search_result

    index = Index.open(built.path)
    assert head_k(10, 3, 22) == 10 and head_k(10, 30, 22) == 22
    for args, name in (((0, 3, 22), "config_k"), ((10, 0, 22), "k"), ((10, 3, 0), "num_items"), ((10, 2.5, 22), "k")):
        with pytest.raises(ValueError, match=f"^{name} must be a positive int"):
            head_k(*args)
    queries = Indexer(encoder).encode_queries(QUERIES)
    cfg = get_config("default", k=5)
    raw = GeoSteerHead(cfg)(queries, index.gallery)
    labels = [["a", "b"]] * len(QUERIES)
    good = dict(queries=None, parts=labels, config=cfg, k=3)
    assert search_result(raw, Catalog(), **good).k == 3
    for change, error, message in [
        (dict(result=tuple(raw)), TypeError, "result must be a geosteer.HeadResult, got tuple"),
        (dict(result=raw._replace(first_stage_rank=None)), ValueError, "result has no first_stage_rank"),
        (dict(catalog={}), TypeError, "catalog must be a geosteer.index.Catalog, got dict"),
        (dict(config="default"), TypeError, "config must be a HeadConfig, got str"),
        (dict(k=6), ValueError, r"k=6 is more than the result's K=5 candidates"),
        (dict(k=0), ValueError, "k must be a positive int"),
        (dict(parts=labels[:1]), ValueError, rf"parts must hold one list of labels per query \({len(QUERIES)}\), got 1"),
        (dict(queries=["x"] * (len(QUERIES) + 1)), ValueError, "queries must hold one caption per query"),
    ]:
        kw = dict(result=raw, catalog=Catalog(), **good) | change
        with pytest.raises(error, match=message):
            search_result(kw.pop("result"), kw.pop("catalog"), **kw)
    with pytest.raises(ValueError, match="device must be a torch device or its name, got 'nonsense'"):
        Searcher(index, device="nonsense")


def test_a_caption_without_an_object_is_its_own_part(built, encoder):
    result = Index.open(built.path, encoder=encoder).search(["to the left of", "a green star"], k=2)
    assert result.parts == [["to the left of"], ["a green star"]]


def test_shards_are_safetensors_files(built):
    from safetensors.numpy import load_file

    entry = built.manifest["shards"][0]
    loaded = load_file(str(built.path / entry["file"]))
    for name, t in tensors(built).items():
        assert np.array_equal(loaded[name], t.numpy()), name


def random_gallery(num: int, n: int, dim: int, seed: int) -> tuple[GallerySide, torch.Generator]:
    """Unit embeddings and regions, every region valid, boxes in [0, 100): a gallery for `write_index`; and its generator."""
    gen = torch.Generator().manual_seed(seed)
    g = GallerySide(F.normalize(torch.randn(num, dim, generator=gen), dim=-1),
                    parts=F.normalize(torch.randn(num, n, dim, generator=gen), dim=-1),
                    parts_mask=torch.ones(num, n, dtype=torch.bool), part_boxes=torch.rand(num, n, 4, generator=gen) * 90)
    return g, gen


def test_write_index_round_trip_in_several_shards(tmp_path):
    gen = torch.Generator().manual_seed(0)
    num, n, dim = 40, 5, 8
    g = GallerySide(F.normalize(torch.randn(num, dim, generator=gen), dim=-1),
                    parts=F.normalize(torch.randn(num, n, dim, generator=gen), dim=-1),
                    parts_mask=torch.rand(num, n, generator=gen) > 0.3, part_boxes=torch.rand(num, n, 4, generator=gen) * 90)
    g.parts_mask[:, 0] = True
    paths = [tmp_path / "imgs" / f"{i}.jpg" for i in range(num)]
    index = write_index(g, paths, tmp_path / "idx", encoder=("synthetic", "f" * 16), shard_size=16)
    assert len(index.manifest["shards"]) == 3 and index.paths[:2] == ("0.jpg", "1.jpg")
    for name, t in tensors(index).items():
        assert torch.equal(t, getattr(g, name)), name
    q = geosteer.QuerySide(F.normalize(torch.randn(3, dim, generator=gen), dim=-1),
                           parts=F.normalize(torch.randn(3, 2, dim, generator=gen), dim=-1))
    cfg = get_config("default", k=12)
    padded = geosteer.QuerySide(q.embeddings, parts=q.parts, relations=torch.full((3, 1, 3), -1))  # R = 0
    assert_same_result(index.search(q, cfg).head, GeoSteerHead(cfg)(padded, g))
    index.compact()
    assert len(index.manifest["shards"]) == 1
    reopened = Index.open(tmp_path / "idx")
    for name, t in tensors(reopened).items():
        assert torch.equal(t, getattr(g, name)), name
    assert sorted(p.name for p in (tmp_path / "idx" / "shards").iterdir()) == ["shard-00003.safetensors"]
    with pytest.raises(ValueError, match="paths holds 2 entries but gallery has N=40"):
        write_index(g, paths[:2], tmp_path / "other", encoder=("synthetic", "f" * 16))
    with pytest.raises(ValueError, match="exists and is not empty"):
        write_index(g, paths, tmp_path / "idx", encoder=("synthetic", "f" * 16))


@pytest.mark.parametrize("shards", [1, 3])
def test_the_gallery_is_checked_once_and_certified(tmp_path, shards):
    # The head then skips its whole-gallery checks of these tensors (no per-call pass over 1M rows).
    from geosteer.ops import checks

    num, n, dim = 30, 4, 8
    g, _ = random_gallery(num, n, dim, seed=1)
    write_index(g, [f"{i}.jpg" for i in range(num)], tmp_path / "idx", encoder=("synthetic", "f" * 16),
                shard_size=num // shards)
    with torch.inference_mode():  # a service opens and searches under inference mode: still versioned tensors
        got = Index.open(tmp_path / "idx").gallery
    assert not got.embeddings.is_inference() and not got.part_boxes.is_inference()
    assert (checks.certified(got.embeddings), checks.certified(got.part_boxes), checks.certified(got.parts_mask)) \
        == ("unit", f"range {2.0 ** 24}", "rows_any")
    assert checks.certified(got.parts) is None  # region rows are checked per call, in the candidates' rows


def test_boxes_out_of_range_are_named_at_the_first_gallery_access(tmp_path):
    num = 10
    g, _ = random_gallery(num, 2, 8, seed=2)
    g.part_boxes[3, 1, 2] = 2.0**25
    write_index(g, [f"{i}.jpg" for i in range(num)], tmp_path / "idx", encoder=("synthetic", "f" * 16))
    index = Index.open(tmp_path / "idx")
    with pytest.raises(StoreError, match=r"index '.*idx': gallery_part_boxes must lie in \[-1\.67772e\+07"):
        index.gallery


def test_identity_names_the_images_row_by_row(built, images, encoder, tmp_path):
    import shutil

    ident = built.identity
    assert len(ident) == 16 and int(ident, 16) >= 0
    assert Index.open(built.path).identity == ident  # stable across open / close
    shutil.copytree(built.path, tmp_path / "copy")
    assert Index.open(tmp_path / "copy").identity == ident  # a copy is the same index
    # same encoder, D, n, regions and even the same file names and pixels, another folder: another index
    make_images(tmp_path / "other", 22)
    other = Index.build(tmp_path / "other", tmp_path / "other.index", encoder, progress=False)
    assert all(other.manifest[k] == built.manifest[k] for k in ("encoder", "dim", "n", "regions", "count"))
    assert other.paths == built.paths and other.identity != ident
    # another set of images in the same place differs too, and add changes it
    few = Index.build(sorted_files(images)[:5], tmp_path / "few.index", encoder, progress=False)
    assert few.identity != ident
    before = few.identity
    few.add(sorted_files(images)[5:7], encoder, progress=False)
    assert few.identity != before and Index.open(tmp_path / "few.index").identity == few.identity
    # one folder built twice, an image's pixels changed in between (same paths, same rows): other content
    again = Index.build(tmp_path / "other", tmp_path / "again.index", encoder, progress=False)
    assert again.identity == other.identity
    make_images(tmp_path / "other", 1, start=30)[0].replace(tmp_path / "other" / "a" / "scene_000.png")
    rebuilt = Index.build(tmp_path / "other", tmp_path / "rebuilt.index", encoder, progress=False)
    assert rebuilt.paths == other.paths and rebuilt.identity != other.identity


# ---------------------------------------------------------------- add


def test_add_appends_new_images(tmp_path, encoder):
    folder = tmp_path / "imgs"
    first = make_images(folder, 9)
    index = Index.build(first, tmp_path / "idx", encoder, shard_size=4, batch_size=4, progress=False)
    assert len(index) == 9 and index.root == folder.resolve()
    new = make_images(folder, 5, start=9)
    index.add(folder, encoder, progress=False)
    assert len(index) == 14 and index.stats["encoded"] == 5
    assert list(index.paths[9:]) == sorted(p.relative_to(folder).as_posix() for p in new)
    assert len(index.manifest["shards"]) == 3  # 1 merged + 2 new (shard_size 4)
    memory = Indexer(encoder).index_images([load_image(index.root / p) for p in index.paths], method="grid")
    for name, t in tensors(index).items():
        torch.testing.assert_close(t, getattr(memory, name), rtol=0, atol=1e-6, msg=name)
    reopened = Index.open(tmp_path / "idx", encoder=encoder)
    for name, t in tensors(reopened).items():
        assert torch.equal(t, tensors(index)[name]), name
    before = {k: v.clone() for k, v in tensors(index).items()}
    index.compact()
    assert len(index.manifest["shards"]) == 1
    for name, t in tensors(Index.open(tmp_path / "idx")).items():
        assert torch.equal(t, before[name]), name
    index.add(folder, encoder, progress=False)  # nothing new
    assert len(index) == 14 and index.stats["encoded"] == 0

    with pytest.raises(ValueError, match=r"was built with encoder 'fake' \(fingerprint .*\), not with encoder 'fake'"):
        index.add(folder, FakeEncoder(seed=1), progress=False)
    with pytest.raises(ValueError, match="regions='masked' differs from the index's region method 'grid'"):
        index.add(folder, encoder, regions="masked", progress=False)


# ---------------------------------------------------------------- interrupted builds


def test_a_crash_mid_build_resumes_to_the_same_index(tmp_path, images, encoder, built, monkeypatch):
    out = tmp_path / "idx"
    real = fmt.write_safetensors
    calls = []

    def crash_after_two(path, tensors_):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(path)
        return real(path, tensors_)

    monkeypatch.setattr(fmt, "write_safetensors", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Index.build(images, out, encoder, shard_size=6, batch_size=4, progress=False)
    monkeypatch.setattr(fmt, "write_safetensors", real)
    assert index_state(out) == "partial"
    with pytest.raises(StoreError, match=r"is an unfinished build \(2 of 4 shards written"):
        Index.open(out)
    with pytest.raises(ValueError, match="unfinished build with shard_size=6, not 5"):
        Index.build(images, out, encoder, shard_size=5, batch_size=4, progress=False)
    resumed = Index.build(images, out, encoder, shard_size=6, batch_size=4, progress=False)
    assert resumed.stats["resumed_shards"] == 2 and resumed.stats["encoded"] == 22 - 12
    for name, t in tensors(resumed).items():
        assert torch.equal(t, tensors(built)[name]), name
    core, ref = manifest_core(resumed), manifest_core(built)
    assert {k: v for k, v in core.items() if k not in ("root_from_index",)} == {
        k: v for k, v in ref.items() if k not in ("root_from_index",)}
    a, b = (i.path / i.manifest["shards"][0]["file"] for i in (resumed, built))
    assert a.read_bytes() == b.read_bytes()
    assert not (out / "build.json").exists() and len(list((out / "shards").iterdir())) == 1
    # a finished index with the same arguments: nothing to do
    again = Index.build(images, out, encoder, shard_size=6, batch_size=4, progress=False)
    assert again.stats["encoded"] == 0


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_index_store import FakeEncoder
from geosteer.index import Index
Index.build({images!r}, {out!r}, FakeEncoder(delay=0.15), shard_size=4, batch_size=2, progress=False)
"""


def test_a_killed_build_resumes_to_the_same_index(tmp_path, images, encoder):
    out = tmp_path / "idx"
    code = _CHILD.format(tests=str(TESTS), images=str(images), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            try:
                if len(json.loads((out / "build.json").read_text())["shards"]) >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert index_state(out) == "partial"
    with pytest.raises(StoreError, match="unfinished build"):
        Index.open(out)
    resumed = Index.build(images, out, encoder, shard_size=4, batch_size=2, progress=False)
    assert resumed.stats["resumed_shards"] >= 2
    whole = Index.build(images, tmp_path / "whole", encoder, shard_size=4, batch_size=2, progress=False)
    for name, t in tensors(resumed).items():
        assert torch.equal(t, tensors(whole)[name]), name
    assert resumed.paths == whole.paths
    a, b = (i.path / i.manifest["shards"][0]["file"] for i in (resumed, whole))
    assert a.read_bytes() == b.read_bytes()


def test_a_source_changed_since_the_interruption_is_refused(tmp_path, encoder, monkeypatch):
    folder = tmp_path / "imgs"
    make_images(folder, 8)
    monkeypatch.setattr(fmt, "write_safetensors", lambda *a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        Index.build(folder, tmp_path / "idx", encoder, shard_size=4, progress=False)
    monkeypatch.undo()
    make_images(folder, 1, start=8)
    with pytest.raises(ValueError, match=r"source changed since the unfinished build .* \(1 images new, 0 gone\)"):
        Index.build(folder, tmp_path / "idx", encoder, shard_size=4, progress=False)
    with pytest.raises(ValueError, match=r"unfinished build with encoder 'fake' \(fingerprint"):
        Index.build(folder, tmp_path / "idx", FakeEncoder(seed=3), shard_size=4, progress=False)


def test_a_finished_index_is_not_rebuilt_over(built, images, encoder, tmp_path):
    extra = tmp_path / "extra.png"
    render(random_scene(random.Random(99)), size=48).save(extra)
    files = sorted_files(images)
    with pytest.raises(ValueError, match=r"already holds a finished index, without 1 of the source's images"):
        Index.build([*files, extra], built.path, encoder, shard_size=6, batch_size=4, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not an index"):
        Index.build(images, tmp_path / "junk", encoder, progress=False)


# ---------------------------------------------------------------- bad files


@pytest.fixture
def copy_of(built, tmp_path):
    def copy() -> Path:
        import shutil

        dst = tmp_path / "copy"
        shutil.copytree(built.path, dst)
        return dst

    return copy


def shard_file(folder: Path) -> Path:
    return folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["file"]


def flip_byte(path: Path, tensor: str) -> None:
    header, start, _ = fmt.read_header(path)
    offset = start + header[tensor]["data_offsets"][0] + 5
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_corrupt_embeddings_never_give_a_ranking(copy_of, encoder):
    folder = copy_of()
    shard = shard_file(folder)
    flip_byte(shard, "embeddings")
    index = Index.open(folder, encoder=encoder)  # open reads headers only
    with pytest.raises(StoreError, match=rf"shard '{shard}' is corrupt: the checksum of its 'embeddings'"):
        index.search(["a green star"])
    with pytest.raises(StoreError, match=str(shard)):
        index.verify()


def test_corrupt_regions_are_found_by_verify(copy_of, encoder):
    folder = copy_of()
    shard = shard_file(folder)
    flip_byte(shard, "parts")
    index = Index.open(folder, encoder=encoder)
    index.search(["a green star"])  # the embeddings are intact; region bytes are checked by verify()
    with pytest.raises(StoreError, match=rf"shard '{shard}' is corrupt: the checksum of its 'parts'"):
        index.verify()


def test_a_truncated_shard_is_named_at_open(copy_of):
    folder = copy_of()
    shard = shard_file(folder)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(StoreError, match=rf"shard '{shard}' is truncated: {size - 100} bytes, its header says {size}"):
        Index.open(folder)
    shard.unlink()
    with pytest.raises(StoreError, match=rf"shard '{shard}' is missing"):
        Index.open(folder)


def test_another_format_version_is_named(copy_of):
    folder = copy_of()
    manifest = folder / "manifest.json"
    m = json.loads(manifest.read_text())
    m["version"] = 99
    manifest.write_text(json.dumps(m))
    with pytest.raises(StoreError, match=rf"manifest '{manifest}' is of format version 99"):
        Index.open(folder)
    manifest.write_text("{not json")
    with pytest.raises(StoreError, match=rf"manifest '{manifest}' cannot be read"):
        Index.open(folder)


def test_another_encoder_is_named(built, encoder):
    other = FakeEncoder(seed=1)
    fp, theirs = encoder_fingerprint(encoder), encoder_fingerprint(other)
    with pytest.raises(ValueError, match=rf"index '{built.path}' was built with encoder 'fake' \(fingerprint {fp}\), "
                                         rf"not with encoder 'fake' \(fingerprint {theirs}\)"):
        Index.open(built.path, encoder=other)
    with pytest.raises(ValueError, match=r"not with encoder fingerprint 0123"):
        Index.open(built.path, encoder="0123")
    Index.open(built.path, encoder=fp)
    with pytest.raises(ValueError, match="was built with encoder 'fake'"):
        Index.open(built.path).search(["a green star"], encoder=other)


def test_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Index.open(tmp_path / "nothing")
    with pytest.raises(StoreError, match="is not an index: it has no manifest.json"):
        Index.open(tmp_path)


# ---------------------------------------------------------------- images


def test_undecodable_images_are_skipped_and_listed(tmp_path, encoder):
    folder = tmp_path / "imgs"
    make_images(folder, 5)
    good = folder / "a" / "scene_000.png"
    (folder / "text.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:200])
    Image.new("RGB", (3, 3), "red").save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not picked up: not an image suffix")
    index = Index.build(folder, tmp_path / "idx", encoder, shard_size=3, batch_size=2, progress=False)
    assert len(index) == 5
    skipped = {s["path"]: s["error"] for s in index.skipped}
    assert set(skipped) == {"text.png", "empty.jpg", "truncated.png", "tiny.png"}
    assert "UnidentifiedImageError" in skipped["text.png"]
    assert "OSError" in skipped["truncated.png"] or "truncated" in skipped["truncated.png"]
    assert "3x3 pixels" in skipped["tiny.png"]
    assert index.manifest["skipped_count"] == 4 and index.stats["skipped"] == 4


def test_a_source_without_one_decodable_image_is_an_error(tmp_path, encoder):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_text("no")
    with pytest.raises(StoreError, match="no image in .* could be indexed; e.g. a.png: UnidentifiedImageError"):
        Index.build(folder, tmp_path / "idx", encoder, progress=False)
    with pytest.raises(ValueError, match="holds no image file"):
        Index.build(tmp_path / "idx", tmp_path / "idx2", encoder, progress=False)


def test_images_of_every_mode_are_indexed(tmp_path, encoder):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = render(random_scene(random.Random(5)), size=48)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 0))  # fully transparent: white once composited
    rgba.save(folder / "rgba.png")
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("P").save(folder / "palette.gif")
    rgb.convert("LA").save(folder / "grey_alpha.png")
    rgb.convert("CMYK").save(folder / "cmyk.tif")
    deep = np.full((48, 48), 65535, dtype=np.uint16)
    deep[:, :24] = 0
    Image.fromarray(deep).save(folder / "deep16.png")
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(folder / "float.tif")
    rgb.save(folder / "rgb.jpg")
    index = Index.build(folder, tmp_path / "idx", encoder, progress=False)
    assert index.skipped == [] and len(index) == 8
    assert torch.isfinite(index.gallery.embeddings).all()
    assert np.asarray(load_image(folder / "rgba.png")).min() == 255
    arr = np.asarray(load_image(folder / "deep16.png"))
    assert arr.shape == (48, 48, 3) and arr[:, :24].max() == 0 and arr[:, 24:].min() == 255
    assert load_image(folder / "float.tif").getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("I", (8, 8), 200)).getpixel((0, 0)) == (200, 200, 200)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), "red")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


def test_a_moved_index_finds_its_images(tmp_path, encoder):
    import shutil

    base = tmp_path / "project"
    make_images(base / "photos", 4)
    Index.build(base / "photos", base / "index", encoder, progress=False)
    shutil.move(str(base), str(tmp_path / "moved"))
    index = Index.open(tmp_path / "moved" / "index")
    assert index.root == (tmp_path / "moved" / "photos").resolve()
    assert all(f.exists() for f in index.files)


def test_bad_build_arguments(tmp_path, images, encoder):
    with pytest.raises(ValueError, match="method must be one of"):
        Index.build(images, tmp_path / "i", encoder, regions="nope")
    with pytest.raises(ValueError, match="shard_size must be a positive int"):
        Index.build(images, tmp_path / "i", encoder, shard_size=0)
    with pytest.raises(FileNotFoundError, match="source .* does not exist"):
        Index.build(tmp_path / "none", tmp_path / "i", encoder)
    with pytest.raises(ValueError, match="lists .* twice"):
        Index.build([images / "a" / "scene_000.png"] * 2, tmp_path / "i", encoder)
    with pytest.raises(TypeError, match="encoder must be a geosteer.encoders.ClipEncoder"):
        Index.build(images, tmp_path / "i", object())
    assert not (tmp_path / "i").exists()  # nothing written before the arguments are checked


# ---------------------------------------------------------------- sizes, versions, add, the encoder, progress


def test_each_images_size_is_recorded_upright(tmp_path, encoder):
    folder = tmp_path / "imgs"
    folder.mkdir()
    render(random_scene(random.Random(1)), size=48).save(folder / "square.png")
    Image.new("RGB", (40, 20), "blue").save(folder / "wide.png")
    Image.new("RGB", (30, 50), "green").save(folder / "tall.png")
    turned = Image.new("RGB", (40, 20), "red")
    exif = turned.getexif()
    exif[0x0112] = 6  # stored 40 x 20, viewed 20 x 40
    turned.save(folder / "turned.jpg", exif=exif)
    Image.new("RGB", (3, 3), "red").save(folder / "tiny.png")  # skipped: no size recorded for it
    index = Index.build(folder, tmp_path / "idx", encoder, batch_size=2, progress=False)
    stored = {p: Image.open(folder / p).size for p in index.paths}  # the files' own headers
    stored["turned.jpg"] = stored["turned.jpg"][::-1]  # upright, as the boxes are
    assert dict(zip(index.paths, index.sizes)) == stored == {
        "square.png": (48, 48), "wide.png": (40, 20), "tall.png": (30, 50), "turned.jpg": (20, 40)}
    g = index.gallery
    for i, (w, h) in enumerate(index.sizes):  # every region box lies in its image's recorded pixels
        boxes = g.part_boxes[i][g.parts_mask[i]]
        assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h and boxes[:, 2].max() == w, index.paths[i]
    assert Index.open(tmp_path / "idx").sizes == index.sizes  # from the manifest, nothing re-opened


def test_write_index_records_given_read_or_unknown_sizes(tmp_path):
    gen = torch.Generator().manual_seed(1)
    num, n, dim = 3, 2, 4
    g = GallerySide(F.normalize(torch.randn(num, dim, generator=gen), dim=-1),
                    parts=F.normalize(torch.randn(num, n, dim, generator=gen), dim=-1),
                    parts_mask=torch.ones(num, n, dtype=torch.bool), part_boxes=torch.rand(num, n, 4, generator=gen))
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (33, 17)).save(tmp_path / "imgs" / "0.png")
    Image.new("RGB", (9, 12)).save(tmp_path / "imgs" / "1.png")
    paths = [tmp_path / "imgs" / f"{i}.png" for i in range(num)]  # 2.png does not exist
    enc = ("synthetic", "f" * 16)
    assert write_index(g, paths, tmp_path / "read", encoder=enc).sizes == ((33, 17), (9, 12), None)
    given = write_index(g, paths, tmp_path / "given", encoder=enc, sizes=[(5, 6), None, [7, 8]])
    assert given.sizes == ((5, 6), None, (7, 8))
    with pytest.raises(ValueError, match="sizes holds 2 entries but gallery has N=3"):
        write_index(g, paths, tmp_path / "bad1", encoder=enc, sizes=[(5, 6), (1, 1)])
    with pytest.raises(ValueError, match=r"sizes\[1\] must be \(width, height\)"):
        write_index(g, paths, tmp_path / "bad2", encoder=enc, sizes=[(5, 6), (0, 4), None])


def test_an_index_of_the_previous_format_is_refused_in_one_line(copy_of):
    folder = copy_of()
    manifest = folder / "manifest.json"
    m = json.loads(manifest.read_text())
    m["version"] = 1
    del m["sizes"]  # what version 1 lacked
    manifest.write_text(json.dumps(m))
    with pytest.raises(StoreError) as info:
        Index.open(folder)
    assert "\n" not in str(info.value)
    assert f"manifest '{manifest}' is of format version 1; this geosteer reads versions 2 and 3: rebuild" in str(info.value)


def test_add_leaves_skipped_images_unless_asked_to_retry_them(tmp_path, encoder):
    folder = tmp_path / "imgs"
    make_images(folder, 4)
    (folder / "later.png").write_bytes(b"not yet an image")
    index = Index.build(folder, tmp_path / "idx", encoder, progress=False)
    assert [s["path"] for s in index.skipped] == ["later.png"] and len(index) == 4
    assert index.new_files(folder) == []  # indexed or skipped: nothing new, no encoder needed to say so
    index.add(folder, encoder, progress=False)
    assert index.stats["encoded"] == index.stats["skipped"] == 0 and len(index) == 4
    render(random_scene(random.Random(50)), size=30).save(folder / "later.png")  # the file is fixed
    assert index.new_files(folder, retry_skipped=True) == [(folder / "later.png").resolve()]
    index.add(folder, encoder, progress=False, retry_skipped=True)
    assert index.stats["encoded"] == 1 and index.skipped == [] and len(index) == 5
    assert index.paths[-1] == "later.png" and index.sizes[-1] == (30, 30)
    assert Index.open(tmp_path / "idx").sizes[-1] == (30, 30)


def test_the_manifest_records_how_to_load_the_encoder_again(tmp_path, encoder):
    from geosteer.index import recorded_model

    tagged = FakeEncoder()
    tagged.pretrained = "v1"
    make_images(tmp_path / "imgs", 3)
    index = Index.build(tmp_path / "imgs", tmp_path / "idx", tagged, progress=False)
    assert (index.manifest["encoder"]["name"], index.manifest["encoder"]["pretrained"]) == ("fake", "v1")
    calls = []

    def loader(model, pretrained, device):
        calls.append((model, pretrained, device))
        return tagged if model == "fake" else FakeEncoder(seed=2)

    reopened = Index.open(tmp_path / "idx")
    assert reopened.load_encoder(loader=loader) is tagged and reopened.encoder is tagged
    assert calls == [("fake", "v1", "cpu")]
    with pytest.raises(ValueError, match=r"was built with encoder 'fake' \(fingerprint"):
        reopened.load_encoder("other", loader=loader)
    assert calls[-1] == ("other", None, "cpu")  # the recorded tag belongs to the recorded model
    m = index.manifest
    assert recorded_model(m) == ("fake", "v1")
    assert recorded_model(m, "fake", None) == ("fake", "v1")
    assert recorded_model(m, None, "v2") == ("fake", "v2")
    assert recorded_model(m, "ViT-B-32", "laion") == ("ViT-B-32", "laion")
    with pytest.raises(StoreError, match="records no encoder"):
        recorded_model({"encoder": {}})
    with pytest.raises(TypeError, match="model must be a str or None, got int"):
        recorded_model(m, 3)
    with pytest.raises(TypeError, match="pretrained must be a str or None, got PosixPath"):
        reopened.load_encoder(None, tmp_path / "weights.pt", loader=loader)
    with pytest.raises(TypeError, match="loader must be callable"):
        reopened.load_encoder(loader="load_clip")
    with pytest.raises(TypeError, match="retry_skipped must be True or False, got str"):
        reopened.new_files(tmp_path / "imgs", retry_skipped="yes")


def test_the_progress_bar_moves_before_a_batch_ends(tmp_path, encoder, monkeypatch):
    """The bar advances as images decode and as the encoder's batches finish, not once per batch of images."""
    import tqdm.auto

    seen: list[float] = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            seen.append(self.n)
            return out

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    make_images(tmp_path / "imgs", 12)
    index = Index.build(tmp_path / "imgs", tmp_path / "idx", encoder, batch_size=8, shard_size=100, progress=True)
    assert len(index) == 12
    assert seen == sorted(seen)  # never backwards
    inside_first_batch = {round(v, 6) for v in seen if 0 < v < 8}
    assert len(inside_first_batch) >= 5, seen  # many steps before the first 8 images are done
    assert seen[-1] == pytest.approx(12)  # all of it at the end: the rate is images / seconds


def test_a_shard_larger_than_the_commit_limit_maps(tmp_path):
    # A private writable map is charged in full against the kernel's commit limit unless MAP_NORESERVE: a
    # 35 GB float32 million-image shard failed to open (ENOMEM) on a 24 GiB machine. A sparse file beyond
    # the limit stands in for it (no disk used); writes stay in this process.
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()) \
        if Path("/proc/meminfo").exists() else {}
    overcommit = Path("/proc/sys/vm/overcommit_memory")
    if "CommitLimit" not in meminfo or not overcommit.exists() or overcommit.read_text().strip() != "0":
        pytest.skip("needs Linux with heuristic overcommit (vm.overcommit_memory = 0)")
    total = (int(meminfo["MemTotal"].split()[0]) + int(meminfo["SwapTotal"].split()[0])) * 1024
    big = tmp_path / "sparse.bin"
    with open(big, "wb") as f:
        f.truncate(total + (1 << 30))
    try:
        arr = fmt.map_private(big, big.stat().st_size)
        arr[12345] = 7  # copy-on-write: this process's page only
        assert arr[12345] == 7 and arr[12344] == 0 and arr.size == big.stat().st_size
        with open(big, "rb") as f:
            f.seek(12345)
            assert f.read(1) == b"\0"
        del arr
    finally:
        big.unlink()


def test_prefetch_asks_for_exactly_the_candidates_region_rows(tmp_path, monkeypatch):
    # Each advised byte range must hold exactly that row's region bytes (parts, and scales for int8): read back from
    # the file and compared with the gallery written, so an off-by-one row or shard fails.
    import os

    num, n, dim = 23, 3, 8
    g, _ = random_gallery(num, n, dim, seed=3)
    index = write_index(g, [f"{i}.jpg" for i in range(num)], tmp_path / "idx", encoder=("synthetic", "f" * 16),
                        shard_size=10, regions_dtype="int8")
    assert len(index.manifest["shards"]) == 3
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, size, advice: calls.append(
        (os.readlink(f"/proc/self/fd/{fd}"), offset, size, advice)))
    index.prefetch(torch.tensor([[3, 17, -1], [22, 10, 3]]))
    mapped = index.gallery
    want = {}
    for r in (3, 17, 22, 10):
        want.setdefault(r, [mapped.parts[r].numpy().tobytes(), mapped.parts_scale[r].numpy().tobytes()])
    got = {}
    for path, offset, size, advice in calls:
        assert advice == os.POSIX_FADV_WILLNEED
        with open(path, "rb") as f:
            f.seek(offset)
            got.setdefault(path, []).append(f.read(size))
    found = [b for chunks in got.values() for b in chunks]
    expected = [b for r in (3, 3, 17, 22, 10) for b in want[r]]
    assert sorted(found) == sorted(expected)
    assert len({p for p, *_ in calls}) == 3  # rows 3 / 10, 17 / 22 lie in three shard files
    for bad, got in ((torch.tensor([1.0]), "torch.float32"), ([3, 17], "list"), (torch.tensor([True]), "torch.bool")):
        with pytest.raises(TypeError, match=f"ids must be an integer tensor of gallery rows, got {got}"):
            index.prefetch(bad)


def test_a_faiss_searcher_prefetches_its_candidates(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    num, n, dim = 60, 3, 8
    g, gen = random_gallery(num, n, dim, seed=4)
    index = write_index(g, [f"{i}.jpg" for i in range(num)], tmp_path / "idx", encoder=("synthetic", "f" * 16))
    index.build_first_stage("Flat", refine=1)
    seen = []
    monkeypatch.setattr(Index, "prefetch", lambda self, ids: seen.append(ids.clone()))
    q = geosteer.QuerySide(F.normalize(torch.randn(2, dim, generator=gen), dim=-1),
                           parts=F.normalize(torch.randn(2, 2, dim, generator=gen), dim=-1),
                           relations=torch.full((2, 1, 3), -1))
    searcher = Searcher(Index.open(tmp_path / "idx"), configs=get_config("default", k=20), k_max=20)
    result = searcher.search(q, k=5)
    (ids,) = seen
    assert ids.shape == (2, 20) and set(result.head.indices.reshape(-1).tolist()) <= set(ids.reshape(-1).tolist())
    Searcher(Index.open(tmp_path / "idx"), configs=get_config("default", k=20), first_stage="exact").search(q, k=5)
    assert len(seen) == 1  # the exact first stage runs inside the head: nothing to prefetch before it
