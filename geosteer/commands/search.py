"""`geosteer search`: search an index from the command line.

`geosteer search INDEX "a red car to the left of a blue bus" [more queries]` encodes each query with the index's model (recorded in its manifest), runs the cosine first stage and the re-ranking head (--method, default rerank; `geosteer.index.Searcher`) and prints per query a table of rank, path, the re-ranked score and the cosine score and rank before re-ranking; --json prints the results as JSON instead (the form `geosteer serve` answers `POST /search` with), --html writes a self-contained page (thumbnails embedded, cosine and re-ranked columns side by side, the region matched to each query part drawn). --where searches a subset (`path:holidays/*`, `path:holidays/`, `id:3,5-9`; repeat it or join clauses with `&`: all must hold), filtered in the first stage, so k results still come back when the subset holds k images.

It checks its arguments before loading anything and prints one line naming a bad one (exit status 2); a
ValueError of the library while searching (NaN regions in the index, say) is one line and exit status 2 too,
a corrupt or outdated index (`StoreError`) one line and exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
import time
from pathlib import Path

from geosteer.commands.args import (
    DEFAULT_METHOD,
    METHODS,
    UsageError,
    check_device,
    check_index_argument,
    check_model,
    check_positive,
    check_text,
    check_writable_file,
    echo,
    fail,
    first_stage_name,
    index_encoder,
    method_configs,
    printable,
    set_threads,
)

#: Longest side of a thumbnail on the --html page, pixels.
THUMB = 200
#: Colours of query parts on the page: part j's matched region is framed in PART_COLOURS[j % 8].
PART_COLOURS = ((230, 60, 60), (60, 140, 240), (40, 200, 90), (240, 180, 30), (190, 80, 220), (30, 200, 200),
                (250, 120, 40), (150, 150, 150))


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
    p.add_argument("--where", action="append", default=None, metavar="FILTER",
                   help="search only these images: 'path:GLOB' (fnmatch on the path the index records, relative to "
                   "its image folder; * also crosses /, e.g. 'path:holidays/*', 'path:*.png'), 'path:PREFIX/' (a "
                   "folder), 'id:3,5-9' (row ids and ranges). Repeat it or join clauses with '&': all must hold. "
                   "Fewer matching images than -k give fewer results")
    p.add_argument("--exact", action="store_true",
                   help="score every embedding, even where the index has a FAISS first stage (geosteer index --faiss)")


def _search_plan(args: argparse.Namespace) -> None:
    """Check `geosteer search`'s arguments, the model its manifest names included (nothing loaded yet)."""
    from geosteer.index import recorded_model

    check_index_argument(args.index)
    check_positive("-k", args.k)
    check_positive("--threads", args.threads)
    if args.method not in METHODS:
        raise UsageError(f"--method {args.method!r} is not one of {', '.join(METHODS)}")
    empty = [q for q in args.queries if not q.strip()]
    if empty:
        raise UsageError(f"QUERY {empty[0]!r} is empty")
    for q in args.queries:  # bytes from a terminal in another encoding: no caption parser can read them
        check_text("QUERY", q)
    if args.html is not None:
        check_writable_file("--html", args.html)
    check_device(args.device)
    try:
        manifest = json.loads((Path(args.index) / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"INDEX {args.index!r}: its manifest.json cannot be read ({e})") from None
    try:
        model, pretrained = recorded_model(manifest, args.model, args.pretrained)
    except ValueError as e:  # records no encoder
        raise UsageError(f"INDEX {args.index!r}: {e}") from None
    check_model(model, pretrained)


def run_search(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer search`: table, --json or --html."""
    from geosteer.index import Index, Searcher, StoreError

    try:
        _search_plan(args)
        set_threads(args.threads)
        index = Index.open(args.index)
        encoder = index_encoder(index, args.model, args.pretrained, args.device)
        searcher = Searcher(index, encoder, {args.method: method_configs()[args.method]}, k_max=args.k,
                            first_stage="exact" if args.exact else "auto")
        allowed = None
        if args.where is not None:
            try:
                allowed = searcher.where(args.where)
            except ValueError as e:
                raise UsageError(f"--where: {e}") from None
        t0 = time.perf_counter()
        result = searcher.search(list(args.queries), k=args.k, allowed=allowed)
        seconds = time.perf_counter() - t0
    except UsageError as e:
        return fail("search", str(e))
    except ImportError as e:  # the index's FAISS first stage without the faiss extra
        return fail("search", f"{e}; or search with --exact")
    except StoreError as e:  # a version, a truncated or corrupt shard: the data, not an argument
        return fail("search", str(e), status=1)
    except ValueError as e:
        # The library's bad-input errors name the argument or the data (NaN / inf region embeddings, a query
        # side the head refuses), as `geosteer index` prints them. Only the work above is covered: a
        # ValueError while printing or writing the results is a bug in this command and keeps its traceback.
        return fail("search", str(e))
    info = {"index": str(args.index), "images": len(index), "model": index.manifest["encoder"]["name"],
            "preset": METHODS[args.method], "seconds": seconds}
    if searcher.first_stage is not None:
        info["first_stage"] = first_stage_name(searcher.first_stage)
    if allowed is not None:
        info["where"] = list(args.where)
        info["images_allowed"] = int(allowed.sum())
    if args.html is not None:
        page = write_search_html(Path(args.html), index, result, info)
        echo(f"wrote {page}", sys.stderr if args.json else sys.stdout)
    if args.json:
        # ASCII: a file name that is not UTF-8 is a \udcNN escape; json.loads + os.fsencode give back its bytes
        print(json.dumps({**info, **result.to_dict()}, indent=1))
    else:
        echo(format_results(result, info))
    return 0


def format_results(result, info: dict) -> str:
    """The text tables of a `SearchResult`: one per query, rank / before / scores / path (`printable`)."""
    lines = []
    k, big_k = result.k, result.config.k
    for q, ranking in enumerate(result.reranked):
        text = result.queries[q] if result.queries is not None else f"query {q + 1}"
        if q:
            lines.append("")
        lines.append(f"query {q + 1}/{len(result.reranked)}: {text!r}   parts: {' | '.join(result.parts[q])}")
        lines.append(f"method {result.method} (preset {info['preset']!r}), top {k} of K={big_k} candidates re-ranked, "
                     f"{info['images']} images; before = rank by cosine")
        if "first_stage" in info:
            lines.append(f"first stage {info['first_stage']}")
        if "where" in info:
            lines.append(f"filter {' & '.join(printable(w) for w in info['where'])}: {info['images_allowed']} images")
        lines.append(f"{'rank':>4}  {'before':>6}  {'score':>7}  {'cosine':>7}  {'align':>6}  {'struct':>6}  path")
        for row in ranking.rows():
            lines.append(f"{row['rank']:>4}  {row['rank_before']:>6}  {row['score']:>7.4f}  {row['first_stage']:>7.4f}  "
                         f"{row['alignment']:>6.3f}  {row['structure']:>6.3f}  {printable(row['path'])}")
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
    framed in that part's colour. Names that are not UTF-8 are shown as
    `printable` writes them; the thumbnails are read from the files.

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
                f'{html.escape(printable(ranking.paths[r]))}</span></div><div class="score">{scores}</div>'
                + (f'<div class="small">{html.escape(note)}</div>' if note else "") + "</div>")

    body = []
    for q in range(len(result.reranked)):
        text = result.queries[q] if result.queries is not None else f"query {q + 1}"
        chips = "".join(f'<span class="chip" style="background: rgb{PART_COLOURS[j % len(PART_COLOURS)]}">'
                        f"{html.escape(printable(p))}</span>" for j, p in enumerate(result.parts[q]))
        before = "".join(hit_html(result.cosine[q], r, False) for r in range(len(result.cosine[q].ids)))
        after = "".join(hit_html(result.reranked[q], r, True) for r in range(len(result.reranked[q].ids)))
        body.append(f"<h2>{html.escape(printable(text))}</h2><div>{chips}</div><div class='cols'>"
                    f"<div class='col'><h3>before: cosine top-{result.k}</h3><div class='hits'>{before}</div></div>"
                    f"<div class='col'><h3>after: {html.escape(result.method)} top-{result.k}</h3>"
                    f"<div class='hits'>{after}</div></div></div>")
    notes = (f"index {html.escape(printable(info['index']))}: {info['images']} images, model "
             f"{html.escape(info['model'])}, regions {html.escape(index.manifest['regions'])}; method "
             f"{html.escape(result.method)} (preset {html.escape(info['preset'])}, K={result.config.k} candidates "
             f"re-ranked). S = fused score, cos = cosine, A = part alignment, R = relations holding; frames = the "
             f"region matched to each part.")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>geosteer search</title><style>{_CSS}</style>"
            f"</head><body><h1>geosteer search</h1><p class='small'>{notes}</p>{''.join(body)}</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")  # what its <meta charset> says, whatever the locale
    os.replace(tmp, path)  # all or nothing: an interrupted run leaves no half page
    return path
