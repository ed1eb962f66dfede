"""The `ftui` command: one entry point, one module per subcommand.

Only the chosen subcommand's module is imported (with what it needs): `ftui plan` never loads the runner,
YAML or textual. The other subcommands appear in the parser as stubs that carry just their name and help
line, enough for `ftui --help` and for argparse's "invalid choice" message.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from . import app_cmd
from .errors import CliError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors, with a pointer to --help
        self.exit(2, f"ftui: error: {message}\n(see `{self.prog} --help`)\n")


COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("tui.plan_cmd", "dry-run memory and throughput plan"),
    "gpus": ("tui.gpus_cmd", "the local NVIDIA GPUs, from NVML"),
    "train": ("tui.train_cmd", "launch a training run from a recipe (detached)"),
    "runs": ("tui.runs_cmd", "list runs with status, step, loss and ETA"),
    "monitor": ("tui.app_cmd", "live view of one run (loss chart, speed, ETA, memory, log)"),
    "logs": ("tui.logs_cmd", "show a run's log"),
    "stop": ("tui.stop_cmd", "stop a run gracefully (a second stop kills it)"),
    "resume": ("tui.resume_cmd", "resume a stopped or dead run from its newest complete checkpoint"),
    "recipes": ("tui.recipes_cmd", "list the shipped recipes, or show one"),
    "export": ("tui.export_cmd", "export a run's model or adapter, or merge the adapter into its base"),
    "chat": ("tui.chat_cmd", "chat with a trained run (--prompt TEXT answers once)"),
    "eval": ("tui.eval_cmd", "held-out loss, perplexity and sample generations of a trained run"),
}
"""Subcommand -> (module whose `add_parser(sub)` builds it, its help line in `ftui --help`)."""

ALL = "*"
"""build_parser(ALL): every subcommand fully built (imports every subcommand module)."""


def build_parser(command: str | None = ALL) -> argparse.ArgumentParser:
    """The `ftui` parser with `command` fully built (ALL: every one) and the others as stubs."""
    parser = _Parser(
        prog="ftui",
        description="Fine-tune large language models from the terminal: plan memory, "
        "run detached training, watch it live.",
    )
    app_cmd.add_app_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_line) in COMMANDS.items():
        if command in (ALL, name):
            importlib.import_module(module).add_parser(sub)
            _keep_top_level_values(parser, sub.choices[name])
        else:  # a stub: takes no arguments of its own, so parse_known_args leaves them as extras
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _keep_top_level_values(parser: argparse.ArgumentParser, command: argparse.ArgumentParser) -> None:
    """A subcommand's copy of a top-level option (--runs-dir, --watch) sets nothing unless given after it.

    argparse parses a subcommand's options into a namespace of their own and copies every value over the top-level
    ones, defaults too: `ftui --watch saves runs` would lose --watch without this.
    """
    top = {a.dest for a in parser._actions if a.option_strings}
    for action in command._actions:
        if action.option_strings and action.dest in top and action.dest != "help":
            action.default = argparse.SUPPRESS


def _merge_repeated(parser: argparse.ArgumentParser, before: argparse.Namespace, args: argparse.Namespace) -> None:
    """A repeatable option given both before and after the subcommand keeps every value, the top-level ones first."""
    for action in parser._actions:
        if isinstance(action, argparse._AppendAction):
            early, late = getattr(before, action.dest, None) or [], getattr(args, action.dest, None) or []
            if early and late != early:
                setattr(args, action.dest, [*early, *late])


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Find the subcommand with a parser of stubs, then parse `argv` for real with only that one built."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:  # `ftui plan ...`: no top-level option to carry over, no stub pass
        return build_parser(argv[0]).parse_args(argv)
    top = build_parser(None)
    chosen, _ = top.parse_known_args(argv)  # top-level errors and --help end here, as before
    args = build_parser(chosen.command).parse_args(argv)
    _merge_repeated(top, chosen, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command is None:
            return app_cmd.run_app(args)
        return args.run(args)
    except CliError as err:
        print(f"ftui: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ftui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # a bug: say so plainly, keep the traceback for those who ask
        if os.environ.get("FTUI_DEBUG"):
            raise
        print(
            f"ftui: internal error: {type(err).__name__}: {err}\n"
            "This is a bug in ftui; rerun with FTUI_DEBUG=1 for the traceback and report it.",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
