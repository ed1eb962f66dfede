"""`ftui eval RUN` (see tui.serve_cmds)."""

from .serve_cmds import add_eval_parser as add_parser

__all__ = ["add_parser"]
