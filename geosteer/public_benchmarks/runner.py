"""Encode a benchmark's images and captions and score its pairs: cosine vs geosteer on the same pairs.

Examples go through in chunks (`chunk` examples at a time: their distinct
images are decoded, cropped and indexed, their captions encoded, their
pairs scored, then dropped), so memory stays flat on 50k-image benchmarks.
Every pair is scored with `geosteer.pairs.score_pairs`:

- "cosine": s(q, c) = q·c, the plain CLIP score (the cosine term of the
  `rerank` call: no extra work);
- "rerank": the `default` preset (λ = 0.8, γ = 0.1): S = (1-λ)s + λA + γR,
  Hungarian matching of the caption's object phrases to the image's regions;
  phrases and relations come from `Indexer.encode_queries`, the path a
  search takes (`geosteer.encoders.parts.split_captions`: spaCy's parse when
  the `parse` extra is installed, else the regex splitter; the report names
  the one that ran);
- "rerank-max": the same with each phrase taking its best region on its own
  (`matching="max"`, the ablation DESIGN §1 asks to report beside it).

Regions: annotation boxes where the benchmark has them (CLEVR:
`regions="annotations"`), else a region method of
`geosteer.encoders.regions.METHODS` run on each image (default "grid").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from geosteer.config import HeadConfig, get_config
from geosteer.encoders.parts import resolve_parser
from geosteer.encoders.regions import COMPONENT_PAD, METHODS, crop_regions, pad_boxes
from geosteer.index import Indexer
from geosteer.inputs import GallerySide
from geosteer.pairs import score_pairs
from geosteer.public_benchmarks.common import Benchmark, FormatError, ImageRef
from geosteer.public_benchmarks.metrics import pair_metrics, winoground_metrics

#: Methods reported, in column order; "cosine" is the cosine term of the first config.
METHOD_NAMES: tuple[str, ...] = ("cosine", "rerank", "rerank-max")
#: The region choice that reads the benchmark's own boxes (annotation mode).
ANNOTATIONS = "annotations"
#: What each layout's numbers mean, written into the report.
METRIC_TEXT: dict[str, str] = {
    "pair": "accuracy: fraction of examples with S(true caption, image) > S(false caption, image); ties are wrong",
    "winoground": "text: s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1); image: s(c0,i0) > s(c0,i1) and "
                  "s(c1,i1) > s(c1,i0); group: both; fractions of examples",
}


def default_configs() -> dict[str, HeadConfig]:
    """The re-ranking configs scored besides the cosine: `rerank` (preset "default") and `rerank-max`."""
    return {"rerank": get_config("default"), "rerank-max": get_config("default", matching="max")}


def region_choices() -> tuple[str, ...]:
    """What `regions` may be: "annotations" or a key of `geosteer.encoders.regions.METHODS`."""
    return (ANNOTATIONS, *METHODS)


def default_regions(bench: Benchmark) -> str:
    """"annotations" when every image carries annotation boxes, else "grid"."""
    has = all(ref.regions is not None for ex in bench.examples for ref in ex.images)
    return ANNOTATIONS if has and bench.examples else "grid"


def load_image(ref: ImageRef, source: str) -> Image.Image:
    """The image of `ref`, RGB, cropped to `ref.crop` when set (pixels outside the file are black, as PIL crops).

    Decoded as the benchmarks' own code does (`Image.open(path).convert("RGB")`,
    no EXIF rotation), so ARO's boxes fall on the pixels they were drawn on.

    Raises:
        FormatError: the file does not decode; names it and the entry that names it.
    """
    try:
        with Image.open(ref.path) as raw:
            image = raw.convert("RGB")
    except (ValueError, OSError) as e:
        raise FormatError(f"{source}: image {ref.path} cannot be read ({e})") from None
    if ref.crop is not None:
        image = image.crop(tuple(round(v) for v in ref.crop))
    return image


def score_examples(
    bench: Benchmark,
    encoder,
    *,
    regions: str | None = None,
    max_regions: int = 16,
    chunk: int = 64,
    configs: dict[str, HeadConfig] | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Score every example's (caption, image) pairs with each method.

    Args:
        bench: a benchmark from a reader (`geosteer.public_benchmarks.read_benchmark`).
        encoder: a `geosteer.encoders.ClipEncoder` (`load_clip(...)`) or
            anything `geosteer.index.Indexer` takes.
        regions: "annotations" (the images' own boxes) or a region method;
            default `default_regions(bench)`.
        max_regions: cap per image for proposed regions.
        chunk: examples encoded and scored at a time.
        configs: name -> HeadConfig (default `default_configs()`); the
            cosine is taken from the first.
        progress: a tqdm bar over the examples.

    Returns:
        method name -> `[E, captions, images]` float32 scores,
        `[e, c, i]` = S(caption c of example e, its image i); "cosine" first.

    Raises:
        ValueError: an unknown `regions`, "annotations" for a benchmark
            without boxes, a bad `chunk`. FormatError: an image that does not decode.
    """
    regions = default_regions(bench) if regions is None else regions
    if regions not in region_choices():
        raise ValueError(f"regions must be one of {region_choices()}, got {regions!r}")
    if regions == ANNOTATIONS and default_regions(bench) != ANNOTATIONS:
        raise ValueError(f"regions='annotations' needs annotation boxes, and {bench.name} has none; use a region "
                         f"method ({', '.join(METHODS)})")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    configs = default_configs() if configs is None else configs
    indexer = Indexer(encoder, max_regions=max_regions)
    out: dict[str, list[Tensor]] = {name: [] for name in ("cosine", *configs)}
    bar = _bar(len(bench.examples), bench.name, progress)
    for start in range(0, len(bench.examples), chunk):
        examples = bench.examples[start : start + chunk]
        refs, where, ids = _distinct_images(examples)
        images = [load_image(ref, where[i]) for i, ref in enumerate(refs)]
        if regions == ANNOTATIONS:
            gallery = annotation_gallery(indexer, images, [ref.regions for ref in refs])
        else:
            gallery = indexer.index_images(images, method=regions)
        captions = [c for ex in examples for c in ex.captions]
        queries = indexer.encode_queries(captions)
        num_caps, num_imgs = len(examples[0].captions), len(examples[0].images)
        for k, (name, cfg) in enumerate(configs.items()):
            res = score_pairs(queries, gallery, cfg, ids=ids)
            if k == 0:
                out["cosine"].append(res.cosine.reshape(len(examples), num_caps, num_imgs))
            out[name].append(res.scores.reshape(len(examples), num_caps, num_imgs))
        if bar is not None:
            bar.update(len(examples))
    if bar is not None:
        bar.close()
    return {name: torch.cat(blocks) for name, blocks in out.items()}


def annotation_gallery(indexer: Indexer, images: Sequence[Image.Image], boxes: Sequence[Sequence]) -> GallerySide:
    """Annotation mode: each image's regions are crops of its own boxes.

    Args:
        indexer: encodes the whole images and the crops (each distinct one once).
        images: N RGB images.
        boxes: per image, its (x0, y0, x1, y1) pixel boxes (an image
            without any gets its whole-image box).

    Returns:
        A `GallerySide`: embeddings `[N, D]`, parts `[N, n, D]` (crops
        framed square with `COMPONENT_PAD` margin, as region crops of
        objects are), parts_mask `[N, n]`, part_boxes `[N, n, 4]` (the boxes
        themselves, for the structure term).
    """
    per_image = [list(b) or [(0, 0, im.width, im.height)] for im, b in zip(images, boxes)]
    embeddings = indexer.encode_crops(images, "images")
    crops = [c for im, b in zip(images, per_image)
             for c in crop_regions(im, b, indexer.image_size, pad=COMPONENT_PAD, square=True)]
    crop_emb = indexer.encode_crops(crops, "annotation regions")
    box_t, mask = pad_boxes(per_image)
    parts = torch.zeros(len(images), box_t.shape[1], embeddings.shape[1])
    row = 0
    for i, b in enumerate(per_image):
        parts[i, : len(b)] = crop_emb[row : row + len(b)]
        row += len(b)
    return GallerySide(embeddings, parts=parts, parts_mask=mask, part_boxes=box_t)


def summarise(bench: Benchmark, scores: dict[str, Tensor]) -> dict[str, dict]:
    """Each method's metrics (`pair_metrics` or `winoground_metrics`, by layout)."""
    if bench.layout == "winoground":
        return {name: winoground_metrics(s, bench.examples) for name, s in scores.items()}
    return {name: pair_metrics(s, bench.examples, bench.subsets) for name, s in scores.items()}


def run_benchmark(
    bench: Benchmark,
    encoder,
    *,
    model: str = "",
    regions: str | None = None,
    max_regions: int = 16,
    chunk: int = 64,
    progress: bool = False,
) -> dict:
    """Score a benchmark with every method and summarise it: the report `geosteer eval --bench` prints and writes.

    Returns:
        A JSON-ready dict: benchmark, root, files, layout, examples,
        model, regions, parser (the caption parser that ran: "spacy" or
        "regex"), metric (what the numbers mean), notes, methods
        (each one's HeadConfig fields; cosine: λ = 0), results
        (method -> metrics) and summary (method -> the headline number).
    """
    regions = default_regions(bench) if regions is None else regions
    configs = default_configs()
    scores = score_examples(bench, encoder, regions=regions, max_regions=max_regions, chunk=chunk, configs=configs,
                            progress=progress)
    results = summarise(bench, scores)
    headline = (lambda r: r["group"]) if bench.layout == "winoground" else (
        (lambda r: r["mean_macro"]) if bench.headline == "macro" else (lambda r: r["mean"]))
    methods = {"cosine": dataclasses.asdict(get_config("cosine"))}
    methods.update({name: dataclasses.asdict(cfg) for name, cfg in configs.items()})
    return {
        "benchmark": bench.name, "root": str(bench.root), "files": [str(f) for f in bench.files],
        "layout": bench.layout, "examples": len(bench.examples), "model": model, "regions": regions,
        "parser": resolve_parser(), "metric": METRIC_TEXT[bench.layout], "headline": "group score" if bench.layout == "winoground" else (
            "mean macro accuracy" if bench.headline == "macro" else "mean accuracy"),
        "notes": bench.notes, "methods": methods, "results": results,
        "summary": {name: headline(r) for name, r in results.items()},
    }


def format_results(report: dict) -> str:
    """The report as a text table: one row per subset (and metric), one column per method, percent."""
    names = list(report["results"])
    rows: list[tuple[str, int | str, list[float]]] = []
    res = report["results"]
    first = res[names[0]]
    if report["layout"] == "winoground":
        for metric in ("text", "image", "group"):
            rows.append((f"{metric} score", first["count"], [res[n][metric] for n in names]))
    else:
        subsets = [k for k in first if k not in ("mean", "mean_macro")]
        macro = report["headline"].endswith("macro accuracy")
        for s in subsets:
            if macro:
                rows.append((f"{s} macro ({len(first[s]['groups'])} groups)", first[s]["count"],
                             [res[n][s]["macro"] for n in names]))
                rows.append((f"{s} micro", first[s]["count"], [res[n][s]["accuracy"] for n in names]))
            else:
                rows.append((s, first[s]["count"], [res[n][s]["accuracy"] for n in names]))
        if len(subsets) > 1:
            key = "mean_macro" if macro else "mean"
            rows.append((f"mean over {len(subsets)}" + (" (macro)" if macro else ""), "", [res[n][key] for n in names]))
    width = max(len("subset"), *(len(r[0]) for r in rows))
    cols = [max(len(n), 6) for n in names]
    lines = [f"{'subset':<{width}}  {'n':>6}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols))]
    for label, count, values in rows:
        lines.append(f"{label:<{width}}  {count!s:>6}  " + "  ".join(f"{_pct(v):>{w}}" for v, w in zip(values, cols)))
    head = (f"{report['benchmark']}: {report['examples']} examples, model {report['model'] or '?'}, "
            f"regions {report['regions']}, caption parser {report.get('parser', '?')}; percent")
    return "\n".join([head, f"metric: {report['metric']}", f"methods: {_legend(report['methods'])}", *lines])


def _distinct_images(examples) -> tuple[list[ImageRef], list[str], Tensor]:
    """The chunk's distinct images, where each was first named, and ids `[Q, C]` (caption -> its example's images)."""
    index: dict[ImageRef, int] = {}
    where: list[str] = []
    rows = []
    for ex in examples:
        cols = []
        for ref in ex.images:
            if ref not in index:
                index[ref] = len(index)
                where.append(ex.source)
            cols.append(index[ref])
        rows.extend([cols] * len(ex.captions))
    return list(index), where, torch.tensor(rows, dtype=torch.long)


def _bar(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name}: scoring examples", unit="ex")


def _legend(methods: dict[str, dict]) -> str:
    """"cosine = q·c; rerank = λ 0.8, γ 0.1, hungarian; ...": what each column ran."""
    parts = []
    for name, cfg in methods.items():
        if cfg["lam"] == 0 and cfg["gamma"] == 0:
            parts.append(f"{name} = q·c")
        else:
            parts.append(f"{name} = S with λ {cfg['lam']:g}, γ {cfg['gamma']:g}, {cfg['matching']} matching")
    return "; ".join(parts)


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"
