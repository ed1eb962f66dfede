"""The runs tab (placeholder; replaced by the runs table with actions)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from runner.sources import RunSource

from .messages import OpenRun


class RunsTab(Vertical):
    BINDINGS = [Binding("enter", "open", "open")]

    def __init__(self, source: RunSource, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source

    def compose(self) -> ComposeResult:
        table = DataTable(id="runs-table", cursor_type="row")
        table.add_columns("run", "state", "step", "loss")
        yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for r in self.source.runs():
            table.add_row(r.id, r.state, f"{r.step}/{r.total_steps}", f"{r.loss}", key=r.id)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.post_message(OpenRun(str(event.row_key.value)))
