"""The README's "million images" block, from the committed results of bench_million, bench_compact_quality and bench_phrasings.

    python -m bench.make_million_table                       # newest results, print
    python -m bench.make_million_table --write README.md     # replace the <!-- million:start/end --> block

Inputs (newest of each in bench/results/ unless given): `million_*.json`
(`python -m bench.bench_million`: synthetic indexes written, opened and
searched), `compact_quality_*.json` (`python -m bench.bench_compact_quality`:
GeoShapes R@1 with float16 / int8 regions) and `phrasings_compact_*.json`
(`python -m bench.bench_phrasings --regions-dtypes float32,float16,int8`: the
real-photo collages) and `compact_cpu_*.jsonl` (`python -m bench.bench_compact`:
the head's speed on each storage). Nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.make_photo_tables import newest
from bench.make_tables import write_or_print

MARKER = "million"
COMPACT = ("float16", "int8")


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


def _latency(run: dict, name: str) -> str:
    single = run.get(name, {}).get("single")
    return f"{single['p50_ms']:.0f} / {single['p99_ms']:.0f}" if single else "—"


def _private(run: dict) -> str:
    anon = run.get("search_end_rss", {}).get("rssanon_mib")
    return "—" if anon is None else f"{anon / 1024:.1f} GiB"


def million_table(doc: dict) -> list[str]:
    """One row per run: bytes, disk, build, open, the three first stages' single-query latency, recall, peak RSS."""
    runs = doc["runs"]
    ivf = runs[0]["ivfpq"]
    lines = [
        f"| images, regions | region bytes / image | disk | build | open / first access | one query, exact, p50 / p99 "
        f"ms | {ivf['factory']} (nprobe {ivf['nprobe']}) | + top {ivf['refine']}K re-scored | recall@{doc['shape']['K']} "
        f"| peak RSS (private at the end) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        iv = r["ivfpq"]
        lines.append(
            f"| {r['images']:,}, {r['regions_dtype']} | {r['region_bytes_per_image']:,.0f} | {_size(r['disk_bytes'])} "
            f"| {r['build_s']:.0f} s | {r['open_s']:.2f} / {r['first_gallery_access_s']:.1f} s | {_latency(r, 'exact')} "
            f"| {_latency(r, 'ivfpq_search')} | {_latency(r, 'ivfpq_refined_search')} "
            f"| {iv['recall_at_100_of_exact']:.2f} / {iv['recall_at_100_of_exact_refined']:.2f} "
            f"| {r['search_peak_rss_mib'] / 1024:.1f} GiB ({_private(r)}) |")
    return lines


def quality_line(geo: dict, photos: dict) -> str:
    """Compact regions vs float32: the largest difference of a split's mean R@1, and of one seed; the collages'."""
    mean_diff = {d: max(abs(m["r1"][d] - m["r1"]["float32"]) for split in geo["summary"].values()
                        for m in split.values()) for d in COMPACT}
    seed_diff = geo["worst_paired_diff_points"]
    worst = photos["worst_paired"]
    splits = ", ".join(geo["summary"])
    return (f"Quality, float16 / int8 regions against float32 on the same indexes: GeoShapes ({splits}; seeds "
            f"{', '.join(map(str, geo['seeds']))}, {geo['queries']} queries, methods {', '.join(geo['methods'])}): "
            f"the largest difference of a split's mean R@1 {mean_diff['float16']:.1f} / {mean_diff['int8']:.1f} points "
            f"(of one seed: {seed_diff['float16']:.0f} / {seed_diff['int8']:.0f}, one query in {geo['queries']}); "
            f"the real-photo collages through the product (seeds {', '.join(map(str, photos['seeds']))}, every "
            f"phrasing): {worst['float16']['max_abs_seed_diff']:.0f} / {worst['int8']['max_abs_seed_diff']:.0f} points, "
            f"{worst['float16']['changed_queries'] + worst['int8']['changed_queries']} queries changed.")


def speed_line(rows: list[dict]) -> str:
    """The head's time with compact regions against float32 in the same run (the last run per thread count)."""
    runs: dict[int, dict[tuple[str, str], dict]] = {}
    for r in rows:
        runs.setdefault(r["threads"], {})[(r["kind"], r["regions"])] = r
    parts = []
    for threads, run in sorted(runs.items()):
        head = [run[("head", d)]["paired_ratio_vs_float32"] for d in COMPACT]
        op = [run[("op", d)]["paired_ratio_vs_float32"] for d in COMPACT]
        parts.append(f"{threads} thread{'s' if threads > 1 else ''}: {head[0]:.2f} / {head[1]:.2f} "
                     f"(`part_cost` alone {op[0]:.2f} / {op[1]:.2f}; load {run[('head', 'float32')]['load1']:.1f})")
    w = rows[0]
    return (f"Speed on the `{w['workload']}` workload (Q = {w['Q']:,}, N = {w['N']:,}, K = {w['K']}, {w['m']} × {w['n']} "
            f"regions, D = {w['D']}; the three storages interleaved in one run): the head's time with float16 / int8 "
            f"regions over float32's, median of paired repeats, " + "; ".join(parts) + ".")


def make_markdown(million: Path, geo: Path, photos: Path, speed: Path) -> str:
    doc = json.loads(million.read_text())
    env = doc["environment"]
    loads = [v for r in doc["runs"] for k in ("load_before", "load_after") for v in r[k][:1]]
    lines = [f"Synthetic indexes (n = {doc['shape']['n']}, D = {doc['shape']['D']}, K = {doc['shape']['K']}) written "
             f"from embeddings (`write_index`), opened and searched through `Searcher` in a fresh process on this "
             f"{env.get('cpu_count', '?')}-core, 24 GiB machine (load {min(loads):.1f}–{max(loads):.1f}; the IVF-PQ "
             f"built by `Index.build_first_stage`, memory-mapped); exact = every embedding scored; the peak RSS counts the "
             f"index's pages the search touched (page cache, mapped a whole folio per fault), the private memory "
             f"does not:", ""]
    lines += million_table(doc)
    lines += ["", quality_line(json.loads(geo.read_text()), json.loads(photos.read_text())) + " "
              + speed_line([json.loads(line) for line in speed.read_text().splitlines() if line.strip()])]
    lines += [f"From `bench/results/{million.name}`, `bench/results/{geo.name}`, `bench/results/{photos.name}`, "
              f"`bench/results/{speed.name}` (`python -m bench.bench_million --dtypes int8,float16,float32`, "
              "`python -m bench.bench_compact_quality`, `python -m bench.bench_phrasings --regions-dtypes "
              "float32,float16,int8`, `python -m bench.bench_compact --threads 1` and `--threads 2`; "
              "block: `python -m bench.make_million_table --write README.md`)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--million", type=Path, default=None, help="a bench_million JSON (default: the newest)")
    ap.add_argument("--geoshapes", type=Path, default=None, help="a bench_compact_quality JSON (default: the newest)")
    ap.add_argument("--photos", type=Path, default=None, help="a phrasings_compact JSON (default: the newest)")
    ap.add_argument("--speed", type=Path, default=None, help="a bench_compact JSON-lines file (default: the newest)")
    ap.add_argument("--write", type=Path, default=None, help="replace the million block of this file")
    args = ap.parse_args(argv)
    body = make_markdown(args.million or newest("million_*.json"), args.geoshapes or newest("compact_quality_*.json"),
                         args.photos or newest("phrasings_compact_*.json"), args.speed or newest("compact_cpu_*.jsonl"))
    return write_or_print(body, MARKER, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
