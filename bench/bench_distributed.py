"""The sharded gallery (geosteer.distributed) on 1 vs 2 ranks, and its scale-out on paper.

Measured: the `cpu` workload of bench_head (DESIGN §4: Q = 1,024, N = 100,000,
K = 50, m x n = 4 x 16, D = 512, fp32; the same seeded `bench.common.make_data`
and the same config as its ``geosteer`` provider, `bench_head.head_config`)
searched by `ShardedHead` on W ranks of gloo over 127.0.0.1, each rank one
process with `--threads` torch threads, every rank holding its contiguous
shard only. Per run (W, threads):

- ``head``        (W = 1 only) the plain `GeoSteerHead` on the whole gallery: the reference
                  (``head-steer``, ``head-serve``: the same for the steer and serve modes)
- ``split``       batch evaluation: each rank passes its Q/W queries (`source="split"`)
- ``broadcast``   all Q queries on rank 0, broadcast (`source=0`)
- ``steer``       ``split`` with steering on (α = 0.5 with negatives: the pool's K x D rows travel)
- ``serve``       one query at a time from rank 0 (latency)

Each row: queries/s, wall seconds (rank 0; median and spread of the warm
repeats, the first call apart as cold), seconds inside collectives
(`Comm.stats`, which include waiting for the slowest rank) and the rest
(compute), both per rank, bytes each rank put into collectives, the
per-collective split, and the ranking's agreement with the single-process
head (ids equal row for row, largest score difference).

On paper (`--paper`): memory and network per query for a gallery of 100M and
1B images (fp16 region sets n = 16, D = 512, IVF-PQ first stage) and the
number of 8 x H200 nodes it takes, computed by `scale_out` from the formulas
in this file.

    python -m bench.bench_distributed --out bench/results/distributed_cpu_$(date +%F).jsonl
    python -m bench.bench_distributed --dry-run          # tiny shapes, seconds
    python -m bench.bench_distributed --paper            # the scale-out table (markdown)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import common
from bench.bench_head import DRY_SHAPES, head_config
from bench.common import WORKLOADS, Workload

MODES = ("head", "head-steer", "head-serve", "split", "broadcast", "steer", "serve")


# --------------------------------------------------------------------------
# Measured: one process per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_rows(data: common.BenchData, start: int, stop: int, copy: bool):
    """Rows `start:stop` of the gallery side; copies when the whole gallery is to be freed after."""
    from geosteer import GallerySide

    emb, parts = data.gallery[start:stop], data.gallery_parts[start:stop]
    return GallerySide(emb.clone(), parts=parts.clone()) if copy else GallerySide(emb, parts=parts)


def _rank_main(rank: int, world: int, threads: int, port: int, work: Workload, opts: dict, out: str) -> None:
    """One rank of one run: build its shard, time every mode, write its measurements to `out/rank<r>.json`."""
    torch.set_num_threads(threads)
    from geosteer import GeoSteerHead, QuerySide
    from geosteer.distributed import ShardedGallery, ShardedHead, init_distributed, shard_bounds

    comm = init_distributed("gloo", timeout_s=1800, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    data = common.make_data(work, "cpu", opts["seed"])
    start, stop = shard_bounds(work.N, world)[rank]
    queries = QuerySide(data.query, parts=data.query_parts)
    steer_queries = QuerySide(data.query, parts=data.query_parts, negatives=data.negatives)
    cfg = head_config(work)
    measured: dict[str, dict] = {}
    if world == 1:
        gal = _local_rows(data, 0, work.N, copy=False)
        head = GeoSteerHead(cfg)
        measured["head"] = _time(lambda: head(queries, gal), comm, opts["repeats"], opts["budget"])
        reference = head(queries, gal)
        steer_head = GeoSteerHead(cfg.replace(alpha=0.5))
        measured["head-steer"] = _time(lambda: steer_head(steer_queries, gal), comm, opts["repeats"], opts["budget"])
        steer_ref = steer_head(steer_queries, gal)
        one = iter(range(10**9))
        measured["head-serve"] = _time(lambda: head(_query(queries, next(one) % opts["serve_queries"]), gal), comm,
                                       opts["serve_queries"], None)
        torch.save({"ids": reference.indices, "scores": reference.scores, "steer_ids": steer_ref.indices,
                    "steer_scores": steer_ref.scores}, Path(out) / "reference.pt")
    # Each rank keeps only its shard (a copy when W > 1, so the rest is freed).
    local = _local_rows(data, start, stop, copy=world > 1)
    del data
    shard = ShardedGallery.from_local(comm, local)
    sharded, steered = ShardedHead(cfg), ShardedHead(cfg.replace(alpha=0.5))
    rows = torch.tensor_split(torch.arange(work.Q), world)[rank]
    a, b = int(rows[0]), int(rows[-1]) + 1

    def mine(q: QuerySide) -> QuerySide:
        return QuerySide(**{k: (None if v is None else v[a:b]) for k, v in vars(q).items()})

    calls = {
        "split": lambda: sharded(mine(queries), shard, source="split"),
        "broadcast": lambda: sharded(queries if rank == 0 else None, shard, source=0),
        "steer": lambda: steered(mine(steer_queries), shard, source="split"),
    }
    results = {}
    for mode in ("split", "broadcast", "steer"):
        measured[mode] = _time(calls[mode], comm, opts["repeats"], opts["budget"], keep=results, key=mode)
    it = iter(range(10**9))

    def serve_one():
        i = next(it) % opts["serve_queries"]
        return sharded(_query(queries, i) if rank == 0 else None, shard, source=0)

    measured["serve"] = _time(serve_one, comm, opts["serve_queries"], None)
    facts = {"rank": rank, "rows": stop - start, "measured": measured}
    ref_path = Path(out) / "reference.pt"
    if ref_path.exists():
        ref = torch.load(ref_path, weights_only=True)
        facts["agreement"] = {
            "split": _agree(results["split"], ref["ids"][a:b], ref["scores"][a:b]),
            "broadcast": _agree(results["broadcast"], ref["ids"], ref["scores"]),
            "steer": _agree(results["steer"], ref["steer_ids"][a:b], ref["steer_scores"][a:b]),
        }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(facts))
    comm.close()


def _query(queries, i: int):
    """Query `i` alone (the serve modes cycle through the first `--serve-queries`)."""
    from geosteer import QuerySide

    return QuerySide(queries.embeddings[i : i + 1], parts=queries.parts[i : i + 1])


def _agree(result, ids: torch.Tensor, scores: torch.Tensor) -> dict:
    return {"rows_equal": float((result.indices == ids).all(dim=1).float().mean()),
            "top1_equal": float((result.indices[:, 0] == ids[:, 0]).float().mean()),
            "max_score_diff": float((result.scores - scores).abs().max())}


def _time(fn, comm, repeats: int, budget_s: float | None, keep: dict | None = None, key: str = "") -> dict:
    """Cold call, then warm repeats: wall and in-collective seconds of this rank per call (a collective-aligned loop)."""
    comm.barrier("bench")
    comm.stats.reset()
    t0 = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t0
    walls, comms, steps, nbytes = [], [], [], []
    for i in range(repeats):
        comm.barrier("bench")
        comm.stats.reset()
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        snap = comm.stats.snapshot()
        comms.append(sum(v for k, v in snap["seconds"].items() if not k.startswith("bench/")))
        steps.append({k: v for k, v in snap["seconds"].items() if not k.startswith("bench/")})
        nbytes.append(sum(v for k, v in snap["bytes"].items() if not k.startswith("bench/")))
        if budget_s is not None and i == 0:
            repeats = max(2, min(repeats, int(budget_s / max(walls[0], 1e-9))))
        if len(walls) >= repeats:
            break
    if keep is not None:
        keep[key] = out
    by_step = {k: statistics.median(s.get(k, 0.0) for s in steps) for k in steps[0]} if steps else {}
    return {"cold_s": cold, "walls": walls, "comms": comms, "bytes": statistics.median(nbytes) if nbytes else 0,
            "by_step": by_step, "queries": out.indices.shape[0]}


def run_world(work: Workload, world: int, threads: int, opts: dict, folder: Path) -> list[dict]:
    """Spawn `world` ranks for one run; their measurements, per rank."""
    import torch.multiprocessing as mp

    for f in folder.glob("rank*.json"):
        f.unlink()
    mp.start_processes(_rank_main, args=(world, threads, _free_port(), work, opts, str(folder)), nprocs=world,
                       start_method="spawn")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]


def rows_of(work: Workload, world: int, threads: int, ranks: list[dict], env: dict) -> list[dict]:
    """JSON rows of one run (one per mode), from rank 0's wall clock and every rank's collective time."""
    out = []
    for mode in MODES:
        if mode not in ranks[0]["measured"]:
            continue
        per_rank = [r["measured"][mode] for r in ranks]
        m0 = per_rank[0]
        wall = statistics.median(m0["walls"])
        # In "split" each rank serves its own share: the batch is done when the slowest rank is.
        total_q = sum(m["queries"] for m in per_rank) if mode in ("split", "steer") else m0["queries"]
        if mode in ("serve", "head-serve"):
            total_q = 1
        slowest = [max(vals) for vals in zip(*(m["walls"] for m in per_rank))]
        wall_batch = statistics.median(slowest)
        comm_med = [statistics.median(m["comms"]) for m in per_rank]
        row = {
            "kind": "provider", "bench": "distributed", "workload": work.name, **work.shape_dict(),
            "provider": mode if mode.startswith("head") else f"sharded-{mode}", "mode": mode, "ranks": world,
            "threads_per_rank": threads, "cores_used": world * threads,
            "queries_per_call": total_q, "repeats": len(m0["walls"]), "cold_s": m0["cold_s"],
            "times_s": m0["walls"], **common.summarise(slowest), "rank0_median_s": wall,
            "queries_per_s": total_q / wall_batch,
            "comm_s": comm_med, "compute_s": [statistics.median(w - c for w, c in zip(m["walls"], m["comms"])) for m in per_rank],
            "comm_share": [c / statistics.median(m["walls"]) for c, m in zip(comm_med, per_rank)],
            "bytes_into_collectives": [m["bytes"] for m in per_rank],
            "comm_by_step_rank0": m0["by_step"],
            "shard_rows": [r["rows"] for r in ranks],
            **env,
        }
        if mode in ("split", "broadcast", "steer"):
            agree = [r.get("agreement", {}).get(mode) for r in ranks]
            if all(a is not None for a in agree):
                row["agree_rows_with_head"] = min(a["rows_equal"] for a in agree)
                row["max_score_diff_vs_head"] = max(a["max_score_diff"] for a in agree)
        out.append(row)
    return out


# --------------------------------------------------------------------------
# On paper


@dataclass(frozen=True)
class ScaleAssumptions:
    """What the paper estimate assumes; every number in the table is computed from these."""

    D: int = 512  # embedding dim
    n: int = 16  # regions per image
    elem_bytes: int = 2  # fp16 embeddings and regions
    box_bytes: int = 2  # fp16 box coordinates (4 per region)
    pq_bytes: int = 64  # IVF-PQ code: 64 sub-quantizers x 8 bits
    id_bytes: int = 8  # FAISS stores an int64 id per code
    nlist: int = 65_536  # IVF lists per shard
    nprobe: int = 64  # lists probed per query, per shard
    K: int = 100  # pool re-ranked (the `gpu` workload's K)
    m: int = 4  # query parts
    u: int = 4  # negatives
    r: int = 4  # relations
    gpu_bytes: float = 141e9  # H200 HBM3e
    gpus_per_node: int = 8
    usable: float = 0.85  # HBM share left for the gallery (CUDA context, FAISS scratch, batch temporaries)
    host_bytes_per_node: float = 2e12  # host RAM of an 8-GPU node, for the regions-on-host placement
    host_usable: float = 0.8

    def image_bytes(self) -> dict[str, int]:
        """Bytes per gallery image, by what they hold."""
        return {"pooled embedding": self.D * self.elem_bytes, "regions": self.n * self.D * self.elem_bytes,
                "boxes": self.n * 4 * self.box_bytes, "mask": self.n, "IVF-PQ code + id": self.pq_bytes + self.id_bytes}


def scale_out(num_images: int, a: ScaleAssumptions = ScaleAssumptions(), regions_on_host: bool = False) -> dict:
    """Memory, network and nodes for one gallery size (the formulas of the paper table).

    Placement "all in HBM": every byte of `image_bytes` on the GPUs. Placement
    "regions on host": codes and pooled embeddings in HBM, region sets in
    host RAM (each query copies its K candidates' regions to the GPU).
    Network per query is the protocol as built (`geosteer.distributed.head`):
    query broadcast, all-gather of K (score, id) pairs per rank, the pool's
    K x D rows to the query's home rank (steering only), one ring
    all-reduce of the per-candidate terms, and six 4-byte error flags.
    """
    per = a.image_bytes()
    regions = per["regions"] + per["boxes"] + per["mask"]
    hbm_per_image = sum(per.values()) - (regions if regions_on_host else 0)
    gallery_hbm = num_images * hbm_per_image
    gpus_hbm = math.ceil(gallery_hbm / (a.gpu_bytes * a.usable))
    nodes = math.ceil(gpus_hbm / a.gpus_per_node)
    if regions_on_host:
        nodes = max(nodes, math.ceil(num_images * regions / (a.host_bytes_per_node * a.host_usable)))
    ranks = nodes * a.gpus_per_node  # one rank per GPU: the shards spread over every GPU of the nodes
    shard = num_images / ranks
    query_bytes = (1 + a.m + a.u) * a.D * a.elem_bytes + a.m + a.u + a.r * 3 * 8
    ivf_scan = ranks * a.nprobe * (shard / a.nlist) * (a.pq_bytes + a.id_bytes)  # codes read, all shards
    rerank_read = a.K * (regions + per["pooled embedding"])
    terms = a.K * (5 + a.m) * 8  # the combine buffer (float64)
    net = {
        "queries (broadcast)": (ranks - 1) * query_bytes,
        "pool (all-gather)": ranks * (ranks - 1) * a.K * 16,
        "steering rows (α > 0)": a.K * (a.D * a.elem_bytes + 8) * (ranks - 1) / ranks,
        "combine (ring all-reduce)": 2 * (ranks - 1) * terms,
        "error flags": 6 * 2 * (ranks - 1) * 4,
    }
    return {
        "images": num_images, "placement": "regions on host" if regions_on_host else "all in HBM",
        "bytes_per_image": sum(per.values()), "hbm_bytes_per_image": hbm_per_image, "gallery_bytes": num_images * sum(per.values()),
        "hbm_bytes": gallery_hbm, "gpus": gpus_hbm, "nodes": nodes, "ranks": ranks, "shard_images": shard,
        "hbm_read_per_query": ivf_scan + (0 if regions_on_host else rerank_read),
        "pcie_per_query": a.K * regions if regions_on_host else 0,
        "network_per_query": sum(net.values()), "network_split": net,
        "network_root_merge": net["queries (broadcast)"] + 2 * (ranks - 1) * a.K * 16 + net["steering rows (α > 0)"]
        + (ranks - 1) * terms + net["error flags"],
    }


def _fmt(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def paper_table(a: ScaleAssumptions = ScaleAssumptions()) -> str:
    """The scale-out table (markdown), computed by `scale_out`."""
    per = a.image_bytes()
    lines = [
        f"Per image: {', '.join(f'{k} {v:,} B' for k, v in per.items())} = {sum(per.values()):,} B. "
        f"Query: K = {a.K}, m = {a.m} parts, u = {a.u} negatives, r = {a.r} relations; IVF-PQ {a.pq_bytes} B codes, "
        f"nlist = {a.nlist:,} and nprobe = {a.nprobe} per shard. Nodes: {a.gpus_per_node} x H200 "
        f"({a.gpu_bytes / 1e9:.0f} GB, {a.usable:.0%} of it for the gallery), one rank per GPU; host RAM "
        f"{a.host_bytes_per_node / 1e12:.0f} TB per node ({a.host_usable:.0%} usable).",
        "",
        "| images | placement | gallery | in HBM | GPUs needed | nodes | ranks | HBM read / query | host→GPU / query "
        "| network / query (as built) | of which pool all-gather | network / query (root merge) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for num in (100_000_000, 1_000_000_000):
        for host in (False, True):
            s = scale_out(num, a, host)
            lines.append(
                f"| {num / 1e6:,.0f}M | {s['placement']} | {_fmt(s['gallery_bytes'])} | {_fmt(s['hbm_bytes'])} | {s['gpus']} "
                f"| {s['nodes']} | {s['ranks']} | {_fmt(s['hbm_read_per_query'])} | {_fmt(s['pcie_per_query'])} "
                f"| {_fmt(s['network_per_query'])} | {_fmt(s['network_split']['pool (all-gather)'])} "
                f"| {_fmt(s['network_root_merge'])} |")
    lines += ["", "Network is bytes on the wire per query, all links together; the pool all-gather grows as "
              "ranks², a merge at the query's home rank (gather + broadcast of the K winners) as ranks. "
              "`python -m bench.bench_distributed --paper` prints this table."]
    return "\n".join(lines)


def measured_table(rows: list[dict]) -> str:
    """The 1-vs-W-rank figures (markdown) from result rows (`--table FILE`)."""
    lines = ["| ranks x threads | mode | queries/s | wall s (median, slowest rank) | in collectives s, per rank | compute s, per rank "
             "| MB into collectives, per rank | rankings = head |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("bench") != "distributed":
            continue
        def per(key: str, fmt: str, r: dict = r) -> str:
            return ", ".join(fmt.format(v) for v in r[key])

        agree = r.get("agree_rows_with_head")
        same = "-" if agree is None else f"{agree:.0%} of rows, max score diff {r['max_score_diff_vs_head']:.1g}"
        megabytes = ", ".join(f"{b / 1e6:.2f}" for b in r["bytes_into_collectives"])
        lines.append(
            f"| {r['ranks']} x {r['threads_per_rank']} | {r['provider']} | {r['queries_per_s']:,.0f} | {r['median_s']:.4f} "
            f"| {per('comm_s', '{:.4f}')} | {per('compute_s', '{:.4f}')} | {megabytes} | {same} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="cpu", choices=sorted(WORKLOADS))
    parser.add_argument("--runs", default="1x1,1x2,2x1", help="RANKSxTHREADS per run, comma-separated (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats per mode (fewer if over --budget)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of warm repeats per mode, at most")
    parser.add_argument("--serve-queries", type=int, default=32, help="single-query calls timed in 'serve'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON lines file to append to (default bench/results/distributed_cpu_<date>.jsonl)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, 2 repeats")
    parser.add_argument("--paper", action="store_true", help="print the scale-out table and exit")
    parser.add_argument("--table", default=None, metavar="FILE.jsonl", help="print the measured table of a results file and exit")
    args = parser.parse_args(argv)
    if args.paper:
        print(paper_table())
        return 0
    if args.table:
        print(measured_table(common.read_rows([args.table])))
        return 0
    from geosteer.environment import environment

    work = WORKLOADS[args.workload]
    if args.dry_run:
        work = work.replace(**DRY_SHAPES)
        args.repeats, args.serve_queries = min(args.repeats, 2), min(args.serve_queries, 4)
    runs = [tuple(int(x) for x in r.split("x")) for r in args.runs.split(",")]
    out = args.out or str(common.REPO / "bench" / "results" / f"distributed_cpu_{datetime.date.today().isoformat()}.jsonl")
    opts = {"seed": args.seed, "repeats": args.repeats, "budget": args.budget, "serve_queries": args.serve_queries}
    env = environment("cpu")
    env["dry_run"] = args.dry_run
    env.pop("threads", None)
    env.pop("device_name", None)
    env["device_name"] = env["cpu"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # The reference (1 rank) first: the other runs compare with its rankings.
        for world, threads in sorted(runs, key=lambda r: r[0] != 1):
            t0 = time.perf_counter()
            print(f"[{work.name}] {world} rank(s) x {threads} thread(s) ...", file=sys.stderr)
            got = rows_of(work, world, threads, run_world(work, world, threads, opts, folder), env)
            common.write_rows(out, got)
            rows += got
            for r in got:
                comm = ", ".join(f"{c:.3f}" for c in r["comm_s"])
                print(f"  {r['provider']:18s} {r['queries_per_s']:9.1f} q/s  median {r['median_s']:.4f}s  comm {comm}s  "
                      f"agree {r.get('agree_rows_with_head', '-')}", file=sys.stderr)
            print(f"  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(f"{len(rows)} rows -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
