"""End to end: plan the tiny model in the app, launch it with the real launcher (a detached
`ftui train` on the CPU), watch loss points reach the chart, then stop it from the monitor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from textual.widgets import Input, Select

from runner.machine.fake_nvml import FakeNvml
from runner.rundir.runs import RunDir
from runner.watch.sources import DirRunSource, NvmlGpuSource
from tui.app.app import FtuiApp
from tui.app.confirm import Confirm
from tui.app.launch import LaunchScreen
from tui.app.monitor import MonitorScreen
from tui.app_cmd import launch_recipe

from app_support import until
from conftest import kill_runs

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny"
ON_CPU = [
    "model.init=random",
    "distributed.device=cpu",
    "train.precision=fp32",
    "train.attn=sdpa",
    "train.lr=3e-3",
    "train.max_steps=400",
    "train.logging_steps=2",
    "train.save_steps=1000",
    "dataset.format=alpaca",
]


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("FTUI_RUNS_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    yield root
    kill_runs(root)  # leave no process behind, whatever happened


def chart_text(monitor: MonitorScreen) -> str:
    return monitor.query_one("#mon-chart").text


async def test_plan_launch_watch_and_stop_the_tiny_model_from_the_app(runs_root):
    app = FtuiApp(
        NvmlGpuSource(FakeNvml("none")),
        DirRunSource(runs_root),
        launcher=launch_recipe,
        runs_root=runs_root,
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("p")
        planner = app.query_one("#planner-tab")
        await until(pilot, lambda: app.focused is app.query_one("#f-model"), what="the model field")
        app.query_one("#f-model", Input).value = str(TINY / "model")
        app.query_one("#f-gpu", Select).value = "a100-80g"
        app.query_one("#f-tuner", Select).value = "full"
        app.query_one("#f-seq", Input).value = "128"
        app.query_one("#f-mb", Input).value = "16"
        await until(
            pilot,
            lambda: (
                planner.outcome is not None
                and planner.outcome.plan is not None
                and planner.outcome.setup.micro_batch == 16
                and planner.outcome.setup.seq_len == 128
            ),
            what="the plan for the tiny model",
            state=lambda: repr(planner.outcome),
        )
        assert planner.outcome.plan.estimate.fits

        await pilot.press("escape", "ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, LaunchScreen), what="the launch dialog")
        dialog = app.screen
        dialog.query_one("#l-dataset", Input).value = str(TINY / "data" / "instructions.jsonl")
        dialog.query_one("#l-set", Input).value = " ".join(ON_CPU)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(
            pilot,
            lambda: isinstance(app.screen, MonitorScreen),
            timeout=60,
            what="the monitor on the launched run",
            state=lambda: str(dialog.query_one("#launch-error").render()),
        )
        monitor = app.screen
        run = RunDir(runs_root / monitor.run_id)
        assert run.path.is_dir() and "tuner: full" in run.recipe.read_text()

        await until(
            pilot,
            lambda: len(monitor.steps) >= 3,
            timeout=240,
            what="three loss points from the run",
            state=lambda: (
                run.path.joinpath("train.log").read_text()[-2000:]
                if run.path.joinpath("train.log").exists()
                else "no log"
            ),
        )
        monitor.redraw_chart()
        await until(pilot, lambda: "train" in chart_text(monitor), what="the train line on the chart")
        assert all(loss > 0 for loss in monitor.losses)
        assert monitor.steps == sorted(monitor.steps) and monitor.steps[0] >= 1

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, Confirm), what="the stop confirmation")
        await pilot.press("y")
        deadline = time.monotonic() + 180
        while run.status().get("state") not in ("stopped", "finished"):
            assert time.monotonic() < deadline, f"run did not stop: {run.status()}"
            await asyncio.sleep(0.2)
        assert run.status()["state"] == "stopped"
        assert app.is_running


async def test_chat_with_a_finished_run_from_its_monitor(runs_root, capsys):
    from textual.widgets import RichLog

    from tui.app.chat import ChatScreen
    from tui.cli import main

    demo = str(REPO / "recipes" / "tiny-demo.yaml")
    assert (
        main(["train", demo, "--set", "tuner=lora", "--set", "train.max_steps=4", "--set", "train.save_steps=4"]) == 0
    )
    run_id = capsys.readouterr().out.split()[1].rstrip(":")
    from conftest import await_run_processes

    assert await_run_processes(RunDir(runs_root / run_id), timeout=240) == []
    app = FtuiApp(NvmlGpuSource(FakeNvml("none")), DirRunSource(runs_root), open_run=run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        monitor = app.screen
        await until(pilot, lambda: monitor.info is not None and monitor.info.state == "finished", what="finished")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
        chat = app.screen
        await until(pilot, lambda: chat.ready, timeout=120, what="the model loaded in its own process")
        chat.query_one(Input).value = "Give three tips for staying healthy."
        await pilot.press("enter")
        log = chat.query_one(RichLog)
        await until(pilot, lambda: len(chat.history) == 2, timeout=120, what="the answer")
        assert chat.history[1]["role"] == "assistant"
        assert any("model:" in str(line) for line in log.lines)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="back on the monitor")
    assert chat.proc.wait(timeout=10) is not None  # the model's process went with the screen
