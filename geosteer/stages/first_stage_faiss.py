"""A FAISS first stage for large galleries (DESIGN §1, stage 0).

The head's exact first stage scores every query against every gallery item.
For millions of items, build an approximate inner-product index once and pass
its candidates to the head instead::

    from geosteer.stages.first_stage_faiss import FaissFirstStage

    index = FaissFirstStage.build(gallery, kind="ivf")       # once, [N, D]
    scores, ids = index.search(query, k=100)                 # [Q, 100] each
    result = head(query, gallery, gallery_parts=..., query_parts=...,
                  first_stage=(scores, ids))

`faiss` is imported lazily, so geosteer works without it; install it with
`pip install 'geosteer[faiss]'` (the `faiss-cpu` package). The index lives on
the CPU; tensors from any device are copied over in chunks and the results
come back on the query's device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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
    """

    index: Any
    kind: str
    num_items: int
    dim: int
    nprobe: int | None = None
    ef_search: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

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

        Returns:
            A `FaissFirstStage`.

        Raises:
            ImportError: faiss is not installed (names the `faiss` extra).
            TypeError / ValueError: bad gallery or parameters, naming them.
        """
        faiss = import_faiss()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
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
        if kind == "flat":
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
        return cls(index, kind, num_items, dim, nprobe=nprobe, ef_search=ef_search, timings=timings)

    def search(self, query: Tensor, k: int, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Top-`k` gallery items of each query by inner product.

        Args:
            query: `[Q, D]` float tensor (normalised here, as the head does).
            k: candidates per query, `1 <= k <= N`; pass at least the head's k.
            allowed: a filter, `[N]` bool (True = may be returned), searched
                with a FAISS `IDSelectorBatch` (`SearchParameters(sel=...)`),
                so the index returns k allowed items, not k items filtered
                afterwards. When it allows M < k items, each row holds them
                and then k - M disallowed ids at score -1 as padding: pass the
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
            self.index.nprobe = self.nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = max(k, self.ef_search or max(2 * k, 64))
        q = np.ascontiguousarray(F.normalize(query.detach().float(), dim=-1).cpu().numpy())
        if keep is None:
            scores, ids = self.index.search(q, k)
        else:
            scores, ids = self._filtered_search(q, k, keep)
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
            scores[full, num_allowed:] = -1.0
        return scores, ids


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
