"""The steering controllability benchmark (geosteer.geoshapes.steering) on validation and test seeds.

Each method's strength is chosen on the validation seeds (best P@10 of the
request with nDCG@10 of the original query within 2 points of no
steering), then reported on the test seeds: mean ± std over seeds, and the
paired difference (geosteer's best vs the best peer, per request, pooled
over the test seeds) with its standard error. Also the P@10 / nDCG@10
curve against the strength of every method on the test seeds (a PNG), so
the knob's monotone effect can be seen.

    python -m bench.bench_steering [--cache-dir /tmp/geosteer-cache] [--size 600]

Writes bench/results/steering_<date>.json and docs/steering_strength.png and
prints the markdown table docs/steering.md quotes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path

import torch

from geosteer.encoders import load_clip
from geosteer.environment import environment
from geosteer.geoshapes import steering as st
from geosteer.geoshapes.index import SplitIndexer
from geosteer.geoshapes.splits import TEST_SEEDS, VALIDATION_SEEDS

PEERS = ("additive", "additive-contrast", "alpha-qe")
GEOSTEER = ("geosteer-alpha", "geosteer-beta", "geosteer-delta", "geosteer-rerank+delta")
BASELINES = ("none", "geosteer-rerank")
METRIC_NAMES = ("p10", "p50", "ndcg10", "rel10")


def _mean_over(tasks, name: str, strength: float) -> dict[str, float]:
    return {m: v["mean"] for m, v in _summary(tasks, name, strength).items()}


def _summary(tasks, name: str, strength: float) -> dict:
    per_seed = [st.metrics(st.rank(t, name, strength), t) for t in tasks]
    out = {}
    for m in METRIC_NAMES:
        vals = [r[m] for r in per_seed]
        out[m] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "seeds": vals}
    return out


def _pooled(tasks, name: str, strength: float) -> dict[str, torch.Tensor]:
    rows = [st.per_request(st.rank(t, name, strength), t) for t in tasks]
    return {m: torch.cat([r[m] for r in rows]) for m in ("p10", "ndcg10")}


def run(cache_dir: str | None, size: int) -> dict:
    """Index the seeds, choose strengths on validation, report test."""
    indexer = SplitIndexer(load_clip("demo"), families=("masked",), progress=True, cache_dir=cache_dir)
    val = [st.build_task(indexer, s, size) for s in VALIDATION_SEEDS]
    test = [st.build_task(indexer, s, size) for s in TEST_SEEDS]
    names = (*BASELINES, *PEERS, *GEOSTEER)
    base_val = _mean_over(val, "none", 0.0)["ndcg10"]
    chosen, validation, curves = {}, {}, {}
    for n in names:
        grid = {w: _mean_over(val, n, w) for w in st.method_grid(n)}
        validation[n] = {str(w): m for w, m in grid.items()}
        chosen[n] = st.pick_strength(grid, base_val)
        curves[n] = {str(w): _mean_over(test, n, w) for w in st.method_grid(n)}
    test_results = {n: {"strength": chosen[n], **_summary(test, n, chosen[n])} for n in names}
    base_test = test_results["none"]["ndcg10"]["mean"]
    keeps = lambda n: test_results[n]["ndcg10"]["mean"] >= base_test - 2.0  # noqa: E731
    best_peer = max(PEERS, key=lambda n: test_results[n]["p10"]["mean"])
    best_geo = max(GEOSTEER, key=lambda n: (keeps(n), test_results[n]["p10"]["mean"]))
    a, b, none = _pooled(test, best_geo, chosen[best_geo]), _pooled(test, best_peer, chosen[best_peer]), _pooled(test, "none", 0.0)
    comparisons = {
        "best_geosteer": best_geo, "best_peer": best_peer,
        "p10_geosteer_minus_peer": st.paired(a["p10"], b["p10"]),
        "ndcg10_geosteer_minus_none": st.paired(a["ndcg10"], none["ndcg10"]),
        "ndcg10_peer_minus_none": st.paired(b["ndcg10"], none["ndcg10"]),
        "requests": int(a["p10"].numel()),
    }
    ceiling = statistics.fmean(float(st.precision_at(t.satisfied.float().argsort(dim=1, descending=True), t.satisfied, 50).mean()) * 100 for t in test)
    return {
        "benchmark": "geoshapes steering controllability", "model": "demo", "regions": st.REGIONS, "pool": st.POOL,
        "gallery_size": size, "validation_seeds": list(VALIDATION_SEEDS), "test_seeds": list(TEST_SEEDS),
        "requests_per_seed": [len(t.requests) for t in test], "p50_ceiling": ceiling,
        "methods": st.METHODS, "chosen_strength": chosen, "validation": validation, "test": test_results,
        "test_curves": curves, "comparisons": comparisons, "environment": environment(),
    }


def table(results: dict) -> str:
    """The markdown table of the test results."""
    lines = ["| method | strength | P@10 request | P@50 request | nDCG@10 query | P@10 query |", "|---|---:|---:|---:|---:|---:|"]
    for n, r in results["test"].items():
        cells = [f"{r[m]['mean']:.1f} ± {r[m]['std']:.1f}" for m in METRIC_NAMES]
        lines.append(f"| `{n}` | {r['strength']:g} | " + " | ".join(cells) + " |")
    c = results["comparisons"]
    d, e = c["p10_geosteer_minus_peer"], c["ndcg10_geosteer_minus_none"]
    lines.append("")
    lines.append(f"Paired over {c['requests']} test requests: `{c['best_geosteer']}` − `{c['best_peer']}` P@10 "
                 f"**{d[0]:+.1f} ± {d[1]:.1f}** (SE); nDCG@10 vs `none` {e[0]:+.1f} ± {e[1]:.1f}; "
                 f"`{c['best_peer']}` nDCG@10 vs `none` {c['ndcg10_peer_minus_none'][0]:+.1f} ± {c['ndcg10_peer_minus_none'][1]:.1f}. "
                 f"P@50 ceiling (every satisfying scene first): {results['p50_ceiling']:.1f}.")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """P@10 of the request and nDCG@10 of the query against each method's strength (test seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, curve in results["test_curves"].items():
        if len(curve) < 2:
            continue
        ws = [float(w) for w in curve]
        style = "-" if n.startswith("geosteer") else "--"
        for ax, m in zip(axes, ("p10", "ndcg10")):
            ax.plot(ws, [curve[w][m] for w in curve], style, marker="o", ms=3, label=n)
    base = results["test"]["none"]
    for ax, m, title in zip(axes, ("p10", "ndcg10"), ("P@10 of the request", "nDCG@10 of the original query")):
        ax.axhline(base[m]["mean"], color="grey", lw=0.8, ls=":", label="none")
        ax.set_xscale("log")
        ax.set_xlabel("strength (each method's own knob)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].axhline(base["ndcg10"]["mean"] - 2.0, color="red", lw=0.8, ls=":", label="none − 2")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"GeoShapes steering, test seeds {results['test_seeds']}, demo model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default="/tmp/geosteer-cache")
    p.add_argument("--size", type=int, default=600, help="gallery scenes per seed")
    p.add_argument("--out", default=f"bench/results/steering_{dt.date.today()}.json")
    p.add_argument("--plot", default="docs/steering_strength.png")
    args = p.parse_args(argv)
    results = run(args.cache_dir, args.size)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    plot(results, Path(args.plot))
    print(table(results))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
