"""Plot the head's throughput sweep: queries/s vs Q and vs K, one line per provider.

    python -m bench.plot_head bench/results/head_cpu_screen_2026-11-29.jsonl --out bench/results/head_cpu_screen_2026-11-29.png

Reads the `sweep` rows that `python -m bench.bench_head --workload sweep`
writes (rows of other workloads in the same files are ignored).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from bench import common

_STYLE = {
    "geosteer": dict(color="C0", marker="o"),
    "geosteer-compiled": dict(color="C0", marker="s", linestyle="--"),
    "geosteer-tla": dict(color="C1", marker="^"),
    "naive": dict(color="C3", marker="x"),
    "naive-perquery": dict(color="C3", marker="+", linestyle="--"),
    "first-stage": dict(color="k", marker=".", linestyle=":"),
}


def plot(paths: list[str | Path], out: str | Path) -> None:
    """Write a two-panel PNG (vs Q, vs K) of the sweep rows in `paths`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in common.read_rows(paths) if r.get("sweep") and "queries_per_s" in r]
    if not rows:
        raise SystemExit(f"no sweep rows with timings in {[str(p) for p in paths]}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, axis, fixed in ((axes[0], "Q", "K"), (axes[1], "K", "Q")):
        lines: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
        for r in rows:
            if r["sweep"] != axis:
                continue
            label = r["provider"] + ("" if r["device"] == "cpu" else f" ({r['device']})")
            q = r["queries_run"]
            # error bar: the quartiles of the repeats, as queries/s
            lines[label].append((r[axis], q / r["median_s"], q / r["p75_s"], q / r["p25_s"]))
        for label, pts in sorted(lines.items()):
            pts.sort()
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(x, y, yerr=err, label=label, capsize=2, **_STYLE.get(label.split(" ")[0], {}))
        fixed_values = sorted({r[fixed] for r in rows if r["sweep"] == axis})
        ax.set_xscale("log", base=2)
        ticks = sorted({r[axis] for r in rows if r["sweep"] == axis})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel(axis + (" (queries per call)" if axis == "Q" else " (candidates re-ranked)"))
        ax.set_ylabel("queries / s (median, quartile bars)")
        ax.set_title(f"throughput vs {axis}  ({fixed} = {', '.join(map(str, fixed_values))})")
    r0 = rows[0]
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"geosteer head, N={r0['N']:,}, m x n = {r0['m']} x {r0['n']}, D={r0['D']}, {r0['dtype']} — "
        f"{r0['device_name']}, torch {r0['torch']}, {r0['date'][:10]}, commit {str(r0.get('commit'))[:8]}",
        fontsize=9,
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot_head", description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+", help="bench.bench_head output files")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    plot(args.jsonl, args.out)
    print(f"plot -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
