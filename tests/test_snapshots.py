"""Golden screens of the app at 80x24 (the smallest terminal it supports) and 160x50, on the named
fake-NVML scenarios and the shipped recording at a fixed clock.

The SVGs live in tests/__snapshots__/test_snapshots/. After a deliberate change to what the app
shows, look at the new screens and accept them with `pytest tests/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time

import pytest
from textual.widgets import DataTable, Input

from tui.app.monitor import MonitorScreen

from app_support import Clock, make_app, replay_app, until

SMALL, LARGE = (80, 24), (160, 50)


@pytest.fixture(autouse=True)
def _utc(monkeypatch):
    """The runs table shows local start times: pin the zone so screens match everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def steady_cursor(app) -> None:
    for field in app.screen.query(Input):
        field.cursor_blink = False


async def gpus_shown(pilot) -> None:
    pane = pilot.app.query_one("#gpu-pane")
    await until(pilot, lambda: pane.gpus or pane.error, what="the first GPU poll")
    await until(pilot, lambda: pilot.app.focused is not None, what="focus")


@pytest.mark.parametrize("scenario", ["none", "1xa100", "8xh100"])
@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x50"])
def test_gpus_tab(snap_compare, scenario, size):
    assert snap_compare(make_app(scenario), terminal_size=size, run_before=gpus_shown)


def test_gpus_tab_after_a_gpu_vanished(snap_compare):
    async def lose_one(pilot):
        pane = pilot.app.query_one("#gpu-pane")
        await until(pilot, lambda: len(pane.gpus) == 2, what="two GPUs at first")
        pane.poll()
        table = pilot.app.query_one("#gpu-table", DataTable)
        await until(pilot, lambda: "lost" in str(table.get_row_at(1)[3]), what="the lost row")

    assert snap_compare(make_app("vanishing"), terminal_size=SMALL, run_before=lose_one)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x50"])
def test_planner_with_a_model(snap_compare, size):
    async def plan_qwen(pilot):
        app = pilot.app
        await gpus_shown(pilot)
        await pilot.press("p")
        await until(pilot, lambda: app.focused is app.query_one("#f-model"), what="the model field")
        planner = app.query_one("#planner-tab")
        app.query_one("#f-model", Input).value = "qwen2.5-7b"
        await until(
            pilot,
            lambda: planner.outcome is not None and planner.outcome.plan is not None,
            what="the plan",
        )
        steady_cursor(app)

    assert snap_compare(make_app("8xh100"), terminal_size=size, run_before=plan_qwen)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x50"])
def test_monitor_on_the_recording(snap_compare, size):
    app, runs, clock = replay_app()
    clock.now += 60.5  # half-way through the recorded run (two minutes long)

    async def caught_up(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen), what="the monitor")
        monitor = pilot.app.screen
        due = len(runs._released())
        await until(pilot, lambda: len(monitor.records) == due, what="the records due by now")
        await until(pilot, lambda: pilot.app.gpu_pane.owners, what="the GPU processes")
        monitor.refresh_numbers()
        monitor.redraw_chart()

    assert snap_compare(app, terminal_size=size, run_before=caught_up)


def test_runs_tab(snap_compare):
    app, _, clock = replay_app(clock=Clock(1_767_225_600.0), monitor=False)  # 2026-01-01 00:00 UTC
    clock.now += 30.5

    async def listed(pilot):
        await pilot.press("r")
        table = pilot.app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 1, what="the run listed")
        await until(pilot, lambda: pilot.app.focused is table, what="focus on the table")

    assert snap_compare(app, terminal_size=SMALL, run_before=listed)
