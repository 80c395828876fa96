"""The `geosteer` command line: one subcommand per task.

    geosteer --version
    geosteer demo [--out geosteer-demo] [--quick]
    geosteer eval [--split S ...] [--seed N ...] [--json out.json] [--model demo]
    geosteer eval --bench sugarcrepe|aro|winoground|clevr --root PATH [--limit N] [--json out.json] [--model demo]
    geosteer train-demo [--out DIR] [--minutes M] [--seed S]
    geosteer index IMAGES_DIR --out INDEX [--model demo] [--regions grid] [--max-regions 16] [--batch-size 64]
    geosteer search INDEX QUERY [QUERY ...] [-k 10] [--method rerank] [--json] [--html out.html]
    geosteer serve INDEX [--host 127.0.0.1] [--port 8000] [--method rerank] [--compile]
    geosteer photos OUT_DIR [--queries 10] [--seed 100]

Each subcommand is registered in `COMMANDS` by a function that adds its
parser and sets `func` (called with the parsed namespace, returns the exit
status); heavy imports happen only when a command runs.

A command checks its arguments and output paths before it loads a model or
does any work; a bad one is one line on stderr, `geosteer <command>: error:
<message naming it>`, and exit status 2 (as argparse's own errors). A
`geosteer.commands.args.UsageError` that a command lets escape is printed
the same way. A command whose library work raises `ValueError` on bad data
(`geosteer index`, `geosteer search`: NaN regions in an index, say) catches
it around that work and prints it as one line too, exit status 2 (1 for a
corrupt or outdated index, `StoreError`). Any other exception is a bug and
keeps its traceback. Bare `geosteer` (no command) prints the help on stderr
and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable


def _subcommand(name: str, module: str, help: str, doc_part: int, add_arguments: str, run: str):
    """An adder for `COMMANDS`: imports `module` only when the parser is built."""

    def add(sub: argparse._SubParsersAction) -> None:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help, description=mod.__doc__.split("\n\n")[doc_part])
        getattr(mod, add_arguments)(p)
        p.set_defaults(func=getattr(mod, run))

    return add


#: name -> adds its subparser (with `func` set). Later commands append here.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "demo": _subcommand(
        "demo", "geosteer.geoshapes.commands", "offline demo: index GeoShapes, compare methods, write an HTML page (top-5 before/after)",
        1, "add_demo_arguments", "run_demo",
    ),
    "eval": _subcommand(
        "eval", "geosteer.geoshapes.commands", "R@1 / R@5 / nDCG@10 of every method on GeoShapes splits; --bench NAME --root PATH: "
        "SugarCrepe / ARO / Winoground / CLEVR from your local copy (--json writes them)",
        2, "add_eval_arguments", "run_eval",
    ),
    "index": _subcommand(
        "index", "geosteer.commands.index", "index a folder of your images on disk (resumable; progress, summary)",
        1, "add_index_arguments", "run_index",
    ),
    "search": _subcommand(
        "search", "geosteer.commands.search", "search an index: cosine vs re-ranked top-k (table, --json, --html)",
        1, "add_search_arguments", "run_search",
    ),
    "serve": _subcommand(
        "serve", "geosteer.commands.serve",
        "search an index from a web page (cosine vs re-ranked, matched regions drawn); 127.0.0.1:8000",
        1, "add_serve_arguments", "run_serve",
    ),
    "photos": _subcommand(
        "photos", "geosteer.commands.photos", "write sample collages of bundled real photos (and their queries) to a folder",
        1, "add_photos_arguments", "run_photos",
    ),
    "train-demo": _subcommand(
        "train-demo", "geosteer.geoshapes.train_demo", "train the demo model's image tower on GeoShapes (CPU, minutes)",
        0, "add_arguments", "run",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="geosteer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `geosteer` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from geosteer import __version__

        print(__version__)
        return 0
    if getattr(args, "func", None) is None:  # no command: a usage error, as argparse's own
        parser.print_help(sys.stderr)
        return 2
    from geosteer.commands.args import UsageError, fail

    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        return fail(args.command, str(e))


if __name__ == "__main__":
    sys.exit(main())
