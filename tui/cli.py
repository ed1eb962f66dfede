"""The `ftui` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from . import app_cmd, gpus_cmd, logs_cmd, plan_cmd, recipes_cmd, resume_cmd, runs_cmd, stop_cmd, train_cmd
from .errors import CliError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors, with a pointer to --help
        self.exit(2, f"ftui: error: {message}\n(see `{self.prog} --help`)\n")


COMMANDS = (plan_cmd, gpus_cmd, train_cmd, runs_cmd, app_cmd, logs_cmd, stop_cmd, resume_cmd, recipes_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ftui",
        description="Fine-tune large language models from the terminal: plan memory, "
        "run detached training, watch it live.",
    )
    app_cmd.add_app_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
