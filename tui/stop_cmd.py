"""`ftui stop RUN`: checkpoint and exit; a second stop kills the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.launch.slurm import recorded_grace
from runner.rundir.runs import RunError, request_stop
from runner.watch.foreign import ForeignRun
from runner.watch.locate import processes_using

from .app_cmd import add_watch_option
from .errors import CliError
from .logs_cmd import find

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
    add_watch_option(p, "find")
    p.set_defaults(run=run)


def foreign_stop_message(run: ForeignRun) -> str:
    """Why ftui cannot stop another tool's run, and how to: the processes that use its directory, if visible."""
    head = (
        f"ftui cannot stop {run.id}: it is a {run.tool} run in {run.path} that ftui did not launch, so ftui "
        "has no way to ask it to save and exit. Stop it where it was started (Ctrl-C in its terminal)"
    )
    procs = processes_using(run.path)
    if not procs:
        return (
            f"{head}. No process of yours has files open there or names it: it may have ended already, "
            "or runs as another user or in another container."
        )
    listed = "\n".join(f"  {p.pid}  {p.command}" for p in procs[:10])
    pids = " ".join(str(p.pid) for p in procs[:10])
    return (
        f"{head}, or signal its processes: `kill {pids}` (what it had not saved in a checkpoint-N/ is lost):\n{listed}"
    )


def run(args: argparse.Namespace) -> int:
    target = find(args, "stop")
    if isinstance(target, ForeignRun):
        raise CliError(foreign_stop_message(target))
    try:
        outcome = request_stop(target)
    except RunError as err:
        raise CliError(str(err)) from None
    job_id, _ = target.job()
    if outcome == "requested" and job_id is not None:
        grace = recorded_grace(target.launches())
        print(
            f"asked {target.id} to save a checkpoint and stop after its current step; Slurm job {job_id} "
            f"ends {grace} s after the request even if it does not; `ftui stop {target.id}` again cancels it now"
        )
    elif outcome == "requested":
        print(
            f"asked {target.id} to save a checkpoint and stop after its current step; "
            f"`ftui stop {target.id}` again kills it now"
        )
    elif outcome == "cancelled":
        print(f"cancelled Slurm job {job_id} of {target.id} before it started")
    elif job_id is not None:
        print(f"cancelled Slurm job {job_id} of {target.id} (scancel)")
    else:
        print(f"killed {target.id}")
    return 0
