"""Worker side of tests/test_distributed.py: one spawn per world size runs many cases.

Spawning ranks costs seconds (each imports torch and geosteer), so each
spawn runs a list of cases on every rank and each rank writes one JSON
result per case into a folder the test reads. A case returns a dict of
facts (equalities, maximum differences, the error a rank saw); asserting
is the test's job, so one failing case does not hide the others.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from geosteer import GallerySide, GeoSteerHead, HeadConfig, QuerySide, RELATIONS, knn_graph
from geosteer.distributed import (
    CollectiveError,
    Comm,
    RankFailure,
    ShardedGallery,
    ShardedHead,
    ShardMismatch,
    init_distributed,
    sharded_knn_graph,
)

#: Collective timeout of the test groups (a healthy case takes milliseconds).
TIMEOUT_S = 30.0
#: Timeout of the group the timeout case uses.
SHORT_TIMEOUT_S = 1.0


def unit(x):
    return F.normalize(x, dim=-1)


def problem(seed: int, num_items: int = 40, num_queries: int = 6, dim: int = 16, m: int = 3, n: int = 5, u: int = 3):
    """A random query side (parts + mask, negatives + mask, relations with padding) and gallery side (masks, boxes)."""
    g = torch.Generator().manual_seed(seed)
    parts_mask = torch.rand(num_items, n, generator=g) > 0.3
    parts_mask[:, 0] = True
    qmask = torch.rand(num_queries, m, generator=g) > 0.2
    qmask[:, 0] = True
    neg_mask = torch.rand(num_queries, u, generator=g) > 0.2
    neg_mask[:, 0] = True
    boxes = torch.rand(num_items, n, 4, generator=g) * 100
    boxes[..., 2:] += boxes[..., :2] + 1
    rel = torch.full((num_queries, 2, 3), -1, dtype=torch.long)  # one relation, one padding row
    rel[:, 0, 0] = 0
    rel[:, 0, 1] = torch.randint(1, m, (num_queries,), generator=g)
    rel[:, 0, 2] = torch.randint(0, len(RELATIONS), (num_queries,), generator=g)
    q = QuerySide(unit(torch.randn(num_queries, dim, generator=g)), parts=unit(torch.randn(num_queries, m, dim, generator=g)),
                  parts_mask=qmask, negatives=unit(torch.randn(num_queries, u, dim, generator=g)), negatives_mask=neg_mask,
                  relations=rel)
    gal = GallerySide(unit(torch.randn(num_items, dim, generator=g)), parts=unit(torch.randn(num_items, n, dim, generator=g)),
                      parts_mask=parts_mask, part_boxes=boxes)
    return q, gal


def compare(result, expected) -> dict:
    """Facts about a sharded result against the single-process head's."""
    out = {"shape": list(result.indices.shape), "expected_shape": list(expected.indices.shape)}
    if result.indices.shape != expected.indices.shape:
        return {**out, "indices_equal": False}
    out["indices_equal"] = bool(torch.equal(result.indices, expected.indices))
    out["assignment_equal"] = bool(torch.equal(result.assignment, expected.assignment))
    diffs = {}
    for name in ("scores", "first_stage_scores", "steered_scores", "alignment", "structure", "steering"):
        a, b = getattr(result, name, None), getattr(expected, name, None)
        if a is not None and b is not None:
            diffs[name] = float((a - b).abs().max()) if a.numel() else 0.0
    out["max_diff"] = diffs
    out["bitwise_scores"] = bool(torch.equal(result.scores, expected.scores))
    out["alignment_nonzero"] = bool((expected.alignment != 0).any())
    out["structure_nonzero"] = bool((expected.structure != 0).any())
    out["steered_differs"] = bool((expected.steered_scores != expected.first_stage_scores).any())
    return out


def sizes_for(world: int, num_items: int) -> list[int]:
    """Uneven shards: rank 0 small (smaller than K), the last the rest."""
    small = [3, 11] if world == 3 else [5]
    return small + [num_items - sum(small)]


def expect(cfg: HeadConfig, q: QuerySide, gal: GallerySide, **kwargs):
    return GeoSteerHead(cfg)(q, gal, **kwargs)


# ---------------------------------------------------------------- cases


def case_parts_masks(comm: Comm, ctx: dict) -> dict:
    """Parts mode with masks, uneven shards, K larger than the smallest shard, queries on every rank."""
    q, gal = problem(1)
    cfg = HeadConfig(k=12, lam=0.5, mode="parts")
    shard = ShardedGallery.from_full(comm, gal, sizes_for(comm.world_size, 40))
    out = compare(ShardedHead(cfg)(q, shard), expect(cfg, q, gal))
    tiny = cfg.replace(chunk_elements=64)  # many small blocks of owned candidates, padded ones among them
    out["small_blocks"] = compare(ShardedHead(tiny)(q, shard), expect(tiny, q, gal))
    return out


def case_steer(comm: Comm, ctx: dict) -> dict:
    """α > 0 and β > 0 with masked negatives, served from rank 0 (broadcast)."""
    q, gal = problem(2)
    cfg = HeadConfig(k=10, lam=0.5, alpha=0.5, beta=2.0, neighbors=3, mode="parts")
    shard = ShardedGallery.from_full(comm, gal, sizes_for(comm.world_size, 40))
    got = ShardedHead(cfg)(q if comm.rank == 0 else None, shard, source=0)
    return compare(got, expect(cfg, q, gal))


def case_relations(comm: Comm, ctx: dict) -> dict:
    """γ > 0 with boxes and relations (padding rows), queries split across ranks (one rank with none)."""
    q, gal = problem(3, num_queries=7)
    cfg = HeadConfig(k=9, lam=0.8, gamma=0.5, mode="parts")
    shard = ShardedGallery.from_full(comm, gal)
    counts = [0, 7] if comm.world_size == 2 else [2, 0, 5]
    start = sum(counts[: comm.rank])
    mine = QuerySide(**{k: (None if v is None else v[start : start + counts[comm.rank]]) for k, v in vars(q).items()})
    got = ShardedHead(cfg)(mine, shard, source="split")
    full = expect(cfg, q, gal)
    want = type(full)(*(None if f is None else f[start : start + counts[comm.rank]] for f in full))
    return compare(got, want)


def case_everything_q1(comm: Comm, ctx: dict) -> dict:
    """Q = 1 from the last rank: α, β, γ (and δ where the head has it) all on."""
    q, gal = problem(4, num_queries=1, num_items=31)
    extra = {"delta": 0.7} if hasattr(HeadConfig(), "delta") else {}  # the δ term, where the head has it
    cfg = HeadConfig(k=8, lam=0.6, alpha=0.3, beta=1.0, gamma=0.4, neighbors=4, mode="parts", **extra)
    shard = ShardedGallery.from_full(comm, gal, sizes_for(comm.world_size, 31))
    src = comm.world_size - 1
    got = ShardedHead(cfg)(q if comm.rank == src else None, shard, source=src)
    return {**compare(got, expect(cfg, q, gal)), "delta": extra.get("delta", 0.0)}


def case_k_over_n(comm: Comm, ctx: dict) -> dict:
    """k > N: K = N, every item in the pool; larger than every shard."""
    q, gal = problem(5, num_items=13)
    cfg = HeadConfig(k=50, lam=0.5, mode="parts")
    shard = ShardedGallery.from_full(comm, gal)
    return compare(ShardedHead(cfg)(q, shard), expect(cfg, q, gal))


def case_pooled(comm: Comm, ctx: dict) -> dict:
    """No region sets: pooled β penalty with and without the α move."""
    q, gal = problem(6)
    q = QuerySide(q.embeddings, negatives=q.negatives, negatives_mask=q.negatives_mask)
    gal = GallerySide(gal.embeddings)
    shard = ShardedGallery.from_full(comm, gal, sizes_for(comm.world_size, 40))
    out = {}
    for name, cfg in (("move", HeadConfig(k=10, lam=0.0, alpha=0.4, beta=1.5)), ("penalty", HeadConfig(k=10, lam=0.0, beta=1.5))):
        out[name] = compare(ShardedHead(cfg)(q, shard), expect(cfg, q, gal))
    return out


def case_neighbourhood(comm: Comm, ctx: dict) -> dict:
    """The sharded kNN graph equals knn_graph's; neighbourhood mode with it equals the head with the whole graph."""
    q, gal = problem(7)
    full_graph = knn_graph(gal.embeddings, 6)
    shard = ShardedGallery.from_full(comm, GallerySide(gal.embeddings), sizes_for(comm.world_size, 40))
    graph = sharded_knn_graph(shard, 6, block_rows=7)
    start = shard.offset
    out = {"graph_equal": bool(torch.equal(graph, full_graph[start : start + graph.shape[0]]))}
    shard = shard.with_neighbors(graph)
    cfg = HeadConfig(k=10, lam=0.5, neighbors=4, mode="neighbourhood")
    out.update(compare(ShardedHead(cfg)(q.embeddings, shard), expect(cfg, QuerySide(q.embeddings),
                                                                      GallerySide(gal.embeddings, neighbors=full_graph))))
    cfg_plain = HeadConfig(k=10, lam=0.5, neighbors=4, mode="neighbourhood")
    try:
        ShardedHead(cfg_plain)(q.embeddings, ShardedGallery.from_full(comm, GallerySide(gal.embeddings)))
        out["no_graph_error"] = None
    except ValueError as e:
        out["no_graph_error"] = f"{type(e).__name__}: {e}"
    return out


def case_faiss(comm: Comm, ctx: dict) -> dict:
    """A FAISS IVF index per shard, merged: equals the head fed the shards' candidates; flat equals exact."""
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        return {"skipped": "faiss is not installed"}
    q, gal = problem(8, num_items=240)
    cfg = HeadConfig(k=10, lam=0.5, mode="parts")
    shard = ShardedGallery.from_full(comm, gal).build_faiss("ivf", nlist=2, nprobe=2)
    got = ShardedHead(cfg)(q, shard)
    k = min(cfg.k, shard.local.embeddings.shape[0])
    scores, ids = shard.faiss.search(q.embeddings, k)
    all_scores = comm.all_gather(scores, "test")
    all_ids = comm.all_gather(ids + shard.offset, "test")
    first = (torch.cat(list(all_scores), dim=1), torch.cat(list(all_ids), dim=1))
    out = {"ivf": compare(got, expect(cfg, q, gal, first_stage=first))}
    flat = ShardedGallery.from_full(comm, gal).build_faiss("flat")
    out["flat"] = compare(ShardedHead(cfg)(q, flat), expect(cfg, q, gal))
    return out


def case_index(comm: Comm, ctx: dict) -> dict:
    """Shards opened from a sharded index on disk (write_sharded_index) equal the head on the whole gallery."""
    q, gal = problem(9)
    cfg = HeadConfig(k=12, lam=0.5, gamma=0.3, mode="parts")
    shard = ShardedGallery.open(comm, ctx[f"index{comm.world_size}"])
    got = ShardedHead(cfg)(q, shard)
    out = compare(got, expect(cfg, q, gal))
    paths = shard.paths_of(got.indices[:, :3])
    out["paths_ok"] = all(p is not None and p.endswith(f"img{int(i):03d}.png") for row, ids in zip(paths, got.indices[:, :3])
                          for p, i in zip(row, ids))
    return out


def case_rank_fails(comm: Comm, ctx: dict) -> dict:
    """The last rank's shard holds NaN regions: every rank raises, naming that rank and the argument."""
    q, gal = problem(10)
    bad = ShardedGallery.from_full(comm, gal)
    if comm.rank == comm.world_size - 1:
        parts = bad.local.parts.clone()
        parts[:] = float("nan")
        bad.local.parts = parts
    started = time.perf_counter()
    try:
        ShardedHead(HeadConfig(k=30, lam=0.5, mode="parts"))(q, bad)
        return {"error": None}
    except Exception as e:  # noqa: BLE001 - the test reads what came back
        return {"error": f"{type(e).__name__}: {e}", "is_rank_failure": isinstance(e, RankFailure),
                "is_value_error": isinstance(e, ValueError), "failures": getattr(e, "failures", None) and
                {str(k): v for k, v in e.failures.items()}, "seconds": time.perf_counter() - started}


def case_bad_queries(comm: Comm, ctx: dict) -> dict:
    """One rank's slice of a split batch holds NaN: every rank raises the head's ValueError."""
    q, gal = problem(11)
    shard = ShardedGallery.from_full(comm, GallerySide(gal.embeddings))
    emb = q.embeddings.clone()
    if comm.rank == 0:
        emb[0, 0] = float("nan")
    try:
        ShardedHead(HeadConfig(k=5))(emb, shard, source="split")
        return {"error": None}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "is_value_error": isinstance(e, ValueError)}


def case_mismatch(comm: Comm, ctx: dict) -> dict:
    """Shards that do not make one gallery are refused at start-up, on every rank."""
    out = {}
    _, gal = problem(12)
    dim = 16 if comm.rank == 0 else 24
    for name, build in (
        ("dim", lambda: ShardedGallery.from_local(comm, GallerySide(unit(torch.randn(5, dim))))),
        ("encoder", lambda: ShardedGallery.open(comm, ctx[f"bad_encoder{comm.world_size}"])),
        ("version", lambda: ShardedGallery.open(comm, ctx[f"bad_version{comm.world_size}"])),
        ("empty", lambda: ShardedGallery.from_local(comm, GallerySide(gal.embeddings[: 0 if comm.rank == 1 else 4]))),
    ):
        try:
            build()
            out[name] = {"error": None}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}", "mismatch": isinstance(e, ShardMismatch),
                         "value_error": isinstance(e, ValueError), "field": getattr(e, "field", None)}
    return out


def case_mixed(comm: Comm, ctx: dict) -> dict:
    """Ranks given different indexes of one encoder, D, n and regions: refused at start-up, on every rank.

    split: rank 0 opens one index folder, the others another (each rank takes
    its rows of "the" index); listed: rank 0 a sharded index, the others
    another one's shards.json; rebuilt: shard 1's folder replaced after its
    shards.json was written; same: every rank one folder (no error).
    """
    out = {}
    world, first = comm.world_size, comm.rank == 0
    for name, path in (("split", ctx["mix_a"] if first else ctx["mix_b"]),
                       ("listed", ctx[f"index{world}"] if first else ctx[f"other{world}"]),
                       ("rebuilt", ctx[f"rebuilt{world}"]),
                       ("same", ctx["mix_a"])):
        try:
            ShardedGallery.open(comm, path)
            out[name] = {"error": None}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}", "mismatch": isinstance(e, ShardMismatch),
                         "rank_failure": isinstance(e, RankFailure), "value_error": isinstance(e, ValueError),
                         "field": getattr(e, "field", None)}
    return out


def case_docs_example(comm: Comm, ctx: dict) -> dict:
    """docs/distributed.md's Python example, run as written on the sharded test index."""
    q, gal = problem(9)
    text = (Path(__file__).resolve().parent.parent / "docs" / "distributed.md").read_text()
    import re

    block = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)[0]
    ns = {"INDEX": ctx[f"index{comm.world_size}"], "queries": q}
    exec(compile(block, "docs/distributed.md", "exec"), ns)  # noqa: S102 - the doc's own code
    from geosteer import get_config

    out = compare(ns["result"], expect(get_config("default"), q, gal))
    out["top_paths"] = ns["top"][0]
    return out


def case_timeout(comm: Comm, ctx: dict) -> dict:
    """The last rank never joins a search: the others raise CollectiveError after the group's timeout (no hang)."""
    group = dist.new_group(timeout=datetime.timedelta(seconds=SHORT_TIMEOUT_S))
    short = Comm(group, timeout_s=SHORT_TIMEOUT_S)
    q, gal = problem(13)
    shard = ShardedGallery.from_full(short, gal)
    if comm.rank == comm.world_size - 1:
        time.sleep(SHORT_TIMEOUT_S + 0.5)
        return {"skipped_call": True}
    started = time.perf_counter()
    try:
        ShardedHead(HeadConfig(k=5))(q, shard)
        return {"error": None}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "collective": isinstance(e, CollectiveError),
                "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- filters (`allowed`, `where`)


def compare_filtered(result, expected) -> dict:
    """`compare`, with the fields a filter's padding leaves meaningless (id -1 columns) compared on real columns only.

    Ids, fused and first-stage scores and the first-stage order are compared
    in every column (padding included: id -1, score -inf, last).
    """
    out = {"shape": list(result.indices.shape), "expected_shape": list(expected.indices.shape)}
    if result.indices.shape != expected.indices.shape:
        return {**out, "indices_equal": False}
    real = expected.indices >= 0
    out["indices_equal"] = bool(torch.equal(result.indices, expected.indices))
    out["first_stage_rank_equal"] = bool(torch.equal(result.first_stage_rank, expected.first_stage_rank))
    out["assignment_equal"] = bool(torch.equal(result.assignment[real], expected.assignment[real]))
    diffs = {}
    for name in ("scores", "first_stage_scores"):  # -inf in the padding of both
        a, b = getattr(result, name), getattr(expected, name)
        same_inf = torch.equal(torch.isinf(a), torch.isinf(b))
        diffs[name] = float((a[real] - b[real]).abs().max()) if real.any() else 0.0
        if not same_inf or not torch.equal(a[~real], b[~real]):
            diffs[name] = float("inf")
    for name in ("steered_scores", "alignment", "structure", "steering"):
        a, b = getattr(result, name), getattr(expected, name)
        diffs[name] = float((a[real] - b[real]).abs().max()) if real.any() else 0.0
    out["max_diff"] = diffs
    out["padding"] = int((~real).sum())
    out["padding_last"] = bool((real.long().diff(dim=1) <= 0).all()) if real.shape[1] > 1 else True
    out["empty_rows"] = int((~real).all(dim=1).sum())
    out["steered_differs"] = bool((expected.steered_scores[real] != expected.first_stage_scores[real]).any())
    out["structure_nonzero"] = bool((expected.structure[real] != 0).any())
    return out


def my_columns(shard: ShardedGallery, mask: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a whole-gallery filter `[N]` / `[Q, N]`: `ShardedHead`'s `allowed`."""
    rows = shard.local.embeddings.shape[0]
    return mask[..., shard.offset : shard.offset + rows]


def allowing(num_items: int, ids) -> torch.Tensor:
    mask = torch.zeros(num_items, dtype=torch.bool)
    mask[list(ids)] = True
    return mask


def error_of(call) -> dict:
    try:
        call()
        return {"error": None}
    except Exception as e:  # noqa: BLE001 - the test reads what came back
        return {"error": f"{type(e).__name__}: {e}", "value_error": isinstance(e, ValueError),
                "type_error": isinstance(e, TypeError), "rank_failure": isinstance(e, RankFailure)}


def case_filters(comm: Comm, ctx: dict) -> dict:
    """`allowed` (each rank its slice) equals the head with the whole mask: [N] and [Q, N], more / exactly / fewer
    than K allowed, a shard with nothing allowed, parts mode with steering (α, β, δ) and relations (γ)."""
    world = comm.world_size
    q, gal = problem(21)
    shard = ShardedGallery.from_full(comm, gal, sizes_for(world, 40))
    rank0 = sizes_for(world, 40)[0]  # rank 0 holds global ids 0 .. rank0 - 1
    cfg = HeadConfig(k=10, lam=0.5, alpha=0.5, beta=2.0, gamma=0.4, delta=0.5, neighbors=3, mode="parts")
    head = ShardedHead(cfg)
    g = torch.Generator().manual_seed(21)
    out = {}

    def run(name, mask, config=cfg, source="all", queries=q, gallery=gal, sharded=shard, **kw):
        src = queries if source == "all" or comm.rank == source else None
        got = ShardedHead(config)(src, sharded, source=source, allowed=my_columns(sharded, mask), **kw)
        out[name] = compare_filtered(got, expect(config, queries, gallery, allowed=mask))

    more = torch.rand(40, generator=g) < 0.6  # ~24 of 40 > K
    run("more", more, source=0)
    exactly = allowing(40, [1, 4, 7, 12, 18, 22, 25, 31, 36, 39])  # K = 10, on every shard
    run("exactly_k", exactly)
    fewer = allowing(40, [17, 23, 30, 38])  # 4 < K, >= neighbors, none on rank 0's shard
    run("fewer", fewer, source=world - 1)
    out["fewer"]["rank0_allowed"] = int(fewer[:rank0].sum())
    per_query = torch.rand(6, 40, generator=g) < 0.5
    per_query[0] = False  # a query whose filter matches nothing: all padding
    per_query[1] = allowing(40, [2, 33])  # fewer than K and than neighbors ("margin" keeps padding out exactly)
    per_query[2, rank0:] = False  # only rank 0's rows
    counts = [2, 4] if world == 2 else [1, 0, 5]
    start = sum(counts[: comm.rank])
    mine = QuerySide(**{k: (None if v is None else v[start : start + counts[comm.rank]]) for k, v in vars(q).items()})
    got = head(mine, shard, source="split", allowed=my_columns(shard, per_query))  # [Q, N_r]: every query's row
    full = expect(cfg, q, gal, allowed=per_query)
    want = type(full)(*(None if f is None else f[start : start + counts[comm.rank]] for f in full))
    out["per_query"] = compare_filtered(got, want)
    out["per_query_all"] = compare_filtered(head(q, shard, allowed=my_columns(shard, per_query)), full)

    # None on rank 0: every row of its shard allowed
    some = torch.rand(40, generator=g) < 0.3
    some[:rank0] = True
    got = head(q, shard, allowed=None if comm.rank == 0 else my_columns(shard, some))
    out["none_on_rank0"] = compare_filtered(got, expect(cfg, q, gal, allowed=some))

    # pooled steering without region sets: the α move's rows fetched with padding in the pool
    pq = QuerySide(q.embeddings, negatives=q.negatives, negatives_mask=q.negatives_mask)
    pg = GallerySide(gal.embeddings)
    pooled_shard = ShardedGallery.from_full(comm, pg, sizes_for(world, 40))
    run("pooled", allowing(40, [3, 9, 21, 27, 35]), config=HeadConfig(k=10, lam=0.0, alpha=0.4, beta=1.5, neighbors=3),
        queries=pq, gallery=pg, sharded=pooled_shard)
    run("cosine", more, config=HeadConfig(k=12, lam=0.0), queries=pq, gallery=pg, sharded=pooled_shard)

    # errors: the head's checks, on every rank
    rows = shard.local.embeddings.shape[0]
    graph = ShardedGallery.from_full(comm, GallerySide(gal.embeddings, neighbors=knn_graph(gal.embeddings, 4)),
                                     sizes_for(world, 40))
    out["errors"] = {
        "whole_mask": error_of(lambda: head(q, shard, allowed=more)),
        "dtype": error_of(lambda: head(q, shard, allowed=torch.ones(rows, dtype=torch.long))),
        "shape": error_of(lambda: head(q, shard, allowed=torch.ones(2, rows, dtype=torch.bool))),
        "neighbourhood": error_of(lambda: ShardedHead(k=5, lam=0.5, neighbors=4, mode="neighbourhood")(
            q.embeddings, graph, allowed=torch.ones(rows, dtype=torch.bool))),
    }
    out["faiss"] = _filters_faiss(comm, cfg, q, gal, shard, more, fewer, per_query)
    return out


def _filters_faiss(comm: Comm, cfg: HeadConfig, q: QuerySide, gal: GallerySide, shard: ShardedGallery, more, fewer,
                   per_query) -> dict:
    """A flat FAISS index per shard under `[N_r]` filters equals the exact head; `[Q, N_r]`: exact with "auto",
    refused with "faiss"."""
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        return {"skipped": "faiss is not installed"}
    cfg = cfg.replace(alpha=0.0)
    flat = ShardedGallery.from_full(comm, gal, sizes_for(comm.world_size, 40)).build_faiss("flat")
    out = {}
    for name, mask in (("more", more), ("fewer", fewer)):
        got = ShardedHead(cfg)(q, flat, allowed=my_columns(flat, mask))
        out[name] = compare_filtered(got, expect(cfg, q, gal, allowed=mask))
    got = ShardedHead(cfg)(q, flat, allowed=my_columns(flat, per_query))
    out["per_query_auto"] = compare_filtered(got, expect(cfg, q, gal, allowed=per_query))
    out["per_query"] = error_of(lambda: ShardedHead(cfg)(q, flat, allowed=my_columns(flat, per_query),
                                                         first_stage="faiss"))
    return out


def case_where(comm: Comm, ctx: dict) -> dict:
    """`ShardedGallery.where` on a sharded index: each rank's slice of `where_mask` over the recorded paths."""
    from geosteer.index import Index
    from geosteer.index.search import where_mask

    q, gal = problem(9)
    folder = ctx[f"index{comm.world_size}"]
    shard = ShardedGallery.open(comm, folder)
    recorded = [p for f in json.loads((Path(folder) / "shards.json").read_text())["shards"]
                for p in Index.open(Path(folder) / f).paths]
    out = {"recorded_example": recorded[12]}
    masks = {}
    for name, where in (("glob", "path:img0[0-1]*.png"), ("and", ["path:img00*", "id:3-14"]),
                        ("ids", "id:0-2, 39 & path:*")):
        mask = shard.where(where)
        whole = torch.cat([torch.tensor(m, dtype=torch.bool) for m in comm.all_gather_object(mask.tolist(), "test")])
        masks[name] = {"equal": bool(torch.equal(whole, where_mask(where, recorded))), "count": int(whole.sum()),
                       "local_rows": int(mask.shape[0]), "counted": shard.count_allowed(mask)}
    out["masks"] = masks
    cfg = HeadConfig(k=12, lam=0.5, gamma=0.3, mode="parts")
    allowed = shard.where(["path:img00*", "id:3-14"])
    whole = where_mask(["path:img00*", "id:3-14"], recorded)
    out["search"] = compare_filtered(ShardedHead(cfg)(q, shard, allowed=allowed), expect(cfg, q, gal, allowed=whole))
    out["errors"] = {"malformed": error_of(lambda: shard.where("size:3")),
                     "nothing": error_of(lambda: shard.where("path:nothing/*")),
                     "id_range": error_of(lambda: shard.where("id:40"))}
    return out


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def run(rank: int, world: int, port: int, cases: list[str], out: str, ctx: dict) -> None:
    """One rank: init gloo on 127.0.0.1, run `cases` in order, write `out/<case>.rank<r>.json` for each."""
    torch.set_num_threads(1)  # 2-3 ranks share a 2-core CI machine
    comm = init_distributed("gloo", timeout_s=TIMEOUT_S, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    folder = Path(out)
    for name in cases:
        started = time.perf_counter()
        try:
            result = CASES[name](comm, ctx)
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            result = {"crashed": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["seconds_case"] = time.perf_counter() - started
        (folder / f"{name}.rank{rank}.json").write_text(json.dumps(result, default=str))
        if "crashed" in result and name != "timeout":
            break  # the group may be out of step now
    sys.stdout.flush()
    sys.stderr.flush()
    # No destroy_process_group: after the timeout case the group is broken on purpose.
    os._exit(0)
