"""A run's log, followed live (the last lines first, then whatever is appended)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from runner.watch.info import RunSource

POLL_S = 0.5


class LogScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "back"), Binding("q", "app.quit", "quit")]

    def __init__(self, source: RunSource, run_id: str) -> None:
        super().__init__()
        self.source = source
        self.run_id = run_id
        self.tail = source.tail(run_id)

    def compose(self) -> ComposeResult:
        yield Static(f" log of {self.run_id}  (follows new lines; esc to go back)", id="log-header")
        yield Log(id="log-body", max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(POLL_S, self.poll)

    def poll(self) -> None:
        self.run_worker(self._read, thread=True, exclusive=True, group="log-poll")

    def _read(self) -> None:
        lines = self.tail.new_log_lines()
        if lines:
            self.app.call_from_thread(self.query_one(Log).write_lines, lines)
