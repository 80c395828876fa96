"""`geosteer index` and `geosteer search`: your own images, indexed on disk, searched from the command line.

`geosteer index IMAGES_DIR --out INDEX` encodes every image under IMAGES_DIR (recursively) with the model (default: the shipped demo model) and its region crops (--regions, default grid) into the index folder INDEX: safetensors shards and a JSON manifest. It shows a progress bar (images/s), skips files that do not decode (listed in the manifest) and ends with a summary. Interrupted, the same command resumes from the last finished shard; run again on a finished index, it adds the images new in IMAGES_DIR.

`geosteer search INDEX "a red car to the left of a blue bus" [more queries]` encodes each query with the index's model (recorded in the manifest), runs the cosine first stage and the re-ranking head (--method, default rerank) and prints per query a table of rank, path, the re-ranked score and the cosine score and rank before re-ranking; --json prints the results as JSON instead, --html writes a self-contained page (thumbnails embedded, cosine and re-ranked columns side by side, the region matched to each query part drawn).

Both check their arguments before loading anything and print one line naming a bad one (exit status 2).
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import json
import os
import sys
import time
from pathlib import Path

#: --method -> the `geosteer.PRESETS` entry it runs.
METHODS: dict[str, str] = {"cosine": "cosine", "rerank": "default", "rerank+steer": "rerank+steer", "relations": "relations"}
DEFAULT_METHOD = "rerank"
DEFAULT_MODEL = "demo"
DEFAULT_REGIONS = "grid"
DEFAULT_MAX_REGIONS = 16
DEFAULT_BATCH = 64
DEFAULT_SHARD = 1024
#: Longest side of a thumbnail on the --html page, pixels.
THUMB = 200
#: Colours of query parts on the page: part j's matched region is framed in PART_COLOURS[j % 8].
PART_COLOURS = ((230, 60, 60), (60, 140, 240), (40, 200, 90), (240, 180, 30), (190, 80, 220), (30, 200, 200),
                (250, 120, 40), (150, 150, 150))


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def fail(command: str, message: str, status: int = 2) -> int:
    print(f"geosteer {command}: error: {message}", file=sys.stderr)
    return status


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")


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


def set_threads(n: int | None) -> None:
    """`torch.set_num_threads(n)` unless None (check it with `check_positive` first)."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def check_model(model: str, pretrained: str | None) -> None:
    """What `geosteer.encoders.load_clip` would refuse at once, refused before anything loads (UsageError).

    Only the certain cases: an unknown architecture name, a missing local-dir
    folder, a checkpoint file given as --model, --pretrained where none
    belongs or where one is required. Anything else goes to `load_clip`,
    whose argument errors `load_model` also turns into a UsageError.
    """
    from geosteer.encoders.clip import BRIDGE, DEMO

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


def recorded_model(manifest: dict) -> tuple[str, str | None]:
    """(model, pretrained) an index was built with: what `geosteer index` recorded, else the encoder's name."""
    meta = manifest.get("metadata") or {}
    return str(meta.get("model") or manifest["encoder"]["name"]), meta.get("pretrained")


# ---------------------------------------------------------------- index


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer index`."""
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to write (or to resume / extend)")
    p.add_argument("--model", default=None, help="anything geosteer.encoders.load_clip takes: 'demo' (default for a "
                   "new index; an existing one keeps its own), an open_clip architecture with --pretrained, "
                   "'local-dir:<folder>', 'hf-hub:<repo>'")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file for an architecture name")
    p.add_argument("--regions", default=None, help=f"region method (default: {DEFAULT_REGIONS}; "
                   "one of geosteer.encoders.regions.METHODS)")
    p.add_argument("--max-regions", type=int, default=None, help=f"regions per image at most (default: {DEFAULT_MAX_REGIONS})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images encoded together (default: {DEFAULT_BATCH}, or what the index in --out used)")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"images per shard: what an interruption loses at most (default: {DEFAULT_SHARD}, or the index's)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _index_plan(args: argparse.Namespace) -> tuple[str, dict | None]:
    """Check `geosteer index`'s arguments (nothing loaded yet); (state of --out, what it records or None)."""
    from geosteer.encoders.regions import METHODS as REGION_METHODS
    from geosteer.index import index_state

    images = Path(args.images).expanduser()
    if not images.exists():
        raise UsageError(f"IMAGES_DIR {args.images!r} does not exist")
    if not images.is_dir():
        raise UsageError(f"IMAGES_DIR {args.images!r} is not a folder")
    for name in ("--max-regions", "--batch-size", "--shard-size", "--threads"):
        check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.regions is not None and args.regions not in REGION_METHODS:
        raise UsageError(f"--regions {args.regions!r} is not a region method; one of {', '.join(REGION_METHODS)}")
    check_device(args.device)
    out = Path(args.out).expanduser()
    state = index_state(out)
    if state == "other":
        raise UsageError(f"--out {args.out!r} exists and is not an index (pass a new or empty folder)")
    check_writable_folder("--out", out, shown=args.out)
    recorded = None
    if state in ("complete", "partial"):
        name = "manifest.json" if state == "complete" else "build.json"
        try:
            recorded = json.loads((out / name).read_text())
            model = recorded_model(recorded)[0]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--out {args.out!r}: its {name} cannot be read ({e})") from None
        for flag, key, given in (("--regions", "regions", args.regions), ("--max-regions", "max_regions", args.max_regions)):
            if given is not None and given != recorded.get(key):
                raise UsageError(f"{flag} {given!r} differs from the {recorded.get(key)!r} of the index in --out "
                                 f"{args.out!r}; an index holds one setting (use another --out)")
        if args.model is not None and args.model != model:
            raise UsageError(f"--model {args.model!r} differs from the index's model {model!r} in --out {args.out!r} "
                             f"(use another --out)")
    return state, recorded


def run_index(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer index`: build, resume or extend the index; print a summary."""
    try:
        state, recorded = _index_plan(args)
        set_threads(args.threads)
        model, pretrained = (recorded_model(recorded) if recorded is not None else (DEFAULT_MODEL, None))
        model, pretrained = args.model or model, args.pretrained or pretrained
        progress = not args.no_progress
        encoder = load_model(model, pretrained, args.device, say=(lambda s: print(s, file=sys.stderr)) if progress else None)
    except UsageError as e:
        return fail("index", str(e))

    from geosteer.index import Index, StoreError

    rec = recorded or {}
    build = rec.get("build") or rec  # a manifest keeps them under "build", an unfinished build at the top
    t0 = time.perf_counter()
    try:
        if state == "complete":
            index = Index.open(args.out, encoder=encoder)
            before = len(index)
            index.add(args.images, encoder, batch_size=args.batch_size, progress=progress)
            what = f"{len(index) - before} new images added"
        else:
            index = Index.build(args.images, args.out, encoder,
                                regions=args.regions or rec.get("regions") or DEFAULT_REGIONS,
                                max_regions=args.max_regions or rec.get("max_regions") or DEFAULT_MAX_REGIONS,
                                batch_size=args.batch_size or build.get("batch_size") or DEFAULT_BATCH,
                                shard_size=args.shard_size or build.get("shard_size") or DEFAULT_SHARD,
                                progress=progress, metadata={"model": model, "pretrained": pretrained})
            resumed = index.stats["resumed_shards"]
            what = f"resumed after {resumed} finished shards" if state == "partial" and resumed else "new index"
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the last finished shard", file=sys.stderr)
        return 130
    except ValueError as e:  # another encoder, a changed source, nothing decodable: one line
        return fail("index", str(e), status=2 if not isinstance(e, StoreError) else 1)
    seconds = time.perf_counter() - t0
    s = index.stats
    rate = s["images_per_s"]
    print(f"{args.out}: {len(index)} images indexed, {len(index.skipped)} skipped ({what}: {s['encoded']} encoded, "
          f"{s['skipped']} skipped this run) in {seconds:.1f} s, {rate:.1f} images/s; model {model}, regions "
          f"{index.manifest['regions']}, n={index.manifest['n']}, D={index.manifest['dim']}")
    for item in index.skipped[:5]:
        print(f"  skipped {item['path']}: {item['error']}", file=sys.stderr)
    if len(index.skipped) > 5:
        print(f"  ... and {len(index.skipped) - 5} more (listed in {Path(args.out) / 'manifest.json'})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- search


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer search`."""
    p.add_argument("index", metavar="INDEX", help="index folder written by `geosteer index`")
    p.add_argument("queries", metavar="QUERY", nargs="+", help="captions to search for")
    p.add_argument("-k", type=int, default=10, help="results per query (default: %(default)s)")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"one of {', '.join(METHODS)} (default: %(default)s): the "
                   "geosteer preset the re-ranked column runs")
    p.add_argument("--model", default=None, help="the index's model (default: the one its manifest records)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint (default: the recorded one)")
    p.add_argument("--device", default="cpu", help="torch device of the text encoder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the results as JSON (nothing else on stdout)")
    p.add_argument("--html", default=None, metavar="OUT.html", help="write a self-contained results page here")


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


def _search_plan(args: argparse.Namespace) -> dict:
    """Check `geosteer search`'s arguments (nothing loaded yet); the index's manifest."""
    check_index_argument(args.index)
    check_positive("-k", args.k)
    check_positive("--threads", args.threads)
    if args.method not in METHODS:
        raise UsageError(f"--method {args.method!r} is not one of {', '.join(METHODS)}")
    empty = [q for q in args.queries if not q.strip()]
    if empty:
        raise UsageError(f"QUERY {empty[0]!r} is empty")
    if args.html is not None:
        check_writable_file("--html", args.html)
    check_device(args.device)
    try:
        manifest = json.loads((Path(args.index) / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"INDEX {args.index!r}: its manifest.json cannot be read ({e})") from None
    try:
        recorded_model(manifest)
    except (AttributeError, KeyError, TypeError):
        raise UsageError(f"INDEX {args.index!r}: its manifest.json records no encoder (not a geosteer index)") from None
    return manifest


def run_search(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer search`: table, --json or --html."""
    try:
        manifest = _search_plan(args)
        set_threads(args.threads)
        model, pretrained = recorded_model(manifest)
        if args.model is not None and args.model != model:
            pretrained = None  # the recorded tag belongs to the recorded model
        model, pretrained = args.model or model, args.pretrained or pretrained
        encoder = load_model(model, pretrained, args.device)
    except UsageError as e:
        return fail("search", str(e))

    import torch

    from geosteer import get_config
    from geosteer.index import Index, StoreError

    try:
        index = Index.open(args.index)
    except StoreError as e:  # a version, a truncated shard: the data, not an argument
        return fail("search", str(e), status=1)
    try:
        index.check_encoder(encoder)
    except ValueError as e:
        return fail("search", f"--model {model!r}: {e}")
    index.encoder = encoder
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            result = index.search(list(args.queries), get_config(METHODS[args.method]), k=args.k)
    except StoreError as e:
        return fail("search", str(e), status=1)
    seconds = time.perf_counter() - t0
    info = {"index": str(args.index), "images": len(index), "model": model, "method": args.method,
            "preset": METHODS[args.method], "seconds": seconds}
    if args.html is not None:
        page = write_search_html(Path(args.html), index, result, info)
        print(f"wrote {page}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({**info, **result.to_dict()}, indent=1))
    else:
        print(format_results(result, info))
    return 0


def format_results(result, info: dict) -> str:
    """The text tables of a `SearchResult`: one per query, rank / before / scores / path."""
    lines = []
    k, big_k = result.k, result.config.k
    for q, ranking in enumerate(result.reranked):
        text = result.queries[q] if result.queries is not None else f"query {q + 1}"
        if q:
            lines.append("")
        lines.append(f"query {q + 1}/{len(result.reranked)}: {text!r}   parts: {' | '.join(result.parts[q])}")
        lines.append(f"method {info['method']} (preset {info['preset']!r}), top {k} of K={big_k} candidates re-ranked, "
                     f"{info['images']} images; before = rank by cosine")
        lines.append(f"{'rank':>4}  {'before':>6}  {'score':>7}  {'cosine':>7}  {'align':>6}  {'struct':>6}  path")
        for i, row in enumerate(ranking.rows()):
            lines.append(f"{row['rank']:>4}  {row['rank_before']:>6}  {row['score']:>7.4f}  {row['cosine']:>7.4f}  "
                         f"{row['alignment']:>6.3f}  {row['structure']:>6.3f}  {row['path']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- html


def _thumbnail(path: Path, boxes: list | None) -> tuple[str, str]:
    """(data: URI of a JPEG thumbnail with the matched boxes drawn, note); a grey tile if the image is gone."""
    from PIL import Image, ImageDraw

    from geosteer.index import load_image

    note = ""
    try:
        im = load_image(path)
    except Exception as e:  # noqa: BLE001 - a moved or deleted image must not break the page
        im, note = Image.new("RGB", (THUMB, THUMB), (60, 60, 60)), f"image unavailable: {type(e).__name__}"
        boxes = None
    scale = THUMB / max(im.size)  # small images grow too, so their boxes stay visible
    thumb = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                      Image.BILINEAR if scale > 1 else Image.LANCZOS, reducing_gap=None if scale > 1 else 2.0)
    if boxes:
        draw = ImageDraw.Draw(thumb)
        for j, box in enumerate(boxes):
            if box is not None:
                x0, y0, x1, y1 = (v * scale for v in box)
                draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=PART_COLOURS[j % len(PART_COLOURS)],
                               width=3)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), note


_CSS = """
body { font-family: system-ui, sans-serif; background: #111; color: #ddd; margin: 24px; }
h1 { font-weight: 600; } h2 { font-weight: 600; margin-top: 32px; border-bottom: 1px solid #333; }
.cols { display: flex; gap: 24px; } .col { flex: 1; min-width: 0; }
.col h3 { font-weight: 500; color: #aaa; margin: 8px 0; }
.hits { display: flex; flex-wrap: wrap; gap: 10px; }
.hit { width: 210px; font-size: 12px; } .hit img { max-width: 200px; max-height: 200px; border: 2px solid #333; }
.path { color: #bbb; word-break: break-all; } .score { color: #8c8; } .small { color: #888; font-size: 13px; }
.chip { display: inline-block; padding: 1px 8px; margin-right: 6px; border-radius: 4px; color: #111; }
"""


def write_search_html(path: Path, index, result, info: dict) -> Path:
    """A self-contained page of a `SearchResult`: per query, cosine (before) and re-ranked (after) columns.

    Thumbnails are embedded (base64 JPEG), so the page opens from disk
    anywhere; in the after column each query part's matched region is
    framed in that part's colour.

    Returns:
        `path`.
    """
    files = index.files
    cache: dict[tuple[int, bool], tuple[str, str]] = {}

    def hit_html(ranking, r: int, after: bool) -> str:
        i = ranking.ids[r]
        key = (i, after)
        if after or key not in cache:
            cache[key] = _thumbnail(files[i], ranking.boxes[r] if after else None)
        uri, note = cache[key]
        scores = (f"S {ranking.scores[r]:.4f} · cos {ranking.first_stage[r]:.4f}<br>A {ranking.alignment[r]:.3f} · "
                  f"R {ranking.structure[r]:.3f} · was #{ranking.ranks_before[r]}" if after else
                  f"cos {ranking.scores[r]:.4f}")
        return (f'<div class="hit"><img src="{uri}" alt=""><div>#{r + 1} <span class="path">'
                f'{html.escape(ranking.paths[r])}</span></div><div class="score">{scores}</div>'
                + (f'<div class="small">{html.escape(note)}</div>' if note else "") + "</div>")

    body = []
    for q in range(len(result.reranked)):
        text = result.queries[q] if result.queries is not None else f"query {q + 1}"
        chips = "".join(f'<span class="chip" style="background: rgb{PART_COLOURS[j % len(PART_COLOURS)]}">'
                        f"{html.escape(p)}</span>" for j, p in enumerate(result.parts[q]))
        before = "".join(hit_html(result.cosine[q], r, False) for r in range(len(result.cosine[q].ids)))
        after = "".join(hit_html(result.reranked[q], r, True) for r in range(len(result.reranked[q].ids)))
        body.append(f"<h2>{html.escape(text)}</h2><div>{chips}</div><div class='cols'>"
                    f"<div class='col'><h3>before: cosine top-{result.k}</h3><div class='hits'>{before}</div></div>"
                    f"<div class='col'><h3>after: {html.escape(info['method'])} top-{result.k}</h3>"
                    f"<div class='hits'>{after}</div></div></div>")
    notes = (f"index {html.escape(info['index'])}: {info['images']} images, model {html.escape(info['model'])}, regions "
             f"{html.escape(index.manifest['regions'])}; method {html.escape(info['method'])} (preset "
             f"{html.escape(info['preset'])}, K={result.config.k} candidates re-ranked). S = fused score, "
             f"cos = cosine, A = part alignment, R = relations holding; frames = the region matched to each part.")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>geosteer search</title><style>{_CSS}</style>"
            f"</head><body><h1>geosteer search</h1><p class='small'>{notes}</p>{''.join(body)}</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
