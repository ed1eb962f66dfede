"""`ftui stop RUN`: checkpoint and exit; a second stop kills the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.rundir.runs import RunError, request_stop

from .errors import CliError
from .logs_cmd import locate

EPILOG = """examples:
  ftui stop tiny-demo      save a checkpoint at the next step, then exit (resume later)
  ftui stop tiny-demo      again: kill the run's processes now
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stop",
        help="stop a run gracefully (a second stop kills it)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ref", metavar="RUN")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = locate(args.run_ref, args.runs_dir)
    try:
        outcome = request_stop(target)
    except RunError as err:
        raise CliError(str(err)) from None
    if outcome == "requested":
        print(
            f"asked {target.id} to save a checkpoint and stop after its current step; "
            f"`ftui stop {target.id}` again kills it now"
        )
    else:
        print(f"killed {target.id}")
    return 0
