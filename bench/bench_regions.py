"""Region proposals for photos: recall of the photos in collages, proposal speed, indexing throughput.

Three measurements on the collages of the photo benchmark
(`geosteer.photos.make_split`, 2-4 real photos side by side or stacked):

1. proposals alone, for every general-purpose family setting considered
   (the registered methods, and the Felzenszwalb / SLIC settings that were
   not chosen): boxes per image, recall of the photos' tiles (a box with
   IoU >= 0.5, and >= 0.7) and images/s;
2. indexing throughput, `Indexer(encoder).index_images(collages, method)`
   (whole image + proposals + crops + encoding), images/s per registered
   method, with the bridge encoder (`load_clip("bridge")`) and the demo model
   (`load_clip("demo")`);

Writes bench/results/photos_regions_<date>.json and prints a markdown table.

    python -m bench.bench_regions
    python -m bench.bench_regions --collages 20 --encode-collages 8   # a quick run
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from geosteer.encoders import load_clip
from geosteer.encoders.regions import grid_boxes, halves_boxes, propose_regions, segment_boxes
from geosteer.environment import environment
from geosteer.index import Indexer
from geosteer.photos import make_split
from geosteer.photos.benchmark import iou

REPO = Path(__file__).resolve().parent.parent
METHODS = ("grid", "halves", "segments", "segments+grid", "segments+halves")


def _slic(n_segments: int):
    def boxes(arr):
        from scipy import ndimage
        from skimage.segmentation import slic

        labels = slic(arr, n_segments=n_segments, compactness=10, start_label=0)
        areas = np.bincount(labels.ravel())
        found = [(areas[k], (s[1].start, s[0].start, s[1].stop, s[0].stop))
                 for k, s in enumerate(ndimage.find_objects(labels + 1)) if s is not None and areas[k] >= 0.01 * labels.size]
        return [b for _, b in sorted(found, key=lambda t: -t[0])[:16]]

    return boxes


#: Proposal settings measured: name -> image array -> boxes. "segments" is the registered default.
CANDIDATES = {
    "grid": lambda a: grid_boxes(a.shape[1], a.shape[0]),
    "halves": lambda a: halves_boxes(a.shape[1], a.shape[0]),
    "segments": lambda a: segment_boxes(a),
    "segments+grid": lambda a: propose_regions(a, "segments+grid"),
    "segments+halves": lambda a: propose_regions(a, "segments+halves"),
    "felzenszwalb scale 300": lambda a: segment_boxes(a, scales=(300.0,)),
    "felzenszwalb scale 3000": lambda a: segment_boxes(a, scales=(3000.0,)),
    "felzenszwalb scales 300+1000": lambda a: segment_boxes(a, scales=(300.0, 1000.0)),
    "felzenszwalb 1000, full size": lambda a: segment_boxes(a, pixels=10**9),
    "felzenszwalb 1000, 8k pixels": lambda a: segment_boxes(a, pixels=8192),
    "slic 8": _slic(8),
    "slic 16": _slic(16),
}


def proposals(rendered, fn) -> dict:
    arrays = [np.asarray(im) for im, _ in rendered]
    fn(arrays[0])  # warm (imports)
    start = time.perf_counter()
    boxes = [fn(a) or [(0, 0, a.shape[1], a.shape[0])] for a in arrays]
    seconds = time.perf_counter() - start
    best = [max(iou(t, b) for b in bs) for bs, (_, tiles) in zip(boxes, rendered) for t in tiles]
    return {"boxes_per_image": float(np.mean([len(b) for b in boxes])), "recall@0.5": float(np.mean([v >= 0.5 for v in best])),
            "recall@0.7": float(np.mean([v >= 0.7 for v in best])), "mean_best_iou": float(np.mean(best)),
            "images_per_s": len(arrays) / seconds}


def indexing(encoder, images, method: str) -> dict:
    indexer = Indexer(encoder)
    start = time.perf_counter()
    g = indexer.index_images(images, method=method)
    seconds = time.perf_counter() - start
    return {"images_per_s": len(images) / seconds, "seconds": seconds,
            "regions_per_image": float(g.parts_mask.sum(1).float().mean()), "images": len(images)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--collages", type=int, default=200, help="collages for the proposal measurements")
    ap.add_argument("--encode-collages", type=int, default=24, help="collages indexed per method and encoder")
    ap.add_argument("--encoders", nargs="+", default=["bridge", "demo"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    date = datetime.date.today().isoformat()
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / f"photos_regions_{date}.json"
    rendered = [r for s in args.seeds for r in make_split(s).render()][: args.collages]
    record = {"collages": len(rendered), "seeds": args.seeds, "proposals": {}, "indexing": {}}
    for name, fn in CANDIDATES.items():
        record["proposals"][name] = proposals(rendered, fn)
        print(f"proposals {name:30s} {record['proposals'][name]}", file=sys.stderr)
    images = [im for im, _ in rendered[: args.encode_collages]]
    for enc_name in args.encoders:
        encoder = load_clip(enc_name)
        Indexer(encoder).index_images(images[:2], method="grid")  # warm
        record["indexing"][enc_name] = {}
        for method in METHODS:
            record["indexing"][enc_name][method] = indexing(encoder, images, method)
            print(f"indexing {enc_name} {method:16s} {record['indexing'][enc_name][method]}", file=sys.stderr)
        x = torch.stack([encoder.preprocess(im) for im in images[:16]])
        start = time.perf_counter()
        encoder.encode_images(x)
        record["indexing"][enc_name]["encoder_images_per_s"] = 16 / (time.perf_counter() - start)
    record["env"] = environment()
    record["command"] = "python -m bench.bench_regions " + " ".join(argv if argv is not None else sys.argv[1:])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


def format_table(record: dict) -> str:
    lines = [f"{record['collages']} collages of 2-4 photos; load {record['env']['load1']}", "",
             "| proposals | boxes/image | recall IoU>=0.5 | IoU>=0.7 | images/s |", "|---|---:|---:|---:|---:|"]
    for name, p in record["proposals"].items():
        lines.append(f"| {name} | {p['boxes_per_image']:.1f} | {100 * p['recall@0.5']:.1f} | {100 * p['recall@0.7']:.1f} | {p['images_per_s']:.0f} |")
    encs = list(record["indexing"])
    lines += ["", "| indexing images/s | " + " | ".join(encs) + " |", "|---|" + "---:|" * len(encs)]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(f"{record['indexing'][e][method]['images_per_s']:.2f}" for e in encs) + " |")
    lines.append("| (encoder alone, crops/s) | " + " | ".join(f"{record['indexing'][e]['encoder_images_per_s']:.1f}" for e in encs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
