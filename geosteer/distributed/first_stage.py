"""The sharded first stage: each rank's own top-K, then one merge into the global top-K pool.

The global top-K of a query is contained in the union of the shards' top-K
lists (an item outside its own shard's top K has K better items in that
shard alone), so gathering K (score, global id) pairs per rank and query
and keeping the best K of the W·K is exact. Ties are broken by global id
(smaller first), the same on every rank.

Each rank scores its shard with the head's exact first stage
(`geosteer::first_stage`, bf16 screen included) or with its own FAISS
index (`ShardedGallery.build_faiss`; per-shard IVF lists, merged the same way).

Under a filter (`ShardedHead`'s `allowed`, this shard's slice) each rank
takes the top-K of its allowed rows (`geosteer::masked_first_stage`, or
FAISS's `IDSelectorBatch`), as the head does on the whole gallery; a shard
with fewer allowed rows than K pads with (-inf, id -1), which sorts after
every real candidate. The merge is then the global top-K of the allowed
items, and where all the shards together allow fewer than K, the pool ends
in that padding: the head's padding (id -1, score -inf, last).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.config import HeadConfig
from geosteer.inputs import MAX_FIRST_STAGE_SCORE
from geosteer.ops import checks
from geosteer.ops.first_stage import first_stage as exact_first_stage
from geosteer.ops.first_stage import masked_first_stage

#: Where a rank's first stage comes from: its FAISS index when it has one ("auto"), always exact, always FAISS.
FIRST_STAGES = ("auto", "exact", "faiss")


def local_top(
    cfg: HeadConfig, query: Tensor, embeddings: Tensor, offset: int, num_cands: int, faiss_index=None,
    allowed: Tensor | None = None,
) -> Tensor:
    """This shard's top-`min(K, N_r)` candidates (among its allowed rows), padded to K, as (score, global id) pairs.

    Args:
        cfg: the head's config (chunk_elements, backend, screen; λ, α, β for the score check).
        query: `[Q, D]` L2-normalised queries.
        embeddings: `[N_r, D]` this shard's embeddings.
        offset: global id of the shard's first row.
        num_cands: K, the global pool size.
        faiss_index: a `FaissFirstStage` over `embeddings`, or None (exact).
        allowed: this shard's filter, `[N_r]` or `[Q, N_r]` bool (checked by
            the caller, `check_allowed`; FAISS takes `[N_r]` only), or None.

    Returns:
        `[Q, K, 2]` float64: score (float32 values), global id; padding
        columns score -inf, id -1: past N_r, and under `allowed` past the
        row's allowed items (kept by the merge only where the shards
        together allow fewer than K: the head's padding).

    Raises:
        ValueError: FAISS returned fewer than min(K, N_r) items (under a
            filter: min(K, allowed rows)), or scores that are not cosines
            (as the head checks an external first stage); a `[Q, N_r]`
            filter with FAISS.
    """
    num_queries, num_items = query.shape[0], embeddings.shape[0]
    k = min(num_cands, num_items)
    if faiss_index is None and allowed is not None:
        scores, ids = masked_first_stage(query, embeddings, allowed, k, cfg.chunk_elements)
    elif faiss_index is None:
        scores, ids = exact_first_stage(query, embeddings, k, cfg.chunk_elements, cfg.backend, cfg.screen)
    else:
        scores, ids = faiss_index.search(query, k, allowed=allowed)
        if cfg.lam < 1 or cfg.alpha > 0 or cfg.beta > 0:
            checks.check_range(scores, "first_stage scores", MAX_FIRST_STAGE_SCORE,
                               "cosines q·c of L2-normalised embeddings; build the FAISS index with inner products")
        top = scores.float().topk(k, dim=1, sorted=True)  # as the head re-sorts an external first stage
        scores, ids = top.values, ids.long().gather(1, top.indices)
    out = torch.full((num_queries, num_cands, 2), -1.0, dtype=torch.float64, device=query.device)
    out[:, :, 0] = float("-inf")
    out[:, :k, 0] = scores.double()
    out[:, :k, 1] = (ids + offset).double()  # exact: ids < 2^53
    if allowed is not None:  # a row's picks past its allowed items (disallowed ids) become padding
        keep = allowed.expand(num_queries, -1).gather(1, ids)
        out[:, :k][~keep] = torch.tensor([float("-inf"), -1.0], dtype=torch.float64, device=query.device)
    return out


def merge_candidates(gathered: Tensor, num_cands: int) -> tuple[Tensor, Tensor]:
    """The global top-K of every rank's `local_top`, best first (score desc, then global id asc).

    Args:
        gathered: `[W, Q, K, 2]` float64 (score, global id) per rank.
        num_cands: K.

    Returns:
        scores `[Q, K]` float32 descending; ids `[Q, K]` int64 global ids.
    """
    world, num_queries, width, _ = gathered.shape
    flat = gathered.permute(1, 0, 2, 3).reshape(num_queries, world * width, 2)
    scores, ids = flat[..., 0], flat[..., 1].long()
    by_id = ids.argsort(dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :num_cands]
    return scores.gather(1, order).float(), ids.gather(1, order)
