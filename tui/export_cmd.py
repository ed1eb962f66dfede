"""`ftui export RUN`: the trained model (or its adapter) as files other tools load."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from runner.rundir.runs import RunDir

from .errors import CliError
from .logs_cmd import locate

EPILOG = """examples:
  ftui export tiny-demo                        the adapter alone (LoRA/QLoRA) or the model, into RUN/export
  ftui export tiny-demo --merge --dtype bf16   the adapter merged into its 16-bit base
  ftui export tiny-demo --checkpoint 40 --out ~/models/demo-40
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's model or adapter, or merge the adapter into its base",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ref", metavar="RUN")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="export checkpoint-STEP instead of the final model")
    p.add_argument(
        "--merge", action="store_true", help="merge a LoRA/QLoRA adapter into its base (QLoRA: the 16-bit base)"
    )
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="weights dtype (default bf16)")
    p.add_argument("--out", type=Path, help="output directory (default RUN/export[-merged][-STEP])")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(run=run)


def default_out(run: RunDir, merge: bool, checkpoint: int | None) -> Path:
    name = "export" + ("-merged" if merge else "") + (f"-{checkpoint}" if checkpoint is not None else "")
    return run.path / name


def run(args: argparse.Namespace) -> int:
    target = locate(args.run_ref, args.runs_dir)
    if not isinstance(target, RunDir):
        raise CliError(f"{args.run_ref} is another tool's run; ftui exports the runs it trained")
    out = (args.out or default_out(target, args.merge, args.checkpoint)).expanduser().resolve()
    argv = [sys.executable, "-m", "runner.train.export", "--run-dir", str(target.path), "--out", str(out)]
    argv += ["--dtype", args.dtype] + (["--merge"] if args.merge else [])
    if args.checkpoint is not None:
        argv += ["--checkpoint", str(args.checkpoint)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ftui: error: ")]
        if lines:
            raise CliError(lines[-1].removeprefix("ftui: error: "))
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise CliError(f"export of {target.id} failed:\n{tail}")
    files = json.loads(done.stdout.strip().splitlines()[-1])["files"]
    print(f"exported {target.id} to {out}: {', '.join(files)}")
    return 0
