"""Evaluate retrieval methods on GeoShapes splits: R@1, R@5, nDCG@10, mean ± std over seeds.

A *method* is a head configuration plus the inputs it reads (region method,
steering anchors). The methods compared:

- "cosine": first stage only (λ = α = β = γ = 0);
- "rerank": Hungarian part matching over region sets (+ the structure term);
- "rerank-max": the same with per-part max matching (the ablation);
- "steer": stage 1 alone (λ = 0): the query move α and the confuser
  penalty β, which the head measures on the region sets when it has them.

Re-ranking plus steering has no method of its own: on validation no β > 0
helped once regions are matched (bench/tune_defaults.py, grid C), so it
would be "rerank" again.

Every split of a run is indexed once (`geosteer.geoshapes.index.SplitIndexer`), and every
method reads the same embeddings. Each query has exactly one relevant
gallery item, so nDCG@10 = 1 / log2(1 + rank) when rank <= 10, else 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from geosteer import GallerySide, GeoSteerHead, HeadConfig, HeadResult, QuerySide, get_config, score_pairs
from geosteer.environment import environment
from geosteer.geoshapes.index import SplitIndex, SplitIndexer
from geosteer.geoshapes.scenes import COLOURS, SHAPES, object_boxes
from geosteer.geoshapes.splits import SPLITS, TEST_SEEDS
from geosteer.geoshapes.vocabulary import LABEL_PHRASES

#: The methods `geosteer eval` reports, in table order.
METHOD_NAMES: tuple[str, ...] = ("cosine", "rerank", "rerank-max", "steer")
#: The three the demo shows.
DEMO_METHODS: tuple[str, ...] = ("cosine", "rerank", "steer")
METRICS: tuple[str, ...] = ("r1", "r5", "ndcg10")
#: Region method the presets were tuned with (colour regions, each cropped alone).
DEFAULT_REGIONS = "masked"
#: Steering anchors the presets were tuned with: one negative phrase per object part.
DEFAULT_ANCHORS = "parts"


@dataclass(frozen=True)
class Method:
    """A head configuration and the inputs it is fed."""

    name: str
    config: HeadConfig
    regions: str = DEFAULT_REGIONS  # region method of the gallery part sets
    anchors: str = DEFAULT_ANCHORS  # steering anchors: "caption" or "parts"
    max_regions: int = 16

    @property
    def uses_parts(self) -> bool:
        """Part sets are fed for λ, γ, and for β (the confuser penalty is measured on regions)."""
        return self.config.lam > 0 or self.config.gamma > 0 or self.config.beta > 0

    @property
    def uses_steering(self) -> bool:
        return self.config.alpha > 0 or self.config.beta > 0


def default_methods(k: int | None = None, names: Sequence[str] = METHOD_NAMES) -> list[Method]:
    """The named methods built from the presets (`geosteer.get_config`), optionally with K."""
    over = {} if k is None else {"k": k}
    table = {
        "cosine": lambda: get_config("cosine", **over),
        "rerank": lambda: get_config("default", **over),
        "rerank-max": lambda: get_config("default", matching="max", **over),
        "steer": lambda: get_config("steer", **over),
    }
    for n in names:
        if n not in table:
            raise ValueError(f"method names must be drawn from {tuple(table)}, got {n!r}")
    return [Method(n, table[n]()) for n in names]


def run_method(index: SplitIndex, method: Method) -> HeadResult:
    """Run the head for every query of an indexed split."""
    cfg = method.config
    if cfg.k > index.images.shape[0]:
        cfg = cfg.replace(k=index.images.shape[0])
    queries, gallery = index.head_inputs(
        method.regions, method.max_regions, method.anchors,
        parts=method.uses_parts, steering=method.uses_steering, relations=cfg.gamma > 0,
    )
    with torch.inference_mode():
        return GeoSteerHead(cfg)(queries, gallery)


def ranks(result: HeadResult, targets: Tensor) -> Tensor:
    """1-based rank of each target in the result, `[Q]` float (inf = not in the top K)."""
    hit = result.indices == targets[:, None]
    pos = hit.float().argmax(dim=1).float() + 1
    return torch.where(hit.any(dim=1), pos, torch.full_like(pos, math.inf))


def scores_from_ranks(r: Tensor) -> dict[str, float]:
    """R@1, R@5 and nDCG@10 (single relevant item) of `[Q]` ranks."""
    ndcg = torch.where(r <= 10, 1.0 / torch.log2(1.0 + r.clamp(max=1e9)), torch.zeros_like(r))
    return {"r1": float((r <= 1).float().mean()), "r5": float((r <= 5).float().mean()), "ndcg10": float(ndcg.mean())}


def evaluate_index(index: SplitIndex, methods: Sequence[Method]) -> dict[str, dict]:
    """Metrics of each method on one indexed split, plus first-stage diagnostics.

    Returns:
        `{method name: {"r1", "r5", "ndcg10", "ranks": [Q]}, "_diagnostics": {...}}`.
    """
    targets = index.targets
    out: dict[str, dict] = {}
    for m in methods:
        r = ranks(run_method(index, m), targets)
        out[m.name] = {**scores_from_ranks(r), "ranks": [None if math.isinf(x) else int(x) for x in r.tolist()]}
    out["_diagnostics"] = diagnostics(index, methods)
    return out


def diagnostics(index: SplitIndex, methods: Sequence[Method]) -> dict[str, float]:
    """What bounds the re-ranking: first-stage recall@K and how often the target beats its hard negatives.

    - `first_stage_recall@K`: target inside the pool the head re-ranks;
    - `cosine_beats_hard`: the target's cosine beats every hard negative's
      (its twin / confusers);
    - `regions_beat_hard`: the target's Hungarian part alignment (default
      region method) beats every hard negative's: the ceiling of pure
      part matching on the pairs the split is about.
    """
    sp = index.split
    q = index.query_tensors()
    sims = q.embeddings @ index.images.T  # [Q, N]
    targets = index.targets
    out: dict[str, float] = {}
    for k in sorted({m.config.k for m in methods}):
        k = min(k, sims.shape[1])
        top = sims.topk(k, dim=1).indices
        out[f"first_stage_recall@{k}"] = float((top == targets[:, None]).any(dim=1).float().mean())
    hard = [h for h in sp.hard_negatives]
    if any(hard):
        cos_ok = [all(sims[i, t] > sims[i, h] for h in hs) for i, (t, hs) in enumerate(zip(sp.targets, hard)) if hs]
        out["cosine_beats_hard"] = sum(cos_ok) / len(cos_ok)
        regions = next((m.regions for m in methods if m.uses_parts), None)
        if regions is not None:
            gp, gm, _ = index.regions(regions)
            ids = torch.tensor([[t, *hs] + [t] * (max(map(len, hard)) - len(hs)) for t, hs in zip(sp.targets, hard)])
            with torch.inference_mode():
                align = score_pairs(QuerySide(q.embeddings, parts=q.parts, parts_mask=q.parts_mask),
                                    GallerySide(index.images, parts=gp, parts_mask=gm),
                                    HeadConfig(lam=1.0, backend="torch"), ids=ids).alignment
            ok = [all(align[i, 0] > align[i, 1 + j] for j in range(len(hs))) for i, hs in enumerate(hard) if hs]
            out["regions_beat_hard"] = sum(ok) / len(ok)
    regions = next((m.regions for m in methods if m.uses_parts), None)
    if regions is not None:
        out.update(region_recognition(index, regions))
    return out


def region_recognition(index: SplitIndex, method: str) -> dict[str, float]:
    """How well the region crops name the objects: what bounds part matching.

    Each object of each gallery scene takes the region of `method` that
    overlaps its true box most (IoU); that region's embedding is classified
    zero-shot among the 48 "a <colour> <shape>" phrases.

    Returns:
        `region_iou` (mean best IoU), `region_acc` (shape and colour right),
        `region_shape_acc`, `region_colour_acc`, and
        `region_pentagon_hexagon_acc` (shape right, over pentagons and hexagons).
    """
    labels = index.text(LABEL_PHRASES)  # [48, D], shape-major
    parts, mask, boxes = index.regions(method)
    ious, ok, shape_ok, colour_ok, ph = [], [], [], [], []
    num_colours = len(COLOURS)
    for i, scene in enumerate(index.split.gallery):
        regs = boxes[i][mask[i]]
        for obj, tb in zip(scene.objects, object_boxes(scene, index.image_size)):
            t = torch.tensor(tb)
            lo = torch.maximum(regs[:, :2], t[:2])
            hi = torch.minimum(regs[:, 2:], t[2:])
            inter = (hi - lo).clamp_min(0).prod(dim=1)
            union = (regs[:, 2:] - regs[:, :2]).prod(dim=1) + (t[2:] - t[:2]).prod() - inter
            iou = inter / union
            best = int(iou.argmax())
            pred = int((parts[i, best] @ labels.T).argmax())
            shape, colour = SHAPES[pred // num_colours], COLOURS[pred % num_colours]
            ious.append(float(iou[best]))
            shape_ok.append(shape == obj.shape)
            colour_ok.append(colour == obj.colour)
            ok.append(shape_ok[-1] and colour_ok[-1])
            if obj.shape in ("pentagon", "hexagon"):
                ph.append(shape_ok[-1])
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"region_iou": mean(ious), "region_acc": mean(ok), "region_shape_acc": mean(shape_ok),
            "region_colour_acc": mean(colour_ok), "region_pentagon_hexagon_acc": mean(ph)}


def summarise(values: Sequence[float]) -> dict[str, float]:
    """mean, std (sample, ddof=1), sem and n of per-seed values."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n) if n else 0.0, "n": n}


def evaluate(
    indexer: SplitIndexer,
    splits: Sequence[str] = SPLITS,
    seeds: Sequence[int] = TEST_SEEDS,
    methods: Sequence[Method] | None = None,
    num_queries: int = 100,
    keep_ranks: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Index every (split, seed), run every method, summarise over seeds.

    Returns:
        A JSON-ready dict: `per_seed[split][seed][method][metric]`,
        `summary[split][method][metric] = {mean, std, sem, n}`, paired
        differences to cosine (`vs_cosine`), diagnostics, configs, settings.
    """
    methods = list(methods) if methods is not None else default_methods()
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"splits must be drawn from {SPLITS}, got {s!r}")
    t0 = time.perf_counter()
    per_seed: dict[str, dict] = {}
    diag: dict[str, dict] = {}
    t_index = 0.0
    for s in splits:
        per_seed[s], diag[s] = {}, {}
        for seed in seeds:
            ti = time.perf_counter()
            idx = indexer.split(s, seed, num_queries=num_queries)
            t_index += time.perf_counter() - ti
            res = evaluate_index(idx, methods)
            diag[s][str(seed)] = res.pop("_diagnostics")
            if not keep_ranks:
                for v in res.values():
                    v.pop("ranks")
            per_seed[s][str(seed)] = res
            if log is not None:
                log(f"{s}/{seed}: " + "  ".join(f"{m.name} {res[m.name]['r1']:.3f}" for m in methods))
    summary: dict[str, dict] = {}
    vs_cosine: dict[str, dict] = {}
    for s in splits:
        summary[s] = {}
        for m in methods:
            summary[s][m.name] = {
                metric: summarise([per_seed[s][str(seed)][m.name][metric] for seed in seeds]) for metric in METRICS
            }
        if any(m.name == "cosine" for m in methods):
            vs_cosine[s] = {
                m.name: {
                    metric: summarise([
                        per_seed[s][str(seed)][m.name][metric] - per_seed[s][str(seed)]["cosine"][metric] for seed in seeds
                    ])
                    for metric in METRICS
                }
                for m in methods if m.name != "cosine"
            }
    return {
        "model": indexer.encoder.name,
        "model_fingerprint": indexer.fingerprint(),
        "splits": list(splits),
        "seeds": list(seeds),
        "num_queries": num_queries,
        "methods": {m.name: {"config": dataclasses.asdict(m.config), "regions": m.regions, "anchors": m.anchors,
                             "max_regions": m.max_regions} for m in methods},
        "summary": summary,
        "vs_cosine": vs_cosine,
        "per_seed": per_seed,
        "diagnostics": diag,
        "seconds": {"total": round(time.perf_counter() - t0, 1), "indexing": round(t_index, 1)},
        "env": environment(),
    }


def format_table(results: dict, metric: str = "r1", methods: Sequence[str] | None = None) -> str:
    """A plain-text table: splits x methods, `mean ± std` of `metric` in percent."""
    names = list(methods) if methods is not None else list(results["methods"])
    splits = results["splits"]
    head = ["split"] + names
    rows = []
    for s in splits:
        row = [s]
        for n in names:
            st = results["summary"][s][n][metric]
            row.append(f"{100 * st['mean']:5.1f} ± {100 * st['std']:4.1f}" if st["n"] > 1 else f"{100 * st['mean']:5.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *[line(r) for r in rows]])
