"""`ftui chat RUN` and `ftui eval RUN`: talk to a trained run, and measure it on held-out data."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from runner.rundir.runs import RunDir

from .errors import CliError
from .logs_cmd import locate

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a trained run (--prompt TEXT answers once)",
        epilog="examples:\n  ftui chat tiny-demo\n  ftui chat tiny-demo --prompt 'Give three tips' --compare\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ref", metavar="RUN")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="talk to checkpoint-STEP instead of the final model")
    p.add_argument("--prompt", help="answer this one message, print the answer and exit")
    p.add_argument("--compare", action="store_true", help="answer with the base model too, side by side")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(run=run_chat)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="held-out loss, perplexity and sample generations of a trained run",
        epilog="examples:\n  ftui eval tiny-demo\n  ftui eval tiny-demo --data held_out.jsonl --samples 5\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ref", metavar="RUN")
    p.add_argument("--checkpoint", type=int, metavar="STEP")
    p.add_argument("--data", type=Path, help="a file of examples (default: the split the run held out)")
    p.add_argument("--samples", type=int, default=3, help="sample generations beside their references")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(run=run_eval)


def _target(args) -> RunDir:
    target = locate(args.run_ref, args.runs_dir)
    if not isinstance(target, RunDir):
        raise CliError(f"{args.run_ref} is another tool's run; ftui serves the runs it trained")
    return target


def _argv(what: str, target: RunDir, args) -> list[str]:
    argv = [sys.executable, "-m", "runner.train.serve", what, "--run-dir", str(target.path)]
    argv += ["--max-new-tokens", str(args.max_new_tokens)]
    if args.checkpoint is not None:
        argv += ["--checkpoint", str(args.checkpoint)]
    return argv


def _error(done: subprocess.CompletedProcess, what: str, target: RunDir) -> CliError:
    lines = [line for line in (done.stderr or "").splitlines() if line.startswith("ftui: error: ")]
    if lines:
        return CliError(lines[-1].removeprefix("ftui: error: "))
    tail = "\n".join((done.stderr or "").strip().splitlines()[-5:])
    return CliError(f"{what} of {target.id} failed:\n{tail}")


def run_chat(args: argparse.Namespace) -> int:
    target = _target(args)
    argv = _argv("chat", target, args) + ["--temperature", str(args.temperature)]
    argv += ["--compare"] if args.compare else []
    if args.prompt is None:  # interactive: the terminal goes to the model's process
        return subprocess.call(argv, cwd=PACKAGE_ROOT)
    done = subprocess.run(argv + ["--prompt", args.prompt], capture_output=True, text=True, cwd=PACKAGE_ROOT)
    if done.returncode != 0:
        raise _error(done, "chat", target)
    print(done.stdout.rstrip())
    return 0


def run_eval(args: argparse.Namespace) -> int:
    target = _target(args)
    argv = _argv("eval", target, args) + ["--samples", str(args.samples)]
    if args.data is not None:
        argv += ["--data", str(args.data.expanduser().resolve())]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=PACKAGE_ROOT)
    if done.returncode != 0:
        raise _error(done, "eval", target)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{target.id}: loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f} on {result['examples']} "
        f"examples ({result['tokens']} answer tokens) of {result['source']}; saved to {target.path / 'eval.json'}"
    )
    for i, s in enumerate(result["samples"], 1):
        print(f"\n[{i}] prompt:    {s['prompt'][:200]}")
        print(f"    reference: {s['reference'][:200]}\n    generated: {s['generated'][:200]}")
    return 0
