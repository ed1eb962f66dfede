"""The ftui app: GPUs, planner and runs tabs; a run monitor pushed on top.

It takes its data sources and clock as arguments (runner.watch.sources), so the same app shows live
NVML and run directories, a fake NVML scenario, or a recorded run replayed for tests and demos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import Footer, TabbedContent, TabPane

from runner.watch.info import GpuSource, RunSource

from .gpus import GpuPane
from .launch import Launcher, LaunchScreen
from .messages import GpusUpdated, OpenRun
from .monitor import MonitorScreen
from .plan_form import Detected
from .planner_tab import PlannerTab
from .runs_tab import RunsTab


FOCUS_TARGET = {"planner": "#f-model", "runs": "#runs-table", "gpus": "#gpu-table"}


class FtuiApp(App):
    CSS_PATH = "ftui.tcss"
    TITLE = "ftui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("g", "show_tab('gpus')", "GPUs"),
        Binding("p", "show_tab('planner')", "planner"),
        Binding("r", "show_tab('runs')", "runs"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        gpus: GpuSource,
        runs: RunSource,
        *,
        clock: Callable[[], float] = time.time,
        open_run: str | None = None,
        launcher: Launcher | None = None,
        runs_root: Path | None = None,
        host_ram: Callable[[], int | None] = lambda: None,
        initial_tab: str | None = None,
    ) -> None:
        super().__init__()
        self.gpu_source = gpus
        self.run_source = runs
        self.clock = clock
        self.open_run = open_run
        self.launcher = launcher
        self.runs_root = runs_root or Path.cwd() / "runs"
        self.host_ram = host_ram
        self.initial_tab = initial_tab or ("runs" if open_run else "gpus")
        """Opened on a run's monitor (`ftui monitor RUN`), the tab behind it is Runs: esc lands there."""
        self.gpu_pane = GpuPane(gpus, owner=runs.owner, id="gpu-pane")
        self.planner = PlannerTab(id="planner-tab")

    def compose(self) -> ComposeResult:
        with TabbedContent(initial=self.initial_tab):
            with TabPane("GPUs (g)", id="gpus"):
                yield self.gpu_pane
            with TabPane("Planner (p)", id="planner"):
                yield self.planner
            with TabPane("Runs (r)", id="runs"):
                yield RunsTab(self.run_source, id="runs-tab")
        yield Footer()

    def on_mount(self) -> None:
        self.focus_tab()
        if self.open_run:
            self.show_run(self.open_run)

    async def action_show_tab(self, tab: str) -> None:
        """A tab key leaves the monitor (and a log above it) first: the tab is never switched behind them.

        Dialogs never get here: a modal screen keeps the app's keys to itself."""
        self.screen_stack[0].query_one(TabbedContent).active = tab  # first: no frame shows the old tab
        while len(self.screen_stack) > 1:
            await self.pop_screen()
        self.focus_tab()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.focus_tab()

    def focus_tab(self) -> None:
        """Keys go where the active tab's work is: the model field, the runs table, the GPU table.

        Decided after the refresh that shows the tab (hidden widgets cannot take focus), from the tab
        active then: an earlier request must not pull focus back to a tab the user has left."""
        self.call_after_refresh(self._focus_active_tab)

    def _focus_active_tab(self) -> None:
        try:
            tabs = self.query_one(TabbedContent)
            pane = tabs.get_pane(tabs.active)
            target = pane.query_one(FOCUS_TARGET[tabs.active])
        except (NoMatches, KeyError, ValueError):  # no tab yet, or the app is closing
            return
        focused = self.screen.focused
        if self.screen is not target.screen or (focused is not None and pane in focused.ancestors):
            return  # a dialog is open, or the user is already working in this tab
        target.focus()

    def on_gpus_updated(self, message: GpusUpdated) -> None:
        """The GPU pane shows the GPUs; the planner plans for them, or asks for a type when none."""
        self.gpu_pane.absorb(message)
        gpus = message.gpus
        detected = Detected(gpus[0].name, gpus[0].memory_total_mib, len(gpus), self.host_ram()) if gpus else None
        self.planner.set_detected(detected)

    def on_planner_tab_launch(self, message: PlannerTab.Launch) -> None:
        def launched(run_dir: Path | None) -> None:
            if run_dir is not None:
                run_id = self.run_source.adopt(run_dir)
                self.notify(f"started {run_id}")
                self.show_run(run_id)

        self.push_screen(LaunchScreen(message.outcome, message.typed_model, self.runs_root, self.launcher), launched)

    def on_open_run(self, message: OpenRun) -> None:
        self.show_run(message.run_id)

    def show_run(self, run_id: str) -> None:
        try:
            screen = MonitorScreen(
                self.run_source, run_id, gpu_util=self.gpu_util, gpu_used=lambda: self.gpu_used(run_id)
            )
        except (KeyError, LookupError):
            self.notify(f"no run {run_id!r} here", severity="error")
            return
        self.push_screen(screen, lambda _: self.back_from_run(run_id))

    def back_from_run(self, run_id: str) -> None:
        """esc on the monitor: keys go to the tab behind it, the runs table's cursor on that run."""
        self.screen_stack[0].query_one(RunsTab).highlight(run_id)
        self.focus_tab()

    # --- what the GPU pane knows, for the monitor --------------------------------------------

    def gpu_util(self) -> float | None:
        gpus = self.gpu_pane.gpus
        utils = [g.utilization for g in gpus if g.utilization is not None]
        return sum(utils) / len(utils) if utils else None

    def gpu_used(self, run_id: str) -> dict[str, float]:
        """NVML memory of the run's processes, by rank."""
        out: dict[str, float] = {}
        pane = self.gpu_pane
        for g in pane.gpus:
            for p in g.processes:
                owner = pane.owners.get(p.pid)
                if owner and owner[0] == run_id and p.used_bytes is not None:
                    # a single-process run has no RANK in its environment: it is rank 0
                    out[str(owner[1] if owner[1] is not None else 0)] = p.used_bytes / 2**30
        return out
