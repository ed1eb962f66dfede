"""The ftui app: GPUs, planner and runs tabs; a run monitor pushed on top.

It takes its data sources and clock as arguments (runner.sources), so the same app shows live
NVML and run directories, a fake NVML scenario, or a recorded run replayed for tests and demos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, TabbedContent, TabPane

from runner.sources import GpuSource, RunSource

from .gpus import GpuPane
from .messages import OpenRun
from .monitor import MonitorScreen
from .planner_tab import PlannerTab
from .runs_tab import RunsTab

Launcher = Callable[[Path], str]
"""Starts a run from a recipe file and returns its run id (runner.lifecycle by default)."""


class FtuiApp(App):
    CSS_PATH = "ftui.tcss"
    TITLE = "ftui"
    BINDINGS = [
        Binding("g", "show_tab('gpus')", "GPUs"),
        Binding("p", "show_tab('planner')", "planner"),
        Binding("r", "show_tab('runs')", "runs"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, gpus: GpuSource, runs: RunSource, *, clock: Callable[[], float] = time.time,
                 open_run: str | None = None, launcher: Launcher | None = None, initial_tab: str = "gpus") -> None:
        super().__init__()
        self.gpu_source = gpus
        self.run_source = runs
        self.clock = clock
        self.open_run = open_run
        self.launcher = launcher
        self.initial_tab = initial_tab

    def compose(self) -> ComposeResult:
        with TabbedContent(initial=self.initial_tab):
            with TabPane("GPUs [g]", id="gpus"):
                yield GpuPane(self.gpu_source, owner=self.owner_label, id="gpu-pane")
            with TabPane("Planner [p]", id="planner"):
                yield PlannerTab(launcher=self.launcher, gpus=self.gpu_source, id="planner-tab")
            with TabPane("Runs [r]", id="runs"):
                yield RunsTab(self.run_source, id="runs-tab")
        yield Footer()

    def on_mount(self) -> None:
        if self.open_run:
            self.show_run(self.open_run)

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_open_run(self, message: OpenRun) -> None:
        self.show_run(message.run_id)

    def show_run(self, run_id: str) -> None:
        self.push_screen(MonitorScreen(self.run_source, run_id, gpu_util=self.gpu_util,
                                       gpu_used=lambda: self.gpu_used(run_id)))

    # --- what the GPU pane knows, for the monitor --------------------------------------------

    def owner_label(self, pid: int) -> str | None:
        owner = self.run_source.owner(pid)
        if owner is None:
            return None
        run_id, rank = owner
        return f"{run_id}" + (f" r{rank}" if rank is not None else "")

    def gpu_util(self) -> float | None:
        gpus = self.query_one(GpuPane).gpus
        utils = [g.utilization for g in gpus if g.utilization is not None]
        return sum(utils) / len(utils) if utils else None

    def gpu_used(self, run_id: str) -> dict[str, float]:
        """NVML memory of the run's processes, by rank."""
        out: dict[str, float] = {}
        for g in self.query_one(GpuPane).gpus:
            for p in g.processes:
                owner = self.run_source.owner(p.pid)
                if owner and owner[0] == run_id and owner[1] is not None and p.used_bytes is not None:
                    out[str(owner[1])] = p.used_bytes / 2**30
        return out
