"""Encoders: open_clip loading, caption part splitting, contrast texts, region crops.

`load_clip` / `ClipEncoder` live in `geosteer.encoders.clip`, with
`as_rgb_image`, the one conversion of an image argument (PIL of any mode,
file path, numpy array, torch tensor) to RGB that every API taking images
runs; the text and
region helpers (`split_parts`, `split_captions`, `read_captions`,
`resolve_parser`, `contrast_texts`, `part_negatives`,
`propose_regions`, `crop_regions`, `region_crops`, `region_sets`,
`family_regions`) are re-exported lazily from their modules, so importing
this package stays cheap.
"""

from __future__ import annotations

import importlib

from geosteer.encoders.clip import (
    ClipEncoder,
    WeightsUnavailable,
    as_rgb_image,
    export_local_dir,
    load_clip,
    load_demo_model,
)

# name -> submodule that defines it; imported on first access.
_LAZY = {
    "split_parts": "parts",
    "split_captions": "parts",
    "read_captions": "parts",
    "resolve_parser": "parts",
    "contrast_texts": "contrast",
    "part_negatives": "contrast",
    "propose_regions": "regions",
    "crop_regions": "regions",
    "family_regions": "regions",
    "region_crops": "regions",
    "region_sets": "regions",
}

__all__ = ["ClipEncoder", "WeightsUnavailable", "as_rgb_image", "export_local_dir", "load_clip", "load_demo_model", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"geosteer.encoders.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'geosteer.encoders' has no attribute {name!r}")
