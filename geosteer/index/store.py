"""The on-disk index as an object: open, the memory-mapped gallery, paths and sizes, checks (DESIGN §6).

`Index.open(path)` reads the manifest and the shards' headers only and
memory-maps the tensors (a private map, `format.map_private` -> torch.from_numpy). It checks, cheaply:
the format version, the encoder (when given), that every shard exists, that
its header matches the manifest (dtypes, shapes) and that its size is what
its header says (a truncated or extended file). The embeddings' checksums are
checked once, on the first `gallery` access (every search reads them:
N x D x 4 bytes, 1/(n+1) of the data). The region tensors' checksums only
in `verify()` (a full pass): corrupt region bytes that stay finite can
change a re-ranking without an error until `verify()` runs; non-finite
ones are caught by the head in the candidates' rows.

Writing is `geosteer.index.builder` (`Index.build`, `index.add`,
`index.sync` / `index.remove`, `write_index`); the files themselves, `geosteer.index.format`; searching,
`geosteer.index.search` (`index.search` is one `Searcher` call).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geosteer.config import HeadConfig
from geosteer.encoders.clip import check_positive_int
from geosteer.encoders.regions import check_method
from geosteer.index import builder
from geosteer.index import format as fmt
from geosteer.index.indexer import encoder_fingerprint
from geosteer.index.search import Searcher, SearchResult
from geosteer.inputs import GallerySide, QuerySide, certify_gallery


def _load_clip(model: str, pretrained: str | None, device: str):
    from geosteer.encoders import load_clip

    return load_clip(model, pretrained=pretrained, device=device)


class Index:
    """An on-disk index: memory-mapped gallery tensors, image paths and sizes, its encoder.

    Make one with `Index.build` (images) or `write_index` (a `GallerySide`
    you have); open one with `Index.open`; search it with
    `geosteer.index.Searcher` (or `index.search`, one call).

    Attributes:
        path: the index folder.
        manifest: the parsed manifest.
        encoder: the encoder given to `open` / `build` or loaded by
            `load_encoder` (used by `search` on captions), or None.
        stats: what the last `build` / `add` / `sync` / `remove` call did
            ({"encoded", "skipped", "seconds", "images_per_s", "resumed_shards"};
            `add` / `sync` / `remove` add the `Changes.counts()`), else None.
    """

    def __init__(self, path: Path, manifest: dict, shards: list[dict[str, Tensor]], encoder=None) -> None:
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        self.stats: dict[str, Any] | None = None
        self._shards = shards
        self._gallery: GallerySide | None = None
        self._checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> its fingerprint matched
        self._paths: tuple[str, ...] | None = None
        self._sizes: tuple[tuple[int, int] | None, ...] | None = None
        self._identity: str | None = None
        self._first_stage: Any = None  # the opened FAISS first stage, False once found absent or stale
        # for prefetch: each shard's first row (then N), and where its region rows lie in its file
        self._spans: tuple[list[int], list[dict[str, fmt.RowSpan]]] | None = None

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
                version (rebuild it) or of the wrong structure (naming the
                field), a missing, truncated or mismatched shard.
            ValueError: naming the index and both encoders, when `encoder`
                is not the one the index was built with.
        """
        folder = Path(path).expanduser()
        manifest = fmt.read_manifest(folder)
        n, dim = manifest["n"], manifest["dim"]
        rdt = fmt.regions_dtype_of(manifest)
        shards = [fmt.map_shard(folder / s["file"], s["count"], n, dim, rdt) for s in manifest["shards"]]
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
        given = f"fingerprint {fp}" if isinstance(encoder, str) else f"{getattr(encoder, 'name', '?')!r} (fingerprint {fp})"
        fmt.check_fingerprint(self.manifest, fp, given, f"index {str(self.path)!r}")
        if not isinstance(encoder, str):
            self._checked[encoder] = fp

    def load_encoder(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        device: str = "cpu",
        loader: Callable[[str, str | None, str], Any] | None = None,
    ):
        """Load the encoder the index was built with (what its manifest records), check it, keep it as `encoder`.

        Args:
            model: load this model instead of the recorded one (its recorded
                pretrained tag is then dropped).
            pretrained: this pretrained tag or checkpoint instead of the recorded one.
            device: where the encoder runs.
            loader: `(model, pretrained, device) -> encoder` (default:
                `geosteer.encoders.load_clip`; a command passes its cached one).

        Returns:
            The encoder.

        Raises:
            StoreError: the manifest records no encoder. ValueError: naming
                the index and both encoders when the model loaded is not
                the index's; what `loader` raises for a model that does not load.
            TypeError: `model` / `pretrained` not a str or None, `loader` not callable.
        """
        if loader is not None and not callable(loader):
            raise TypeError(f"loader must be callable (model, pretrained, device) -> encoder, got {type(loader).__name__}")
        name, tag = fmt.recorded_model(self.manifest, model, pretrained)
        encoder = (loader or _load_clip)(name, tag, device)
        self.check_encoder(encoder)
        self.encoder = encoder
        return encoder

    # -- contents

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Index({str(self.path)!r}, {len(self)} images, encoder={m['encoder']['name']!r}, "
                f"regions={m['regions']!r}, n={m['n']}, D={m['dim']}, regions_dtype={self.regions_dtype!r}, "
                f"shards={len(m['shards'])})")

    @property
    def regions_dtype(self) -> str:
        """How the region vectors are stored: "float32", "float16" or "int8" (+ a float32 scale per row)."""
        return fmt.regions_dtype_of(self.manifest)

    @property
    def identity(self) -> str:
        """A short content fingerprint of the index (16 hex digits): which images it holds, row by row.

        sha256 over the recorded image root and, in row order, each row's id,
        its recorded path (`os.fsencode` bytes) and the blake2b of its file's
        bytes as indexed where recorded (format 3; none for a format 2 row);
        the first 16 hex digits. It depends on the manifest only, never on
        where the index folder lies: stable across open / close, equal for
        two copies of one index (or a moved one), different for indexes of
        different image folders even with the same encoder, D, n and
        regions (their roots differ), and for two builds of one folder whose
        images changed in between; `add` / `sync` / `remove` change it when
        they change the rows (a touched file, same bytes, does not). Two
        processes compare it to know they search the same gallery row for row.
        """
        if self._identity is None:
            h = hashlib.sha256(b"geosteer-index-identity\0")
            h.update(os.fsencode(str(self.manifest["root"])) + b"\0")
            records = self.manifest.get("files") or [None] * len(self.manifest["paths"])
            for i, (p, rec) in enumerate(zip(self.manifest["paths"], records)):
                digest = rec[2].encode() if rec is not None and rec[2] is not None else b""
                h.update(b"%d\0" % i + os.fsencode(p) + b"\0" + digest + b"\0")
            self._identity = h.hexdigest()[:16]
        return self._identity

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
    def sizes(self) -> tuple[tuple[int, int] | None, ...]:
        """(width, height) of each row's image as indexed (upright by EXIF): the pixels its boxes are in.

        Recorded at indexing, so nothing re-opens the files; None where
        unknown (`write_index` given a path it could not read).
        """
        if self._sizes is None or len(self._sizes) != len(self.manifest["sizes"]):
            self._sizes = tuple(None if s is None else (int(s[0]), int(s[1])) for s in self.manifest["sizes"])
        return self._sizes

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

        The first access checks every embeddings shard's checksum, then
        gives the embeddings, boxes and mask the head's value checks once
        (`geosteer.inputs.certify_gallery`): the head does not pass over the
        whole gallery again on each call (a fingerprint of 1M x 512
        embeddings took ~200 ms a query). The tensors are the store's: write
        to the index with `add` / `sync` / `remove`, never into them (an
        in-place torch write brings the head's per-call checks back; a write
        through `.numpy()` goes unseen).

        Raises:
            StoreError: naming the shard whose embeddings are corrupt, or
                the index, when its tensors fail the head's checks.
        """
        if self._gallery is None:
            for entry, t in zip(self.manifest["shards"], self._shards):
                fmt.check_shard(self.path, entry, t, "embeddings")
            cat = (lambda name: self._shards[0][name]) if len(self._shards) == 1 else (
                lambda name: torch.cat([s[name] for s in self._shards]))
            with torch.inference_mode(False):  # versioned tensors: the head's check cache needs them
                # compact regions stay compact: the head reads int8 + scale / float16 in place (DESIGN §5)
                gallery = GallerySide(cat("embeddings"), parts=cat("parts"), parts_mask=cat("parts_mask"),
                                      part_boxes=cat("part_boxes"),
                                      parts_scale=cat("parts_scale") if "parts_scale" in self._shards[0] else None)
            try:
                certify_gallery(gallery)
            except ValueError as e:
                raise fmt.StoreError(f"index {str(self.path)!r}: {e}") from None
            self._gallery = gallery
        return self._gallery

    def prefetch(self, ids: Tensor) -> None:
        """Ask the OS to read the region rows of gallery rows `ids` (any shape, int; rows outside [0, N) ignored) ahead.

        The shards map the region tensors `MADV_RANDOM` (no read-around), and
        this issues one `posix_fadvise(WILLNEED)` per row and tensor
        (`format.prefetch_rows`), so the reads of K candidates go out
        together: on an index larger than memory the head's `part_cost`
        then finds them in the page cache (100 rows of a 35 GB shard, cold:
        2.6 ms, against 40 ms read one fault at a time). `Searcher` calls it
        on the FAISS candidates before the head.
        """
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(f"ids must be an integer tensor of gallery rows, got {got}")
        rows = ids.reshape(-1).tolist()
        if self._spans is None:  # once per opened manifest: each shard's first row and where its region rows lie
            bounds = [0]
            for s in self.manifest["shards"]:
                bounds.append(bounds[-1] + s["count"])
            self._spans = (bounds, [fmt.row_spans(*fmt.read_header(self.path / s["file"])[:2])
                                    for s in self.manifest["shards"]])
        bounds, spans = self._spans
        by_shard: dict[int, list[int]] = {}
        for r in rows:
            if 0 <= r < bounds[-1]:
                shard = bisect.bisect_right(bounds, r) - 1
                by_shard.setdefault(shard, []).append(r - bounds[shard])
        for shard, local in by_shard.items():
            fmt.prefetch_rows(self.path / self.manifest["shards"][shard]["file"], spans[shard], local)

    # -- the FAISS first stage

    def _embeddings_key(self) -> list[str]:
        """What a stored first stage was built from: each shard's embeddings checksum, in row order."""
        return [s["sha256"]["embeddings"] for s in self.manifest["shards"]]

    def build_first_stage(
        self, factory: str, *, nprobe: int | None = None, train_size: int | None = None, refine: int = 4,
        seed: int = 0,
    ):
        """Build a FAISS first stage over the embeddings by its factory string; store it beside the shards.

        `FaissFirstStage.build(embeddings, factory=factory, ...)` (trained on
        a sample of the mapped embeddings, added in chunks: no float32 copy
        of the gallery), written as `first_stage.faiss` + `first_stage.json`
        (atomically, the record last). Every `Searcher` over this index then
        takes its candidates from it (`Index.first_stage`), re-scoring the
        top `refine * K` exactly on the mapped embeddings.

        Args:
            factory: a FAISS factory string: "IVF4096,PQ64" (64 bytes a
                vector), "HNSW32", "Flat", ...
            nprobe: IVF lists searched per query (default nlist / 32).
            train_size: rows it is trained on (default `FaissFirstStage.build`'s).
            refine: candidates re-scored exactly, as a multiple of K (1: off).
            seed: the training sample.

        Returns:
            the `FaissFirstStage`.

        Raises:
            ImportError: faiss is not installed (names the extra).
            ValueError: a bad factory string or setting, naming it.
        """
        from geosteer.stages.first_stage_faiss import FaissFirstStage

        fs = FaissFirstStage.build(self.gallery.embeddings, factory=factory, nprobe=nprobe, train_size=train_size,
                                   refine=refine, seed=seed)
        (self.path / fmt.FIRST_STAGE_INFO).unlink(missing_ok=True)  # no record names a half-written file
        fmt.atomic_write(self.path / fmt.FIRST_STAGE, [memoryview(fs.serialize())])
        fmt.write_json(self.path / fmt.FIRST_STAGE_INFO, {"format": fmt.FORMAT_NAME, "embeddings": self._embeddings_key(),
                                                          **fs.info()})
        self._first_stage = fs
        return fs

    @property
    def first_stage(self):
        """The stored FAISS first stage (`build_first_stage`), opened memory-mapped once; None when there is none.

        One built before the embeddings last changed (`add`, `sync`,
        `remove`, `compact`) no longer covers the gallery: it is not used
        (a warning says to rebuild it; `geosteer index --faiss` does).

        Raises:
            ImportError: the index has one but faiss is not installed.
            StoreError: naming the file, when it cannot be read.
        """
        if self._first_stage is None:
            self._first_stage = self._open_first_stage() or False
        return self._first_stage or None

    @property
    def first_stage_record(self) -> dict[str, Any] | None:
        """The stored FAISS first stage's record (factory, nprobe, refine, sizes, timings), current or not; None if none.

        Raises:
            StoreError: naming the file, when it cannot be read.
        """
        path = self.path / fmt.FIRST_STAGE_INFO
        return fmt.read_json(path, "FAISS first stage record") if path.exists() else None

    def _open_first_stage(self):
        info = self.first_stage_record
        if info is None:
            return None
        if info.get("embeddings") != self._embeddings_key() or info.get("num_items") != len(self):
            warnings.warn(f"the FAISS first stage of {str(self.path)!r} ({info.get('factory')}) was built before the "
                          "index last changed and is not used; rebuild it: Index.build_first_stage or "
                          "geosteer index --faiss", RuntimeWarning, stacklevel=3)
            return None
        from geosteer.stages.first_stage_faiss import FaissFirstStage

        try:
            return FaissFirstStage.load(self.path / fmt.FIRST_STAGE, info)
        except (ValueError, KeyError, TypeError) as e:
            raise fmt.StoreError(f"FAISS first stage {str(self.path / fmt.FIRST_STAGE)!r} cannot be used: {e}") from None

    def verify(self) -> None:
        """Full check: every tensor of every shard against its checksum (reads every byte).

        Raises:
            StoreError: naming the first corrupt shard file and tensor.
        """
        for entry, t in zip(self.manifest["shards"], self._shards):
            for name in fmt.tensor_names(self.regions_dtype):
                fmt.check_shard(self.path, entry, t, name)

    # -- search

    def search(
        self,
        queries: Sequence[str] | QuerySide,
        config: HeadConfig | None = None,
        *,
        encoder=None,
        k: int = 10,
        vocabulary: dict[str, str] | None = None,
    ) -> SearchResult:
        """One search: `Searcher(index, encoder, config, k_max=k).search(queries, k=k)`.

        Runs exactly `GeoSteerHead(config.replace(k=K))(queries, index.gallery)`,
        K = `head_k(config.k, k, len(index))`, so small indexes work with any
        k. A service searching many times builds one `Searcher` instead
        (its heads are built once).

        Args:
            queries: captions (encoded with `encoder`: `Indexer.encode_queries`;
                a caption `split_parts` finds no object in is its own single
                part), or a `QuerySide` (without relations: padded with one
                empty row, R = 0, since the index always holds region boxes).
            config: the head's config (default `get_config("default")`).
            encoder: the index's encoder, for captions (default: the one given to `open`).
            k: results per query (capped at the index size).
            vocabulary: concept -> nearest confuser for the per-part negatives.

        Returns:
            A `SearchResult`.

        Raises:
            TypeError / ValueError: naming the bad argument; ValueError when
                `encoder` is not the index's; StoreError on corrupt embeddings.
        """
        check_positive_int("k", k)
        if config is not None and not isinstance(config, HeadConfig):
            raise TypeError(f"config must be a HeadConfig (geosteer.get_config(...)), got {type(config).__name__}")
        searcher = Searcher(self, encoder if encoder is not None else self.encoder, config, k_max=k,
                            vocabulary=vocabulary)
        return searcher.search(queries, k=k)

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
        regions_dtype: str = "float32",
    ) -> Index:
        """Index a folder (recursively) or a list of image files into `out`; resume an interrupted build there.

        Args:
            source: a folder, or a list of image files.
            out: the index folder (created; may exist empty, or hold an
                unfinished build of the same arguments, which is resumed).
            encoder: a `ClipEncoder` (`load_clip(...)`); the manifest records
                its name and pretrained tag, so `load_encoder` loads it again.
            regions: region method, a key of `geosteer.encoders.regions.METHODS`.
            max_regions: regions per image at most.
            batch_size: images decoded and encoded together.
            shard_size: images per shard: what an interruption loses at most.
            progress: a tqdm bar (images/s, skipped) on stderr, moving as
                images decode and as the encoder's batches finish.
            metadata: JSON-able notes kept in the manifest.
            regions_dtype: how region vectors are stored: "float32" (32 KiB
                an image at n = 16, D = 512), "float16" (half) or "int8" with
                a float32 scale per row (a quarter; `geosteer.quantize`).
                Recorded in the manifest; `add` / `sync` keep it.

        Returns:
            The opened `Index` (its `encoder` set, `stats` filled).

        Raises:
            FileNotFoundError / TypeError / ValueError: a bad argument, an
                empty source, an `out` holding something else, or a finished
                index / unfinished build made with other arguments.
            StoreError: no image of the source could be decoded.
        """
        folder, stats, fingerprint = builder.build(source, out, encoder, regions, max_regions, batch_size, shard_size,
                                                   progress, metadata, regions_dtype)
        index = cls.open(folder)
        index.encoder = encoder
        index._checked[encoder] = fingerprint  # just computed: no second pass over the weights
        index.stats = stats
        return index

    def new_files(self, source: str | os.PathLike | Sequence[str | os.PathLike],
                  retry_skipped: bool = False) -> list[Path]:
        """The image files of `source` that `add` would encode: not indexed, and (unless `retry_skipped`) not skipped before.

        Needs no encoder: a command learns that nothing is new before it loads a model.

        Raises:
            FileNotFoundError / TypeError / ValueError: a bad `source` (as
                `build`); TypeError: `retry_skipped` not a bool.
        """
        if not isinstance(retry_skipped, bool):
            raise TypeError(f"retry_skipped must be True or False, got {type(retry_skipped).__name__}")
        return builder.new_files(self.manifest, source, self.root, retry_skipped)

    def add(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        encoder,
        regions: str | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        retry_skipped: bool = False,
    ) -> Index:
        """Append the images of `source` not in the index yet (`new_files`), as new shards; then rewrite the manifest.

        Images already indexed are left out, even if changed on disk since
        (`sync` encodes those again and drops the deleted), and so are
        images skipped before (they failed to decode) unless
        `retry_skipped`. An interrupted `add` leaves the index as it was
        (the manifest is written last); run again, it resumes from its
        finished shards. Several shards are concatenated on the next
        `gallery` access; `compact()` merges them back into one.

        Args:
            source: a folder (recursive) or a list of image files.
            encoder: the index's encoder.
            regions: if given, must be the index's region method.
            batch_size: images encoded together (default: the build's).
            progress: a tqdm bar.
            retry_skipped: try the images skipped before again (replaced files).

        Returns:
            self, updated in place (`stats` filled).

        Raises:
            ValueError: another encoder or region method (naming both), bad arguments.
        """
        self._check_regions(regions)
        self.check_encoder(encoder)
        files = self.new_files(source, retry_skipped)
        ch = builder.Changes(new=files, stamps={f: builder._stamp(f) for f in files}, identity=self.identity)
        return self._apply(ch, encoder, batch_size, progress)

    def changes(self, source: str | os.PathLike | Sequence[str | os.PathLike],
                retry_skipped: bool = False) -> builder.Changes:
        """How the index differs from the image files of `source`: what `sync` would do. Needs no encoder.

        Each indexed image's file is compared with the record taken when it
        was read for encoding (size, mtime_ns and a blake2b hash of its
        bytes): size and mtime as recorded -> unchanged (not read); else
        its bytes are hashed: the same hash -> only touched (the record is
        updated), another -> changed. A row whose file a folder `source` no
        longer holds (deleted, renamed, or not a regular file any more) is
        deleted; rows outside the folder are left alone. A file changed in
        place with its size and mtime kept is not seen (as rsync / make).

        Args:
            source: a folder (recursive) or a list of image files.
            retry_skipped: count the images skipped before as new.

        Returns:
            A `geosteer.index.builder.Changes` (`bool()` of it: whether a sync would write anything).

        Raises:
            FileNotFoundError / TypeError / ValueError: a bad `source` (as `build`).
        """
        if not isinstance(retry_skipped, bool):
            raise TypeError(f"retry_skipped must be True or False, got {type(retry_skipped).__name__}")
        return builder.changes(self.manifest, source, self.root, self.identity, retry_skipped)

    def sync(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        encoder=None,
        *,
        batch_size: int | None = None,
        progress: bool = True,
        retry_skipped: bool = False,
        changes: builder.Changes | None = None,
    ) -> Index:
        """Bring the index in line with the image files of `source`: encode the new and the changed, drop the deleted.

        What it does is `changes(source)`: new files are encoded and
        appended; a changed image's row is dropped and the file encoded
        again (appended: its row id changes); a deleted image's row is
        dropped, as are skipped entries the folder no longer holds.
        `stats` gets the counts ("new", "changed", "deleted", "forgotten",
        "touched", "adopted", "unchanged") besides "encoded" / "skipped".

        Rows indexed without a file record (a format 2 index, or
        `write_index`) cannot be compared: they are taken as they are now
        (their size and mtime recorded, "adopted"), with one RuntimeWarning
        saying so; from then on they are compared like the others. An
        image replaced before that first sync keeps its old embedding:
        rebuild the index to be sure.

        Atomic and resumable, as a build: new shards first, then the
        shards that lose rows rewritten as new files, the manifest last;
        interrupted, the index opens as it was, and the same sync run again
        resumes from its finished shards (kept in sync.json).

        Args:
            source: a folder (recursive) or a list of image files.
            encoder: the index's encoder; needed only if there is something to encode.
            batch_size: images encoded together (default: the build's).
            progress: a tqdm bar.
            retry_skipped: try the images skipped before again.
            changes: `self.changes(source, retry_skipped)` computed already
                (a command shows them before loading a model).

        Returns:
            self, updated in place (`stats` filled).

        Raises:
            ValueError: no encoder (or another one) with images to encode;
                `changes` computed for another state of the index; the sync
                would leave the index empty.
        """
        ch = changes if changes is not None else self.changes(source, retry_skipped)
        if not isinstance(ch, builder.Changes):
            raise TypeError(f"changes must come from Index.changes(...), got {type(ch).__name__}")
        if ch.identity != self.identity:
            raise ValueError(f"changes were computed for another state of index {str(self.path)!r}; compute them again")
        if ch.to_encode:
            if encoder is None:
                raise ValueError(f"{len(ch.to_encode)} images of {str(source)!r} are new or changed: pass the index's "
                                 f"encoder (index.load_encoder())")
            self.check_encoder(encoder)
        if ch.adopted:
            warnings.warn(f"index {str(self.path)!r}: {len(ch.adopted)} images were indexed without a file record "
                          f"(format 2, or write_index): recorded as they are now, so one replaced before this sync "
                          f"keeps its old embedding; rebuild the index to be sure", RuntimeWarning, stacklevel=2)
        return self._apply(ch, encoder, batch_size, progress)

    def remove(self, paths: Sequence[str | os.PathLike]) -> Index:
        """Drop the rows of these images (and forget them where they were skipped); no encoder needed.

        Atomic as `sync`: the shards that hold the rows are rewritten
        without them as new files, the manifest replaced last. The images'
        files are not touched.

        Args:
            paths: recorded paths (`index.paths`, `index.skipped`) or the image files.

        Returns:
            self, updated in place (`stats` filled: "deleted", "forgotten").

        Raises:
            TypeError: `paths` not a list of paths.
            ValueError: a path the index neither holds nor skipped (naming it);
                removing every row (delete the index instead).
        """
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence) or not all(
                isinstance(p, (str, os.PathLike)) for p in paths):
            raise TypeError(f"paths must be a list of paths, got {type(paths).__name__}")
        rows = set(self.manifest["paths"])
        skipped = {s["path"] for s in self.manifest["skipped"]}
        roots = list(dict.fromkeys([Path(self.manifest["root"]), self.root]))
        ch = builder.Changes(identity=self.identity)
        for p in dict.fromkeys(paths):
            found = p if isinstance(p, str) and (p in rows or p in skipped) else next(
                (q for q in (fmt.record_path(Path(p).expanduser().absolute(), r) for r in roots)
                 if q in rows or q in skipped), None)
            if found is None:
                raise ValueError(f"{str(p)!r} is not an image of index {str(self.path)!r} (neither indexed nor skipped)")
            (ch.deleted if found in rows else ch.forgotten).append(found)
        return self._apply(ch, None, None, False)

    def _apply(self, ch: builder.Changes, encoder, batch_size: int | None, progress: bool) -> Index:
        manifest, self.stats = builder.sync(self.path, self.manifest, ch, encoder, batch_size, progress, self.root)
        if manifest is not self.manifest:
            self._reload(manifest)
        return self

    def _check_regions(self, regions: str | None) -> None:
        if regions is not None and check_method(regions) and regions != self.manifest["regions"]:
            raise ValueError(f"regions={regions!r} differs from the index's region method {self.manifest['regions']!r} "
                             f"({str(self.path)!r}); an index holds one method")

    def compact(self) -> Index:
        """Merge every shard into one (a streamed copy), so `gallery` is zero-copy again; self, updated.

        Crash-safe: the merged shard gets a new name and the manifest is
        replaced last; the old shards are removed after.
        """
        manifest = builder.compact(self.path, self.manifest)
        if manifest is not self.manifest:
            self._reload(manifest)
        return self

    def _reload(self, manifest: dict) -> None:
        self.manifest = manifest
        self._shards = [fmt.map_shard(self.path / s["file"], s["count"], manifest["n"], manifest["dim"],
                                      fmt.regions_dtype_of(manifest))
                        for s in manifest["shards"]]
        self._gallery = None
        self._paths = None
        self._sizes = None
        self._identity = None
        self._first_stage = None
        self._spans = None


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
    sizes: Sequence[Sequence[int] | None] | None = None,
    regions_dtype: str = "float32",
) -> Index:
    """Write a `GallerySide` you already have (one row per path) as an index folder, without an encoder.

    Args:
        gallery: embeddings `[N, D]` float32, parts `[N, n, D]` float32,
            parts_mask `[N, n]` bool, part_boxes `[N, n, 4]`; or an iterable
            of such `GallerySide` blocks, in row order, adding up to N rows:
            each is compacted and written as it comes, so a gallery larger
            than memory is written from blocks made one at a time.
        paths: N image paths (recorded relative to `root` where they lie under it).
        out: a new or empty folder.
        encoder: a `ClipEncoder`, or (name, fingerprint) of the encoder that made `gallery`.
        regions: the region method that made the parts.
        max_regions: recorded cap (default n).
        shard_size: rows per shard (default: all in one).
        root: what paths are relative to (default: their common folder).
        skipped: {"path", "error"} entries to record.
        metadata: JSON-able notes kept in the manifest.
        sizes: N (width, height) of the images the boxes are pixels of (None
            entries: unknown); default: read from each file's header (EXIF
            orientation applied), None for a file that cannot be read.
        regions_dtype: "float32", "float16" or "int8" (+ a float32 scale per
            row), as `Index.build`; compacted with `geosteer.quantize.compact_parts`.

    Returns:
        The opened `Index`.

    Raises:
        TypeError / ValueError: naming the bad argument.
    """
    folder = builder.write_gallery(gallery, paths, out, encoder=encoder, regions=regions, max_regions=max_regions,
                                   shard_size=shard_size, root=root, skipped=skipped, metadata=metadata, sizes=sizes,
                                   regions_dtype=regions_dtype)
    return Index.open(folder, encoder=None if isinstance(encoder, tuple) else encoder)
