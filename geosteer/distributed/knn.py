"""The kNN graph of a sharded gallery (neighbourhood mode), built with the search's own collectives.

`geosteer.knn_graph` searches each item's k nearest other items in the
whole gallery; across shards each item's neighbours may live anywhere. Each
rank in turn broadcasts a block of its rows; every rank answers with its
shard's top-(k+1) for them (`geosteer::first_stage`); the block's owner
merges the answers (score desc, global id asc, as the sharded first stage)
and drops the item itself, as `geosteer.stages.rerank.neighbours_of` does.
Work: the N x N x D of the single-process graph, split over the ranks;
traffic: every row once to every rank, plus (k+1) pairs per row and rank back.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from geosteer.distributed.first_stage import local_top, merge_candidates
from geosteer.distributed.shard import ShardedGallery
from geosteer.config import HeadConfig
from geosteer.ops import checks


def sharded_knn_graph(gallery: ShardedGallery, k: int, *, block_rows: int = 4096, backend: str = "auto",
                      screen: str = "auto", chunk_elements: int = 1 << 24) -> Tensor:
    """Each local row's `k` nearest other items of the whole sharded gallery (a collective).

    Args:
        gallery: this rank's shard (embeddings L2-normalised, finite).
        k: neighbours per item, in [1, N - 1].
        block_rows: rows broadcast at once.
        backend, screen, chunk_elements: as in `HeadConfig`.

    Returns:
        `[N_r, k]` int64 *global* ids, nearest first: pass it back with
        `gallery.with_neighbors(graph)`.

    Raises:
        TypeError / ValueError (on every rank, as `RankFailure` kinds): bad
            k or block_rows, a shard with NaN / inf.
    """
    comm = gallery.comm
    emb = gallery.local.embeddings
    num_items = gallery.num_items
    with comm.step("knn"):
        for name, value in (("k", k), ("block_rows", block_rows)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
        if not 1 <= k < num_items:
            raise ValueError(f"k must be an int in [1, N-1] = [1, {num_items - 1}] (gallery has N={num_items}), got {k!r}")
        if block_rows < 1:
            raise ValueError(f"block_rows must be a positive int, got {block_rows!r}")
        cfg = HeadConfig(k=k + 1, backend=backend, screen=screen, chunk_elements=chunk_elements)
        checks.check_finite(emb, "gallery")
    k, block_rows = int(k), int(block_rows)
    graph = torch.empty(emb.shape[0], k, dtype=torch.long, device=emb.device)
    for src, count in enumerate(gallery.counts):
        for start in range(0, count, block_rows):
            rows = min(block_rows, count - start)
            block = emb[start : start + rows].contiguous() if comm.rank == src else emb.new_empty(rows, emb.shape[1])
            comm.broadcast_(block, src, "knn")
            with comm.step("knn"):
                mine = local_top(cfg, block, emb, gallery.offset, k + 1)
            answers = comm.gather(mine, src, "knn")
            with comm.step("knn"):  # on every rank: the step's flag is a collective
                if answers is not None:
                    _, top = merge_candidates(answers, k + 1)  # [rows, k+1] global ids
                    me = torch.arange(start, start + rows, device=emb.device) + gallery.offset
                    # As neighbours_of: the item itself to the end (stable), keep the first k.
                    order = (top == me[:, None]).to(torch.int8).argsort(dim=1, stable=True)
                    graph[start : start + rows] = top.gather(1, order)[:, :k]
    return graph
