"""Writing an index: collect image files, decode, encode shard by shard; build, resume, add, merge (DESIGN §6).

`build` encodes a folder (recursive) or a list of image files into a new
index folder. While it runs, `build.json` (the plan and the finished
shards) stands in for the manifest, so an interrupted build never opens as
an index, and calling `build` again with the same arguments resumes from
the finished shards. Shard boundaries are fixed by the plan and each shard
is encoded the same way whether resumed or not, so a resumed build writes
the same tensors, byte for byte, as an uninterrupted one. At the end the
shards are merged into one file (a streamed copy, seconds next to hours of
encoding), so `Index.open` maps every tensor whole, zero-copy.

Images that fail to decode (not an image, truncated, unreadable, too small)
are skipped and listed in the manifest with their error; so is anything
that is not a regular file (a FIFO, a socket, a device: found by stat,
never opened, since opening a FIFO blocks forever). Every image is
converted to RGB (`load_image`: EXIF orientation applied, transparency on
white, 16-bit and float greyscale scaled to 8 bits), and its (width,
height) recorded: the pixels its region boxes are in.

One writer at a time: two processes building or adding to one folder at
once are not supported. Every file goes through `geosteer.index.format`.
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geosteer.encoders.clip import check_positive_int
from geosteer.encoders.images import load_image
from geosteer.encoders.regions import GRID_SCALES, check_method
from geosteer.index import format as fmt
from geosteer.index.indexer import Indexer
from geosteer.inputs import GallerySide

#: File suffixes a build or an add picks up in a folder (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)
#: Smallest image side indexed: the grid's smallest cells vanish below it.
MIN_SIDE = 8
#: Share of one image's work on the progress bar that its decoding stands
#: for; the encoder's batches (the image and its crops) carry the rest.
DECODE_SHARE = 0.1
#: EXIF orientations that turn an image a quarter (its width and height swap upright).
_QUARTER_TURNS = {5, 6, 7, 8}


# ---------------------------------------------------------------- sources


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a fixed (sorted) order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def collect(source, what: str = "source") -> tuple[Path, list[Path]]:
    """(root, absolute image files) of a folder (recursive, sorted) or a list of files.

    Raises:
        FileNotFoundError: a folder or file that does not exist.
        TypeError / ValueError: `source` of the wrong kind, an empty one, a file twice.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"{what} {str(folder)!r} does not exist")
        if not folder.is_dir():
            raise ValueError(f"{what} {str(folder)!r} is not a folder (pass a folder or a list of image files)")
        root = folder.resolve()
        files = _image_files(root)
        if not files:
            raise ValueError(f"{what} {str(folder)!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
        return root, files
    if not isinstance(source, Sequence) or not all(isinstance(p, (str, os.PathLike)) for p in source):
        raise TypeError(f"{what} must be a folder or a list of image file paths, got {type(source).__name__}")
    if not source:
        raise ValueError(f"{what} must hold at least one image file")
    files = [Path(p).expanduser().resolve() for p in source]
    seen: set[Path] = set()
    for p in files:
        if p in seen:
            raise ValueError(f"{what} lists {str(p)!r} twice")
        seen.add(p)
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    return root, files


def new_files(manifest: dict, source, index_root: Path | None = None, retry_skipped: bool = False) -> list[Path]:
    """The files of `source` an index does not hold yet: neither indexed nor (unless `retry_skipped`) skipped.

    Args:
        manifest: the index's manifest.
        source: a folder (recursive) or a list of image files.
        index_root: where the index finds its images now (`Index.root`, if the index moved).
        retry_skipped: count the images skipped before (undecodable) as new.

    Raises:
        As `collect`.
    """
    _, files = collect(source)
    known = set(manifest["paths"])
    if not retry_skipped:
        known |= {s["path"] for s in manifest["skipped"]}
    roots = [Path(manifest["root"])] + ([index_root] if index_root is not None else [])
    return [f for f in files if all(fmt.record_path(f, r) not in known for r in roots)]


def not_regular(path: str | os.PathLike) -> str | None:
    """Why the index skips `path` without opening it (a FIFO, a device, a folder, gone), or None for a regular file.

    stat only: opening a FIFO blocks until something writes to it, and a
    device such as /dev/zero never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    kind = fmt.file_kind(mode)
    return None if kind is None else f"not a regular file ({kind}); not opened"


def read_image(path: str | os.PathLike) -> tuple[Image.Image | None, str | None, list | None]:
    """Read and decode one image file: (RGB image, None, record), or (None, the error, record or None) to skip it.

    The file is read once: its bytes are hashed (the record, `format.file_record`:
    [bytes, mtime_ns, blake2b], taken from fstat before reading) and decoded
    from memory. Never opened unless `stat` says it is a regular file, and
    then non-blocking and checked again with fstat (a file swapped for a
    FIFO in between is not waited on).
    """
    if (why := not_regular(path)) is not None:
        return None, why, None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return None, f"{type(e).__name__}: {e}", None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if (kind := fmt.file_kind(st.st_mode)) is not None:
            return None, f"not a regular file ({kind}); not opened", None
        try:
            data = f.read()
        except OSError as e:
            return None, f"{type(e).__name__}: {e}", None
    record = fmt.file_record(st, fmt.content_hash(data).hexdigest())
    try:
        im = load_image(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file", never the build
        return None, f"{type(e).__name__}: {e}", record
    if min(im.size) < MIN_SIDE:
        return None, f"image is {im.width}x{im.height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is indexed", record
    return im, None, record


def decode(path: str | os.PathLike) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None), or (None, the error) for a file the index skips (never opened unless a regular file)."""
    im, err, _ = read_image(path)
    return im, err


def image_size(path: str | os.PathLike) -> list[int] | None:
    """[width, height] of an image file as `load_image` turns it upright, read from its header; None if unreadable."""
    if not_regular(path) is not None:
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in _QUARTER_TURNS
    except (OSError, ValueError):
        return None
    return [h, w] if turned else [w, h]


def region_capacity(method: str, max_regions: int) -> int:
    """n of an index: the most regions any image can get (grid: 13 cells; other families: max_regions)."""
    grid = sum(k * k for k, _, _ in GRID_SCALES)
    per = sum(min(grid, max_regions) if f == "grid" else max_regions for f in check_method(method))
    return max(1, min(max_regions, per))


# ---------------------------------------------------------------- progress


class _GroupProgress:
    """One batch of images on the build's bar: advanced as its images decode and its encoder batches finish.

    Never moves the bar past the group's size, so a group retried image by
    image (one bad image in it) does not count twice; `finish` adds what is
    left. Decoding runs on a worker thread, hence the shared lock.
    """

    def __init__(self, bar, lock: threading.Lock, size: int) -> None:
        self.bar, self.lock, self.size, self.done = bar, lock, size, 0.0

    def __call__(self, amount: float) -> None:
        if self.bar is None:
            return
        with self.lock:
            step = min(amount, self.size - self.done)
            if step > 0:
                self.done += step
                self.bar.update(step)

    def finish(self) -> None:
        self(self.size - self.done)


def _bar(total: int, initial: int):
    """The build's tqdm bar: images (fractions while a batch is under way), images/s, skipped."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="indexing", unit="img", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")


# ---------------------------------------------------------------- encoding


@dataclass
class _Encoded:
    """Encoded images of one shard: numpy arrays padded to the index's n."""

    embeddings: list[np.ndarray] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # plan positions encoded
    sizes: dict[int, list[int]] = field(default_factory=dict)  # plan position -> [width, height]
    records: dict[int, list] = field(default_factory=dict)  # plan position -> its file's record as read
    skipped: list[tuple[int, str]] = field(default_factory=list)  # plan positions and errors

    def append(self, g: GallerySide, n: int) -> None:
        c, m, d = g.parts.shape
        if m > n:
            raise RuntimeError(f"region method gave {m} regions per image, more than the index's n={n}")
        pad = lambda t, shape: torch.cat([t, t.new_zeros(shape)], dim=1) if m < n else t  # noqa: E731
        self.embeddings.append(g.embeddings.float().contiguous().numpy())
        self.parts.append(pad(g.parts.float(), (c, n - m, d)).contiguous().numpy())
        self.boxes.append(pad(g.part_boxes.float(), (c, n - m, 4)).contiguous().numpy())
        self.mask.append(pad(g.parts_mask, (c, n - m)).contiguous().numpy())

    def tensors(self, n: int, dim: int, regions_dtype: str = "float32") -> fmt.ShardTensors:
        """The shard's tensors (`format.write_safetensors`' input), regions stored as `regions_dtype`."""
        c = len(self.kept)
        cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt)  # noqa: E731
        arrays = {"embeddings": cat(self.embeddings, (0, dim), np.float32),
                  **fmt.compact_rows(cat(self.parts, (0, n, dim), np.float32), regions_dtype),
                  "part_boxes": cat(self.boxes, (0, n, 4), np.float32), "parts_mask": cat(self.mask, (0, n), np.bool_)}
        return {name: (shape, dt, [arrays[name]]) for name, (shape, dt) in fmt.tensor_specs(regions_dtype, c, n, dim).items()}


def _encode_group(indexer: Indexer, images: list[Image.Image], method: str, max_regions: int,
                  advance: Callable[[float], None]) -> list[GallerySide | str]:
    """Encode a group in one call; if that fails, one by one, so one bad image is skipped, not fatal.

    Returns:
        The group's `GallerySide` alone (all encoded together), or per
        image a one-row `GallerySide` or its error. Deterministic for the
        same images, so a resumed build takes the same path.

    Raises:
        The group's error when every image fails alone too (a broken
        encoder, out of memory: not a bad image).
    """
    try:
        return [indexer.index_images(images, method=method, max_regions=max_regions, on_progress=advance)]
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as group_error:  # noqa: BLE001 - isolate the image that broke the batch
        if len(images) == 1:
            raise
        out: list[GallerySide | str] = []
        for im in images:
            try:
                out.append(indexer.index_images([im], method=method, max_regions=max_regions, on_progress=advance))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001
                out.append(f"{type(e).__name__}: {e}")
        if all(isinstance(o, str) for o in out):
            raise group_error
        return out


def _encode_shard(indexer: Indexer, files: list[Path], method: str, max_regions: int, n: int, batch: int, bar,
                  pool) -> _Encoded:
    """Decode and encode one shard's files, `batch` at a time (decoding the next batch meanwhile)."""
    enc = _Encoded()
    groups = [list(range(i, min(i + batch, len(files)))) for i in range(0, len(files), batch)]
    lock = threading.Lock()
    shares = [_GroupProgress(bar, lock, len(g)) for g in groups]

    def load(gi: int) -> list[tuple[Image.Image | None, str | None]]:
        out = []
        for i in groups[gi]:
            im, err, record = read_image(files[i])
            out.append((im, err))
            enc.records[i] = record
            shares[gi](DECODE_SHARE if im is not None else 1.0)  # a skipped image is done once decoded
        return out

    pending = pool.submit(load, 0) if groups else None
    for gi, group in enumerate(groups):
        decoded = pending.result()
        pending = pool.submit(load, gi + 1) if gi + 1 < len(groups) else None
        ok = [i for i, (im, _) in zip(group, decoded) if im is not None]
        enc.skipped += [(i, err) for i, (im, err) in zip(group, decoded) if im is None]
        if ok:
            images = [im for im, _ in decoded if im is not None]
            enc.sizes.update((i, list(im.size)) for i, im in zip(ok, images))
            share = shares[gi]
            results = _encode_group(indexer, images, method, max_regions,
                                    lambda done: share(done * (1.0 - DECODE_SHARE)))
            if len(results) == 1 and not isinstance(results[0], str) and results[0].embeddings.shape[0] == len(ok):
                enc.append(results[0], n)
                enc.kept += ok
            else:
                for i, r in zip(ok, results):
                    if isinstance(r, str):
                        enc.skipped.append((i, r))
                    else:
                        enc.append(r, n)
                        enc.kept.append(i)
        shares[gi].finish()
        if bar is not None:
            bar.set_postfix(skipped=bar.skipped + len(enc.skipped), refresh=False)
    enc.skipped.sort()
    return enc


def _run_shards(folder: Path, prog: dict, files: list[Path], indexer: Indexer, n: int, dim: int,
                progress: bool, save: Callable[[], None]) -> tuple[int, int]:
    """Encode and write every range of `prog` not finished yet, recording each in `prog` (then `save()`).

    Returns:
        (images encoded, images skipped) by this call.
    """
    done = {tuple(s["range"]) for s in prog["shards"]}
    todo = [r for r in prog["ranges"] if tuple(r) not in done]
    bar = None
    if progress:
        bar = _bar(len(prog["plan"]), sum(b - a for a, b in done))
        bar.skipped = sum(len(s["skipped"]) for s in prog["shards"])
    seq = prog.get("next_seq", 0)
    encoded = skipped = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            for a, b in todo:
                enc = _encode_shard(indexer, files[a:b], prog["regions"], prog["max_regions"], n, indexer.batch_size,
                                    bar, pool)
                entry: dict[str, Any] = {"range": [a, b], "count": len(enc.kept), "kept": [a + i for i in enc.kept],
                                         "sizes": [enc.sizes[i] for i in enc.kept],
                                         "files": [enc.records[i] for i in enc.kept],
                                         "skipped": [{"path": prog["plan"][a + i], "error": e} for i, e in enc.skipped]}
                # each range has its own file name, so a resumed build writes the same names
                entry["file"] = fmt.shard_name(seq + prog["ranges"].index([a, b])) if enc.kept else None
                if enc.kept:
                    entry.update(fmt.write_safetensors(folder / entry["file"],
                                                       enc.tensors(n, dim, fmt.regions_dtype_of(prog))))
                prog["shards"].append(entry)
                prog["shards"].sort(key=lambda s: s["range"][0])
                save()
                encoded += len(enc.kept)
                skipped += len(enc.skipped)
                if bar is not None:
                    bar.skipped += len(enc.skipped)
    finally:
        if bar is not None:
            bar.close()
    return encoded, skipped


def _records(shard: dict) -> list:
    """A finished shard's file records (a version 2 build.json has none: unknown)."""
    return shard.get("files") or [None] * len(shard["kept"])


def _stats(encoded: int, skipped: int, seconds: float, resumed: int) -> dict[str, Any]:
    """What a build / add call did: {"encoded", "skipped", "seconds", "images_per_s", "resumed_shards"}."""
    return {"encoded": encoded, "skipped": skipped, "seconds": seconds,
            "images_per_s": (encoded + skipped) / seconds if seconds > 0 and encoded + skipped else 0.0,
            "resumed_shards": resumed}


# ---------------------------------------------------------------- build


def _check_same(prog: dict, settings: dict, plan: list[str], folder: Path) -> None:
    """An unfinished build resumes only with the arguments it started with (else the tensors would differ)."""
    fmt.check_version(prog, folder / fmt.PROGRESS, "build progress file")
    if prog["encoder"]["fingerprint"] != settings["encoder"]["fingerprint"]:
        raise ValueError(f"out {str(folder)!r} holds an unfinished build with encoder {prog['encoder']['name']!r} "
                         f"(fingerprint {prog['encoder']['fingerprint']}), not {settings['encoder']['name']!r} "
                         f"(fingerprint {settings['encoder']['fingerprint']}); resume it with that encoder or delete it")
    for key in ("regions", "max_regions", "batch_size", "shard_size", "root", "regions_dtype"):
        if prog.get(key, "float32") != settings[key]:  # only regions_dtype may be absent (a build before issue 23)
            raise ValueError(f"out {str(folder)!r} holds an unfinished build with {key}={prog.get(key, 'float32')!r}, not "
                             f"{settings[key]!r}; resume it with the same arguments or delete it")
    if prog["plan"] != plan:
        added, gone = len(set(plan) - set(prog["plan"])), len(set(prog["plan"]) - set(plan))
        raise ValueError(f"the source changed since the unfinished build in {str(folder)!r} started ({added} images "
                         f"new, {gone} gone); restore it, or delete {str(folder)!r} and build again")


def _already_built(folder: Path, settings: dict, plan: list[str]) -> dict[str, Any]:
    """A finished index in `out` built with these settings and holding every image: the stats of doing nothing.

    Raises:
        ValueError: another encoder, region method or cap, or images of the source it lacks.
    """
    m = fmt.read_manifest(folder)
    enc = settings["encoder"]
    fmt.check_fingerprint(m, enc["fingerprint"], f"{enc['name']!r} (fingerprint {enc['fingerprint']})",
                          f"index {str(folder)!r}")
    for key in ("regions", "max_regions", "regions_dtype"):
        if m.get(key, "float32") != settings[key]:  # only regions_dtype may be absent (an index before issue 23)
            raise ValueError(f"out {str(folder)!r} holds an index with {key}={m.get(key, 'float32')!r}, not "
                             f"{settings[key]!r}")
    known = set(m["paths"]) | {s["path"] for s in m["skipped"]}
    new = [p for p in plan if p not in known and fmt.record_path(Path(settings["root"]) / p, Path(m["root"])) not in known]
    if new:
        raise ValueError(f"out {str(folder)!r} already holds a finished index, without {len(new)} of the source's "
                         f"images (e.g. {new[0]!r}); bring it in line with the source (new images added, changed "
                         f"ones encoded again, deleted ones dropped) with Index.open(out).sync(source, encoder)")
    return _stats(0, 0, 0.0, len(m["shards"]))


def build(source, out: str | os.PathLike, encoder, regions: str, max_regions: int, batch_size: int, shard_size: int,
          progress: bool, metadata: dict[str, Any] | None,
          regions_dtype: str = "float32") -> tuple[Path, dict[str, Any], str]:
    """Index `source` into the folder `out` (or resume the build there); `Index.build` documents the arguments.

    Returns:
        (the index folder, the stats, the encoder's fingerprint).

    Raises:
        FileNotFoundError / TypeError / ValueError: a bad argument, an empty
            source, an `out` holding something else, or a finished index /
            unfinished build made with other arguments.
        StoreError: no image of the source could be decoded.
    """
    check_method(regions)
    fmt.check_regions_dtype(regions_dtype)
    for name, value in (("max_regions", max_regions), ("batch_size", batch_size), ("shard_size", shard_size)):
        check_positive_int(name, value)
    if metadata is not None:
        json.dumps(metadata)  # fail now, not after hours of encoding
    root, files = collect(source)
    folder = Path(out).expanduser()
    state = fmt.index_state(folder)
    if state == "other":
        raise ValueError(f"out {str(folder)!r} exists and is not an index; pass a new or empty folder")
    plan = [fmt.record_path(f, root) for f in files]
    info = fmt.encoder_record(encoder)
    settings = {"encoder": info, "regions": regions, "max_regions": max_regions, "batch_size": batch_size,
                "shard_size": shard_size, "root": str(root), "regions_dtype": regions_dtype}
    if state == "complete":
        return folder, _already_built(folder, settings, plan), info["fingerprint"]
    t0 = time.perf_counter()
    if state == "partial":
        prog = fmt.read_json(folder / fmt.PROGRESS, "build progress file")
        fmt.check_progress(prog, folder / fmt.PROGRESS)
        _check_same(prog, settings, plan, folder)
    else:
        ranges = [[s, min(s + shard_size, len(plan))] for s in range(0, len(plan), shard_size)]
        prog = {"format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, **settings, "plan": plan, "ranges": ranges,
                "shards": [], "metadata": metadata or {}}
        folder.mkdir(parents=True, exist_ok=True)
        fmt.write_json(folder / fmt.PROGRESS, prog)  # first: from here on the folder reads as an unfinished build
    (folder / fmt.SHARD_DIR).mkdir(exist_ok=True)
    prog["shards"] = [s for s in prog["shards"] if fmt.shard_intact(folder, s)]
    fmt.remove_strays(folder, {s["file"] for s in prog["shards"] if s["file"]})
    n = region_capacity(regions, max_regions)
    resumed = len(prog["shards"])
    indexer = Indexer(encoder, max_regions=max_regions, batch_size=batch_size)
    encoded, skipped = _run_shards(folder, prog, files, indexer, n, info["embed_dim"], progress,
                                   lambda: fmt.write_json(folder / fmt.PROGRESS, prog))
    entries = [s for s in prog["shards"] if s["count"] > 0]
    if not entries:
        errors = [f"{s['path']}: {s['error']}" for sh in prog["shards"] for s in sh["skipped"]][:3]
        raise fmt.StoreError(f"no image in {str(source)!r} could be indexed; e.g. {'; '.join(errors)}")
    if len(entries) > 1:  # one file per tensor: Index.open then maps each whole, zero-copy
        seq = max(fmt.shard_seq(s["file"]) for s in entries) + 1
        entries = [fmt.merge_shards(folder, entries, seq, n, info["embed_dim"], regions_dtype)]
    manifest = fmt.build_manifest(prog, info, n, entries,
                                  paths=[prog["plan"][i] for sh in prog["shards"] for i in sh["kept"]],
                                  sizes=[s for sh in prog["shards"] for s in sh["sizes"]],
                                  skipped=[s for sh in prog["shards"] for s in sh["skipped"]], folder=folder,
                                  files=[r for sh in prog["shards"] for r in _records(sh)])
    fmt.write_json(folder / fmt.MANIFEST, manifest)  # the index exists from here on
    fmt.remove_strays(folder, {e["file"] for e in entries})
    (folder / fmt.PROGRESS).unlink(missing_ok=True)
    return folder, _stats(encoded, skipped, time.perf_counter() - t0, resumed), info["fingerprint"]


# ---------------------------------------------------------------- sync: the index in line with its images
#
# Design: a sync (and add, and remove) is one transaction whose commit point
# is the manifest, as for a build. New and changed images are encoded into
# new shard files, their plan and finished shards kept in sync.json (so an
# interrupted sync resumes from its finished shards, like a build); the rows
# dropped (deleted images, and the old rows of changed ones) are left out by
# rewriting only the shards that hold them, as new files (a streamed copy of
# the kept runs of rows); then the manifest is replaced, and only then are
# the old shard files and sync.json deleted. Until the manifest is replaced
# the index opens as it was; after, as it is. Rewriting the affected shards
# costs a copy of them (seconds per GB, next to hours of encoding) but keeps
# the store simple: no tombstones for every reader to honour, and the
# gallery stays the shards' rows, memory-mapped.


@dataclass
class Changes:
    """How an index differs from the image files of a source: what `Index.sync` does (computed without an encoder).

    Attributes:
        new: files of the source the index neither holds nor skipped before
            (with retry_skipped, skipped ones too): encoded and appended.
        changed: recorded paths of rows whose file's bytes are not the ones
            indexed: their rows dropped, the files encoded again.
        deleted: recorded paths of rows whose file the source no longer holds
            (gone, or no longer a regular file): their rows dropped.
        forgotten: skipped paths the source no longer holds: dropped from the skipped list.
        touched: row -> new record, for files whose size or mtime changed but whose bytes hash the same.
        adopted: row -> `[bytes, mtime_ns, None]`, for rows indexed without a
            record (format 2, `write_index`): taken as they are now (see `Index.sync`).
        unchanged: rows whose file's size and mtime are as indexed.
        files: changed recorded path -> its file.
        stamps: file to encode -> `[bytes, mtime_ns]` seen now (a resumed sync
            reuses finished shards only for the same files at the same stamps).
        identity: the `Index.identity` these changes were computed against.
    """

    new: list[Path] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    touched: dict[int, list] = field(default_factory=dict)
    adopted: dict[int, list] = field(default_factory=dict)
    unchanged: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    stamps: dict[Path, list] = field(default_factory=dict)
    identity: str = ""

    @property
    def to_encode(self) -> list[Path]:
        """The files a sync encodes: new and changed, sorted."""
        return sorted(set(self.new) | {self.files[p] for p in self.changed})

    def __bool__(self) -> bool:
        """Whether a sync would write anything."""
        return bool(self.new or self.changed or self.deleted or self.forgotten or self.touched or self.adopted)

    def counts(self) -> dict[str, int]:
        """{"new", "changed", "deleted", "forgotten", "touched", "adopted", "unchanged"}: how many of each."""
        return {"new": len(self.new), "changed": len(self.changed), "deleted": len(self.deleted),
                "forgotten": len(self.forgotten), "touched": len(self.touched), "adopted": len(self.adopted),
                "unchanged": self.unchanged}


def _stamp(path: Path) -> list:
    try:
        st = os.stat(path)
    except OSError:  # gone since it was listed: the encode records why it is skipped
        return [0, 0]
    return [int(st.st_size), int(st.st_mtime_ns)]


def changes(manifest: dict, source, index_root: Path, identity: str, retry_skipped: bool = False) -> Changes:
    """What `sync` would do to bring the index in line with `source` (`Index.changes` documents it).

    Files are compared by size and mtime_ns with the record taken when they
    were indexed; where those differ, the file is hashed (blake2b) and
    compared with the recorded hash, so a file only touched is not encoded
    again. Deletions are looked for only among the rows under a folder
    source (a list of files deletes nothing it does not list).

    Raises:
        As `collect`.
    """
    src_root, files = collect(source)
    m = manifest
    rows = {p: i for i, p in enumerate(m["paths"])}
    skipped = {s["path"] for s in m["skipped"]}
    records = m.get("files") or [None] * len(m["paths"])
    roots = list(dict.fromkeys([Path(m["root"]), index_root]))
    ch = Changes(identity=identity)
    seen: set[str] = set()
    for f in files:
        p = next((q for q in (fmt.record_path(f, r) for r in roots) if q in rows or q in skipped), None)
        if p is None or (p not in rows and retry_skipped):
            ch.new.append(f)
            ch.stamps[f] = _stamp(f)
            seen.add(p)
            continue
        seen.add(p)
        if p not in rows:  # skipped before, and not retried
            continue
        i = rows[p]
        try:
            st = os.stat(f)
        except OSError:  # gone since the folder was listed
            ch.deleted.append(p)
            continue
        if fmt.file_kind(st.st_mode) is not None:  # an image replaced by a FIFO, a device ...: dropped, listed as skipped
            ch.deleted.append(p)
            ch.new.append(f)
            ch.stamps[f] = [int(st.st_size), int(st.st_mtime_ns)]
            continue
        rec = records[i]
        if rec is None:
            ch.adopted[i] = fmt.file_record(st, None)
        elif rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            ch.unchanged += 1
        else:
            now = fmt.hash_file(f) if rec[2] is not None else None
            if now is not None and now[2] == rec[2]:
                ch.touched[i] = now
            else:  # other bytes, or no hash to compare with: encode it again
                ch.changed.append(p)
                ch.files[p] = f
                ch.stamps[f] = [int(st.st_size), int(st.st_mtime_ns)]
    if isinstance(source, (str, os.PathLike)):  # a folder: what it no longer holds is deleted
        def under(p: str) -> bool:
            return (index_root / p).is_relative_to(src_root)

        ch.deleted += [p for p in m["paths"] if p not in seen and under(p)]
        ch.forgotten = [s["path"] for s in m["skipped"] if s["path"] not in seen and under(s["path"])]
    return ch


def _resumable(path: Path, want: dict, folder: Path) -> dict | None:
    """The progress of an interrupted sync of exactly this plan (same files, stamps, encoder, settings), or None."""
    if not path.is_file():
        return None
    try:
        prog = fmt.read_json(path, "sync progress file")
        fmt.check_sync(prog, path)
    except fmt.StoreError:  # ours and only a cache of finished work: a damaged one is started over
        return None
    if any(prog.get(k) != v for k, v in want.items()):
        return None
    prog["shards"] = [s for s in prog["shards"] if fmt.shard_intact(folder, s)]
    return prog


def sync(folder: Path, manifest: dict, ch: Changes, encoder, batch_size: int | None, progress: bool,
         index_root: Path) -> tuple[dict, dict[str, Any]]:
    """Apply `ch` to the index in `folder`: encode the new and changed, drop the deleted; the new manifest (written) and stats.

    The caller has checked the encoder (needed only when there is something
    to encode). Atomic: the manifest is replaced last. Resumable: an
    interrupted sync of the same changes reuses its finished shards.

    Raises:
        ValueError: the sync would leave the index without a row.
    """
    m = manifest
    t0 = time.perf_counter()
    counts = ch.counts()
    if not ch:
        return m, {**_stats(0, 0, 0.0, 0), **counts}
    todo = ch.to_encode
    drop = set(ch.deleted) | set(ch.changed)
    keep_row = [p not in drop for p in m["paths"]]
    if not todo and not any(keep_row):
        raise ValueError(f"index {str(folder)!r}: this would remove every image; delete the index instead")
    n, dim, rdt = m["n"], m["dim"], fmt.regions_dtype_of(m)
    next_seq = max((fmt.shard_seq(s["file"]) for s in m["shards"]), default=-1) + 1
    prog_path = folder / fmt.SYNC
    prog = None
    if todo:
        shard_size = m["build"].get("shard_size") or 1024
        plan = [fmt.record_path(f, index_root) for f in todo]
        want = {"format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "fingerprint": m["encoder"]["fingerprint"],
                "regions": m["regions"], "max_regions": m["max_regions"], "n": n, "regions_dtype": rdt,
                "shard_size": shard_size,
                "plan": plan, "stamps": [ch.stamps.get(f) or _stamp(f) for f in todo]}
        prog = _resumable(prog_path, want, folder)
        if prog is None:
            prog = {**want, "next_seq": next_seq, "shards": [],
                    "ranges": [[a, min(a + shard_size, len(plan))] for a in range(0, len(plan), shard_size)]}
    keep = {s["file"] for s in m["shards"]} | {s["file"] for s in (prog or {}).get("shards", []) if s["file"]}
    fmt.remove_strays(folder, keep)  # what an interrupted write left (never a shard a manifest or the resumed sync names)
    resumed = encoded = skipped = 0
    added: list[dict] = []
    if prog is not None:
        resumed = len(prog["shards"])
        save = lambda: fmt.write_json(prog_path, prog)  # noqa: E731
        save()
        batch = check_positive_int("batch_size", batch_size) if batch_size is not None else (m["build"].get("batch_size") or 64)
        indexer = Indexer(encoder, max_regions=m["max_regions"], batch_size=batch)
        encoded, skipped = _run_shards(folder, prog, todo, indexer, n, dim, progress, save)
        next_seq = max(next_seq, prog["next_seq"] + len(prog["ranges"]))
        added = prog["shards"]
    if not any(keep_row) and not any(s["count"] for s in added):
        raise ValueError(f"index {str(folder)!r}: this would remove every image and no new one could be indexed; "
                         f"delete the index instead")
    records = list(m.get("files") or [None] * len(m["paths"]))
    for i, r in {**ch.adopted, **ch.touched}.items():
        records[i] = r
    entries, start = [], 0
    for e in m["shards"]:
        k = keep_row[start : start + e["count"]]
        start += e["count"]
        if all(k):
            entries.append(e)
        elif any(k):  # a new file with the kept rows; the old one stays valid until the manifest stops naming it
            entries.append(fmt.filter_shard(folder, e, k, next_seq, n, dim, rdt))
            next_seq += 1
    entries += [{k: e[k] for k in ("file", "count", "bytes", "sha256")} for e in added if e["count"] > 0]
    kept = [i for i, k in enumerate(keep_row) if k]
    plan = prog["plan"] if prog is not None else []
    retried, gone = set(plan), set(ch.forgotten)
    new = dict(m)
    new["version"] = fmt.FORMAT_VERSION
    new["shards"] = entries
    new["paths"] = [m["paths"][i] for i in kept] + [plan[i] for sh in added for i in sh["kept"]]
    new["sizes"] = [m["sizes"][i] for i in kept] + [s for sh in added for s in sh["sizes"]]
    new["files"] = [records[i] for i in kept] + [r for sh in added for r in _records(sh)]
    new["skipped"] = [s for s in m["skipped"] if s["path"] not in retried and s["path"] not in gone] + [
        s for sh in added for s in sh["skipped"]]
    new["count"] = len(new["paths"])
    new["skipped_count"] = len(new["skipped"])
    fmt.write_json(folder / fmt.MANIFEST, new)  # the commit point: the index is the new one from here on
    fmt.remove_strays(folder, {e["file"] for e in entries})
    prog_path.unlink(missing_ok=True)
    return new, {**_stats(encoded, skipped, time.perf_counter() - t0, resumed), **counts}


def compact(folder: Path, manifest: dict) -> dict:
    """Merge every shard of an index into one (a streamed copy); the new manifest (written).

    Crash-safe: the merged shard gets a new name and the manifest is
    replaced last; the old shards are removed after.
    """
    m = manifest
    if len(m["shards"]) <= 1:
        return m
    entry = fmt.merge_shards(folder, m["shards"], max(fmt.shard_seq(s["file"]) for s in m["shards"]) + 1, m["n"],
                             m["dim"], fmt.regions_dtype_of(m))
    new = {**m, "shards": [entry]}
    fmt.write_json(folder / fmt.MANIFEST, new)
    fmt.remove_strays(folder, {entry["file"]})
    return new


# ---------------------------------------------------------------- a gallery you have


def _check_gallery(gallery: GallerySide, num_paths: int | None, n: int | None = None, dim: int | None = None) -> None:
    """`write_index`'s gallery (or one block of it): float32 embeddings `[c, D]`, parts `[c, n, D]`,
    mask `[c, n]` bool, boxes `[c, n, 4]`; with `n` / `dim`, those of the first block."""
    if not isinstance(gallery, GallerySide) or gallery.parts is None or gallery.parts_mask is None or gallery.part_boxes is None:
        raise TypeError("gallery must be a GallerySide with parts, parts_mask and part_boxes (or an iterable of them)")
    emb, parts = gallery.embeddings, gallery.parts
    if emb.dtype != torch.float32 or parts.dtype != torch.float32:
        raise TypeError(f"gallery embeddings and parts must be float32 (regions_dtype compacts them), got {emb.dtype} "
                        f"and {parts.dtype}")
    if emb.ndim != 2 or parts.ndim != 3 or parts.shape[0] != emb.shape[0] or parts.shape[2] != emb.shape[1]:
        raise ValueError(f"gallery has embeddings {list(emb.shape)} and parts {list(parts.shape)}; expected [N, D] and [N, n, D]")
    num, m, d = parts.shape
    if (n is not None and m != n) or (dim is not None and d != dim):
        raise ValueError(f"a gallery block has parts [{num}, {m}, {d}]; the first had n={n}, D={dim}")
    if list(gallery.parts_mask.shape) != [num, m] or gallery.parts_mask.dtype != torch.bool:
        raise ValueError(f"gallery parts_mask must be bool [{num}, {m}], got {gallery.parts_mask.dtype} {list(gallery.parts_mask.shape)}")
    if list(gallery.part_boxes.shape) != [num, m, 4]:
        raise ValueError(f"gallery part_boxes must be [{num}, {m}, 4], got {list(gallery.part_boxes.shape)}")
    if num_paths is not None and num_paths != num:
        raise ValueError(f"paths holds {num_paths} entries but gallery has N={num} rows")
    if num_paths is not None and num == 0:
        raise ValueError("gallery must hold at least one row")


def _check_sizes(sizes, num: int) -> list[list[int] | None]:
    """`write_index`'s sizes: N entries, each (width, height) of positive ints or None."""
    out = list(sizes)
    if len(out) != num:
        raise ValueError(f"sizes holds {len(out)} entries but gallery has N={num} rows")
    for i, s in enumerate(out):
        if s is None:
            continue
        if (not isinstance(s, Sequence) or len(s) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)):
            raise ValueError(f"sizes[{i}] must be (width, height) in pixels or None, got {s!r}")
    return [None if s is None else [int(s[0]), int(s[1])] for s in out]


class _Blocks:
    """Rows of a gallery given as blocks (`GallerySide`s), handed out `take(count)` at a time as stored
    (`format.compact_rows`): a shard boundary may fall inside a block."""

    def __init__(self, blocks: Iterator[GallerySide], n: int, dim: int, regions_dtype: str) -> None:
        self.blocks, self.n, self.dim, self.rdt = blocks, n, dim, regions_dtype
        self.rest: GallerySide | None = None
        self.rows = 0

    def _next(self) -> GallerySide | None:
        if self.rest is not None:
            g, self.rest = self.rest, None
            return g
        g = next(self.blocks, None)
        if g is not None:
            _check_gallery(g, None, self.n, self.dim)
        return g

    def take(self, count: int) -> Iterator[dict[str, np.ndarray]]:
        """Exactly `count` rows, as blocks of stored arrays.

        Raises:
            ValueError: the blocks end first.
        """
        left = count
        while left > 0:
            g = self._next()
            if g is None:
                raise ValueError(f"gallery blocks hold {self.rows} rows, fewer than the paths")
            c = g.embeddings.shape[0]
            if c > left:
                self.rest = _slice_side(g, left, c)
                g = _slice_side(g, 0, left)
                c = left
            left -= c
            self.rows += c
            yield {"embeddings": g.embeddings.contiguous().numpy(),
                   **fmt.compact_rows(g.parts.contiguous().numpy(), self.rdt),
                   "part_boxes": g.part_boxes.float().contiguous().numpy(),
                   "parts_mask": g.parts_mask.contiguous().numpy()}

    def exhausted(self) -> bool:
        """Whether no row is left (a block of zero rows counts as none)."""
        while (g := self._next()) is not None:
            if g.embeddings.shape[0]:
                self.rest = g
                return False
        return True


def _slice_side(g: GallerySide, a: int, b: int) -> GallerySide:
    return GallerySide(g.embeddings[a:b], parts=g.parts[a:b], parts_mask=g.parts_mask[a:b], part_boxes=g.part_boxes[a:b])


def write_gallery(gallery: GallerySide | Iterable[GallerySide], paths: Sequence[str | os.PathLike],
                  out: str | os.PathLike, *, encoder, regions: str, max_regions: int | None, shard_size: int | None,
                  root: str | os.PathLike | None, skipped: Sequence[dict[str, str]], metadata: dict[str, Any] | None,
                  sizes: Sequence[Sequence[int] | None] | None, regions_dtype: str = "float32") -> Path:
    """Write a `GallerySide` (or blocks of one, in row order) as an index folder (`geosteer.index.write_index`
    documents the arguments); the folder."""
    check_method(regions)
    fmt.check_regions_dtype(regions_dtype)
    num = len(paths)
    if isinstance(gallery, GallerySide):
        _check_gallery(gallery, num)
        blocks: Iterator[GallerySide] = iter([gallery])
        first = gallery
    else:
        if num == 0:
            raise ValueError("paths must hold at least one entry")
        blocks = iter(gallery)
        first = next(blocks, None)
        if first is None:
            raise ValueError("gallery blocks hold no row")
        _check_gallery(first, None)
        blocks = itertools.chain([first], blocks)
    n, dim = int(first.parts.shape[1]), int(first.parts.shape[2])
    shard = check_positive_int("shard_size", shard_size) if shard_size is not None else num
    if isinstance(encoder, tuple):
        name, fp = encoder
        info = {"name": str(name), "pretrained": None, "fingerprint": str(fp), "embed_dim": dim, "image_size": None}
    else:
        info = fmt.encoder_record(encoder)
    if info["embed_dim"] != dim:
        raise ValueError(f"encoder has D={info['embed_dim']} but gallery has D={dim}")
    files = [Path(p).expanduser().absolute() for p in paths]
    recorded_sizes = _check_sizes(sizes, num) if sizes is not None else [image_size(f) for f in files]
    folder = Path(out).expanduser()
    if fmt.index_state(folder) not in ("missing", "empty"):
        raise ValueError(f"out {str(folder)!r} exists and is not empty; pass a new or empty folder")
    base = Path(root).expanduser().absolute() if root is not None else Path(os.path.commonpath([str(f.parent) for f in files]))
    (folder / fmt.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    rows = _Blocks(blocks, n, dim, regions_dtype)
    entries = []
    try:
        for k, a in enumerate(range(0, num, shard)):
            b = min(a + shard, num)
            name = fmt.shard_name(k)
            entries.append({"file": name, "count": b - a, **fmt.write_safetensors_rows(
                folder / name, fmt.tensor_specs(regions_dtype, b - a, n, dim), rows.take(b - a))})
        if not rows.exhausted():
            raise ValueError(f"gallery blocks hold more rows than the {num} paths")
    except BaseException:
        shutil.rmtree(folder / fmt.SHARD_DIR, ignore_errors=True)  # no manifest was written: not an index
        raise
    settings = {"regions": regions, "max_regions": max_regions or n, "root": str(base), "batch_size": None,
                "shard_size": shard, "metadata": metadata or {}, "regions_dtype": regions_dtype}
    manifest = fmt.build_manifest(settings, info, n, entries, [fmt.record_path(f, base) for f in files],
                                  recorded_sizes, [dict(s) for s in skipped], folder)
    fmt.write_json(folder / fmt.MANIFEST, manifest)
    return folder
