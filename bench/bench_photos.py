"""The real-photo collage benchmark: cosine vs rerank (parts only) vs rerank + structure.

Photos bundled with scikit-image / scikit-learn / matplotlib
(`geosteer.photos.PHOTOS`), collages of 2-4 of them side by side or
stacked, queries naming two photos and their relation; every target comes
with its position-swapped twin, the other layout and one-object-replaced
collages (`geosteer.photos.make_split`). Encoder: the concept bridge
(`load_clip("bridge")`, a CLIP stand-in); regions: the general-purpose
families only (grid, segments, halves; never the flat-colour ones).

1. Validation seeds (`geosteer.photos.VALIDATION_SEEDS`): a grid over the
   bridge's resize mode x region method x λ x γ; the choice maximises the
   mean R@1 of rerank + structure, then its twin accuracy.
2. Test seeds (`TEST_SEEDS`): cosine, rerank (γ = 0) and rerank + structure
   at the choice, R@1 / twin / layout / replaced, mean ± std over seeds;
   every region method at the chosen λ, γ; and the diagnostics of what
   limits the numbers (region recall of the photos' tiles, crop
   recognition, part localisation, first-stage recall@K).

Writes bench/results/photos_<date>.json. Image embeddings are cached on
disk (`--cache-dir`), so a re-run only segments and matches.

    HF_HUB_OFFLINE=1 python -m bench.bench_photos
    python -m bench.bench_photos --quick     # one validation and one test seed, small grid
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from geosteer.encoders.bridge import DEFAULT_TEMPERATURE, RESIZE_MODES, top_classes
from geosteer.encoders.clip import load_bridge
from geosteer.environment import environment
from geosteer.index import Indexer
from geosteer.photos import PHOTOS, TEST_SEEDS, VALIDATION_SEEDS, Method, index_split, load_photos, make_split, metrics, run_method
from geosteer.photos.benchmark import crop_recognition, first_stage_recall, part_localisation, region_recall, summarise
from geosteer.photos.cache import CachedEncoder
from geosteer import get_config

REPO = Path(__file__).resolve().parent.parent
REGIONS = ("grid", "segments", "segments+grid", "halves", "segments+halves")
FAMILIES = ("segments", "grid", "halves")
LAMS = (0.5, 0.8, 1.0)
GAMMAS = (0.1, 0.25, 0.5, 1.0)
K = 100  # the preset's K: the whole 100-collage gallery is re-ranked
METRIC_NAMES = ("r1", "r5", "twin", "layout", "replaced")


def methods_at(regions: str, lam: float, gamma: float, k: int = K) -> list[Method]:
    return [
        Method("cosine", get_config("cosine", k=k), regions),
        Method("rerank", get_config("default", k=k, lam=lam, gamma=0.0), regions),
        Method("rerank+structure", get_config("default", k=k, lam=lam, gamma=gamma), regions),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--val-seeds", type=int, nargs="+", default=list(VALIDATION_SEEDS))
    ap.add_argument("--test-seeds", type=int, nargs="+", default=list(TEST_SEEDS))
    ap.add_argument("--queries", type=int, default=20, help="queries per seed (5 collages each)")
    ap.add_argument("--resizes", nargs="+", default=list(RESIZE_MODES), choices=RESIZE_MODES)
    ap.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    ap.add_argument("--regions", nargs="+", default=list(REGIONS))
    ap.add_argument("--lams", type=float, nargs="+", default=list(LAMS))
    ap.add_argument("--gammas", type=float, nargs="+", default=list(GAMMAS))
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "geosteer" / "photos"))
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/photos_<date>.json)")
    ap.add_argument("--quick", action="store_true", help="one validation and one test seed, a small grid")
    args = ap.parse_args(argv)
    if args.quick:
        args.val_seeds, args.test_seeds = args.val_seeds[:1], args.test_seeds[:1]
        args.lams, args.gammas, args.resizes = [0.8], [0.5], args.resizes[:1]
    start = time.perf_counter()
    date = datetime.date.today().isoformat()
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / f"photos_{date}.json"
    families = sorted({f for r in args.regions for f in r.split("+")}, key=FAMILIES.index)

    encoders, indexers, indexes = {}, {}, {}
    for resize in args.resizes:
        enc = CachedEncoder(load_bridge(temperature=args.temperature, resize=resize), args.cache_dir)
        encoders[resize], indexers[resize] = enc, Indexer(enc)

    def index(resize: str, seed: int):
        key = (resize, seed)
        if key not in indexes:
            t = time.perf_counter()
            indexes[key] = index_split(indexers[resize], make_split(seed, args.queries), families)
            encoders[resize].save()
            print(f"  indexed seed {seed} ({resize}): {time.perf_counter() - t:.1f} s, "
                  f"{encoders[resize].misses} images encoded so far, {encoders[resize].hits} from the cache", file=sys.stderr)
        return indexes[key]

    # What the bridge sees in each photo (centre square, the benchmark's tiles before framing).
    first = encoders[args.resizes[0]]
    photos = load_photos()
    seen = {name: [(c, round(p, 3)) for c, p in top]
            for name, top in zip(photos, top_classes(first, list(photos.values()), k=3))}
    nouns = [PHOTOS[n].noun for n in photos]
    sims = first.encode_texts(nouns) @ first.encode_images(list(photos.values())).T
    recognised = {n: {"noun": PHOTOS[n].noun, "top_classes": seen[n],
                      "noun_ranks_photo_first": bool(sims[i].argmax() == i),
                      "noun_margin": round(float(sims[i, i] - sims[i][torch.arange(len(nouns)) != i].max()), 3)}
                  for i, n in enumerate(photos)}

    # 1. validation grid
    grid = []
    for resize, regions, lam, gamma in itertools.product(args.resizes, args.regions, args.lams, args.gammas):
        per_seed = []
        for seed in args.val_seeds:
            idx = index(resize, seed)
            cfg = get_config("default", k=K, lam=lam, gamma=gamma)
            per_seed.append(metrics(idx, run_method(idx, Method("rerank+structure", cfg, regions))))
        point = {"resize": resize, "regions": regions, "lam": lam, "gamma": gamma,
                 **{m: summarise([p[m] for p in per_seed]) for m in METRIC_NAMES}}
        grid.append(point)
        print(f"val {resize:9s} {regions:16s} lam={lam:<4} gamma={gamma:<5} R@1 {point['r1']['mean']:.3f} "
              f"twin {point['twin']['mean']:.3f}", file=sys.stderr)
    best = max(grid, key=lambda p: (p["r1"]["mean"], p["twin"]["mean"], -p["gamma"]))
    choice = {k: best[k] for k in ("resize", "regions", "lam", "gamma")}
    print(f"choice: {choice}", file=sys.stderr)

    # 2. test seeds
    resize = choice["resize"]
    test = {"per_seed": {}, "summary": {}, "by_regions": {}, "diagnostics": {}}
    per_method: dict[str, list[dict]] = {}
    by_regions: dict[str, list[dict]] = {}
    diags: list[dict] = []
    for seed in args.test_seeds:
        idx = index(resize, seed)
        row = {}
        for m in methods_at(choice["regions"], choice["lam"], choice["gamma"]):
            result = run_method(idx, m)
            row[m.name] = metrics(idx, result)
            if m.name != "cosine":
                row[m.name]["part_localisation"] = part_localisation(idx, m, result)
            per_method.setdefault(m.name, []).append(row[m.name])
        test["per_seed"][str(seed)] = row
        for regions in args.regions:
            m = methods_at(regions, choice["lam"], choice["gamma"])[2]
            result = run_method(idx, m)
            r = {**metrics(idx, result), "part_localisation": part_localisation(idx, m, result),
                 "region_recall": region_recall(idx, regions), "regions_per_image": float(idx.gallery(regions).parts_mask.sum(1).float().mean())}
            by_regions.setdefault(regions, []).append(r)
        sizes = [len(idx.split.gallery[t].tiles) for t in idx.split.targets]
        diags.append({
            "seed": seed,
            "crop_recognition": crop_recognition(indexers[resize], idx),
            **{f"first_stage_recall@{k}": first_stage_recall(idx, k) for k in (10, 20, 50, 100)},
            "target_photos": {str(n): sizes.count(n) for n in sorted(set(sizes))},
            "gallery": len(idx.split.gallery),
            "queries": len(idx.split.queries),
        })
        encoders[resize].save()
    test["summary"] = {name: {k: summarise([r[k] for r in rows]) for k in rows[0]} for name, rows in per_method.items()}
    test["by_regions"] = {name: {k: summarise([r[k] for r in rows]) for k in rows[0]} for name, rows in by_regions.items()}
    test["diagnostics"] = {"per_seed": diags, "summary": {k: summarise([d[k] for d in diags]) for k in diags[0]
                                                          if isinstance(diags[0][k], float)}}

    record = {
        "benchmark": "photos",
        "encoder": encoders[resize].name,
        "encoder_fingerprint": encoders[resize].fingerprint,
        "temperature": args.temperature,
        "queries_per_seed": args.queries,
        "k": K,
        "validation_seeds": args.val_seeds,
        "test_seeds": args.test_seeds,
        "photos": recognised,
        "validation": {"grid": grid, "objective": "mean R@1 of rerank+structure, then twin accuracy", "choice": choice},
        "test": test,
        "seconds": round(time.perf_counter() - start, 1),
        "command": "python -m bench.bench_photos " + " ".join(argv if argv is not None else sys.argv[1:]),
        "env": environment(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


def format_table(record: dict) -> str:
    """The test table: method x metric, mean ± std (%) over the test seeds."""
    c = record["validation"]["choice"]
    lines = [f"test seeds {record['test_seeds']}, {record['queries_per_seed']} queries each; encoder {record['encoder']}, "
             f"regions {c['regions']}, lam {c['lam']}, gamma {c['gamma']}, K {record['k']}", "",
             "| method | R@1 | twin | layout | replaced |", "|---|---:|---:|---:|---:|"]
    for name, s in record["test"]["summary"].items():
        cells = [f"{100 * s[m]['mean']:.1f} ± {100 * s[m]['std']:.1f}" for m in ("r1", "twin", "layout", "replaced")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| regions (rerank+structure) | R@1 | twin | region recall | part localisation | regions/image |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, s in record["test"]["by_regions"].items():
        lines.append(f"| {name} | {100 * s['r1']['mean']:.1f} ± {100 * s['r1']['std']:.1f} | "
                     f"{100 * s['twin']['mean']:.1f} ± {100 * s['twin']['std']:.1f} | {100 * s['region_recall']['mean']:.1f} | "
                     f"{100 * s['part_localisation']['mean']:.1f} | {s['regions_per_image']['mean']:.1f} |")
    d = record["test"]["diagnostics"]["summary"]
    lines += ["", "diagnostics: " + ", ".join(f"{k} {100 * v['mean']:.1f}%" for k, v in d.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
