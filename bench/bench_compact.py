"""The head on compact region vectors (float16; int8 + a scale per row) against float32, in one run (issue 23).

On one workload of DESIGN §4 (default `cpu`: Q = 1,024, N = 100,000, K = 50,
4 x 16 regions, D = 512) the same seeded data is stored three ways
(`geosteer.quantize`): float32 regions (32 KiB an image), float16 (16 KiB)
and int8 + one float32 scale per region (8.06 KiB). Every repeat runs the
eager default head (`bench_head.head_config`: parts mode, λ = 0.5) once per
storage, in a rotating order so a change of load on the shared machine hits
all three alike, and then `geosteer::part_cost` alone on the float32 head's
candidates (the op the storage changes). Rows (JSON lines):

- ``kind="head"``: queries/s, wall seconds (median, quartiles), process CPU
  seconds, every stage's seconds (through the head's `stage_hook`; the
  `cost` stage is `part_cost`), the ratios to float32 (of the medians, and
  the median of the per-repeat paired ratios), bytes of region storage per
  image, and what the rounding does to the result: agreement of the ranking
  with float32's (top 1, whole rows, overlap of the top 10), the change of
  the alignment A on the same candidates, R@1 of the planted target;
- ``kind="op"``: the same timings for `part_cost` alone (with the head's
  unit check);
- load averages before and after each run and the environment.

Example (from the repo root)::

    python -m bench.bench_compact --workload cpu --out bench/results/compact_cpu_$(date +%F).jsonl
    python -m bench.bench_compact --dry-run        # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
from torch import Tensor

from bench import common
from bench.bench_head import StageTimer, head_config, ranked_agreement, resolve_workload
from bench.common import WORKLOADS
from geosteer import GallerySide, GeoSteerHead
from geosteer.environment import environment
from geosteer.ops.part_cost import pad_cost
from geosteer.quantize import compact_parts

STORAGES = ("float32", "float16", "int8")


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def galleries(data: common.BenchData) -> dict[str, GallerySide]:
    """The workload's gallery with its regions stored each way (the same values, rounded)."""
    sides = {"float32": GallerySide(data.gallery, parts=data.gallery_parts)}
    for name, dtype in (("float16", torch.float16), ("int8", torch.int8)):
        rows, scale = compact_parts(data.gallery_parts, dtype)
        sides[name] = GallerySide(data.gallery, parts=rows, parts_scale=scale)
    return sides


def region_bytes(side: GallerySide) -> int:
    """Bytes of region storage per image (rows + scales)."""
    per = side.parts[0].numel() * side.parts.element_size()
    if side.parts_scale is not None:
        per += side.parts_scale[0].numel() * side.parts_scale.element_size()
    return per


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over repeats of time / float32's time in the same repeat (robust to load drifting between repeats)."""
    return statistics.median(t / b for t, b in zip(times, base))


def rounding_effect(res, base) -> dict:
    """How far the storage's rounding moves the head from float32 on the same candidates.

    The first stage reads the float32 pooled embeddings in every storage, so
    both results hold the same K candidates per query; compared per candidate
    (sorted by id): the alignment A's largest and mean absolute change, and
    the overlap of the top 10.
    """
    def by_id(r):
        order = r.indices.argsort(dim=1)
        return r.indices.gather(1, order), r.alignment.gather(1, order)

    ids, align = by_id(res)
    base_ids, base_align = by_id(base)
    if not torch.equal(ids, base_ids):
        return {"same_candidates": False}
    diff = (align - base_align).abs()
    top = min(10, res.indices.shape[1])
    overlap = [len(set(a) & set(b)) / top for a, b in zip(res.indices[:, :top].tolist(), base.indices[:, :top].tolist())]
    return {"same_candidates": True, "alignment_max_abs_diff": float(diff.max()),
            "alignment_mean_abs_diff": float(diff.mean()), "overlap_at10": statistics.mean(overlap)}


def stage_times(per_repeat: list[dict[str, list[float]]], name: str) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of stage `name` in each repeat."""
    return [r[name][0] for r in per_repeat], [r[name][1] for r in per_repeat]


def run(work, data: common.BenchData, repeats: int, env: dict, out: str | None) -> list[dict]:
    """Time the head and `part_cost` on each storage, interleaved; write and return the rows."""
    cfg = head_config(work)
    sides = galleries(data)
    timer = StageTimer(torch.device("cpu"))
    head = GeoSteerHead(cfg, stage_hook=timer)
    query_kwargs = dict(query_parts=data.query_parts)

    def call_head(name: str):
        return head(data.query, sides[name], **query_kwargs)

    cold, results = {}, {}
    for name in STORAGES:  # cold: first call (numba kernels load from the disk cache or compile)
        t0 = time.perf_counter()
        results[name] = call_head(name)
        cold[name] = time.perf_counter() - t0
    ids = results["float32"].indices
    qmask = torch.ones(data.query_parts.shape[:2], dtype=torch.bool)
    num_regions = data.gallery_parts.shape[1]
    pad = pad_cost(num_regions, num_regions)

    def call_op(name: str) -> Tensor:
        side = sides[name]
        gmask = torch.ones(side.parts.shape[:2], dtype=torch.bool)
        return torch.ops.geosteer.part_cost(data.query_parts, qmask, ids, side.parts, gmask, pad, cfg.backend,
                                            "gallery_parts", side.parts_scale)

    for name in STORAGES:
        call_op(name)
    wall = {(kind, n): [] for kind in ("head", "op") for n in STORAGES}
    cpu = {(kind, n): [] for kind in ("head", "op") for n in STORAGES}
    stage = {n: [] for n in STORAGES}  # per repeat: {stage: [wall s, process CPU s]}
    load_before = load()
    for r in range(repeats):
        order = STORAGES[r % 3:] + STORAGES[: r % 3]
        for kind, fn in (("head", call_head), ("op", call_op)):
            for name in order:
                timer.spent = {}
                c0, t0 = time.process_time(), time.perf_counter()
                fn(name)
                wall[kind, name].append(time.perf_counter() - t0)
                cpu[kind, name].append(time.process_time() - c0)
                if kind == "head":
                    stage[name].append({k: list(v) for k, v in timer.spent.items()})
        print(f"  repeat {r + 1}/{repeats}: head " + ", ".join(f"{n} {wall['head', n][-1]:.3f}s" for n in STORAGES)
              + f"  load {load()[0]}", file=sys.stderr)
    load_after = load()
    rows = []
    for kind in ("head", "op"):
        base, base_cpu = wall[kind, "float32"], cpu[kind, "float32"]
        for name in STORAGES:
            times = wall[kind, name]
            stats = common.summarise(times)
            row = {"bench": "compact", "kind": kind, "workload": work.name, "regions": name, **work.shape_dict(),
                   "repeats": repeats, "times_s": times, **stats, "cpu_times_s": cpu[kind, name],
                   "cpu_median_s": statistics.median(cpu[kind, name]),
                   "ratio_vs_float32": stats["median_s"] / statistics.median(base),
                   "paired_ratio_vs_float32": paired_ratio(times, base),
                   "cpu_ratio_vs_float32": statistics.median(cpu[kind, name]) / statistics.median(base_cpu),
                   "region_bytes_per_image": region_bytes(sides[name]),
                   "load_before": load_before, "load_after": load_after, **env}
            if kind == "head":
                res = results[name]
                cost, cost_cpu = stage_times(stage[name], "cost")
                base_cost, base_cost_cpu = stage_times(stage["float32"], "cost")
                row.update(queries_per_s=work.Q / stats["median_s"], cold_s=cold[name],
                           stages_median_s={k: [statistics.median(stage_times(stage[name], k)[i]) for i in (0, 1)]
                                            for k in stage[name][0]},
                           cost_stage_times_s=cost, cost_stage_cpu_s=cost_cpu,
                           cost_stage_median_s=statistics.median(cost),
                           cost_stage_ratio_vs_float32=statistics.median(cost) / statistics.median(base_cost),
                           cost_stage_cpu_ratio_vs_float32=statistics.median(cost_cpu) / statistics.median(base_cost_cpu),
                           target_at1=float((res.indices[:, 0] == data.targets).float().mean()),
                           **ranked_agreement(res.indices, results["float32"].indices),
                           **rounding_effect(res, results["float32"]),
                           note="eager GeoSteerHead(head_config(work)); stages timed through its stage_hook "
                                "(stages_median_s: stage -> [wall, process CPU] medians)")
            else:
                row.update(note="geosteer::part_cost alone on the float32 head's candidates, unit check on")
            rows.append(row)
            line = (f"[{kind}] {name:8s} median {stats['median_s']:.4f}s  x{row['ratio_vs_float32']:.3f} "
                    f"(paired x{row['paired_ratio_vs_float32']:.3f}, CPU x{row['cpu_ratio_vs_float32']:.3f})")
            if kind == "head":
                line += (f"  {row['queries_per_s']:.0f} q/s  cost stage {row['cost_stage_median_s']:.4f}s "
                         f"x{row['cost_stage_ratio_vs_float32']:.3f} (CPU x{row['cost_stage_cpu_ratio_vs_float32']:.3f})"
                         f"  agree top1 {row['agree_top1']:.4f} rows {row['agree_rows']:.4f} "
                         f"top10 {row.get('overlap_at10', float('nan')):.4f} "
                         f"max|dA| {row.get('alignment_max_abs_diff', float('nan')):.2e}")
            print(line, file=sys.stderr)
    common.write_rows(out, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_compact", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="cpu", choices=sorted(set(WORKLOADS) - {"faiss", "sweep"}))
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (each runs every storage once)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON lines file to append to "
                        "(default bench/results/compact_<workload>_<date>.jsonl)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, 2 repeats: a smoke test in seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = resolve_workload(args.workload, args.dry_run)
    if work.dtype != "fp32":
        work = work.replace(dtype="fp32")  # the CPU head's queries; compact regions are the point here
    repeats = min(args.repeats, 2) if args.dry_run else args.repeats
    date = datetime.date.today().isoformat()
    out = args.out or str(common.REPO / "bench" / "results" / f"compact_{work.name}_{date}.jsonl")
    env = environment("cpu")
    env["dry_run"] = args.dry_run
    t0 = time.perf_counter()
    print(f"workload {work}: generating data ...", file=sys.stderr)
    data = common.make_data(work, "cpu", args.seed)
    print(f"  data ready in {time.perf_counter() - t0:.1f}s, load {load()}", file=sys.stderr)
    rows = run(work, data, repeats, env, out)
    print(f"{len(rows)} rows -> {out}  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
