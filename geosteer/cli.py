"""The `geosteer` command line: one subcommand per task.

    geosteer --version
    geosteer demo [--out geosteer-demo] [--quick]
    geosteer eval [--split S ...] [--seed N ...] [--json out.json] [--model demo]
    geosteer train-demo [--out DIR] [--minutes M] [--seed S]

Each subcommand is registered in `COMMANDS` by a function that adds its
parser and sets `func` (called with the parsed namespace, returns the exit
status); heavy imports happen only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _add_train_demo(sub: argparse._SubParsersAction) -> None:
    from geosteer import train_demo

    p = sub.add_parser(
        "train-demo",
        help="train the demo model's image tower on GeoShapes (CPU, minutes)",
        description=train_demo.__doc__.split("\n\n")[0],
    )
    train_demo.add_arguments(p)
    p.set_defaults(func=train_demo.run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from geosteer import demo

    p = sub.add_parser(
        "demo",
        help="offline demo: index GeoShapes, compare methods, write an HTML page (top-5 before/after)",
        description=demo.__doc__.split("\n\n")[1],
    )
    demo.add_demo_arguments(p)
    p.set_defaults(func=demo.run_demo)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from geosteer import demo

    p = sub.add_parser(
        "eval",
        help="R@1 / R@5 / nDCG@10 of every method on GeoShapes splits (--json writes them)",
        description=demo.__doc__.split("\n\n")[2],
    )
    demo.add_eval_arguments(p)
    p.set_defaults(func=demo.run_eval)


#: name -> adds its subparser (with `func` set). Later commands append here.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "demo": _add_demo,
    "eval": _add_eval,
    "train-demo": _add_train_demo,
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
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
