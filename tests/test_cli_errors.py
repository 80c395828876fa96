"""Every `geosteer` subcommand refuses a bad argument or output path up front: one line, exit status 2.

Run in-process through `geosteer.cli.main`. The model loader and each
command's work are replaced by functions that fail the test, so a case
passes only if the argument was refused before anything was loaded or done.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from geosteer import cli

#: A CUDA device this machine does not have: all of CUDA here, a GPU index past the last elsewhere.
NO_CUDA = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
serve_extra = pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
    reason="geosteer serve needs the serve extra",
)

# {tmp}: a scratch folder; {file}: a plain file in it; {images}: an empty folder; {index}: a folder with a
# manifest.json naming the demo encoder (nothing else: read only once the arguments are good); {not_index}: one
# with a manifest.json that records no encoder.
CASES = [
    # eval
    (["eval", "--model", "nope"], "--model 'nope' is not an open_clip architecture"),
    (["eval", "--model", "ViT-B-32"], "--model 'ViT-B-32' needs --pretrained"),
    (["eval", "--pretrained", "laion2b_s34b_b79k"], "--pretrained 'laion2b_s34b_b79k': the 'demo' model"),
    (["eval", "--queries", "0"], "--queries must be >= 1, got 0"),
    (["eval", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["eval", "--k", "0"], "--k must be >= 1, got 0"),
    (["eval", "--device", NO_CUDA], f"--device {NO_CUDA!r}: "),
    (["eval", "--device", "nonsense"], "--device 'nonsense' is not a torch device"),
    (["eval", "--json", "/proc/geosteer-eval.json"], "--json '/proc/geosteer-eval.json' is not writable"),
    (["eval", "--json", "{file}/x.json"], "--json '{file}/x.json': '{file}' is a file, not a folder"),
    (["eval", "--json", "{tmp}"], "--json '{tmp}' is a folder; pass a file name"),
    (["eval", "--cache-dir", "{file}/cache"], "--cache-dir '{file}/cache': '{file}' is a file, not a folder"),
    # demo
    (["demo", "--out", "{tmp}/d", "--queries", "0"], "--queries must be >= 1, got 0"),
    (["demo", "--quick", "--out", "{tmp}/d", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["demo", "--out", "{tmp}/d", "--model", "nope"], "--model 'nope' is not an open_clip architecture"),
    (["demo", "--out", "{tmp}/d", "--device", NO_CUDA], f"--device {NO_CUDA!r}: "),
    (["demo", "--out", "/proc/geosteer-demo"], "--out '/proc/geosteer-demo' is not writable"),
    (["demo", "--out", "{file}"], "--out '{file}': '{file}' is a file, not a folder"),
    (["demo", "--out", "{file}/d"], "--out '{file}/d': '{file}' is a file, not a folder"),
    # train-demo
    (["train-demo", "--out", "{tmp}/m", "--minutes", "-1"], "--minutes must be > 0, got -1.0"),
    (["train-demo", "--out", "{tmp}/m", "--minutes", "0"], "--minutes must be > 0, got 0.0"),
    (["train-demo", "--out", "{tmp}/m", "--minutes", "nan"], "--minutes must be > 0, got nan"),
    (["train-demo", "--out", "{tmp}/m", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["train-demo", "--out", "{tmp}/m", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["train-demo", "--out", "{tmp}/m", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["train-demo", "--out", "{tmp}/m", "--seed", "-1"], "--seed must be in 0..2**32-1, got -1"),
    (["train-demo", "--out", "/proc/geosteer-model"], "--out '/proc/geosteer-model' is not writable"),
    (["train-demo", "--out", "{file}"], "--out '{file}': '{file}' is a file, not a folder"),
    # index (with its progress line on: a bad model is still the only line)
    (["index", "{images}", "--out", "{tmp}/i", "--model", "nope"], "--model 'nope' is not an open_clip architecture"),
    (["index", "{images}", "--out", "{tmp}/i", "--model", "ViT-B-32"], "--model 'ViT-B-32' needs --pretrained"),
    (["index", "{images}", "--out", "{tmp}/i", "--model", "local-dir:{tmp}/none"],
     "--model 'local-dir:{tmp}/none': folder '{tmp}/none' does not exist"),
    (["index", "{images}", "--out", "{tmp}/i", "--model", "{file}"], "--model '{file}' is a file"),
    (["index", "{images}", "--out", "{tmp}/i", "--device", "meta"], "--device 'meta': geosteer runs on cpu or cuda"),
    # search
    (["search", "{index}", "a cat", "--device", "meta"], "--device 'meta': geosteer runs on cpu or cuda"),
    (["search", "{index}", "a cat", "--model", "nope"], "--model 'nope' is not an open_clip architecture"),
    (["search", "{not_index}", "a cat"], "INDEX '{not_index}': its manifest.json records no encoder"),
    # serve
    pytest.param(["serve", "{index}", "--device", "meta"], "--device 'meta': geosteer runs on cpu or cuda",
                 marks=serve_extra),
]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command loads a model or starts its work."""
    import geosteer.commands.photos
    import geosteer.encoders
    import geosteer.encoders.clip
    import geosteer.geoshapes.eval
    import geosteer.geoshapes.train_demo

    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded a model or started work before refusing its arguments")

    for module, name in ((geosteer.encoders, "load_clip"), (geosteer.encoders.clip, "load_clip"),
                         (geosteer.geoshapes.eval, "evaluate"), (geosteer.geoshapes.train_demo, "train"),
                         (geosteer.commands.photos, "write_photos")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("argv, fragment", CASES)
def test_a_bad_argument_is_one_line_and_status_2(argv, fragment, tmp_path, capsys, no_work):
    file = tmp_path / "a_file.txt"
    file.write_text("x")
    (tmp_path / "images").mkdir()
    for name, manifest in (("index", '{"encoder": {"name": "demo"}}'), ("not_index", "{}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(manifest)
    fill = dict(tmp=tmp_path, file=file, images=tmp_path / "images", index=tmp_path / "index",
                not_index=tmp_path / "not_index")
    assert cli.main([a.format(**fill) for a in argv]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"geosteer {argv[0]}: error: "), lines[0]
    assert fragment.format(**fill) in lines[0], lines[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "m").exists() and not (tmp_path / "i").exists()


def _command(monkeypatch, run):
    def add(sub):
        sub.add_parser("boom").set_defaults(func=run)

    monkeypatch.setitem(cli.COMMANDS, "boom", add)


def test_a_usage_error_a_command_lets_escape_is_one_line(monkeypatch, capsys):
    from geosteer.commands.args import UsageError

    def run(args):
        raise UsageError("--thing 'x' is bad")

    _command(monkeypatch, run)
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "geosteer boom: error: --thing 'x' is bad\n"


def test_any_other_exception_keeps_its_traceback(monkeypatch):
    """A bug is not a bad argument: it propagates (Python prints the traceback, exit status 1)."""
    def run(args):
        raise KeyError("a bug")

    _command(monkeypatch, run)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["boom"])


def test_bare_geosteer_prints_the_help_on_stderr_and_exits_2(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("usage: geosteer") and "index" in out.err and "serve" in out.err


def test_the_console_script_without_a_command_exits_2():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "geosteer.cli"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and "usage: geosteer" in done.stderr


def test_method_configs_takes_a_dict_of_overrides():
    from geosteer import get_config
    from geosteer.commands.args import METHODS, method_configs

    configs = method_configs({"backend": "torch"})
    assert list(configs) == list(METHODS)
    assert configs["rerank"] == get_config("default", backend="torch")
    with pytest.raises(TypeError, match="overrides must be a dict of HeadConfig fields or None, got list"):
        method_configs([("backend", "torch")])


@pytest.mark.parametrize("argv", [
    ["search", "{vit_index}", "a cat"],
    ["index", "{images}", "--out", "{tmp}/i", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
    ["eval", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
])
def test_uncached_weights_offline_are_one_line_before_loading(argv, tmp_path, capsys, no_work, monkeypatch):
    """HF_HUB_OFFLINE and a tag not in the cache: refused with the argument checks (no model load, no network)."""
    import socket

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    monkeypatch.setenv("HOME", str(tmp_path))  # nor in ~/.cache/clip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("offline: the network was tried"))
    (tmp_path / "images").mkdir()
    (tmp_path / "vit_index").mkdir()
    (tmp_path / "vit_index" / "manifest.json").write_text(
        '{"encoder": {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}}')
    fill = dict(tmp=tmp_path, images=tmp_path / "images", vit_index=tmp_path / "vit_index")
    assert cli.main([a.format(**fill) for a in argv]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert lines[0] == (
        f"geosteer {argv[0]}: error: --pretrained 'laion2b_s34b_b79k': the weights of 'ViT-B-32' for this tag are not "
        f"in the local cache and HF_HUB_OFFLINE is set; pass a local copy of open_clip_pytorch_model.bin from "
        f"laion/CLIP-ViT-B-32-laion2B-s34B-b79K on the Hugging Face Hub as --pretrained /path/to/"
        f"open_clip_pytorch_model.bin, or run once with a network to cache them"), lines[0]
    assert not (tmp_path / "i").exists()
