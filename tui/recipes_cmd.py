"""`ftui recipes [show NAME]`: the shipped recipes."""

from __future__ import annotations

import argparse
import sys

from recipes import find_recipe, header, shipped

from .errors import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the shipped recipes, or show one",
        epilog="examples:\n  ftui recipes\n  ftui recipes show tiny-demo > my.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=("show",))
    p.add_argument("name", nargs="?")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        path = find_recipe(args.name or "")
        if path is None:
            raise CliError(f"no shipped recipe {args.name!r}; names: {', '.join(p.stem for p in shipped())}")
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    for path in shipped():
        lines = header(path)
        print(f"{path.stem:24} {lines[0] if lines else ''}")
    return 0
