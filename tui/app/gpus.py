"""The GPUs pane: every GPU from NVML, polled off the UI thread about once a second."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from runner.nvml import GpuSnapshot, NoGpu
from runner.sources import GpuSource

from .messages import GpusUpdated

GIB = 2**30
Owner = tuple[str, "int | None"]
POLL_S = 1.0


def memory_bar(used: int | None, total: int, width: int = 10) -> Text:
    """`███████░░░ 56.1/80.0` coloured by how full the GPU is."""
    if used is None:
        return Text(f"{'?' * width} ?/{total / GIB:.0f}")
    share = min(1.0, used / total) if total else 0.0
    filled = round(share * width)
    colour = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
    return Text.assemble(
        ("█" * filled, colour), ("░" * (width - filled), "grey35"), f" {used / GIB:.1f}/{total / GIB:.0f}"
    )


def _value(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


class GpuPane(Vertical):
    """A table of GPUs, or a plain panel when there is none."""

    DEFAULT_CSS = ""

    def __init__(self, source: GpuSource, owner: Callable[[int], Owner | None] = lambda pid: None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.owner = owner
        self.gpus: list[GpuSnapshot] = []
        self.owners: dict[int, Owner] = {}
        """pid -> (run id, rank) for the processes of our runs, from the last poll."""
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Static("reading GPUs…", id="gpu-message")
        table = DataTable(id="gpu-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("#", "GPU", "memory (GiB)", "util", "temp", "power", "processes")
        yield table

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(POLL_S, self.poll)

    def poll(self) -> None:
        self.run_worker(self._read, thread=True, exclusive=True, group="gpu-poll")

    def _read(self) -> None:
        try:
            gpus, error = self.source.snapshot(), ""
        except NoGpu as err:
            gpus, error = [], str(err)
        owners = {}
        for p in {p.pid for g in gpus for p in g.processes}:
            if (owner := self.owner(p)) is not None:
                owners[p] = owner
        self.post_message(GpusUpdated(gpus, error, owners))

    def on_gpus_updated(self, message: GpusUpdated) -> None:
        self.gpus, self.error, self.owners = message.gpus, message.error, message.owners
        note = self.query_one("#gpu-message", Static)
        table = self.query_one("#gpu-table", DataTable)
        if message.error:
            note.update(f"{message.error}\nThe planner asks for a GPU type instead (Planner tab).")
            note.display, table.display = True, False
            return
        note.display, table.display = False, True
        rows = [self._row(g) for g in message.gpus]
        if table.row_count != len(rows):
            table.clear()
            for i, row in enumerate(rows):
                table.add_row(*row, key=str(i))
            return
        for i, row in enumerate(rows):
            for col, value in enumerate(row):
                table.update_cell_at((i, col), value, update_width=True)

    def _row(self, g: GpuSnapshot) -> tuple:
        power = "n/a" if g.power_w is None else f"{g.power_w:.0f}/{_value(g.power_limit_w, '{:.0f}')}W"
        procs = []
        for p in g.processes:
            owner = self.owners.get(p.pid)
            mem = "" if p.used_bytes is None else f" {p.used_bytes / GIB:.1f}G"
            label = "" if owner is None else (f" r{owner[1]}" if owner[1] is not None else "") + f" {owner[0]}"
            procs.append(f"{p.pid}{mem}{label}")
        return (
            str(g.index),
            g.name.replace("NVIDIA ", ""),
            memory_bar(g.memory_used, g.memory_total),
            _value(g.utilization, "{}%"),
            _value(g.temperature, "{}°C"),
            power,
            ", ".join(procs) or "-",
        )
