"""GeoShapes R@1 with compact region vectors (float16, int8 + scale per row) beside float32, same splits and seeds.

Every (split, test seed) is indexed once with the demo model (float32
regions, as `geosteer eval` indexes them); each method of `geosteer eval`
then runs on that gallery three ways: its region vectors as they are, as
float16, and as int8 with one scale per row (`geosteer.quantize.compact_parts`,
what `geosteer index --regions-dtype` stores). Reported per split and
method: R@1 (%) mean over seeds for each dtype, and the largest paired
per-seed difference to float32 (issue 23: within 0.5 points).

    python -m bench.bench_compact_quality                      # writes bench/results/compact_quality_<date>.json
    python -m bench.bench_compact_quality --queries 20 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
from pathlib import Path

import torch

from geosteer.environment import environment
from geosteer.geoshapes.eval import default_methods, ranks
from geosteer.geoshapes.index import SplitIndexer
from geosteer.geoshapes.splits import SPLITS, TEST_SEEDS
from geosteer.encoders.clip import load_clip
from geosteer.encoders.regions import FAMILIES, METHODS
from geosteer.head import GeoSteerHead
from geosteer.quantize import compact_parts

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float32": None, "float16": torch.float16, "int8": torch.int8}


def r1_by_dtype(index, method) -> dict[str, float]:
    """R@1 of `method` on one indexed split with its gallery's region vectors in each of `DTYPES`."""
    cfg = method.config
    if cfg.k > index.images.shape[0]:
        cfg = cfg.replace(k=index.images.shape[0])
    queries, gallery = index.head_inputs(method.regions, method.max_regions, method.anchors, parts=method.uses_parts,
                                         steering=method.uses_steering, relations=cfg.gamma > 0)
    head = GeoSteerHead(cfg)
    out = {}
    for name, dtype in DTYPES.items():
        g = gallery
        if dtype is not None and gallery.parts is not None:
            parts, scale = compact_parts(gallery.parts, dtype)
            g = dataclasses.replace(gallery, parts=parts, parts_scale=scale)
        with torch.inference_mode():
            r = ranks(head(queries, g), index.targets)
        out[name] = float((r <= 1).float().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=100, help="queries per split (default %(default)s, as geosteer eval)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(TEST_SEEDS))
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/compact_quality_<date>.json)")
    args = ap.parse_args(argv)
    env_before = environment()
    methods = default_methods()
    fams = {f for m in methods if m.uses_parts for f in METHODS[m.regions]}
    indexer = SplitIndexer(load_clip("demo"), families=[f for f in FAMILIES if f in fams] or ["grid"], progress=False)
    per_seed: dict = {}
    for split in SPLITS:
        per_seed[split] = {}
        for seed in args.seeds:
            index = indexer.split(split, seed, num_queries=args.queries)
            per_seed[split][str(seed)] = {m.name: r1_by_dtype(index, m) for m in methods}
        print(split, {m.name: {d: round(100 * statistics.mean(per_seed[split][str(s)][m.name][d] for s in args.seeds), 1)
                               for d in DTYPES} for m in methods}, flush=True)
    summary = {
        split: {m.name: {
            "r1": {d: 100 * statistics.mean(per_seed[split][str(s)][m.name][d] for s in args.seeds) for d in DTYPES},
            "max_abs_paired_diff": {d: 100 * max(abs(per_seed[split][str(s)][m.name][d]
                                                     - per_seed[split][str(s)][m.name]["float32"]) for s in args.seeds)
                                    for d in ("float16", "int8")},
        } for m in methods}
        for split in SPLITS
    }
    worst = {d: max(v["max_abs_paired_diff"][d] for s in summary.values() for v in s.values()) for d in ("float16", "int8")}
    print("largest paired R@1 difference to float32 (points):", worst)
    record = {"benchmark": "compact_quality", "model": "demo", "seeds": args.seeds, "queries": args.queries,
              "methods": [m.name for m in methods], "summary": summary, "worst_paired_diff_points": worst,
              "per_seed": per_seed, "env_before": env_before, "env": environment()}
    out = Path(args.out) if args.out else RESULTS / f"compact_quality_{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
