"""`ftui logs RUN [-f]`: the run's log (another tool's run: its text log, or its records)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from runner.rundir.runs import RunDir, RunError, default_runs_dir
from runner.watch import foreign
from runner.watch.foreign import ForeignRun
from runner.watch.locate import locate as locate_run

from . import follow
from .app_cmd import add_watch_option, watch_dirs
from .errors import CliError

EPILOG = """examples:
  ftui logs tiny-demo-20261122-101500        the whole log
  ftui logs tiny-demo -f                      follow it (a unique prefix of the id is enough)
  ftui logs saves/llama3-lora                 another tool's run: its running_log.txt, or its records
  ftui logs hf:out --watch experiments        by the id `ftui runs --watch experiments` lists
"""

POLL_S = 0.5
"""How often `-f` looks at another tool's files (they only grow: nothing to await but their size)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "logs", help="show a run's log", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_ref", metavar="RUN", help="run id, id prefix, or run directory (ftui's or another tool's)")
    p.add_argument("-f", "--follow", action="store_true", help="follow the run live until it ends (ctrl-c detaches)")
    p.add_argument("--raw", action="store_true", help="with -f: print the log itself rather than the live view")
    p.add_argument("--runs-dir", type=Path)
    add_watch_option(p, "find")
    p.set_defaults(run=run)


def find(args: argparse.Namespace, command: str) -> RunDir | ForeignRun:
    """The run RUN names: ftui's, or another tool's (found under --watch, or by its directory)."""
    root = getattr(args, "runs_dir", None) or default_runs_dir()
    try:
        return locate_run(args.run_ref, [root], watch_dirs(args), command=command)
    except RunError as err:
        raise CliError(str(err)) from None


def locate(ref: str, runs_dir: Path | None, command: str = "resume") -> RunDir:
    """One of ftui's runs; another tool's is a CliError saying ftui cannot act on it."""
    run = find(argparse.Namespace(run_ref=ref, runs_dir=runs_dir, watch=[]), command)
    if isinstance(run, ForeignRun):
        raise CliError(
            f"ftui cannot {command} {run.id}: it is a {run.tool} run in {run.path} that ftui did not launch; "
            f"{command} it with the tool that started it"
        )
    return run


def run(args: argparse.Namespace) -> int:
    target = find(args, "logs")
    if isinstance(target, ForeignRun):
        return foreign_log(target, args.follow)
    if args.follow:
        return follow.attach(target, raw=args.raw)
    if not target.log.exists():
        print(f"{target.id} has no log yet", file=sys.stderr)
        return 0
    with open(target.log, "rb") as fh:
        sys.stdout.write(fh.read().decode("utf-8", errors="replace"))
    return 0


# --- another tool's run -------------------------------------------------------------------------------------------

FIELDS = (
    ("loss", "loss", "{:.4f}"),
    ("eval_loss", "eval_loss", "{:.4f}"),
    ("lr", "lr", "{:.2e}"),
    ("grad_norm", "grad_norm", "{:.3f}"),
    ("epoch", "epoch", "{:.2f}"),
    ("tokens_per_s", "tok/s", "{:,.0f}"),
)


def format_record(record: dict) -> str:
    """One record as a log line: `step 10/100  loss 1.9000  lr 4.50e-05 ...` (only the values it has)."""
    total = record.get("total_steps")
    parts = [f"step {record['step']}" + (f"/{total}" if total else "")]
    for key, name, fmt in FIELDS:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{name} {fmt.format(value)}")
        elif isinstance(value, float):
            parts.append(f"{name} {value}")  # nan / inf as they are: the run diverged
    return "  ".join(parts)


def foreign_log(run: ForeignRun, keep_following: bool) -> int:
    """Another tool's text log when it writes one (LLaMA-Factory's running_log.txt), else its records, one a line."""
    log = foreign.text_log(run)
    if log is None:
        print(f"-- {run.id}: {run.tool} writes no text log here; its records from {run.file.name}:", file=sys.stderr)
    tail = foreign.ForeignTail(run)
    offset = 0
    while True:
        offset = _print_text(log, offset) if log else _print_records(tail)
        state = foreign.info(run, time.time()).state
        if not keep_following or state != "running":
            if keep_following:
                print(f"-- {run.id} is {state}", file=sys.stderr)
            return 0
        try:
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            print(f"\n-- detached; {run.id} goes on", file=sys.stderr)
            return 0


def _print_text(log: Path, offset: int) -> int:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    sys.stdout.write(data.decode("utf-8", errors="replace"))
    sys.stdout.flush()
    return offset + len(data)


def _print_records(tail: foreign.ForeignTail) -> int:
    for record in tail.new_records():
        print(format_record(record))
    sys.stdout.flush()
    return 0
