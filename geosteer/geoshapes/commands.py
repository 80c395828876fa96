"""`geosteer demo` and `geosteer eval`: the built-in benchmark from the command line.

`geosteer demo` runs offline on a fresh install: it loads the shipped demo
model, builds GeoShapes galleries (every split, the three test seeds),
indexes them, runs cosine / rerank / steer, prints one table
(R@1, mean ± std over the seeds) and writes `index.html` (top-5 of each
method per query, images embedded) and `contact_sheet.png` into `--out`
(default ./geosteer-demo).

`geosteer eval` prints and writes (`--json`) R@1 / R@5 / nDCG@10 of every
method, the per-part-max ablation included, over the given seeds. With
`--bench sugarcrepe|aro|winoground|clevr --root PATH` it reads your local
copy of that public benchmark instead and reports the benchmark's own
metric for the cosine, rerank and rerank-max scores of the same
(caption, image) pairs (docs/public_benchmarks.md).

Both check their arguments and output paths before loading anything and
print one line naming a bad one (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from geosteer.commands.args import (
    UsageError,
    check_device,
    check_positive,
    check_writable_file,
    check_writable_folder,
    fail,
    load_model,
    set_threads,
)
from geosteer.encoders.parts import resolve_parser
from geosteer.encoders.regions import FAMILIES, METHODS
from geosteer.geoshapes.splits import SPLITS, TEST_SEEDS

DEMO_OUT = "geosteer-demo"
#: Queries per split in the demo (the eval default is 100) and in --quick.
DEMO_QUERIES = 50
QUICK_QUERIES = 8
#: Queries per split shown on the page (the first ones, not picked).
SHOWN_PER_SPLIT = 6


def _indexer(encoder, methods, progress: bool, cache_dir: str | None):
    from geosteer.geoshapes.index import SplitIndexer

    # Encode only the region families the methods read.
    fams = {f for m in methods if m.uses_parts for f in METHODS[m.regions]}
    ordered = [f for f in FAMILIES if f in fams] or ["grid"]
    return SplitIndexer(encoder, families=ordered, progress=progress, cache_dir=cache_dir)


# ---------------------------------------------------------------- eval

#: GeoShapes defaults of `geosteer eval` (the options default to None so that --bench can tell them given).
EVAL_QUERIES = 100
#: `geosteer eval` options that only GeoShapes reads: refused with --bench.
GEOSHAPES_ONLY = ("--split", "--seed", "--queries", "--k", "--ranks", "--cache-dir")
#: `geosteer eval` options that only --bench reads: refused without it.
BENCH_ONLY = ("--root", "--limit", "--regions")
#: `--bench` choices (the keys of `geosteer.public_benchmarks.READERS`, listed here so the parser imports nothing).
BENCHMARK_NAMES = ("sugarcrepe", "aro", "winoground", "clevr")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer eval`."""
    p.add_argument("--split", nargs="+", default=None, choices=SPLITS, metavar="SPLIT",
                   help=f"GeoShapes splits to run (default: all of {', '.join(SPLITS)})")
    p.add_argument("--seed", nargs="+", type=int, default=None,
                   help=f"GeoShapes gallery seeds (default: the test seeds {list(TEST_SEEDS)})")
    p.add_argument("--queries", type=int, default=None, help=f"queries per split (default: {EVAL_QUERIES})")
    p.add_argument("--model", default="demo", help="anything geosteer.encoders.load_clip takes: 'demo' (default), "
                   "an open_clip architecture with --pretrained, 'local-dir:<folder>', 'hf-hub:<repo>'")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file for an architecture name")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--k", type=int, default=None, help="override K of every method")
    p.add_argument("--json", dest="json_path", default=None, help="write the full results here")
    p.add_argument("--ranks", action="store_true", help="keep every query's rank in the JSON")
    p.add_argument("--cache-dir", default=None, help="save / reuse encodings here (keyed by the model's weights)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("public benchmarks (your local copy; nothing is downloaded: docs/public_benchmarks.md)")
    g.add_argument("--bench", default=None, choices=BENCHMARK_NAMES,
                   help="score this benchmark's (caption, image) pairs instead of GeoShapes: cosine vs re-ranked")
    g.add_argument("--root", default=None, metavar="PATH", help="the benchmark's folder (its layout: docs/public_benchmarks.md)")
    g.add_argument("--limit", type=int, default=None, help="first N examples of each file (CLEVR: scenes); default all")
    g.add_argument("--regions", default=None, choices=("annotations", *METHODS), metavar="METHOD",
                   help="regions of each image: 'annotations' (CLEVR's object boxes, its default) or a region method "
                        "of geosteer.encoders.regions.METHODS (default for the others: grid)")



def _eval_plan(args: argparse.Namespace):
    """Check `geosteer eval`'s arguments and output paths (nothing loaded yet); UsageError naming a bad one.

    Returns:
        With --bench, the benchmark read from --root (its files are read
        and checked here, before any model loads); else None.
    """
    for name in ("--queries", "--k", "--threads", "--limit"):
        check_positive(name, getattr(args, name[2:]))
    check_device(args.device)
    if args.json_path is not None:
        check_writable_file("--json", args.json_path)
    if args.bench is None:
        for flag in BENCH_ONLY:
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                raise UsageError(f"{flag} is read only with --bench NAME ({', '.join(BENCHMARK_NAMES)})")
    else:
        return _bench_plan(args)
    if args.cache_dir is not None:
        check_writable_folder("--cache-dir", Path(args.cache_dir).expanduser(), shown=args.cache_dir)
    return None


def _bench_plan(args: argparse.Namespace):
    """`--bench`: refuse GeoShapes options, then read and check the benchmark at --root (UsageError naming what is wrong)."""
    from geosteer.public_benchmarks import FormatError, read_benchmark
    from geosteer.public_benchmarks.runner import ANNOTATIONS, default_regions

    for flag in GEOSHAPES_ONLY:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value is not False:
            raise UsageError(f"{flag} is a GeoShapes option; --bench {args.bench} scores the benchmark's own pairs "
                             f"(drop {flag})")
    if args.root is None:
        raise UsageError(f"--bench {args.bench} needs --root PATH: the folder of your local copy "
                         f"(layout and where to get it: docs/public_benchmarks.md)")
    try:
        bench = read_benchmark(args.bench, args.root, limit=args.limit)
    except FormatError as e:
        raise UsageError(f"--root {args.root!r}: {e}") from None
    if args.regions == ANNOTATIONS and default_regions(bench) != ANNOTATIONS:
        raise UsageError(f"--regions {ANNOTATIONS}: {args.bench} has no annotation boxes; pass a region method "
                         f"(grid, segments, ...) or leave --regions out")
    return bench


def _templates_parser() -> str:
    """The caption parser for GeoShapes' own captions, resolved without the fallback's warning.

    They are templates the regex splitter reads exactly as spaCy does
    (tests/data/geoshapes_contrast.jsonl), so without the `parse` extra the
    warning about real captions would only mislead a newcomer's first run.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return resolve_parser()  # warns once per process: never again in this one


def run_eval(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer eval`; 2 (one line on stderr) for a bad argument."""
    from geosteer.geoshapes.eval import METHOD_NAMES, default_methods, evaluate, format_table

    try:
        bench = _eval_plan(args)
        set_threads(args.threads)
        encoder = load_model(args.model, args.pretrained, args.device)
    except UsageError as e:
        return fail("eval", str(e))
    if bench is not None:
        return _run_bench(args, bench, encoder)
    _templates_parser()
    splits = args.split or list(SPLITS)
    seeds = args.seed or list(TEST_SEEDS)
    methods = default_methods(k=args.k, names=METHOD_NAMES)
    indexer = _indexer(encoder, methods, progress=not args.no_progress, cache_dir=args.cache_dir)
    log = None if args.no_progress else (lambda s: print(s, file=sys.stderr))
    results = evaluate(indexer, splits=splits, seeds=seeds, methods=methods,
                       num_queries=EVAL_QUERIES if args.queries is None else args.queries, keep_ranks=args.ranks, log=log)
    for metric, label in (("r1", "R@1"), ("r5", "R@5"), ("ndcg10", "nDCG@10")):
        print(f"\n{label} (%), mean ± std over seeds {seeds}, model {args.model}")
        print(format_table(results, metric))
    _write_json(args.json_path, results)
    return 0


def _run_bench(args: argparse.Namespace, bench, encoder) -> int:
    """`geosteer eval --bench`: score the benchmark read by `_bench_plan`, print the table, write --json."""
    from geosteer.public_benchmarks import FormatError
    from geosteer.public_benchmarks.runner import format_results, run_benchmark

    try:
        report = run_benchmark(bench, encoder, model=args.model, regions=args.regions, progress=not args.no_progress)
    except FormatError as e:  # an image that does not decode is found only when it is read
        return fail("eval", f"--root {args.root!r}: {e}")
    print(format_results(report))
    _write_json(args.json_path, report)
    return 0


def _write_json(path: str | None, results: dict) -> None:
    if path is not None:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(path).expanduser().write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {path}")


# ---------------------------------------------------------------- demo

def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer demo`."""
    p.add_argument("--out", default=DEMO_OUT, help="output folder (default: ./%(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"seed {TEST_SEEDS[0]} only, {QUICK_QUERIES} queries a split, binding and fine only (a smoke test)")
    p.add_argument("--split", nargs="+", default=None, choices=SPLITS, metavar="SPLIT",
                   help="splits to run (default: all)")
    p.add_argument("--seed", nargs="+", type=int, default=None,
                   help=f"gallery seeds (default: the test seeds {list(TEST_SEEDS)}; the page shows the first)")
    p.add_argument("--queries", type=int, default=None, help=f"queries per split (default: {DEMO_QUERIES})")
    p.add_argument("--model", default="demo", help="as for geosteer eval (default: the shipped demo model)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file for an architecture name")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _demo_plan(args: argparse.Namespace) -> None:
    """Check `geosteer demo`'s arguments and output folder (nothing loaded yet); UsageError naming a bad one."""
    for name in ("--queries", "--threads"):
        check_positive(name, getattr(args, name[2:]))
    check_device(args.device)
    check_writable_folder("--out", Path(args.out).expanduser(), shown=args.out)


def run_demo(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer demo`; print the table, write the page and the sheet. 2 (one line) for a bad argument."""
    from geosteer.geoshapes.eval import DEFAULT_REGIONS, DEMO_METHODS, default_methods, evaluate, format_table, run_method
    from geosteer.geoshapes.report import QueryRow, contact_sheet, results_table_html, write_html

    t0 = time.perf_counter()
    progress = not args.no_progress
    say = (lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None)
    try:
        _demo_plan(args)
        set_threads(args.threads)
        encoder = load_model(args.model, args.pretrained, args.device, say=say)
    except UsageError as e:
        return fail("demo", str(e))
    _templates_parser()
    splits = args.split or (["binding", "fine"] if args.quick else list(SPLITS))
    seeds = args.seed or ([TEST_SEEDS[0]] if args.quick else list(TEST_SEEDS))
    num_queries = args.queries if args.queries is not None else (QUICK_QUERIES if args.quick else DEMO_QUERIES)
    methods = default_methods(names=DEMO_METHODS)
    indexer = _indexer(encoder, methods, progress=progress, cache_dir=None)
    say(f"indexing {len(splits)} GeoShapes splits x seeds {seeds} ({num_queries} queries each) "
        f"and running {', '.join(m.name for m in methods)} ...")
    results = evaluate(indexer, splits=splits, seeds=seeds, methods=methods, num_queries=num_queries, log=say)
    table = format_table(results, "r1")
    t_eval = time.perf_counter() - t0

    rows: list[QueryRow] = []
    shown = ("cosine", "steer", "rerank")
    by_name = {m.name: m for m in methods}
    for s in splits:
        idx = indexer.split(s, seeds[0], num_queries=num_queries)
        images = idx.split.images()
        n = min(SHOWN_PER_SPLIT, len(idx.split.queries))
        tops = {m: run_method(idx, by_name[m]).indices[:n, :5].tolist() for m in shown}
        for q in range(n):
            rows.append(QueryRow(s, idx.split.queries[q], idx.split.targets[q], idx.split.hard_negatives[q],
                                 {m: tops[m][q] for m in shown}, images))
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    notes = (f"model {args.model}; GeoShapes seeds {seeds}, {num_queries} queries a split; regions {DEFAULT_REGIONS}; "
             f"R@1 in percent (mean ± std over the seeds); the first {SHOWN_PER_SPLIT} queries of each split "
             f"(seed {seeds[0]}) are shown, not picked.")
    page = write_html(out / "index.html", rows, shown, results_table_html(results, [m.name for m in methods]),
                      notes=notes)
    sheet = contact_sheet(out / "contact_sheet.png", [r for i, r in enumerate(rows) if i % SHOWN_PER_SPLIT < 2],
                          ("cosine", "rerank"))
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    total = time.perf_counter() - t0
    print(f"\nR@1 (%) on GeoShapes, mean ± std over seeds {seeds}, {num_queries} queries a split, model {args.model}:")
    print(table)
    print(f"\n{total:.0f} s ({t_eval:.0f} s indexing + evaluation)")
    print(f"open {page.resolve()}  (contact sheet: {sheet}, numbers: {out / 'results.json'})")
    return 0
