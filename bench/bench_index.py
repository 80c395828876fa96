"""The on-disk index: `Index.open` time on a large synthetic index, and indexing throughput.

    python -m bench.bench_index --what open --num 100000            # open / first access / search / verify
    python -m bench.bench_index --what throughput --images 256      # demo model, regions=grid, rendered scenes
    python -m bench.bench_index --out bench/results/index.jsonl     # both, rows appended as JSON lines

`open`: a synthetic GallerySide (N x n x D float32 unit vectors, n = 13 as the
grid method, D = 512 as ViT-B-32) written with `write_index` in one shard (what
`Index.build` leaves) and, with --shards S, in S shards (what `Index.add`
leaves before `compact()`). Timed: `Index.open` (page cache dropped first when
this process may: root on Linux; else warm), the first `gallery` access (checks
the embeddings' checksums; concatenates the shards when there are several), one
search of a planted query (default preset, K = 100; the head warmed up on a small
gallery first), and `verify()` (every byte, page cache dropped first).

`throughput`: the demo model encodes rendered GeoShapes scenes saved as PNG
(--size pixels) through `Index.build(regions="grid")` (decode, 1 + 13 crops
per image, write) and, for comparison, the in-memory `Indexer.index_images`
on the same decoded images. Model loading is not counted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import write_rows


def _drop_caches() -> bool:
    """Drop the page cache (root on Linux only), so `open` is timed cold."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def synthetic_gallery(num: int, n: int, dim: int, seed: int = 0):
    """Unit-vector embeddings `[N, D]`, regions `[N, n, D]` (filled in chunks: one copy in memory), boxes, mask."""
    from geosteer import GallerySide

    gen = torch.Generator().manual_seed(seed)
    parts = torch.empty(num, n, dim)
    for i in range(0, num, 8192):
        parts[i : i + 8192] = F.normalize(torch.randn(min(8192, num - i), n, dim, generator=gen), dim=-1)
    emb = F.normalize(parts.mean(dim=1) + 0.1 * torch.randn(num, dim, generator=gen), dim=-1)
    boxes = torch.rand(num, n, 4, generator=gen) * 224
    return GallerySide(emb, parts=parts, parts_mask=torch.ones(num, n, dtype=torch.bool), part_boxes=boxes)


def bench_open(num: int, n: int, dim: int, shards: int | None, repeats: int, work: Path) -> list[dict]:
    from geosteer import QuerySide, get_config
    from geosteer.index import Index, write_index

    t0 = time.perf_counter()
    g = synthetic_gallery(num, n, dim)
    print(f"synthetic gallery N={num:,} n={n} D={dim} float32 made in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # warm-up on a small in-memory gallery: numba's and torch's first calls are not the index's cost
    from geosteer import GallerySide, GeoSteerHead

    small = GallerySide(g.embeddings[:200].clone(), parts=g.parts[:200].clone(), parts_mask=g.parts_mask[:200].clone(),
                        part_boxes=g.part_boxes[:200].clone())
    GeoSteerHead(get_config("default"))(QuerySide(small.embeddings[:1], parts=small.parts[:1, :4],
                                                  relations=torch.full((1, 1, 3), -1)), small)
    rows = []
    for layout in [1] + ([shards] if shards and shards > 1 else []):
        out = work / f"index_{layout}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        write_index(g, [f"images/{i:07d}.jpg" for i in range(num)], out, encoder=("synthetic", "0" * 16),
                    shard_size=-(-num // layout))
        t_write = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        opens, cold = [], False
        for _ in range(repeats):
            cold = _drop_caches()
            t0 = time.perf_counter()
            index = Index.open(out)
            opens.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gallery = index.gallery
        t_gallery = time.perf_counter() - t0
        q = QuerySide(gallery.embeddings[:1].clone(), parts=gallery.parts[:1, :4].clone(),
                      relations=torch.full((1, 1, 3), -1))
        t0 = time.perf_counter()
        index.search(q, get_config("default"), k=10)
        t_search = time.perf_counter() - t0
        _drop_caches()
        t0 = time.perf_counter()
        Index.open(out).verify()
        t_verify = time.perf_counter() - t0
        row = {"bench": "index_open", "N": num, "n": n, "D": dim, "dtype": "float32", "shards": layout,
               "bytes": size, "write_s": t_write, "open_s": min(opens), "open_s_all": opens, "cold": cold,
               "first_gallery_s": t_gallery, "first_search_s": t_search, "verify_s": t_verify}
        print(f"{layout} shard(s), {size / 2**30:.2f} GiB: write {t_write:.1f} s; open {min(opens) * 1e3:.1f} ms "
              f"({'cold' if cold else 'warm'} cache, min of {repeats}); first gallery access {t_gallery:.2f} s; "
              f"first search (Q=1, K=100) {t_search:.2f} s; verify {t_verify:.1f} s", file=sys.stderr)
        rows.append(row)
        del index, gallery
        shutil.rmtree(out, ignore_errors=True)
    return rows


def bench_throughput(num: int, size: int, batch: int, work: Path) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from geosteer.encoders import load_clip
    from geosteer.geoshapes import random_scene, render
    from geosteer.index import Index, Indexer, load_image

    folder = work / "images"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(num):
        render(random_scene(random.Random(i)), size=size).save(folder / f"{i:05d}.png")
    encoder = load_clip("demo")
    # warm-up: numba / torch first calls are not indexing throughput
    Indexer(encoder, batch_size=batch).index_images([load_image(p) for p in sorted(folder.iterdir())[:batch]])
    out = work / "index_demo"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    index = Index.build(folder, out, encoder, regions="grid", batch_size=batch, progress=False)
    t_build = time.perf_counter() - t0
    images = [load_image(p) for p in sorted(folder.iterdir())]
    t0 = time.perf_counter()
    Indexer(encoder, batch_size=batch).index_images(images, method="grid")
    t_memory = time.perf_counter() - t0
    row = {"bench": "index_throughput", "model": "demo", "regions": "grid", "images": num, "size": size,
           "batch_size": batch, "threads": torch.get_num_threads(), "build_s": t_build,
           "build_images_per_s": num / t_build, "in_memory_s": t_memory, "in_memory_images_per_s": num / t_memory,
           "n": index.manifest["n"], "D": index.manifest["dim"]}
    print(f"demo model, regions=grid, {num} PNG scenes of {size}px, batch {batch}, {torch.get_num_threads()} threads: "
          f"Index.build {num / t_build:.1f} images/s ({t_build:.1f} s); in-memory Indexer.index_images "
          f"{num / t_memory:.1f} images/s ({t_memory:.1f} s)", file=sys.stderr)
    return [row]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", choices=("open", "throughput", "all"), default="all")
    p.add_argument("--num", type=int, default=100_000, help="images in the synthetic index (default: %(default)s)")
    p.add_argument("--n", type=int, default=13, help="regions per image (default: %(default)s, the grid method)")
    p.add_argument("--dim", type=int, default=512, help="embedding dim (default: %(default)s)")
    p.add_argument("--shards", type=int, default=25, help="also time this many shards (default: %(default)s; 1 = skip)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=256, help="rendered images to index (default: %(default)s)")
    p.add_argument("--size", type=int, default=96, help="their side in pixels (default: %(default)s, the demo's input)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed after)")
    p.add_argument("--out", default=None, help="append JSON rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_index_"))
    rows = []
    try:
        if args.what in ("open", "all"):
            rows += bench_open(args.num, args.n, args.dim, args.shards, args.repeats, work)
        if args.what in ("throughput", "all"):
            rows += bench_throughput(args.images, args.size, args.batch_size, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    from geosteer.environment import environment

    env = environment("cpu")
    write_rows(args.out, [{**r, **env} for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
