"""The GPUs pane: every GPU from NVML, polled off the UI thread about once a second."""

from __future__ import annotations

from functools import partial

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from runner.machine.nvml import GpuSnapshot, NoGpu
from runner.watch.info import GpuSource
from runner.watch.sources import process_user

from .messages import GpusUpdated, on_top

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

    def __init__(self, source: GpuSource, owner: Callable[[int], Owner | None] = lambda pid: None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.owner = owner
        self.gpus: list[GpuSnapshot] = []
        self.owners: dict[int, Owner] = {}
        """pid -> (run id, rank) for the processes of our runs, from the last poll."""
        self.users: dict[int, str] = {}
        self.error = ""
        self.seen: dict[int, GpuSnapshot] = {}
        """Every GPU seen since start, by index: one that stops answering stays listed as lost."""

    def compose(self) -> ComposeResult:
        yield Static("reading GPUs…", id="gpu-message")
        table = DataTable(id="gpu-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("#", "GPU", "memory (GiB)", "util", "temp", "power", "processes")
        yield table

    def on_mount(self) -> None:
        # The timer, the worker and its answer belong to the app, not to this pane: activity on a
        # screen under the monitor makes Textual repaint the monitor, and the monitor needs the
        # GPU numbers (NVML memory per rank) to keep coming.
        self.poll()
        self.app.set_interval(POLL_S, self.poll)

    def poll(self) -> None:
        app = self.app  # taken here, on the app's thread: a pane being torn down has no app to find later
        app.run_worker(partial(self._read, app), thread=True, exclusive=True, group="gpu-poll")

    def _read(self, app) -> None:
        try:
            gpus, error = self.source.snapshot(), ""
        except NoGpu as err:
            gpus, error = [], str(err)
        owners, users = {}, {}
        for p in {p.pid for g in gpus for p in g.processes}:
            if (owner := self.owner(p)) is not None:
                owners[p] = owner
            if (user := process_user(p)) is not None:
                users[p] = user
        app.post_message(GpusUpdated(gpus, error, owners, users))  # a closed app just drops it

    @property
    def lost(self) -> list[GpuSnapshot]:
        """GPUs seen earlier that the last poll did not return (fallen off the bus, reset, …)."""
        present = {g.index for g in self.gpus}
        return [g for i, g in sorted(self.seen.items()) if i not in present]

    def absorb(self, message: GpusUpdated) -> None:
        """A poll's answer (the app hands it over): keep it, and show it when on top."""
        self.gpus, self.error, self.owners, self.users = message.gpus, message.error, message.owners, message.users
        self.seen.update({g.index: g for g in message.gpus})
        if not on_top(self):
            return  # under the monitor: keep the numbers (it reads them), paint when back on top
        note = self.query_one("#gpu-message", Static)
        table = self.query_one("#gpu-table", DataTable)
        if message.error:
            note.update(f"{message.error}\nThe planner asks for a GPU type instead (Planner tab).")
            note.display, table.display = True, False
            return
        note.display, table.display = False, True
        rows = sorted(
            [self._row(g) for g in message.gpus] + [self._lost_row(g) for g in self.lost], key=lambda r: int(r[0])
        )
        if table.row_count != len(rows):
            table.clear()
            for i, row in enumerate(rows):
                table.add_row(*row, key=str(i))
            return
        for i, row in enumerate(rows):
            for col, value in enumerate(row):
                if table.get_cell_at((i, col)) != value:  # unchanged cells cost no repaint
                    table.update_cell_at((i, col), value, update_width=True)

    def _row(self, g: GpuSnapshot) -> tuple:
        power = "n/a" if g.power_w is None else f"{g.power_w:.0f}/{_value(g.power_limit_w, '{:.0f}')}W"
        procs = []
        for p in g.processes:
            owner = self.owners.get(p.pid)
            mem = "" if p.used_bytes is None else f" {p.used_bytes / GIB:.1f}G"
            user = f" {self.users[p.pid]}" if p.pid in self.users else ""
            label = "" if owner is None else (f" r{owner[1]}" if owner[1] is not None else "") + f" {owner[0]}"
            procs.append(f"{p.pid}{user}{mem}{label}")
        return (
            str(g.index),
            g.name.replace("NVIDIA ", ""),
            memory_bar(g.memory_used, g.memory_total),
            _value(g.utilization, "{}%"),
            _value(g.temperature, "{}°C"),
            power,
            ", ".join(procs) or "-",
        )

    @staticmethod
    def _lost_row(g: GpuSnapshot) -> tuple:
        lost = Text("lost", style="bold red")
        return (
            str(g.index),
            g.name.replace("NVIDIA ", ""),
            Text("not answering NVML", style="red"),
            lost,
            "-",
            "-",
            Text("see nvidia-smi, dmesg", style="red"),
        )
