"""The on-disk index: a folder of safetensors shards and a JSON manifest (DESIGN §6).

    INDEX/manifest.json              format version, encoder name + fingerprint, region
                                     method, max_regions, D, n, counts, image paths,
                                     skipped images, per-shard file / count / bytes / sha256
    INDEX/shards/shard-00012.safetensors   embeddings [c, D] float32, parts [c, n, D] float32,
                                     part_boxes [c, n, 4] float32, parts_mask [c, n] bool

`Index.build(source, out, encoder)` encodes a folder (recursive) or a list
of image files shard by shard. Every file is written atomically (temp file,
fsync, `os.replace`, fsync of the folder) and the manifest last, so an
interrupted build never leaves a folder that opens as an index: while a
build runs, `INDEX/build.json` (the plan and the finished shards) stands
in for the manifest, and calling `build` again with the same arguments
resumes from the finished shards. Shard boundaries are fixed by the plan
and each shard is encoded the same way whether resumed or not, so a resumed
build writes the same tensors, byte for byte, as an uninterrupted one. At
the end the shards are merged into one file (a streamed copy, seconds next
to hours of encoding), so `Index.open` maps every tensor whole, zero-copy.

`Index.open(path)` reads the manifest and the shards' headers only and
memory-maps the tensors (np.memmap -> torch.from_numpy). It checks, cheaply:
the format version, the encoder (when given), that every shard exists, that
its header matches the manifest (dtypes, shapes) and that its size is what
its header says (a truncated or extended file). The embeddings' checksums are
checked once, on the first `gallery` access (every search reads them:
N x D x 4 bytes, 1/(n+1) of the data). The region tensors' checksums only
in `verify()` (a full pass): corrupt region bytes that stay finite can
change a re-ranking without an error until `verify()` runs; non-finite
ones are caught by the head in the candidates' rows.

Images that fail to decode (not an image, truncated, unreadable, too
small) are skipped and listed in the manifest with their error. Every image
is converted to RGB (`load_image`): EXIF orientation applied, transparency
composited on white, 16-bit and float greyscale scaled to 8 bits.

One writer at a time: two processes building or adding to one folder at
once are not supported.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import math
import os
import struct
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from geosteer.config import HeadConfig, get_config
from geosteer.encoders.images import load_image
from geosteer.encoders.parts import split_parts
from geosteer.encoders.regions import GRID_SCALES, check_method
from geosteer.head import GeoSteerHead, HeadResult
from geosteer.index.indexer import Indexer, encoder_fingerprint, query_inputs
from geosteer.inputs import GallerySide, QuerySide

#: The format this module writes and the only one it opens.
FORMAT_VERSION = 1
FORMAT_NAME = "geosteer-index"
MANIFEST = "manifest.json"
PROGRESS = "build.json"
SHARD_DIR = "shards"
#: File suffixes `Index.build` / `Index.add` pick up in a folder (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)
#: Smallest image side indexed: the grid's smallest cells vanish below it.
MIN_SIDE = 8
#: The tensors of a shard, in file order: the 4-byte dtypes first, so each
#: stays 4-byte aligned in the mapped file (the header is padded to 64).
TENSORS: tuple[str, ...] = ("embeddings", "parts", "part_boxes", "parts_mask")
_ST_DTYPES = {"F32": np.float32, "BOOL": np.bool_}
_NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.bool_): "BOOL"}
_HEADER_ALIGN = 64
_MAX_HEADER = 1 << 24  # a shard header is a few hundred bytes; more is not one of ours


class StoreError(ValueError):
    """A folder that is not a readable index: wrong format, unfinished build, truncated or corrupt shard."""


# ---------------------------------------------------------------- images


def _decode(path: str) -> tuple[Image.Image | None, str | None]:
    """(image, None), or (None, the error) for a file the index skips."""
    try:
        im = load_image(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file", never the build
        return None, f"{type(e).__name__}: {e}"
    if min(im.size) < MIN_SIDE:
        return None, f"image is {im.width}x{im.height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is indexed"
    return im, None


# ---------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
    """Write `chunks` to `path` all or nothing (temp file, fsync, rename, fsync of the folder); returns bytes written."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    size = 0
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
                size += len(c) if isinstance(c, bytes) else c.nbytes
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return size


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, [(json.dumps(obj, indent=1) + "\n").encode()])


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{what} {str(path)!r} cannot be read: {e}") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{what} {str(path)!r} is not a JSON object")
    return obj


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a)).cast("B")


def _write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], np.dtype, Sequence[np.ndarray]]]) -> dict:
    """Stream tensors into one safetensors file, atomically; hash each on the way.

    Args:
        path: the file.
        tensors: name -> (shape, dtype, chunks): the tensor is the chunks
            concatenated along dim 0 (one chunk for a fresh shard, one per
            shard when merging), written in this dict's order.

    Returns:
        {"bytes": file size, "sha256": {name: hex digest of its raw bytes}}.
    """
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT_NAME, "version": str(FORMAT_VERSION)}}
    start = 0
    for name, (shape, dtype, chunks) in tensors.items():
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if sum(c.nbytes for c in chunks) != nbytes or any(c.dtype != dtype for c in chunks):
            raise ValueError(f"tensor {name!r}: chunks do not make {dtype} {list(shape)}")
        header[name] = {"dtype": _NP_TO_ST[np.dtype(dtype)], "shape": list(shape), "data_offsets": [start, start + nbytes]}
        start += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % _HEADER_ALIGN)  # safetensors allows trailing spaces in the header
    digests = {name: hashlib.sha256() for name in tensors}

    def chunks_of() -> Iterator[bytes | memoryview]:
        yield struct.pack("<Q", len(raw)) + raw
        for name, (_, _, chunks) in tensors.items():
            for c in chunks:
                b = _bytes(c)
                digests[name].update(b)
                yield b

    size = _atomic_write(path, chunks_of())
    return {"bytes": size, "sha256": {name: d.hexdigest() for name, d in digests.items()}}


def _read_header(path: Path) -> tuple[dict, int, int]:
    """(header, byte offset of the data, file size) of a safetensors file.

    Raises:
        StoreError: naming the file, when it is missing, not safetensors, or
            its size is not what its header says (truncated or extended).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise StoreError(f"shard {str(path)!r} is truncated: {size} bytes, not even a header")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > min(_MAX_HEADER, size - 8):
                raise StoreError(f"shard {str(path)!r} is truncated or not a safetensors file "
                                 f"(header of {hlen} bytes in a {size}-byte file)")
            header = json.loads(f.read(hlen))
    except FileNotFoundError:
        raise StoreError(f"shard {str(path)!r} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"shard {str(path)!r} has a corrupt header: {e}") from None
    if not isinstance(header, dict):
        raise StoreError(f"shard {str(path)!r} has a corrupt header")
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    expected = 8 + hlen + max(ends, default=0)
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise StoreError(f"shard {str(path)!r} is {what}: {size} bytes, its header says {expected}")
    return header, 8 + hlen, size


def _map_shard(path: Path, count: int, n: int, dim: int) -> dict[str, Tensor]:
    """Memory-map one shard's tensors (copy-on-write pages: nothing is read until used).

    Raises:
        StoreError: naming the file, when its header does not match the
            manifest (tensors, dtypes, shapes) or its size is wrong.
    """
    header, data_start, size = _read_header(path)
    expected = {"embeddings": ("F32", [count, dim]), "parts": ("F32", [count, n, dim]),
                "part_boxes": ("F32", [count, n, 4]), "parts_mask": ("BOOL", [count, n])}
    mm = np.memmap(path, dtype=np.uint8, mode="c", shape=(size,)) if size else None
    out = {}
    for name, (dtype, shape) in expected.items():
        spec = header.get(name)
        if not isinstance(spec, dict) or spec.get("dtype") != dtype or spec.get("shape") != shape:
            got = None if not isinstance(spec, dict) else f"{spec.get('dtype')} {spec.get('shape')}"
            raise StoreError(f"shard {str(path)!r}: tensor {name!r} is {got}, the manifest says {dtype} {shape}")
        b, e = spec["data_offsets"]
        if e - b != math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize:
            raise StoreError(f"shard {str(path)!r}: tensor {name!r} holds {e - b} bytes, not {dtype} {shape}")
        arr = mm[data_start + b : data_start + e].view(_ST_DTYPES[dtype]).reshape(shape)
        if not arr.flags.aligned:  # not written by this module; a copy keeps torch's kernels safe
            arr = arr.copy()
        out[name] = torch.from_numpy(arr)
    return out


def _tensor_bytes(t: Tensor) -> memoryview:
    return memoryview(t.numpy()).cast("B")


def _sha256(t: Tensor) -> str:
    h = hashlib.sha256()
    mv = _tensor_bytes(t)
    step = 1 << 26  # 64 MiB at a time: hashing a view, never a copy
    for i in range(0, len(mv), step):
        h.update(mv[i : i + step])
    return h.hexdigest()


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


def _collect(source, what: str = "source") -> tuple[Path, list[Path]]:
    """(root, absolute image files) of a folder or a list of files.

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


def _record(path: Path, root: Path) -> str:
    """A file as the manifest records it: relative to `root` (POSIX) where it lies under it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _region_capacity(method: str, max_regions: int) -> int:
    """n of an index: the most regions any image can get (grid: 13 cells; other families: max_regions)."""
    grid = sum(k * k for k, _, _ in GRID_SCALES)
    per = sum(min(grid, max_regions) if f == "grid" else max_regions for f in check_method(method))
    return max(1, min(max_regions, per))


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


# ---------------------------------------------------------------- encoding


@dataclass
class _Encoded:
    """Encoded images of one shard: numpy arrays padded to the index's n."""

    embeddings: list[np.ndarray] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # plan positions encoded
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


def _encode_group(indexer: Indexer, images: list[Image.Image], method: str, max_regions: int) -> list[GallerySide | str]:
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
        return [indexer.index_images(images, method=method, max_regions=max_regions)]
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as group_error:  # noqa: BLE001 - isolate the image that broke the batch
        if len(images) == 1:
            raise
        out: list[GallerySide | str] = []
        for im in images:
            try:
                out.append(indexer.index_images([im], method=method, max_regions=max_regions))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001
                out.append(f"{type(e).__name__}: {e}")
        if all(isinstance(o, str) for o in out):
            raise group_error
        return out


def _encode_shard(
    indexer: Indexer, files: list[Path], method: str, max_regions: int, n: int, batch: int, bar, pool
) -> _Encoded:
    """Decode and encode one shard's files, `batch` at a time (decoding the next batch meanwhile)."""
    enc = _Encoded()
    groups = [list(range(i, min(i + batch, len(files)))) for i in range(0, len(files), batch)]
    load = lambda g: [_decode(str(files[i])) for i in g]  # noqa: E731
    pending = pool.submit(load, groups[0]) if groups else None
    for gi, group in enumerate(groups):
        decoded = pending.result()
        pending = pool.submit(load, groups[gi + 1]) if gi + 1 < len(groups) else None
        ok = [i for i, (im, _) in zip(group, decoded) if im is not None]
        enc.skipped += [(i, err) for i, (im, err) in zip(group, decoded) if im is None]
        if ok:
            images = [im for im, _ in decoded if im is not None]
            results = _encode_group(indexer, images, method, max_regions)
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
        if bar is not None:
            bar.update(len(group))
            bar.set_postfix(skipped=bar.skipped + len(enc.skipped), refresh=False)
    enc.skipped.sort()
    return enc


def _shard_tensors(enc: _Encoded, n: int, dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype, list[np.ndarray]]]:
    c = len(enc.kept)
    cat = lambda xs, shape, dt: [np.concatenate(xs) if xs else np.zeros(shape, dt)]  # noqa: E731
    return {
        "embeddings": ((c, dim), np.dtype(np.float32), cat(enc.embeddings, (0, dim), np.float32)),
        "parts": ((c, n, dim), np.dtype(np.float32), cat(enc.parts, (0, n, dim), np.float32)),
        "part_boxes": ((c, n, 4), np.dtype(np.float32), cat(enc.boxes, (0, n, 4), np.float32)),
        "parts_mask": ((c, n), np.dtype(np.bool_), cat(enc.mask, (0, n), np.bool_)),
    }


def _gallery_tensors(g: GallerySide, start: int, stop: int) -> dict[str, tuple[tuple[int, ...], np.dtype, list[np.ndarray]]]:
    emb = g.embeddings[start:stop].contiguous().numpy()
    parts = g.parts[start:stop].contiguous().numpy()
    return {
        "embeddings": (emb.shape, emb.dtype, [emb]),
        "parts": (parts.shape, parts.dtype, [parts]),
        "part_boxes": ((stop - start, parts.shape[1], 4), np.dtype(np.float32),
                       [g.part_boxes[start:stop].float().contiguous().numpy()]),
        "parts_mask": ((stop - start, parts.shape[1]), np.dtype(np.bool_), [g.parts_mask[start:stop].contiguous().numpy()]),
    }


def _shard_name(seq: int) -> str:
    return f"{SHARD_DIR}/shard-{seq:05d}.safetensors"


def _merge(folder: Path, shards: list[dict], seq: int, n: int, dim: int) -> dict:
    """One shard holding `shards` in order (a streamed copy from the mapped files); its manifest entry."""
    maps = [_map_shard(folder / s["file"], s["count"], n, dim) for s in shards]
    total = sum(s["count"] for s in shards)
    shapes = {"embeddings": (total, dim), "parts": (total, n, dim), "part_boxes": (total, n, 4), "parts_mask": (total, n)}
    tensors = {name: (shapes[name], maps[0][name].numpy().dtype, [m[name].numpy() for m in maps]) for name in TENSORS}
    name = _shard_name(seq)
    info = _write_safetensors(folder / name, tensors)
    return {"file": name, "count": total, **info}


def _encoder_info(encoder) -> dict:
    name = getattr(encoder, "name", None)
    if not isinstance(name, str) or not hasattr(encoder, "encode_images"):
        raise TypeError(f"encoder must be a geosteer.encoders.ClipEncoder (load_clip(...)), got {type(encoder).__name__}")
    return {"name": name, "fingerprint": encoder_fingerprint(encoder), "embed_dim": int(encoder.embed_dim),
            "image_size": int(encoder.image_size[0])}


def index_state(path: str | os.PathLike) -> str:
    """What a folder holds: "missing", "empty", "complete" (a manifest), "partial" (an unfinished build) or "other"."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if not p.is_dir():
        return "other"
    if (p / MANIFEST).is_file():
        return "complete"
    if (p / PROGRESS).is_file():
        return "partial"
    return "empty" if not any(p.iterdir()) else "other"


# ---------------------------------------------------------------- results


@dataclass
class Ranking:
    """One query's top-k, best first (the cosine order, or the re-ranked one).

    Attributes:
        ids: row ids in the index.
        paths: their paths as the manifest records them (relative to `Index.root` where possible).
        scores: the ranking's own scores: cosine q·c for the cosine ranking,
            fused S(q, c) for the re-ranked one.
        first_stage: cosine q·c.
        alignment: A(q, c), 0 without re-ranking.
        structure: R(q, c), 0 without relations.
        boxes: per result, per query part, the (x0, y0, x1, y1) pixel box of
            the region matched to it, or None (no match; always None in the
            cosine ranking, which matches nothing).
        ranks_before: per result, its 1-based rank by cosine among the K candidates.
    """

    ids: list[int]
    paths: list[str]
    scores: list[float]
    first_stage: list[float]
    alignment: list[float]
    structure: list[float]
    boxes: list[list[tuple[float, float, float, float] | None]]
    ranks_before: list[int] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per result."""
        return [{"rank": r + 1, "id": i, "path": p, "score": s, "cosine": c, "alignment": a, "structure": st,
                 "rank_before": rb, "boxes": [list(b) if b is not None else None for b in bx]}
                for r, (i, p, s, c, a, st, rb, bx) in enumerate(zip(
                    self.ids, self.paths, self.scores, self.first_stage, self.alignment, self.structure,
                    self.ranks_before, self.boxes))]


@dataclass
class SearchResult:
    """What `Index.search` returns: per query the cosine and the re-ranked top-k.

    Attributes:
        queries: the captions (None for a `QuerySide` given whole).
        parts: per query, its part phrases (what `boxes` are per); the
            part numbers for a `QuerySide`.
        cosine: per query, the cosine top-k.
        reranked: per query, the head's top-k.
        head: the head's raw `HeadResult` over all K candidates (`[Q, K]`).
        config: the head's config (its K capped at the index size).
        k: results per query (k capped at the index size).
    """

    queries: list[str] | None
    parts: list[list[str]]
    cosine: list[Ranking]
    reranked: list[Ranking]
    head: HeadResult
    config: HeadConfig
    k: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: config, k and per query its text, parts, cosine and re-ranked rows."""
        return {
            "k": self.k, "config": dataclasses.asdict(self.config),
            "queries": [{"query": None if self.queries is None else self.queries[q], "parts": self.parts[q],
                         "cosine": self.cosine[q].rows(), "reranked": self.reranked[q].rows()}
                        for q in range(len(self.parts))],
        }


# ---------------------------------------------------------------- the index


class Index:
    """An on-disk index: memory-mapped gallery tensors, image paths, search.

    Make one with `Index.build` (images) or `write_index` (a `GallerySide`
    you have); open one with `Index.open`.

    Attributes:
        path: the index folder.
        manifest: the parsed manifest.
        encoder: the encoder given to `open` (used by `search` on captions), or None.
        stats: what the `build` / `add` call that returned this object did
            ({"encoded", "skipped", "seconds", "images_per_s", "resumed_shards"}), else None.
    """

    def __init__(self, path: Path, manifest: dict, shards: list[dict[str, Tensor]], encoder=None) -> None:
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        self.stats: dict[str, Any] | None = None
        self._shards = shards
        self._gallery: GallerySide | None = None
        self._checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> its fingerprint matched
        self._indexer: tuple[Any, Indexer] | None = None
        self._paths: tuple[str, ...] | None = None

    # -- opening

    @classmethod
    def open(cls, path: str | os.PathLike, encoder=None) -> Index:
        """Open an index folder: manifest and shard headers read, tensors memory-mapped.

        Args:
            path: the folder `Index.build` / `write_index` wrote.
            encoder: optional; a `ClipEncoder` or its `encoder_fingerprint`
                string, checked against the manifest (and kept for `search`).

        Raises:
            FileNotFoundError: `path` does not exist.
            StoreError (a ValueError) naming the file: no manifest (not an
                index, or an unfinished build), a manifest of another format
                version, a missing, truncated or mismatched shard.
            ValueError: naming the index and both encoders, when `encoder`
                is not the one the index was built with.
        """
        folder = Path(path).expanduser()
        state = index_state(folder)
        if state == "missing":
            raise FileNotFoundError(f"index {str(folder)!r} does not exist")
        if state == "partial":
            prog = _read_json(folder / PROGRESS, "build progress file")
            done, total = len(prog.get("shards", [])), len(prog.get("ranges", []))
            raise StoreError(f"index {str(folder)!r} is an unfinished build ({done} of {total} shards written, no "
                             f"{MANIFEST} yet); run the build again with the same arguments to resume it")
        if state != "complete":
            raise StoreError(f"{str(folder)!r} is not an index: it has no {MANIFEST}")
        manifest = _read_json(folder / MANIFEST, "manifest")
        _check_manifest(manifest, folder / MANIFEST)
        n, dim = manifest["n"], manifest["dim"]
        shards = [_map_shard(folder / s["file"], s["count"], n, dim) for s in manifest["shards"]]
        index = cls(folder, manifest, shards)
        if encoder is not None:
            index.check_encoder(encoder)
            if not isinstance(encoder, str):
                index.encoder = encoder
        return index

    def check_encoder(self, encoder) -> None:
        """Raise unless `encoder` (a `ClipEncoder` or a fingerprint string) is the index's.

        Raises:
            ValueError: naming the index and both encoders.
        """
        if not isinstance(encoder, str) and encoder in self._checked:
            return
        fp = encoder if isinstance(encoder, str) else encoder_fingerprint(encoder)
        mine = self.manifest["encoder"]
        if fp != mine["fingerprint"]:
            given = f"fingerprint {fp}" if isinstance(encoder, str) else f"{getattr(encoder, 'name', '?')!r} (fingerprint {fp})"
            raise ValueError(f"index {str(self.path)!r} was built with encoder {mine['name']!r} "
                             f"(fingerprint {mine['fingerprint']}), not with encoder {given}; "
                             f"search it with the encoder it was built with")
        if not isinstance(encoder, str):
            self._checked[encoder] = fp

    # -- contents

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Index({str(self.path)!r}, {len(self)} images, encoder={m['encoder']['name']!r}, "
                f"regions={m['regions']!r}, n={m['n']}, D={m['dim']}, shards={len(m['shards'])})")

    @property
    def root(self) -> Path:
        """The folder `paths` are relative to: the recorded one, or the same place relative to the index if that moved."""
        root = Path(self.manifest["root"])
        rel = self.manifest.get("root_from_index")
        if not root.exists() and rel is not None and (self.path / rel).exists():
            return (self.path / rel).resolve()
        return root

    @property
    def paths(self) -> tuple[str, ...]:
        """Image paths, one per row, as recorded (relative to `root` where the image lies under it)."""
        if self._paths is None or len(self._paths) != len(self.manifest["paths"]):
            self._paths = tuple(self.manifest["paths"])  # once: a service reads it per hit
        return self._paths

    @property
    def files(self) -> list[Path]:
        """Absolute image files, one per row."""
        root = self.root
        return [root / p for p in self.manifest["paths"]]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Images that were not indexed: {"path", "error"} each."""
        return [dict(s) for s in self.manifest["skipped"]]

    @property
    def gallery(self) -> GallerySide:
        """The `GallerySide` over the mapped tensors (one shard: zero-copy views; several: concatenated once).

        The first access checks every embeddings shard's checksum.

        Raises:
            StoreError: naming the shard whose embeddings are corrupt.
        """
        if self._gallery is None:
            for entry, t in zip(self.manifest["shards"], self._shards):
                self._verify_tensor(entry, t, "embeddings")
            cat = (lambda name: self._shards[0][name]) if len(self._shards) == 1 else (
                lambda name: torch.cat([s[name] for s in self._shards]))
            self._gallery = GallerySide(cat("embeddings"), parts=cat("parts"), parts_mask=cat("parts_mask"),
                                        part_boxes=cat("part_boxes"))
        return self._gallery

    def _verify_tensor(self, entry: dict, tensors: dict[str, Tensor], name: str) -> None:
        if _sha256(tensors[name]) != entry["sha256"][name]:
            raise StoreError(f"shard {str(self.path / entry['file'])!r} is corrupt: the checksum of its {name!r} "
                             f"does not match the manifest; rebuild the index (or restore the file)")

    def verify(self) -> None:
        """Full check: every tensor of every shard against its checksum (reads every byte).

        Raises:
            StoreError: naming the first corrupt shard file and tensor.
        """
        for entry, t in zip(self.manifest["shards"], self._shards):
            for name in TENSORS:
                self._verify_tensor(entry, t, name)

    # -- search

    def search(
        self,
        queries: Sequence[str] | QuerySide,
        config: HeadConfig | None = None,
        *,
        encoder=None,
        k: int = 10,
        head: GeoSteerHead | None = None,
        vocabulary: dict[str, str] | None = None,
    ) -> SearchResult:
        """Search the index: the cosine top-k and the head's re-ranked top-k per query.

        Runs exactly `GeoSteerHead(config.replace(k=K))(queries, index.gallery)`,
        K = min(max(config.k, k), len(index)), so small indexes work with any k.

        Args:
            queries: captions (encoded with `encoder`: `Indexer.encode_queries`;
                a caption `split_parts` finds no object in is its own single
                part), or a `QuerySide` (without relations: padded with one
                empty row, R = 0, since the index always holds region boxes).
            config: the head's config (default `get_config("default")`).
            encoder: the index's encoder, for captions (default: the one given to `open`).
            k: results per query (capped at the index size).
            head: a head built once by the caller (a service); then `config`
                must be None or its config, and its K must lie in [k, len(index)].
            vocabulary: concept -> nearest confuser for the per-part negatives.

        Returns:
            A `SearchResult`.

        Raises:
            TypeError / ValueError: naming the bad argument; ValueError when
                `encoder` is not the index's; StoreError on corrupt embeddings.
        """
        _check_int("k", k)
        num = len(self)
        if head is not None:
            if not isinstance(head, GeoSteerHead):
                raise TypeError(f"head must be a GeoSteerHead, got {type(head).__name__}")
            if config is not None and config != head.config:
                raise ValueError("config differs from head.config; pass one of them (or the head's own config)")
            if not k <= head.config.k <= num:
                raise ValueError(f"head has k={head.config.k}; it must lie in [k={k}, len(index)={num}]")
            cfg = head.config
        else:
            if config is not None and not isinstance(config, HeadConfig):
                raise TypeError(f"config must be a HeadConfig (geosteer.get_config(...)), got {type(config).__name__}")
            base = config if config is not None else get_config("default")
            cfg = base.replace(k=min(max(base.k, k), num))
            head = GeoSteerHead(cfg)
        texts, parts, q = self._queries(queries, encoder, vocabulary)
        result = head(q, self.gallery)
        return self._result(result, texts, parts, cfg, min(k, cfg.k))

    def _queries(self, queries, encoder, vocabulary) -> tuple[list[str] | None, list[list[str]], QuerySide]:
        if isinstance(queries, QuerySide):
            m = 0 if queries.parts is None else queries.parts.shape[1]
            if queries.parts is not None and queries.relations is None:
                # the index always has region boxes; with none, the structure term is simply 0 (as query_inputs pads)
                pad = torch.full((queries.embeddings.shape[0], 1, 3), -1, dtype=torch.long, device=queries.parts.device)
                queries = dataclasses.replace(queries, relations=pad)
            return None, [[f"part {j + 1}" for j in range(m)] for _ in range(queries.embeddings.shape[0])], queries
        if isinstance(queries, str) or not isinstance(queries, Sequence) or not all(isinstance(c, str) for c in queries):
            raise TypeError("queries must be a list of str (wrap a single caption in a list) or a QuerySide")
        if not queries:
            raise ValueError("queries must hold at least one caption")
        enc = encoder if encoder is not None else self.encoder
        if enc is None:
            raise ValueError("captions need the index's encoder: Index.open(path, encoder=...) or search(..., encoder=...)")
        self.check_encoder(enc)
        if self._indexer is None or self._indexer[0] is not enc or self._indexer[1].vocabulary != vocabulary:
            self._indexer = (enc, Indexer(enc, vocabulary=vocabulary))
        indexer = self._indexer[1]
        parts, relations = [], []
        for c in queries:
            if not c.strip():
                raise ValueError(f"queries must be non-empty captions, got {c!r}")
            try:
                p, r = split_parts(c)
            except ValueError:  # a caption naming no object ("at night") is matched as a whole
                p, r = [c.strip()], []
            parts.append(p)
            relations.append(r)
        q = query_inputs(indexer.encode_texts, list(queries), parts, relations, [[] for _ in queries], "parts", vocabulary)
        return list(queries), parts, q

    def _result(self, r: HeadResult, texts, parts: list[list[str]], cfg: HeadConfig, k: int) -> SearchResult:
        g = self.gallery
        paths = self.manifest["paths"]
        cosine, reranked = [], []
        for q in range(r.indices.shape[0]):
            by_cos = torch.sort(r.first_stage_scores[q], descending=True, stable=True).indices
            rank_before = torch.empty_like(by_cos)
            rank_before[by_cos] = torch.arange(1, by_cos.numel() + 1)
            m = len(parts[q])

            def ranking(order: Tensor, scores: Tensor, with_boxes: bool) -> Ranking:
                ids = r.indices[q, order].tolist()
                boxes = []
                for pos, i in zip(order.tolist(), ids):
                    row: list[tuple[float, float, float, float] | None] = []
                    for j in range(m):
                        c = int(r.assignment[q, pos, j]) if with_boxes and j < r.assignment.shape[-1] else -1
                        ok = c >= 0 and bool(g.parts_mask[i, c])
                        row.append(tuple(float(v) for v in g.part_boxes[i, c].tolist()) if ok else None)
                    boxes.append(row)
                return Ranking(ids, [paths[i] for i in ids], scores[order].tolist(),
                               r.first_stage_scores[q, order].tolist(), r.alignment[q, order].tolist(),
                               r.structure[q, order].tolist(), boxes, rank_before[order].tolist())

            cosine.append(ranking(by_cos[:k], r.first_stage_scores[q], False))
            reranked.append(ranking(torch.arange(k), r.scores[q], True))
        return SearchResult(texts, parts, cosine, reranked, r, cfg, k)

    # -- writing

    @classmethod
    def build(
        cls,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        out: str | os.PathLike,
        encoder,
        regions: str = "grid",
        max_regions: int = 16,
        batch_size: int = 64,
        shard_size: int = 1024,
        progress: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> Index:
        """Index a folder (recursively) or a list of image files into `out`; resume an interrupted build there.

        Args:
            source: a folder, or a list of image files.
            out: the index folder (created; may exist empty, or hold an
                unfinished build of the same arguments, which is resumed).
            encoder: a `ClipEncoder` (`load_clip(...)`).
            regions: region method, a key of `geosteer.encoders.regions.METHODS`.
            max_regions: regions per image at most.
            batch_size: images decoded and encoded together.
            shard_size: images per shard: what an interruption loses at most.
            progress: a tqdm bar (images/s, skipped) on stderr.
            metadata: JSON-able notes kept in the manifest (the CLI keeps the model and pretrained tag).

        Returns:
            The opened `Index` (its `encoder` set, `stats` filled).

        Raises:
            FileNotFoundError / TypeError / ValueError: a bad argument, an
                empty source, an `out` holding something else, or a finished
                index / unfinished build made with other arguments.
            StoreError: no image of the source could be decoded.
        """
        check_method(regions)
        _check_int("max_regions", max_regions)
        _check_int("batch_size", batch_size)
        _check_int("shard_size", shard_size)
        if metadata is not None:
            json.dumps(metadata)  # fail now, not after hours of encoding
        root, files = _collect(source)
        folder = Path(out).expanduser()
        state = index_state(folder)
        if state == "other":
            raise ValueError(f"out {str(folder)!r} exists and is not an index; pass a new or empty folder")
        plan = [_record(f, root) for f in files]
        info = _encoder_info(encoder)
        settings = {"encoder": info, "regions": regions, "max_regions": max_regions, "batch_size": batch_size,
                    "shard_size": shard_size, "root": str(root)}
        if state == "complete":
            return cls._already_built(folder, settings, plan, encoder)
        t0 = time.perf_counter()
        if state == "partial":
            prog = _read_json(folder / PROGRESS, "build progress file")
            _check_same(prog, settings, plan, folder)
        else:
            ranges = [[s, min(s + shard_size, len(plan))] for s in range(0, len(plan), shard_size)]
            prog = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **settings, "plan": plan, "ranges": ranges,
                    "shards": [], "metadata": metadata or {}}
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(folder / PROGRESS, prog)  # first: from here on the folder reads as an unfinished build
        (folder / SHARD_DIR).mkdir(exist_ok=True)
        prog["shards"] = [s for s in prog["shards"] if _shard_intact(folder, s)]
        _remove_strays(folder, {s["file"] for s in prog["shards"] if s["file"]})
        n = _region_capacity(regions, max_regions)
        resumed = len(prog["shards"])
        indexer = Indexer(encoder, max_regions=max_regions, batch_size=batch_size)
        encoded, skipped = _run_shards(folder, prog, files, indexer, n, info["embed_dim"], progress,
                                       lambda: _write_json(folder / PROGRESS, prog))
        entries = [s for s in prog["shards"] if s["count"] > 0]
        if not entries:
            errors = [f"{s['path']}: {s['error']}" for sh in prog["shards"] for s in sh["skipped"]][:3]
            raise StoreError(f"no image in {str(source)!r} could be indexed; e.g. {'; '.join(errors)}")
        if len(entries) > 1:  # one file per tensor: Index.open then maps each whole, zero-copy
            entries = [_merge(folder, entries, max(_seq(s["file"]) for s in entries) + 1, n, info["embed_dim"])]
        manifest = _manifest(prog, info, n, entries,
                             paths=[prog["plan"][i] for sh in prog["shards"] for i in sh["kept"]],
                             skipped=[s for sh in prog["shards"] for s in sh["skipped"]], folder=folder)
        _write_json(folder / MANIFEST, manifest)  # the index exists from here on
        _remove_strays(folder, {e["file"] for e in entries})
        (folder / PROGRESS).unlink(missing_ok=True)
        index = cls.open(folder)
        index.encoder = encoder
        index._checked[encoder] = info["fingerprint"]  # just computed: no second pass over the weights
        seconds = time.perf_counter() - t0
        index.stats = {"encoded": encoded, "skipped": skipped, "seconds": seconds,
                       "images_per_s": (encoded + skipped) / seconds if seconds > 0 else 0.0, "resumed_shards": resumed}
        return index

    @classmethod
    def _already_built(cls, folder: Path, settings: dict, plan: list[str], encoder) -> Index:
        index = cls.open(folder, encoder=encoder)
        m = index.manifest
        for key in ("regions", "max_regions"):
            if m[key] != settings[key]:
                raise ValueError(f"out {str(folder)!r} holds an index with {key}={m[key]!r}, not {settings[key]!r}")
        known = set(m["paths"]) | {s["path"] for s in m["skipped"]}
        new = [p for p in plan if p not in known and _record(Path(settings["root"]) / p, Path(m["root"])) not in known]
        if new:
            raise ValueError(f"out {str(folder)!r} already holds a finished index, without {len(new)} of the source's "
                             f"images (e.g. {new[0]!r}); add them with Index.open(out).add(source, encoder)")
        index.stats = {"encoded": 0, "skipped": 0, "seconds": 0.0, "images_per_s": 0.0,
                       "resumed_shards": len(m["shards"])}
        return index

    def add(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        encoder,
        regions: str | None = None,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> Index:
        """Append the images of `source` not in the index yet, as new shards; then rewrite the manifest.

        Images already indexed are left out; images skipped before are
        tried again. An interrupted `add` leaves the index as it was (the
        manifest is written last). Several shards are concatenated on the
        next `gallery` access; `compact()` merges them back into one.

        Args:
            source: a folder (recursive) or a list of image files.
            encoder: the index's encoder.
            regions: if given, must be the index's region method.
            batch_size: images encoded together (default: the build's).
            progress: a tqdm bar.

        Returns:
            self, updated in place (`stats` filled).

        Raises:
            ValueError: another encoder or region method (naming both), bad arguments.
        """
        m = self.manifest
        if regions is not None and check_method(regions) and regions != m["regions"]:
            raise ValueError(f"regions={regions!r} differs from the index's region method {m['regions']!r} "
                             f"({str(self.path)!r}); an index holds one method")
        self.check_encoder(encoder)
        batch = _check_int("batch_size", batch_size) if batch_size is not None else (m["build"]["batch_size"] or 64)
        _, files = _collect(source)
        root = Path(m["root"])
        indexed = set(m["paths"])
        new = [f for f in files if _record(f, root) not in indexed and _record(f, self.root) not in indexed]
        t0 = time.perf_counter()
        if not new:
            self.stats = {"encoded": 0, "skipped": 0, "seconds": 0.0, "images_per_s": 0.0, "resumed_shards": 0}
            return self
        _remove_strays(self.path, {s["file"] for s in m["shards"]})
        plan = [_record(f, root) for f in new]
        shard_size = m["build"]["shard_size"]
        seq = max(_seq(s["file"]) for s in m["shards"]) + 1
        prog = {"plan": plan, "ranges": [[s, min(s + shard_size, len(plan))] for s in range(0, len(plan), shard_size)],
                "shards": [], "max_regions": m["max_regions"], "regions": m["regions"], "next_seq": seq}
        indexer = Indexer(encoder, max_regions=m["max_regions"], batch_size=batch)
        encoded, skipped = _run_shards(self.path, prog, new, indexer, m["n"], m["dim"], progress, lambda: None)
        entries = [s for s in prog["shards"] if s["count"] > 0]
        retried = set(plan)
        manifest = dict(m)
        manifest["shards"] = m["shards"] + [{k: e[k] for k in ("file", "count", "bytes", "sha256")} for e in entries]
        manifest["paths"] = m["paths"] + [plan[i] for sh in prog["shards"] for i in sh["kept"]]
        manifest["skipped"] = [s for s in m["skipped"] if s["path"] not in retried] + [
            s for sh in prog["shards"] for s in sh["skipped"]]
        manifest["count"] = len(manifest["paths"])
        manifest["skipped_count"] = len(manifest["skipped"])
        _write_json(self.path / MANIFEST, manifest)
        self._reload(manifest)
        seconds = time.perf_counter() - t0
        self.stats = {"encoded": encoded, "skipped": skipped, "seconds": seconds,
                      "images_per_s": (encoded + skipped) / seconds if seconds > 0 else 0.0, "resumed_shards": 0}
        return self

    def compact(self) -> Index:
        """Merge every shard into one (a streamed copy), so `gallery` is zero-copy again; self, updated.

        Crash-safe: the merged shard gets a new name and the manifest is
        replaced last; the old shards are removed after.
        """
        m = self.manifest
        if len(m["shards"]) <= 1:
            return self
        entry = _merge(self.path, m["shards"], max(_seq(s["file"]) for s in m["shards"]) + 1, m["n"], m["dim"])
        manifest = {**m, "shards": [entry]}
        _write_json(self.path / MANIFEST, manifest)
        self._reload(manifest)
        _remove_strays(self.path, {entry["file"]})
        return self

    def _reload(self, manifest: dict) -> None:
        self.manifest = manifest
        self._shards = [_map_shard(self.path / s["file"], s["count"], manifest["n"], manifest["dim"])
                        for s in manifest["shards"]]
        self._gallery = None
        self._paths = None


# ---------------------------------------------------------------- build helpers


def _seq(name: str) -> int:
    return int(Path(name).stem.rsplit("-", 1)[1])


def _remove_strays(folder: Path, keep: set[str]) -> None:
    """Delete shard and temp files no manifest / progress file refers to (left by an interrupted write)."""
    shard_dir = folder / SHARD_DIR
    if shard_dir.is_dir():
        for p in shard_dir.iterdir():
            if p.name.startswith("shard-") and f"{SHARD_DIR}/{p.name}" not in keep:
                p.unlink(missing_ok=True)
    for p in folder.glob("*.tmp-*"):
        p.unlink(missing_ok=True)


def _shard_intact(folder: Path, entry: dict) -> bool:
    """A finished shard of an unfinished build is kept if its file is there at the size its header says."""
    if entry["file"] is None:
        return True
    try:
        _read_header(folder / entry["file"])
    except StoreError:  # deleted or damaged since: encode that range again
        return False
    return True


def _check_same(prog: dict, settings: dict, plan: list[str], folder: Path) -> None:
    """An unfinished build resumes only with the arguments it started with (else the tensors would differ)."""
    if prog.get("version") != FORMAT_VERSION:
        raise StoreError(f"build progress file {str(folder / PROGRESS)!r} is of format version "
                         f"{prog.get('version')!r}, not {FORMAT_VERSION}; delete {str(folder)!r} and build again")
    if prog["encoder"]["fingerprint"] != settings["encoder"]["fingerprint"]:
        raise ValueError(f"out {str(folder)!r} holds an unfinished build with encoder {prog['encoder']['name']!r} "
                         f"(fingerprint {prog['encoder']['fingerprint']}), not {settings['encoder']['name']!r} "
                         f"(fingerprint {settings['encoder']['fingerprint']}); resume it with that encoder or delete it")
    for key in ("regions", "max_regions", "batch_size", "shard_size", "root"):
        if prog[key] != settings[key]:
            raise ValueError(f"out {str(folder)!r} holds an unfinished build with {key}={prog[key]!r}, not "
                             f"{settings[key]!r}; resume it with the same arguments or delete it")
    if prog["plan"] != plan:
        added, gone = len(set(plan) - set(prog["plan"])), len(set(prog["plan"]) - set(plan))
        raise ValueError(f"the source changed since the unfinished build in {str(folder)!r} started ({added} images "
                         f"new, {gone} gone); restore it, or delete {str(folder)!r} and build again")


def _run_shards(folder: Path, prog: dict, files: list[Path], indexer: Indexer, n: int, dim: int,
                progress: bool, save) -> tuple[int, int]:
    """Encode and write every range of `prog` not finished yet, recording each in `prog` (then `save()`).

    Returns:
        (images encoded, images skipped) by this call.
    """
    done = {tuple(s["range"]) for s in prog["shards"]}
    todo = [r for r in prog["ranges"] if tuple(r) not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done_images = sum(b - a for a, b in done)
        bar = tqdm(total=len(prog["plan"]), initial=done_images, desc="indexing", unit="img", dynamic_ncols=True)
        bar.skipped = sum(len(s["skipped"]) for s in prog["shards"])
    seq = prog.get("next_seq", 0)
    encoded = skipped = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            for a, b in todo:
                enc = _encode_shard(indexer, files[a:b], prog["regions"], prog["max_regions"], n, indexer.batch_size,
                                    bar, pool)
                entry: dict[str, Any] = {"range": [a, b], "count": len(enc.kept), "kept": [a + i for i in enc.kept],
                                         "skipped": [{"path": prog["plan"][a + i], "error": e} for i, e in enc.skipped]}
                # each range has its own file name, so a resumed build writes the same names
                entry["file"] = _shard_name(seq + prog["ranges"].index([a, b])) if enc.kept else None
                if enc.kept:
                    entry.update(_write_safetensors(folder / entry["file"], _shard_tensors(enc, n, dim)))
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


def _manifest(settings: dict, info: dict, n: int, entries: list[dict], paths: list[str], skipped: list[dict],
              folder: Path) -> dict:
    from geosteer import __version__

    root = Path(settings["root"])
    try:
        root_from_index = os.path.relpath(root, folder.resolve())
    except ValueError:  # another drive
        root_from_index = None
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "geosteer_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "encoder": info,
        "regions": settings["regions"],
        "max_regions": settings["max_regions"],
        "dim": info["embed_dim"],
        "n": n,
        "dtype": "float32",
        "count": len(paths),
        "skipped_count": len(skipped),
        "root": str(root),
        "root_from_index": root_from_index,
        "paths": paths,
        "skipped": skipped,
        "shards": [{k: e[k] for k in ("file", "count", "bytes", "sha256")} for e in entries],
        "build": {"batch_size": settings.get("batch_size"), "shard_size": settings.get("shard_size")},
        "metadata": settings.get("metadata", {}),
    }


_MANIFEST_KEYS = ("encoder", "regions", "max_regions", "dim", "n", "count", "root", "paths", "skipped", "shards", "build")


def _check_manifest(m: dict, path: Path) -> None:
    if m.get("format") != FORMAT_NAME:
        raise StoreError(f"manifest {str(path)!r} is not a geosteer index manifest (format {m.get('format')!r})")
    if m.get("version") != FORMAT_VERSION:
        raise StoreError(f"manifest {str(path)!r} is of format version {m.get('version')!r}; this geosteer reads "
                         f"version {FORMAT_VERSION} only: rebuild the index")
    missing = [k for k in _MANIFEST_KEYS if k not in m]
    if missing:
        raise StoreError(f"manifest {str(path)!r} lacks {', '.join(missing)}")
    if sum(s["count"] for s in m["shards"]) != m["count"] or len(m["paths"]) != m["count"]:
        raise StoreError(f"manifest {str(path)!r}: its shards hold {sum(s['count'] for s in m['shards'])} rows, "
                         f"its paths {len(m['paths'])}, its count says {m['count']}")


def write_index(
    gallery: GallerySide,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    encoder,
    regions: str = "grid",
    max_regions: int | None = None,
    shard_size: int | None = None,
    root: str | os.PathLike | None = None,
    skipped: Sequence[dict[str, str]] = (),
    metadata: dict[str, Any] | None = None,
) -> Index:
    """Write a `GallerySide` you already have (one row per path) as an index folder.

    Args:
        gallery: embeddings `[N, D]` float32, parts `[N, n, D]` float32,
            parts_mask `[N, n]` bool, part_boxes `[N, n, 4]`.
        paths: N image paths (recorded relative to `root` where they lie under it).
        out: a new or empty folder.
        encoder: a `ClipEncoder`, or (name, fingerprint) of the encoder that made `gallery`.
        regions: the region method that made the parts.
        max_regions: recorded cap (default n).
        shard_size: rows per shard (default: all in one).
        root: what paths are relative to (default: their common folder).
        skipped: {"path", "error"} entries to record.
        metadata: JSON-able notes kept in the manifest.

    Returns:
        The opened `Index`.

    Raises:
        TypeError / ValueError: naming the bad argument.
    """
    check_method(regions)
    if not isinstance(gallery, GallerySide) or gallery.parts is None or gallery.parts_mask is None or gallery.part_boxes is None:
        raise TypeError("gallery must be a GallerySide with parts, parts_mask and part_boxes")
    emb, parts = gallery.embeddings, gallery.parts
    if emb.dtype != torch.float32 or parts.dtype != torch.float32:
        raise TypeError(f"gallery embeddings and parts must be float32, got {emb.dtype} and {parts.dtype}")
    if emb.ndim != 2 or parts.ndim != 3 or parts.shape[0] != emb.shape[0] or parts.shape[2] != emb.shape[1]:
        raise ValueError(f"gallery has embeddings {list(emb.shape)} and parts {list(parts.shape)}; expected [N, D] and [N, n, D]")
    num, n, dim = parts.shape
    if list(gallery.parts_mask.shape) != [num, n] or gallery.parts_mask.dtype != torch.bool:
        raise ValueError(f"gallery parts_mask must be bool [{num}, {n}], got {gallery.parts_mask.dtype} {list(gallery.parts_mask.shape)}")
    if list(gallery.part_boxes.shape) != [num, n, 4]:
        raise ValueError(f"gallery part_boxes must be [{num}, {n}, 4], got {list(gallery.part_boxes.shape)}")
    if len(paths) != num:
        raise ValueError(f"paths holds {len(paths)} entries but gallery has N={num} rows")
    if num == 0:
        raise ValueError("gallery must hold at least one row")
    shard = _check_int("shard_size", shard_size) if shard_size is not None else num
    if isinstance(encoder, tuple):
        name, fp = encoder
        info = {"name": str(name), "fingerprint": str(fp), "embed_dim": dim, "image_size": None}
    else:
        info = _encoder_info(encoder)
    if info["embed_dim"] != dim:
        raise ValueError(f"encoder has D={info['embed_dim']} but gallery has D={dim}")
    folder = Path(out).expanduser()
    if index_state(folder) not in ("missing", "empty"):
        raise ValueError(f"out {str(folder)!r} exists and is not empty; pass a new or empty folder")
    files = [Path(p).expanduser().absolute() for p in paths]
    base = Path(root).expanduser().absolute() if root is not None else Path(os.path.commonpath([str(f.parent) for f in files]))
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    entries = []
    for k, a in enumerate(range(0, num, shard)):
        b = min(a + shard, num)
        name = _shard_name(k)
        entries.append({"file": name, "count": b - a, **_write_safetensors(folder / name, _gallery_tensors(gallery, a, b))})
    settings = {"regions": regions, "max_regions": max_regions or n, "root": str(base), "batch_size": None,
                "shard_size": shard, "metadata": metadata or {}}
    manifest = _manifest(settings, info, n, entries, [_record(f, base) for f in files], [dict(s) for s in skipped], folder)
    _write_json(folder / MANIFEST, manifest)
    return Index.open(folder, encoder=None if isinstance(encoder, tuple) else encoder)
