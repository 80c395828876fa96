"""GeoShapes retrieval splits: text queries against a gallery of scenes.

Each split makes the gallery hard in one intended way and keeps it fair:

- the hard negative is present: every query's twin or confusers (the
  colour-swapped scene, the position-swapped scene, the scene that holds
  only one of two similar objects, ...) are in the gallery;
- exactly one gallery scene satisfies each query under the caption's own
  semantics (`caption_matches`: the scene holds the named objects, one
  scene object per phrase, and every stated relation holds). This is
  checked for every query against the whole gallery when the split is made.

Splits (DESIGN §3): fine, binding, relation, count, touching, control; a seed fixes everything (`random.Random` seeded from name and seed).
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, field, replace

from PIL import Image

from geosteer.encoders import contrast_texts, split_parts
from geosteer.geoshapes.scenes import (
    COLOURS,
    SHAPES,
    Scene,
    ShapeObject,
    caption,
    object_boxes,
    place,
    relation_holds,
    render,
)
from geosteer.geoshapes.vocabulary import CONFUSERS

SPLITS: tuple[str, ...] = ("fine", "binding", "relation", "count", "touching", "control")
VALIDATION_SEEDS: tuple[int, ...] = (0, 1, 2)
TEST_SEEDS: tuple[int, ...] = (100, 101, 102)

#: What each split tests (for reports and the README).
DESCRIPTIONS: dict[str, str] = {
    "fine": "fine-grained shape: pentagon vs hexagon and other near shapes",
    "binding": "attribute binding: which colour goes with which shape",
    "relation": "spatial relations: left/right and above/below",
    "count": "two similar objects vs a scene holding one of them",
    "touching": "binding with touching or overlapping objects",
    "control": "plain single-object retrieval (must not get worse)",
}
#: Shape -> its nearest confusable shape, for the fine split.
NEAR_SHAPE: dict[str, str] = {s: CONFUSERS[s] for s in SHAPES}
NEAR_COLOUR: dict[str, str] = {c: CONFUSERS[c] for c in COLOURS}


@dataclass
class Split:
    """One seeded split: a gallery, text queries and their single targets."""

    name: str
    seed: int
    image_size: int
    gallery: list[Scene]  # render with render(scene, image_size)
    queries: list[str]  # query captions
    targets: list[int]  # gallery index of each query's correct scene
    query_parts: list[list[str]]  # one phrase per object of the query
    query_relations: list[list[tuple[int, int, str]]]  # (i, j, relation) over parts
    negatives: list[list[str]]  # contrast texts per query (`contrast_texts` with `CONFUSERS`)
    kinds: list[str] = field(default_factory=list)  # per query: the sub-kind it was made as
    hard_negatives: list[list[int]] = field(default_factory=list)  # gallery ids of its twin / confusers

    def images(self, noise: float = 0.0) -> list[Image.Image]:
        """The gallery rendered at `image_size` (noise seeded per scene)."""
        return [render(s, self.image_size, noise=noise) for s in self.gallery]

    def boxes(self) -> list[list[tuple[float, float, float, float]]]:
        """True object boxes of each gallery scene, in pixels."""
        return [object_boxes(s, self.image_size) for s in self.gallery]


# ---------------------------------------------------------------- semantics

def parse_object(part: str) -> tuple[str, str]:
    """"a red pentagon" -> ("pentagon", "red"); ValueError if not GeoShapes words."""
    words = part.lower().split()
    shapes = [w for w in words if w in SHAPES]
    colours = [w for w in words if w in COLOURS]
    if len(shapes) != 1 or len(colours) != 1:
        raise ValueError(f"part must name one GeoShapes colour and shape, got {part!r}")
    return shapes[0], colours[0]


@functools.lru_cache(maxsize=4096)
def _parse_query(query: str) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[int, int, str], ...]]:
    # Cached: building a split checks each query against every scene.
    parts, relations = split_parts(query)
    return tuple(parse_object(p) for p in parts), tuple(relations)


def caption_matches(query: str, scene: Scene) -> bool:
    """Whether `scene` satisfies `query`.

    The scene must hold a distinct object for each phrase of the query, with
    the phrase's shape and colour, such that every stated relation holds
    between the objects chosen. Extra objects are allowed: this is the
    lenient reading, so a split that passes it is unique under the strict
    one (the caption lists every object) too.
    """
    labels, relations = _parse_query(query)
    if len(labels) > len(scene.objects):
        return False
    for pick in itertools.permutations(range(len(scene.objects)), len(labels)):
        objs = [scene.objects[k] for k in pick]
        if any(o.label != lab for o, lab in zip(objs, labels)):
            continue
        if all(relation_holds(objs[i], objs[j], r) for i, j, r in relations):
            return True
    return False


class _Builder:
    """Adds (query, target, confusers) groups only while every query stays unique."""

    def __init__(self) -> None:
        self.gallery: list[Scene] = []
        self.queries: list[str] = []
        self.targets: list[int] = []
        self.kinds: list[str] = []
        self.hard: list[list[int]] = []

    def add(self, query: str, target: Scene, confusers: list[Scene], kind: str) -> bool:
        if query in self.queries or not caption_matches(query, target):
            return False
        if any(caption_matches(query, s) for s in confusers):
            raise RuntimeError(f"a confuser satisfies its own query {query!r}: split recipe bug")
        if any(caption_matches(query, s) for s in self.gallery):
            return False
        if any(caption_matches(q, s) for q in self.queries for s in [target, *confusers]):
            return False
        start = len(self.gallery)
        self.gallery.extend([target, *confusers])
        self.queries.append(query)
        self.targets.append(start)
        self.kinds.append(kind)
        self.hard.append(list(range(start + 1, start + 1 + len(confusers))))
        return True

    def add_distractor(self, scene: Scene) -> bool:
        if any(caption_matches(q, scene) for q in self.queries):
            return False
        self.gallery.append(scene)
        return True


# ---------------------------------------------------------------- recipes
# Each returns (query, target, confusers, kind) or None to try again.

def _other_labels(rng: random.Random, n: int, avoid_shapes: set[str], avoid_colours: set[str]) -> list[tuple[str, str]]:
    shapes = [s for s in SHAPES if s not in avoid_shapes]
    colours = [c for c in COLOURS if c not in avoid_colours]
    return list(zip(rng.sample(shapes, n), rng.sample(colours, n)))


def _fine(rng: random.Random, singles_left: bool):
    shape = rng.choice(("pentagon", "hexagon")) if rng.random() < 0.6 else rng.choice(SHAPES)
    colour = rng.choice(COLOURS)
    near = NEAR_SHAPE[shape]
    labels = [(shape, colour)]
    n = 1 if singles_left and rng.random() < 0.3 else 2
    if n == 2:
        labels += _other_labels(rng, 1, {shape, near}, {colour})
        rng.shuffle(labels)
    target = place(rng, labels)
    k = labels.index((shape, colour))
    twin_objs = list(target.objects)
    twin_objs[k] = replace(twin_objs[k], shape=near)
    return caption(target), target, [Scene(tuple(twin_objs))], f"fine-{n}obj"


def _swap_colours(scene: Scene, i: int, j: int) -> Scene:
    objs = list(scene.objects)
    objs[i] = replace(scene.objects[i], colour=scene.objects[j].colour)
    objs[j] = replace(scene.objects[j], colour=scene.objects[i].colour)
    return Scene(tuple(objs))


def _binding(rng: random.Random, placement: str = "separate"):
    n = 3 if rng.random() < 0.3 else 2
    labels = _other_labels(rng, n, set(), set())
    target = place(rng, labels, placement=placement)
    i, j = rng.sample(range(n), 2)
    return caption(target), target, [_swap_colours(target, i, j)], f"{placement}-{n}obj"


def _relation(rng: random.Random):
    relation = rng.choice(("left_of", "right_of", "above", "below"))
    labels = _other_labels(rng, 2, set(), set())
    size = rng.uniform(0.24, 0.34)
    r, margin = size / 2, 0.03
    lo, hi = r + margin, 1 - r - margin
    # main axis: clearly apart; cross axis: roughly aligned, so the relation
    # is the obvious reading of the picture.
    a_main = rng.uniform(lo, hi)
    b_main = rng.uniform(lo, hi)
    if abs(a_main - b_main) < max(0.35, size + 0.08):
        return None
    cross = rng.uniform(lo, hi)
    a_cross = min(hi, max(lo, cross + rng.uniform(-0.08, 0.08)))
    b_cross = min(hi, max(lo, cross + rng.uniform(-0.08, 0.08)))
    horizontal = relation in ("left_of", "right_of")

    def obj(label, main, cross_):
        cx, cy = (main, cross_) if horizontal else (cross_, main)
        return ShapeObject(label[0], label[1], cx, cy, size)

    a, b = obj(labels[0], a_main, a_cross), obj(labels[1], b_main, b_cross)
    if not relation_holds(a, b, relation):
        a, b = replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)
    target = Scene((a, b))
    twin = Scene((replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)))
    return caption(target, relation=relation), target, [twin], relation


def _count(rng: random.Random):
    kind = rng.choice(("same", "near_shape", "near_colour"))
    shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
    first = (shape, colour)
    second = {
        "same": first,
        "near_shape": (NEAR_SHAPE[shape], colour),
        "near_colour": (shape, NEAR_COLOUR[colour]),
    }[kind]
    lo = rng.uniform(0.24, 0.32)
    target = place(rng, [first, second], size_range=(lo, lo + 0.04))
    # Confusers: each similar object alone (one region that fits both
    # parts, fully or partly), and the first one beside an unrelated object
    # (same object count as the target, one part has nothing to match).
    confusers = [place(rng, [first], size_range=(lo, lo + 0.04))]
    if second != first:
        confusers.append(place(rng, [second], size_range=(lo, lo + 0.04)))
    unrelated = _other_labels(rng, 1, {first[0], second[0]}, {first[1], second[1]})
    confusers.append(place(rng, [first, *unrelated], size_range=(lo, lo + 0.04)))
    return caption(target), target, confusers, kind


def _touching(rng: random.Random):
    return _binding(rng, placement=rng.choice(("touching", "overlapping")))


def _control_combos(rng: random.Random) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    combos = [(s, c) for s in SHAPES for c in COLOURS]
    rng.shuffle(combos)
    free = max(8, len(combos) // 4)  # combos kept out of the queries, for distractors
    return combos[free:], combos[:free]


# ---------------------------------------------------------------- factory

def make_split(
    name: str,
    seed: int,
    num_queries: int = 100,
    image_size: int = 96,
    distractors: int | None = None,
) -> Split:
    """Build one split, deterministically from (name, seed).

    Args:
        name: one of `SPLITS`.
        seed: any int; `VALIDATION_SEEDS` for choosing defaults,
            `TEST_SEEDS` for reporting.
        num_queries: queries wanted. "control" has at most 3/4 of the
            shape x colour combinations (36): a single-object query has one
            correct scene only if no other scene holds that object.
        image_size: pixel side the gallery is meant to be rendered at.
        distractors: random extra scenes (none satisfying any query);
            None = `num_queries`.

    Returns:
        The split; the gallery is shuffled, `targets` index into it.

    Raises:
        ValueError: bad name or counts. RuntimeError: the uniqueness check
        failed (a bug in a recipe, never expected).
    """
    if name not in SPLITS:
        raise ValueError(f"name must be one of {SPLITS}, got {name!r}")
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f"num_queries must be a positive int, got {num_queries!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if distractors is None:
        distractors = num_queries
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise ValueError(f"distractors must be a non-negative int or None, got {distractors!r}")
    rng = random.Random(f"geoshapes/{name}/{seed}")
    b = _Builder()

    free_combos: list[tuple[str, str]] = []
    if name == "control":
        query_combos, free_combos = _control_combos(rng)
        for shape, colour in query_combos[:num_queries]:
            target = place(rng, [(shape, colour)])
            if not b.add(caption(target), target, [], "single"):
                raise RuntimeError(f"control query {shape}/{colour} not unique: split recipe bug")
    else:
        recipes = {"binding": _binding, "relation": _relation, "count": _count, "touching": _touching}
        singles = 0
        for _ in range(num_queries * 200):
            if len(b.queries) == num_queries:
                break
            if name == "fine":
                # single-object fine queries are few (one per shape/colour)
                group = _fine(rng, singles_left=singles < len(SHAPES) * len(COLOURS) // 3)
            else:
                group = recipes[name](rng)
            if group is not None and b.add(*group):
                singles += group[3] == "fine-1obj"
        if len(b.queries) < num_queries:
            raise RuntimeError(f"{name}: made only {len(b.queries)} of {num_queries} unique queries")

    added = 0
    for _ in range(distractors * 50):
        if added == distractors:
            break
        if name == "control":
            n = rng.randint(1, 3)
            picked = rng.sample(free_combos, n)
            if len({s for s, _ in picked}) < n or len({c for _, c in picked}) < n:
                continue
            scene = place(rng, picked)
        else:
            scene = place(rng, _other_labels(rng, rng.randint(1, 3), set(), set()))
        added += b.add_distractor(scene)

    # Shuffle the gallery so a target's position says nothing.
    order = list(range(len(b.gallery)))
    rng.shuffle(order)
    new_pos = {old: new for new, old in enumerate(order)}
    gallery = [b.gallery[old] for old in order]
    targets = [new_pos[t] for t in b.targets]
    hard = [[new_pos[h] for h in hs] for hs in b.hard]

    parsed = [split_parts(q) for q in b.queries]
    split = Split(
        name=name,
        seed=seed,
        image_size=image_size,
        gallery=gallery,
        queries=list(b.queries),
        targets=targets,
        query_parts=[p for p, _ in parsed],
        query_relations=[r for _, r in parsed],
        negatives=[contrast_texts(q, CONFUSERS) for q in b.queries],
        kinds=list(b.kinds),
        hard_negatives=hard,
    )
    check_unique(split)
    return split


def check_unique(split: Split) -> None:
    """Raise RuntimeError unless each query is satisfied by exactly its target."""
    for q, (query, target) in enumerate(zip(split.queries, split.targets)):
        hits = [g for g, scene in enumerate(split.gallery) if caption_matches(query, scene)]
        if hits != [target]:
            raise RuntimeError(f"{split.name}/{split.seed} query {q} {query!r}: satisfied by {hits}, target {target}")
