"""`ftui chat RUN` (see tui.serve_cmds)."""

from .serve_cmds import add_chat_parser as add_parser

__all__ = ["add_parser"]
