"""`ftui resume RUN`: relaunch from the newest complete checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.launch.lifecycle import resume_run
from runner.recipe.schema import RecipeError
from runner.rundir.runs import RunError

from . import follow
from .errors import CliError
from .logs_cmd import locate

EPILOG = """examples:
  ftui resume tiny-demo            continue the step count, the metrics and the log
  ftui resume tiny-demo --attach
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resume",
        help="resume a stopped or dead run from its newest complete checkpoint",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ref", metavar="RUN")
    p.add_argument("--attach", action="store_true")
    p.add_argument("--raw", action="store_true", help="with --attach: print the log itself rather than the live view")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = locate(args.run_ref, args.runs_dir)
    try:
        started = resume_run(target)
    except (RunError, RecipeError) as err:
        raise CliError(str(err)) from None
    launch = target.launches()[-1]
    origin = Path(launch["resume_from"]).name if launch.get("resume_from") else "the start (no checkpoint was saved)"
    if started.job_id is not None:
        print(f"resubmitted {target.id} as Slurm job {started.job_id}; it trains from {origin} when it starts")
    else:
        print(f"resumed {target.id} from {origin}")
    if args.attach:
        return follow.attach(target, raw=args.raw)
    return 0 if started else 1
