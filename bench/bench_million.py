"""A million images on one machine (issue 23): write, open and search a synthetic index with compact regions.

Writes a synthetic index of N images, n = 16 regions, D = 512 with
`geosteer.index.write_index` from blocks made one at a time (the float32
regions of the whole gallery never exist), regions stored as float32,
float16 or int8 (+ a float32 scale per row); then opens it in a fresh
process and searches it with re-ranking (K = 100 candidates):

- disk bytes, region bytes per image, build seconds, peak RSS of the build;
- open seconds (manifest + shard headers), first gallery access (the
  embeddings' checksum and the head's checks, once: both read them all), peak
  RSS of the search process (it counts the pages of the mapped file the
  search touched) and, at its end, that RSS split into private memory and
  mapped file pages;
- single-query latency p50 / p99 and batched queries/s through
  `geosteer.index.Searcher` (what `geosteer search` and serve run), with
  the exact first stage (every embedding scored) and with the IVF-PQ first
  stage the library builds and stores (`Index.build_first_stage`, what
  `geosteer index --faiss "IVF{nlist},PQ64"` runs: trained on a sample,
  written beside the shards, opened memory-mapped), alone and with its top
  4K re-scored exactly; its train / add seconds, file size and recall of
  the exact top-K; the median time of each head stage.

The data: 4096 cluster centres; an image's embedding is its centre plus
noise (cosine ~0.8 to it), each of its 8-16 regions the embedding plus
noise from a shared bank, padding rows zero; a query is a gallery image's
embedding plus noise and two of its regions, so the first stage has a
right answer (its rank is reported). Each phase runs in its own process,
so the peak RSS of one is not the other's.

    python -m bench.bench_million --images 100000 --dtypes float32,float16,int8
    python -m bench.bench_million --images 1000000 --dtypes int8 --dir /tmp/million
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
N_REGIONS, DIM, CENTRES, BANK, BLOCK = 16, 512, 4096, 65536, 8192
QUERY_PARTS, K, SINGLE_QUERIES, BATCH, BATCHES, REFINE = 2, 100, 60, 32, 4, 4


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def rss_parts_mib() -> dict[str, float]:
    """This process's resident memory now, split: private (RssAnon) and mapped file pages (RssFile, page cache).

    The peak RSS counts every page of the mapped index the search touched, which the kernel maps in whole
    folios of its page cache (up to 2 MiB a fault): reclaimable, shared, not memory the search needs.
    """
    from bench.common import proc_status_kb

    return {f"{k.lower()}_mib": round(kib / 1024, 1) for k in ("RssAnon", "RssFile")
            if (kib := proc_status_kb(k)) is not None}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the data


def _fixed(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(CENTRES, DIM, generator=gen), dim=-1)
    bank = torch.randn(BANK, DIM, generator=gen) / DIM ** 0.5  # noise of norm ~1, shared by every region
    return centres, bank


def blocks(num: int, seed: int = 0):
    """The gallery as float32 `GallerySide` blocks of `BLOCK` rows, each made when asked for (deterministic)."""
    from geosteer import GallerySide

    centres, bank = _fixed(seed)
    for b, start in enumerate(range(0, num, BLOCK)):
        c = min(BLOCK, num - start)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b + 1)
        emb = F.normalize(centres[torch.randint(CENTRES, (c,), generator=gen)]
                          + 0.75 * torch.randn(c, DIM, generator=gen) / DIM ** 0.5, dim=-1)
        parts = F.normalize(emb[:, None, :] + bank[torch.randint(BANK, (c, N_REGIONS), generator=gen)], dim=-1)
        valid = torch.randint(8, N_REGIONS + 1, (c, 1), generator=gen)
        mask = torch.arange(N_REGIONS)[None, :] < valid
        parts[~mask] = 0  # padding rows are zeros, as the builder writes them
        xy = torch.rand(c, N_REGIONS, 2, generator=gen) * 400
        boxes = torch.cat([xy, xy + 20 + torch.rand(c, N_REGIONS, 2, generator=gen) * 200], dim=-1)
        yield GallerySide(emb, parts=parts, parts_mask=mask, part_boxes=boxes)


def queries(gallery, count: int, seed: int):
    """`count` queries, each a gallery row's embedding + noise and two of its regions + noise; (QuerySide, targets)."""
    from geosteer import QuerySide
    from geosteer.quantize import dequantize_rows

    gen = torch.Generator().manual_seed(10_000 + seed)
    num = gallery.embeddings.shape[0]
    targets = torch.randint(num, (count,), generator=gen)
    emb = F.normalize(gallery.embeddings[targets] + 0.3 * torch.randn(count, DIM, generator=gen) / DIM ** 0.5, dim=-1)
    parts = gallery.parts[targets, :QUERY_PARTS]
    if parts.dtype == torch.int8:
        parts = dequantize_rows(parts, gallery.parts_scale[targets, :QUERY_PARTS])
    parts = F.normalize(parts.float() + 0.3 * torch.randn(count, QUERY_PARTS, DIM, generator=gen) / DIM ** 0.5, dim=-1)
    return QuerySide(emb, parts=parts, relations=torch.full((count, 1, 3), -1)), targets


# ---------------------------------------------------------------- phases (each in its own process)


def phase_build(folder: Path, num: int, dtype: str) -> dict:
    from geosteer.index import write_index

    if folder.exists():
        shutil.rmtree(folder)
    paths = [f"/synthetic/img/{i:07d}.jpg" for i in range(num)]
    t0 = time.perf_counter()
    index = write_index(blocks(num), paths, folder, encoder=("synthetic", "0" * 16), regions="grid",
                        root="/synthetic", sizes=[None] * num, regions_dtype=dtype)
    seconds = time.perf_counter() - t0
    g = index.gallery
    region_bytes = g.parts.numel() * g.parts.element_size() + (
        0 if g.parts_scale is None else g.parts_scale.numel() * g.parts_scale.element_size())
    return {"build_s": round(seconds, 1), "disk_bytes": folder_bytes(folder),
            "region_bytes_per_image": region_bytes / num, "build_peak_rss_mib": peak_rss_mib()}


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def phase_search(folder: Path, nlist: int, nprobe: int, train_size: int) -> dict:
    import dataclasses

    import faiss

    from geosteer import QuerySide, get_config
    from geosteer.index import Index, Searcher
    from geosteer.stages.first_stage_faiss import recall_at_k

    out: dict = {}
    t0 = time.perf_counter()
    index = Index.open(folder)
    out["open_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    g = index.gallery  # checksums the embeddings and certifies them for the head: reads them all once
    out["first_gallery_access_s"] = round(time.perf_counter() - t0, 2)
    out["rss_after_open_mib"] = peak_rss_mib()
    out["rss_after_open"] = rss_parts_mib()
    q, targets = queries(g, SINGLE_QUERIES + BATCH * BATCHES, seed=1)

    # IVF-PQ through the library: `geosteer index --faiss "IVF{nlist},PQ64"` builds this (64 bytes a vector),
    # trained on a sample of the mapped float32 embeddings, stored beside the shards, opened memory-mapped.
    factory = f"IVF{nlist},PQ64"
    t0 = time.perf_counter()
    index.build_first_stage(factory, nprobe=nprobe, train_size=train_size, refine=REFINE)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = Index.open(folder).first_stage  # the memory-mapped copy, as a service opens it
    fs = dataclasses.replace(stored, refine=1)
    out["ivfpq"] = {"factory": factory, "nprobe": nprobe, "train_size": min(len(index), train_size),
                    "train_s": round(stored.timings["train"], 1), "add_s": round(stored.timings["add"], 1),
                    "build_and_write_s": round(build_s, 1), "open_mmap_s": round(time.perf_counter() - t0, 3),
                    "file_bytes": (folder / "first_stage.faiss").stat().st_size, "load_after_build": load()}
    print(f"  ivfpq built: {out['ivfpq']}", file=sys.stderr, flush=True)
    # one FAISS thread to search: one query's lists are few, and FAISS's OpenMP threads beside torch's cost
    # more than they give here (a 3000-image index: 36 ms a query with 2 threads)
    faiss.omp_set_num_threads(1)
    probe = q.embeddings[:SINGLE_QUERIES]
    exact_ids = (probe @ g.embeddings.T).topk(K, dim=1).indices
    out["ivfpq"]["refine"] = REFINE
    out["ivfpq"]["recall_at_100_of_exact"] = round(recall_at_k(fs.search(probe, K)[1], exact_ids), 3)
    out["ivfpq"]["recall_at_100_of_exact_refined"] = round(
        recall_at_k(stored.search(probe, K, gallery=g.embeddings)[1], exact_ids), 3)
    print(f"  recall: {out['ivfpq']}", file=sys.stderr, flush=True)

    stage_ms: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def timed_stage(name: str):
        t = time.perf_counter()
        yield
        stage_ms.setdefault(name, []).append((time.perf_counter() - t) * 1000)

    def part(a: int, b: int) -> QuerySide:
        return QuerySide(q.embeddings[a:b], parts=q.parts[a:b], relations=q.relations[a:b])

    def stats(ms: list[float]) -> dict:
        return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "mean_ms": round(float(np.mean(ms)), 1)}

    def run(name: str, first_stage) -> None:
        """One query at a time, then batches, through `Searcher.search` (what `geosteer search` / serve run)."""
        searcher = Searcher(index, configs=get_config("default", k=K), k_max=K, first_stage=first_stage)
        head = searcher.heads["config"]
        for i in range(3):  # warm-up: pages, kernels
            searcher.search(part(i, i + 1), k=10)
        lat, found = [], []
        stage_ms.clear()
        head.stage_hook = timed_stage  # the stage hook says where a query's time goes
        for i in range(SINGLE_QUERIES):
            t = time.perf_counter()
            res = searcher.search(part(i, i + 1), k=10)
            lat.append((time.perf_counter() - t) * 1000)
            found.append(int(targets[i]) in res.head.indices[0, :10].tolist())
        head.stage_hook = None
        stages = {k: round(float(np.median(v)), 1) for k, v in stage_ms.items()}
        t = time.perf_counter()
        for b in range(BATCHES):
            a = SINGLE_QUERIES + b * BATCH
            searcher.search(part(a, a + BATCH), k=10)
        qps = BATCH * BATCHES / (time.perf_counter() - t)
        out[name] = {"single": {**stats(lat), "queries": SINGLE_QUERIES}, "stage_p50_ms": stages,
                     "batched_queries_per_s": round(qps, 1),
                     "batch": BATCH, "target_in_top10": round(float(np.mean(found)), 3), "load": load()}
        print(f"  {name}: {out[name]}", file=sys.stderr, flush=True)

    run("exact", "exact")
    run("ivfpq_search", fs)
    run("ivfpq_refined_search", stored)
    out["search_peak_rss_mib"] = peak_rss_mib()
    out["search_end_rss"] = rss_parts_mib()
    return out


# ---------------------------------------------------------------- driver


def _child(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_million", *argv], cwd=REPO, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"phase {argv[:2]} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_million", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--dtypes", default="int8,float16", help="comma-separated region dtypes, run in turn")
    parser.add_argument("--dir", default="/tmp/geosteer_million", help="where the index is written (deleted after)")
    parser.add_argument("--nlist", type=int, default=512, help="IVF lists (4096 would take ~8x longer to add here)")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=20480, help="IVF-PQ training sample (40 per list)")
    parser.add_argument("--keep", action="store_true", help="keep the last index folder")
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/million_<date>.json, merged)")
    parser.add_argument("--phase", choices=("build", "search"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    folder = Path(args.dir)
    if args.phase == "build":
        print(json.dumps(phase_build(folder, args.images, args.dtype)))
        return 0
    if args.phase == "search":
        print(json.dumps(phase_search(folder, args.nlist, args.nprobe, args.train_size)))
        return 0

    from geosteer.environment import environment

    out = Path(args.out or REPO / "bench" / "results" / f"million_{datetime.date.today().isoformat()}.json")
    doc = json.loads(out.read_text()) if out.exists() else {"runs": []}
    doc["environment"] = environment("cpu")
    doc["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                   text=True).stdout.strip()
    doc["shape"] = {"n": N_REGIONS, "D": DIM, "K": K, "block_rows": BLOCK}
    doc["disk_free_before"] = shutil.disk_usage(folder.parent if folder.parent.exists() else "/").free
    for dtype in args.dtypes.split(","):
        run = {"images": args.images, "regions_dtype": dtype, "commit": doc["commit"], "started": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), "load_before": load()}
        print(f"{args.images} images, {dtype} regions: building ... (load {run['load_before']})", file=sys.stderr,
              flush=True)
        run.update(_child(["--phase", "build", "--images", str(args.images), "--dtype", dtype, "--dir", str(folder)]))
        run["load_after_build"] = load()
        print(f"  built: {run}", file=sys.stderr, flush=True)
        run.update(_child(["--phase", "search", "--dir", str(folder), "--nlist", str(args.nlist), "--nprobe",
                           str(args.nprobe), "--train-size", str(args.train_size)]))
        run["load_after"] = load()
        doc["runs"].append(run)
        out.write_text(json.dumps(doc, indent=1) + "\n")  # after each run: a later one may not finish
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"-> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
