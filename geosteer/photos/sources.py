"""The real photos of the collage benchmark: only photos that installed packages bundle, nothing downloaded.

`PHOTOS` names each photo, where it comes from and the noun a query uses
for it. The photos are those the concept bridge (`load_clip("bridge")`)
recognises: an ImageNet classifier sees each centre square as one of the
classes listed (`geosteer.encoders.bridge.top_classes`), and the noun ranks
that photo first among these photos. Photos it does not recognise
(scikit-image's astronaut: "bobsled", "football helmet"; the textures and
micrographs) are left out.

`load_photos()` returns the square photos of every source that is
installed (scikit-image, scikit-learn, matplotlib), so the benchmark runs
on what is there; `missing_photos()` says what is not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Photo:
    """One bundled photo.

    Attributes:
        name: its key in `PHOTOS`.
        noun: the object phrase a query uses ("a cat").
        package: the PyPI package that bundles it.
        seen_as: what the bridge's classifier sees in it (top ImageNet classes).
    """

    name: str
    noun: str
    package: str
    seen_as: str


PHOTOS: dict[str, Photo] = {
    p.name: p
    for p in (
        Photo("chelsea", "a cat", "scikit-image", "Egyptian cat, tiger cat, tabby"),
        Photo("coffee", "a cup of coffee", "scikit-image", "espresso, cup"),
        Photo("rocket", "a rocket", "scikit-image", "missile, drilling platform, projectile"),
        Photo("camera", "a tripod", "scikit-image", "tripod"),
        Photo("motorcycle", "a motorcycle", "scikit-image", "moped, motor scooter, disk brake"),
        Photo("china", "a palace", "scikit-learn", "palace, bell cote, monastery"),
        Photo("flower", "a flower", "scikit-learn", "daisy, mushroom, bee"),
        Photo("grace_hopper", "a woman in uniform", "matplotlib", "military uniform, mortarboard, suit"),
    )
}


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]  # the left view
        return getattr(skimage.data, name)()

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _matplotlib(file: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook

        with Image.open(matplotlib.cbook.get_sample_data(file, asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))

    return load


_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "camera": _skimage("camera"),
    "motorcycle": _skimage("motorcycle"),
    "china": _sklearn(0),
    "flower": _sklearn(1),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
}


def centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square of `image`."""
    w, h = image.size
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return image.crop((x0, y0, x0 + side, y0 + side))


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[dict[str, Image.Image], dict[str, str]]:
    found, missing = {}, {}
    for name, load in _LOADERS.items():
        try:
            arr = load()
        except ImportError as err:  # the package that bundles it is not installed
            missing[name] = f"{PHOTOS[name].package} is not installed ({err.name})"
            continue
        arr = np.asarray(arr)
        if arr.ndim == 2:  # grey photos (camera) as RGB
            arr = np.stack([arr] * 3, axis=-1)
        found[name] = centre_square(Image.fromarray(arr[..., :3].astype(np.uint8), "RGB"))
    return found, missing


def load_photos(names: tuple[str, ...] | None = None) -> dict[str, Image.Image]:
    """The centre squares (RGB, full resolution) of the installed photos, in `PHOTOS` order.

    Args:
        names: only these (each a key of `PHOTOS`); None: all installed.

    Raises:
        ValueError: an unknown name, or a named photo whose package is missing.
    """
    found, missing = _load_all()
    if names is None:
        return dict(found)
    out = {}
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"unknown photo {name!r}; known: {tuple(PHOTOS)}")
        if name in missing:
            raise ValueError(f"photo {name!r} is not available: {missing[name]}")
        out[name] = found[name]
    return out


def missing_photos() -> dict[str, str]:
    """Photo name -> why it is not available (its package is not installed)."""
    return dict(_load_all()[1])
