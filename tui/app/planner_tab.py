"""The planner tab (placeholder; replaced by the interactive planner)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class PlannerTab(Vertical):
    def __init__(self, launcher=None, gpus=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.launcher = launcher
        self.gpus = gpus

    def compose(self) -> ComposeResult:
        yield Static("planner")
