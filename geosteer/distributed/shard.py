"""A gallery split across ranks: each rank holds one contiguous shard of rows, and the global ids.

Rank r holds rows `offsets[r] .. offsets[r+1] - 1` of the gallery (global
ids), in every field of the gallery side: embeddings `[N_r, D]`, parts
`[N_r, n, D]`, parts mask `[N_r, n]`, part boxes `[N_r, n, 4]` and, for
neighbourhood mode, kNN graph rows `[N_r, k']` holding *global* ids
(`geosteer.distributed.sharded_knn_graph`).

Three ways to make one, each a collective (every rank calls it):

- `ShardedGallery.from_local(comm, shard)`: each rank passes its own rows;
- `ShardedGallery.from_full(comm, gallery, sizes=None)`: every rank holds
  the whole gallery (tests, small galleries) and keeps its slice (views);
- `ShardedGallery.open(comm, path)`: on-disk shards, one index folder per
  rank (`write_sharded_index`, or folders built separately and listed with
  `write_shard_list`), or one index folder split by rows.

At start-up the ranks compare what they hold and refuse to go on, on every
rank, when it does not make one gallery (`ShardMismatch`): another encoder,
D, region count n, format version, dtype, set of fields, device. `open`
also exchanges the ranks' `Index.identity` (which images, row by row), so
ranks given different indexes of one encoder, D, n and regions are refused
too instead of returning a ranking mixed from two folders: one index split
by rows must be the same index on every rank, and the shards of a sharded
index must be the ones its `shards.json` records (`write_shard_list` writes
each shard's identity there; a list written before it did checks nothing).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from geosteer.distributed.comm import Comm
from geosteer.distributed.faults import ShardMismatch
from geosteer.inputs import GallerySide, map_tensors

if TYPE_CHECKING:
    from geosteer.index import Catalog

#: The file listing the shard folders of a sharded index, one per rank.
SHARD_LIST = "shards.json"
SHARD_LIST_FORMAT = "geosteer-sharded-index"
SHARD_LIST_VERSION = 1
#: Manifest fields every shard of one gallery must share (`open` compares them).
MANIFEST_FIELDS: tuple[str, ...] = ("format", "version", "encoder", "fingerprint", "dim", "n", "regions", "dtype",
                                    "regions_dtype")
_GALLERY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GallerySide))


def shard_bounds(num_items: int, world_size: int, sizes: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Row range `(start, stop)` of each rank's contiguous shard.

    Args:
        num_items: N, rows of the whole gallery.
        world_size: W, number of ranks.
        sizes: rows per rank (sums to N, each >= 1); default as even as
            possible (the first N mod W ranks get one more).

    Raises:
        ValueError: N < W, or `sizes` of the wrong length, sum or sign.
    """
    if world_size < 1 or num_items < world_size:
        raise ValueError(f"a gallery of N={num_items} rows cannot give each of {world_size} ranks a row")
    if sizes is None:
        base, extra = divmod(num_items, world_size)
        sizes = [base + (1 if r < extra else 0) for r in range(world_size)]
    sizes = [int(s) for s in sizes]
    if len(sizes) != world_size or sum(sizes) != num_items or min(sizes) < 1:
        raise ValueError(f"sizes must hold {world_size} positive row counts summing to N={num_items}, got {sizes}")
    bounds, start = [], 0
    for s in sizes:
        bounds.append((start, start + s))
        start += s
    return bounds


def _slice(gallery: GallerySide, start: int, stop: int) -> GallerySide:
    return map_tensors(gallery, lambda t: t[start:stop])


def _summary(gallery) -> dict:
    """What the ranks compare about their shards (static metadata only)."""
    if isinstance(gallery, Tensor):
        gallery = GallerySide(gallery)
    if not isinstance(gallery, GallerySide):
        raise TypeError(f"gallery must be a GallerySide or an [N, D] tensor, got {type(gallery).__name__}")
    emb = gallery.embeddings
    if not isinstance(emb, Tensor) or emb.ndim != 2:
        raise ValueError(f"gallery embeddings must be an [N, D] tensor, got {getattr(emb, 'shape', type(emb).__name__)}")
    for f in _GALLERY_FIELDS:
        t = getattr(gallery, f)
        if t is not None and (not isinstance(t, Tensor) or t.ndim < 1 or t.shape[0] != emb.shape[0]):
            raise ValueError(f"gallery.{f} must be a tensor with N={emb.shape[0]} rows, got {getattr(t, 'shape', type(t).__name__)}")
    return {
        "rows": int(emb.shape[0]), "dim": int(emb.shape[1]), "dtype": str(emb.dtype), "device": emb.device.type,
        "n": None if gallery.parts is None else int(gallery.parts.shape[1]),
        "fields": tuple(f for f in _GALLERY_FIELDS if getattr(gallery, f) is not None),
        "neighbors": None if gallery.neighbors is None else int(gallery.neighbors.shape[1]),
    }


def _agree(summaries: list[dict], keys: Sequence[str], where: dict[int, str] | None = None, hint: str = "",
           field: str | None = None) -> None:
    """Raise `ShardMismatch` (on every rank alike: all see the same list) where a key differs (`field`: its name)."""
    for key in keys:
        values = {r: s[key] for r, s in enumerate(summaries)}
        if len({repr(v) for v in values.values()}) > 1:
            raise ShardMismatch(field or key, values, where, hint)


@dataclass
class ShardedGallery:
    """This rank's shard of a gallery split across the ranks of `comm`.

    Attributes:
        comm: the group (every rank holds one shard, in rank order).
        local: this rank's rows as a `GallerySide` (neighbors, if any, hold global ids).
        counts: rows of every rank's shard, in rank order.
        paths: image file of each local row (shards opened from an index), else None.
        faiss: a `FaissFirstStage` over the local embeddings (`build_faiss`), else None.
        sizes: (width, height) of each local row's image (shards opened from
            an index: its recorded sizes, None where unknown), else None.
        recorded_paths: each local row's path as its index records it
            (relative to that index's image folder: what `where`'s `path:`
            clauses match, as `geosteer search --where` does), else None.
    """

    comm: Comm
    local: GallerySide
    counts: tuple[int, ...]
    paths: tuple[str, ...] | None = None
    faiss: object | None = None
    sizes: tuple[tuple[int, int] | None, ...] | None = None
    recorded_paths: tuple[str, ...] | None = None
    _offsets: Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        """This rank."""
        return self.comm.rank

    @property
    def world_size(self) -> int:
        """Ranks (= shards)."""
        return self.comm.world_size

    @property
    def num_items(self) -> int:
        """N, rows of the whole gallery."""
        return sum(self.counts)

    @property
    def offset(self) -> int:
        """Global id of this shard's first row."""
        return sum(self.counts[: self.rank])

    @property
    def offsets(self) -> Tensor:
        """`[W + 1]` int64: first global id of each shard, then N (on the shard's device)."""
        if self._offsets is None:
            starts = [0]
            for c in self.counts:
                starts.append(starts[-1] + c)
            self._offsets = torch.tensor(starts, dtype=torch.long, device=self.local.embeddings.device)
        return self._offsets

    def locate(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(owner rank, row in the owner's shard) of global ids (any shape, int64)."""
        owner = torch.bucketize(ids.contiguous(), self.offsets[1:-1], right=True)
        return owner, ids - self.offsets[owner]

    # -- construction (collectives)

    @classmethod
    def from_local(
        cls, comm: Comm, gallery: GallerySide | Tensor, *, paths: Sequence[str] | None = None,
        sizes: Sequence[tuple[int, int] | None] | None = None, recorded_paths: Sequence[str] | None = None,
    ) -> ShardedGallery:
        """Each rank's own rows make the shards, in rank order (a collective).

        Args:
            comm: the group.
            gallery: this rank's rows (a `GallerySide` or `[N_r, D]` tensor,
                N_r >= 1); kNN graph rows, if given, must hold global ids.
            paths: optional image file per row.
            sizes: optional (width, height) of each row's image.
            recorded_paths: optional path of each row as its index records
                it (what `where`'s `path:` clauses match).

        Raises:
            ShardMismatch (a ValueError), on every rank: the shards differ in
                D, dtype, n, fields, device or graph width.
            RankFailure (ValueError kind), on every rank: a shard is not a
                gallery (bad type or shapes), has no rows, or `paths` has the wrong length.
        """
        with comm.step("shards"):
            summary = _summary(gallery)
            if summary["rows"] < 1:
                raise ValueError(f"rank {comm.rank}'s shard holds no rows; every rank needs at least one")
            for name, per_row in (("paths", paths), ("sizes", sizes), ("recorded_paths", recorded_paths)):
                if per_row is not None and len(per_row) != summary["rows"]:
                    raise ValueError(f"{name} holds {len(per_row)} entries but the shard has {summary['rows']} rows")
        summaries = comm.all_gather_object(summary, "shards")
        _agree(summaries, ("dim", "dtype", "n", "fields", "device", "neighbors"))
        local = gallery if isinstance(gallery, GallerySide) else GallerySide(gallery)
        return cls(comm, local, tuple(s["rows"] for s in summaries), None if paths is None else tuple(paths),
                   sizes=None if sizes is None else tuple(sizes),
                   recorded_paths=None if recorded_paths is None else tuple(recorded_paths))

    @classmethod
    def from_full(cls, comm: Comm, gallery: GallerySide | Tensor, sizes: Sequence[int] | None = None) -> ShardedGallery:
        """Every rank holds the whole gallery and keeps its contiguous slice (views, no copy; a collective).

        Args:
            comm: the group.
            gallery: the whole gallery, the same on every rank.
            sizes: rows per rank (default: even; `shard_bounds`).
        """
        with comm.step("shards"):
            g = gallery if isinstance(gallery, GallerySide) else GallerySide(gallery)
            if not isinstance(g.embeddings, Tensor):
                raise TypeError(f"gallery must be a GallerySide or an [N, D] tensor, got {type(gallery).__name__}")
            start, stop = shard_bounds(g.embeddings.shape[0], comm.world_size, sizes)[comm.rank]
            local = _slice(g, start, stop)
        return cls.from_local(comm, local)

    @classmethod
    def open(cls, comm: Comm, path: str | os.PathLike | Sequence[str | os.PathLike], *, encoder=None) -> ShardedGallery:
        """Open on-disk shards: each rank maps its own, and the ranks check they hold one gallery (a collective).

        Args:
            comm: the group.
            path: a sharded index folder (holding `shards.json`: one shard
                folder per rank, `write_sharded_index`), a list of index
                folders (one per rank), or one index folder, whose rows are
                then split evenly (each rank maps the whole file and reads
                its rows; checksumming the embeddings reads them all once).
            encoder: optional `ClipEncoder` or fingerprint, checked against
                this rank's shard (pass it on the ranks that have one).

        Raises:
            ShardMismatch, on every rank: the shards' manifests disagree
                (format, version, encoder, D, n, region method, dtype, region dtype); the
                ranks were given different indexes (`Index.identity`: one
                index split by rows that is another index on some rank, or a
                shard that is not the one another rank's `shards.json` records).
            RankFailure (ValueError kind), on every rank: a folder that is
                not an index, as many shards as ranks missing, a truncated or
                corrupt shard, the wrong encoder, a shard folder that is not
                the index its `shards.json` records (rebuilt or replaced since).
        """
        from geosteer.index import Index

        with comm.step("open"):
            folders, split, listed, listing = _read_shards(path, comm.world_size)
            folder = folders[comm.rank]
            summary = manifest_summary(folder)
        # each rank names the folder it opened: the same path may be another index on another rank's machine
        summaries = comm.all_gather_object({**summary, "folder": str(folder)}, "open")
        where = {r: s["folder"] for r, s in enumerate(summaries)}
        _agree(summaries, MANIFEST_FIELDS, where,
               "build every shard with one encoder, region method and geosteer index format")
        with comm.step("open"):
            index = Index.open(folder, encoder=encoder)
            if listed is not None and listed[comm.rank] != index.identity:
                raise ValueError(
                    f"shard folder {str(folder)!r} holds index {index.identity} but {listing!r} "
                    f"records {listed[comm.rank]} for shard {comm.rank}: the folder was rebuilt or replaced after the "
                    f"list was written; write the list again (write_shard_list) if the new shard is meant")
        views = comm.all_gather_object(
            {"identity": index.identity, "layout": "one index split by rows" if split else "one shard per rank",
             "listed": listed, "list": listing}, "open/identity")
        check_one_gallery(views, where)
        with comm.step("open"):
            gallery = index.gallery  # checks the embeddings' checksums
            files, sizes, recorded = [str(p) for p in index.files], index.sizes, index.paths
            if split:
                start, stop = shard_bounds(len(index), comm.world_size)[comm.rank]
                gallery, files, sizes = _slice(gallery, start, stop), files[start:stop], sizes[start:stop]
                recorded = recorded[start:stop]
        return cls.from_local(comm, gallery, paths=files, sizes=sizes, recorded_paths=recorded)

    def with_neighbors(self, graph: Tensor) -> ShardedGallery:
        """A copy whose local rows carry kNN graph rows `graph [N_r, k']` (global ids; `sharded_knn_graph`)."""
        return dataclasses.replace(self, local=dataclasses.replace(self.local, neighbors=graph))

    def build_faiss(self, kind: str = "ivf", **options) -> ShardedGallery:
        """Build a FAISS index over this rank's embeddings for the first stage (a collective).

        Args:
            kind: "ivf", "hnsw" or "flat" (`FaissFirstStage.build`).
            options: passed to `FaissFirstStage.build` (nlist, nprobe, ...),
                the same on every rank (each shard gets its own lists).

        Returns:
            self, with `faiss` set.

        Raises:
            RankFailure, on every rank: faiss missing, or a rank's build failed.
        """
        from geosteer.stages.first_stage_faiss import FaissFirstStage

        with self.comm.step("faiss"):
            self.faiss = FaissFirstStage.build(self.local.embeddings, kind, **options)
        return self

    def where(self, where: str | Sequence[str]) -> Tensor:
        """This shard's rows that a `where` filter selects: `[N_r]` bool, `ShardedHead`'s `allowed` (a collective).

        The expressions of `geosteer search --where` (`geosteer.index.search.where_mask`):
        `path:GLOB` / `path:PREFIX/` match each row's path as its shard's
        index records it (`recorded_paths`; shards without them match no
        `path:` clause), `id:3,5-9` global ids; a list, or clauses joined by
        `&`: all must hold. Each rank evaluates the expression on its own rows
        (over the N global ids: O(N) host work per rank, no gallery data travels).

        Returns:
            `[N_r]` bool on the shard's device, True = selected.

        Raises:
            RankValueError / RankTypeError, on every rank: a malformed
                expression (`where_mask`'s error, naming the clause).
            ValueError, on every rank: the filter selects no image of the gallery.
        """
        from geosteer.index.search import where_mask

        with self.comm.step("where"):
            rows, start = self.local.embeddings.shape[0], self.offset
            mine = self.recorded_paths if self.recorded_paths is not None else (None,) * rows
            paths = [None] * start + list(mine) + [None] * (self.num_items - start - rows)  # global ids
            mask = where_mask(where, paths, self.num_items)[start : start + rows].to(self.local.embeddings.device)
        if self.count_allowed(mask) == 0:
            raise ValueError(f"where={where!r} matches no image of the {self.num_items} in the index")
        return mask

    def count_allowed(self, allowed: Tensor) -> int:
        """Rows of the whole gallery that the ranks' `[N_r]` slices `allowed` select (a collective)."""
        return sum(self.comm.all_gather_object(int(allowed.sum()), "count"))

    def paths_of(self, ids: Tensor) -> list[list[str | None]]:
        """The image file of each global id in `ids [Q, k]` (a collective; every rank gets them all).

        Shards without paths answer None.
        """
        found = self._gather_rows(ids, lambda row: None if self.paths is None else self.paths[row], "paths")
        return [[found.get(i) for i in row] for row in ids.tolist()]

    def catalog_of(self, ids: Tensor) -> Catalog:
        """A `geosteer.index.Catalog` of the rows `ids` (global ids, any shape): paths, sizes, region boxes.

        A collective: every rank calls it and gets every asked row (each
        sends only the rows it owns), so any rank can build a search's result
        (`geosteer.index.search_result`) for them. Unknown fields are None.

        Raises:
            TypeError: `ids` is not an int64 tensor.
        """
        from geosteer.index import Catalog

        if not isinstance(ids, Tensor) or ids.dtype != torch.long:
            raise TypeError(f"ids must be an int64 tensor of global ids, got {getattr(ids, 'dtype', type(ids).__name__)}")

        local = self.local
        boxes = local.part_boxes is not None and local.parts_mask is not None
        found = self._gather_rows(ids, lambda row: (
            None if self.paths is None else self.paths[row], None if self.sizes is None else self.sizes[row],
            local.part_boxes[row].cpu() if boxes else None, local.parts_mask[row].cpu() if boxes else None), "rows")
        return Catalog(paths={i: v[0] for i, v in found.items()}, sizes={i: v[1] for i, v in found.items()},
                       part_boxes={i: v[2] for i, v in found.items()} if boxes else None,
                       parts_mask={i: v[3] for i, v in found.items()} if boxes else None)

    def _gather_rows(self, ids: Tensor, value: Callable[[int], Any], what: str) -> dict[int, Any]:
        """Global id -> `value(row in this shard)` for every id in `ids`, each from its owner (a collective, step `what`)."""
        wanted = ids.unique()
        owner, rows = self.locate(wanted)
        mine = {gid: value(row) for gid, row in zip(wanted[owner == self.rank].tolist(), rows[owner == self.rank].tolist())}
        found: dict[int, Any] = {}
        for part in self.comm.all_gather_object(mine, what):
            found.update(part)
        return found


def check_one_gallery(views: list[dict], where: dict[int, str] | None = None) -> None:
    """Raise `ShardMismatch` unless the ranks' opened indexes are the rows of one gallery (same answer on every rank).

    Args:
        views: per rank, in rank order: "identity" (`Index.identity` of the
            index it opened), "layout" ("one index split by rows" or "one
            shard per rank"), "listed" (the shard identities its
            `shards.json` records, or None) and "list" (that file, or None).
        where: rank -> the folder it opened, for the message.

    Raises:
        ShardMismatch: the layouts differ; an index split by rows is not the
            same index on every rank (field "index identity"); or a rank
            opened another shard than a rank's `shards.json` records for it
            (field "index of shard S"). The message names both identities.
    """
    _agree(views, ("layout",), where, "give every rank the same INDEX")
    if views[0]["layout"] == "one index split by rows":
        _agree(views, ("identity",), where,
               "every rank must open the same index, whose rows they split; the ranks were given different index "
               "folders (or one path that holds another index on some machine)", field="index identity")
        return
    opened = [v["identity"] for v in views]
    for r, view in enumerate(views):
        if view["listed"] is None:  # a list written before identities were recorded, or folders given in Python
            continue
        for s, (want, got) in enumerate(zip(view["listed"], opened)):
            if want != got and s != r:  # s == r: checked by rank r itself while opening (a RankFailure)
                raise ShardMismatch(f"index of shard {s}", {r: want, s: got},
                                    {r: view["list"], s: (where or {}).get(s, f"shard {s}")},
                                    "the ranks were given different sharded indexes (each shards.json records the "
                                    "index of every shard); give every rank the same one")


# ---------------------------------------------------------------- on disk


def shard_folders(path, world_size: int) -> tuple[list[Path], bool]:
    """The index folder of each rank, and whether they are one index split by rows.

    Raises:
        ValueError: `path` is neither a sharded index, a list of index
            folders nor an index; or it holds another number of shards than ranks.
    """
    folders, split, _, _ = _read_shards(path, world_size)
    return folders, split


def _read_shards(path, world_size: int) -> tuple[list[Path], bool, list[str] | None, str | None]:
    """`shard_folders`, the shard identities the list records and the list's file (both None: folders given in
    Python, one index split by rows; the identities None for a list written before `write_shard_list` recorded them)."""
    if isinstance(path, (list, tuple)):
        folders = [Path(p).expanduser() for p in path]
        if len(folders) != world_size:
            raise ValueError(f"{len(folders)} shard folders given for {world_size} ranks; pass one per rank")
        return folders, False, None, None
    folder = Path(path).expanduser()
    listing = folder / SHARD_LIST
    if listing.is_file():
        try:
            spec = json.loads(listing.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{str(listing)!r} cannot be read: {e}") from None
        if not isinstance(spec, dict) or spec.get("format") != SHARD_LIST_FORMAT or spec.get("version") != SHARD_LIST_VERSION:
            raise ValueError(f"{str(listing)!r} is not a {SHARD_LIST_FORMAT} version {SHARD_LIST_VERSION} shard list")
        shards = [folder / s for s in spec.get("shards", [])]
        if len(shards) != world_size:
            raise ValueError(f"sharded index {str(folder)!r} holds {len(shards)} shards but the group has {world_size} "
                             f"ranks; launch one rank per shard (torchrun --nproc-per-node {len(shards)} ...)")
        listed = spec.get("identities")
        if listed is not None and (not isinstance(listed, list) or len(listed) != len(shards)
                                   or not all(isinstance(i, str) for i in listed)):
            raise ValueError(f"{str(listing)!r}: 'identities' must list one identity string per shard")
        return shards, False, listed, str(listing)
    if (folder / "manifest.json").is_file():
        return [folder] * world_size, world_size > 1, None, None
    raise ValueError(f"{str(folder)!r} is neither an index (manifest.json) nor a sharded index ({SHARD_LIST})")


def manifest_summary(folder: str | os.PathLike) -> dict:
    """The fields of an index manifest that every shard must share (`MANIFEST_FIELDS`), read from its JSON.

    Raises:
        ValueError: no readable manifest.
    """
    path = Path(folder) / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"shard {str(folder)!r} has no readable manifest.json ({e}); is it an index folder?") from None
    enc = m.get("encoder") or {}
    return {"format": m.get("format"), "version": m.get("version"), "encoder": enc.get("name"),
            "fingerprint": enc.get("fingerprint"), "dim": m.get("dim"), "n": m.get("n"), "regions": m.get("regions"),
            "dtype": m.get("dtype"), "regions_dtype": m.get("regions_dtype", "float32"), "count": m.get("count")}


def write_shard_list(out: str | os.PathLike, folders: Sequence[str | os.PathLike]) -> Path:
    """Write `out/shards.json` listing index folders (one per rank, in rank order) as one sharded index.

    Use it for shards built separately (`geosteer index` per machine). Folders
    under `out` are recorded relative to it; each shard's `Index.identity` is
    recorded too, so `ShardedGallery.open` refuses ranks that were given
    different sharded indexes, or a shard folder rebuilt since.

    Returns:
        The shard list's path.

    Raises:
        ValueError: no folder, or one that is not a finished index
            (`StoreError`, naming the file, for one that does not open).
    """
    from geosteer.index import Index

    base = Path(out).expanduser()
    if not folders:
        raise ValueError("folders must list at least one index folder")
    entries, identities = [], []
    for f in folders:
        p = Path(f).expanduser()
        if not (p / "manifest.json").is_file():
            raise ValueError(f"shard {str(p)!r} is not a finished index (no manifest.json)")
        identities.append(Index.open(p).identity)
        try:
            entries.append(p.resolve().relative_to(base.resolve()).as_posix())
        except ValueError:
            entries.append(str(p.resolve()))
    base.mkdir(parents=True, exist_ok=True)
    listing = base / SHARD_LIST
    tmp = listing.with_name(f"{SHARD_LIST}.tmp-{os.getpid()}")
    # "identities" is an added key: a version-1 reader that predates it ignores it, so the version stays 1
    tmp.write_text(json.dumps({"format": SHARD_LIST_FORMAT, "version": SHARD_LIST_VERSION, "shards": entries,
                               "identities": identities}, indent=1) + "\n")
    os.replace(tmp, listing)
    return listing


def write_sharded_index(
    gallery: GallerySide,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    num_shards: int,
    *,
    encoder,
    sizes: Sequence[int] | None = None,
    **options,
) -> Path:
    """Write a `GallerySide` as `num_shards` index folders plus `shards.json` (one process).

    Shard r is `out/shard-0000r`, an ordinary index (`geosteer.index.write_index`)
    of rows `shard_bounds(N, num_shards, sizes)[r]`.

    Args:
        gallery: embeddings, parts, parts_mask and part_boxes (float32), as `write_index` takes.
        paths: one image path per row.
        out: a new or empty folder.
        num_shards: shards (= ranks that will open it).
        encoder: as `write_index` (a `ClipEncoder` or (name, fingerprint)).
        sizes: rows per shard (default even).
        options: more `write_index` keywords (regions, root, metadata, ...).

    Returns:
        `out`.
    """
    from geosteer.index import write_index

    if len(paths) != gallery.embeddings.shape[0]:
        raise ValueError(f"paths holds {len(paths)} entries but gallery has N={gallery.embeddings.shape[0]} rows")
    base = Path(out).expanduser()
    folders = []
    for r, (start, stop) in enumerate(shard_bounds(gallery.embeddings.shape[0], num_shards, sizes)):
        folder = base / f"shard-{r:05d}"
        write_index(_slice(gallery, start, stop), list(paths[start:stop]), folder, encoder=encoder, **options)
        folders.append(folder)
    write_shard_list(base, folders)
    return base
