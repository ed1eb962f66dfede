"""`ftui logs RUN [-f]`: the run's log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.rundir.runs import RunError, default_runs_dir, find_run

from . import follow
from .errors import CliError

EPILOG = """examples:
  ftui logs tiny-demo-20261122-101500        the whole log
  ftui logs tiny-demo -f                      follow it (a unique prefix of the id is enough)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "logs", help="show a run's log", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_ref", metavar="RUN", help="run id, id prefix, or run directory")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(run=run)


def locate(ref: str, runs_dir: Path | None):
    try:
        return find_run(ref, [runs_dir or default_runs_dir()])
    except RunError as err:
        raise CliError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    target = locate(args.run_ref, args.runs_dir)
    if args.follow:
        return follow.follow_log(target)
    if not target.log.exists():
        print(f"{target.id} has no log yet", file=sys.stderr)
        return 0
    with open(target.log, "rb") as fh:
        sys.stdout.write(fh.read().decode("utf-8", errors="replace"))
    return 0
