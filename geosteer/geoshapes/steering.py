"""The steering controllability benchmark: set queries, a steering request, the result set it gets.

R@1 of one target is not what steering is for. Here a query names an
object with one attribute left open ("a star", "a red shape") and so has
many correct scenes; a *request* fills the attribute in, toward one value
and away from its confuser ("red, not orange": toward "a red star", away
"an orange star"). A method is judged on the result set it returns:

- precision@10 / @50 of scenes that satisfy the request (a red star: the
  colour must be bound to the star, not to another object);
- nDCG@10 for the *original* query (binary: the scene holds a star), so a
  method that collapses onto the anchor alone ("anything red") is caught.

Galleries are seeded random scenes of 1-3 objects (distinct shapes and
colours within a scene); every (query, request) pair with at least
`MIN_SATISFYING` satisfying scenes is asked. Methods (`METHODS`) and their
strength grids are listed in `method_grid`; strengths are chosen on the
validation seeds and reported on the test seeds (bench/bench_steering.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer import GallerySide, GeoSteerHead, HeadConfig, QuerySide
from geosteer.encoders.parts import with_article
from geosteer.geoshapes.index import SplitIndex, SplitIndexer
from geosteer.geoshapes.scenes import COLOURS, SHAPES, Scene, object_phrase, random_scene
from geosteer.geoshapes.splits import Split
from geosteer.geoshapes.vocabulary import CONFUSERS

#: A request must have at least this many satisfying scenes in the gallery
#: (so precision@10 can reach 1).
MIN_SATISFYING = 10
#: First-stage pool every pool-based method re-ranks (the presets' k).
POOL = 100
#: Region method of the gallery part sets (the presets').
REGIONS = "masked"


@dataclass(frozen=True)
class Request:
    """One (query, steering request) pair.

    `shape` / `colour`: what the query names (one of them None: left open);
    `want` / `avoid`: the value the request asks for and its confuser.
    """

    shape: str | None
    colour: str | None
    want: str
    avoid: str

    @property
    def query(self) -> str:
        """The original query text: "a star", "a red shape"."""
        return with_article(self.shape) if self.colour is None else with_article(f"{self.colour} shape")

    @property
    def toward(self) -> str:
        """The toward anchor: the query's object with the requested value ("a red star")."""
        return object_phrase(self._label(self.want))

    @property
    def away(self) -> str:
        """The away anchor: the same object with the confuser value ("an orange star")."""
        return object_phrase(self._label(self.avoid))

    @property
    def words(self) -> str:
        """"red, not orange"."""
        return f"{self.want}, not {self.avoid}"

    def _label(self, value: str) -> tuple[str, str]:
        return (self.shape, value) if self.colour is None else (value, self.colour)

    def relevant(self, scene: Scene) -> bool:
        """The scene satisfies the original query (an object with the named attribute)."""
        return any((self.shape is None or o.shape == self.shape) and (self.colour is None or o.colour == self.colour)
                   for o in scene.objects)

    def satisfied(self, scene: Scene) -> bool:
        """The scene satisfies query and request: one object carries both attributes."""
        return any(o.label == self._label(self.want) for o in scene.objects)


def all_requests() -> list[Request]:
    """Every (query, request) pair: shape queries x colour requests, colour queries x shape requests."""
    out = [Request(s, None, c, CONFUSERS[c]) for s in SHAPES for c in COLOURS]
    out += [Request(None, c, s, CONFUSERS[s]) for c in COLOURS for s in SHAPES]
    return out


def make_gallery(seed: int, size: int) -> list[Scene]:
    """`size` seeded random scenes of 1-3 objects."""
    rng = random.Random(f"geoshapes/steering/{seed}")
    return [random_scene(rng) for _ in range(size)]


@dataclass
class SteeringTask:
    """An indexed gallery, its requests, and the relevance of every scene to each."""

    index: SplitIndex
    requests: list[Request]
    relevant: Tensor  # [R, N] bool: satisfies the original query
    satisfied: Tensor  # [R, N] bool: satisfies query and request

    def texts(self, strings: Sequence[str]) -> Tensor:
        """`[len, D]` embeddings."""
        return self.index.text(list(strings))


def build_task(indexer: SplitIndexer, seed: int, size: int = 600) -> SteeringTask:
    """Index a seeded gallery and keep the requests it can answer (>= MIN_SATISFYING satisfying scenes)."""
    gallery = make_gallery(seed, size)
    requests = [r for r in all_requests() if sum(r.satisfied(s) for s in gallery) >= MIN_SATISFYING]
    if not requests:
        raise ValueError(f"a gallery of {size} scenes answers no request; use a larger one")
    split = Split(
        name="steering", seed=seed, image_size=indexer.image_size, gallery=gallery,
        queries=[r.query for r in requests], targets=[0] * len(requests),
        query_parts=[[r.query] for r in requests], query_relations=[[] for _ in requests],
        negatives=[[r.toward, r.away] for r in requests],
    )
    index = indexer.index(split)
    relevant = torch.tensor([[r.relevant(s) for s in gallery] for r in requests])
    satisfied = torch.tensor([[r.satisfied(s) for s in gallery] for r in requests])
    return SteeringTask(index, requests, relevant, satisfied)


# ---------------------------------------------------------------- metrics

def precision_at(ranking: Tensor, good: Tensor, k: int) -> Tensor:
    """`[R]` fraction of the top `k` of `ranking` `[R, >=k]` that is `good` `[R, N]`."""
    return good.gather(1, ranking[:, :k]).float().mean(dim=1)


def ndcg_at(ranking: Tensor, good: Tensor, k: int = 10) -> Tensor:
    """`[R]` binary nDCG@k of `ranking` against `good` `[R, N]`."""
    gains = good.gather(1, ranking[:, :k]).float()
    discounts = 1.0 / torch.log2(torch.arange(k, dtype=torch.float32) + 2.0)
    dcg = (gains * discounts).sum(dim=1)
    ideal = torch.stack([discounts[: min(k, int(n))].sum() for n in good.sum(dim=1)])
    return dcg / ideal.clamp_min(1e-9)


def metrics(ranking: Tensor, task: SteeringTask) -> dict[str, float]:
    """Mean P@10 / P@50 of the request, nDCG@10 and P@10 of the original query, over requests."""
    return {
        "p10": float(precision_at(ranking, task.satisfied, 10).mean()) * 100,
        "p50": float(precision_at(ranking, task.satisfied, 50).mean()) * 100,
        "ndcg10": float(ndcg_at(ranking, task.relevant, 10).mean()) * 100,
        "rel10": float(precision_at(ranking, task.relevant, 10).mean()) * 100,
    }


def per_request(ranking: Tensor, task: SteeringTask) -> dict[str, Tensor]:
    """`[R]` P@10 of the request and nDCG@10 of the query, for paired differences."""
    return {"p10": precision_at(ranking, task.satisfied, 10) * 100, "ndcg10": ndcg_at(ranking, task.relevant, 10) * 100}


# ---------------------------------------------------------------- methods

#: Method -> what it does with the request (strength w is its one knob).
METHODS: dict[str, str] = {
    "none": "cosine of the original query; the request ignored",
    "additive": "clip-retrieval: q' = normalise(q + w·t), t = the toward text; cosine over the gallery",
    "additive-contrast": "q' = normalise(q + w·(t - u)), u = the away text; cosine over the gallery",
    "alpha-qe": "α-query expansion, positive side: q' = normalise(q + w·mean of the 10 pool items nearest t)",
    "geosteer-alpha": "geosteer's query move α = w (design 'margin', anchors t / u) over the pool of q",
    "geosteer-beta": "geosteer's region confuser penalty β = w (anchors t / u) over the pool of q",
    "geosteer-delta": "geosteer's steering δ = w: pool of q re-ranked by s + δ·(r(c, t) - r(c, u)), r = best region",
    "geosteer-rerank": "geosteer re-ranking alone (λ = 0.8, query part = the query): the request ignored",
    "geosteer-rerank+delta": "geosteer re-ranking (λ = 0.8) plus steering δ = w: S = 0.2·s + 0.8·A + δ·C",
}
#: λ of the re-ranking methods (the presets').
RERANK_LAM = 0.8


def method_grid(name: str) -> list[float]:
    """The strengths tried for `name` on the validation seeds."""
    if name in ("none", "geosteer-rerank"):
        return [0.0]
    if name in ("geosteer-beta",):
        return [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    return [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]


def _cosine(query: Tensor, gallery: Tensor, k: int) -> Tensor:
    return (F.normalize(query, dim=-1) @ gallery.T).topk(k, dim=1).indices


def rank(task: SteeringTask, name: str, strength: float, k: int = 50) -> Tensor:
    """`[R, k]` gallery ids the method returns for every request, best first."""
    reqs, gallery = task.requests, task.index.images
    q = task.texts([r.query for r in reqs])
    t = task.texts([r.toward for r in reqs])
    u = task.texts([r.away for r in reqs])
    if name == "none":
        return _cosine(q, gallery, k)
    if name == "additive":
        return _cosine(q + strength * t, gallery, k)
    if name == "additive-contrast":
        return _cosine(q + strength * (t - u), gallery, k)
    if name == "alpha-qe":
        ids = _cosine(q, gallery, min(POOL, gallery.shape[0]))  # the original query's pool
        near = (gallery[ids] @ t[:, :, None]).squeeze(-1).topk(10, dim=1).indices  # [R, 10] positions in the pool
        mean = gallery[ids.gather(1, near)].mean(dim=1)
        return _cosine(q + strength * mean, gallery, k)
    if name in METHODS:
        return _head(name, strength, q, t, u, task)[:, :k]
    raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")


def _head(name: str, strength: float, q: Tensor, t: Tensor, u: Tensor, task: SteeringTask) -> Tensor:
    """The geosteer methods: one head call over the pool of the original query."""
    knob = {"geosteer-alpha": "alpha", "geosteer-beta": "beta", "geosteer-delta": "delta",
            "geosteer-rerank+delta": "delta"}.get(name)
    lam = RERANK_LAM if name.startswith("geosteer-rerank") else 0.0
    cfg = HeadConfig(k=POOL, lam=lam, gamma=0.0, **({knob: strength} if knob else {}))
    queries = QuerySide(q, negatives=u[:, None], positives=t[:, None])
    gallery = GallerySide(task.index.images)
    if name != "geosteer-alpha":  # the others read region sets
        gallery.parts, gallery.parts_mask, _ = task.index.regions(REGIONS)
        queries.parts = q[:, None]
    if name == "geosteer-rerank":
        queries.negatives = queries.positives = None
    with torch.inference_mode():
        return GeoSteerHead(cfg)(queries, gallery).indices


def sweep(task: SteeringTask, names: Sequence[str] = tuple(METHODS)) -> dict[str, dict[float, dict[str, float]]]:
    """method -> strength -> metrics, over the method's grid."""
    return {n: {w: metrics(rank(task, n, w), task) for w in method_grid(n)} for n in names}


def pick_strength(results: dict[float, dict[str, float]], base_ndcg: float, budget: float = 2.0) -> float:
    """The strength with the best P@10 among those keeping nDCG@10 within `budget` points of `base_ndcg`.

    None fits: the strength with the highest nDCG@10 (the gentlest).
    """
    ok = {w: m for w, m in results.items() if m["ndcg10"] >= base_ndcg - budget}
    if ok:
        return max(ok, key=lambda w: (ok[w]["p10"], -w))
    return max(results, key=lambda w: results[w]["ndcg10"])


def paired(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean and standard error of the paired difference a - b over requests `[R]`."""
    d = (a - b).double()
    return float(d.mean()), float(d.std(unbiased=True) / math.sqrt(max(1, d.numel())))
