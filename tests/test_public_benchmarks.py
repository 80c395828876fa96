"""`geosteer eval --bench sugarcrepe|aro|winoground|clevr --root PATH` on fixtures in each benchmark's exact format.

Nothing is downloaded: the fixtures below write a few examples of each
benchmark's real files (JSON / JSONL keys and folder layout as the
benchmarks ship them) into tmp_path, with images rendered by PIL. The
end-to-end runs use the shipped demo model (loaded once per session by the
CLI's cache); the numbers are not asserted beyond their range, only that
every method is scored on the same pairs and reported with the
benchmark's own metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from geosteer import cli
from geosteer.encoders.parts import resolve_parser
from geosteer.public_benchmarks import BENCHMARKS, FormatError, read_benchmark
from geosteer.public_benchmarks import clevr
from geosteer.public_benchmarks.common import Example, ImageRef
from geosteer.public_benchmarks.metrics import pair_metrics, winoground_metrics

RGB = {"red": (200, 30, 30), "blue": (40, 70, 220), "green": (30, 160, 40), "yellow": (240, 220, 40),
       "gray": (87, 87, 87), "purple": (129, 38, 192), "cyan": (41, 208, 208), "brown": (129, 74, 25)}


# ---------------------------------------------------------------- fixture writers (each benchmark's exact format)


def _shapes_image(path: Path, size: tuple[int, int], shapes: list[tuple[str, str, tuple[int, int], int]],
                  background=(245, 245, 245)) -> None:
    """Flat shapes on a plain background: (shape, colour, centre, half-side)."""
    im = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(im)
    for shape, colour, (x, y), r in shapes:
        box = (x - r, y - r, x + r, y + r)
        if shape in ("circle", "sphere"):
            draw.ellipse(box, fill=RGB[colour])
        elif shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=RGB[colour])
        elif shape == "cylinder":
            draw.rectangle((x - int(r * 0.7), y - r, x + int(r * 0.7), y + r), fill=RGB[colour])
        else:
            draw.rectangle(box, fill=RGB[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_sugarcrepe(root: Path) -> Path:
    """ROOT/{replace_att,swap_att,add_obj}.json keyed "0", "1", ... and ROOT/val2017/000000xxxxxx.jpg."""
    images = {
        "000000000139.jpg": [("square", "red", (24, 36), 14), ("circle", "blue", (72, 36), 14)],
        "000000000285.jpg": [("triangle", "green", (48, 36), 20)],
        "000000000632.jpg": [("circle", "yellow", (24, 36), 14), ("square", "blue", (72, 36), 14)],
    }
    for name, shapes in images.items():
        _shapes_image(root / "val2017" / name, (96, 72), shapes)
    files = {
        "replace_att": [("000000000139.jpg", "a red square and a blue circle", "a green square and a blue circle"),
                        ("000000000285.jpg", "a green triangle", "a yellow triangle")],
        "swap_att": [("000000000139.jpg", "a red square and a blue circle", "a blue square and a red circle"),
                     ("000000000632.jpg", "a yellow circle and a blue square", "a blue circle and a yellow square")],
        "add_obj": [("000000000285.jpg", "a green triangle", "a green triangle and a red square"),
                    ("000000000632.jpg", "a yellow circle and a blue square",
                     "a yellow circle, a blue square and a red triangle"),
                    ("000000000139.jpg", "a red square and a blue circle", "a red square, a blue circle and a star")],
    }
    for category, rows in files.items():
        data = {str(i): {"filename": f, "caption": pos, "negative_caption": neg} for i, (f, pos, neg) in enumerate(rows)}
        (root / f"{category}.json").write_text(json.dumps(data, indent=4))
    return root


def write_aro(root: Path) -> Path:
    """ROOT/visual_genome_{relation,attribution}.json (lists) and ROOT/images/<image_id>.jpg."""
    _shapes_image(root / "images" / "2323639.jpg", (160, 120),
                  [("square", "red", (40, 60), 16), ("circle", "blue", (110, 60), 16)])
    _shapes_image(root / "images" / "2344255.jpg", (160, 120),
                  [("circle", "green", (80, 30), 14), ("square", "yellow", (80, 90), 14)])
    box = {"bbox_x": 10, "bbox_y": 20, "bbox_w": 140, "bbox_h": 80}
    relation = [
        {"image_id": "2323639", "relation_name": "to the left of", **box,
         "true_caption": "the red square is to the left of the blue circle",
         "false_caption": "the blue circle is to the left of the red square", "image_path": "2323639.jpg"},
        {"image_id": "2323639", "relation_name": "to the right of", **box,
         "true_caption": "the blue circle is to the right of the red square",
         "false_caption": "the red square is to the right of the blue circle", "image_path": "2323639.jpg"},
        {"image_id": "2344255", "relation_name": "above", "bbox_x": 40, "bbox_y": 0, "bbox_w": 80, "bbox_h": 120,
         "true_caption": "the green circle is above the yellow square",
         "false_caption": "the yellow square is above the green circle", "image_path": "2344255.jpg"},
    ]
    attribution = [
        {"image_id": 2323639, **box, "attributes": ["red", "blue"],
         "true_caption": "the red square and the blue circle", "false_caption": "the blue square and the red circle"},
        {"image_id": 2344255, "bbox_x": 40, "bbox_y": 0, "bbox_w": 80, "bbox_h": 120, "attributes": ["green", "yellow"],
         "true_caption": "the green circle and the yellow square",
         "false_caption": "the yellow circle and the green square"},
    ]
    (root / "visual_genome_relation.json").write_text(json.dumps(relation))
    (root / "visual_genome_attribution.json").write_text(json.dumps(attribution))
    return root


def write_winoground(root: Path) -> Path:
    """ROOT/data/examples.jsonl (one example a line) and ROOT/data/images/ex_<id>_img_<k>.png."""
    pairs = [
        ("a red square to the left of a blue circle", "a blue circle to the left of a red square",
         [("square", "red", (24, 32), 12), ("circle", "blue", (72, 32), 12)],
         [("circle", "blue", (24, 32), 12), ("square", "red", (72, 32), 12)], "Object"),
        ("a green triangle and a yellow square", "a yellow triangle and a green square",
         [("triangle", "green", (24, 32), 12), ("square", "yellow", (72, 32), 12)],
         [("triangle", "yellow", (24, 32), 12), ("square", "green", (72, 32), 12)], "Relation"),
        ("a red circle above a blue square", "a blue circle above a red square",
         [("circle", "red", (48, 16), 10), ("square", "blue", (48, 48), 10)],
         [("circle", "blue", (48, 16), 10), ("square", "red", (48, 48), 10)], "Both"),
    ]
    lines = []
    for i, (c0, c1, s0, s1, tag) in enumerate(pairs):
        for k, shapes in enumerate((s0, s1)):
            _shapes_image(root / "data" / "images" / f"ex_{i}_img_{k}.png", (96, 64), shapes)
        lines.append(json.dumps({"id": i, "caption_0": c0, "caption_1": c1, "tag": "Noun", "secondary_tag": "",
                                 "num_main_preds": 1, "collapsed_tag": tag, "image_0": f"ex_{i}_img_0",
                                 "image_1": f"ex_{i}_img_1"}))
    (root / "data" / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


CLEVR_SCENES = [
    # (size, colour, material, shape, (x, y, depth))
    [("large", "red", "rubber", "cube", (120, 170, 10.0)), ("small", "blue", "metal", "sphere", (360, 180, 11.0)),
     ("large", "green", "rubber", "cylinder", (250, 110, 13.5))],
    [("small", "yellow", "metal", "cube", (100, 200, 9.0)), ("large", "purple", "rubber", "sphere", (380, 150, 12.0))],
    [("large", "cyan", "metal", "cylinder", (140, 160, 10.5)), ("large", "cyan", "rubber", "cube", (330, 165, 10.5)),
     ("small", "brown", "rubber", "sphere", (240, 240, 8.0))],
]


def _clevr_relationships(coords: list[tuple[float, float, float]]) -> dict[str, list[list[int]]]:
    """relationships[name][i]: the objects in direction `name` from object i (image x for left/right, depth for front/behind)."""
    n = len(coords)
    return {
        "right": [[j for j in range(n) if coords[j][0] > coords[i][0]] for i in range(n)],
        "behind": [[j for j in range(n) if coords[j][2] > coords[i][2]] for i in range(n)],
        "front": [[j for j in range(n) if coords[j][2] < coords[i][2]] for i in range(n)],
        "left": [[j for j in range(n) if coords[j][0] < coords[i][0]] for i in range(n)],
    }


def write_clevr(root: Path) -> Path:
    """ROOT/scenes/CLEVR_val_scenes.json ({"info", "scenes"}) and ROOT/images/val/CLEVR_val_00000k.png (480 x 320)."""
    scenes = []
    for k, objs in enumerate(CLEVR_SCENES):
        filename = f"CLEVR_val_{k:06d}.png"
        objects = [{"color": c, "size": s, "rotation": 30.0 * k, "shape": sh, "3d_coords": [0.5 * k, -1.0, 0.35],
                    "material": m, "pixel_coords": [x, y, z]} for s, c, m, sh, (x, y, z) in objs]
        shapes = []
        for o in objects:
            x0, y0, x1, y1 = clevr.object_box(o, 480, 320)
            shapes.append((o["shape"], o["color"], ((x0 + x1) // 2, (y0 + y1) // 2), int((x1 - x0) / 2 / clevr.MARGIN)))
        _shapes_image(root / "images" / "val" / filename, (480, 320), shapes, background=(128, 128, 128))
        scenes.append({"split": "val", "image_index": k, "image_filename": filename, "objects": objects,
                       "relationships": _clevr_relationships([tuple(o["pixel_coords"]) for o in objects]),
                       "directions": {"left": [-0.65, 0.76, 0.0], "right": [0.65, -0.76, 0.0]}})
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    info = {"split": "val", "license": "Creative Commons Attribution (CC BY 4.0)", "version": "1.0", "date": "2/14/2017"}
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"info": info, "scenes": scenes}))
    return root


WRITERS = {"sugarcrepe": write_sugarcrepe, "aro": write_aro, "winoground": write_winoground, "clevr": write_clevr}


def write_all(folder: str | Path) -> dict[str, Path]:
    """Every fixture under `folder/<name>` (for a hand run: `geosteer eval --bench NAME --root folder/NAME`)."""
    return {name: write(Path(folder) / name) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("public_benchmarks"))


# ---------------------------------------------------------------- readers


def test_every_benchmark_has_a_fixture_and_a_cli_choice():
    from geosteer.geoshapes.commands import BENCHMARK_NAMES

    assert set(BENCHMARKS) == set(WRITERS) and BENCHMARK_NAMES == BENCHMARKS


def test_sugarcrepe_reader(roots):
    bench = read_benchmark("sugarcrepe", roots["sugarcrepe"])
    assert bench.layout == "pair" and bench.subsets == ["replace_att", "swap_att", "add_obj"]  # the paper's order
    assert len(bench.examples) == 7
    first = bench.examples[0]
    assert first.captions == ("a red square and a blue circle", "a green square and a blue circle")
    assert first.images == (ImageRef(roots["sugarcrepe"] / "val2017" / "000000000139.jpg"),)
    assert first.source.endswith("replace_att.json: entry '0'")
    assert len(read_benchmark("sugarcrepe", roots["sugarcrepe"], limit=1).examples) == 3  # one per category


def test_sugarcrepe_reads_a_clone_with_data_folder(roots, tmp_path):
    root = tmp_path / "sugar-crepe"
    (root / "data").mkdir(parents=True)
    (root / "val2017").symlink_to(roots["sugarcrepe"] / "val2017")
    (root / "data" / "swap_att.json").write_text((roots["sugarcrepe"] / "swap_att.json").read_text())
    bench = read_benchmark("sugarcrepe", root)
    assert bench.subsets == ["swap_att"] and len(bench.examples) == 2


def test_aro_reader_crops_to_the_box(roots):
    bench = read_benchmark("aro", roots["aro"])
    assert bench.subsets == ["vg_relation", "vg_attribution"] and bench.headline == "macro"
    rel = [e for e in bench.examples if e.subset == "vg_relation"]
    att = [e for e in bench.examples if e.subset == "vg_attribution"]
    assert [e.group for e in rel] == ["to the left of", "to the right of", "above"]
    assert [e.group for e in att] == ["red_blue", "green_yellow"]
    assert rel[0].images[0].crop == (10.0, 20.0, 150.0, 100.0)
    assert att[0].images[0].path == roots["aro"] / "images" / "2323639.jpg"  # from image_id alone
    assert rel[0].captions[0].startswith("the red square is to the left")


def test_winoground_reader(roots):
    bench = read_benchmark("winoground", roots["winoground"])
    assert bench.layout == "winoground" and len(bench.examples) == 3
    ex = bench.examples[1]
    assert ex.captions == ("a green triangle and a yellow square", "a yellow triangle and a green square")
    assert [r.path.name for r in ex.images] == ["ex_1_img_0.png", "ex_1_img_1.png"]
    assert ex.group == "Relation" and ex.source.endswith("examples.jsonl: line 2")


def test_clevr_reader_builds_queries_and_annotation_boxes(roots):
    bench = read_benchmark("clevr", roots["clevr"])
    assert bench.subsets == ["attribute_swap", "relation_flip"]
    kinds = [(e.source.rsplit("[", 1)[1], e.subset) for e in bench.examples]
    # scene 0: both kinds; scene 1: both; scene 2: the two cyan look-alikes cannot be colour-swapped, but the brown sphere can
    assert kinds == [("0]", "attribute_swap"), ("0]", "relation_flip"), ("1]", "attribute_swap"), ("1]", "relation_flip"),
                     ("2]", "attribute_swap"), ("2]", "relation_flip")]
    ex = bench.examples[0]
    assert ex.captions == ("a large red rubber cube and a small blue metal sphere",
                           "a large blue rubber cube and a small red metal sphere")
    assert len(ex.images[0].regions) == 3
    rel0, rel1 = bench.examples[1], bench.examples[3]
    # even image index: "<left one> to the left of <right one>"; odd: "<right one> to the right of <left one>"
    assert rel0.captions == ("a large red rubber cube to the left of a small blue metal sphere",
                             "a large red rubber cube to the right of a small blue metal sphere")
    assert rel1.captions == ("a large purple rubber sphere to the right of a small yellow metal cube",
                             "a large purple rubber sphere to the left of a small yellow metal cube")


def test_clevr_box_approximation():
    def width(obj):
        x0, y0, x1, y1 = clevr.object_box(obj, 480, 320)
        assert x1 - x0 == y1 - y0  # square, inside the image here
        return x1 - x0

    large = {"size": "large", "pixel_coords": [240, 160, 10.0]}
    half = clevr.MARGIN * 0.7 * clevr.FOCAL * 480 / 10.0  # 44.1 px
    assert clevr.object_box(large, 480, 320) == (round(240 - half), round(160 - half), round(240 + half), round(160 + half))
    # half the radius at twice the depth: a quarter of the side
    assert width({"size": "small", "pixel_coords": [240, 160, 20.0]}) == pytest.approx(width(large) / 4, abs=1)
    # no depth: the fallback half-side, a fraction of the width
    assert width({"size": "small", "pixel_coords": [100, 100]}) == pytest.approx(2 * clevr.FALLBACK["small"] * 480, abs=1)
    edge = clevr.object_box({"size": "large", "pixel_coords": [5, 318, 9.0]}, 480, 320)
    assert edge[0] == 0 and edge[3] == 320 and 0 < edge[1] < 318 and edge[2] > 5  # clipped to the image


def test_clevr_attribute_swap_skips_a_negative_that_is_true():
    red_cube = {"size": "large", "color": "red", "material": "rubber", "shape": "cube"}
    blue_ball = {"size": "small", "color": "blue", "material": "metal", "shape": "sphere"}
    assert clevr.attribute_query([red_cube, blue_ball]) == (
        "a large red rubber cube and a small blue metal sphere", "a large blue rubber cube and a small red metal sphere")
    # with a blue cube and a red ball in the scene too, every swap's negative is true (or the pair look alike)
    blue_cube, red_ball = {**red_cube, "color": "blue"}, {**blue_ball, "color": "red"}
    assert clevr.attribute_query([red_cube, blue_ball, blue_cube, red_ball]) is None
    green_cylinder = {"size": "large", "color": "green", "material": "metal", "shape": "cylinder"}
    assert clevr.attribute_query([red_cube, blue_ball, blue_cube, red_ball, green_cylinder]) == (
        "a large red rubber cube and a large green metal cylinder",
        "a large green rubber cube and a large red metal cylinder")
    # look-alikes (same size, material, shape): swapping their colours names the same scene
    assert clevr.attribute_query([red_cube, blue_cube]) is None


# ---------------------------------------------------------------- metrics


def _ex(subset: str, group: str, images: int = 1) -> Example:
    return Example(("t", "f"), tuple(ImageRef(Path(f"{k}.png")) for k in range(images)), subset, group, "x")


def test_pair_metrics_macro_and_micro_and_ties():
    examples = [_ex("a", "g1"), _ex("a", "g1"), _ex("a", "g1"), _ex("a", "g2"), _ex("b", "b")]
    true_minus_false = [0.1, 0.2, -0.1, 0.0, 0.3]  # the tie (0.0) is wrong
    blocks = torch.tensor([[[d], [0.0]] for d in true_minus_false])
    m = pair_metrics(blocks, examples, ["a", "b"])
    assert m["a"]["accuracy"] == pytest.approx(2 / 4) and m["a"]["count"] == 4
    assert m["a"]["groups"] == {"g1": {"accuracy": pytest.approx(2 / 3), "count": 3}, "g2": {"accuracy": 0.0, "count": 1}}
    assert m["a"]["macro"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["b"]["accuracy"] == 1.0 and m["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="blocks must have shape"):
        pair_metrics(blocks[:, :, :, None], examples, ["a"])


def test_winoground_metrics_follow_the_definitions():
    # [e, caption, image]
    both = [[0.9, 0.1], [0.2, 0.8]]  # c0 fits i0, c1 fits i1 on both sides
    text_only = [[0.5, 0.6], [0.1, 0.7]]  # text: 0.5 > 0.1 and 0.7 > 0.6; image: 0.5 > 0.6 fails
    image_only = [[0.5, 0.1], [0.6, 0.7]]  # image: 0.5 > 0.1, 0.7 > 0.6; text: 0.5 > 0.6 fails
    tie = [[0.5, 0.5], [0.5, 0.5]]
    blocks = torch.tensor([both, text_only, image_only, tie])
    m = winoground_metrics(blocks, [_ex("w", "A", 2), _ex("w", "A", 2), _ex("w", "B", 2), _ex("w", "B", 2)])
    assert (m["text"], m["image"], m["group"], m["count"]) == (0.5, 0.5, 0.25, 4)
    assert m["tags"]["A"] == {"text": 1.0, "image": 0.5, "group": 0.5, "count": 2}
    assert m["tags"]["B"] == {"text": 0.0, "image": 0.5, "group": 0.0, "count": 2}


# ---------------------------------------------------------------- malformed copies: errors name the file and the entry


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _copy(roots, name: str, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(roots[name], tmp_path / name, symlinks=True))


BAD = [
    ("sugarcrepe", lambda r: (r / "swap_att.json").write_text('{\n "0": {"filename": "a.jpg",\n   , }}'),
     ["swap_att.json: not valid JSON (line 3, column 4: Expecting property name"]),
    ("sugarcrepe", lambda r: _edit_json(r / "swap_att.json", lambda d: d["1"].pop("negative_caption")),
     ["swap_att.json: entry '1': missing key 'negative_caption'"]),
    ("sugarcrepe", lambda r: _edit_json(r / "add_obj.json", lambda d: d["2"].update(filename="000000999999.jpg")),
     ["add_obj.json: entry '2': image ", "val2017/000000999999.jpg not found"]),
    ("sugarcrepe", lambda r: (r / "replace_att.json").write_text("[1, 2]"),
     ["replace_att.json: expected a JSON object keyed by example index"]),
    ("sugarcrepe", lambda r: [p.unlink() for p in r.glob("*.json")], ["holds none of the SugarCrepe files"]),
    ("aro", lambda r: _edit_json(r / "visual_genome_relation.json", lambda d: d[2].update(bbox_w=0)),
     ["visual_genome_relation.json: entry [2]: the box must have bbox_w > 0"]),
    ("aro", lambda r: _edit_json(r / "visual_genome_attribution.json", lambda d: d[1].update(attributes=["x"])),
     ["visual_genome_attribution.json: entry [1]: key 'attributes' must be a pair of strings"]),
    ("aro", lambda r: _edit_json(r / "visual_genome_relation.json", lambda d: d[0].pop("true_caption")),
     ["visual_genome_relation.json: entry [0]: missing key 'true_caption'"]),
    ("aro", lambda r: (r / "images" / "2344255.jpg").unlink(), ["entry [2]: image ", "images/2344255.jpg not found"]),
    ("winoground", lambda r: (r / "data" / "examples.jsonl").write_text(
        (r / "data" / "examples.jsonl").read_text().replace('"caption_1"', '"caption_one"', 1)),
     ["examples.jsonl: line 1: missing key 'caption_1'"]),
    ("winoground", lambda r: (r / "data" / "examples.jsonl").write_text(
        (r / "data" / "examples.jsonl").read_text() + "{not json\n"), ["examples.jsonl: line 4: not valid JSON"]),
    ("winoground", lambda r: (r / "data" / "images" / "ex_2_img_1.png").unlink(),
     ["examples.jsonl: line 3: image_1 'ex_2_img_1': image ", "ex_2_img_1.png not found"]),
    ("winoground", lambda r: (r / "data" / "examples.jsonl").unlink(), ["no data/examples.jsonl"]),
    ("clevr", lambda r: _edit_json(r / "scenes" / "CLEVR_val_scenes.json", lambda d: d["scenes"][1]["objects"][0].pop("color")),
     ["CLEVR_val_scenes.json: scenes[1].objects[0]: missing key 'color'"]),
    ("clevr", lambda r: _edit_json(r / "scenes" / "CLEVR_val_scenes.json",
                                   lambda d: d["scenes"][2]["objects"][1].update(size="huge")),
     ["scenes[2].objects[1]: key 'size' must be one of ['large', 'small'], got 'huge'"]),
    ("clevr", lambda r: _edit_json(r / "scenes" / "CLEVR_val_scenes.json",
                                   lambda d: d["scenes"][0]["relationships"]["left"].append([7])),
     ["scenes[0].relationships: 'left' has 4 entries for 3 objects"]),
    ("clevr", lambda r: _edit_json(r / "scenes" / "CLEVR_val_scenes.json", lambda d: d.pop("scenes")),
     ["CLEVR_val_scenes.json: missing key 'scenes'"]),
    ("clevr", lambda r: (r / "images" / "val" / "CLEVR_val_000001.png").write_bytes(b"not a png"),
     ["scenes[1]: image ", "CLEVR_val_000001.png does not open"]),
]


@pytest.mark.parametrize("name, breaks, fragments", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_a_malformed_copy_names_the_file_and_the_entry(roots, tmp_path, name, breaks, fragments):
    root = _copy(roots, name, tmp_path)
    breaks(root)
    with pytest.raises(FormatError) as err:
        read_benchmark(name, root)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert str(root) in message, message  # the file is named by its full path


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_wrong_root_is_named(tmp_path, name):
    with pytest.raises(FormatError, match=f"{tmp_path / 'nope'}: no such folder"):
        read_benchmark(name, tmp_path / "nope")
    (tmp_path / "empty").mkdir(exist_ok=True)
    with pytest.raises(FormatError, match=str(tmp_path / "empty")):
        read_benchmark(name, tmp_path / "empty")


# ---------------------------------------------------------------- the command


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command loads a model."""
    import geosteer.geoshapes.commands as commands

    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded a model before refusing its arguments")

    monkeypatch.setattr(commands, "load_model", refuse)


def _one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geosteer eval: error: "), lines
    return lines[0]


def test_bad_bench_arguments_are_one_line_before_any_model(roots, tmp_path, capsys, no_model):
    root = str(roots["sugarcrepe"])
    cases = [
        (["--bench", "sugarcrepe"], "--bench sugarcrepe needs --root PATH"),
        (["--root", root], "--root is read only with --bench"),
        (["--bench", "sugarcrepe", "--root", root, "--split", "binding"], "--split is a GeoShapes option"),
        (["--bench", "sugarcrepe", "--root", root, "--seed", "1"], "--seed is a GeoShapes option"),
        (["--bench", "sugarcrepe", "--root", root, "--k", "5"], "--k is a GeoShapes option"),
        (["--bench", "sugarcrepe", "--root", root, "--limit", "0"], "--limit must be >= 1, got 0"),
        (["--bench", "sugarcrepe", "--root", root, "--regions", "annotations"],
         "--regions annotations: sugarcrepe has no annotation boxes"),
        (["--bench", "winoground", "--root", str(tmp_path / "nope")],
         f"--root '{tmp_path / 'nope'}': {tmp_path / 'nope'}: no such folder"),
        (["--bench", "aro", "--root", root], "holds neither ARO file"),
    ]
    for extra, fragment in cases:
        line = _one_line_error(capsys, ["eval", *extra])
        assert fragment in line, line


def test_a_malformed_file_is_one_line_naming_it(roots, tmp_path, capsys, no_model):
    root = _copy(roots, "winoground", tmp_path)
    path = root / "data" / "examples.jsonl"
    path.write_text(path.read_text().replace('"image_0": "ex_1_img_0"', '"image_0": 7'))
    line = _one_line_error(capsys, ["eval", "--bench", "winoground", "--root", str(root)])
    assert f"{path}: line 2: key 'image_0' must be a non-empty string, got a number 7" in line, line


@pytest.mark.parametrize("name", BENCHMARKS)
def test_eval_bench_runs_on_the_fixture(roots, tmp_path, capsys, name):
    out = tmp_path / "res" / f"{name}.json"
    assert cli.main(["eval", "--bench", name, "--root", str(roots[name]), "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    bench = read_benchmark(name, roots[name])
    assert report["benchmark"] == name and report["examples"] == len(bench.examples) and report["model"] == "demo"
    assert list(report["results"]) == ["cosine", "rerank", "rerank-max"]
    assert report["methods"]["cosine"]["lam"] == 0.0 and report["methods"]["rerank-max"]["matching"] == "max"
    assert report["regions"] == ("annotations" if name == "clevr" else "grid")
    assert report["parser"] == resolve_parser() and f"caption parser {report['parser']}" in printed
    for method, value in report["summary"].items():
        assert 0.0 <= value <= 1.0, (method, value)
    first = report["results"]["cosine"]
    if name == "winoground":
        assert first["count"] == 3 and set(first["tags"]) == {"Object", "Relation", "Both"}
        assert "text score" in printed and "group score" in printed
    else:
        for subset in bench.subsets:
            assert first[subset]["count"] == sum(e.subset == subset for e in bench.examples)
            assert subset in printed
    assert "cosine" in printed and "rerank-max" in printed and str(out) in printed


def test_captions_are_split_where_a_search_splits_them(roots, monkeypatch):
    """The runner's phrases and relations are `split_captions`' (the parser a search uses), one batch per chunk."""
    from geosteer.encoders import load_clip
    from geosteer.index import indexer as indexer_module
    from geosteer.public_benchmarks.runner import score_examples

    calls = []
    real = indexer_module.split_captions
    monkeypatch.setattr(indexer_module, "split_captions", lambda cs, parser=None: calls.append(list(cs)) or real(cs, parser))
    bench = read_benchmark("sugarcrepe", roots["sugarcrepe"])
    score_examples(bench, load_clip("demo"), chunk=2)
    captions = [c for ex in bench.examples for c in ex.captions]
    assert calls == [captions[k : k + 4] for k in range(0, len(captions), 4)]  # 2 examples of 2 captions a chunk
