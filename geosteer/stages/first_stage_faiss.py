"""A FAISS first stage for large galleries (DESIGN §1, stage 0).

The head's exact first stage scores every query against every gallery item.
For millions of items, build an approximate inner-product index once and pass
its candidates to the head instead::

    from geosteer.stages.first_stage_faiss import FaissFirstStage

    index = FaissFirstStage.build(gallery, kind="ivf")       # once, [N, D]
    scores, ids = index.search(query, k=100)                 # [Q, 100] each
    result = head(query, gallery, gallery_parts=..., query_parts=...,
                  first_stage=(scores, ids))

Any FAISS index by its factory string (`FaissFirstStage.build(gallery,
factory="IVF4096,PQ64")`: 64 bytes a vector), trained on a sample; with
`refine` the index's top `refine * k` are re-scored exactly on the gallery's
own embeddings, which PQ's codes only approximate. `serialize` / `load`
keep it in a file, opened memory-mapped (the on-disk index stores one:
`Index.build_first_stage`, `geosteer index --faiss`).

`faiss` is imported lazily, so geosteer works without it; install it with
`pip install 'geosteer[faiss]'` (the `faiss-cpu` package). The index lives on
the CPU; tensors from any device are copied over in chunks and the results
come back on the query's device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PADDING_SCORE", "FaissFirstStage", "check_factory", "import_faiss", "recall_at_k"]

#: The score of a filter's padding (a disallowed id filling a row short of k): below every cosine, so it sorts
#: last, and inside the head's range check of first-stage scores ([-1.01, 1.01]), so the head takes the row.
PADDING_SCORE = -1.001

Kind = Literal["ivf", "hnsw", "flat"]
_KINDS = ("ivf", "hnsw", "flat")
_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def import_faiss():
    """Import `faiss`, or raise an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as error:
        # Style 12: only a missing faiss itself is turned into the hint;
        # a broken dependency of an installed faiss is re-raised as is.
        if error.name not in (None, "faiss"):
            raise
        raise ImportError(
            "the FAISS first stage needs the optional `faiss` module: "
            "pip install 'geosteer[faiss]'  (installs faiss-cpu)"
        ) from error
    return faiss


@dataclass
class FaissFirstStage:
    """An inner-product FAISS index over an L2-normalised gallery.

    Build it with `FaissFirstStage.build`; `search` (or calling it) returns
    the `(scores, ids)` pair the head's `first_stage=` argument takes.

    Attributes:
        index: the `faiss.Index` (METRIC_INNER_PRODUCT).
        kind: "ivf" (IndexIVFFlat), "hnsw" (IndexHNSWFlat) or "flat" (exact).
        num_items: N, gallery size.
        dim: D.
        nprobe: IVF lists visited per query (recall vs speed).
        ef_search: HNSW search breadth (raised to at least k per search).
        timings: seconds spent in "train" and "add" while building.
        factory: the FAISS factory string it was built from (None: `kind`'s own).
        refine: with a `gallery` passed to `search`, the index's top
            `refine * k` are re-scored exactly and the best k kept (1: off).
    """

    index: Any
    kind: str
    num_items: int
    dim: int
    nprobe: int | None = None
    ef_search: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    factory: str | None = None
    refine: int = 1

    @classmethod
    def build(
        cls,
        gallery: Tensor | np.ndarray,
        kind: Kind = "ivf",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        train_size: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int | None = None,
        seed: int = 0,
        chunk_items: int = 65_536,
        factory: str | None = None,
        refine: int = 1,
    ) -> "FaissFirstStage":
        """Index `gallery [N, D]` (L2-normalised) for inner-product search.

        Args:
            gallery: `[N, D]` float tensor (any device, any float dtype) or
                array; copied to float32 on the CPU in chunks.
            kind: "ivf" (inverted lists, trained by k-means on a sample;
                the fast build for large N), "hnsw" (graph, slow to build,
                fast and accurate to search) or "flat" (exact, no training).
            nlist: IVF lists; default `min(4 * sqrt(N), N // 39)`.
            nprobe: IVF lists searched per query; default `ceil(nlist / 32)`.
            train_size: IVF k-means sample; default `min(N, 64 * nlist)`
                (FAISS wants at least 39 points per list).
            hnsw_m: HNSW graph degree.
            ef_construction: HNSW build breadth.
            ef_search: HNSW search breadth; default `max(2 * k, 64)`.
            seed: picks the IVF training sample and seeds k-means.
            chunk_items: rows converted and added per step.
            factory: a FAISS factory string (`"IVF4096,PQ64"`, `"HNSW32"`,
                `"Flat"`, ...) built with the inner-product metric instead
                of `kind`'s index; trained (when it needs training) on
                `train_size` rows, default `min(N, max(40 * nlist, 10000))`
                (FAISS asks 39 points per IVF list and per PQ centroid);
                `nprobe` defaults as for "ivf".
            refine: keep for `search`: re-score the top `refine * k`
                exactly when it is given the gallery (1: off).

        Returns:
            A `FaissFirstStage`.

        Raises:
            ImportError: faiss is not installed (names the `faiss` extra).
            TypeError / ValueError: bad gallery or parameters, naming them.
        """
        faiss = import_faiss()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if isinstance(refine, bool) or not isinstance(refine, int) or refine < 1:
            raise ValueError(f"refine must be a positive int, got {refine!r}")
        num_items, dim = _check_gallery(gallery)
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("train_size", train_size),
                            ("ef_search", ef_search)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction), ("chunk_items", chunk_items)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

        timings: dict[str, float] = {}
        metric = faiss.METRIC_INNER_PRODUCT
        if factory is not None:
            index, kind, nprobe = _from_factory(faiss, factory, dim, num_items, nprobe)
            if not index.is_trained:
                ivf = faiss.try_extract_index_ivf(index)
                nlist = 0 if ivf is None else ivf.nlist
                train_size = min(num_items, train_size or max(40 * nlist, 10_000))
                if train_size < nlist:
                    raise ValueError(f"train_size={train_size} must be at least the factory's nlist={nlist}")
                if ivf is not None:
                    ivf.cp.seed = seed
                sample = np.sort(np.random.default_rng(seed).choice(num_items, size=train_size, replace=False))
                start = time.perf_counter()
                index.train(_rows(gallery, sample))
                timings["train"] = time.perf_counter() - start
        elif kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
            index.hnsw.efConstruction = ef_construction
        else:
            nlist = nlist or max(1, min(int(4 * math.sqrt(num_items)), num_items // 39))
            if nlist > num_items:
                raise ValueError(f"nlist={nlist} exceeds the gallery size N={num_items}")
            train_size = min(num_items, train_size or 64 * nlist)
            if train_size < nlist:
                raise ValueError(f"train_size={train_size} must be at least nlist={nlist}")
            nprobe = min(nlist, nprobe or max(1, math.ceil(nlist / 32)))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
            index.cp.seed = seed
            sample = np.sort(np.random.default_rng(seed).choice(num_items, size=train_size, replace=False))
            start = time.perf_counter()
            index.train(_rows(gallery, sample))
            timings["train"] = time.perf_counter() - start

        start = time.perf_counter()
        for first in range(0, num_items, chunk_items):
            index.add(_rows(gallery, slice(first, min(first + chunk_items, num_items))))
        timings["add"] = time.perf_counter() - start
        return cls(index, kind, num_items, dim, nprobe=nprobe, ef_search=ef_search, timings=timings,
                   factory=factory, refine=refine)

    def info(self) -> dict[str, Any]:
        """What `load` needs beside the FAISS file (JSON-able): kind, sizes, search settings, how it was built."""
        return {"kind": self.kind, "factory": self.factory, "num_items": self.num_items, "dim": self.dim,
                "nprobe": self.nprobe, "ef_search": self.ef_search, "refine": self.refine,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}

    def serialize(self) -> np.ndarray:
        """The FAISS index as bytes (`faiss.serialize_index`: a uint8 array), for the caller to write atomically."""
        return import_faiss().serialize_index(self.index)

    @classmethod
    def load(cls, path: str | Path, info: dict[str, Any], mmap: bool = True) -> "FaissFirstStage":
        """Open a FAISS index file written from `serialize()`, with the `info()` it was saved with.

        Args:
            path: the file.
            info: `info()` of the saved index.
            mmap: map the file read-only (`IO_FLAG_MMAP`: IVF lists are paged
                in as searched, not read whole); False reads it into memory.

        Raises:
            TypeError / ValueError: `info` is not a dict holding kind,
                num_items and dim; naming the file, when FAISS cannot read it
                or it does not match `info` (size, dimension).
        """
        if not isinstance(info, dict) or not {"kind", "num_items", "dim"} <= info.keys():
            raise TypeError(f"info must be the dict FaissFirstStage.info() gave (kind, num_items, dim, ...), got {info!r}")
        faiss = import_faiss()
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise ValueError(f"FAISS index {str(path)!r} cannot be read: {str(e).splitlines()[0]}") from None
        if index.ntotal != info["num_items"] or index.d != info["dim"]:
            raise ValueError(f"FAISS index {str(path)!r} holds {index.ntotal} x {index.d} vectors, "
                             f"its record says {info['num_items']} x {info['dim']}")
        return cls(index, info["kind"], int(info["num_items"]), int(info["dim"]), nprobe=info.get("nprobe"),
                   ef_search=info.get("ef_search"), timings=dict(info.get("timings", {})),
                   factory=info.get("factory"), refine=int(info.get("refine", 1)))

    def search(
        self, query: Tensor, k: int, allowed: Tensor | None = None, gallery: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Top-`k` gallery items of each query by inner product.

        Args:
            query: `[Q, D]` float tensor (normalised here, as the head does).
            k: candidates per query, `1 <= k <= N`; pass at least the head's k.
            gallery: the gallery's embeddings `[N, D]` (the store's mapped
                float32): with `refine > 1`, the index's top `refine * k`
                are re-scored exactly on these rows (only those rows are
                read) and the best k kept, with their exact scores.
            allowed: a filter, `[N]` bool (True = may be returned), searched
                with a FAISS `IDSelectorBatch` (`SearchParameters(sel=...)`),
                so the index returns k allowed items, not k items filtered
                afterwards. When it allows M < k items, each row holds them
                and then k - M disallowed ids at `PADDING_SCORE` as padding: pass the
                same `allowed` to the head, which marks them (id -1).

        Returns:
            scores `[Q, k]` float32 descending, ids `[Q, k]` int64, on
            `query.device`: the head's `first_stage=(scores, ids)`.

        Raises:
            TypeError / ValueError: bad query, k or allowed; or the index found
                fewer than k (under a filter: fewer than min(k, M)) items for
                some query (FAISS pads those with -1): raise `nprobe` (IVF) or
                `ef_search` (HNSW).
        """
        if not isinstance(query, Tensor):
            raise TypeError(f"query must be a torch.Tensor [Q, D], got {type(query).__name__}")
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise ValueError(f"query must have shape [Q, D={self.dim}], got {tuple(query.shape)}")
        if query.dtype not in _FLOAT_TYPES:
            raise TypeError(f"query must be a float tensor, got {query.dtype}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise ValueError(f"k must be an int in [1, N={self.num_items}], got {k!r}")
        if query.shape[0] and not bool(torch.isfinite(query).all()):
            raise ValueError("query contains NaN or inf entries; embeddings must be finite")
        keep = None if allowed is None else self._allowed(allowed)
        if self.kind == "ivf":
            import_faiss().extract_index_ivf(self.index).nprobe = self.nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = max(k, self.ef_search or max(2 * k, 64))
        qf = F.normalize(query.detach().float(), dim=-1).cpu()
        q = np.ascontiguousarray(qf.numpy())
        fetch = min(self.num_items, self.refine * k) if gallery is not None else k
        if keep is None:
            scores, ids = self.index.search(q, fetch)
        else:
            scores, ids = self._filtered_search(q, fetch, keep)
        if fetch > k:
            scores, ids = _rescored(qf, gallery, scores, ids, keep, k)
        missing = ids < 0
        if missing.any():
            rows = int(missing.any(axis=1).sum())
            if self.kind == "ivf":
                knob = f"nprobe (now {self.nprobe})"
            elif self.kind == "hnsw":
                knob = f"ef_search (now {self.index.hnsw.efSearch})"
            else:
                knob = "k"
            raise ValueError(
                f"the {self.kind} index returned fewer than k={k} candidates for {rows} of {len(ids)} queries; raise {knob}"
            )
        return (
            torch.from_numpy(scores).to(query.device),
            torch.from_numpy(ids).to(device=query.device, dtype=torch.long),
        )

    __call__ = search

    def _allowed(self, allowed: Tensor) -> np.ndarray:
        """The filter as a `[N]` numpy bool array (checked)."""
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
            got = allowed.dtype if isinstance(allowed, Tensor) else type(allowed).__name__
            raise TypeError(f"allowed must be a bool tensor [N={self.num_items}], got {got}")
        if allowed.shape != (self.num_items,):
            raise ValueError(f"allowed must be [N={self.num_items}] bool (one filter for every query), "
                             f"got {list(allowed.shape)}")
        return allowed.cpu().numpy()

    def _filtered_search(self, q: np.ndarray, k: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search among the `keep` ids only; rows short of k by design (M < k) padded with disallowed ids."""
        faiss = import_faiss()
        sel = faiss.IDSelectorBatch(np.flatnonzero(keep).astype(np.int64))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.index.hnsw.efSearch)
        else:
            params = faiss.SearchParameters(sel=sel)
        scores, ids = self.index.search(q, k, params=params)
        num_allowed = int(keep.sum())
        if num_allowed < k:  # every row can hold only M: pad the rows that found them all
            pad = np.flatnonzero(~keep)[: k - num_allowed]
            full = (ids[:, :num_allowed] >= 0).all(axis=1)
            ids[full, num_allowed:] = pad
            scores[full, num_allowed:] = PADDING_SCORE
        return scores, ids


def check_factory(factory: str, dim: int) -> None:
    """Raise unless faiss imports and `factory` makes an inner-product index of dimension `dim` (nothing is trained).

    For a command to refuse a bad `--faiss` before hours of encoding, not after.

    Raises:
        ImportError: faiss is not installed (names the extra).
        ValueError: naming the factory string and what FAISS said; `dim` not a positive int.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    _parse_factory(import_faiss(), factory, dim)


def _parse_factory(faiss, factory: str, dim: int):
    """`faiss.index_factory(dim, factory, inner product)`, or a ValueError naming the string."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a FAISS factory string such as 'IVF4096,PQ64', got {factory!r}")
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"factory {factory!r} is not a FAISS index for D={dim}: {str(e).splitlines()[0]}") from None


def _from_factory(faiss, factory: str, dim: int, num_items: int, nprobe: int | None) -> tuple[Any, str, int | None]:
    """`faiss.index_factory(dim, factory, inner product)`, its kind ("ivf", "hnsw" or "flat") and its nprobe."""
    index = _parse_factory(faiss, factory, dim)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        if ivf.nlist > num_items:
            raise ValueError(f"factory {factory!r} has nlist={ivf.nlist} lists, more than the gallery's N={num_items}")
        return index, "ivf", min(ivf.nlist, nprobe or max(1, math.ceil(ivf.nlist / 32)))
    return index, "hnsw" if hasattr(index, "hnsw") else "flat", None


def _rescored(query: Tensor, gallery: Tensor, scores: np.ndarray, ids: np.ndarray, keep: np.ndarray | None,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of each row of candidates `ids [Q, k']` by exact inner product with `gallery [N, D]`.

    Rows FAISS left short (-1) score -inf; a filter's padding (disallowed
    ids) scores `PADDING_SCORE`, below every cosine and above -inf, so it
    stays padding.
    """
    idx = torch.from_numpy(ids)
    found = idx >= 0
    rows = gallery[idx.clamp(min=0).to(gallery.device)].float().cpu()  # [Q, k', D]: only these rows are read
    exact = torch.einsum("qd,qkd->qk", query, rows)
    if keep is not None:
        exact = torch.where(torch.from_numpy(keep)[idx.clamp(min=0)], exact, torch.full_like(exact, PADDING_SCORE))
    exact = torch.where(found, exact, torch.full_like(exact, float("-inf")))
    top = exact.topk(k, dim=1)
    return np.ascontiguousarray(top.values.numpy()), np.ascontiguousarray(idx.gather(1, top.indices).numpy())


def recall_at_k(approx_ids: Tensor, exact_ids: Tensor) -> float:
    """Mean fraction of each query's exact top-K found among its approximate candidates.

    Args:
        approx_ids: `[Q, K']` ids from the index.
        exact_ids: `[Q, K]` exact top-K ids (e.g. `geosteer::first_stage`).

    Returns:
        recall@K in [0, 1] (1.0 for Q = 0).
    """
    if approx_ids.ndim != 2 or exact_ids.ndim != 2 or approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(
            f"approx_ids [Q, K'] and exact_ids [Q, K] need the same Q, got {tuple(approx_ids.shape)} and {tuple(exact_ids.shape)}"
        )
    if exact_ids.shape[0] == 0 or exact_ids.shape[1] == 0:
        return 1.0
    hits = (exact_ids.cpu()[:, :, None] == approx_ids.cpu()[:, None, :]).any(dim=2)  # [Q, K]
    return float(hits.float().mean())


def _check_gallery(gallery) -> tuple[int, int]:
    if isinstance(gallery, np.ndarray):
        if gallery.ndim != 2 or not np.issubdtype(gallery.dtype, np.floating):
            raise ValueError(f"gallery must be a float array [N, D], got {gallery.dtype} {gallery.shape}")
    elif isinstance(gallery, Tensor):
        if gallery.ndim != 2:
            raise ValueError(f"gallery must have shape [N, D], got {tuple(gallery.shape)}")
        if gallery.dtype not in _FLOAT_TYPES:
            raise TypeError(f"gallery must be a float tensor, got {gallery.dtype}")
    else:
        raise TypeError(f"gallery must be a torch.Tensor or numpy array [N, D], got {type(gallery).__name__}")
    num_items, dim = gallery.shape
    if num_items == 0 or dim == 0:
        raise ValueError(f"gallery must be non-empty, got shape {tuple(gallery.shape)}")
    return int(num_items), int(dim)


def _rows(gallery: Tensor | np.ndarray, which) -> np.ndarray:
    """Selected rows as a C-contiguous float32 array, checked finite."""
    if isinstance(gallery, Tensor):
        if isinstance(which, np.ndarray):
            which = torch.from_numpy(which).to(gallery.device)
        block = np.ascontiguousarray(gallery[which].detach().float().cpu().numpy())
    else:
        block = np.ascontiguousarray(gallery[which], dtype=np.float32)
    if not np.isfinite(block).all():
        raise ValueError("gallery contains NaN or inf entries; embeddings must be finite")
    return block
