"""Markdown results tables from the bench JSON lines, for the README and docs/benchmarks.md.

    python -m bench.make_tables bench/results/head_*.jsonl             # print every table
    python -m bench.make_tables bench/results/head_cpu_screen_2026-11-29.jsonl \\
        bench/results/head_cpu_2threads_2026-11-29.jsonl \\
        --write docs/benchmarks.md --plot bench/results/head_cpu_screen_2026-11-29.png
    python -m bench.make_tables bench/results/head_cpu_screen_2026-11-29.jsonl \\
        --workload cpu --threads 1 --no-stages --write README.md --marker bench:summary
    python -m bench.make_tables bench/results/assign_cpu_2026-11-29.jsonl \\
        --write docs/benchmarks.md --marker bench:assign

Rows of `bench_head.py` become one table per (workload, device, threads,
OpenMP setting) plus the per-stage tables; rows of `bench_assign.py` become
the solver table. When several runs of one (workload, setting, provider) are
in the files, the latest one is shown.

With `--write FILE`, the text between `<!-- MARKER:start -->` and
`<!-- MARKER:end -->` in FILE is replaced (the markers stay; `--marker`
defaults to `bench:head`); the file must already hold both. `--plot` takes a
path from the repository root and links it relative to FILE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import common

DEFAULT_MARKER = "bench:head"
_ORDER = ("geosteer", "geosteer-compiled", "geosteer-steer", "geosteer-tla", "geosteer-faiss",
          "faiss-ivf", "naive", "naive-perquery", "first-stage")
_WORKLOAD_ORDER = ("tiny", "cpu", "gpu", "faiss")


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def setting(r: dict) -> tuple:
    """What makes two runs of one workload different tables: device, threads, OpenMP env."""
    return (r["device"], r.get("threads"), tuple(sorted((r.get("omp_env") or {}).items())))


def latest(rows: list[dict]) -> dict[tuple, dict]:
    """The last row of each (workload, setting, provider) among provider rows."""
    keep: dict[tuple, dict] = {}
    for r in rows:
        if r.get("kind") == "provider" and not r.get("sweep"):
            keep[(r["workload"], setting(r), r["provider"])] = r
    return keep


def workload_table(rows: list[dict]) -> str:
    """One markdown table (plus a summary line) for one workload on one device."""
    rows = sorted(rows, key=lambda r: _ORDER.index(r["provider"]) if r["provider"] in _ORDER else 99)
    r0 = rows[0]
    head = (
        f"**`{r0['workload']}`** — Q={r0['Q']:,}, N={r0['N']:,}, K={r0['K']}, m×n={r0['m']}×{r0['n']}, "
        f"D={r0['D']}, {r0['dtype']} — {r0['device_name']}, torch {r0['torch']}, "
        f"commit `{str(r0.get('commit'))[:8]}`{' (dirty)' if r0.get('dirty') else ''}, {r0['date'][:10]}"
        + (f", load {r0['load1']:.1f}" if r0.get("load1") is not None and r0["device"] == "cpu" else "")
        + "".join(f", {k}={v}" for k, v in (r0.get("omp_env") or {}).items())
    )
    cpu_col = any("cpu_median_s" in r for r in rows)
    lines = [
        head,
        "",
        "| provider | queries/s | warm median s [min–max] | cold s | × first stage |"
        + (" CPU-time s (× first stage) |" if cpu_col else "") + " peak mem | notes |",
        "|---|---:|---:|---:|---:|" + ("---:|" if cpu_col else "") + "---:|---|",
    ]
    floor = next((r for r in rows if r["provider"] == "first-stage" and "est_full_s" in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['provider']}` | failed | | | |{' |' if cpu_col else ''} | {r['error'][:120]} |")
            continue
        notes = [r.get("note", "")]
        if "agree_rows" in r:
            notes.append(f"same ranking as `geosteer` on {100 * r['agree_rows']:.1f}% of queries")
        if "recall_at_k" in r:
            notes.append(f"recall@{r['K']} of the FAISS candidates vs exact: {r['recall_at_k']:.3f}")
        if r["provider"] == "faiss-ivf" and "build_s" in r:
            notes.append(f"index build {r['build_s']:.1f} s (k-means on {r['train_size']:,} rows {r['train_s']:.1f} s "
                         f"+ add {r['add_s']:.1f} s), not in the query time")
        if r.get("repeats", 0) < 3:
            notes.append(f"{r['repeats']} repeat(s)")
        cpu = ""
        if cpu_col:
            ratio = r["est_full_cpu_s"] / floor["est_full_cpu_s"] if floor and "est_full_cpu_s" in floor and "est_full_cpu_s" in r else None
            cpu = f" {_num(r.get('cpu_median_s'))} ({_num(ratio)}) |"
        lines.append(
            f"| `{r['provider']}` | {_num(r['queries_per_s'])} | {_num(r['median_s'])} "
            f"[{_num(r['min_s'])}–{_num(r['max_s'])}] | {_num(r['cold_s'])} | {_num(r['est_full_s'] / floor['est_full_s'] if floor else None)} |"
            f"{cpu} {_bytes(r.get('peak_mem_bytes'))} | {'; '.join(n for n in notes if n)} |"
        )
    lines += ["", summary(rows)]
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """The done-when figures: head vs the floor and vs the naive loops."""
    by = {r["provider"]: r for r in rows if "median_s" in r}
    head = by.get("geosteer")
    if head is None:
        return ""
    def cpu_ratio(a: dict, b: dict) -> str:
        if "est_full_cpu_s" in a and "est_full_cpu_s" in b:
            return f", CPU time {a['est_full_cpu_s'] / b['est_full_cpu_s']:.2f}×"
        return ""

    parts = []
    if "first-stage" in by:
        floor = by["first-stage"]
        parts.append(f"`geosteer` takes **{head['est_full_s'] / floor['est_full_s']:.2f}×** the first stage's "
                     f"time (min over repeats {head['min_s'] / floor['min_s']:.2f}×{cpu_ratio(head, floor)})")
    for naive in ("naive", "naive-perquery"):
        if naive in by:
            parts.append(f"**{by[naive]['est_full_s'] / head['est_full_s']:.1f}×** faster than `{naive}`"
                         + (f" (CPU time {by[naive]['est_full_cpu_s'] / head['est_full_cpu_s']:.1f}×)"
                            if "est_full_cpu_s" in head and "est_full_cpu_s" in by[naive] else ""))
    return "; ".join(parts) + "." if parts else ""


def stage_tables(rows: list[dict]) -> list[str]:
    """Where the eager head's time goes (bench_head.py --profile), per workload and device."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("kind") == "stage":
            groups.setdefault((r["workload"], str(setting(r))), {})[r["stage"]] = r  # latest wins
    return [stage_table(stages) for _, stages in sorted(groups.items())]


def stage_table(stages: dict[str, dict]) -> str:
    r0 = next(iter(stages.values()))
    lines = [
        f"Per stage, eager head, `{r0['workload']}` on {r0['device_name']}"
        + "".join(f", {k}={v}" for k, v in (r0.get("omp_env") or {}).items())
        + f", {r0['date'][:10]} "
        f"(median of {r0['repeats']} calls):",
        "",
        "| stage | median s | min s | CPU-time s | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in stages.items():
        share = "" if name == "total" or r.get("share") is None else f"{100 * r['share']:.0f}%"
        lines.append(f"| {name} | {_num(r['median_s'])} | {_num(r['min_s'])} | {_num(r.get('cpu_median_s'))} | {share} |")
    return "\n".join(lines)


_ASSIGN_PROVIDERS = {"ours": "geosteer", "tla": "torch-linear-assignment", "scipy": "SciPy loop", "lapx": "lapx"}


def assign_table(rows: list[dict]) -> str:
    """The solver table from `bench_assign.py` rows: median ms per shape and provider, speed-up over TLA."""
    r0 = rows[0]
    cells: dict[tuple[str, str], dict] = {(r["shape"], r["provider"]): r for r in rows}  # latest wins
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = [p for p in _ASSIGN_PROVIDERS if any(p == r["provider"] for r in rows)]
    loads = [r["load1"] for r in rows if r.get("load1") is not None]
    lines = [
        f"**assignment solver** — {r0['device_name']}, uniform [0, 1) float32 costs, median of up to "
        f"{max(r['repeats'] for r in rows)} warm calls, torch {r0['torch']}, commit `{str(r0.get('commit'))[:8]}`"
        f"{' (dirty)' if r0.get('dirty') else ''}, {r0['date'][:10]}"
        + (f", load {max(loads):.1f}" if loads and r0["device"] == "cpu" else ""),
        "",
        "| B × W × T | " + " | ".join(_ASSIGN_PROVIDERS[p] for p in providers) + " | speed-up vs TLA |",
        "|---|" + "---:|" * (len(providers) + 1),
    ]
    for shape in shapes:
        batch, w, t = (int(x) for x in shape.split("x"))
        row = []
        for p in providers:
            r = cells.get((shape, p))
            row.append("–" if r is None else f"{_num(r['median_s'] * 1e3)} ms" + ("*" if "scaled_from" in r else ""))
        ours = cells.get((shape, "ours"))
        speedup = ours.get("speedup_vs_tla") if ours else None
        row.append("–" if speedup is None else f"{_num(speedup)}×")
        lines.append(f"| {batch:,} × {w}×{t} | " + " | ".join(row) + " |")
    if any("scaled_from" in r for r in rows):
        lines += ["", "\\* timed on a subset of the problems and scaled to the full batch."]
    return "\n".join(lines)


def select(rows: list[dict], workload: str | None = None, threads: int | None = None,
           include_dry: bool = False) -> list[dict]:
    """The rows of one workload and thread count (None: any); --dry-run rows only when asked."""
    return [
        r for r in rows
        if (include_dry or not r.get("dry_run"))
        and (workload is None or r.get("workload") == workload)
        and (threads is None or r.get("threads") == threads)
    ]


def make_markdown(rows: list[dict], plots: list[str], include_dry: bool = False, stages: bool = True) -> str:
    """Every table the rows hold: head workloads, per-stage tables (`stages`), the solver table, then the plots."""
    rows = select(rows, include_dry=include_dry)
    keep = latest(rows)
    groups: dict[tuple, list[dict]] = {}
    for (workload, where, _), r in keep.items():
        groups.setdefault((workload, where), []).append(r)
    order = sorted(groups, key=lambda k: (_WORKLOAD_ORDER.index(k[0]) if k[0] in _WORKLOAD_ORDER else 9, str(k[1])))
    blocks = [workload_table(groups[k]) for k in order]
    if stages:
        blocks += stage_tables(rows)
    solver = [r for r in rows if r.get("bench") == "assign"]
    if solver:
        blocks.append(assign_table(solver))
    blocks += [f"![head throughput vs Q and K]({p})" for p in plots]
    return "\n\n".join(blocks) if blocks else "_no bench rows yet_"


def markers(name: str = DEFAULT_MARKER) -> tuple[str, str]:
    """The start and end marker lines of block `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


START, END = markers()


def replace_between_markers(text: str, body: str, marker: str = DEFAULT_MARKER) -> str:
    """`text` with everything between the start and end markers of `marker` replaced by `body`."""
    start, end = markers(marker)
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise ValueError(f"the file must hold {start} followed by {end}")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"


def write_or_print(body: str, marker: str, path: Path | None) -> int:
    """Replace block `marker` of the file at `path` with `body` (saying so on stderr), or print `body`; returns 0."""
    if path is None:
        print(body)
        return 0
    path.write_text(replace_between_markers(path.read_text(), body, marker))
    print(f"wrote the {marker} block of {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.make_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+", help="bench_head.py / bench_assign.py output files")
    parser.add_argument("--write", "--readme", dest="write", default=None,
                        help="write between the --marker lines of this file (README.md, docs/benchmarks.md)")
    parser.add_argument("--marker", default=DEFAULT_MARKER, help="marker name (default: %(default)s)")
    parser.add_argument("--workload", default=None, help="only this workload (tiny, cpu, gpu, faiss, sweep)")
    parser.add_argument("--threads", type=int, default=None, help="only rows run with this many threads")
    parser.add_argument("--no-stages", action="store_true", help="leave out the per-stage tables")
    parser.add_argument("--plot", action="append", default=[],
                        help="PNG to link, as a path from the repository root (linked relative to --write)")
    parser.add_argument("--include-dry-run", action="store_true", help="also show --dry-run rows")
    args = parser.parse_args(argv)
    rows = select(common.read_rows(args.jsonl), args.workload, args.threads, args.include_dry_run)
    plots = args.plot
    if args.write is not None:
        base = Path(args.write).resolve().parent
        plots = [Path(os.path.relpath(Path(p).resolve(), base)).as_posix() for p in plots]
    body = make_markdown(rows, plots, args.include_dry_run, stages=not args.no_stages)
    if args.write is None:
        print(body)
        return 0
    path = Path(args.write)
    try:
        text = replace_between_markers(path.read_text(), body, args.marker)
    except ValueError as error:
        parser.error(f"{path}: {error} (add both marker lines where the tables go)")
    path.write_text(text)
    print(f"tables -> {path} ({args.marker})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
