"""Messages workers post to the app (workers never touch widgets), and when a widget may paint them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message
from textual.widget import Widget

from runner.machine.nvml import GpuSnapshot


class GpusUpdated(Message):
    """A new GPU snapshot (or why there is none)."""

    def __init__(
        self,
        gpus: list[GpuSnapshot],
        error: str = "",
        owners: dict[int, tuple[str, int | None]] | None = None,
        users: dict[int, str] | None = None,
    ) -> None:
        super().__init__()
        self.gpus = gpus
        self.error = error
        self.owners = owners or {}
        """pid -> (run id, rank) of the processes that belong to our runs."""
        self.users = users or {}
        """pid -> login name, where the process is visible here (not for other containers' pids)."""

    def can_replace(self, message: Message) -> bool:  # only the newest snapshot matters
        return isinstance(message, GpusUpdated)


@dataclass
class RunData:
    records: list[dict[str, Any]]
    log_lines: list[str]


class OpenRun(Message):
    """Ask the app to open the monitor on a run."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


def on_top(widget: Widget) -> bool:
    """The widget's screen is the app's current one; False while the app is shutting down (no
    screens left), when a poll's late answer must not paint."""
    stack = widget.app.screen_stack
    return bool(stack) and stack[-1] is widget.screen
