"""Demo reports: a self-contained HTML page and a PNG contact sheet of top-5 results.

The page embeds every image as a base64 `data:` URI, so it opens from disk
without a server. Each query shows its target, then the top-5 of each method
shown ("before" = cosine, "after" = the re-ranked methods); the target is
framed green, the query's hard negatives (twin, confusers) red.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from geosteer.geoshapes.splits import DESCRIPTIONS

GREEN = (40, 200, 90)
RED = (230, 60, 60)


@dataclass
class QueryRow:
    """One query of the report and its top-5 per method."""

    split: str
    query: str
    target: int  # gallery id
    hard: list[int]  # gallery ids of its twin / confusers
    top: dict[str, list[int]]  # method -> top-5 gallery ids
    images: list[Image.Image]  # the split's gallery, indexed by id


def data_uri(image: Image.Image) -> str:
    """A PNG `data:` URI of an image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body { font-family: system-ui, sans-serif; background: #111; color: #ddd; margin: 24px; }
h1, h2 { font-weight: 600; } h2 { margin-top: 36px; border-bottom: 1px solid #333; }
table.res { border-collapse: collapse; margin: 12px 0; }
table.res td, table.res th { padding: 4px 10px; border-bottom: 1px solid #333; text-align: right; }
table.res td:first-child, table.res th:first-child { text-align: left; }
.q { margin: 18px 0; } .q .text { font-size: 15px; margin-bottom: 6px; }
.row { display: flex; align-items: center; gap: 6px; margin: 3px 0; }
.row .label { width: 110px; font-size: 13px; color: #aaa; }
.row img { width: 80px; height: 80px; border: 3px solid #222; image-rendering: auto; }
.row img.target { border-color: rgb(40, 200, 90); } .row img.hard { border-color: rgb(230, 60, 60); }
.ok { color: rgb(40, 200, 90); } .miss { color: rgb(230, 60, 60); }
.small { color: #888; font-size: 13px; }
"""


def write_html(
    path: str | Path,
    rows: Sequence[QueryRow],
    methods: Sequence[str],
    table_html: str = "",
    title: str = "geosteer demo",
    notes: str = "",
) -> Path:
    """Write the report page.

    Args:
        path: output file.
        rows: the queries to show, grouped by split in the given order.
        methods: which methods' top-5 to show, first = "before".
        table_html: an HTML table of the metrics (`results_table_html`).
        title, notes: heading and a paragraph under it (plain text).

    Returns:
        The path written.
    """
    path = Path(path)
    uris: dict[tuple[int, int], str] = {}  # (id(images list), gallery id) -> URI, each image encoded once

    def img(r: QueryRow, g: int, cls: str = "") -> str:
        key = (id(r.images), g)
        if key not in uris:
            uris[key] = data_uri(r.images[g])
        c = "target" if g == r.target else ("hard" if g in r.hard else cls)
        return f'<img class="{c}" src="{uris[key]}" alt="gallery {g}" title="gallery item {g}">'

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append(f"<p class='small'>{html.escape(notes)}</p>")
    parts.append(table_html)
    parts.append("<p class='small'>Green frame: the query's single correct scene. Red frame: its hard negatives "
                 "(colour-swapped twin, pentagon/hexagon twin, position-swapped twin, ...).</p>")
    current = None
    for r in rows:
        if r.split != current:
            current = r.split
            parts.append(f"<h2>{html.escape(r.split)} <span class='small'>{html.escape(DESCRIPTIONS.get(r.split, ''))}</span></h2>")
        parts.append(f"<div class='q'><div class='text'>“{html.escape(r.query)}”</div>")
        parts.append(f"<div class='row'><span class='label'>target</span>{img(r, r.target)}</div>")
        for m in methods:
            top = r.top[m]
            rank = top.index(r.target) + 1 if r.target in top else None
            verdict = f"<span class='ok'>target at {rank}</span>" if rank else "<span class='miss'>target not in top 5</span>"
            cells = "".join(img(r, g) for g in top)
            parts.append(f"<div class='row'><span class='label'>{html.escape(m)}<br>{verdict}</span>{cells}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def results_table_html(results: dict, methods: Sequence[str], metric: str = "r1") -> str:
    """The metrics table of a `geosteer.geoshapes.eval.evaluate` result as HTML (percent)."""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    body = []
    for s in results["splits"]:
        cells = []
        for m in methods:
            st = results["summary"][s][m][metric]
            cells.append(f"<td>{100 * st['mean']:.1f}" + (f" ± {100 * st['std']:.1f}" if st["n"] > 1 else "") + "</td>")
        body.append(f"<tr><td>{html.escape(s)}</td>{''.join(cells)}</tr>")
    label = {"r1": "R@1", "r5": "R@5", "ndcg10": "nDCG@10"}.get(metric, metric)
    return f"<table class='res'><tr><th>{label} (%)</th>{head}</tr>{''.join(body)}</table>"


def contact_sheet(
    path: str | Path, rows: Sequence[QueryRow], methods: Sequence[str], thumb: int = 64, max_rows: int = 12
) -> Path:
    """A PNG: one line per query (target, then top-5 per method), framed like the page."""
    rows = list(rows)[:max_rows]
    pad, label_w, text_h = 4, 96, 14
    per_line = 1 + 5 * len(methods)
    width = label_w + per_line * (thumb + pad) + pad * len(methods) * 2
    line_h = thumb + text_h + 2 * pad
    sheet = Image.new("RGB", (width, max(1, len(rows)) * line_h + text_h + pad), (17, 17, 17))
    draw = ImageDraw.Draw(sheet)
    x = label_w + thumb + pad + pad
    for m in methods:  # column headers
        draw.text((x, 2), f"{m} top-5", fill=(200, 200, 200))
        x += 5 * (thumb + pad) + 2 * pad
    for i, r in enumerate(rows):
        y = text_h + pad + i * line_h
        draw.text((pad, y), r.split, fill=(200, 200, 200))
        draw.text((pad, y + thumb + 2), r.query[:150], fill=(150, 150, 150))
        x = label_w
        groups = [[r.target]] + [r.top[m] for m in methods]
        for gi, ids in enumerate(groups):
            for g in ids:
                im = r.images[g].resize((thumb, thumb), Image.BILINEAR)
                colour = GREEN if g == r.target else (RED if g in r.hard else (40, 40, 40))
                sheet.paste(colour, (x - 2, y - 2, x + thumb + 2, y + thumb + 2))
                sheet.paste(im, (x, y))
                x += thumb + pad
            x += 2 * pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path
