"""The real-photo collages through the product, asked in every phrasing: does the method survive how people say it?

For each seed, the collage split of `geosteer.photos.make_split` (as
bench_photos uses it: 20 queries, every target with its position-swapped
twin, its other layout and its one-photo-replaced collages, 100 collages)
is written to a folder as `geosteer photos` writes it (JPEG files,
`geosteer.commands.photos.write_photos`), indexed as `geosteer index
FOLDER --model bridge --regions REGIONS` indexes it (`Index.build` with the
command's defaults: 16 regions, batches of 64, shards of 1,024) and
searched as `geosteer search` searches (`geosteer.index.Searcher` with the
command's method configs: rerank = the "default" preset, relations = the "relations" one;
with every query said in each phrasing of `geosteer.photos.PHRASINGS`.

Per phrasing and method: R@1, twin accuracy (the target above its
position-swapped twin) and layout accuracy over the whole 100-collage
ranking (K = 100 re-ranks the whole gallery), mean ± std over seeds; the
cosine first stage beside them; and how the searcher's caption splitter
read the phrasing (`parsed`: the share of queries split into the two
photos' nouns with the right relation, or its converse, between them):
`geosteer.encoders.parts.split_parts`, spaCy's parser when the `parse`
extra is installed, else the regex splitter (`$GEOSTEER_PARSER` picks one);
the record names it. `first`: what ranked first (the target, its twin, its
other layout, a replaced collage, another collage).

`--regions-dtypes float32,float16,int8` runs the same benchmark (same
folders, seeds, queries and configs) once per region dtype, each seed's
index built with `Index.build(..., regions_dtype=...)` as `geosteer index
--regions-dtype` builds it (issue 23). The record's `summary`,
`mean_over_phrasings` and `per_seed` are float32's, as in a float32-only
run; `compact` holds the same for each other dtype plus `paired`: per
phrasing, method and metric (R@1, twin), the mean and the largest per-seed
paired difference to float32 in points, and the queries whose outcome
changed; `worst_paired` sums it up per dtype.

    python -m bench.bench_phrasings                                 # test seeds, writes bench/results/phrasings_<date>.json
    python -m bench.bench_phrasings --seeds 0 1 2 --out /tmp/v.json  # validation seeds
    python -m bench.bench_phrasings --resize letterbox              # the bridge squaring whole images another way
    python -m bench.bench_phrasings --set gamma=0.5 --regions segments+grid
    GEOSTEER_PARSER=regex python -m bench.bench_phrasings --out bench/results/phrasings_regex_<date>.json
    python -m bench.bench_phrasings --regions-dtypes float32,float16,int8 --out bench/results/phrasings_compact_<date>.json

Image embeddings are cached on disk (`--cache-dir`, `geosteer.photos.cache`),
so a re-run decodes, segments and searches, and encodes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from geosteer.commands.args import METHODS, method_configs
from geosteer.commands.index import DEFAULT_BATCH, DEFAULT_MAX_REGIONS, DEFAULT_SHARD
from geosteer.commands.photos import default_photos, write_photos
from geosteer.encoders.bridge import RESIZE_MODES
from geosteer.encoders.clip import load_bridge, load_clip
from geosteer.encoders.parts import resolve_parser
from geosteer.environment import environment
from geosteer.index import Index, Searcher, caption_parts
from geosteer.index.format import REGIONS_DTYPES
from geosteer.photos import PHRASINGS, TEST_SEEDS, make_split, phrase, ranking_metrics, reads_fact
from geosteer.photos.cache import CachedEncoder

REPO = Path(__file__).resolve().parent.parent
#: The region method the README recommends for photos (`geosteer index --regions segments`).
REGIONS = "segments"
METRICS = ("r1", "r5", "twin", "layout", "replaced")
#: The methods searched: the re-ranking ones of `geosteer search --method` (cosine: the first stage of the first).
RERANKERS = ("rerank", "relations")
#: The metrics compared query by query between region dtypes (`--regions-dtypes`).
PAIRED = ("r1", "twin")


def first_places(split, indices: torch.Tensor) -> dict[str, float]:
    """What ranks first, as shares of the queries: the target, its twin, its other layout, a replaced collage, another."""
    kinds = {"target": 0, "twin": 0, "layout": 0, "replaced": 0, "other": 0}
    for q, top in enumerate(indices[:, 0].tolist()):
        kind = ("target" if top == split.targets[q] else "twin" if top == split.twins[q] else
                "layout" if top == split.relaid[q] else "replaced" if top in split.replaced[q] else "other")
        kinds[kind] += 1
    return {k: v / len(split.targets) for k, v in kinds.items()}


def ranks(split, indices: torch.Tensor) -> dict[str, list[int]]:
    """Per query, the 0-based rank of its target and of its twin (K where not among the K)."""
    def rank(q: int, item: int) -> int:
        hit = (indices[q] == item).nonzero()
        return int(hit[0]) if len(hit) else int(indices.shape[1])

    return {"target": [rank(q, t) for q, t in enumerate(split.targets)],
            "twin": [rank(q, t) for q, t in enumerate(split.twins)]}


def summarise(values: list[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def splitter_probe() -> dict:
    """What the searcher's caption splitter makes of phrasing 3 ("a rocket with a cat on its left"): which parser is on."""
    text = phrase("a cat", "left_of", "a rocket", "with")
    parts, relations, _ = caption_parts([text])
    return {"caption": text, "parts": parts[0], "relations": [list(r) for r in relations[0]]}


def write_seed(seed: int, args, folder: Path):
    """Write one seed's collage split into `folder`/images as `geosteer photos` writes it; its `PhotoSplit`."""
    photos = None if args.photos == "all" else default_photos()
    split = make_split(seed, num_queries=args.queries, photos=photos)
    count, pairs = write_photos(folder / "images", args.queries, seed, photos)
    assert [q for q, _ in pairs] == split.queries and count == len(split.gallery)
    return split


def parse_rows(split) -> dict[str, dict]:
    """Per phrasing, how the searcher's caption splitter read each query (it does not depend on the index)."""
    out = {}
    for k, name in enumerate(PHRASINGS):
        captions = split.phrased(k)
        parts, relations, _ = caption_parts(captions)
        right = [reads_fact([x.lower().strip() for x in p], r, f) for p, r, f in zip(parts, relations, split.named)]
        out[name] = {"parsed": statistics.fmean(right), "queries": [
            {"query": c, "parts": p, "relations": [list(x) for x in r], "read_right": ok}
            for c, p, r, ok in zip(captions, parts, relations, right)]}
    return out


def search_seed(split, seed: int, args, encoder, configs: dict, folder: Path, regions_dtype: str) -> dict:
    """Index `folder`/images with regions stored as `regions_dtype` and search it; per phrasing and method the metrics."""
    t0 = time.perf_counter()
    index = Index.build(folder / "images", folder / f"index-{regions_dtype}", encoder, regions=args.regions,
                        max_regions=DEFAULT_MAX_REGIONS, batch_size=DEFAULT_BATCH, shard_size=DEFAULT_SHARD,
                        progress=False, regions_dtype=regions_dtype)
    built = time.perf_counter() - t0
    rows = [int(Path(p).stem.split("-")[1]) for p in index.paths]  # index row -> gallery position
    if rows != list(range(len(split.gallery))):
        raise RuntimeError(f"seed {seed}: the index holds the collages in another order: {rows[:10]}...")
    searcher = Searcher(index, encoder, configs, k_max=len(split.gallery))
    out: dict = {"seed": seed, "gallery": len(split.gallery), "queries": len(split.queries),
                 "regions_dtype": regions_dtype, "index_seconds": round(built, 1),
                 "regions_per_image": float(index.gallery.parts_mask.sum(1).float().mean()), "phrasings": {}}
    t1 = time.perf_counter()
    for k, name in enumerate(PHRASINGS):
        row = {}
        for method in configs:
            head = searcher.search(split.phrased(k), method, k=1).head
            row[method] = ranking_metrics(split, head.indices)
            row[method]["first"] = first_places(split, head.indices)
            row[method]["ranks"] = ranks(split, head.indices)
            if method == RERANKERS[0]:  # the cosine column of `geosteer search`: its K candidates in first-stage order
                order = head.first_stage_rank.argsort(dim=1)
                row["cosine"] = ranking_metrics(split, head.indices.gather(1, order))
                row["cosine"]["ranks"] = ranks(split, head.indices.gather(1, order))
        out["phrasings"][name] = row
    out["search_seconds"] = round(time.perf_counter() - t1, 1)
    return out


def summarise_seeds(seeds: list[dict], methods: list[str], reported: list[str]) -> tuple[dict, dict]:
    """Per phrasing, each metric of `reported` (and the parse share) as mean ± std over `seeds`, what ranked first
    for `methods`; and per method of `reported` each metric's mean over phrasings."""
    summary = {}
    for name in PHRASINGS:
        rows = [s["phrasings"][name] for s in seeds]
        summary[name] = {"parsed": summarise([r["parsed"] for r in rows]),
                         **{m: {k: summarise([r[m][k] for r in rows]) for k in METRICS} for m in reported}}
        for m in methods:
            summary[name][m]["first"] = {k: statistics.fmean(r[m]["first"][k] for r in rows) for k in rows[0][m]["first"]}
    means = {m: {k: statistics.fmean(summary[n][m][k]["mean"] for n in PHRASINGS) for k in METRICS} for m in reported}
    return summary, means


def query_outcomes(ranked: dict[str, list[int]], metric: str) -> list[bool]:
    """Per query, whether it counts for `metric` ("r1": its target first; "twin": its target above its twin)."""
    if metric == "r1":
        return [t == 0 for t in ranked["target"]]
    return [t < w for t, w in zip(ranked["target"], ranked["twin"])]


def paired_differences(reference: list[dict], seeds: list[dict], reported: list[str]) -> dict:
    """Per phrasing, method of `reported` and metric of `PAIRED`: `seeds` against `reference` (same seeds, in order),
    in points: the mean over seeds of the paired difference, the largest per-seed |difference|, and the number
    of queries (all seeds) whose outcome differs; then per method the same over every phrasing (mean of the
    means, largest |difference|, queries summed)."""
    if [s["seed"] for s in seeds] != [s["seed"] for s in reference]:
        raise ValueError(f"paired seeds differ: {[s['seed'] for s in seeds]} vs {[s['seed'] for s in reference]}")
    out: dict = {}
    for name in PHRASINGS:
        out[name] = {}
        for m in reported:
            pairs = [(s["phrasings"][name][m], r["phrasings"][name][m]) for s, r in zip(seeds, reference)]
            out[name][m] = {k: {
                "mean_diff": 100 * statistics.fmean(a[k] - b[k] for a, b in pairs),
                "max_abs_seed_diff": 100 * max(abs(a[k] - b[k]) for a, b in pairs),
                "changed_queries": sum(x != y for a, b in pairs for x, y in
                                       zip(query_outcomes(a["ranks"], k), query_outcomes(b["ranks"], k)))}
                for k in PAIRED}
    out["mean_over_phrasings"] = {m: {k: {
        "mean_diff": statistics.fmean(out[n][m][k]["mean_diff"] for n in PHRASINGS),
        "max_abs_seed_diff": max(out[n][m][k]["max_abs_seed_diff"] for n in PHRASINGS),
        "changed_queries": sum(out[n][m][k]["changed_queries"] for n in PHRASINGS)} for k in PAIRED} for m in reported}
    return out


def worst_paired(compact: dict) -> dict:
    """Per compact dtype, over every phrasing, method and metric of its `paired` record: the largest |mean
    difference| and |per-seed difference| (points), the changed queries in all, and where any query changed."""
    out = {}
    for d, rec in compact.items():
        cells = [(n, m, k, v) for n in PHRASINGS for m, per in rec["paired"][n].items() for k, v in per.items()]
        out[d] = {"max_abs_mean_diff": max(abs(v["mean_diff"]) for *_, v in cells),
                  "max_abs_seed_diff": max(v["max_abs_seed_diff"] for *_, v in cells),
                  "changed_queries": sum(v["changed_queries"] for *_, v in cells),
                  "changed_in": [f"{n}/{m}/{k}: {v['changed_queries']}" for n, m, k, v in cells if v["changed_queries"]]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(TEST_SEEDS),
                    help="split seeds (default: the test seeds; the validation seeds are 0 1 2)")
    ap.add_argument("--queries", type=int, default=20, help="queries per seed (5 collages each; default %(default)s)")
    ap.add_argument("--photos", choices=("all", "default"), default="all",
                    help="all installed photos (as bench_photos) or geosteer photos' default five")
    ap.add_argument("--regions", default=REGIONS, help="region method, as geosteer index --regions (default %(default)s)")
    ap.add_argument("--regions-dtypes", default="float32", type=lambda v: v.split(","),
                    help="comma-separated region dtypes, as geosteer index --regions-dtype: the same benchmark "
                         f"with the index built with each ({', '.join(REGIONS_DTYPES)}); with several, float32 "
                         "first: the others are compared with it seed by seed (default %(default)s)")
    ap.add_argument("--resize", choices=RESIZE_MODES, default=None,
                    help="the bridge's squaring of whole images (default: load_clip('bridge')'s, what --model bridge loads)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="a HeadConfig override applied to every method (exploration; default none: the presets)")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "geosteer" / "photos"))
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/phrasings_<date>.json)")
    args = ap.parse_args(argv)
    dtypes = args.regions_dtypes
    if any(d not in REGIONS_DTYPES for d in dtypes) or len(set(dtypes)) < len(dtypes):
        ap.error(f"--regions-dtypes: distinct values of {', '.join(REGIONS_DTYPES)}, got {','.join(dtypes)}")
    if len(dtypes) > 1 and dtypes[0] != "float32":
        ap.error(f"--regions-dtypes: with several, float32 first (the reference), got {','.join(dtypes)}")
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = int(value) if key == "k" else float(value)
    start = time.perf_counter()
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / f"phrasings_{datetime.date.today().isoformat()}.json"
    env_before = environment()
    model = load_clip("bridge") if args.resize is None else load_bridge(resize=args.resize)
    encoder = CachedEncoder(model, args.cache_dir)
    configs = {m: c for m, c in method_configs(overrides or None).items() if m in RERANKERS}
    probe = splitter_probe()
    parser = resolve_parser()
    print(f"encoder {encoder.name} ({encoder.fingerprint}); regions {args.regions}; parser {parser}; probe {probe}",
          file=sys.stderr)
    runs: dict[str, list[dict]] = {d: [] for d in dtypes}
    with tempfile.TemporaryDirectory(prefix="geosteer-phrasings-") as tmp:
        for seed in args.seeds:
            folder = Path(tmp) / f"seed{seed}"
            split = write_seed(seed, args, folder)
            parsed = parse_rows(split)
            for d in dtypes:
                s = search_seed(split, seed, args, encoder, configs, folder, d)
                s["phrasings"] = {  # the reference keeps each query's parse; the others its share (the same)
                    name: {**(parsed[name] if d == dtypes[0] else {"parsed": parsed[name]["parsed"]}), **row}
                    for name, row in s["phrasings"].items()}
                runs[d].append(s)
                encoder.save()
                print(f"seed {seed} {d}: indexed in {s['index_seconds']} s ({encoder.misses} images encoded, "
                      f"{encoder.hits} from the cache), searched in {s['search_seconds']} s; R@1 rerank by phrasing: "
                      + ", ".join(f"{n} {s['phrasings'][n]['rerank']['r1']:.2f}" for n in PHRASINGS), file=sys.stderr)
    reported = [*configs, "cosine"]
    seeds = runs[dtypes[0]]
    summary, means = summarise_seeds(seeds, list(configs), reported)
    compact = {}
    for d in dtypes[1:]:
        d_summary, d_means = summarise_seeds(runs[d], list(configs), reported)
        compact[d] = {"summary": d_summary, "mean_over_phrasings": d_means,
                      "paired": paired_differences(seeds, runs[d], reported), "per_seed": runs[d]}
    record = {
        "benchmark": "phrasings",
        "encoder": encoder.name,
        "encoder_fingerprint": encoder.fingerprint,
        "regions": args.regions,
        "max_regions": DEFAULT_MAX_REGIONS,
        "regions_dtypes": dtypes,
        "methods": {m: {"preset": METHODS[m], **{k: v for k, v in dataclasses.asdict(c).items() if k in
                                                 ("k", "lam", "gamma", "alpha", "beta")}}
                    for m, c in configs.items()},
        "cosine": f"the first-stage order of {RERANKERS[0]}'s K candidates (geosteer search's cosine column)",
        "overrides": overrides,
        "photos": args.photos,
        "queries_per_seed": args.queries,
        "seeds": args.seeds,
        "phrasings": {name: phrase("a cat", "left_of", "a rocket", k) for k, name in enumerate(PHRASINGS)},
        "phrasings_vertical": {name: phrase("a cat", "above", "a rocket", k) for k, name in enumerate(PHRASINGS)},
        "parser": parser,
        "splitter_probe": probe,
        "per_seed": seeds,
        "summary": summary,
        "mean_over_phrasings": means,
        **({"compact": compact, "worst_paired": worst_paired(compact)} if compact else {}),
        "seconds": round(time.perf_counter() - start, 1),
        "command": "python -m bench.bench_phrasings " + " ".join(argv if argv is not None else sys.argv[1:]),
        "env_before": env_before,
        "env": environment(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    if compact:
        print("\n" + format_compact(record))
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


def format_table(record: dict) -> str:
    """Per phrasing: R@1 / twin of each re-ranking method and of cosine, and the share parsed right (%, mean over seeds)."""
    methods = [m for m in RERANKERS if m in record["summary"][PHRASINGS[0]]] + ["cosine"]
    lines = [f"seeds {record['seeds']}, {record['queries_per_seed']} queries each; encoder {record['encoder']}, "
             f"regions {record['regions']}, parser {record['parser']}" + (f", overrides {record['overrides']}" if record["overrides"] else ""), "",
             "| phrasing | example | " + " | ".join(f"{m} R@1 | {m} twin" for m in methods) + " | parsed |",
             "|---|---|" + "---:|---:|" * len(methods) + "---:|"]
    for name in PHRASINGS:
        s = record["summary"][name]
        cells = [f"{100 * s[m][k]['mean']:.1f}" for m in methods for k in ("r1", "twin")]
        lines.append(f"| {name} | {record['phrasings'][name]} | " + " | ".join(cells)
                     + f" | {100 * s['parsed']['mean']:.0f} |")
    mean = record["mean_over_phrasings"]
    lines.append("| mean | | " + " | ".join(f"{100 * mean[m][k]:.1f}" for m in methods for k in ("r1", "twin")) + " | |")
    return "\n".join(lines)


def format_compact(record: dict) -> str:
    """Per method and phrasing (and their mean): R@1 and twin (%, mean over seeds) for each region dtype, and each
    compact dtype's largest paired per-seed |difference| to the reference (points)."""
    dtypes, compact = record["regions_dtypes"], record["compact"]
    sections = {d: compact[d] for d in dtypes[1:]}
    sections[dtypes[0]] = {"summary": record["summary"], "mean_over_phrasings": record["mean_over_phrasings"]}
    methods = [m for m in RERANKERS if m in record["summary"][PHRASINGS[0]]] + ["cosine"]
    head = (" | ".join(f"{k} {d}" for k in PAIRED for d in dtypes) + " | "
            + " | ".join(f"max abs diff {k} {d}" for k in PAIRED for d in dtypes[1:]))
    lines = [f"region dtypes {', '.join(dtypes)}: the paired differences to {dtypes[0]} in points "
             f"(one query of {record['queries_per_seed']} is {100 / record['queries_per_seed']:g} points of a seed)", "",
             f"| method | phrasing | {head} |", "|---|---|" + "---:|" * (len(PAIRED) * (2 * len(dtypes) - 1))]
    for m in methods:
        for name in [*PHRASINGS, "mean"]:
            vals = [100 * (sections[d]["mean_over_phrasings"][m][k] if name == "mean" else
                           sections[d]["summary"][name][m][k]["mean"]) for k in PAIRED for d in dtypes]
            diffs = [compact[d]["paired"]["mean_over_phrasings" if name == "mean" else name][m][k]["max_abs_seed_diff"]
                     for k in PAIRED for d in dtypes[1:]]
            lines.append(f"| {m} | {name} | " + " | ".join(f"{v:.1f}" for v in vals + diffs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
