"""The runs tab: every run (ours and other tools') with state, step, loss and ETA.

enter opens the monitor, s stops (after a confirmation), R resumes, l shows the log. The table is
refreshed off the UI thread every couple of seconds and updated in place (the cursor stays put).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from runner.watch.info import RunInfo, RunSource

from .confirm import Confirm
from .messages import OpenRun, on_top
from .monitor import fmt_eta, run_keys, state_style

REFRESH_S = 2.0
COLUMNS = ("run", "tool", "state", "step", "loss", "ETA", "started")


def _row(r: RunInfo) -> tuple:
    step = "-" if r.step is None else f"{r.step}/{r.total_steps or '?'}"
    loss = "-" if r.loss is None else f"{r.loss:.4f}"
    started = time.strftime("%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
    return (
        r.id,
        r.tool,
        Text.assemble(
            (f" {r.state} ", state_style(r.state)), (f" {r.job.removeprefix('job ')}" if r.job else "", "cyan")
        ),
        step,
        loss,
        fmt_eta(r.eta_s) if r.active else "-",
        started,
    )


class RunsTab(Vertical):
    BINDINGS = [
        Binding("enter", "open", "open", show=False),
        Binding("s", "stop", "stop"),
        Binding("R", "resume", "resume"),
        Binding("l", "logs", "logs"),
    ]

    def __init__(self, source: RunSource, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.infos: dict[str, RunInfo] = {}
        self._keys: tuple | None = None
        """The selected run and its keys, as the footer last showed them."""

    def compose(self) -> ComposeResult:
        yield Static("No runs yet. Plan one on the Planner tab (p), or: ftui train RECIPE.yaml", id="runs-empty")
        table = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            table.add_column(column, key=column)
        yield table

    def on_mount(self) -> None:
        self.refresh_runs()
        self.set_interval(REFRESH_S, self._tick)

    def _tick(self) -> None:
        """Re-read the runs only while the list is on screen (not under the monitor, not on
        another tab): reading every run directory is the costliest thing the app does."""
        if on_top(self) and self.is_on_screen:
            self.refresh_runs()

    def on_show(self) -> None:
        self.refresh_runs()

    @work(thread=True, exclusive=True, group="runs")
    def refresh_runs(self) -> None:
        try:
            infos = self.source.runs()
        except OSError as err:  # a runs directory that went away: say so, keep going
            self.app.call_from_thread(self.notify, f"cannot read runs: {err}", severity="error")
            return
        infos.sort(key=lambda r: r.started or 0.0, reverse=True)
        self.app.call_from_thread(self.show, infos)

    def show(self, infos: list[RunInfo]) -> None:
        table = self.query_one(DataTable)
        self.query_one("#runs-empty").display = not infos
        table.display = bool(infos)
        rows = {r.id: _row(r) for r in infos}
        if list(rows) != list(self.infos):
            selected = self.selected()
            table.clear()
            for run_id, row in rows.items():
                table.add_row(*row, key=run_id)
            if selected in rows:
                table.move_cursor(row=list(rows).index(selected))
        else:
            for run_id, row in rows.items():
                for col, value in zip(COLUMNS, row, strict=True):
                    table.update_cell(run_id, col, value, update_width=True)
        self.infos = {r.id: r for r in infos}
        self.keys_changed()

    def highlight(self, run_id: str) -> None:
        """Put the cursor on a run, when it is listed."""
        table = self.query_one(DataTable)
        if run_id in self.infos and table.row_count:
            table.move_cursor(row=table.get_row_index(run_id))

    # --- which keys work (the footer shows those) -------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """No run selected: no run keys. A run of another tool: no stop or resume (ftui knows
        neither its process nor its checkpoints). Ours: stop while it is active, resume after it
        ended early (shown dimmed otherwise)."""
        if action not in ("open", "logs", "stop", "resume"):
            return True
        run_id = self.selected()
        if run_id is None:
            return False
        info = self.infos.get(run_id)
        if action in ("open", "logs") or info is None:
            return True
        return run_keys(info).get(action)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.keys_changed()

    def keys_changed(self) -> None:
        """Refresh the footer when the selected run, or what can be done with it, changed."""
        info = self.infos.get(self.selected() or "")
        keys = (info.id, tuple(run_keys(info).items())) if info else None
        if keys != self._keys:
            self._keys = keys
            self.refresh_bindings()

    def selected(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenRun(str(event.row_key.value)))

    def action_open(self) -> None:
        if (run_id := self.selected()) is not None:
            self.post_message(OpenRun(run_id))

    def action_logs(self) -> None:
        from .logs import LogScreen

        if (run_id := self.selected()) is not None:
            self.app.push_screen(LogScreen(self.source, run_id))

    def action_stop(self) -> None:
        run_id = self.selected()
        if run_id is None:
            return
        info = self.infos.get(run_id)

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop(run_id)

        question = (
            f"{run_id} is already stopping.\nKill its processes now (no checkpoint)?"
            if info is not None and info.state == "stopping"
            else f"Stop {run_id}?\nIt saves a checkpoint, then exits; resume with R."
        )
        self.app.push_screen(Confirm(question), answered)

    @work(thread=True, group="runs-action")
    def _stop(self, run_id: str) -> None:
        try:
            outcome = self.source.stop(run_id)
        except Exception as err:  # RunError and friends: show, never crash
            self.app.call_from_thread(self.notify, str(err), severity="error")
            return
        said = "stopping after the current step" if outcome == "requested" else outcome
        self.app.call_from_thread(self.notify, f"{run_id}: {said}")
        self.refresh_runs()

    def action_resume(self) -> None:
        if (run_id := self.selected()) is not None:
            self._resume(run_id)

    @work(thread=True, group="runs-action")
    def _resume(self, run_id: str) -> None:
        try:
            self.source.resume(run_id)
        except Exception as err:  # RunError, RecipeError, PlanRefused: the message says what to do
            self.app.call_from_thread(self.notify, str(err), severity="error")
            return
        self.app.call_from_thread(self.notify, f"resumed {run_id}")
        self.refresh_runs()
