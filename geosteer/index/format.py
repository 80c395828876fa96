"""The on-disk index format: the only code that writes an index folder's files, and geosteer.index's one reader of them.

Outside `geosteer.index`, `manifest.json` (or an unfinished build's
`build.json`) is read as JSON only before an index is opened: by
`geosteer search` (the recorded model, checked before anything loads) and
by the sharded gallery's shard check
(`geosteer.distributed.shard.manifest_summary`); `geosteer index` reads it
through `read_index_json` (checked field by field). DESIGN §6.

    INDEX/manifest.json              format version, the encoder (name, pretrained, fingerprint: how
                                     to load it again), region method, max_regions, D, n, counts,
                                     image paths and (width, height), each image file's record
                                     [bytes, mtime_ns, blake2b] as indexed, skipped images,
                                     per-shard file / count / bytes / sha256
    INDEX/build.json                 while a build runs: its plan and finished shards (no manifest yet)
    INDEX/sync.json                  while a sync / add encodes: its plan and finished shards (the
                                     manifest still describes the index as it was)
    INDEX/shards/shard-00012.safetensors   embeddings [c, D] float32, parts [c, n, D] float32,
                                     part_boxes [c, n, 4] float32, parts_mask [c, n] bool;
                                     with regions_dtype int8: parts [c, n, D] int8 and
                                     parts_scale [c, n] float32; float16: parts [c, n, D] float16

Every file is written atomically (temp file, fsync, `os.replace`, fsync of
the folder). Shards are safetensors files whose header is padded to 64
bytes, so each tensor stays 4-byte aligned when the file is memory-mapped.
Format version 2 added the images' sizes and the encoder's pretrained tag;
a version 1 index is refused with a message to rebuild it. Version 3 added
the per-image file records ("files"), so a sync can tell a changed or
deleted image; version 2 indexes open (their rows' records unknown, null)
and are written as version 3 by the next add / sync / remove. A manifest (on
open) and a build.json (on resume) are checked field by field: a file of
the wrong structure is one `StoreError` naming the file and the field.

The region vectors may be stored compact (issue 23, DESIGN §5): the
manifest's "regions_dtype" is "float32" (absent in older indexes: float32),
"float16", or "int8" with a float32 scale per row (`geosteer.quantize`).
The embeddings stay float32 (the first stage reads them all).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import mmap
import os
import re
import stat
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from geosteer.index.indexer import encoder_fingerprint
from geosteer.quantize import compact_parts

#: The format this module writes (3: each image file's record [bytes, mtime_ns, blake2b] as indexed).
FORMAT_VERSION = 3
#: The formats it opens (2: sizes and the encoder's pretrained tag recorded; its file records are unknown).
READ_VERSIONS: tuple[int, ...] = (2, 3)
FORMAT_NAME = "geosteer-index"
MANIFEST = "manifest.json"
PROGRESS = "build.json"
SYNC = "sync.json"
SHARD_DIR = "shards"
#: The optional FAISS first stage beside the shards (`Index.build_first_stage`) and its record.
FIRST_STAGE = "first_stage.faiss"
FIRST_STAGE_INFO = "first_stage.json"
#: The tensors of a shard, in file order: the 4-byte dtypes first, so each
#: stays 4-byte aligned in the mapped file (the header is padded to 64).
TENSORS: tuple[str, ...] = ("embeddings", "parts", "part_boxes", "parts_mask")
#: How region vectors may be stored: float32, float16, or int8 with a float32 scale per row.
REGIONS_DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
#: A shard's tensors as numpy chunks: name -> (shape, dtype, chunks concatenated along dim 0).
ShardTensors = dict[str, tuple[tuple[int, ...], np.dtype, Sequence[np.ndarray]]]
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "BOOL": np.bool_}
_NP_TO_ST = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_HEADER_ALIGN = 64
_MAX_HEADER = 1 << 24  # a shard header is a few hundred bytes; more is not one of ours
_SHARD_FILE = re.compile(r"shards/shard-\d{5,}\.safetensors")  # what shard_name writes: never a path out of the folder
_HEX64 = re.compile(r"[0-9a-f]{64}")


class StoreError(ValueError):
    """A folder that is not a readable index: wrong format, unfinished build, truncated or corrupt shard."""


def check_regions_dtype(regions_dtype: str) -> str:
    """`regions_dtype` if it is one of `REGIONS_DTYPES`.

    Raises:
        ValueError: naming the allowed values.
    """
    if regions_dtype not in REGIONS_DTYPES:
        raise ValueError(f"regions_dtype must be one of {', '.join(REGIONS_DTYPES)}, got {regions_dtype!r}")
    return regions_dtype


def regions_dtype_of(record: dict) -> str:
    """The region dtype a manifest / progress file records (absent, as in indexes before issue 23: float32)."""
    return record.get("regions_dtype", "float32")


def tensor_names(regions_dtype: str) -> tuple[str, ...]:
    """A shard's tensors, in file order, for `regions_dtype`: the 4-byte ones first, so each stays
    4-byte aligned when the file is mapped (int8 / float16 parts and the bool mask come after)."""
    if regions_dtype == "float32":
        return TENSORS
    if regions_dtype == "int8":
        return ("embeddings", "part_boxes", "parts_scale", "parts", "parts_mask")
    return ("embeddings", "part_boxes", "parts", "parts_mask")


def tensor_specs(regions_dtype: str, count: int, n: int, dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, numpy dtype) of a shard of `count` rows, in file order (`tensor_names`)."""
    parts_dt = {"float32": np.float32, "float16": np.float16, "int8": np.int8}[regions_dtype]
    specs = {"embeddings": ((count, dim), np.float32), "parts": ((count, n, dim), parts_dt),
             "part_boxes": ((count, n, 4), np.float32), "parts_scale": ((count, n), np.float32),
             "parts_mask": ((count, n), np.bool_)}
    return {name: (specs[name][0], np.dtype(specs[name][1])) for name in tensor_names(regions_dtype)}


def compact_rows(parts: np.ndarray, regions_dtype: str) -> dict[str, np.ndarray]:
    """Float32 region rows `[c, n, D]` as stored for `regions_dtype`: {"parts"} (+ {"parts_scale"} `[c, n]` for int8).

    Made with `geosteer.quantize.compact_parts`, the head's own quantiser;
    padding rows (zeros) get scale 0.
    """
    if regions_dtype == "float32":
        return {"parts": np.ascontiguousarray(parts, dtype=np.float32)}
    q, scale = compact_parts(torch.from_numpy(np.ascontiguousarray(parts, dtype=np.float32)),
                             torch.int8 if regions_dtype == "int8" else torch.float16)
    out = {"parts": q.contiguous().numpy()}
    if scale is not None:
        out["parts_scale"] = scale.contiguous().numpy()
    return out


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


def atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
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


def write_json(path: Path, obj: dict) -> None:
    """`obj` as indented JSON at `path`, atomically."""
    atomic_write(path, [(json.dumps(obj, indent=1) + "\n").encode()])


def read_json(path: Path, what: str) -> dict:
    """The JSON object at `path`.

    Raises:
        StoreError: naming `what` and the file, when it cannot be read or is not an object.
    """
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{what} {str(path)!r} cannot be read: {e}") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{what} {str(path)!r} is not a JSON object")
    return obj


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


# ---------------------------------------------------------------- shards


def shard_name(seq: int) -> str:
    """The manifest's name of shard number `seq`: "shards/shard-00012.safetensors"."""
    return f"{SHARD_DIR}/shard-{seq:05d}.safetensors"


def shard_seq(name: str) -> int:
    """The number of a shard file name (`shard_name`'s inverse)."""
    return int(Path(name).stem.rsplit("-", 1)[1])


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a)).cast("B")


def write_safetensors(path: Path, tensors: ShardTensors) -> dict:
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

    size = atomic_write(path, chunks_of())
    return {"bytes": size, "sha256": {name: d.hexdigest() for name, d in digests.items()}}


def write_safetensors_rows(path: Path, specs: dict[str, tuple[tuple[int, ...], np.dtype]],
                           rows: Iterable[dict[str, np.ndarray]]) -> dict:
    """Stream rows into one safetensors file, atomically, hashing each tensor on the way.

    Unlike `write_safetensors`, the rows arrive as blocks holding every
    tensor (`{name: [c, ...]}`, c rows of each), so a shard of a million
    rows is written from blocks made one at a time and never held whole:
    each block's slice of each tensor goes to its offset in the file.

    Args:
        path: the file.
        specs: name -> (shape, dtype), in file order (`tensor_specs`).
        rows: blocks of rows in order; together exactly `shape[0]` rows of each tensor.

    Returns:
        {"bytes": file size, "sha256": {name: hex digest of its raw bytes}}.

    Raises:
        ValueError: a block of the wrong dtype / row shape, or rows that do not add up.
    """
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT_NAME, "version": str(FORMAT_VERSION)}}
    start, offsets = 0, {}
    for name, (shape, dtype) in specs.items():
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NP_TO_ST[np.dtype(dtype)], "shape": list(shape), "data_offsets": [start, start + nbytes]}
        offsets[name] = start
        start += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % _HEADER_ALIGN)
    base = 8 + len(raw)
    digests = {name: hashlib.sha256() for name in specs}
    written = dict.fromkeys(specs, 0)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(base + start)
            fd = f.fileno()
            for block in rows:
                for name, (shape, dtype) in specs.items():
                    a = block[name]
                    if a.dtype != dtype or tuple(a.shape[1:]) != tuple(shape[1:]):
                        raise ValueError(f"tensor {name!r}: a block of {a.dtype} {list(a.shape)}, not {dtype} [c, "
                                         f"{', '.join(map(str, shape[1:]))}]")
                    if a.size == 0:  # a block of no rows (memoryview cannot cast an empty shape)
                        continue
                    b = _bytes(a)
                    if written[name] + len(b) > header[name]["data_offsets"][1] - offsets[name]:
                        raise ValueError(f"tensor {name!r}: blocks hold more than its {shape[0]} rows")
                    pos = base + offsets[name] + written[name]
                    done = 0
                    while done < len(b):  # pwrite may write less than asked
                        done += os.pwrite(fd, b[done:], pos + done)
                    digests[name].update(b)
                    written[name] += len(b)
            for name in specs:
                if written[name] != header[name]["data_offsets"][1] - offsets[name]:
                    raise ValueError(f"tensor {name!r}: blocks hold {written[name]} bytes, not {list(specs[name][0])}")
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return {"bytes": base + start, "sha256": {name: d.hexdigest() for name, d in digests.items()}}


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a FIFO", "a directory", ...): never opened, since opening
    a FIFO blocks until a writer comes and a device can stream forever."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def read_header(path: Path) -> tuple[dict, int, int]:
    """(header, byte offset of the data, file size) of a safetensors file.

    Raises:
        StoreError: naming the file, when it is missing, not a regular file
            (never opened), not safetensors, or its size is not what its
            header says (truncated or extended).
    """
    try:
        st = path.stat()
        if (kind := file_kind(st.st_mode)) is not None:
            raise StoreError(f"shard {str(path)!r} is not a regular file ({kind})")
        size = st.st_size
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


# MAP_NORESERVE (Linux's value where Python's mmap module does not name it): see `map_private`.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


#: Tensors read a row at a time, by candidate: no read-around when a page of them is missed (see `map_private`).
RANDOM_ACCESS = ("parts", "parts_scale")


def map_private(path: Path, size: int, random: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """The first `size` bytes of the file at `path` as a uint8 array over a private, copy-on-write memory map.

    Nothing is read until used, and a write changes this process's pages,
    never the file. MAP_NORESERVE: a private writable map is otherwise
    charged in full against the kernel's commit limit (on this 24 GiB
    machine without swap, 11.8 GiB), so a shard larger than that (a million
    images with float32 regions: 35 GB) could not be opened at all
    (`ENOMEM`) although its pages are only ever read.

    `random`: byte ranges `[begin, end)` read a row at a time (the region
    rows of the candidates), advised `MADV_RANDOM`: a missed page reads
    that page, not the read-around of the device's readahead (8 MiB on this
    machine's disk). 100 random 32 KiB rows of a 35 GB shard not in the
    page cache: 317 ms with the read-around, 40 ms without, 2.6 ms with
    `prefetch_rows` first.
    """
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if hasattr(mmap, "MADV_RANDOM"):
        for begin, end in random:
            start = begin // mmap.PAGESIZE * mmap.PAGESIZE
            if end > start:
                mm.madvise(mmap.MADV_RANDOM, start, min(end, size) - start)
    return np.frombuffer(mm, dtype=np.uint8)


class RowSpan(NamedTuple):
    """Where a tensor's rows lie in a shard file."""

    offset: int  # file offset of row 0
    row_bytes: int
    rows: int

    @property
    def end(self) -> int:
        """The file offset just past the last row."""
        return self.offset + self.row_bytes * self.rows


def row_spans(header: dict, data_start: int, names: Sequence[str] = RANDOM_ACCESS) -> dict[str, RowSpan]:
    """Where the rows of tensors `names` lie in a shard file: name -> `RowSpan`.

    From the header `read_header` gives; tensors the header lacks or gives
    no rows for are left out.
    """
    out = {}
    for name in names:
        spec = header.get(name)
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)
                and isinstance(shape, list) and shape and type(shape[0]) is int and shape[0] > 0):
            continue  # not ours: `_mapped` names what is wrong with it
        out[name] = RowSpan(data_start + offsets[0], (offsets[1] - offsets[0]) // shape[0], shape[0])
    return out


def prefetch_rows(path: Path, spans: dict[str, RowSpan], rows: Iterable[int]) -> None:
    """Ask the OS to read rows `rows` of the tensors in `spans` (`row_spans`) into its page cache, without waiting.

    `posix_fadvise(POSIX_FADV_WILLNEED)` per row: the reads of all rows go
    out at once, so the head's first touch of each finds it in memory; a
    no-op where the platform has no `posix_fadvise`.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        for r in rows:
            for span in spans.values():
                advise(fd, span.offset + r * span.row_bytes, span.row_bytes, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def map_shard(path: Path, count: int, n: int, dim: int, regions_dtype: str = "float32") -> dict[str, Tensor]:
    """Memory-map one shard's tensors (copy-on-write pages: nothing is read until used).

    Returns:
        name -> tensor: embeddings `[count, dim]`, parts `[count, n, dim]`
        (float32, float16 or int8 as `regions_dtype`), parts_scale
        `[count, n]` float32 (int8 only), part_boxes `[count, n, 4]`
        float32, parts_mask `[count, n]` bool.

    Raises:
        StoreError: naming the file, when its header does not match the
            manifest (tensors, dtypes, shapes) or its size is wrong.
    """
    header, data_start, size = read_header(path)
    expected = {name: (_NP_TO_ST[dt], list(shape)) for name, (shape, dt) in tensor_specs(regions_dtype, count, n, dim).items()}
    spans = row_spans(header, data_start).values()
    mm = map_private(path, size, [(span.offset, span.end) for span in spans]) if size else None
    out = {}
    with torch.inference_mode(False):  # normal tensors even under inference mode: the head's check cache needs versions
        for name, (dtype, shape) in expected.items():
            out[name] = _mapped(path, header, data_start, mm, name, dtype, shape)
    return out


def _mapped(path: Path, header: dict, data_start: int, mm, name: str, dtype: str, shape: list[int]) -> Tensor:
    """One tensor of a shard as a view of its memory map, after checking its header entry."""
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
    return torch.from_numpy(arr)


def tensor_sha256(t: Tensor) -> str:
    """Hex sha256 of a CPU tensor's raw bytes (hashing a view, 64 MiB at a time, never a copy)."""
    h = hashlib.sha256()
    mv = memoryview(t.numpy()).cast("B")
    step = 1 << 26
    for i in range(0, len(mv), step):
        h.update(mv[i : i + step])
    return h.hexdigest()


def check_shard(folder: Path, entry: dict, tensors: dict[str, Tensor], name: str) -> None:
    """Raise unless tensor `name` of the mapped shard `entry` hashes to the manifest's checksum.

    Raises:
        StoreError: naming the shard file and the tensor.
    """
    if tensor_sha256(tensors[name]) != entry["sha256"][name]:
        raise StoreError(f"shard {str(folder / entry['file'])!r} is corrupt: the checksum of its {name!r} "
                         f"does not match the manifest; rebuild the index (or restore the file)")


def merge_shards(folder: Path, shards: list[dict], seq: int, n: int, dim: int, regions_dtype: str = "float32") -> dict:
    """One shard holding `shards` in order (a streamed copy from the mapped files); its manifest entry."""
    maps = [map_shard(folder / s["file"], s["count"], n, dim, regions_dtype) for s in shards]
    total = sum(s["count"] for s in shards)
    specs = tensor_specs(regions_dtype, total, n, dim)
    tensors = {name: (shape, dt, [m[name].numpy() for m in maps]) for name, (shape, dt) in specs.items()}
    name = shard_name(seq)
    return {"file": name, "count": total, **write_safetensors(folder / name, tensors)}


def filter_shard(folder: Path, entry: dict, keep: Sequence[bool], seq: int, n: int, dim: int,
                 regions_dtype: str = "float32") -> dict:
    """A new shard `seq` holding the rows of shard `entry` where `keep` is True; its manifest entry.

    A streamed copy of the kept runs of rows straight from the mapped file
    (no row is held in memory twice), written atomically under a new name:
    the old shard stays valid until a new manifest stops naming it.
    """
    t = map_shard(folder / entry["file"], entry["count"], n, dim, regions_dtype)
    runs, start = [], None
    for i, k in enumerate(list(keep) + [False]):
        if k and start is None:
            start = i
        elif not k and start is not None:
            runs.append((start, i))
            start = None
    total = sum(b - a for a, b in runs)
    specs = tensor_specs(regions_dtype, total, n, dim)
    tensors = {name: (shape, dt, [t[name].numpy()[a:b] for a, b in runs]) for name, (shape, dt) in specs.items()}
    name = shard_name(seq)
    return {"file": name, "count": total, **write_safetensors(folder / name, tensors)}


def shard_intact(folder: Path, entry: dict) -> bool:
    """A finished shard of an unfinished build is kept if its file is there at the size its header says."""
    if entry["file"] is None:
        return True
    try:
        read_header(folder / entry["file"])
    except StoreError:  # deleted or damaged since: encode that range again
        return False
    return True


def remove_strays(folder: Path, keep: set[str]) -> None:
    """Delete shard and temp files no manifest / progress file refers to (left by an interrupted write)."""
    shard_dir = folder / SHARD_DIR
    if shard_dir.is_dir():
        for p in shard_dir.iterdir():
            if p.name.startswith("shard-") and f"{SHARD_DIR}/{p.name}" not in keep:
                p.unlink(missing_ok=True)
    for p in folder.glob("*.tmp-*"):
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------- image files


def file_record(st: os.stat_result, digest: str | None) -> list:
    """How the manifest records an image file as indexed: `[bytes, mtime_ns, blake2b hex or None]`."""
    return [int(st.st_size), int(st.st_mtime_ns), digest]


def content_hash(data: bytes | memoryview | None = None) -> Any:
    """The hash of an image file's bytes the manifest keeps (blake2b, 16 bytes): `.update()` it, `.hexdigest()`."""
    h = hashlib.blake2b(digest_size=16)
    if data is not None:
        h.update(data)
    return h


def hash_file(path: Path) -> list | None:
    """The record of a regular file (`file_record`, its bytes hashed); None if it is not one or cannot be read.

    Opened non-blocking and checked with fstat, so a file swapped for a
    FIFO since it was listed is never waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if file_kind(st.st_mode) is not None:
            return None
        h = content_hash()
        try:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        except OSError:
            return None
    return file_record(st, h.hexdigest())


# ---------------------------------------------------------------- the manifest


def encoder_record(encoder) -> dict:
    """How the manifest records an encoder: `load_clip(name, pretrained)` loads it again; the fingerprint checks it.

    Raises:
        TypeError: `encoder` is not a `ClipEncoder`-like object (a str `name`, `encode_images`).
    """
    name = getattr(encoder, "name", None)
    if not isinstance(name, str) or not hasattr(encoder, "encode_images"):
        raise TypeError(f"encoder must be a geosteer.encoders.ClipEncoder (load_clip(...)), got {type(encoder).__name__}")
    pretrained = getattr(encoder, "pretrained", None)
    return {"name": name, "pretrained": pretrained if isinstance(pretrained, str) else None,
            "fingerprint": encoder_fingerprint(encoder), "embed_dim": int(encoder.embed_dim),
            "image_size": int(encoder.image_size[0])}


def record_path(path: Path, root: Path) -> str:
    """A file as the manifest records it: relative to `root` (POSIX) where it lies under it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def build_manifest(settings: dict, encoder: dict, n: int, entries: list[dict], paths: list[str],
                   sizes: list[list[int] | None], skipped: list[dict], folder: Path,
                   files: list[list | None] | None = None) -> dict:
    """The manifest of a finished index.

    Args:
        settings: regions, max_regions, root, batch_size, shard_size, metadata,
            regions_dtype (default float32).
        encoder: its `encoder_record`.
        n: regions per image (the padded width).
        entries: the shards, each with file, count, bytes, sha256.
        paths / sizes: per row, its recorded path and (width, height) (None: unknown).
        files: per row, its file's record `[bytes, mtime_ns, blake2b]` as
            indexed (`file_record`; None: unknown); default all unknown.
        skipped: {"path", "error"} of every image left out.
        folder: the index folder (to record where the root lies from it).
    """
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
        "encoder": encoder,
        "regions": settings["regions"],
        "max_regions": settings["max_regions"],
        "dim": encoder["embed_dim"],
        "n": n,
        "dtype": "float32",
        "regions_dtype": check_regions_dtype(settings.get("regions_dtype", "float32")),
        "count": len(paths),
        "skipped_count": len(skipped),
        "root": str(root),
        "root_from_index": root_from_index,
        "paths": paths,
        "sizes": sizes,
        "files": files if files is not None else [None] * len(paths),
        "skipped": skipped,
        "shards": [{k: e[k] for k in ("file", "count", "bytes", "sha256")} for e in entries],
        "build": {"batch_size": settings.get("batch_size"), "shard_size": settings.get("shard_size")},
        "metadata": settings.get("metadata", {}),
    }


def check_version(obj: dict, path: Path, what: str) -> None:
    """Raise unless a manifest / progress file is of a version this module reads (`READ_VERSIONS`).

    Raises:
        StoreError: one line naming the file and its version, saying to rebuild.
    """
    if obj.get("version") not in READ_VERSIONS:
        raise StoreError(f"{what} {str(path)!r} is of format version {obj.get('version')!r}; this geosteer reads "
                         f"versions {' and '.join(map(str, READ_VERSIONS))}: rebuild the index (delete "
                         f"{str(path.parent)!r}, run the build again)")


# ---------------------------------------------------------------- the schema
#
# A manifest or build file is checked field by field when it is read, so a
# file of the wrong structure (a shard without "count", "shards": 5, "paths":
# null) is one StoreError naming the file and the field, never a KeyError or
# TypeError later, deep inside a search or a resumed build.


def _describe(v: Any) -> str:
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) <= 40 else r[:37] + '...'}"


def _is_int(v: Any, low: int) -> bool:
    return type(v) is int and v >= low  # type(): a bool is not a count


_INT0 = (lambda v: _is_int(v, 0), "an int >= 0")
_INT1 = (lambda v: _is_int(v, 1), "an int >= 1")
_OPT_INT1 = (lambda v: v is None or _is_int(v, 1), "an int >= 1 or null")
_STR = (lambda v: type(v) is str, "a string")
_NAME = (lambda v: type(v) is str and bool(v), "a non-empty string")
_OPT_STR = (lambda v: v is None or type(v) is str, "a string or null")
_OBJ = (lambda v: type(v) is dict, "an object")
_LIST = (lambda v: type(v) is list, "a list")
_SIZE = (lambda v: v is None or (type(v) is list and len(v) == 2 and _is_int(v[0], 1) and _is_int(v[1], 1)),
         "[width, height] (ints >= 1) or null")
_RANGE = (lambda v: type(v) is list and len(v) == 2 and _is_int(v[0], 0) and _is_int(v[1], 0) and v[0] <= v[1],
          "[start, stop] (ints, start <= stop)")
_HEX = (lambda v: type(v) is str and _HEX64.fullmatch(v) is not None, "64 hex digits (a sha256)")
_SHARD = (lambda v: type(v) is str and _SHARD_FILE.fullmatch(v) is not None,
          "a shard file name 'shards/shard-NNNNN.safetensors'")
_OPT_SHARD = (lambda v: v is None or _SHARD[0](v), "a shard file name or null")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_RECORD = (lambda v: v is None or (type(v) is list and len(v) == 3 and _is_int(v[0], 0) and type(v[1]) is int
                                   and (v[2] is None or (type(v[2]) is str and _HEX32.fullmatch(v[2]) is not None))),
           "[bytes, mtime_ns, blake2b (32 hex) or null] or null")


class _Fields:
    """Checks the fields of one JSON file; the first bad one is a StoreError "FILE: FIELD: problem"."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, name: str, problem: str) -> None:
        raise StoreError(f"{self.path}: {name}: {problem}")

    def value(self, v: Any, name: str, kind: tuple) -> Any:
        if not kind[0](v):
            self.fail(name, f"must be {kind[1]}, got {_describe(v)}")
        return v

    def field(self, obj: dict, key: str, where: str, kind: tuple, optional: bool = False) -> Any:
        name = f"{where}.{key}" if where else key
        if key not in obj:
            if not optional:
                self.fail(name, "missing")
            return None
        return self.value(obj[key], name, kind)

    def items(self, obj: dict, key: str, kind: tuple, where: str = "") -> list:
        """A list field whose every item is of `kind` (a fast all() first: a manifest holds a row per image)."""
        name = f"{where}.{key}" if where else key
        items = self.field(obj, key, where, _LIST)
        if not all(kind[0](v) for v in items):
            i = next(i for i, v in enumerate(items) if not kind[0](v))
            self.value(items[i], f"{name}[{i}]", kind)
        return items

    def encoder(self, obj: dict) -> dict:
        enc = self.field(obj, "encoder", "", _OBJ)
        self.field(enc, "name", "encoder", _NAME)
        self.field(enc, "pretrained", "encoder", _OPT_STR, optional=True)
        self.field(enc, "fingerprint", "encoder", _NAME)
        self.field(enc, "embed_dim", "encoder", _INT1)
        self.field(enc, "image_size", "encoder", (lambda v: v is None or _is_int(v, 1), "an int >= 1 or null"),
                   optional=True)
        return enc

    def skipped(self, obj: dict, where: str = "") -> None:
        name = f"{where}.skipped" if where else "skipped"
        for i, s in enumerate(self.field(obj, "skipped", where, _LIST)):
            self.value(s, f"{name}[{i}]", _OBJ)
            self.field(s, "path", f"{name}[{i}]", _STR)
            self.field(s, "error", f"{name}[{i}]", _STR)

    def regions_dtype(self, obj: dict) -> str:
        """The optional "regions_dtype" (absent: float32, as written before issue 23)."""
        self.field(obj, "regions_dtype", "", (lambda v: v in REGIONS_DTYPES, f"one of {', '.join(REGIONS_DTYPES)}"),
                   optional=True)
        return regions_dtype_of(obj)

    def checksums(self, entry: dict, where: str, regions_dtype: str = "float32") -> None:
        sha = self.field(entry, "sha256", where, _OBJ)
        for t in tensor_names(regions_dtype):
            self.field(sha, t, f"{where}.sha256", _HEX)


def check_manifest(m: dict, path: Path) -> None:
    """Raise unless `m` is a readable manifest of this format version: every field of the right type, counts adding up.

    Raises:
        StoreError: naming the file and the first bad field
            ("my.index/manifest.json: shards[0].count: missing").
    """
    if m.get("format") != FORMAT_NAME:
        raise StoreError(f"manifest {str(path)!r} is not a geosteer index manifest (format {m.get('format')!r})")
    check_version(m, path, "manifest")
    f = _Fields(path)
    enc = f.encoder(m)
    f.field(m, "regions", "", _NAME)
    f.field(m, "max_regions", "", _INT1)
    dim = f.field(m, "dim", "", _INT1)
    if dim != enc["embed_dim"]:
        f.fail("dim", f"{dim}, but encoder.embed_dim is {enc['embed_dim']}")
    f.field(m, "n", "", _INT1)
    rdt = f.regions_dtype(m)
    count = f.field(m, "count", "", _INT0)
    f.field(m, "root", "", _STR)
    f.field(m, "root_from_index", "", _OPT_STR, optional=True)
    paths = f.items(m, "paths", _STR)
    sizes = f.items(m, "sizes", _SIZE)
    if m["version"] >= 3:  # version 2 has no file records: every row's is unknown
        files = f.items(m, "files", _RECORD)
        if len(files) != count:
            f.fail("files", f"{len(files)} records for {count} rows")
    f.skipped(m)
    shards = f.field(m, "shards", "", _LIST)
    for i, s in enumerate(shards):
        where = f"shards[{i}]"
        f.value(s, where, _OBJ)
        f.field(s, "file", where, _SHARD)
        f.field(s, "count", where, _INT0)
        f.field(s, "bytes", where, _INT0)
        f.checksums(s, where, rdt)
    build = f.field(m, "build", "", _OBJ)
    f.field(build, "batch_size", "build", _OPT_INT1, optional=True)
    f.field(build, "shard_size", "build", _OPT_INT1, optional=True)
    f.field(m, "metadata", "", _OBJ, optional=True)
    f.field(m, "skipped_count", "", _INT0, optional=True)
    rows = sum(s["count"] for s in shards)
    if rows != count or len(paths) != count or len(sizes) != count:
        raise StoreError(f"manifest {str(path)!r}: its shards hold {rows} rows, its paths {len(paths)}, its "
                         f"sizes {len(sizes)}, its count says {count}")


def check_progress(prog: dict, path: Path) -> None:
    """Raise unless `prog` is a readable build progress file (build.json) of a version this module reads.

    Raises:
        StoreError: naming the file and the first bad field ("my.index/build.json: shards[0].range: missing").
    """
    check_version(prog, path, "build progress file")
    f = _Fields(path)
    f.encoder(prog)
    f.field(prog, "regions", "", _NAME)
    for key in ("max_regions", "batch_size", "shard_size"):
        f.field(prog, key, "", _INT1)
    f.field(prog, "root", "", _STR)
    f.field(prog, "metadata", "", _OBJ, optional=True)
    _check_plan(f, prog, f.regions_dtype(prog))


def check_sync(prog: dict, path: Path) -> None:
    """Raise unless `prog` is a readable sync progress file (sync.json; a stale or foreign one is discarded).

    Raises:
        StoreError: naming the file and the first bad field.
    """
    check_version(prog, path, "sync progress file")
    f = _Fields(path)
    for key in ("fingerprint", "regions"):
        f.field(prog, key, "", _NAME)
    for key in ("max_regions", "n", "shard_size"):
        f.field(prog, key, "", _INT1)
    f.field(prog, "next_seq", "", _INT0)
    rdt = f.regions_dtype(prog)
    f.items(prog, "stamps", (lambda v: type(v) is list and len(v) == 2 and _is_int(v[0], 0) and type(v[1]) is int,
                             "[bytes, mtime_ns]"))
    _check_plan(f, prog, rdt)
    if len(prog["stamps"]) != len(prog["plan"]):
        f.fail("stamps", f"{len(prog['stamps'])} stamps for {len(prog['plan'])} planned images")


def _check_plan(f: _Fields, prog: dict, regions_dtype: str = "float32") -> None:
    """The plan, its ranges and the finished shards of a build / sync progress file."""
    plan = f.items(prog, "plan", _STR)
    ranges = f.items(prog, "ranges", _RANGE)
    for i, s in enumerate(f.field(prog, "shards", "", _LIST)):
        where = f"shards[{i}]"
        f.value(s, where, _OBJ)
        a, b = f.field(s, "range", where, _RANGE)
        if [a, b] not in ranges:
            f.fail(f"{where}.range", f"{[a, b]} is not one of the plan's ranges")
        kept = f.items(s, "kept", (lambda v: _is_int(v, a) and v < b, f"a plan position in [{a}, {b})"), where)
        f.items(s, "sizes", _SIZE, where)
        if f.field(s, "count", where, _INT0) != len(kept) or len(s["sizes"]) != len(kept):
            f.fail(where, f"count {s['count']}, {len(kept)} kept and {len(s['sizes'])} sizes do not agree")
        if "files" in s and len(f.items(s, "files", _RECORD, where)) != len(kept):  # absent in version 2
            f.fail(f"{where}.files", f"{len(s['files'])} records for {len(kept)} kept images")
        f.skipped(s, where)
        if f.field(s, "file", where, _OPT_SHARD) is not None:
            f.field(s, "bytes", where, _INT0)
            f.checksums(s, where, regions_dtype)
        elif kept:
            f.fail(f"{where}.file", f"null, but {len(kept)} images were kept")
    if ranges and ranges[-1][1] > len(plan):
        f.fail("ranges", f"reach position {ranges[-1][1]}, past the plan's {len(plan)} images")


def read_index_json(path: str | os.PathLike) -> dict:
    """An index folder's manifest.json or build.json (by its name), read and checked field by field.

    What a command reads before anything loads (the recorded model and
    settings); `Index.open` reads the manifest itself.

    Raises:
        StoreError: naming the file (and the field), when it cannot be read,
            is of another format version or of the wrong structure.
        ValueError: `path` is neither a manifest.json nor a build.json.
    """
    path = Path(path)
    if path.name == MANIFEST:
        m = read_json(path, "manifest")
        check_manifest(m, path)
    elif path.name == PROGRESS:
        m = read_json(path, "build progress file")
        check_progress(m, path)
    else:
        raise ValueError(f"{str(path)!r} is neither an index's {MANIFEST} nor its {PROGRESS}")
    return m


def read_manifest(folder: Path) -> dict:
    """The checked manifest of an index folder.

    Raises:
        FileNotFoundError: `folder` does not exist.
        StoreError (a ValueError) naming the file: no manifest (not an
            index, or an unfinished build), another format version, a
            manifest that does not add up.
    """
    state = index_state(folder)
    if state == "missing":
        raise FileNotFoundError(f"index {str(folder)!r} does not exist")
    if state == "partial":
        prog = read_json(folder / PROGRESS, "build progress file")
        count = lambda key: len(v) if isinstance(v := prog.get(key), list) else "?"  # noqa: E731 - any content
        raise StoreError(f"index {str(folder)!r} is an unfinished build ({count('shards')} of {count('ranges')} shards "
                         f"written, no {MANIFEST} yet); run the build again with the same arguments to resume it")
    if state != "complete":
        raise StoreError(f"{str(folder)!r} is not an index: it has no {MANIFEST}")
    manifest = read_json(folder / MANIFEST, "manifest")
    check_manifest(manifest, folder / MANIFEST)
    return manifest


def recorded_model(record: dict, model: str | None = None, pretrained: str | None = None) -> tuple[str, str | None]:
    """(model, pretrained) to load an index's encoder with: the recorded ones, or the overrides.

    Args:
        record: a manifest or a build progress file (its "encoder" entry).
        model: another model to load instead (then the recorded pretrained
            tag, which belongs to the recorded model, is dropped).
        pretrained: another pretrained tag or checkpoint.

    Raises:
        TypeError: `model` or `pretrained` neither a str nor None.
        StoreError: the record names no encoder (not a geosteer index).
    """
    for name, value in (("model", model), ("pretrained", pretrained)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    enc = record.get("encoder") if isinstance(record, dict) else None
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or not enc["name"]:
        raise StoreError("its manifest.json records no encoder (not a geosteer index)")
    name, tag = enc["name"], enc.get("pretrained")
    if tag is not None and not isinstance(tag, str):
        raise StoreError(f"its manifest.json: encoder.pretrained: must be a string or null, got {_describe(tag)}")
    if model is not None and model != name:
        name, tag = model, None
    return name, pretrained if pretrained is not None else tag


def check_fingerprint(record: dict, fingerprint: str, given: str, where: str) -> None:
    """Raise unless `fingerprint` is the encoder `record` (a manifest) was built with.

    Args:
        given: how to name the other encoder ("'demo' (fingerprint ab12...)").
        where: how to name the index ("index 'my.index'").

    Raises:
        ValueError: naming the index and both encoders.
    """
    mine = record["encoder"]
    if fingerprint != mine["fingerprint"]:
        raise ValueError(f"{where} was built with encoder {mine['name']!r} (fingerprint {mine['fingerprint']}), "
                         f"not with encoder {given}; search it with the encoder it was built with")
