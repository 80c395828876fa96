"""The sharded gallery (geosteer.distributed) against the single-process head, on 2 and 3 CPU ranks.

Ranks are real processes on gloo over 127.0.0.1. Spawning costs seconds, so
one spawn per world size runs every case (tests/distributed_workers.py) and
each test reads its case's results; the spawn's time lands on the first
test that asks for it. Every spawn is bounded (`SPAWN_TIMEOUT_S`) and killed
past it. A few tests run in this process (one-rank group, pure helpers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import distributed_workers as workers
from geosteer import GallerySide, GeoSteerHead, HeadConfig, QuerySide
from geosteer.distributed import (
    RankFailure,
    RankValueError,
    ShardedGallery,
    ShardedHead,
    ShardMismatch,
    init_distributed,
    shard_bounds,
    write_shard_list,
    write_sharded_index,
)
from geosteer.distributed.first_stage import merge_candidates
from geosteer.distributed.head import _blocks
from geosteer.distributed.queries import layout, pack, unpack
from geosteer.index import write_index

HAS_FAISS = importlib.util.find_spec("faiss") is not None

REPO = Path(__file__).resolve().parent.parent
SPAWN_TIMEOUT_S = 120.0
COMMON = ["parts_masks", "steer", "relations", "everything_q1", "k_over_n", "pooled", "neighbourhood", "faiss", "index",
          "rank_fails", "bad_queries", "mismatch", "mixed", "filters", "where"]
CASES = {2: [*COMMON, "docs_example", "timeout"], 3: COMMON}  # timeout last: it breaks its group on purpose


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_paths(num: int, root: Path) -> list[str]:
    return [str(root / f"img{i:03d}.png") for i in range(num)]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict:
    """Sharded indexes on disk for 2 and 3 ranks: a good one, one with another encoder, one of another version,
    another gallery's (other: the same rows, images in another folder), the good one with shard 1 replaced by
    other's (rebuilt); and two one-folder indexes of that kind (mix_a, mix_b)."""
    base = tmp_path_factory.mktemp("sharded")
    _, gal = workers.problem(9)
    paths = image_paths(40, base / "images")
    ctx = {name: str(write_index(gal, image_paths(40, base / f"{name}_images"), base / name, encoder=("tiny", "fp-a")).path)
           for name in ("mix_a", "mix_b")}
    for world in (2, 3):
        sizes = workers.sizes_for(world, 40)
        good = write_sharded_index(gal, paths, base / f"index{world}", world, encoder=("tiny", "fp-a"), sizes=sizes)
        ctx[f"index{world}"] = str(good)
        folders = []
        for r, (a, b) in enumerate(shard_bounds(40, world, sizes)):
            part = GallerySide(gal.embeddings[a:b], parts=gal.parts[a:b], parts_mask=gal.parts_mask[a:b],
                               part_boxes=gal.part_boxes[a:b])
            folders.append(write_index(part, paths[a:b], base / f"enc{world}" / f"s{r}",
                                       encoder=("tiny", "fp-a" if r == 0 else "fp-b")).path)
        ctx[f"bad_encoder{world}"] = str(write_shard_list(base / f"enc{world}", folders).parent)
        old = base / f"version{world}"
        shutil.copytree(good, old)
        manifest = old / "shard-00001" / "manifest.json"
        m = json.loads(manifest.read_text())
        m["version"] = 99  # a format this geosteer does not read
        manifest.write_text(json.dumps(m))
        ctx[f"bad_version{world}"] = str(old)
        other = write_sharded_index(gal, image_paths(40, base / "other_images"), base / f"other{world}", world,
                                    encoder=("tiny", "fp-a"), sizes=sizes)
        ctx[f"other{world}"] = str(other)
        rebuilt = base / f"rebuilt{world}"
        shutil.copytree(good, rebuilt)
        shutil.rmtree(rebuilt / "shard-00001")
        shutil.copytree(other / "shard-00001", rebuilt / "shard-00001")
        ctx[f"rebuilt{world}"] = str(rebuilt)
    return ctx


def spawn(world: int, cases: list[str], ctx: dict, out: Path) -> dict[str, list[dict]]:
    """Run `cases` on `world` ranks; {case: [result of rank 0, rank 1, ...]}."""
    out.mkdir(parents=True, exist_ok=True)
    procs = mp.start_processes(workers.run, args=(world, free_port(), cases, str(out), ctx), nprocs=world, join=False,
                               start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not procs.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks did not finish {cases} in {SPAWN_TIMEOUT_S:.0f} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.kill()
    results = {}
    for case in cases:
        files = [out / f"{case}.rank{r}.json" for r in range(world)]
        results[case] = [json.loads(f.read_text()) if f.exists() else {"crashed": "no result written"} for f in files]
    return results


@pytest.fixture(scope="module")
def spawned(indexes, tmp_path_factory) -> dict:
    """{world: {case: per-rank results}}, spawned on first use."""
    cache: dict[int, dict] = {}

    def get(world: int) -> dict:
        if world not in cache:
            cache[world] = spawn(world, CASES[world], indexes, tmp_path_factory.mktemp(f"ranks{world}"))
        return cache[world]

    return get


def results(spawned, world: int, case: str) -> list[dict]:
    per_rank = spawned(world)[case]
    for r, res in enumerate(per_rank):
        assert "crashed" not in res, f"rank {r} crashed in {case!r}: {res.get('crashed')}\n{res.get('traceback', '')}"
    return per_rank


def assert_same_as_head(res: dict, atol: float = 2e-7) -> None:
    assert res["shape"] == res["expected_shape"], res
    assert res["indices_equal"], f"ids differ from the single-process head: {res}"
    assert res["assignment_equal"], res
    assert max(res["max_diff"].values()) <= atol, res["max_diff"]


WORLDS = pytest.mark.parametrize("world", [2, 3])


@WORLDS
def test_parts_mode_with_masks_uneven_shards_equals_the_head(spawned, world):
    for res in results(spawned, world, "parts_masks"):
        assert_same_as_head(res)
        assert_same_as_head(res["small_blocks"])
        assert res["alignment_nonzero"]


@WORLDS
def test_steering_alpha_and_beta_served_from_rank_0_equals_the_head(spawned, world):
    for res in results(spawned, world, "steer"):
        assert_same_as_head(res)
        assert res["steered_differs"], "the case must move the query"


@WORLDS
def test_relations_with_a_batch_split_across_ranks_equal_the_head(spawned, world):
    per_rank = results(spawned, world, "relations")
    for res in per_rank:
        assert_same_as_head(res)
    assert any(res["structure_nonzero"] for res in per_rank), "γ must act somewhere"
    assert [res["shape"][0] for res in per_rank] == ([0, 7] if world == 2 else [2, 0, 5])


@WORLDS
def test_one_query_with_every_term_on_equals_the_head(spawned, world):
    for res in results(spawned, world, "everything_q1"):
        assert_same_as_head(res)
        assert res["shape"][0] == 1 and res["steered_differs"]


@WORLDS
def test_k_larger_than_every_shard_and_than_n(spawned, world):
    for res in results(spawned, world, "k_over_n"):
        assert_same_as_head(res)
        assert res["shape"] == [6, 13]


@WORLDS
def test_pooled_steering_without_region_sets(spawned, world):
    for res in results(spawned, world, "pooled"):
        assert_same_as_head(res["move"])
        assert_same_as_head(res["penalty"])  # a [M, 1, u] projection instead of [Q, K, u]: last-bit rounding


@WORLDS
def test_neighbourhood_mode_with_the_sharded_knn_graph(spawned, world):
    for res in results(spawned, world, "neighbourhood"):
        assert res["graph_equal"], "sharded_knn_graph differs from knn_graph"
        assert_same_as_head(res)
        assert "RankValueError" in res["no_graph_error"] and "sharded_knn_graph" in res["no_graph_error"]


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (pip install 'geosteer[faiss]')")
@WORLDS
def test_faiss_ivf_per_shard_merged(spawned, world):
    for res in results(spawned, world, "faiss"):
        assert_same_as_head(res["ivf"])  # = the head fed the shards' IVF candidates
        assert_same_as_head(res["flat"])  # = the exact head


@WORLDS
def test_shards_opened_from_a_sharded_index_on_disk(spawned, world):
    for res in results(spawned, world, "index"):
        assert_same_as_head(res)
        assert res["paths_ok"]


@WORLDS
def test_a_failing_rank_makes_every_rank_raise_naming_it(spawned, world):
    bad = world - 1
    for res in results(spawned, world, "rank_fails"):
        assert res["is_rank_failure"] and res["is_value_error"], res
        assert list(res["failures"]) == [str(bad)]
        assert f"on rank {bad} of {world}" in res["error"] and "gallery_parts contains NaN" in res["error"]
        assert res["seconds"] < 5


@WORLDS
def test_bad_queries_on_one_rank_raise_the_heads_value_error_everywhere(spawned, world):
    for res in results(spawned, world, "bad_queries"):
        assert res["is_value_error"] and "query contains NaN" in res["error"], res


@WORLDS
def test_mismatched_shards_are_refused_at_start_up(spawned, world):
    for res in results(spawned, world, "mismatch"):
        assert res["dim"]["mismatch"] and res["dim"]["field"] == "dim", res["dim"]
        assert res["encoder"]["mismatch"] and res["encoder"]["field"] in ("encoder", "fingerprint"), res["encoder"]
        assert "fp-b" in res["encoder"]["error"] or "fingerprint" in res["encoder"]["error"]
        assert res["version"]["mismatch"] and res["version"]["field"] == "version", res["version"]
        assert "shard-00001" in res["version"]["error"]
        assert res["empty"]["value_error"] and "holds no rows" in res["empty"]["error"], res["empty"]


def identity(folder) -> str:
    from geosteer.index import Index

    return Index.open(folder).identity


@WORLDS
def test_ranks_given_different_indexes_are_refused_naming_both(spawned, indexes, world):
    """Same encoder, D, n, regions and row count, other images: refused on every rank, both identities named."""
    a, b = identity(indexes["mix_a"]), identity(indexes["mix_b"])
    listed, opened = (identity(Path(indexes[f"{name}{world}"]) / "shard-00001") for name in ("index", "other"))
    assert len({a, b, listed, opened}) == 4
    for res in results(spawned, world, "mixed"):
        split, lists, rebuilt = res["split"], res["listed"], res["rebuilt"]
        assert split.get("mismatch") and split["value_error"] and split["field"] == "index identity", split
        assert a in split["error"] and b in split["error"] and "mix_a" in split["error"], split["error"]
        assert lists.get("mismatch") and lists["field"] == "index of shard 1", lists
        assert listed in lists["error"] and opened in lists["error"] and "shards.json" in lists["error"], lists["error"]
        assert rebuilt.get("rank_failure") and rebuilt["value_error"] and not rebuilt["mismatch"], rebuilt
        assert listed in rebuilt["error"] and opened in rebuilt["error"] and "write_shard_list" in rebuilt["error"]
        assert res["same"]["error"] is None, res["same"]


# ---------------------------------------------------------------- filters: `allowed`, each rank its slice


def assert_filtered_as_head(res: dict, padding: bool | None = None, atol: float = 2e-7) -> None:
    """The sharded head under a filter equals the head under the whole mask; padding (id -1, -inf) last in both."""
    assert res["shape"] == res["expected_shape"], res
    assert res["indices_equal"], f"ids differ from the single-process head: {res}"
    assert res["first_stage_rank_equal"] and res["assignment_equal"], res
    assert max(res["max_diff"].values()) <= atol, res["max_diff"]
    assert res["padding_last"], res
    if padding is not None:
        assert (res["padding"] > 0) == padding, res


@WORLDS
def test_filter_more_than_k_allowed_served_from_rank_0(spawned, world):
    for res in results(spawned, world, "filters"):
        assert_filtered_as_head(res["more"], padding=False)
        assert res["more"]["steered_differs"] and res["more"]["structure_nonzero"], "α and γ must act"


@WORLDS
def test_filter_exactly_k_allowed(spawned, world):
    for res in results(spawned, world, "filters"):
        assert_filtered_as_head(res["exactly_k"], padding=False)


@WORLDS
def test_filter_fewer_than_k_allowed_pads_and_a_shard_with_nothing_allowed(spawned, world):
    for res in results(spawned, world, "filters"):
        fewer = res["fewer"]
        assert_filtered_as_head(fewer, padding=True)
        assert fewer["rank0_allowed"] == 0 and fewer["padding"] == 6 * (10 - 4), fewer
        assert_filtered_as_head(res["pooled"], padding=True)  # the α move's pool holds padding


@WORLDS
def test_per_query_filter_with_an_empty_row_and_a_batch_split_across_ranks(spawned, world):
    per_rank = results(spawned, world, "filters")
    for res in per_rank:
        assert_filtered_as_head(res["per_query"])
        assert_filtered_as_head(res["per_query_all"], padding=True)
        assert res["per_query_all"]["empty_rows"] == 1
    assert sum(res["per_query"]["empty_rows"] for res in per_rank) == 1


@WORLDS
def test_filter_none_on_one_rank_allows_its_whole_shard(spawned, world):
    for res in results(spawned, world, "filters"):
        assert_filtered_as_head(res["none_on_rank0"])
        assert_filtered_as_head(res["cosine"], padding=False)


@WORLDS
def test_bad_filters_raise_the_heads_errors_on_every_rank(spawned, world):
    for res in results(spawned, world, "filters"):
        errors = res["errors"]
        whole = errors["whole_mask"]
        assert whole["value_error"] and "this rank's slice" in whole["error"], whole
        assert "allowed[..., " in whole["error"], whole  # the slice to pass instead
        assert errors["dtype"]["type_error"] and "allowed must be a bool tensor" in errors["dtype"]["error"]
        assert errors["shape"]["value_error"] and "allowed must be [N=" in errors["shape"]["error"]
        assert errors["neighbourhood"]["value_error"] and "neighbourhood mode" in errors["neighbourhood"]["error"]
        assert all(e["rank_failure"] for e in errors.values()), errors


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (pip install 'geosteer[faiss]')")
@WORLDS
def test_filter_with_a_flat_faiss_index_per_shard(spawned, world):
    for res in results(spawned, world, "filters"):
        faiss = res["faiss"]
        assert_filtered_as_head(faiss["more"], padding=False)
        assert_filtered_as_head(faiss["fewer"], padding=True)
        assert_filtered_as_head(faiss["per_query_auto"], padding=True)  # "auto": a [Q, N_r] filter searched exactly
        assert faiss["per_query"]["value_error"] and "one filter for every query" in faiss["per_query"]["error"]


@WORLDS
def test_where_on_a_sharded_index_is_where_mask_over_the_recorded_paths(spawned, world):
    for res in results(spawned, world, "where"):
        assert res["recorded_example"] == "img012.png"
        for name, mask in res["masks"].items():
            assert mask["equal"] and mask["counted"] == mask["count"] > 0, (name, mask)
        assert [m["count"] for m in res["masks"].values()] == [20, 7, 4]
        assert_filtered_as_head(res["search"], padding=True)
        errors = res["errors"]
        assert errors["malformed"]["value_error"] and "must be one of" in errors["malformed"]["error"]
        assert errors["nothing"]["value_error"] and "matches no image of the 40" in errors["nothing"]["error"]
        assert errors["id_range"]["value_error"] and "ids must be in [0, 39]" in errors["id_range"]["error"]


def test_the_docs_example_runs_as_written(spawned):
    for res in results(spawned, 2, "docs_example"):
        assert_same_as_head(res)
        assert len(res["top_paths"]) == 5 and all(p.endswith(".png") for p in res["top_paths"])


def test_a_rank_that_never_joins_makes_the_others_time_out(spawned):
    waiting, absent = results(spawned, 2, "timeout")
    assert absent["skipped_call"]
    assert waiting["collective"], waiting
    assert "timeout" in waiting["error"] and waiting["seconds"] < workers.SHORT_TIMEOUT_S + 5, waiting


def test_the_torchrun_entry_prints_the_heads_ranking(indexes, tmp_path):
    q, gal = workers.problem(9)  # the gallery `indexes` wrote
    qfile = tmp_path / "q.pt"
    torch.save({k: v for k, v in vars(q).items() if v is not None}, qfile)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "geosteer.distributed.search", indexes["index2"],
           "--queries-file", str(qfile), "-k", "4", "--threads", "1", "--json", "--timeout", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    cfg = HeadConfig(**out["config"])
    expected = GeoSteerHead(cfg)(q, gal)
    assert out["ranks"] == 2 and out["images"] == 40
    for row, want in zip(out["queries"], expected.indices[:, :4].tolist()):
        assert [hit["id"] for hit in row["reranked"]] == want
        assert all(hit["path"].endswith(f"img{hit['id']:03d}.png") for hit in row["reranked"])


def test_the_torchrun_entry_where_searches_a_subset_across_shards(indexes, tmp_path):
    """--where as geosteer search takes it: ids 3-9 lie on both shards ([5, 35] rows); 7 < -k 10 results."""
    from geosteer.index.search import where_mask

    q, gal = workers.problem(9)
    qfile = tmp_path / "q.pt"
    torch.save({k: v for k, v in vars(q).items() if v is not None}, qfile)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "geosteer.distributed.search", indexes["index2"],
           "--queries-file", str(qfile), "-k", "10", "--threads", "1", "--json", "--timeout", "30",
           "--where", "path:img00*", "--where", "id:3-14"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["where"] == ["path:img00*", "id:3-14"] and out["images_allowed"] == 7
    allowed = where_mask(["path:img00*", "id:3-14"], [f"img{i:03d}.png" for i in range(40)])
    expected = GeoSteerHead(HeadConfig(**out["config"]))(q, gal, allowed=allowed)
    for row, want in zip(out["queries"], expected.indices[:, :7].tolist()):
        assert [hit["id"] for hit in row["reranked"]] == want and sorted(want) == list(range(3, 10))
        assert all(hit["path"].endswith(f"img{hit['id']:03d}.png") for hit in row["reranked"])


@pytest.mark.parametrize("where, message", [("size:3", "must be one of 'path:GLOB'"),
                                            ("path:nothing/*", "matches no image of the 40")])
def test_the_entry_refuses_a_bad_where_with_status_2(indexes, capsys, where, message):
    """One rank, in this process: a malformed --where, or one that selects nothing, is one line and exit 2."""
    from geosteer.distributed import search as entry

    assert entry.main([indexes["mix_a"], "a red circle", "--where", where, "--timeout", "30"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith(f"{entry.PROG} (rank 0): --where: "), err
    assert message in err[0], err


def test_the_torchrun_entry_refuses_ranks_given_different_indexes(indexes, tmp_path):
    """The probe's launch: a wrapper gives each rank its own INDEX. Every rank says why, exit status nonzero."""
    q, _ = workers.problem(9)
    qfile = tmp_path / "q.pt"
    torch.save({k: v for k, v in vars(q).items() if v is not None}, qfile)
    links = tmp_path / "rank"  # rank0 -> mix_a, rank1 -> mix_b: the wrapper appends $RANK
    for r, name in enumerate(("mix_a", "mix_b")):
        Path(f"{links}{r}").symlink_to(indexes[name])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--no-python", "sh", "-c",
           'exec "$0" -m geosteer.distributed.search "$1$RANK" --queries-file "$2" -k 4 --threads 1 --timeout 30',
           sys.executable, str(links), str(qfile)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, env=env, cwd=REPO)
    assert done.returncode != 0 and done.stdout == "", done.stdout[-2000:]
    a, b = identity(indexes["mix_a"]), identity(indexes["mix_b"])
    for r in (0, 1):
        said = [line for line in done.stderr.splitlines() if f"geosteer.distributed.search (rank {r}): " in line]
        assert len(said) == 1 and a in said[0] and b in said[0] and "index identity" in said[0], done.stderr[-3000:]


# ---------------------------------------------------------------- in this process


@pytest.fixture
def one_rank():
    comm = init_distributed("gloo", timeout_s=10)
    yield comm
    comm.close()


def test_one_rank_runs_the_same_code_as_a_single_process(one_rank):
    q, gal = workers.problem(14)
    cfg = HeadConfig(k=10, lam=0.5, alpha=0.3, beta=1.0, gamma=0.3, mode="parts")
    got = ShardedHead(cfg)(q, ShardedGallery.from_local(one_rank, gal))
    want = GeoSteerHead(cfg)(q, gal)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.scores, want.scores)
    assert one_rank.stats.total_seconds() > 0 and "first_stage/all_gather" in one_rank.stats.seconds
    with pytest.raises(RankValueError, match="query contains NaN") as info:
        ShardedHead(k=5)(torch.full((1, 16), float("nan")), ShardedGallery.from_local(one_rank, GallerySide(gal.embeddings)))
    assert isinstance(info.value, ValueError) and isinstance(info.value, RankFailure)
    with pytest.raises(TypeError, match="ShardedGallery"):
        ShardedHead(cfg)(q, gal)


def test_merge_keeps_the_best_k_breaking_ties_by_global_id():
    # rank 0: ids 0, 1; rank 1: ids 5, 6 (padding -inf); scores tie across ranks
    gathered = torch.tensor([[[[0.9, 1.0], [0.5, 0.0]]], [[[0.9, 5.0], [float("-inf"), -1.0]]]], dtype=torch.float64)
    scores, ids = merge_candidates(gathered, 3)
    assert ids.tolist() == [[1, 5, 0]]
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.9, 0.5]]))


def test_blocks_cover_every_owned_candidate_once_with_bounded_padding():
    g = torch.Generator().manual_seed(0)
    mine = torch.rand(40, 12, generator=g) < torch.linspace(0.05, 0.95, 40)[:, None]
    for budget in (1, 7, 50, 10_000):
        seen = torch.zeros_like(mine, dtype=torch.long)
        for qs, cols, valid in _blocks(mine, budget):
            assert valid[:, 0].all() and cols.shape == valid.shape == (qs.numel(), cols.shape[1])
            assert qs.numel() == 1 or valid.numel() <= max(budget, 1.25 * valid.sum())
            seen[qs[:, None].expand_as(cols)[valid], cols[valid]] += 1
        assert torch.equal(seen, mine.long())


def test_shard_bounds():
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(10, 2, [3, 7]) == [(0, 3), (3, 10)]
    with pytest.raises(ValueError, match="sizes"):
        shard_bounds(10, 2, [5, 4])
    with pytest.raises(ValueError, match="cannot give"):
        shard_bounds(2, 3)


def test_queries_pack_and_unpack_byte_for_byte():
    q, _ = workers.problem(15, num_queries=3)
    num, fields = layout(q)
    back = unpack(pack(q), fields)
    for name, value in vars(q).items():
        assert (value is None and getattr(back, name) is None) or torch.equal(value, getattr(back, name))
    assert num == 3 and unpack(pack(QuerySide(q.embeddings[:0])), layout(QuerySide(q.embeddings[:0]))[1]).embeddings.shape == (0, 16)


def test_rank_failure_messages_name_the_ranks():
    one = RankFailure("rerank", {1: "ValueError: bad"}, 3)
    assert "on rank 1 of 3: ValueError: bad" in str(one)
    every = RankFailure("validate", {0: "ValueError: x", 1: "ValueError: x"}, 2)
    assert "on every rank (2 of 2)" in str(every)
    some = RankFailure("merge", {0: "KeyError: a", 2: "OSError: b"}, 3)
    assert "on ranks 0, 2 of 3" in str(some) and "rank 2: OSError: b" in str(some)
    assert "rank 1 has 24" in str(ShardMismatch("dim", {0: 16, 1: 24}))


# ---------------------------------------------------------------- the command's arguments (no group started)


@pytest.mark.parametrize("argv, fragment", [
    (["--timeout", "0"], "argument --timeout: must be a positive, finite number of seconds, got '0'"),
    (["--timeout", "nan"], "argument --timeout: must be a positive, finite number of seconds, got 'nan'"),
    (["--timeout", "inf"], "argument --timeout: must be a positive, finite number of seconds, got 'inf'"),
    (["--timeout", "-5"], "argument --timeout: must be a positive, finite number of seconds, got '-5'"),
    (["--timeout", "soon"], "argument --timeout: must be a positive, finite number of seconds, got 'soon'"),
    (["-k", "0"], "argument -k: must be a positive integer, got '0'"),
    (["-k", "2.5"], "argument -k: must be a positive integer, got '2.5'"),
    (["--threads", "-1"], "argument --threads: must be a positive integer, got '-1'"),
])
def test_the_torchrun_entry_refuses_bad_numbers_as_argparse_errors(argv, fragment, tmp_path, capsys, monkeypatch):
    """Exit 2 with argparse's error line naming the argument, before any process group starts."""
    from geosteer.distributed import search as entry

    monkeypatch.setattr(entry, "init_distributed", lambda *a, **k: pytest.fail("a group started for a bad argument"))
    with pytest.raises(SystemExit) as info:
        entry.main([str(tmp_path), "a red circle", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"{entry.PROG}: error: {fragment}", err


def test_the_entry_prints_file_names_that_are_not_utf8(tmp_path, capsys):
    """One rank, in this process: a row whose image name holds byte 0xff prints as \\xff (stdout here is strict)."""
    from geosteer.distributed import search as entry

    q, gal = workers.problem(9, num_queries=1)
    paths = image_paths(40, tmp_path / "images")
    paths[:] = [os.fsdecode(os.fsencode(p).replace(b"img", b"im\xffg")) for p in paths]
    folder = write_index(gal, paths, tmp_path / "index", encoder=("tiny", "fp-a")).path
    qfile = tmp_path / "q.pt"
    torch.save({k: v for k, v in vars(q).items() if v is not None}, qfile)
    assert entry.main([str(folder), "--queries-file", str(qfile), "-k", "3", "--timeout", "30"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert len(rows) == 3 and all("im\\xffg" in line for line in rows), rows


def test_the_entry_refuses_a_query_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    from geosteer.distributed import search as entry

    monkeypatch.setattr(entry, "init_distributed", lambda *a, **k: pytest.fail("a group started for a bad argument"))
    with pytest.raises(SystemExit) as info:
        entry.main([str(tmp_path), "a red circle", os.fsdecode(b"a caf\xe9")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{entry.PROG}: error: QUERY 'a caf\\xe9' is not UTF-8 text; type it in a UTF-8 terminal (LANG=C.UTF-8, say)")
