"""Quality tables from the committed results: `geosteer eval --json` and `bench.tune_defaults` files.

    python -m bench.make_quality_table                                  # newest bench/results/eval_*.json, print
    python -m bench.make_quality_table bench/results/eval_2026-11-29.json --write docs/geoshapes.md
    python -m bench.make_quality_table bench/results/eval_2026-11-29.json --brief --write README.md
    python -m bench.make_quality_table --tune bench/results/tune_2026-11-29.json --write docs/tuning.md

An eval file gives the R@1 table of every method, the Hungarian vs per-part
max ablation and the steering gains (`--brief`: the R@1 table alone, the
README's); with --write they replace what lies between the
`<!-- quality:start -->` and `<!-- quality:end -->` markers of that file. A
tune file (`--tune`) gives the validation tables behind the presets, written
between `<!-- tune:start -->` and `<!-- tune:end -->`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geosteer.geoshapes.eval import METHOD_NAMES
from geosteer.geoshapes.splits import DESCRIPTIONS


def markers(name: str) -> tuple[str, str]:
    """The start and end marker lines of block `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


START, END = markers("quality")
TUNE_START, TUNE_END = markers("tune")
RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {"r1": "R@1", "r5": "R@5", "ndcg10": "nDCG@10"}


def _pct(st: dict) -> str:
    return f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}"


def _delta(st: dict) -> str:
    return f"{100 * st['mean']:+.1f} ± {100 * st['sem']:.1f}"


def markdown(results: dict, brief: bool = False) -> str:
    """Markdown tables: R@1 of every method, then (unless `brief`) the matching ablation and the steering gains.

    Methods `geosteer eval` no longer runs are left out (files before
    2026-12 hold "rerank+steer", which was "rerank" again).
    """
    methods = [m for m in results["methods"] if m in METHOD_NAMES]
    splits = results["splits"]
    seeds = results["seeds"]
    main = [m for m in methods if m != "rerank-max"]
    lines = [
        f"R@1 (%) on GeoShapes (text → image, {results['num_queries']} queries a split, one correct scene each), "
        f"mean ± std over gallery seeds {', '.join(map(str, seeds))}; model `{results['model']}`.",
        "",
        "| split | " + " | ".join(main) + " |",
        "|---|" + "---:|" * len(main),
    ]
    for s in splits:
        cells = []
        best = max(results["summary"][s][m]["r1"]["mean"] for m in main)
        for m in main:
            st = results["summary"][s][m]["r1"]
            cell = _pct(st)
            cells.append(f"**{cell}**" if st["mean"] == best else cell)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if not brief and "rerank-max" in methods and "rerank" in methods:
        lines += [
            "",
            "One-to-one (Hungarian) vs per-part max matching, R@1 (%); Δ = paired difference per seed, mean ± standard error:",
            "",
            "| split | Hungarian | per-part max | Δ |",
            "|---|---:|---:|---:|",
        ]
        for s in splits:
            h = results["summary"][s]["rerank"]["r1"]
            mx = results["summary"][s]["rerank-max"]["r1"]
            per = results["per_seed"][s]
            diffs = [per[str(seed)]["rerank"]["r1"] - per[str(seed)]["rerank-max"]["r1"] for seed in seeds]
            mean = sum(diffs) / len(diffs)
            sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else 0.0
            lines.append(f"| {s} | {_pct(h)} | {_pct(mx)} | {_delta({'mean': mean, 'sem': sd / len(diffs) ** 0.5})} |")
    steer = [m for m in ("steer",) if m in methods]
    if not brief and steer and results.get("vs_cosine"):
        lines += [
            "",
            "Steering vs cosine: paired gain per seed, mean ± standard error (points):",
            "",
            "| split | " + " | ".join(f"{m} ΔR@1 | {m} ΔnDCG@10" for m in steer) + " |",
            "|---|" + "---:|" * (2 * len(steer)),
        ]
        for s in splits:
            cells = []
            for m in steer:
                d = results["vs_cosine"][s][m]
                cells += [_delta(d["r1"]), _delta(d["ndcg10"])]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Splits: " + "; ".join(f"*{s}* — {DESCRIPTIONS.get(s, '')}" for s in splits) + "."]
    return "\n".join(lines)


def tune_markdown(record: dict) -> str:
    """Markdown of a `bench/tune_defaults.py` record: the validation tables behind the presets."""
    from itertools import groupby

    splits = list(record["cosine"])
    chosen = record["chosen"]
    k, lam = chosen["default"]["k"], chosen["default"]["lam"]
    row = lambda name, pt: f"| {name} | " + " | ".join(f"{100 * pt[s]['r1']['mean']:.1f}" for s in splits) + " |"  # noqa: E731
    head = ["| | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    lines = [f"Validation R@1 (%), seeds {', '.join(map(str, record['seeds']))}, {record['queries']} queries a split, "
             f"model `{record['model']}`. Re-ranking with each region method at its best λ (K = {k}, γ = 0.1):", ""]
    lines += head + [row("cosine", record["cosine"])]
    grid = [g for g in record["rerank_grid"] if g["k"] == k]
    for regions, rows in groupby(sorted(grid, key=lambda g: g["regions"]), key=lambda g: g["regions"]):
        best = max(rows, key=lambda g: g["hard_mean_r1"])
        lines.append(row(f"{regions} (λ = {best['lam']})", best["splits"]))
    lines += ["", f"λ for `{chosen['regions']}` (K = {k}):", ""] + head
    for g in sorted((g for g in grid if g["regions"] == chosen["regions"]), key=lambda g: g["lam"]):
        lines.append(row(f"λ = {g['lam']}", g["splits"]))
    if record.get("gamma_grid"):
        lines += ["", f"γ (the structure term) for `{chosen['regions']}`, K = {k}, λ = {lam}:", ""] + head
        for g in sorted(record["gamma_grid"], key=lambda g: g["gamma"]):
            lines.append(row(f"γ = {g['gamma']}", g["splits"]))
    steer = record["steer_grid"]
    lines += ["", "Steering alone (λ = 0): the best of each kind, by fine-split gain over cosine:", ""] + head
    kinds = {
        "β, regions, part anchors": [g for g in steer if g["alpha"] == 0 and g["anchors"] == "parts"
                                      and g["regions"] == chosen["regions"]],
        "β, regions, caption anchors": [g for g in steer if g["alpha"] == 0 and g["anchors"] == "caption"
                                         and g["regions"] == chosen["regions"]],
    }
    for design in sorted({g["design"] for g in steer if g["alpha"] > 0}):
        kinds[f"α only, design {design}"] = [g for g in steer if g["alpha"] > 0 and g["beta"] == 0 and g["design"] == design]
    for name, rows in kinds.items():
        if rows:
            best = max(rows, key=lambda g: g["fine_gain"])
            label = f"{name} (α = {best['alpha']}, β = {best['beta']}, k = {best['neighbors']}, {best['anchors']})"
            lines.append(row(label, best["splits"]))
    lines += ["", "Re-ranking + β (the chosen re-ranking):", ""] + head
    for g in record["rerank_steer_grid"]:
        lines.append(row(f"α = {g['alpha']}, β = {g['beta']}", g["splits"]))
    both = chosen["rerank_steer"] if "rerank_steer" in chosen else chosen["rerank+steer"]  # the key before 2026-12
    same = " (so no preset of its own: it is `default`)" if both["alpha"] == 0 and both["beta"] == 0 else ""
    lines += ["", f"Chosen: regions `{chosen['regions']}`; default K = {k}, λ = {lam}, γ = {chosen['default']['gamma']}; "
              f"steer β = {chosen['steer']['beta']}, α = {chosen['steer']['alpha']} ({chosen['anchors']} anchors); "
              f"re-ranking + steering β = {both['beta']}, α = {both['alpha']}{same}."]
    return "\n".join(lines)


def newest(folder: Path = RESULTS) -> Path:
    """The most recently modified `eval_*.json` in `folder`."""
    files = sorted(folder.glob("eval_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no eval_*.json in {folder}; run `geosteer eval --json {folder}/eval_<date>.json`")
    return files[-1]


def write_between_markers(path: Path, text: str, name: str = "quality") -> None:
    """Replace what lies between the `name` markers of file `path` with `text` (the markers stay).

    Raises:
        ValueError: the file lacks the start marker followed by the end marker.
    """
    start, end = markers(name)
    doc = path.read_text()
    if start not in doc or end not in doc or doc.index(start) > doc.index(end):
        raise ValueError(f"{path} must contain {start} followed by {end}")
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.make_quality_table", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", default=None, help="eval JSON (default: newest bench/results/eval_*.json)")
    p.add_argument("--write", default=None, help="file whose markers get the tables (README.md, docs/geoshapes.md, docs/tuning.md)")
    p.add_argument("--brief", action="store_true", help="the R@1 table alone (the README's)")
    p.add_argument("--tune", default=None, help="the validation tables of a tune_*.json instead (markers: tune)")
    args = p.parse_args(argv)
    if args.tune:
        path, name = Path(args.tune), "tune"
        text = tune_markdown(json.loads(path.read_text()))
    else:
        path, name = (Path(args.results) if args.results else newest()), "quality"
        text = markdown(json.loads(path.read_text()), brief=args.brief)
    if args.write:
        write_between_markers(Path(args.write), text, name)
        print(f"wrote the {name} tables from {path} into {args.write}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
