"""`ShardedHead`: the geosteer head over a gallery split across ranks, with the single-process result.

One call, every rank together (DESIGN §6, "exact scale-out"):

1. queries: replicated, broadcast from one rank (serving) or gathered from
   every rank (batch) — `geosteer.distributed.queries`;
2. validate: each rank checks the queries and its own shard exactly as the
   head does (`geosteer.inputs.validate`);
3. first stage: each rank's top-K of its shard (exact or its FAISS index),
   all-gathered as (score, global id) pairs, merged into the global top-K
   pool (`geosteer.distributed.first_stage`);
4. steering (α > 0): the query move reads the whole pool's embeddings, so
   each query's *home* rank (queries split evenly) fetches its pool's K x D
   rows from their owners (`Comm.exchange_rows`) and computes the steered
   scores;
5. re-rank: each rank scores the pool members it owns — confuser penalty β,
   contrast δ, part cost, Hungarian assignment, alignment A, structure R —
   with the function the head calls (`geosteer.stages.candidates.candidate_terms`),
   on its `[Q, K]` layout with the other ranks' candidates left out
   (`_blocks`; per candidate, so the values are the head's);
   neighbourhood mode first fetches the candidates' kNN sets and the pool
   heads' rows from their owners;
6. combine: one all-reduce of the per-candidate terms (each written by
   exactly one rank, zeros elsewhere: the sum is exact), then every rank
   fuses S = (1 - λ)·s + λ·A + γ·R + δ·C and sorts, as the head does.

Filters (`allowed`, each rank its own rows' slice) act in step 3: each
shard's top-K of its allowed rows, so the pool is the global top-K of the
allowed items, ending in padding (id -1, score -inf) where the shards
together allow fewer than K; padding is no rank's candidate, is kept out of
the steering neighbourhoods and sorts last, as in the head.

The local work of steps 1-6 runs inside `Comm.step`, so one rank's error is every rank's error.
The mode rule, the anchor pairs, the query move and the fuse + sort are the
head's own (`geosteer.stages.candidates.uses_parts`, `steering_anchors`,
`moved_scores`, `geosteer.head.ranked`); tests/test_distributed.py holds the
two to the same result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer.config import HeadConfig
from geosteer.distributed.first_stage import FIRST_STAGES, local_top, merge_candidates
from geosteer.distributed.queries import distribute
from geosteer.distributed.shard import ShardedGallery
from geosteer.head import HeadResult, check_allowed, ranked
from geosteer.inputs import GallerySide, QuerySide, map_tensors, validate
from geosteer.ops import checks
from geosteer.stages.candidates import Anchors, candidate_terms, moved_scores, uses_parts
from geosteer.stages.rerank import neighbourhood_cost
from geosteer.stages.steer import steering_anchors

# Columns of the per-candidate terms buffer `[Q, K, 5 + w]` float64 (all
# float32 or small-int values, so float64 carries them exactly).
_S, _PENALTY, _ALIGN, _STRUCTURE, _CONTRAST, _COLS = range(6)


@dataclass
class _Plan:
    """What one call computes, decided identically on every rank."""

    parts_mode: bool
    rerank: bool
    num_cands: int  # K = min(k, N)
    pool: int  # min(neighbors, K)
    query: Tensor  # [Q, D] normalised
    checks: Tensor  # float32 zero scalar (the value checks' sum, as the head adds it)
    anchors: Anchors | None  # `steering_anchors`' pairs, None without negatives
    move: bool  # α > 0: the steered query (home ranks)
    penalty: bool  # β > 0
    contrast: bool  # δ > 0
    width: int  # columns of the matching (m, k or 1)


class ShardedHead:
    """The geosteer head over a `ShardedGallery`: what `GeoSteerHead` returns on the whole gallery.

    Call it on every rank with the same config. Same ids in the same order
    as `GeoSteerHead(config)(queries, whole_gallery)` up to float ties (the
    shards' first-stage scores come from smaller matmuls, which may round
    differently in the last bit); ties in the pool are broken by global id.

    Args:
        config: a `HeadConfig`; keyword arguments override its fields.
    """

    def __init__(self, config: HeadConfig | None = None, **overrides) -> None:
        if config is not None and not isinstance(config, HeadConfig):
            raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
        self.config = (config or HeadConfig()).replace(**overrides)

    def __repr__(self) -> str:
        return f"ShardedHead({self.config})"

    def __call__(
        self, queries: QuerySide | Tensor | None, gallery: ShardedGallery, *, source: str | int = "all",
        first_stage: str = "auto", allowed: Tensor | None = None,
    ) -> HeadResult:
        """Search the sharded gallery (a collective: every rank calls it).

        Args:
            queries: a `QuerySide` (or `[Q, D]` tensor) on the gallery's
                device; None on the ranks that pass none (`source` a rank).
            gallery: this rank's `ShardedGallery`.
            source: "all" (every rank passes the same queries), "split"
                (each its own slice of a batch, possibly empty) or a rank
                (serving: only it passes queries, broadcast to the others).
            first_stage: "auto" (the shard's FAISS index if it has one, else
                exact), "exact" or "faiss".
            allowed: a filter, as the head's `allowed` (True = the item may be
                returned) but *this rank's slice* of it: `[N_r]` bool (every
                query) or `[Q, N_r]` bool (per query: Q = every query of the
                call, in the order they have after `source`: for "split" all
                ranks' queries in rank order), column i = global id
                `gallery.offset + i`; None = every row of this shard. A slice
                and not the whole gallery's `[N]` / `[Q, N]` mask because the
                sharded head never holds the whole gallery anywhere: each rank
                has its own rows and their metadata (paths: `gallery.where`
                evaluates `geosteer search`'s `--where` there), and a `[Q, N]`
                mask of a gallery too large for one machine would not fit one
                either; queries are small and travel, gallery-sized arrays
                do not. Applied in each shard's first stage, so the result is
                the head's with the ranks' slices concatenated as `allowed`
                (= the head on the filtered gallery): a query whose allowed
                items number fewer than K ends in padding (id -1, score -inf,
                last; its other fields meaningless). The head's checks
                (`check_allowed`: bool, shape against this shard, device;
                not with neighbourhood mode). A shard's FAISS index serves
                `[N_r]` (its `IDSelectorBatch`); "auto" searches a
                `[Q, N_r]` filter exactly, "faiss" refuses it. One exception to
                "the head's result": `steer_design="near"` with α > 0 and
                fewer allowed pool items than `neighbors`, which the head
                does not claim exact either (its neighbourhoods then take
                disallowed padding items, which the shards do not have).

        Returns:
            `HeadResult` (`[Q, K]` fields, K = min(k, N)): for "split" this
            rank's own queries, else all of them, on every rank.

        Raises:
            RankValueError / RankTypeError (ValueError / TypeError) on every
                rank: bad input on some rank (DESIGN §5 messages, naming it).
            RankFailure on every rank: any other error on some rank.
            CollectiveError: a collective timed out or lost a peer.
        """
        if not isinstance(gallery, ShardedGallery):
            raise TypeError(f"gallery must be a ShardedGallery, got {type(gallery).__name__}")
        comm, cfg = gallery.comm, self.config
        q, start, stop = distribute(comm, queries, source)
        g = gallery.local
        with comm.step("validate"):
            if first_stage not in FIRST_STAGES:
                raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}")
            plan = _plan(cfg, q, g, gallery.num_items)
            if allowed is not None:
                _check_allowed(allowed, q, gallery, plan)
            per_query = allowed is not None and allowed.dim() == 2  # FAISS's IDSelector is one filter for all
            use_faiss = first_stage == "faiss" or (first_stage == "auto" and gallery.faiss is not None
                                                   and not per_query)
            if first_stage == "faiss" and per_query:
                raise ValueError("first_stage='faiss' searches one filter for every query, allowed [N_r]; a per-query "
                                 "allowed [Q, N_r] is searched exactly: first_stage='auto' or 'exact'")
            if use_faiss and gallery.faiss is None:
                raise ValueError("first_stage='faiss' but this shard has no FAISS index; call gallery.build_faiss() first")
        with comm.step("first_stage"):
            mine = local_top(cfg, plan.query, g.embeddings, gallery.offset, plan.num_cands,
                             gallery.faiss if use_faiss else None, allowed)
        gathered = comm.all_gather(mine, "first_stage")
        with comm.step("merge"):
            s0, ids = merge_candidates(gathered, plan.num_cands)
            valid = ids >= 0  # False: a filter's padding (the shards allow fewer than K items); all True without one
            owner, rows = gallery.locate(ids)
            owner = owner.masked_fill(~valid, -1)  # padding is no rank's candidate
            home = torch.tensor_split(torch.arange(s0.shape[0], device=s0.device), comm.world_size)[comm.rank]
            a, b = (int(home[0]), int(home[-1]) + 1) if home.numel() else (0, 0)
            nbr_ids = _neighbourhood_ids(plan, g, ids, owner, rows, comm.rank) if not plan.parts_mode and plan.rerank else None
            if plan.move:  # this rank's home queries' pool, each row asked for once (padding: row 0, unused)
                wanted, inverse = ids[a:b].clamp_min(0).reshape(-1).unique(return_inverse=True)
        pool_rows = None
        if plan.move:
            pool_rows = comm.exchange_rows(g.embeddings, wanted, gallery.offsets, "steer")[inverse]
        nbr_rows = None
        if nbr_ids is not None:
            nbr_rows = comm.exchange_rows(g.embeddings, nbr_ids, gallery.offsets, "neighbours")
        with comm.step("rerank"):
            terms = torch.zeros((*s0.shape, _COLS + plan.width), dtype=torch.float64, device=s0.device)
            if plan.move:
                _move(cfg, plan, s0, valid, pool_rows, a, b, terms)
            _owned(cfg, plan, q, g, s0, ids, owner, rows, comm.rank, nbr_ids, nbr_rows, terms)
        comm.all_reduce_sum_(terms, "combine")
        with comm.step("fuse"):
            result = _fuse(cfg, plan, s0, ids, valid, terms)
        if source == "split":
            result = HeadResult(*(None if f is None else f[start:stop] for f in result))
        return result


def _plan(cfg: HeadConfig, q: QuerySide, g: GallerySide, num_items: int) -> _Plan:
    """Validate the call on this rank's shard (the head's checks) and decide what it computes."""
    parts_mode = uses_parts(cfg, q.parts, g.parts)
    rerank = cfg.lam > 0 or cfg.gamma > 0
    # The shard's kNN rows hold global ids: checked here against N, not by
    # `validate` against the shard's N_r (hence rerank=False there: its only use).
    flags = validate(cfg, q, dataclasses.replace(g, neighbors=None), None, parts_mode, False)
    num_cands = min(cfg.k, num_items)
    pool = min(cfg.neighbors, num_cands)
    if not parts_mode and rerank:
        graph = g.neighbors
        if graph is None:
            raise ValueError("neighbourhood mode on a sharded gallery needs its kNN graph (gallery neighbors, global "
                             "ids): graph = geosteer.distributed.sharded_knn_graph(gallery, k); "
                             "gallery = gallery.with_neighbors(graph)")
        if not isinstance(graph, Tensor) or graph.dtype != torch.long or graph.ndim != 2:
            raise ValueError(f"gallery_neighbors must be int64 [N_r, k'], got {getattr(graph, 'dtype', type(graph))}")
        if graph.shape[1] < pool:
            raise ValueError(f"gallery_neighbors has k'={graph.shape[1]} columns but neighbors={pool}")
        flags = flags + checks.check_ids(graph, num_items, "gallery_neighbors")
    query = F.normalize(q.embeddings, dim=-1)
    anchors = None
    if q.negatives is not None:
        anchors = steering_anchors(query, q.parts, q.positives, q.negatives, q.negatives_mask)
    has_neg = q.negatives is not None
    width = (q.parts.shape[1] if parts_mode else pool) if rerank else 1
    return _Plan(parts_mode, rerank, num_cands, pool, query, flags, anchors, has_neg and cfg.alpha > 0,
                 has_neg and cfg.beta > 0, has_neg and cfg.delta > 0, width)


def _check_allowed(allowed, q: QuerySide, gallery: ShardedGallery, plan: _Plan) -> None:
    """The head's `check_allowed` on this rank's slice; the whole gallery's mask is named as such.

    Raises:
        TypeError / ValueError: as `check_allowed`, N = this shard's N_r.
    """
    rows = gallery.local.embeddings.shape[0]
    if isinstance(allowed, Tensor) and allowed.dim() in (1, 2) and allowed.shape[-1] == gallery.num_items != rows:
        start = gallery.offset
        raise ValueError(f"allowed must be this rank's slice of the filter, [N_r={rows}] or [Q, N_r] bool (rank "
                         f"{gallery.rank} holds global ids {start}..{start + rows - 1}), got the whole gallery's "
                         f"{list(allowed.shape)}: pass allowed[..., {start}:{start + rows}]")
    check_allowed(allowed, q.embeddings, rows, plan.parts_mode or not plan.rerank)


def _neighbourhood_ids(plan: _Plan, g: GallerySide, ids: Tensor, owner: Tensor, rows: Tensor, rank: int) -> Tensor:
    """Sorted distinct global ids whose rows neighbourhood mode needs here: owned candidates' kNN sets, their pool heads."""
    mine = owner == rank
    k = plan.pool
    nbrs = g.neighbors[:, :k][rows[mine]]  # [M, k]
    heads = ids[:, :k][mine.any(dim=1)]  # the queries with an owned candidate
    return torch.cat([nbrs.reshape(-1), heads.reshape(-1)]).unique()


def _move(
    cfg: HeadConfig, plan: _Plan, s0: Tensor, valid: Tensor, pool_rows: Tensor, a: int, b: int, terms: Tensor,
) -> None:
    """The α query move for this rank's home queries `a:b` from their pool's rows; writes s (less a pooled β penalty).

    `valid` `[Q, K]`: False = a filter's padding, kept out of the neighbourhoods as the head keeps it.
    """
    if b <= a:
        return
    num, width = b - a, s0.shape[1]
    table_ids = torch.arange(num * width, device=s0.device).reshape(num, width)
    anchors = tuple(x[a:b] for x in plan.anchors)
    s = moved_scores(cfg, plan.query[a:b], pool_rows, table_ids, s0[a:b], anchors, plan.pool, plan.parts_mode,
                     valid[a:b])
    terms[a:b, :, _S] = s.double()


#: Most padding slots a block of `_blocks` may carry, as a share of its owned candidates.
MAX_PADDING = 0.25


def _blocks(mine: Tensor, budget: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """This rank's pool members, query by query, in blocks `(queries [C], columns [C, k_c], valid [C, k_c])`.

    Each query's owned columns come first; queries are sorted by how many
    they own and grouped while the block's padding (to its largest count)
    stays under `MAX_PADDING` of its candidates and its `C x k_c` slots
    under `budget`: a rank owning 5 of one query's 50 candidates and 45 of
    another's does not score 50 for both.
    """
    count = mine.sum(dim=1)
    queries = count.argsort(stable=True)
    queries = queries[count[queries] > 0]
    cols = (~mine).to(torch.int8).argsort(dim=1, stable=True)  # owned columns first, in pool order
    counts = count[queries].tolist()  # ascending
    blocks, start = [], 0
    while start < len(counts):
        stop, owned = start + 1, counts[start]
        while stop < len(counts):
            slots = (stop + 1 - start) * counts[stop]
            if slots > budget or slots > (1 + MAX_PADDING) * (owned + counts[stop]):
                break
            owned += counts[stop]
            stop += 1
        qs = queries[start:stop]
        width = counts[stop - 1]
        blocks.append((qs, cols[qs, :width], torch.arange(width, device=mine.device) < count[qs][:, None]))
        start = stop
    return blocks


def _owned(
    cfg: HeadConfig, plan: _Plan, q: QuerySide, g: GallerySide, s0: Tensor, ids: Tensor, owner: Tensor, rows: Tensor,
    rank: int, nbr_ids: Tensor | None, nbr_rows: Tensor | None, terms: Tensor,
) -> None:
    """Score the pool members this rank owns (`candidate_terms`); write their terms.

    The owned candidates of a block of queries are scored as a `[C, k_c]`
    batch (`_blocks`), the head's own `[Q, K]` layout with the other ranks'
    candidates left out: every term is per candidate, so the values are the
    head's. Padding slots repeat an owned candidate and are never written back.
    """
    if not (plan.penalty or plan.contrast or plan.rerank):
        return
    mine = owner == rank
    # The largest temporaries per candidate slot: its cost matrix (m x n or k x k), its boxes (4n), its
    # region-by-anchor sims (n x J); the gathered rows go through `project` in its own chunks.
    sets = g.parts.shape[1] if plan.parts_mode else plan.pool
    anchors = plan.anchors
    per_candidate = sets * max(plan.width, 4, 0 if anchors is None else anchors[0].shape[1] + anchors[1].shape[1])
    for qs, kcols, valid in _blocks(mine, max(1, cfg.chunk_elements // per_candidate)):
        cand = rows[qs].gather(1, kcols)  # [C, k_c] rows of this shard
        cand = torch.where(valid, cand, cand[:, :1])  # padding repeats the query's first owned candidate
        at_q, at_k = qs[:, None].expand_as(kcols)[valid], kcols[valid]
        block = candidate_terms(
            cfg, map_tensors(q, lambda t: t[qs]), g, cand, s0[qs].gather(1, kcols),
            None if anchors is None else tuple(x[qs] for x in anchors), parts_mode=plan.parts_mode, rerank=plan.rerank,
            neighbourhood_cost=lambda: _neighbourhood_cost(cfg, plan, g, ids[qs], cand, nbr_ids, nbr_rows))
        for column, values in ((_PENALTY, block.penalty), (_ALIGN, block.alignment), (_STRUCTURE, block.structure),
                               (_CONTRAST, block.contrast)):
            if values is not None:
                terms[at_q, at_k, column] = values[valid].double()
        if plan.rerank:
            terms[at_q, at_k, _COLS:] = (block.assignment[valid] + 1).double()


def _neighbourhood_cost(
    cfg: HeadConfig, plan: _Plan, g: GallerySide, pool: Tensor, cand: Tensor, nbr_ids: Tensor, nbr_rows: Tensor,
) -> Tensor:
    """`neighbourhood_cost` over the fetched rows: cost `[C, k_c, k, k]`.

    A_q = the query's k best pool items (`pool [C, K]` global ids), B_c = the
    candidate's k nearest gallery items (its graph row; `cand [C, k_c]`),
    both looked up in the fetched rows `nbr_rows` (sorted global ids `nbr_ids`).
    """
    k = plan.pool
    where = lambda gids: torch.searchsorted(nbr_ids, gids.contiguous())  # noqa: E731 - rows of nbr_rows
    return neighbourhood_cost(nbr_rows, nbr_rows[where(pool[:, :k])], where(g.neighbors[:, :k][cand]), cfg.backend)


def _fuse(cfg: HeadConfig, plan: _Plan, s0: Tensor, ids: Tensor, valid: Tensor, terms: Tensor) -> HeadResult:
    """The head's fuse + sort over the combined terms (`valid` False: padding, sorted last as id -1, score -inf)."""
    s = terms[..., _S].float() if plan.move else s0
    if plan.penalty:
        s = s - cfg.beta * terms[..., _PENALTY].float()
    align, structure = terms[..., _ALIGN].float(), terms[..., _STRUCTURE].float()
    contrast = terms[..., _CONTRAST].float()
    cols = terms[..., _COLS:].long() - 1
    return ranked(cfg, ids, s0, s, align, structure, contrast, cols, plan.checks, valid)
