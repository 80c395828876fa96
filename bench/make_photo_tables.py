"""The README's real-photo tables, from the committed results of bench_photos, bench_phrasings, bench_regions and bench_index.

    python -m bench.make_photo_tables                        # newest results, print
    python -m bench.make_photo_tables --write README.md      # replace the <!-- photos:start/end --> block

Inputs (newest of each in bench/results/ unless given):
`photos_*.json` (`python -m bench.bench_photos`: the collage benchmark),
`phrasings_*.json` (`python -m bench.bench_phrasings`: the collages through
`geosteer index` / `search`, every query in each phrasing),
`photos_regions_*.json` (`python -m bench.bench_regions`: region recall and
indexing images/s per method) and `index_*.jsonl` (`python -m
bench.bench_index`: `Index.open` on a synthetic 100k-image index, build
throughput). Nothing here is typed by hand: every figure is read from them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.make_tables import write_or_print

RESULTS = Path(__file__).resolve().parent / "results"
MARKER = "photos"
METHODS = ("cosine", "rerank", "rerank+structure")
#: Region methods in the order the tables list them (general-purpose ones only: photos).
REGIONS = ("grid", "halves", "segments", "segments+grid", "segments+halves")


def newest(pattern: str) -> Path:
    """The newest file in bench/results matching `pattern` (names carry the date, so the last sorted)."""
    found = sorted(RESULTS.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no bench/results/{pattern}: run the benchmark that writes it first")
    return found[-1]


def _pct(st: dict) -> str:
    return f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}"


def photo_table(res: dict) -> list[str]:
    """Test-seed R@1 / R@5 / twin / layout / replaced per method, and rerank+structure per region method."""
    choice = res["validation"]["choice"]
    test = res["test"]
    seeds = res["test_seeds"]
    lines = [
        f"Real-photo collages (`{res['encoder']}`; test seeds {', '.join(map(str, seeds))}, "
        f"{res['queries_per_seed']} queries each, gallery {test['diagnostics']['per_seed'][0]['gallery']}, "
        f"K = {res['k']}; regions `{choice['regions']}`, λ = {choice['lam']}, γ = {choice['gamma']}, "
        f"chosen on validation seeds {', '.join(map(str, res['validation_seeds']))}), % mean ± std over seeds. "
        "*twin*: the target above its position-swapped twin; *layout*: above the same photos in the other "
        "layout (side by side vs stacked); *replaced*: above the collage with one photo replaced.",
        "",
        "| method | R@1 | R@5 | twin | layout | replaced |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        s = test["summary"][m]
        lines.append(f"| {m} | " + " | ".join(_pct(s[k]) for k in ("r1", "r5", "twin", "layout", "replaced")) + " |")
    by = test["by_regions"]
    cells = [f"`{r}` {_pct(by[r]['r1'])} / {_pct(by[r]['twin'])}" for r in REGIONS if r in by]
    diag = test["diagnostics"]["summary"]
    recall = diag[f"first_stage_recall@{res['k']}"]["mean"]
    lines += [
        "",
        "rerank+structure R@1 / twin by region method (same λ, γ): " + "; ".join(cells) + ". "
        f"A crop recognised as its photo's noun {100 * diag['crop_recognition']['mean']:.0f}% of the time; "
        f"first-stage recall@{res['k']} {100 * recall:.0f}%.",
    ]
    return lines


PHRASING_METHODS = ("rerank", "relations", "cosine")


def phrasing_table(res: dict) -> list[str]:
    """Through the product, per phrasing: R@1 / twin of `geosteer search`'s methods, and how often the parse was right."""
    names = list(res["phrasings"])
    seeds = res["seeds"]
    methods = [m for m in PHRASING_METHODS if m in res["summary"][names[0]]]
    presets = res["methods"]
    gammas = ", ".join(f"`{m}` γ = {presets[m]['gamma']}" for m in methods if m != "cosine")
    env = res["env"]
    lines = [
        f"The same collages through the product (`geosteer index --model bridge --regions {res['regions']}`, then "
        f"`geosteer search`: encoder `{res['encoder']}`, K = {presets[methods[0]]['k']}, {gammas}; seeds "
        f"{', '.join(map(str, seeds))}, {res['queries_per_seed']} queries each), every query asked in six phrasings "
        f"({'; '.join(repr(res['phrasings'][n]).replace(chr(39), chr(34)) for n in names[2:5])}; stacked: "
        f"{repr(res['phrasings_vertical'][names[4]]).replace(chr(39), chr(34))}, ...): "
        "R@1 / twin %, mean over seeds; *parsed*: the query split into its two photos with the right relation "
        f"(load {env['load1']:.1f}).",
        "",
        "| method | " + " | ".join(names) + " | mean |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    mean = res["mean_over_phrasings"]
    for m in methods:
        cells = [f"{100 * res['summary'][n][m]['r1']['mean']:.0f} / {100 * res['summary'][n][m]['twin']['mean']:.0f}"
                 for n in names]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {100 * mean[m]['r1']:.1f} / {100 * mean[m]['twin']:.1f} |")
    parsed = [100 * res["summary"][n]["parsed"]["mean"] for n in names]
    lines.append("| parsed | " + " | ".join(f"{p:.0f}" for p in parsed) + f" | {sum(parsed) / len(parsed):.0f} |")
    return lines


def region_table(regions: dict, throughput: dict | None) -> list[str]:
    """Per region method, in one paragraph: boxes per image, recall of the photos' boxes at IoU 0.5 / 0.7, images/s indexed."""
    props = regions["proposals"]
    idx = regions["indexing"]
    encoders = [e for e in ("demo", "bridge") if e in idx]
    load = regions["env"].get("load1")
    cells = []
    for r in REGIONS:
        p = props[r]
        rates = " / ".join(f"{idx[e][r]['images_per_s']:.1f}" for e in encoders)
        cells.append(f"`{r}` {p['boxes_per_image']:.1f}, {100 * p['recall@0.5']:.1f} / {100 * p['recall@0.7']:.1f}, {rates}")
    plain = ", ".join(f"`{e}` {idx[e]['encoder_images_per_s']:.1f}" for e in encoders)
    line = (f"Region methods on {regions['collages']} collages, each: boxes per image, recall of the photos' own boxes "
            f"(a box found at IoU ≥ 0.5 / 0.7, %), indexing images/s with " + " / ".join(f"`{e}`" for e in encoders)
            + f" (decode, proposals, 1 + n crops encoded; {idx[encoders[0]]['grid']['images']} collages, "
            f"{regions['env']['threads']} threads, load {load:.1f}): " + "; ".join(cells) + ". "
            f"The encoder alone, crops/s: {plain}.")
    if throughput:
        line += (f" `Index.build` on {throughput['images']} rendered scenes ({throughput['size']} px, "
                 f"`{throughput['model']}`, `{throughput['regions']}`, load {throughput['load1']:.1f}): "
                 f"{throughput['build_images_per_s']:.1f} images/s, the in-memory indexer "
                 f"{throughput['in_memory_images_per_s']:.1f}.")
    return [line]


def open_lines(rows: list[dict]) -> list[str]:
    """`Index.open` / first gallery access / verify, one sentence per shard layout."""
    parts = []
    for r in rows:
        cache = "cold page cache" if r["cold"] else "warm page cache"
        parts.append(f"{r['shards']} shard{'s' if r['shards'] > 1 else ''}: open {1e3 * r['open_s']:.1f} ms "
                     f"({cache}), first gallery access {r['first_gallery_s']:.2f} s (hashes the embeddings"
                     f"{', concatenates' if r['shards'] > 1 else ''}), first search {r['first_search_s']:.2f} s, "
                     f"`verify()` {r['verify_s']:.1f} s")
    r = rows[0]
    return [f"`Index.open` on a synthetic index of {r['N']:,} images (n = {r['n']}, D = {r['D']}, {r['dtype']}, "
            f"{r['bytes'] / 2**30:.2f} GiB, load {r['load1']:.1f}): " + "; ".join(parts) + "."]


def make_markdown(photos: Path, regions: Path, index: Path | None, phrasings: Path | None = None) -> str:
    """The whole block: photo table, phrasing table, region table, open figures, the commands that reproduce them."""
    res = json.loads(photos.read_text())
    reg = json.loads(regions.read_text())
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()] if index else []
    opens = [r for r in rows if r.get("bench") == "index_open"]
    thr = [r for r in rows if r.get("bench") == "index_throughput"]
    lines = photo_table(res)
    if phrasings:
        lines += [""] + phrasing_table(json.loads(phrasings.read_text()))
    lines += [""] + region_table(reg, thr[-1] if thr else None)
    if opens:
        lines += [""] + open_lines(opens)
    srcs = [photos] + ([phrasings] if phrasings else []) + [regions] + ([index] if index else [])
    scripts = ["bench_photos"] + (["bench_phrasings"] if phrasings else []) + ["bench_regions", "bench_index"]
    lines += ["", "From " + ", ".join(f"`bench/results/{p.name}`" for p in srcs) + " ("
              + ", ".join(f"`python -m bench.{s}`" for s in scripts)
              + "; tables: `python -m bench.make_photo_tables --write README.md`)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=None, help="a bench_photos JSON (default: the newest)")
    ap.add_argument("--phrasings", type=Path, default=None, help="a bench_phrasings JSON (default: the newest, if any)")
    ap.add_argument("--regions", type=Path, default=None, help="a bench_regions JSON (default: the newest)")
    ap.add_argument("--index", type=Path, default=None, help="a bench_index JSON-lines file (default: the newest)")
    ap.add_argument("--write", type=Path, default=None, help="replace the photos block of this file")
    args = ap.parse_args(argv)
    photos = args.photos or newest("photos_2*.json")
    regions = args.regions or newest("photos_regions_*.json")
    index = args.index or (newest("index_*.jsonl") if list(RESULTS.glob("index_*.jsonl")) else None)
    phrasings = args.phrasings or (newest("phrasings_2*.json") if list(RESULTS.glob("phrasings_2*.json")) else None)
    body = make_markdown(photos, regions, index, phrasings)
    return write_or_print(body, MARKER, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
