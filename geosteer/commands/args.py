"""What every `geosteer` command shares: argument checks, the one-line error, model loading, the methods.

A command checks its arguments and output paths before it loads a model or
does any work; a bad one raises `UsageError`, which the command (or
`geosteer.cli.main`) prints as one line through `fail`, exit status 2.
`geosteer.cli`, `geosteer.commands.*` and the GeoShapes commands import
these helpers from here.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geosteer import HeadConfig

#: --method of `geosteer search` and `geosteer serve` -> the `geosteer.PRESETS` entry it runs.
METHODS: dict[str, str] = {"cosine": "cosine", "rerank": "default", "relations": "relations"}
DEFAULT_METHOD = "rerank"


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def fail(command: str, message: str, status: int = 2) -> int:
    """Print `geosteer COMMAND: error: MESSAGE` on stderr; return `status` (the command's exit status)."""
    echo(f"geosteer {command}: error: {message}", sys.stderr)
    return status


def printable(text: str) -> str:
    """`text` with the bytes that were not UTF-8 shown as `\\xNN` (as `ls -b` does): safe to print or write as UTF-8.

    A file name or command-line argument that is not UTF-8 reaches Python as
    a str holding lone surrogates (`os.fsdecode`'s surrogateescape: byte 0xff
    is U+DCFF); encoding it as UTF-8 raises. Keep the str itself for opening
    the file (it round-trips through `os.fsencode`); show this.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (U+D800..U+DC7F): show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def echo(text: str, file=None) -> None:
    """Print `text` (`printable`) on `file` (default stdout), escaping what its encoding cannot write.

    pytest's captured streams, `PYTHONIOENCODING` and UTF-8 locales other
    than C encode strictly: a plain print of a surrogate raises there.
    """
    file = sys.stdout if file is None else file
    text = printable(text)
    encoding = getattr(file, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=file)


def check_text(name: str, value: str) -> None:
    """`value` (a caption from the command line) is UTF-8 text, else a UsageError naming the first byte that is not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"code point U+{code:04X}"
        raise UsageError(f"{name} '{printable(value)}' is not UTF-8 text ({what} at character {e.start}); type it "
                         f"in a UTF-8 terminal (LANG=C.UTF-8, say)") from None


def check_positive(name: str, value: int | None) -> None:
    """A count argument (None: not given) is >= 1, else a UsageError naming it."""
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")


def method_configs(overrides: dict | None = None) -> dict[str, HeadConfig]:
    """Method name -> its preset's `HeadConfig` (with `overrides` applied to every one), in `METHODS` order.

    Raises:
        TypeError: `overrides` is not a dict (or None). TypeError / ValueError
            from `get_config`: an unknown field, a value of the wrong type or range.
    """
    from geosteer import get_config

    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict of HeadConfig fields or None, got {type(overrides).__name__}")
    return {name: get_config(preset, **dict(overrides or {})) for name, preset in METHODS.items()}


def check_writable_folder(name: str, path: Path, shown: str | None = None) -> None:
    """`path` (a folder to create or fill) can be written: a probe file is created in it or its nearest existing ancestor.

    A real write, not `os.access`: that says yes to root everywhere, /proc included.
    """
    import tempfile

    shown = str(path) if shown is None else shown
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{name} {shown!r}: {str(probe)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(f"{name} {shown!r} is not writable ({str(probe)!r}: {e.strerror or e})") from None


def check_writable_file(name: str, value: str) -> None:
    """`value` (a file to create or overwrite) can be written.

    Not a folder; its folder is writable (`check_writable_folder`); if it
    exists, it opens for writing (append mode: nothing in it changes).
    """
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{name} {value!r} is a folder; pass a file name")
    check_writable_folder(name, path.parent, shown=value)
    if path.exists():
        try:
            with open(path, "a"):
                pass
        except OSError as e:
            raise UsageError(f"{name} {value!r} is not writable ({e.strerror or e})") from None


def check_device(device: str, name: str = "--device") -> None:
    """`device` is one geosteer can run on here: cpu, or cuda[:N] with CUDA present and N below the GPU count."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{name} {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{name} {device!r}: CUDA is not available here")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"{name} {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type != "cpu":
        raise UsageError(f"{name} {device!r}: geosteer runs on cpu or cuda[:N], not {dev.type!r}")


def check_index_argument(index: str) -> None:
    """INDEX names a finished index folder, else a UsageError saying what it is instead."""
    from geosteer.index import index_state

    state = index_state(index)
    if state == "missing":
        raise UsageError(f"INDEX {index!r} does not exist (write one with `geosteer index IMAGES_DIR --out INDEX`)")
    if state == "partial":
        raise UsageError(f"INDEX {index!r} is an unfinished build; run the same `geosteer index` command again to finish it")
    if state != "complete":
        raise UsageError(f"INDEX {index!r} is not an index (it has no manifest.json)")


def set_threads(n: int | None) -> None:
    """`torch.set_num_threads(n)` unless None (check it with `check_positive` first)."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def check_model(model: str, pretrained: str | None) -> None:
    """What `geosteer.encoders.load_clip` would refuse at once, refused before anything loads (UsageError).

    Only the certain cases: an unknown architecture name, a missing local-dir
    folder, a checkpoint file given as --model, --pretrained where none
    belongs or where one is required, a pretrained tag whose weights are not
    cached and cannot be downloaded now (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE,
    or the host unreachable: `check_pretrained_available`). Anything else goes
    to `load_clip`, whose argument errors `load_model` also turns into a UsageError.
    """
    from geosteer.encoders.clip import BRIDGE, DEMO, WeightsUnavailable, check_pretrained_available

    if not model:
        raise UsageError("--model is empty")
    if model in (DEMO, BRIDGE):
        if pretrained is not None:
            raise UsageError(f"--pretrained {pretrained!r}: the {model!r} model brings its own weights; "
                             f"drop --pretrained")
        return
    if model.startswith("hf-hub:"):
        return
    if model.startswith("local-dir:") or os.path.isdir(model):
        folder = Path(model.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--model {model!r}: folder {str(folder)!r} does not exist")
        return
    if os.path.isfile(model):
        raise UsageError(f"--model {model!r} is a file: pass the architecture as --model and the checkpoint as "
                         f"--pretrained, or a model folder as 'local-dir:<folder>'")
    import difflib

    import open_clip

    known = open_clip.list_models()
    if model.replace("/", "-") not in known:
        close = difflib.get_close_matches(model, known, n=5)
        hint = f"; did you mean one of {close}?" if close else "; see open_clip.list_models()"
        raise UsageError(f"--model {model!r} is not an open_clip architecture, a folder, 'demo' or 'bridge'{hint}")
    tags = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
    if pretrained is None:
        raise UsageError(f"--model {model!r} needs --pretrained (random weights retrieve nothing): one of {tags} "
                         f"or a checkpoint file")
    if not os.path.isfile(pretrained) and pretrained.lower() not in {t.lower() for t in tags}:
        raise UsageError(f"--pretrained {pretrained!r} is neither a tag of {model!r} ({tags}) nor an existing file")
    try:  # offline, open_clip would retry the Hub for about a minute before its traceback
        check_pretrained_available(model, pretrained)
    except WeightsUnavailable as e:
        raise UsageError(f"--pretrained {pretrained!r}: the weights of {model!r} for this tag are not in the local "
                         f"cache and {e.reason}; pass a local copy of {e.weights_file} from {e.source} as --pretrained "
                         f"/path/to/{e.weights_file}, or run once with a network to cache them") from None


@functools.lru_cache(maxsize=2)
def _load(model: str, pretrained: str | None, device: str):
    # Cached: repeated commands in one process (tests, notebooks) load once.
    from geosteer.encoders import load_clip

    if model == "demo":  # everything is local: never let transformers try the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return load_clip(model, pretrained=pretrained, device=device)


def load_model(model: str, pretrained: str | None, device: str, say=None):
    """`check_model`, then (saying "loading model ..." through `say`, if given) the encoder; UsageError for a bad one.

    Cached per (model, pretrained, device): commands run again in one process load once.
    """
    check_model(model, pretrained)
    if say is not None:
        say(f"loading model {model!r} ...")
    try:
        return _load(model, pretrained, device)
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise UsageError(f"--model {model!r}: {e}") from None


def index_encoder(index, model: str | None, pretrained: str | None, device: str, say=None):
    """The encoder an opened index was built with, loaded through `load_model` and checked (`Index.load_encoder`).

    Raises:
        UsageError: naming --model, for a model that does not load or is not the index's.
    """
    loader = lambda m, p, d: load_model(m, p, d, say)  # noqa: E731
    try:
        return index.load_encoder(model, pretrained, device, loader=loader)
    except ValueError as e:  # names the index and both encoders
        raise UsageError(f"--model {model or index.manifest['encoder']['name']!r}: {e}") from None


def first_stage_name(fs) -> str:
    """A searcher's first stage in words: "exact", or "FAISS IVF4096,PQ64, nprobe 128, top 4K re-scored exactly"."""
    if fs is None:
        return "exact"
    return f"FAISS {fs.factory or fs.kind}" + (f", nprobe {fs.nprobe}" if fs.nprobe else "") + (
        f", top {fs.refine}K re-scored exactly" if fs.refine > 1 else "")
