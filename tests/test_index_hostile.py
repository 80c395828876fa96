"""The index store against hostile folders (issue 22): manifests and build files of the wrong structure are
one StoreError naming the file and the field (never a KeyError / TypeError / AttributeError, nor a traceback
from `geosteer search` / `serve` / `index`)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from geosteer import cli
from geosteer.geoshapes import random_scene, render
from geosteer.index import Index, StoreError
from tiny_encoder import TinyEncoder


def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


def make_images(folder: Path, count: int, start: int = 0, size: int = 40) -> list[Path]:
    """`count` rendered GeoShapes scenes as PNG files (distinct colours, so distinct TinyEncoder embeddings)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + count):
        p = folder / f"img_{i:03d}.png"
        render(random_scene(random.Random(i)), size=size).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def encoder() -> TinyEncoder:
    return TinyEncoder()


@pytest.fixture(scope="module")
def good(tmp_path_factory, encoder) -> Path:
    """A finished index of 6 images and one undecodable file (so `skipped` has an entry)."""
    base = tmp_path_factory.mktemp("hostile")
    make_images(base / "images", 6)
    (base / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    Index.build(base / "images", base / "index", encoder, shard_size=4, batch_size=2, progress=False)
    return base / "index"


def _set(path: str, value) -> Callable[[dict], None]:
    """A mutation: the field at dotted `path` ('shards.0.count') set to `value` (DELETE: removed)."""
    def apply(m: dict) -> None:
        *head, last = path.split(".")
        obj = m
        for k in head:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        key = int(last) if isinstance(obj, list) else last
        if value is DELETE:
            del obj[key]
        else:
            obj[key] = value
    return apply


DELETE = object()

#: (mutation of a good manifest, the field the error must name)
BAD_MANIFESTS = [
    (_set("shards.0.count", DELETE), "shards[0].count: missing"),
    (_set("shards", 5), "shards: "),
    (_set("shards", None), "shards: "),
    (_set("shards.0", "shard-00000.safetensors"), "shards[0]: "),
    (_set("shards.0.count", "6"), "shards[0].count: "),
    (_set("shards.0.count", -1), "shards[0].count: "),
    (_set("shards.0.file", 5), "shards[0].file: "),
    (_set("shards.0.file", "../../../etc/passwd"), "shards[0].file: "),
    (_set("shards.0.file", DELETE), "shards[0].file: missing"),
    (_set("shards.0.sha256", None), "shards[0].sha256: "),
    (_set("shards.0.sha256.embeddings", DELETE), "shards[0].sha256.embeddings: missing"),
    (_set("shards.0.sha256.parts", 12), "shards[0].sha256.parts: "),
    (_set("shards.0.bytes", "big"), "shards[0].bytes: "),
    (_set("paths", None), "paths: "),
    (_set("paths", "img_000.png"), "paths: "),
    (_set("paths.2", 42), "paths[2]: "),
    (_set("sizes", {}), "sizes: "),
    (_set("sizes.1", "40x40"), "sizes[1]: "),
    (_set("sizes.1", [40]), "sizes[1]: "),
    (_set("sizes.1", [40, "40"]), "sizes[1]: "),
    (_set("skipped", 3), "skipped: "),
    (_set("skipped.0", "broken.jpg"), "skipped[0]: "),
    (_set("skipped.0.path", None), "skipped[0].path: "),
    (_set("encoder", "demo"), "encoder: "),
    (_set("encoder", None), "encoder: "),
    (_set("encoder.fingerprint", 7), "encoder.fingerprint: "),
    (_set("encoder.name", DELETE), "encoder.name: missing"),
    (_set("encoder.pretrained", ["x"]), "encoder.pretrained: "),
    (_set("encoder.embed_dim", "3"), "encoder.embed_dim: "),
    (_set("n", "13"), "n: "),
    (_set("n", 0), "n: "),
    (_set("dim", 3.0), "dim: "),
    (_set("dim", 4), "dim: "),  # not the encoder's embed_dim
    (_set("count", True), "count: "),
    (_set("count", None), "count: "),
    (_set("count", DELETE), "count: missing"),
    (_set("regions", None), "regions: "),
    (_set("max_regions", "16"), "max_regions: "),
    (_set("root", 5), "root: "),
    (_set("root_from_index", 5), "root_from_index: "),
    (_set("build", []), "build: "),
    (_set("build.shard_size", "4"), "build.shard_size: "),
    (_set("metadata", "notes"), "metadata: "),
    (_set("files", None), "files: "),
    (_set("files", DELETE), "files: missing"),  # version 3 records every row's file (or null)
    (_set("files.0", [10, 20, "zz"]), "files[0]: "),
    (_set("files.0", {"bytes": 10}), "files[0]: "),
]


def _copy_with(good: Path, tmp_path: Path, mutate: Callable[[dict], None]) -> Path:
    folder = tmp_path / "my.index"
    shutil.copytree(good, folder)
    m = json.loads((folder / "manifest.json").read_text())
    mutate(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


@pytest.mark.parametrize("mutate, field", BAD_MANIFESTS, ids=[f for _, f in BAD_MANIFESTS])
def test_a_manifest_of_the_wrong_structure_is_a_store_error_naming_the_field(good, tmp_path, mutate, field):
    folder = _copy_with(good, tmp_path, mutate)
    with pytest.raises(StoreError) as info:
        Index.open(folder)
    msg = str(info.value)
    assert f"{folder / 'manifest.json'}: {field}" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("manifest", ["[]", "5", "null", '"manifest"'])
def test_a_manifest_that_is_not_an_object_is_a_store_error(good, tmp_path, manifest):
    folder = tmp_path / "my.index"
    shutil.copytree(good, folder)
    (folder / "manifest.json").write_text(manifest)
    with pytest.raises(StoreError, match="is not a JSON object"):
        Index.open(folder)


@pytest.mark.parametrize("mutate, field", [BAD_MANIFESTS[i] for i in (0, 1, 13, 24, 25)],
                         ids=[BAD_MANIFESTS[i][1] for i in (0, 1, 13, 24, 25)])
def test_the_commands_print_one_line_for_a_malformed_manifest(good, tmp_path, capsys, mutate, field, monkeypatch):
    folder = _copy_with(good, tmp_path, lambda m: (_set("encoder.name", "demo")(m), mutate(m)))  # a model they know
    from geosteer.commands import args as shared

    monkeypatch.setattr(shared, "_load", lambda *a, **k: TinyEncoder())  # no model load needed to fail
    images = tmp_path / "imgs"
    make_images(images, 2)
    for argv in (["search", folder, "a cat"], ["index", images, "--out", folder, "--no-progress"]):
        assert main(*argv) in (1, 2), argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0], (argv, err)
        assert field.split(":")[0] in err[0] and "manifest.json" in err[0], (argv, err)


def test_the_index_command_names_a_manifest_that_is_not_json(good, tmp_path, capsys):
    folder = tmp_path / "my.index"
    shutil.copytree(good, folder)
    (folder / "manifest.json").write_text("{not json")
    assert main("index", tmp_path, "--out", folder, "--no-progress") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json' cannot be read" in err[0], err


def test_serve_prints_one_line_for_a_malformed_manifest(good, tmp_path, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    folder = _copy_with(good, tmp_path, lambda m: (_set("encoder.name", "demo")(m), BAD_MANIFESTS[0][0](m)))
    assert main("serve", folder, "--port", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards[0].count: missing" in err[0], err


# ---------------------------------------------------------------- an unfinished build's build.json


@pytest.fixture(scope="module")
def partial(tmp_path_factory, encoder) -> tuple[Path, dict]:
    """An unfinished build (its first shard written) and its build.json."""
    from geosteer.index import builder

    base = tmp_path_factory.mktemp("partial")
    make_images(base / "images", 6)
    real = builder._encode_shard
    calls = []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    builder._encode_shard = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            Index.build(base / "images", base / "index", encoder, shard_size=3, batch_size=2, progress=False)
    finally:
        builder._encode_shard = real
    return base, json.loads((base / "index" / "build.json").read_text())


BAD_PROGRESS = [
    (_set("shards", 5), "shards: "),
    (_set("plan", None), "plan: "),
    (_set("plan.1", 3), "plan[1]: "),
    (_set("ranges", "0-3"), "ranges: "),
    (_set("ranges.0", [0]), "ranges[0]: "),
    (_set("shards.0.range", DELETE), "shards[0].range: missing"),
    (_set("shards.0.kept", [0, "1"]), "shards[0].kept[1]: "),
    (_set("shards.0.file", 5), "shards[0].file: "),
    (_set("encoder", None), "encoder: "),
    (_set("encoder.fingerprint", DELETE), "encoder.fingerprint: missing"),
    (_set("batch_size", "2"), "batch_size: "),
    (_set("shard_size", None), "shard_size: "),
    (_set("regions", 3), "regions: "),
    (_set("root", None), "root: "),
]


@pytest.mark.parametrize("mutate, field", BAD_PROGRESS, ids=[f for _, f in BAD_PROGRESS])
def test_a_build_file_of_the_wrong_structure_is_a_store_error_on_resume(partial, tmp_path, encoder, mutate, field):
    base, prog = partial
    folder = tmp_path / "my.index"
    shutil.copytree(base / "index", folder)
    prog = json.loads(json.dumps(prog))
    mutate(prog)
    (folder / "build.json").write_text(json.dumps(prog))
    with pytest.raises(StoreError) as info:
        Index.build(base / "images", folder, encoder, shard_size=3, batch_size=2, progress=False)
    assert f"{folder / 'build.json'}: {field}" in str(info.value), str(info.value)
    with pytest.raises(StoreError, match="unfinished build"):  # open names it an unfinished build, whatever its content
        Index.open(folder)


def test_the_index_command_prints_one_line_for_a_malformed_build_file(partial, tmp_path, capsys, monkeypatch):
    from geosteer.commands import args as shared

    monkeypatch.setattr(shared, "_load", lambda *a, **k: TinyEncoder())
    base, prog = partial
    folder = tmp_path / "my.index"
    shutil.copytree(base / "index", folder)
    encoder = {**prog["encoder"], "name": "demo"}  # a model the command knows: the structure is what fails
    (folder / "build.json").write_text(json.dumps({**prog, "encoder": encoder, "shards": 5, "batch_size": "2"}))
    assert main("index", base / "images", "--out", folder, "--no-progress") in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "build.json" in err[0], err
    assert main("search", folder, "a cat") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unfinished build" in err[0], err


# ---------------------------------------------------------------- files that are not regular files


def _unblock(fifo: Path) -> None:
    """Open the FIFO's write end without blocking and close it, so a reader stuck in open() gets EOF."""
    import os

    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waiting: nothing is stuck
        pass


def _bounded(fn, fifos: list[Path], seconds: float = 60.0):
    """fn() in a thread; a failure (never a hung test) if it has not returned within `seconds`."""
    import threading

    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    hung = t.is_alive()
    while t.is_alive():  # let the stuck thread finish, so it does not outlive the test
        for f in fifos:
            _unblock(f)
        t.join(0.2)
    assert not hung, f"blocked for {seconds} s (in open() of a FIFO?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_among_the_images_is_skipped_never_opened(tmp_path, encoder):
    import os

    make_images(tmp_path / "images", 3)
    fifo = tmp_path / "images" / "pipe.jpg"
    os.mkfifo(fifo)
    index = _bounded(lambda: Index.build(tmp_path / "images", tmp_path / "index", encoder, progress=False), [fifo])
    assert len(index) == 3 and "pipe.jpg" not in index.paths
    (entry,) = index.skipped
    assert entry["path"] == "pipe.jpg" and "not a regular file" in entry["error"] and "FIFO" in entry["error"]
    # add, a list of files, and a symlink to a character device are skipped the same way
    make_images(tmp_path / "images", 1, start=3)
    fifo2 = tmp_path / "images" / "pipe2.png"
    os.mkfifo(fifo2)
    zero = tmp_path / "images" / "zero.png"
    zero.symlink_to("/dev/zero")
    _bounded(lambda: index.add(tmp_path / "images", encoder, progress=False), [fifo, fifo2])
    assert len(index) == 4 and {s["path"] for s in index.skipped} == {"pipe.jpg", "pipe2.png", "zero.png"}
    assert "character device" in next(s["error"] for s in index.skipped if s["path"] == "zero.png")
    listed = _bounded(lambda: Index.build([fifo, tmp_path / "images" / "img_000.png"], tmp_path / "index2", encoder,
                                          progress=False), [fifo])
    assert len(listed) == 1 and listed.skipped[0]["path"] == "pipe.jpg"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_in_place_of_a_shard_is_named_never_opened(good, tmp_path):
    import os

    folder = tmp_path / "my.index"
    shutil.copytree(good, folder)
    shard = folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["file"]
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(StoreError, match=rf"shard '{shard}' is not a regular file \(a FIFO\)"):
        _bounded(lambda: Index.open(folder), [shard])
