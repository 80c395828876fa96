"""Images of every kind the API accepts, as the 8-bit RGB PIL images the encoders and region methods read.

`as_rgb_image` is the one conversion every API that takes images runs
(`ClipEncoder.encode_images`, `geosteer.index.Indexer`, the region
proposals of `geosteer.encoders.regions`, the on-disk index's decoder):
PIL images of any mode, image files, numpy arrays and torch tensors.
`load_image` decodes a file (EXIF orientation applied) and `to_rgb`
converts any PIL mode, so a file gives the same pixels in memory and in an
index on disk.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

#: One image, as every API that takes images accepts it (`as_rgb_image`).
ImageLike = Union[Image.Image, str, os.PathLike, np.ndarray, Tensor]
_IMAGE_KINDS = (Image.Image, str, os.PathLike, np.ndarray, Tensor)
_ARRAY_DTYPES = "uint8, uint16, bool or float (values in [0, 1])"



def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode one image file as the index sees it: RGB, upright.

    EXIF orientation is applied; transparency (RGBA, LA, PA, P with a
    transparent colour) is composited on white; 16-bit greyscale ("I;16",
    "I") is scaled by 1/257 and float greyscale ("F", 0-1 or 0-255) to
    8 bits; every other mode goes through `Image.convert("RGB")`. Boxes in
    the index are pixels of this image.

    Raises:
        OSError / ValueError (PIL's): the file is missing, not an image, or truncated.
    """
    with Image.open(path) as im:
        im.load()  # truncated files fail here, not later inside the encoder
        im = ImageOps.exif_transpose(im)
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB (see `load_image`)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        else:  # "I" holds 16-bit PNGs on older Pillow; 8-bit data in it stays as it is
            scale = 1.0 / 257.0 if im.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 1.0
        grey = np.clip(np.nan_to_num(arr * scale) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def as_rgb_image(image: ImageLike, name: str = "image") -> Image.Image:
    """One image of any accepted kind as an 8-bit RGB PIL image: what the encoders and region methods read.

    Accepted:

    - a PIL image of any mode, converted by `to_rgb`
      (transparency composited on white, 16-bit greyscale scaled by 1/257,
      float greyscale "F" in [0, 1] by 255, everything else
      `convert("RGB")`); an RGB image is returned as it is;
    - a file path (str or `os.PathLike`), decoded by `load_image`
      (EXIF orientation applied, then as above);
    - a numpy array `[H, W]` (greyscale), `[H, W, 3]` (RGB) or `[H, W, 4]`
      (RGBA, composited on white) of dtype uint8, uint16 (scaled by 1/257),
      bool (0 / 255) or float with values in [0, 1] (scaled by 255);
    - a torch tensor `[C, H, W]` (C = 1, 3 or 4) or `[H, W]`, dtype uint8,
      bool or float in [0, 1], on any device (as the numpy array of its
      pixels in `[H, W, C]` order).

    Scaled values are rounded to the nearest 8-bit level, so an accepted
    image and the RGB PIL image of the same 8-bit pixels embed the same.

    Args:
        image: the image.
        name: how errors name it (`"images[3]"`).

    Returns:
        An RGB PIL image, at least 1 x 1 pixels.

    Raises:
        TypeError: `image` is none of these kinds, or an array / tensor of
            another dtype. ValueError: a file that is missing or does not
            decode (naming the path), an array / tensor of another shape,
            float values outside [0, 1] or not finite, no pixels, or a PIL
            mode that has no RGB conversion.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not isinstance(path, str):
            raise TypeError(f"{name} must be a str path, got bytes {path!r}")
        try:
            out = load_image(path)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure: this file is not a readable image
            raise ValueError(f"{name}: cannot read image file {path!r} ({type(err).__name__}: {err})") from err
    elif isinstance(image, Image.Image):
        try:
            out = to_rgb(image)
        except (OSError, ValueError) as err:
            raise ValueError(f"{name}: PIL image of mode {image.mode!r} has no RGB conversion ({err})") from err
    elif isinstance(image, Tensor):
        out = to_rgb(_image_of_tensor(image, name))
    elif isinstance(image, np.ndarray):
        out = to_rgb(_image_of_array(image, name))
    else:
        raise TypeError(
            f"{name} must be a PIL image, a file path, a numpy array or a torch tensor, got {type(image).__name__}"
        )
    if out.width < 1 or out.height < 1:
        raise ValueError(f"{name} is {out.width}x{out.height} pixels; an image needs at least one pixel")
    return out


def check_images(images, name: str = "images") -> list:
    """`images` as a list, each item of a kind `as_rgb_image` accepts (not yet decoded).

    Raises:
        TypeError: `images` is one image or a batch array / tensor rather
            than a list of images, or an item of another kind (named by position).
    """
    if isinstance(images, (*_IMAGE_KINDS, bytes)):
        raise TypeError(
            f"{name} must be a list of images (wrap a single one in a list), got {type(images).__name__}"
        )
    try:
        items = list(images)
    except TypeError:
        raise TypeError(f"{name} must be a list of images, got {type(images).__name__}") from None
    for i, im in enumerate(items):
        if not isinstance(im, _IMAGE_KINDS):
            raise TypeError(
                f"{name}[{i}] must be a PIL image, a file path, a numpy array or a torch tensor, got {type(im).__name__}"
            )
    return items


def _image_of_tensor(t: Tensor, name: str) -> Image.Image:
    if t.dtype not in (torch.uint8, torch.bool) and not t.is_floating_point():
        raise TypeError(f"{name} is a tensor of dtype {t.dtype}; image tensors must be uint8, bool or float in [0, 1]")
    if not (t.ndim == 2 or (t.ndim == 3 and t.shape[0] in (1, 3, 4))):
        raise ValueError(f"{name} is a tensor of shape {tuple(t.shape)}; expected [C, H, W] with C = 1, 3 or 4, or [H, W]")
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.ndim == 3:
        t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
    return _image_of_array(t.contiguous().numpy(), name)


def _image_of_array(a: np.ndarray, name: str) -> Image.Image:
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"{name} is an array of shape {a.shape}; expected [H, W], [H, W, 3] or [H, W, 4]")
    if a.size == 0:
        raise ValueError(f"{name} is an array of shape {a.shape}; an image needs at least one pixel")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:  # as 16-bit PIL images: nearest 8-bit level of v / 257
        u8 = (a.astype(np.float64) * (1.0 / 257.0) + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float64)
        finite = np.isfinite(f)
        if not finite.all() or f.min() < 0.0 or f.max() > 1.0:
            seen = f[finite]
            span = f"values in [{seen.min():g}, {seen.max():g}]" if seen.size else "no finite value"
            raise ValueError(
                f"{name} is a float array with {span}{'' if finite.all() else ' and NaN/inf'}; "
                "float images must hold values in [0, 1]"
            )
        u8 = (f * 255.0 + 0.5).astype(np.uint8)
    else:
        raise TypeError(f"{name} is an array of dtype {a.dtype}; image arrays must be {_ARRAY_DTYPES}")
    return Image.fromarray(np.ascontiguousarray(u8))
