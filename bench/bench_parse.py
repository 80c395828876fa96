"""Score caption parsers against the hand-annotated real captions; compare SugarCrepe's pairs' parses.

    python -m bench.bench_parse                       # both parsers, writes results/parse_<date>.json
    python -m bench.bench_parse --parser regex        # the regex splitter (the fallback) only
    python -m bench.bench_parse --parser spacy --json out.json
    python -m bench.bench_parse --sugarcrepe-pairs    # results/parse_pairs_<date>.json, a table per category
    python -m bench.bench_parse --search-latency      # results/parse_search_<date>.json: Searcher.search, spaCy vs regex

The annotations are `tests/data/captions/annotated.jsonl` (163 captions; the
counting rules are `tests/data/captions/RULES.md`). The scorer only needs each
parser's output as `(phrases, [(i, j, relation_name)])` -- one phrase per
object and the geometric relations between them, as
`geosteer.encoders.parts.split_parts` returns -- so any parser can be scored
the same way:

- **object recall**: a gold object is found when a predicted phrase of its own
  has its head. A phrase's *head* is the last gold head of the caption among
  the words of the phrase's leading noun phrase (its words before the first
  closed-class word that ends a noun phrase: `_BOUNDARY`; "and" / "or" end
  it only right after a gold head), after one
  normalisation (lower case, plural -> singular, irregulars: `norm_head`). A
  phrase whose *tail* (from that boundary on) holds another gold object's head
  merges objects and matches nothing (words of the matched gold phrase itself
  do not count: "a cup of coffee"). Each phrase matches at most one gold
  object; gold objects sharing a head take the free phrases in caption order.
- **attribute binding**: gold attributes found among the words of the phrase
  matched to their object, over all gold attributes.
- **relations**: canonical forms make converses equal (`CONVERSE`); a
  predicted relation is right when both of its phrases are matched and its
  canonical form over the matched gold objects equals a gold relation's (or,
  in the lenient figure, one of the gold relation's listed alternative
  readings). Recall over gold relations, precision over the predicted ones
  whose name is in `VOCABULARY` (duplicates after canonicalisation counted
  once).

Speed: captions/s of the parser calls alone, on one core (the process is
pinned to one CPU with `os.sched_setaffinity` where the OS has it), median of
repeats, with the load average. The GeoShapes check parses every caption of a
few seeded splits, in every `CAPTION_TEMPLATES` wrapper, with both parsers and
lists where the spaCy parse differs from the regex splitter's.

SugarCrepe pairs (`--sugarcrepe-pairs [DIR]`, DIR holding its seven category
files, default ../shared/data/sugarcrepe): each (caption, negative_caption)
pair parsed by each parser through the head's own path
(`geosteer.encoders.parts.read_captions`), and per category how often the two
parses differ in their objects (the multiset of head nouns), their attributes
(the multiset of (head, attribute) bindings), their geometric relations (the
set of (head, relation, head), converses made equal), in any of these, and in
what the head reads (the multiset of phrases and the relations over them): a
pair equal there gives the re-ranking's A and R the same value for both
captions, so re-ranking cannot tell them apart. With spaCy also: how many
pairs differ only in non-geometric relations ("holding", "riding", ...),
which the head does not read.

Search latency (`--search-latency`): a small index (64 GeoShapes images, the
demo model, grid regions) searched with one caption per call, each of the
annotated real captions once per parser (two `Searcher`s, so neither reuses
the other's parses or text embeddings; the order of the two alternates per
caption), on one core; the median and 90th percentile per parser, their
difference (the latency the spaCy parser adds to a `geosteer search`
query: the parse, and the encoding of the phrases it finds), the parse
alone, the model's first load, and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
ANNOTATIONS = REPO / "tests" / "data" / "captions" / "annotated.jsonl"
RESULTS = REPO / "bench" / "results"

#: The geometric vocabulary of the parse (issue 21).
VOCABULARY: tuple[str, ...] = (
    "left_of", "right_of", "above", "below", "on", "under", "next_to", "in", "in_front_of", "behind",
)
#: name -> (canonical name, swap subject and object). left_of(a,b) = right_of(b,a),
#: above(a,b) = below(b,a), on(a,b) = under(b,a), in_front_of(a,b) = behind(b,a);
#: next_to is symmetric (ordered by index); `in` has no converse in the vocabulary.
CONVERSE: dict[str, tuple[str, bool]] = {
    "left_of": ("left_of", False), "right_of": ("left_of", True),
    "above": ("above", False), "below": ("above", True),
    "on": ("on", False), "under": ("on", True),
    "in_front_of": ("in_front_of", False), "behind": ("in_front_of", True),
    "next_to": ("next_to", False), "in": ("in", False),
}

# Closed-class words that end a noun phrase: prepositions, conjunctions,
# relative words, auxiliaries. A phrase's head is looked for before the first.
_BOUNDARY = frozenset("""
of in on at with by near next to under underneath beneath below above over behind beside besides from for into
onto inside outside through across around along against toward towards past upon atop among between within
without like about while as because so and or but that which who whom whose where when is are was were be been
being am has have had does do did can will would there
""".split())
_IRREGULAR = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "leaves": "leaf", "knives": "knife", "shelves": "shelf", "wolves": "wolf",
    "loaves": "loaf", "halves": "half", "buses": "bus", "dishes": "dish", "glasses": "glass", "cacti": "cactus",
    "oxen": "ox", "policemen": "policeman", "sheep": "sheep", "fish": "fish", "cattle": "cattle",
}
_WORD = re.compile(r"[a-z0-9]+")


def norm_head(word: str) -> str:
    """One normal form for a head noun: lower case, singular ("people" -> "person", "boxes" -> "box")."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if re.search(r"(?:ch|sh|x|ss|zz)es$", w):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def words(phrase: str) -> list[str]:
    """Lower-case words of a phrase (hyphens, apostrophes and punctuation split words)."""
    return _WORD.findall(phrase.lower())


def phrase_head(phrase: str, gold_heads: set[str]) -> tuple[str | None, list[str]]:
    """(head, tail words) of a predicted phrase against the caption's normalised gold heads.

    The head is the last word of the leading noun phrase (words before the
    first `_BOUNDARY` word) that is a gold head; None when there is none.
    "and" / "or" end the noun phrase only after a gold head ("a cat and a dog"),
    not between adjectives ("red and white flowers").
    """
    ws = words(phrase)

    def ends(k: int, w: str) -> bool:
        if k == 0 or w not in _BOUNDARY:
            return False
        if w in ("and", "or"):
            return norm_head(ws[k - 1]) in gold_heads
        return True

    cut = next((k for k, w in enumerate(ws) if ends(k, w)), len(ws))
    lead, tail = ws[:cut], ws[cut:]
    heads = [norm_head(w) for w in lead if norm_head(w) in gold_heads]
    return (heads[-1] if heads else None), tail


def canonical(i: int, j: int, name: str) -> tuple[int, int, str] | None:
    """The canonical form of relation name(i, j); None for a name outside `VOCABULARY`."""
    if name not in CONVERSE:
        return None
    base, swap = CONVERSE[name]
    if swap:
        i, j = j, i
    if base == "next_to" and i > j:
        i, j = j, i
    return (i, j, base)


def score_caption(record: dict, phrases: Sequence[str], relations: Sequence[tuple[int, int, str]]) -> dict:
    """Per-caption counts and details of one parse against one annotation record.

    Args:
        record: one line of annotated.jsonl.
        phrases: the parser's object phrases.
        relations: its (i, j, name) triples over `phrases`.

    Returns:
        A dict of counts (objects, found, predicted, merged, attributes,
        bound, relations, hits, hits_strict, predicted_relations, correct,
        correct_strict) and details (match, missed objects, merged phrases,
        unbound attributes, missed and wrong relations).
    """
    gold = record["objects"]
    gold_heads = [norm_head(o["head"]) for o in gold]
    head_set = set(gold_heads)
    info = []
    for phrase in phrases:
        head, tail = phrase_head(phrase, head_set)
        info.append((head, tail))
    # gold object -> phrase, greedy in caption order (heads are single words,
    # so this is a maximum matching).
    match: dict[int, int] = {}
    used: set[int] = set()
    merged_phrases: set[int] = set()
    for g, obj in enumerate(gold):
        own = set(words(obj["phrase"])) | {gold_heads[g]}
        for p, (head, tail) in enumerate(info):
            if p in used or head != gold_heads[g]:
                continue
            others = {norm_head(w) for w in tail if w not in own} & (head_set - {gold_heads[g]})
            # a second object with the same head in the tail also merges ("a man next to a man")
            same = gold_heads.count(gold_heads[g]) > 1 and any(norm_head(w) == gold_heads[g] for w in tail)
            if others or same:
                merged_phrases.add(p)
                continue
            match[g] = p
            used.add(p)
            break
    attrs = bound = 0
    unbound = []
    for g, obj in enumerate(gold):
        for a in obj["attributes"]:
            attrs += 1
            if g in match and a.lower() in words(phrases[match[g]]):
                bound += 1
            else:
                unbound.append([g, a])
    inverse = {p: g for g, p in match.items()}
    # predicted relations, canonical over gold indices, deduplicated
    pred: list[tuple] = []
    seen = set()
    for i, j, name in relations:
        if name not in CONVERSE:
            continue
        key = canonical(i, j, name)
        if key in seen:
            continue
        seen.add(key)
        mapped = canonical(inverse[i], inverse[j], name) if i in inverse and j in inverse else None
        pred.append(((i, j, name), mapped))
    gold_forms = [canonical(*r) for r in record["relations"]]
    alt_forms = [[canonical(*a) for a in alts] for alts in record.get("alternatives", [[]] * len(gold_forms))]

    def assign(lenient: bool) -> tuple[set[int], set[int]]:
        hit_gold: set[int] = set()
        hit_pred: set[int] = set()
        for passes in ([False, True] if lenient else [False]):
            for r, form in enumerate(gold_forms):
                if r in hit_gold:
                    continue
                wanted = alt_forms[r] if passes else [form]
                for k, (_, mapped) in enumerate(pred):
                    if k not in hit_pred and mapped is not None and mapped in wanted:
                        hit_gold.add(r)
                        hit_pred.add(k)
                        break
        return hit_gold, hit_pred

    hit_gold, hit_pred = assign(lenient=True)
    strict_gold, strict_pred = assign(lenient=False)
    return {
        "objects": len(gold), "found": len(match), "predicted": len(phrases), "merged": len(merged_phrases),
        "attributes": attrs, "bound": bound,
        "relations": len(gold_forms), "hits": len(hit_gold), "hits_strict": len(strict_gold),
        "predicted_relations": len(pred), "correct": len(hit_pred), "correct_strict": len(strict_pred),
        "match": {str(g): p for g, p in match.items()},
        "missed_objects": [gold[g]["phrase"] for g in range(len(gold)) if g not in match],
        "merged_phrases": [phrases[p] for p in sorted(merged_phrases)],
        "unbound_attributes": unbound,
        "missed_relations": [record["relations"][r] for r in range(len(gold_forms)) if r not in hit_gold],
        "wrong_relations": [list(pred[k][0]) for k in range(len(pred)) if k not in hit_pred],
    }


_COUNTS = ("objects", "found", "predicted", "merged", "attributes", "bound", "relations", "hits", "hits_strict",
           "predicted_relations", "correct", "correct_strict")


def totals(rows: Sequence[dict]) -> dict:
    """Summed counts and the figures: object recall and precision, attribute binding, relation recall and precision."""
    s = {k: sum(r[k] for r in rows) for k in _COUNTS}

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    s.update(
        captions=len(rows),
        object_recall=ratio(s["found"], s["objects"]),
        object_precision=ratio(s["found"], s["predicted"]),
        attribute_binding=ratio(s["bound"], s["attributes"]),
        relation_recall=ratio(s["hits"], s["relations"]),
        relation_precision=ratio(s["correct"], s["predicted_relations"]),
        relation_recall_strict=ratio(s["hits_strict"], s["relations"]),
        relation_precision_strict=ratio(s["correct_strict"], s["predicted_relations"]),
    )
    return s


# --------------------------------------------------------------------------- parsers

Parser = Callable[[Sequence[str]], list[tuple[list[str], list[tuple[int, int, str]]]]]


def regex_parser(captions: Sequence[str]) -> list[tuple[list[str], list[tuple[int, int, str]]]]:
    """The regex splitter (`split_parts_regex`, the fallback), one caption at a time (a caption it refuses gives no parts)."""
    from geosteer.encoders.parts import split_parts_regex

    out = []
    for c in captions:
        try:
            parts, rels = split_parts_regex(c)
        except ValueError:
            parts, rels = [], []
        out.append((list(parts), [tuple(r) for r in rels]))
    return out


def spacy_parser(captions: Sequence[str]) -> list[tuple[list[str], list[tuple[int, int, str]]]]:
    """`geosteer.encoders.scene_parse.parse_captions`: phrases and geometric relations."""
    from geosteer.encoders.scene_parse import parse_captions

    return [(p.phrases, list(p.relations)) for p in parse_captions(captions)]


PARSERS: dict[str, Parser] = {"regex": regex_parser, "spacy": spacy_parser}


def load_annotations(path: Path = ANNOTATIONS) -> list[dict]:
    """The annotation records, one per caption."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(parser: Parser, records: Sequence[dict]) -> dict:
    """Score one parser on the records: totals for all, tune and heldout, and per-caption rows."""
    parsed = parser([r["caption"] for r in records])
    rows = []
    for rec, (phrases, rels) in zip(records, parsed):
        row = score_caption(rec, phrases, rels)
        row.update(caption=rec["caption"], source=rec["source"], split=rec["split"],
                   phrases=list(phrases), relations_predicted=[list(r) for r in rels])
        rows.append(row)
    return {
        "totals": {
            "all": totals(rows),
            "tune": totals([r for r in rows if r["split"] == "tune"]),
            "heldout": totals([r for r in rows if r["split"] == "heldout"]),
        },
        "captions": rows,
    }


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def speed(parser: Parser, captions: Sequence[str], repeats: int = 5) -> dict:
    """Throughput and single-caption latency of the parser calls, with the load average.

    Throughput: all captions in one call (batched), median of `repeats` after
    one warm-up. Latency: one caption per call (what one search query adds),
    median and 90th percentile over the captions.
    """
    parser(captions[:8])  # warm-up: model load, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        parser(captions)
        times.append(time.perf_counter() - t0)
    single = []
    for c in captions:
        t0 = time.perf_counter()
        parser([c])
        single.append(time.perf_counter() - t0)
    single.sort()
    med = statistics.median(times)
    return {
        "captions": len(captions), "repeats": repeats, "median_s": round(med, 4),
        "min_s": round(min(times), 4), "max_s": round(max(times), 4),
        "captions_per_s": round(len(captions) / med, 1),
        "single_caption_ms_median": round(1000 * statistics.median(single), 3),
        "single_caption_ms_p90": round(1000 * single[int(0.9 * (len(single) - 1))], 3),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def geoshapes_captions(seeds: Sequence[int] = (0, 1, 2), num_queries: int = 60) -> list[str]:
    """Captions of the GeoShapes splits' generators, each in every `CAPTION_TEMPLATES` wrapper."""
    from geosteer.geoshapes.scenes import CAPTION_TEMPLATES
    from geosteer.geoshapes.splits import SPLITS, make_split

    bodies: list[str] = []
    for name in SPLITS:
        for seed in seeds:
            bodies.extend(make_split(name, seed, num_queries=num_queries, distractors=0).queries)
    bodies = list(dict.fromkeys(bodies))
    return [t.format(b) for b in bodies for t in CAPTION_TEMPLATES]


def geoshapes_agreement(captions: Sequence[str]) -> dict:
    """Where the spaCy parse of GeoShapes captions differs from `split_parts` (parts or relations)."""
    ref = regex_parser(captions)
    new = spacy_parser(captions)
    mismatches = [
        {"caption": c, "split_parts": [r[0], [list(x) for x in r[1]]], "spacy": [n[0], [list(x) for x in n[1]]]}
        for c, r, n in zip(captions, ref, new)
        if r[0] != n[0] or sorted(r[1]) != sorted(n[1])
    ]
    return {"captions": len(captions), "agree": len(captions) - len(mismatches), "mismatches": mismatches}


SUGARCREPE = REPO.parent / "shared" / "data" / "sugarcrepe"
SUGARCREPE_FILES: tuple[str, ...] = (
    "add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj",
)
PAIR_KEYS: tuple[str, ...] = ("objects", "attributes", "relations", "any", "head_input", "equal")


def _canonical(a: str, b: str, name: str) -> tuple[str, str, str]:
    canon, swap = CONVERSE[name]
    if swap:
        a, b = b, a
    if canon == "next_to" and b < a:  # symmetric
        a, b = b, a
    return a, canon, b


def parse_signature(parse) -> dict:
    """What a pair comparison reads of one `Parse`: objects, attribute bindings, relations, the head's input."""
    from collections import Counter

    heads = [norm_head(o.head) for o in parse.objects]
    rel = [(i, j, r) for i, j, r in parse.relations if r in CONVERSE]
    return {
        "objects": Counter(heads),
        "attributes": Counter((h, a) for h, o in zip(heads, parse.objects) for a in o.attributes),
        "relations": {_canonical(heads[i], heads[j], r) for i, j, r in rel},
        "phrases": Counter(parse.phrases),
        "phrase_relations": {_canonical(parse.phrases[i], parse.phrases[j], r) for i, j, r in rel},
        "other": {(parse.phrases[i], w, parse.phrases[j]) for i, j, w in parse.other_relations},
    }


def pair_differences(true, false) -> dict[str, bool]:
    """Which parts of two captions' parses differ (`PAIR_KEYS`, and other_only)."""
    a, b = parse_signature(true), parse_signature(false)
    d = {k: a[k] != b[k] for k in ("objects", "attributes", "relations")}
    d["any"] = any(d.values())
    d["head_input"] = a["phrases"] != b["phrases"] or a["phrase_relations"] != b["phrase_relations"]
    d["equal"] = not d["head_input"]
    d["other_only"] = d["equal"] and a["other"] != b["other"]
    return d


def sugarcrepe_pairs(folder: Path, parsers: Sequence[str], examples: int = 3) -> dict:
    """Per category and parser: pairs, and how many differ in each of `PAIR_KEYS` (+ other_only), with examples."""
    from geosteer.encoders.parts import read_captions

    out: dict = {"folder": str(folder), "categories": {}}
    for name in SUGARCREPE_FILES:
        path = folder / f"{name}.json"
        with open(path, encoding="utf-8") as f:
            entries = list(json.load(f).values())
        true = [e["caption"] for e in entries]
        false = [e["negative_caption"] for e in entries]
        cat: dict = {"pairs": len(entries)}
        for parser in parsers:
            t0 = time.perf_counter()
            parses = read_captions(true + false, parser=parser)
            seconds = time.perf_counter() - t0
            diffs = [pair_differences(t, f) for t, f in zip(parses[: len(true)], parses[len(true):])]
            counts = {k: sum(d[k] for d in diffs) for k in (*PAIR_KEYS, "other_only")}
            equal = [k for k, d in enumerate(diffs) if d["equal"]]
            cat[parser] = {
                "counts": counts,
                "fractions": {k: round(v / len(entries), 4) for k, v in counts.items()},
                "seconds": round(seconds, 2),
                "equal_examples": [
                    {"caption": true[k], "negative_caption": false[k], "phrases": parses[k].phrases,
                     "relations": [list(r) for r in parses[k].relations]}
                    for k in equal[:examples]
                ],
            }
        out["categories"][name] = cat
    return out


def pairs_table(result: dict, parsers: Sequence[str]) -> str:
    """A Markdown table: per category, percent of pairs whose parses differ, per parser."""
    cols = ("objects", "attributes", "relations", "any", "head_input")
    head = ["category", "pairs"] + [f"{p}: {c}" for p in parsers for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {p: {c: 0 for c in cols} for p in parsers}
    n_all = 0
    for name, cat in result["categories"].items():
        n = cat["pairs"]
        n_all += n
        row = [name, str(n)]
        for p in parsers:
            for c in cols:
                totals[p][c] += cat[p]["counts"][c]
                row.append(f"{100 * cat[p]['counts'][c] / n:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    row = ["all", str(n_all)] + [f"{100 * totals[p][c] / n_all:.1f}" for p in parsers for c in cols]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def search_latency(captions: Sequence[str], images: int = 64, repeats: int = 3) -> dict:
    """Median / p90 ms of `Searcher.search([caption])` per parser over `captions`, each searched once per parser
    and repeat (fresh `Searcher`s and parse cache each repeat, so every call parses and encodes its caption)."""
    import random
    import tempfile

    import torch

    from geosteer.encoders import load_clip, scene_parse
    from geosteer.encoders import parts as parts_module
    from geosteer.geoshapes import random_scene, render
    from geosteer.index import Index, Searcher

    torch.set_num_threads(1)
    rng = random.Random(0)
    encoder = load_clip("demo")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for k in range(images):
            render(random_scene(rng, num_objects=(1, 3)), size=96).save(folder / f"{k:03d}.png")
        index = Index.build(folder, Path(tmp) / "index", encoder, regions="grid", progress=False)
        t0 = time.perf_counter()
        scene_parse.load_pipeline()
        load_s = time.perf_counter() - t0
        loadavg_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        times: dict[str, list[float]] = {"spacy": [], "regex": []}
        for rep in range(repeats):
            parts_module._CACHE.clear()  # every repeat parses its captions again
            searchers = {p: Searcher(index, encoder) for p in ("spacy", "regex")}
            for name, searcher in searchers.items():  # warm-up: the head's first call, the tokenizer
                os.environ["GEOSTEER_PARSER"] = name
                searcher.search(["a red circle to the left of a blue star"], k=10)
            for n, caption in enumerate(captions):
                for name in (("spacy", "regex") if (n + rep) % 2 == 0 else ("regex", "spacy")):
                    os.environ["GEOSTEER_PARSER"] = name
                    t0 = time.perf_counter()
                    searchers[name].search([caption], k=10)
                    times[name].append(1000 * (time.perf_counter() - t0))
        os.environ.pop("GEOSTEER_PARSER", None)
        parse_ms = []
        for caption in captions:  # the parse alone, one caption per call, not cached
            t0 = time.perf_counter()
            scene_parse.parse_captions([caption])
            parse_ms.append(1000 * (time.perf_counter() - t0))
        loadavg_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    def stats(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"median_ms": round(statistics.median(xs), 3), "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 3),
                "min_ms": round(xs[0], 3), "max_ms": round(xs[-1], 3)}

    out = {name: stats(xs) for name, xs in times.items()}
    diffs = [a - b for a, b in zip(times["spacy"], times["regex"])]
    return {
        "captions": len(captions), "repeats": repeats, "images": images, "model": "demo", "regions": "grid", "k": 10, "threads": 1,
        "search": out, "added_ms": {"median_of_differences": round(statistics.median(diffs), 3),
                                    "difference_of_medians": round(out["spacy"]["median_ms"] - out["regex"]["median_ms"], 3)},
        "parse_alone": stats(parse_ms), "model_load_s": round(load_s, 3),
        "loadavg_before": list(loadavg_before) if loadavg_before else None,
        "loadavg_after": list(loadavg_after) if loadavg_after else None,
    }


def _environment() -> dict:
    """The machine and versions, for the result file (an error string where it cannot be read)."""
    try:
        from geosteer.environment import environment

        return environment("cpu")
    except Exception as exc:  # noqa: BLE001  (the record is informative only)
        return {"error": repr(exc)}


def _write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def _figures_line(name: str, split: str, t: dict) -> str:
    def f(x: float | None) -> str:
        return "  -  " if x is None else f"{x:.3f}"

    return (f"{name:6s} {split:8s} {t['captions']:4d}  objects {f(t['object_recall'])}"
            f" (prec {f(t['object_precision'])})"
            f"  attributes {f(t['attribute_binding'])}  relations R {f(t['relation_recall'])}"
            f" P {f(t['relation_precision'])}  (strict R {f(t['relation_recall_strict'])}"
            f" P {f(t['relation_precision_strict'])})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parser", choices=sorted(PARSERS), action="append",
                    help="parser(s) to score (default: both; spacy is skipped when not installed)")
    ap.add_argument("--json", type=Path, help=f"output file (default {RESULTS}/parse_<date>.json)")
    ap.add_argument("--annotations", type=Path, default=ANNOTATIONS)
    ap.add_argument("--no-geoshapes", action="store_true", help="skip the GeoShapes template check")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats")
    ap.add_argument("--sugarcrepe-pairs", nargs="?", const=SUGARCREPE, type=Path, metavar="DIR",
                    help=f"compare the parses of SugarCrepe's true and false captions per category (DIR: its seven "
                         f"category files; default {SUGARCREPE}); writes results/parse_pairs_<date>.json")
    ap.add_argument("--search-latency", action="store_true",
                    help="time Searcher.search per caption with the spaCy parser vs the regex splitter; writes "
                         "results/parse_search_<date>.json")
    args = ap.parse_args(argv)
    if args.sugarcrepe_pairs is not None:
        return _main_pairs(args)
    if args.search_latency:
        return _main_latency(args)

    names = args.parser or ["regex", "spacy"]
    records = load_annotations(args.annotations)
    pinned = _pin_one_core()
    result: dict = {"annotations": str(args.annotations.relative_to(REPO)) if args.annotations.is_relative_to(REPO)
                    else str(args.annotations), "parsers": {}, "timing_note": pinned}
    result["environment"] = _environment()
    for name in names:
        if name == "spacy":
            try:
                from geosteer.encoders import scene_parse

                t0 = time.perf_counter()
                scene_parse.load_pipeline()
                load_s = time.perf_counter() - t0
            except ImportError as exc:
                print(f"spacy parser skipped: {exc}", file=sys.stderr)
                if args.parser:
                    return 1
                continue
        out = evaluate(PARSERS[name], records)
        out["speed"] = speed(PARSERS[name], [r["caption"] for r in records], repeats=args.repeats)
        if name == "spacy":
            out["model"] = scene_parse.model_info()
            out["model_load_s"] = round(load_s, 3)
        result["parsers"][name] = out
        for split in ("tune", "heldout", "all"):
            print(_figures_line(name, split, out["totals"][split]))
        sp = out["speed"]
        print(f"{name:6s} speed    {sp['captions_per_s']} captions/s on one core "
              f"({sp['captions']} captions, median {sp['median_s']} s); one caption per call "
              f"{sp['single_caption_ms_median']} ms (p90 {sp['single_caption_ms_p90']} ms); load {sp['loadavg']}")
    if "spacy" in result["parsers"] and not args.no_geoshapes:
        agreement = geoshapes_agreement(geoshapes_captions())
        result["geoshapes"] = agreement
        print(f"geoshapes: {agreement['agree']}/{agreement['captions']} captions parse as split_parts does")
        for m in agreement["mismatches"][:10]:
            print("  mismatch:", m)
    _write(result, args.json or RESULTS / f"parse_{datetime.date.today().isoformat()}.json")
    return 0


def _main_latency(args) -> int:
    import subprocess

    pinned = _pin_one_core()
    captions = [r["caption"] for r in load_annotations(args.annotations)]
    result = search_latency(captions)
    result["timing_note"] = pinned
    result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() or None
    result["environment"] = _environment()
    s, r = result["search"]["spacy"], result["search"]["regex"]
    print(f"Searcher.search, one caption per call, {result['captions']} real captions x {result['repeats']} repeats, "
          f"{result['images']} images, "
          f"demo model, one core ({pinned})")
    print(f"  spacy  median {s['median_ms']} ms (p90 {s['p90_ms']})")
    print(f"  regex  median {r['median_ms']} ms (p90 {r['p90_ms']})")
    print(f"  added by the spaCy parser: median of per-caption differences {result['added_ms']['median_of_differences']} "
          f"ms; the parse alone {result['parse_alone']['median_ms']} ms (p90 {result['parse_alone']['p90_ms']}); "
          f"model load {result['model_load_s']} s once")
    print(f"  load average before {result['loadavg_before']}, after {result['loadavg_after']}; {result['uptime']}")
    _write(result, args.json or RESULTS / f"parse_search_{datetime.date.today().isoformat()}.json")
    return 0


def _main_pairs(args) -> int:
    names = args.parser or ["spacy", "regex"]
    result = sugarcrepe_pairs(args.sugarcrepe_pairs, names)
    from geosteer.encoders import scene_parse

    result["parsers"] = names
    result["model"] = scene_parse.model_info()
    result["definitions"] = {
        "objects": "the multisets of head nouns (singular) differ",
        "attributes": "the multisets of (head noun, attribute word) bindings differ",
        "relations": "the sets of (head, geometric relation, head) differ, converses made equal",
        "any": "objects, attributes or relations differ",
        "head_input": "what the head reads differs: the multiset of phrases, or the relations over them",
        "equal": "not head_input: re-ranking gives both captions the same A and R",
        "other_only": "equal for the head, but the non-geometric relations (holding, riding, ...) differ",
    }
    result["environment"] = _environment()
    table = pairs_table(result, names)
    result["table"] = table
    print(table)
    for name, cat in result["categories"].items():
        for p in names:
            c = cat[p]["counts"]
            print(f"{name:12s} {p:6s} equal for the head {c['equal']}/{cat['pairs']}"
                  + (f", of which only non-geometric relations differ {c['other_only']}" if p == "spacy" else ""))
    _write(result, args.json or RESULTS / f"parse_pairs_{datetime.date.today().isoformat()}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
