"""Helpers shared by the app's pilot and snapshot tests: a hand-moved clock, a wait that lets the
app's workers run, and an app built on fake NVML and a replayed run."""

from __future__ import annotations

import asyncio

from textual.widgets import Static

from runner.machine.fake_nvml import FakeNvml
from runner.watch.replay import ReplayRunSource
from runner.watch.sources import NvmlGpuSource
from tui.app.app import FtuiApp
from tui.demo import RECORDING


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def until(pilot, condition, timeout: float = 10.0, what: str = "condition", state=None) -> None:
    """Let the app run until `condition()` holds (workers and timers do the work).

    A plain sleep, not `pilot.pause`: the pause forces a full repaint each time, and polling with it
    keeps the event loop busy painting instead of running the app."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f" ({state()})" if state else ""))
        await asyncio.sleep(0.02)


def text_of(app, selector: str) -> str:
    widget = app.screen.query_one(selector, Static)
    return str(widget.render())


def make_app(scenario: str = "none", runs=None, clock=None, **kwargs) -> FtuiApp:
    clock = clock or Clock()
    runs = runs if runs is not None else ReplayRunSource(RECORDING, clock=clock)
    return FtuiApp(NvmlGpuSource(FakeNvml(scenario)), runs, clock=clock, **kwargs)


def replay_app(
    scenario: str = "8xh100", recording=RECORDING, clock: Clock | None = None, monitor: bool = True, **kwargs
) -> tuple[FtuiApp, ReplayRunSource, Clock]:
    """An app on a replayed run, opened on its monitor unless `monitor` is false; the replay starts
    at the clock's time when this is called."""
    clock = clock or Clock()
    runs = ReplayRunSource(recording, clock=clock)
    if monitor:
        kwargs.setdefault("open_run", runs.run_id)
    return make_app(scenario, runs=runs, clock=clock, **kwargs), runs, clock
