"""Compact region vectors on disk (issue 23): an index built / written / synced with regions_dtype float16 or
int8 holds exactly `geosteer.quantize` of the float32 rows, opens them compact (int8 + scale, never a float32
copy), searches as the head does on that compact gallery, and checks the scale like every other tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import geosteer
from geosteer import GallerySide, GeoSteerHead, get_config
from geosteer.index import Index, StoreError, write_index
from geosteer.index import format as fmt
from geosteer.quantize import quantize_rows
from test_index_store import FakeEncoder, flip_byte, make_images

SYNTH = ("synthetic", "f" * 16)


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    make_images(folder, 14)
    return folder


@pytest.fixture(scope="module")
def built(images, encoder, tmp_path_factory) -> dict[str, Index]:
    """The same images built once per region dtype, in several shards (merged at the end)."""
    base = tmp_path_factory.mktemp("idx")
    return {dt: Index.build(images, base / dt, encoder, shard_size=5, batch_size=4, progress=False, regions_dtype=dt)
            for dt in ("float32", "float16", "int8")}


def expected_parts(parts32: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the store should hold, made independently of it: quantize_rows / a plain cast."""
    if dtype == "int8":
        return quantize_rows(parts32)
    return parts32.to(torch.float16), None


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_build_holds_the_quantised_float32_build(built, dtype):
    ref, index = built["float32"].gallery, built[dtype].gallery
    assert built[dtype].manifest["regions_dtype"] == dtype and built[dtype].regions_dtype == dtype
    assert built["float32"].manifest["regions_dtype"] == "float32"
    parts, scale = expected_parts(ref.parts, dtype)
    assert index.parts.dtype == parts.dtype and torch.equal(index.parts, parts)
    if scale is None:
        assert index.parts_scale is None
    else:
        assert index.parts_scale.dtype == torch.float32 and torch.equal(index.parts_scale, scale)
    for name in ("embeddings", "parts_mask", "part_boxes"):
        assert torch.equal(getattr(index, name), getattr(ref, name)), name
    assert built[dtype].paths == built["float32"].paths


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_index_opens_mapped_and_searches_as_the_head_on_the_compact_gallery(built, dtype):
    index = Index.open(built[dtype].path)
    g = index.gallery
    shard = index._shards[0]
    assert g.parts.data_ptr() == shard["parts"].data_ptr()  # one shard: the mapped file itself, no copy
    gen = torch.Generator().manual_seed(1)
    dim = g.embeddings.shape[1]
    q = geosteer.QuerySide(F.normalize(torch.randn(3, dim, generator=gen), dim=-1),
                           parts=F.normalize(torch.randn(3, 2, dim, generator=gen), dim=-1))
    cfg = get_config("default", k=12)
    padded = geosteer.QuerySide(q.embeddings, parts=q.parts, relations=torch.full((3, 1, 3), -1))
    want = GeoSteerHead(cfg)(padded, GallerySide(g.embeddings.clone(), parts=g.parts.clone(),
                                                 parts_scale=None if g.parts_scale is None else g.parts_scale.clone(),
                                                 parts_mask=g.parts_mask.clone(), part_boxes=g.part_boxes.clone()))
    got = index.search(q, cfg).head
    for name in got._fields:
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    # the first stage reads the float32 embeddings: the same candidates as the float32 index, re-ranked
    ref = built["float32"].search(q, cfg).head
    assert torch.equal(got.first_stage_scores.sort(dim=1).values, ref.first_stage_scores.sort(dim=1).values)


def test_region_bytes_shrink(built):
    parts = {dt: built[dt].gallery.parts.numel() * built[dt].gallery.parts.element_size() for dt in built}
    assert parts["float16"] * 2 == parts["float32"] and parts["int8"] * 4 == parts["float32"]


def copy(index: Index, tmp_path: Path) -> Path:
    dst = tmp_path / index.path.name
    shutil.copytree(index.path, dst)
    return dst


@pytest.mark.parametrize("tensor", ["parts_scale", "parts"])
def test_verify_catches_a_flipped_byte_of_an_int8_index(built, tmp_path, tensor):
    folder = copy(built["int8"], tmp_path)
    shard = folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["file"]
    Index.open(folder).verify()
    flip_byte(shard, tensor)
    with pytest.raises(StoreError, match=rf"shard '{shard}' is corrupt: the checksum of its '{tensor}'"):
        Index.open(folder).verify()


def test_the_manifest_field_is_checked(built, tmp_path):
    folder = copy(built["int8"], tmp_path)
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for bad, match in (({"regions_dtype": "int4"}, r"regions_dtype: must be one of float32, float16, int8, got str 'int4'"),
                       ({"regions_dtype": None}, r"regions_dtype: must be one of"),
                       ({"shards": [{**m["shards"][0], "sha256": {k: v for k, v in m["shards"][0]["sha256"].items()
                                                                 if k != "parts_scale"}}]},
                        r"shards\[0\]\.sha256\.parts_scale: missing")):
        path.write_text(json.dumps({**m, **bad}))
        with pytest.raises(StoreError, match=rf"{path}: {match}"):
            Index.open(folder)
    # a manifest that says float32 over int8 shards: the shard header disagrees, named at open
    path.write_text(json.dumps({**m, "regions_dtype": "float32",
                                "shards": [{**s, "sha256": {k: v for k, v in s["sha256"].items() if k != "parts_scale"}}
                                           for s in m["shards"]]}))
    with pytest.raises(StoreError, match=r"tensor 'parts' is I8 .*the manifest says F32"):
        Index.open(folder)


def test_an_index_written_before_regions_dtype_opens_as_float32(built, tmp_path):
    folder = copy(built["float32"], tmp_path)
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    del m["regions_dtype"]
    path.write_text(json.dumps(m))
    index = Index.open(folder)
    assert index.regions_dtype == "float32" and index.gallery.parts.dtype == torch.float32
    assert index.gallery.parts_scale is None
    assert torch.equal(index.gallery.parts, built["float32"].gallery.parts)
    index.verify()


def test_add_and_sync_keep_the_index_dtype(images, encoder, tmp_path, built):
    files = sorted(images.rglob("*.png"))
    index = Index.build(files[:6], tmp_path / "idx", encoder, shard_size=4, batch_size=4, progress=False,
                        regions_dtype="int8")
    index.add(images, encoder, progress=False)
    assert index.regions_dtype == "int8" and len(index) == len(built["float32"])
    assert all("parts_scale" in s["sha256"] for s in index.manifest["shards"])
    ref = built["float32"]
    rows = {Path(p).name: i for i, p in enumerate(ref.paths)}  # names are unique; the two roots differ
    order = torch.tensor([rows[Path(p).name] for p in index.paths])
    parts, scale = quantize_rows(ref.gallery.parts[order])
    assert torch.equal(index.gallery.parts, parts) and torch.equal(index.gallery.parts_scale, scale)
    index.remove([index.paths[0]])
    index.compact()
    reopened = Index.open(index.path)
    assert reopened.regions_dtype == "int8" and torch.equal(reopened.gallery.parts, parts[1:])
    reopened.verify()


def test_a_build_with_another_dtype_is_refused(images, encoder, built):
    with pytest.raises(ValueError, match=r"holds an index with regions_dtype='int8', not 'float16'"):
        Index.build(images, built["int8"].path, encoder, progress=False, regions_dtype="float16")
    with pytest.raises(ValueError, match=r"regions_dtype must be one of float32, float16, int8, got 'bf16'"):
        Index.build(images, built["int8"].path.parent / "new", encoder, progress=False, regions_dtype="bf16")


def test_a_resumed_build_keeps_its_dtype(images, encoder, tmp_path, monkeypatch):
    from geosteer.index import builder

    calls = {"n": 0}
    real = builder._encode_shard

    def crash_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(builder, "_encode_shard", crash_second)
    with pytest.raises(KeyboardInterrupt):
        Index.build(images, tmp_path / "idx", encoder, shard_size=5, batch_size=4, progress=False, regions_dtype="int8")
    monkeypatch.setattr(builder, "_encode_shard", real)
    assert json.loads((tmp_path / "idx" / "build.json").read_text())["regions_dtype"] == "int8"
    with pytest.raises(ValueError, match=r"unfinished build with regions_dtype='int8', not 'float32'"):
        Index.build(images, tmp_path / "idx", encoder, shard_size=5, batch_size=4, progress=False)
    index = Index.build(images, tmp_path / "idx", encoder, shard_size=5, batch_size=4, progress=False,
                        regions_dtype="int8")
    assert index.stats["resumed_shards"] == 1 and index.gallery.parts.dtype == torch.int8


def gallery(num: int, n: int = 5, dim: int = 8, seed: int = 0) -> GallerySide:
    gen = torch.Generator().manual_seed(seed)
    g = GallerySide(F.normalize(torch.randn(num, dim, generator=gen), dim=-1),
                    parts=F.normalize(torch.randn(num, n, dim, generator=gen), dim=-1),
                    parts_mask=torch.rand(num, n, generator=gen) > 0.3, part_boxes=torch.rand(num, n, 4, generator=gen) * 90)
    g.parts_mask[:, 0] = True
    g.parts[~g.parts_mask] = 0  # padding rows are zeros, as the builder writes them
    return g


def blocks(g: GallerySide, sizes: list[int]):
    """`g` as blocks of these sizes, each made as it is asked for (as a writer of a huge gallery would)."""
    start = 0
    for c in sizes:
        yield GallerySide(g.embeddings[start:start + c].clone(), parts=g.parts[start:start + c].clone(),
                          parts_mask=g.parts_mask[start:start + c].clone(), part_boxes=g.part_boxes[start:start + c].clone())
        start += c


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_write_index_streams_blocks_across_shard_boundaries(tmp_path, dtype):
    g = gallery(23)
    paths = [f"/imgs/{i}.jpg" for i in range(23)]
    whole = write_index(g, paths, tmp_path / "whole", encoder=SYNTH, sizes=[None] * 23, regions_dtype=dtype)
    streamed = write_index(blocks(g, [7, 0, 9, 7]), paths, tmp_path / "streamed", encoder=SYNTH, sizes=[None] * 23,
                           shard_size=10, regions_dtype=dtype)
    assert [s["count"] for s in streamed.manifest["shards"]] == [10, 10, 3]
    parts, scale = expected_parts(g.parts, dtype) if dtype != "float32" else (g.parts, None)
    for index in (whole, streamed):
        assert index.regions_dtype == dtype
        assert torch.equal(index.gallery.parts, parts) and torch.equal(index.gallery.embeddings, g.embeddings)
        assert (index.gallery.parts_scale is None) == (scale is None)
        if scale is not None:
            assert torch.equal(index.gallery.parts_scale, scale)
        index.verify()
    # the safetensors files are ordinary ones: safetensors' own reader agrees
    from safetensors.numpy import load_file

    loaded = load_file(str(streamed.path / streamed.manifest["shards"][1]["file"]))
    assert (loaded["parts"] == parts[10:20].numpy()).all()
    assert set(loaded) == set(fmt.tensor_names(dtype))
    header, _, _ = fmt.read_header(streamed.path / streamed.manifest["shards"][1]["file"])
    in_file = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    assert in_file == list(fmt.tensor_names(dtype))  # the 4-byte tensors first: aligned when mapped


def test_write_index_from_blocks_that_do_not_add_up(tmp_path):
    g = gallery(12)
    paths = [f"/imgs/{i}.jpg" for i in range(12)]
    with pytest.raises(ValueError, match="gallery blocks hold 10 rows, fewer than the paths"):
        write_index(blocks(g, [6, 4]), paths, tmp_path / "few", encoder=SYNTH, sizes=[None] * 12, regions_dtype="int8")
    assert fmt.index_state(tmp_path / "few") in ("missing", "empty")  # nothing left that reads as an index
    with pytest.raises(ValueError, match="gallery blocks hold more rows than the 10 paths"):
        write_index(blocks(g, [6, 6]), paths[:10], tmp_path / "many", encoder=SYNTH, sizes=[None] * 10)
    with pytest.raises(ValueError, match=r"a gallery block has parts \[6, 4, 8\]; the first had n=5"):
        odd = gallery(6, n=4)
        write_index(iter([g, odd]), paths + paths[:6], tmp_path / "odd", encoder=SYNTH, sizes=[None] * 18)
    with pytest.raises(TypeError, match="must be float32"):
        h = gallery(12)
        write_index(GallerySide(h.embeddings, parts=h.parts.half(), parts_mask=h.parts_mask, part_boxes=h.part_boxes),
                    paths, tmp_path / "half", encoder=SYNTH, sizes=[None] * 12)


def test_sharded_summary_records_the_region_dtype(built):
    from geosteer.distributed.shard import MANIFEST_FIELDS, manifest_summary

    assert "regions_dtype" in MANIFEST_FIELDS
    assert manifest_summary(built["int8"].path)["regions_dtype"] == "int8"
    assert manifest_summary(built["float32"].path)["regions_dtype"] == "float32"


def test_geosteer_index_regions_dtype(tmp_path, capsys):
    """`geosteer index --regions-dtype int8` writes int8 regions; a re-run keeps them; another dtype is refused."""
    from geosteer import cli

    folder = tmp_path / "imgs"
    make_images(folder, 4, size=64)
    out = tmp_path / "index"
    assert cli.main(["index", str(folder), "--out", str(out), "--no-progress", "--regions-dtype", "int8"]) == 0
    assert "int8 regions" in capsys.readouterr().out
    index = Index.open(out)
    assert index.regions_dtype == "int8" and index.gallery.parts.dtype == torch.int8
    make_images(folder, 2, start=10, size=64)
    assert cli.main(["index", str(folder), "--out", str(out), "--no-progress"]) == 0  # sync: keeps int8
    index = Index.open(out)
    assert len(index) == 6 and index.regions_dtype == "int8"
    index.verify()
    assert cli.main(["index", str(folder), "--out", str(out), "--no-progress", "--regions-dtype", "float16"]) == 2
    assert "--regions-dtype 'float16' differs from the 'int8' of the index" in capsys.readouterr().err
