"""The referee's question: what do re-ranking and steering do when the first-stage pool is poor?

The first stage is degraded on purpose three ways, on the GeoShapes test
seeds, every split:

- **noise**: Gaussian noise of norm σ on the gallery's whole-image
  embeddings (renormalised), which the first stage and the cosine term s
  read, with K = 20; the region sets stay clean (they are not the first
  stage);
- **K**: a smaller pool, K in 1 … 100, clean embeddings;
- **encoder**: weaker checkpoints from shorter `geosteer train-demo` runs
  (40 and 150 of the shipped model's 600 steps), K = 100; here the regions
  are as weak as the pool.

For each setting and split: first-stage recall@K (the target in the pool),
R@1 of cosine (on the degraded first stage), of `rerank` (the default
preset) and of `steer` (the β = 8 region confuser penalty), and
image → caption R@1 (each target image ranks the split's captions; every
(caption, image) pair scored by the head) for cosine and `rerank`.

    python -m bench.bench_degradation [--cache-dir /tmp/geosteer-cache] [--weak-dir /tmp/geosteer-weak]

Writes bench/results/degradation_<date>.json and docs/degradation.png.
Weak checkpoints missing from --weak-dir are trained first (`geosteer
train-demo --steps S --seed 0 --threads 1`, a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from geosteer import GeoSteerHead, get_config
from geosteer.encoders import load_clip
from geosteer.encoders.clip import load_demo_from
from geosteer.environment import environment
from geosteer.geoshapes.index import SplitIndex, SplitIndexer
from geosteer.geoshapes.splits import SPLITS, TEST_SEEDS

NOISE = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
#: Pool of the noise settings: a K small enough (of N ~ 200-300) for noise to push targets out.
NOISE_K = 20
POOLS = (1, 2, 3, 5, 10, 30, 100)
WEAK_STEPS = (40, 150)
METHODS = {"rerank": "default", "steer": "steer"}


def _noisy(gallery: Tensor, sigma: float, seed: int) -> Tensor:
    if sigma == 0:
        return gallery
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(gallery.shape, generator=g) / gallery.shape[1] ** 0.5  # norm ~1 per row
    return F.normalize(gallery + sigma * noise, dim=-1)


def _r1(indices: Tensor, targets: Tensor) -> float:
    return float((indices[:, 0] == targets).float().mean()) * 100


def evaluate(index: SplitIndex, sigma: float = 0.0, k: int = 100, seed: int = 0) -> dict[str, float]:
    """Recall@K, R@1 of cosine / rerank / steer with a first stage degraded by `sigma` and `k`."""
    targets = index.targets
    gallery = _noisy(index.images, sigma, seed)
    k = min(k, gallery.shape[0])
    q = index.query_tensors("parts").embeddings
    top = (q @ gallery.T).topk(k, dim=1)
    out = {"recall": float((top.indices == targets[:, None]).any(dim=1).float().mean()) * 100,
           "cosine": _r1(top.indices, targets)}
    for name, preset in METHODS.items():
        cfg = get_config(preset, k=k)
        queries, side = index.head_inputs("masked", 16, "parts", parts=True, steering=cfg.beta > 0, relations=cfg.gamma > 0)
        with torch.inference_mode():
            res = GeoSteerHead(cfg)(queries, side, first_stage=(top.values, top.indices))
        out[name] = _r1(res.indices, targets)
    return out


def image_to_caption(index: SplitIndex) -> dict[str, float]:
    """R@1 of each target image ranking the split's captions, by cosine and by the `rerank` score."""
    targets = index.targets
    queries, side = index.head_inputs("masked", 16, "parts", parts=True, steering=False, relations=True)
    num_items = side.embeddings.shape[0]
    with torch.inference_mode():
        res = GeoSteerHead(get_config("default", k=num_items))(queries, side)
    full = torch.full((len(targets), num_items), float("-inf"))
    full.scatter_(1, res.indices, res.scores)  # S(caption, image) for every pair
    cos = queries.embeddings @ side.embeddings.T
    want = torch.arange(len(targets))
    return {f"i2t_{name}": float((m[:, targets].T.argmax(dim=1) == want).float().mean()) * 100
            for name, m in (("cosine", cos), ("rerank", full))}


def _weak_encoder(folder: Path, steps: int):
    out = folder / f"steps{steps}"
    if not (out / "image_tower.safetensors").is_file():
        cmd = [sys.executable, "-m", "geosteer.cli", "train-demo", "--out", str(out), "--steps", str(steps),
               "--seed", "0", "--threads", "1", "--minutes", "60", "--no-progress"]
        print("training", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return load_demo_from(out)


def run(cache_dir: str, weak_dir: str, seeds: tuple[int, ...] = TEST_SEEDS) -> dict:
    """Every setting on every split and seed; per-setting means over seeds."""
    encoders = {"demo (600 steps)": load_clip("demo")}
    for s in WEAK_STEPS:
        encoders[f"{s} steps"] = _weak_encoder(Path(weak_dir), s)
    rows = []
    for enc_name, enc in encoders.items():
        indexer = SplitIndexer(enc, families=("masked",), progress=False, cache_dir=cache_dir)
        for split in SPLITS:
            for seed in seeds:
                index = indexer.split(split, seed)
                base = {"encoder": enc_name, "split": split, "seed": seed}
                settings = [("encoder", 0.0, 100)]
                if enc_name.startswith("demo"):
                    settings += [("noise", s, NOISE_K) for s in NOISE] + [("K", 0.0, k) for k in POOLS if k != 100]
                for kind, sigma, k in settings:
                    row = {**base, "degradation": kind, "sigma": sigma, "k": k, **evaluate(index, sigma, k, seed)}
                    if kind == "encoder":
                        row.update(image_to_caption(index))
                    rows.append(row)
                print(f"{enc_name} {split} {seed}: {len(settings)} settings", flush=True)
    return {"benchmark": "first-stage degradation", "splits": list(SPLITS), "seeds": list(seeds), "noise": list(NOISE),
            "pools": list(POOLS), "weak_steps": list(WEAK_STEPS), "rows": rows, "summary": summarise(rows),
            "environment": environment()}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (encoder, degradation, sigma, k, split)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["degradation"], r["sigma"], r["k"], r["split"]), []).append(r)
    out = []
    for (enc, kind, sigma, k, split), rs in groups.items():
        keys = [m for m in rs[0] if m in ("recall", "cosine", "rerank", "steer", "i2t_cosine", "i2t_rerank")]
        out.append({"encoder": enc, "degradation": kind, "sigma": sigma, "k": k, "split": split,
                    **{m: statistics.fmean(r[m] for r in rs) for m in keys}})
    return out


def plot(results: dict, path: Path) -> None:
    """Gain in R@1 (re-rank / steer minus cosine) against first-stage recall@K, one point per split and setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    markers = {"noise": "o", "K": "s", "encoder": "^"}
    ax = axes[2]
    for kind, marker in markers.items():
        pts = [r for r in results["summary"] if r["degradation"] == kind]
        ax.scatter([r["recall"] for r in pts], [r["rerank"] for r in pts], marker=marker, s=22, alpha=0.75)
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls=":", label="R@1 = recall@K (the ceiling)")
    ax.set_xlabel("first-stage recall@K of the target (%)")
    ax.set_title("rerank R@1 against recall@K")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    for ax, method in zip(axes[:2], ("rerank", "steer")):
        for kind, marker in markers.items():
            pts = [r for r in results["summary"] if r["degradation"] == kind]
            ax.scatter([r["recall"] for r in pts], [r[method] - r["cosine"] for r in pts], marker=marker, s=22,
                       alpha=0.75, label={"noise": "noise on the embeddings", "K": "smaller K",
                                          "encoder": "weaker encoder (40/150/600 steps)"}[kind])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("first-stage recall@K of the target (%)")
        ax.set_title(f"{method} − cosine, R@1 (points)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gain in R@1")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"GeoShapes, every split, test seeds {results['seeds']} (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default="/tmp/geosteer-cache")
    p.add_argument("--weak-dir", default="/tmp/geosteer-weak")
    p.add_argument("--out", default=f"bench/results/degradation_{dt.date.today()}.json")
    p.add_argument("--plot", default="docs/degradation.png")
    p.add_argument("--replot", action="store_true", help="only redraw the plot from --out")
    args = p.parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), Path(args.plot))
        return 0
    results = run(args.cache_dir, args.weak_dir)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    plot(results, Path(args.plot))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
