"""Region proposals from the image itself, for region mode (DESIGN §1, stage 2).

Six *families* of regions, no annotations:

- "components": connected components of non-background pixels (the
  background colour is the median of the image border). Exact on flat-colour
  scenes with separated objects; touching objects merge into one region and
  speckle noise is removed by an opening + reconstruction first.
- "colours": components split by colour as well (pixels take the nearest of
  the image's dominant foreground colours), so touching objects of
  different colours stay apart on flat-colour scenes.
- "masked": the colour regions, each cropped *alone* (`masked_regions`: the
  other foreground pixels painted with the background colour).
- "grid": a multi-scale grid of overlapping crops, 2x2 (cells 0.6 of the
  side, stride 0.4) + 3x3 (cells 0.4, stride 0.3) = 13 boxes. The general
  fallback for natural images.
- "segments": the general-purpose proposal for photos: bounding boxes of
  Felzenszwalb graph segments (`segment_boxes`; scikit-image, the
  `geosteer[photos]` extra) at `SEGMENT_SCALES`, on a copy resized to
  about `SEGMENT_PIXELS` pixels, largest first, near-duplicates dropped.
  Photos' objects and the photos of a collage have strong borders, so
  their segments are the objects; see `segment_boxes` for the numbers
  behind the choice.
- "halves": the left, right, top and bottom half of the image (4 boxes),
  for two-photo collages and scenes split down the middle.

The first three assume flat-colour scenes (GeoShapes); "grid", "segments"
and "halves" work on any image.

A region *method* (`METHODS`, the one registry of names) is families in
order, each capped at `max_regions`, concatenated and capped again:
"components+grid" (alias "both"), "colours+grid", "masked+grid",
"segments+grid", "segments+halves", or one family alone. `family_regions`
gives one family's boxes and crops, `propose_regions` / `region_crops` a
method's.

Boxes are (x0, y0, x1, y1) pixel extents, x1/y1 exclusive, at least one
pixel wide and high, inside the image: on an image a few pixels across
(1 x 1, 1 x 200) the grid cells and halves are clipped to one pixel, so
some coincide (their crops are then encoded once). `region_sets` pads
per-image lists into the head's `[N, n, 4]` boxes and `[N, n]` mask.

Every function here that takes an image takes any kind
`geosteer.encoders.clip.as_rgb_image` converts: a PIL image of any mode, a
file path, a numpy array or a torch tensor.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from geosteer.choices import check_choice
from geosteer.encoders.clip import check_positive_int
from geosteer.encoders.images import ImageLike, as_rgb_image, check_images

Box = tuple[int, int, int, int]

#: Region families, in the order a method concatenates them.
FAMILIES: tuple[str, ...] = ("components", "colours", "masked", "grid", "segments", "halves")
#: Region method -> the families it concatenates, in order.
METHODS: dict[str, tuple[str, ...]] = {
    "components": ("components",),
    "colours": ("colours",),
    "masked": ("masked",),
    "grid": ("grid",),
    "both": ("components", "grid"),
    "components+grid": ("components", "grid"),
    "colours+grid": ("colours", "grid"),
    "masked+grid": ("masked", "grid"),
    "segments": ("segments",),
    "halves": ("halves",),
    "segments+grid": ("segments", "grid"),
    "segments+halves": ("segments", "halves"),
}
#: Families that need no flat background: the ones for photos.
PHOTO_FAMILIES: tuple[str, ...] = ("grid", "segments", "halves")
#: (cell side, stride) of each grid scale, as fractions of the image side.
GRID_SCALES: tuple[tuple[int, float, float], ...] = ((2, 0.6, 0.4), (3, 0.4, 0.3))
#: Margin added to each side of a component box before cropping (fraction of
#: its longer side): component crops then look like `object_crop` (fill 0.75).
COMPONENT_PAD = 0.15


__all__ = [
    "Box", "COMPONENT_PAD", "FAMILIES", "GRID_SCALES", "METHODS", "PHOTO_FAMILIES", "SEGMENT_DEDUPE_IOU",
    "SEGMENT_MAX_AREA", "SEGMENT_MIN_AREA", "SEGMENT_PIXELS", "SEGMENT_SCALES", "background_colour", "check_method",
    "component_boxes", "crop_regions", "family_boxes", "family_regions", "grid_boxes", "halves_boxes",
    "masked_regions", "pad_boxes", "propose_regions", "region_crops", "region_sets", "segment_boxes",
]


def _as_array(image: ImageLike, name: str = "image") -> np.ndarray:
    """`[H, W, 3]` uint8 pixels of any image `as_rgb_image` takes (an array of those as it is)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size:
        return image
    return np.asarray(as_rgb_image(image, name))


def background_colour(arr: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel image border, `[3]` float."""
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
    return np.median(border.astype(np.float32), axis=0)


def _foreground(arr: np.ndarray, threshold: float) -> np.ndarray:
    diff = np.abs(arr.astype(np.float32) - background_colour(arr)).max(axis=2)
    raw = diff > threshold
    # Opening drops isolated noise specks; reconstruction then grows the
    # survivors back inside the raw mask, so thin parts (star tips) stay.
    seeds = ndimage.binary_opening(raw, structure=np.ones((3, 3), bool))
    return ndimage.binary_propagation(seeds, mask=raw)


def _labelled(masks: list[np.ndarray], min_pixels: float, keep_pixels: bool = False) -> list[tuple[int, Box, np.ndarray | None]]:
    """Connected components of each mask, at least `min_pixels` large: (area, box, pixels or None), largest first."""
    found = []
    for mask in masks:
        labels, count = ndimage.label(mask)  # 4-connectivity: diagonal contact does not merge
        if count == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
        for k, sl in enumerate(ndimage.find_objects(labels)):
            if sl is not None and areas[k] >= min_pixels:
                pixels = labels == k + 1 if keep_pixels else None
                found.append((int(areas[k]), (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), pixels))
    found.sort(key=lambda f: (-f[0], f[1][1], f[1][0]))
    return found


def _colour_masks(arr: np.ndarray, fg: np.ndarray, min_pixels: float, merge: float = 48.0) -> list[np.ndarray]:
    """Split the foreground by dominant colour: one mask per colour class."""
    smooth = ndimage.median_filter(arr, size=(3, 3, 1)).astype(np.float32)
    pix = smooth[fg]
    if len(pix) == 0:
        return []
    bins = (pix // 32).astype(np.int32) @ np.array([64, 8, 1], dtype=np.int32)
    counts = np.bincount(bins, minlength=512)
    centres: list[np.ndarray] = []
    for b in np.argsort(-counts):  # biggest colour bins first
        if counts[b] < min_pixels:
            break
        c = pix[bins == b].mean(axis=0)
        if all(np.abs(c - o).max() > merge for o in centres):  # one class per colour
            centres.append(c)
    if not centres:
        return [fg]
    dist = np.stack([np.abs(smooth - c).max(axis=2) for c in centres])  # [C, H, W]
    nearest = dist.argmin(axis=0)
    masks = []
    for k in range(len(centres)):
        raw = fg & (nearest == k)
        # anti-aliased rims (object colour blended with the background or a
        # neighbour) are thin: opening removes classes made only of them,
        # reconstruction keeps the thin parts of real objects.
        seeds = ndimage.binary_opening(raw, structure=np.ones((3, 3), bool))
        masks.append(ndimage.binary_propagation(seeds, mask=raw))
    return masks


def component_boxes(
    image, threshold: float = 40.0, min_area: float = 0.002, max_regions: int = 16, by_colour: bool = False
) -> list[Box]:
    """Boxes of connected components of non-background pixels.

    Args:
        image: an image (`as_rgb_image`: PIL, path, array, tensor).
        threshold: a pixel is foreground when some channel differs from the
            background colour by more than this (0-255).
        min_area: components smaller than this fraction of the image are
            dropped (anti-aliasing fringes, noise).
        max_regions: keep at most this many, largest first.
        by_colour: also split components where the colour changes.

    Returns:
        Boxes sorted by area (largest first), ties by position; may be empty.
    """
    check_positive_int("max_regions", max_regions)
    arr = _as_array(image)
    h, w, _ = arr.shape
    fg = _foreground(arr, threshold)
    min_pixels = min_area * h * w
    masks = _colour_masks(arr, fg, min_pixels) if by_colour else [fg]
    return [box for _, box, _ in _labelled(masks, min_pixels)[:max_regions]]


def _span(start: float, stop: float, size: int) -> tuple[int, int]:
    """[start, stop) in pixels of a side of `size`, rounded, inside it and at least one pixel long."""
    lo = min(round(start), size - 1)
    return lo, max(lo + 1, min(size, round(stop)))


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        check_positive_int(name, v)


def grid_boxes(width: int, height: int) -> list[Box]:
    """The 13 overlapping grid cells (2x2 then 3x3), row-major.

    Each cell is at least one pixel wide and high: on an image a few pixels
    across, cells are clipped to the last pixel and some coincide.

    Raises:
        ValueError: `width` or `height` is not a positive int.
    """
    _check_size(width, height)
    out = []
    for n, cell, stride in GRID_SCALES:
        for r in range(n):
            for c in range(n):
                x0, x1 = _span(c * stride * width, (c * stride + cell) * width, width)
                y0, y1 = _span(r * stride * height, (r * stride + cell) * height, height)
                out.append((x0, y0, x1, y1))
    return out


#: Felzenszwalb scales of the "segments" family (skimage's `scale`: larger,
#: fewer and larger segments), on the resized copy below.
SEGMENT_SCALES: tuple[float, ...] = (1000.0,)
#: The "segments" family segments a copy of about this many pixels (never enlarged).
SEGMENT_PIXELS = 32_768
#: Segments smaller than this fraction of the image are dropped (and merged
#: into a neighbour by Felzenszwalb's min_size).
SEGMENT_MIN_AREA = 0.01
#: Boxes covering more than this fraction of the image are dropped (a
#: collage's gap or a photo's backdrop touching every side: the whole image).
SEGMENT_MAX_AREA = 0.9
#: A segment box whose IoU with a larger one kept already exceeds this is a duplicate.
SEGMENT_DEDUPE_IOU = 0.8
_PHOTOS_EXTRA = "pip install 'geosteer[photos]'"


def _felzenszwalb():
    try:
        from skimage.segmentation import felzenszwalb
    except ImportError as err:
        if err.name is not None and not err.name.startswith("skimage"):
            raise
        raise ImportError(f"the 'segments' region family needs scikit-image: {_PHOTOS_EXTRA}") from err
    return felzenszwalb


def _box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def segment_boxes(
    image,
    scales: tuple[float, ...] = SEGMENT_SCALES,
    pixels: int = SEGMENT_PIXELS,
    min_area: float = SEGMENT_MIN_AREA,
    max_area: float = SEGMENT_MAX_AREA,
    max_regions: int = 16,
) -> list[Box]:
    """Boxes of Felzenszwalb graph segments (the "segments" family): objects in photos.

    The image is resized to about `pixels` pixels (never enlarged, so the
    cost per image is bounded and the scales mean the same at any size),
    segmented at each scale (`skimage.segmentation.felzenszwalb`, sigma
    0.8, min_size = `min_area` of the pixels), and each segment's bounding
    box mapped back to the image. Boxes are ordered by segment area (largest
    first); a box covering more than `max_area` of the image, or whose IoU
    with a box kept before it exceeds `SEGMENT_DEDUPE_IOU`, is dropped.

    Why these settings (`python -m bench.bench_regions`, 200 collages of
    2-4 photos from the photo benchmark; bench/results/photos_regions_*.json):
    at scale 1000 a photo of a collage, or its main object, is one or two
    segments. 90.7% of the photos get a box of IoU >= 0.5 with their tile
    (74.6% >= 0.7) from 9.3 boxes; the 13 grid cells reach 55.7% (0% at
    0.7). Scale 300 cuts photos into parts (83.1%), 3000 merges neighbours
    (81.0%), SLIC with 8 / 16 segments gives 89.3% / 75.7%; scales
    300+1000 (94.6%) or segmenting at full size (92.2%) cost 2-3x the time.
    On the benchmark itself (bridge encoder, rerank + structure, test
    seeds) segments give R@1 93%, segments+grid 86%, the grid alone 62%
    (bench/results/photos_*.json). The proposals cost ~10-35 ms an image on
    one CPU core, small next to encoding the crops.

    Args:
        image: an image (`as_rgb_image`: PIL, path, array, tensor).
        scales: Felzenszwalb scales, each adds its segments.
        pixels: size of the segmented copy.
        min_area, max_area: kept segment sizes, as fractions of the image.
        max_regions: at most this many boxes.

    Returns:
        Boxes (x0, y0, x1, y1) in the image's pixels; may be empty.

    Raises:
        ImportError: scikit-image is not installed (`pip install 'geosteer[photos]'`).
    """
    check_positive_int("max_regions", max_regions)
    felzenszwalb = _felzenszwalb()
    arr = _as_array(image)
    h, w, _ = arr.shape
    f = min(1.0, float(np.sqrt(pixels / (h * w))))
    sw, sh = max(1, round(w * f)), max(1, round(h * f))
    small = arr if (sw, sh) == (w, h) else np.asarray(Image.fromarray(arr, "RGB").resize((sw, sh), Image.BILINEAR))
    fx, fy = w / sw, h / sh
    min_pixels = max(1, int(min_area * sw * sh))
    found: list[tuple[int, Box]] = []
    for scale in scales:
        labels = felzenszwalb(small, scale=scale, sigma=0.8, min_size=min_pixels)
        areas = np.bincount(labels.ravel())
        for k, sl in enumerate(ndimage.find_objects(labels + 1)):
            if sl is None or areas[k] < min_pixels:
                continue
            x0, x1 = int(np.floor(sl[1].start * fx)), min(w, int(np.ceil(sl[1].stop * fx)))
            y0, y1 = int(np.floor(sl[0].start * fy)), min(h, int(np.ceil(sl[0].stop * fy)))
            if (x1 - x0) * (y1 - y0) > max_area * w * h:
                continue
            found.append((int(areas[k]), (x0, y0, x1, y1)))
    found.sort(key=lambda t: (-t[0], t[1][1], t[1][0]))
    kept: list[Box] = []
    for _, box in found:
        if all(_box_iou(box, k) <= SEGMENT_DEDUPE_IOU for k in kept):
            kept.append(box)
            if len(kept) == max_regions:
                break
    return kept


def halves_boxes(width: int, height: int) -> list[Box]:
    """The left, right, top and bottom half of a `width` x `height` image (the "halves" family).

    On a side of one pixel both halves are that pixel.

    Raises:
        ValueError: `width` or `height` is not a positive int.
    """
    _check_size(width, height)
    (l0, l1), (r0, r1) = _span(0, width // 2, width), _span(width // 2, width, width)
    (t0, t1), (b0, b1) = _span(0, height // 2, height), _span(height // 2, height, height)
    return [(l0, 0, l1, height), (r0, 0, r1, height), (0, t0, width, t1), (0, b0, width, b1)]


def crop_regions(
    image, boxes: list[Box], out_size: int = 96, pad: float = 0.0, square: bool = False
) -> list[Image.Image]:
    """Crop and resize each box; area outside the image takes the background colour.

    Args:
        image: an image (`as_rgb_image`: PIL, path, array, tensor).
        boxes: (x0, y0, x1, y1) pixel boxes.
        out_size: side of each (square) output crop.
        pad: margin added on every side, as a fraction of the box's longer side.
        square: grow the shorter side to the longer one (keeps the aspect
            of the object; use for component boxes).

    Returns:
        One `out_size x out_size` RGB image per box.

    Raises:
        ValueError: an empty box (x1 <= x0 or y1 <= y0), or `out_size` not a positive int.
    """
    check_positive_int("out_size", out_size)
    arr = _as_array(image)
    img = Image.fromarray(arr, "RGB")
    fill = tuple(int(round(v)) for v in background_colour(arr))
    out = []
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"boxes must have x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}")
        bw, bh = x1 - x0, y1 - y0
        side = max(bw, bh)
        if square:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            x0, x1, y0, y1 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
        m = pad * side
        x0, y0, x1, y1 = (int(round(v)) for v in (x0 - m, y0 - m, x1 + m, y1 + m))
        canvas = Image.new("RGB", (x1 - x0, y1 - y0), fill)
        canvas.paste(img.crop((max(0, x0), max(0, y0), min(img.width, x1), min(img.height, y1))),
                     (max(0, -x0), max(0, -y0)))
        out.append(canvas.resize((out_size, out_size), Image.BILINEAR))
    return out


def check_method(method: str) -> tuple[str, ...]:
    """The families of region method `method`.

    Raises:
        ValueError: `method` is not a key of `METHODS`.
    """
    return METHODS[check_choice("method", method, tuple(METHODS))]


def _masked_found(arr: np.ndarray, max_regions: int, threshold: float = 40.0, min_area: float = 0.002) -> tuple[np.ndarray, list[tuple[Box, np.ndarray]]]:
    """The foreground and, per colour region (largest first), its box and own pixels (see `masked_regions`)."""
    h, w, _ = arr.shape
    fg = _foreground(arr, threshold)
    min_pixels = min_area * h * w
    found = _labelled(_colour_masks(arr, fg, min_pixels), min_pixels, keep_pixels=True)
    out = []
    for _, _, region in found[:max_regions]:
        own = ndimage.binary_dilation(region, iterations=1) & fg
        ys, xs = np.nonzero(own)
        out.append(((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), own))
    return fg, out


def masked_regions(arr: ImageLike, out_size: int, max_regions: int = 16) -> tuple[list[Box], list[Image.Image]]:
    """Colour regions, each cropped alone (the "masked" family).

    The regions are those of `component_boxes(by_colour=True)`, in its
    order. Each region's pixel set S is its colour-class component grown by
    one pixel inside the foreground (the anti-aliased rim the colour split
    leaves out); every other foreground pixel is painted with the background
    colour, and the crop is framed on S as a component crop is. Without the
    rim the framing is a pixel tighter than the encoder's training crops,
    which cost the demo model ~20 points of crop accuracy; without the
    masking, a crop of one of two touching objects shows both.

    Returns:
        (boxes, crops): the boxes of S, x1/y1 exclusive, and the crops.
    """
    check_positive_int("max_regions", max_regions)
    arr = _as_array(arr)
    fg, found = _masked_found(arr, max_regions)
    bg = np.round(background_colour(arr)).astype(np.uint8)
    boxes, crops = [], []
    for box, own in found:
        alone = arr.copy()
        alone[fg & ~own] = bg
        boxes.append(box)
        crops.append(crop_regions(alone, [box], out_size, pad=COMPONENT_PAD, square=True)[0])
    return boxes, crops


def family_boxes(image, family: str, max_regions: int = 16) -> list[Box]:
    """One family's boxes of one image (may be empty: no foreground).

    Raises:
        ValueError: an unknown `family`, or `max_regions` not a positive int.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    check_positive_int("max_regions", max_regions)
    arr = _as_array(image)
    if family == "grid":
        return grid_boxes(arr.shape[1], arr.shape[0])
    if family == "halves":
        return halves_boxes(arr.shape[1], arr.shape[0])
    if family == "segments":
        return segment_boxes(arr, max_regions=max_regions)
    if family == "masked":
        return [box for box, _ in _masked_found(arr, max_regions)[1]]
    return component_boxes(arr, max_regions=max_regions, by_colour=family == "colours")


def family_regions(image, family: str, out_size: int, max_regions: int = 16) -> tuple[list[Box], list[Image.Image]]:
    """One family's boxes and crops of one image.

    Components and colour regions are cropped square with `COMPONENT_PAD`
    margin (so they look like `object_crop`s), grid cells, halves and
    segment boxes as they are (resized to `out_size` square), "masked"
    regions by `masked_regions`. A family may be empty (no foreground, no
    segment).

    Raises:
        ValueError: an unknown `family`, or `max_regions` / `out_size` not a positive int.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    check_positive_int("max_regions", max_regions)
    check_positive_int("out_size", out_size)
    arr = _as_array(image)
    if family == "masked":
        return masked_regions(arr, out_size, max_regions)
    boxes = family_boxes(arr, family, max_regions)
    if family in PHOTO_FAMILIES:
        return boxes, crop_regions(arr, boxes, out_size)
    return boxes, crop_regions(arr, boxes, out_size, pad=COMPONENT_PAD, square=True)


def propose_regions(image, method: str = "grid", max_regions: int = 16) -> list[Box]:
    """Region boxes of one image.

    Args:
        image: an image (`as_rgb_image`: PIL, path, array, tensor).
        method: a key of `METHODS`.
        max_regions: at most this many boxes (earlier families come first).

    Returns:
        At least one box: a method whose families find nothing (no
        foreground) returns the whole image, so no region set is ever empty.

    Raises:
        ValueError: an unknown `method`, `max_regions` not a positive int, or
            an image that does not convert (`as_rgb_image`). TypeError: not an image.
    """
    families = check_method(method)
    check_positive_int("max_regions", max_regions)
    arr = _as_array(image)
    boxes = [b for fam in families for b in family_boxes(arr, fam, max_regions)]
    return boxes[:max_regions] or [(0, 0, arr.shape[1], arr.shape[0])]


def region_crops(
    image, method: str = "grid", max_regions: int = 16, out_size: int = 96
) -> tuple[list[Box], list[Image.Image]]:
    """A method's proposals and their crops in one call (crops as `family_regions` makes them).

    The boxes returned are the proposals themselves (tight), which is what
    the structure term needs. An image with no region gets its whole-image
    box and crop.
    """
    families = check_method(method)
    check_positive_int("max_regions", max_regions)
    check_positive_int("out_size", out_size)
    arr = _as_array(image)
    boxes, crops = [], []
    for fam in families:
        b, c = family_regions(arr, fam, out_size, max_regions)
        boxes += b
        crops += c
    if not boxes:
        whole = (0, 0, arr.shape[1], arr.shape[0])
        return [whole], crop_regions(arr, [whole], out_size)
    return boxes[:max_regions], crops[:max_regions]


def pad_boxes(per_image: list[list[Box]]) -> tuple[Tensor, Tensor]:
    """Per-image box lists -> (`[N, n, 4]` float32 boxes, `[N, n]` bool mask).

    n is the longest list; padding rows are zero boxes with mask False.
    """
    n = max((len(b) for b in per_image), default=0)
    boxes = torch.zeros(len(per_image), n, 4, dtype=torch.float32)
    mask = torch.zeros(len(per_image), n, dtype=torch.bool)
    for i, bs in enumerate(per_image):
        if bs:
            boxes[i, : len(bs)] = torch.tensor(bs, dtype=torch.float32)
            mask[i, : len(bs)] = True
    return boxes, mask


def region_sets(images, method: str = "grid", max_regions: int = 16) -> tuple[Tensor, Tensor]:
    """Region boxes of many images, padded for the head.

    Args:
        images: a list of images (`as_rgb_image`: PIL, paths, arrays, tensors).
        method, max_regions: as in `propose_regions`.

    Returns:
        boxes `[N, n, 4]` float32 (x0, y0, x1, y1) pixels; mask `[N, n]`
        bool, True for real regions (every row has at least one).

    Raises:
        As `propose_regions`, naming the image by its position (`images[i]`).
    """
    check_method(method)
    check_positive_int("max_regions", max_regions)
    items = check_images(images)
    return pad_boxes([propose_regions(_as_array(im, f"images[{i}]"), method, max_regions) for i, im in enumerate(items)])
