"""The app's behaviour, driven with Textual's pilot: GPU pane scenarios, planner recompute and
launch, runs tab actions, the monitor on a replayed run. Data comes from real sources (fake NVML
scenarios, the shipped recording, run directories in tmp_path); the clock is injected."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Select, Static, TabbedContent

from runner.recipe.schema import load_recipe
from runner.rundir.runs import new_run_dir
from runner.watch.sources import DirRunSource
from tui.app.confirm import Confirm
from tui.app.launch import LaunchScreen
from tui.app.logs import LogScreen
from tui.app.monitor import MonitorScreen

from app_support import make_app, replay_app, text_of, until

SIZE = (100, 34)


def footer(app) -> dict[str, bool]:
    """The keys the footer of the screen on top shows, as painted: key -> usable (False: dimmed)."""
    return {key.key: not key.has_class("-disabled") for key in app.screen.query("FooterKey")}


def active_tab(app) -> str:
    return app.screen_stack[0].query_one(TabbedContent).active


# --- GPUs pane ---------------------------------------------------------------------------------


async def test_eight_h100s_with_their_processes_named_by_run_and_rank():
    app = make_app("8xh100")
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#gpu-table", DataTable)
        await until(pilot, lambda: table.row_count == 8, what="8 GPU rows")
        row = [str(cell) for cell in table.get_row_at(3)]
        assert "H100 80GB HBM3" in row[1]
        assert "4103" in row[6] and "r3 qwen2.5-7b-lora-8xh100" in row[6]
        assert "94%" in row[3] and "65°C" in row[4]


async def test_no_gpu_shows_a_plain_panel_and_the_planner_asks_for_a_gpu_type():
    app = make_app("none")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.query_one("#gpu-pane").error, what="the no-GPU message")
        assert "no NVIDIA GPU found" in text_of(app, "#gpu-message")
        assert not app.query_one("#gpu-table").display
        await pilot.press("p")
        await until(pilot, lambda: app.focused is app.query_one("#f-model"))
        await pilot.pause()
        await pilot.press(*"7b")
        planner = app.query_one("#planner-tab")
        await until(pilot, lambda: planner.outcome is not None and planner.outcome.model is not None)
        assert "pick the GPU type" in planner.outcome.error
        options = [value for _, value in app.query_one("#f-gpu", Select)._options]
        assert "detected" not in options


async def test_a_gpu_that_vanishes_stays_listed_as_lost():
    app = make_app("vanishing")
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one("#gpu-pane")
        await until(pilot, lambda: len(pane.gpus) == 2, what="two GPUs at first")
        pane.poll()
        await until(pilot, lambda: len(pane.gpus) == 1, what="the lost GPU")
        assert [g.index for g in pane.lost] == [1]
        table = app.query_one("#gpu-table", DataTable)
        await until(pilot, lambda: "lost" in str(table.get_row_at(1)[3]), what="the lost row")
        assert "H100" not in str(table.get_row_at(1)[1]) and "A100" in str(table.get_row_at(1)[1])
        assert "0%" in str(table.get_row_at(0)[3])  # the GPU still answering keeps its live row
        assert app.is_running


# --- planner -----------------------------------------------------------------------------------


async def type_model(app, pilot, name: str):
    await pilot.press("p")
    planner = app.query_one("#planner-tab")
    await until(pilot, lambda: app.focused is app.query_one("#f-model"), what="focus on the model field")
    await pilot.pause()  # the Input's focus handler selects its text: let it run before typing
    await pilot.press(*name)
    field = app.query_one("#f-model", Input)
    await until(
        pilot,
        lambda: planner.outcome is not None and planner.outcome.plan is not None and planner.outcome.model.name == name,
        what=f"a plan for {name}",
        state=lambda: f"field={field.value!r} focused={app.focused} outcome={planner.outcome}",
    )
    return planner


async def test_the_planner_recommends_for_the_detected_gpus_and_recomputes_on_every_change():
    app = make_app("8xh100")
    async with app.run_test(size=SIZE) as pilot:
        planner = await type_model(app, pilot, "qwen2.5-7b")
        plan = planner.outcome.plan
        assert plan.cluster.world == 8 and plan.cluster.gpu.key == "h100-80g"
        assert plan.recommendation is not None and planner.outcome.setup.tuner == "full"
        assert "FITS" in text_of(app, "#plan-title")
        assert app.query_one("#plan-alts", DataTable).row_count >= 5

        app.query_one("#f-tuner", Select).value = "qlora"
        await until(pilot, lambda: planner.outcome.setup is not None and planner.outcome.setup.tuner == "qlora")
        assert planner.outcome.plan.recommendation is None  # a given tuner is evaluated, not searched
        assert not app.query_one("#plan-alts").display

        mb = app.query_one("#f-mb", Input)
        mb.value = "512"
        await until(pilot, lambda: planner.outcome.setup.micro_batch == 512)
        assert not planner.outcome.plan.estimate.fits
        assert "DOES NOT FIT" in text_of(app, "#plan-title")


async def test_an_unknown_model_names_the_closest_matches():
    app = make_app("1xa100")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: app.focused is app.query_one("#f-model"))
        await pilot.pause()
        await pilot.press(*"llama-2-7")
        planner = app.query_one("#planner-tab")
        await until(
            pilot,
            lambda: (
                planner.outcome is not None
                and planner.outcome.error.startswith("model:")
                and "llama-2-7b" in planner.outcome.error
            ),
        )
        assert "llama-2-7b" in text_of(app, "#plan-title")


async def test_enter_on_an_alternative_plans_that_tuner_and_stage():
    app = make_app("8xh100")
    async with app.run_test(size=SIZE) as pilot:
        planner = await type_model(app, pilot, "llama-3.1-8b")
        table = app.query_one("#plan-alts", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        target = next(i for i, row in enumerate(rows) if row[0] == "lora" and row[2] == "yes")
        table.focus()
        table.move_cursor(row=target)
        await pilot.press("enter")
        await until(
            pilot,
            lambda: (
                planner.outcome.setup is not None
                and planner.outcome.setup.tuner == "lora"
                and planner.outcome.plan.recommendation is None
            ),
        )
        assert planner.outcome.setup.zero == int(str(rows[target][1]).split("-")[0])


async def test_an_alternative_that_needs_more_memory_at_a_higher_zero_stage_shows_its_micro_batch():
    """Issue 10: the table had no micro-batch column, so ZeRO-2 at 63 GiB beside ZeRO-1 at 58 GiB
    looked wrong; each alternative is planned at the largest micro-batch that fits its stage."""
    app = make_app("8xh100")
    async with app.run_test(size=SIZE) as pilot:
        planner = await type_model(app, pilot, "qwen2.5-7b")
        table = app.query_one("#plan-alts", DataTable)
        assert [str(c.label) for c in table.columns.values()][:5] == ["tuner", "ZeRO", "fits", "micro-batch", "GiB"]
        rows = {(str(r[0]), str(r[1])): r for r in (table.get_row_at(i) for i in range(table.row_count))}
        for alt in planner.outcome.plan.recommendation.alternatives:
            if (alt.tuner, alt.engine) in rows and alt.candidate and alt.candidate.refusal is None:
                assert rows[alt.tuner, alt.engine][3] == str(alt.candidate.setup.micro_batch)
        one, two = rows["full", "1"], rows["full", "2"]
        assert float(two[4]) > float(one[4]) and int(two[3]) > int(one[3])  # more memory: a bigger micro-batch
        refused = next(r for r in rows.values() if str(r[6]).startswith("refused"))
        assert refused[3] == "-" and refused[4] == "-"


def test_ftui_plan_shows_the_same_micro_batch_column(capsys, monkeypatch):
    from tui.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    args = ["plan", "--model", "qwen2.5-7b", "--gpus", "8", "--gpu", "h100-80g"]
    assert main([*args, "--json"]) == 0
    planned = {(a["tuner"], a["engine"]): a["setup"] for a in json.loads(capsys.readouterr().out)["alternatives"]}
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("tuner"))
    assert lines[header].split()[:5] == ["tuner", "ZeRO", "fits", "micro-batch", "GiB/GPU"]
    rows = [line.split() for line in lines[header + 1 :] if line.split()[:1] == ["full"]]
    assert len(rows) == 5  # ZeRO 0-3 and FSDP
    for tuner, zero, _, micro_batch, *_ in rows:
        assert micro_batch == str(planned[tuner, zero]["micro_batch"])


async def test_the_planner_footer_dims_launch_without_a_plan_and_offers_leave_field_only_in_the_form():
    app = make_app("8xh100")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: app.focused is app.query_one("#f-model"), what="the model field")
        await until(pilot, lambda: "ctrl+l" in footer(app), what="the planner's footer")
        assert footer(app) == {"ctrl+l": False, "ctrl+t": False, "escape": True}  # g, p, r, q type letters here
        await pilot.pause()  # the Input's focus handler selects its text: let it run before typing
        await pilot.press(*"qwen2.5-7b")
        planner = app.query_one("#planner-tab")
        await until(pilot, lambda: planner.outcome is not None and planner.outcome.setup is not None, what="a plan")
        await until(pilot, lambda: footer(app).get("ctrl+l"), what="launch offered once there is a plan")
        assert footer(app)["ctrl+t"]
        await pilot.press("escape")  # out of the form, to the alternatives
        await until(pilot, lambda: "enter" in footer(app), what="the alternatives' key")
        assert "escape" not in footer(app) and {"g", "p", "r", "q"} <= set(footer(app))

        app.query_one("#f-tuner", Select).value = "qlora"  # a given tuner: no alternatives to pick from
        await until(pilot, lambda: planner.outcome.setup is not None and planner.outcome.setup.tuner == "qlora")
        app.query_one("#f-model", Input).focus()
        await until(pilot, lambda: "escape" in footer(app), what="leave field, back in the form")
        await pilot.press("escape")
        await until(pilot, lambda: app.focused is app.query_one("#plan-result"), what="focus on the plan")
        await until(pilot, lambda: "g" in footer(app), what="the tab keys again")
        assert "enter" not in footer(app) and "escape" not in footer(app)
        await pilot.press("r")
        await until(pilot, lambda: active_tab(app) == "runs", what="r works again")


async def test_ctrl_t_traces_the_shown_setup_beside_the_bar():
    pytest.importorskip("torch")
    app = make_app("8xh100")
    async with app.run_test(size=SIZE) as pilot:
        planner = await type_model(app, pilot, "qwen2.5-0.5b")
        await pilot.press("ctrl+t")
        await until(pilot, lambda: "tracing" in text_of(app, "#plan-verify"), what="the trace starting")
        await until(pilot, lambda: "traced" in text_of(app, "#plan-verify"), timeout=120, what="the traced figure")
        line = text_of(app, "#plan-verify")
        assert "peak allocated" in line and "planned" in line and "%" in line
        assert planner.outcome.setup is not None


# --- launch ------------------------------------------------------------------------------------


async def test_launch_writes_the_planned_recipe_and_hands_it_to_the_runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    runs_root = tmp_path / "runs"
    launched: list[Path] = []

    def launcher(recipe: Path) -> Path:
        launched.append(recipe)
        run = new_run_dir(runs_root, "from-app")
        run.recipe.write_text(recipe.read_text())
        run.set_status("queued")
        return run.path

    app = make_app("8xh100", runs=DirRunSource(runs_root), launcher=launcher, runs_root=runs_root)
    async with app.run_test(size=SIZE) as pilot:
        planner = await type_model(app, pilot, "qwen2.5-7b")
        app.query_one("#f-tuner", Select).value = "lora"
        app.query_one("#f-mb", Input).value = "4"
        await until(
            pilot,
            lambda: (
                planner.outcome.setup is not None
                and planner.outcome.setup.micro_batch == 4
                and planner.outcome.setup.tuner == "lora"
            ),
        )
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, LaunchScreen), what="the launch dialog")
        dialog = app.screen
        await until(pilot, lambda: footer(app), what="the dialog's footer")
        assert footer(app) == {"ctrl+s": True, "escape": True}  # its own keys, not the planner's below
        preview = str(dialog.query_one("#launch-yaml", Static).render())
        assert "tuner: lora" in preview and "micro_batch: 4" in preview and "gpus: 8" in preview

        await pilot.press("ctrl+s")  # no dataset yet: refused, nothing launched
        assert launched == [] and "dataset" in text_of(app, "#launch-error")

        dialog.query_one("#l-dataset", Input).value = str(tmp_path / "missing.jsonl")
        await pilot.press("ctrl+s")
        assert launched == [] and "does not exist" in text_of(app, "#launch-error")

        dialog.query_one("#l-dataset", Input).value = str(data)
        dialog.query_one("#l-set", Input).value = "train.epochs=3"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor on the new run")
        assert len(launched) == 1
        recipe = load_recipe(launched[0])
        assert recipe.tuner == "lora" and recipe.train.micro_batch == 4 and recipe.train.epochs == 3
        assert recipe.model.path == "Qwen/Qwen2.5-7B" and Path(recipe.dataset.path) == data
        assert recipe.distributed.gpus == 8 and recipe.distributed.zero == planner.outcome.setup.zero
        assert launched[0].read_text().startswith(f"# ftui train {launched[0]}")
        assert app.screen.run_id.startswith("from-app-")


async def test_a_failed_launch_is_shown_in_the_dialog_and_the_app_keeps_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")

    def launcher(recipe: Path) -> Path:
        raise RuntimeError("the planner says this run will not fit")

    app = make_app("8xh100", launcher=launcher)
    async with app.run_test(size=SIZE) as pilot:
        await type_model(app, pilot, "qwen2.5-7b")
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, LaunchScreen))
        app.screen.query_one("#l-dataset", Input).value = str(data)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "will not fit" in text_of(app, "#launch-error"), what="the error")
        assert "not launched" in text_of(app, "#launch-error")
        assert isinstance(app.screen, LaunchScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, LaunchScreen)


# --- monitor -----------------------------------------------------------------------------------


async def test_the_monitor_draws_points_as_the_recording_advances():
    app, runs, clock = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        monitor = app.screen
        await until(pilot, lambda: len(monitor.steps) == 1, what="the first point")
        clock.now += 20.2  # 20 more records are due
        await until(pilot, lambda: len(monitor.steps) == 21, what="20 more points")
        assert monitor.steps == sorted(monitor.steps)
        assert "step 105/600" in text_of(app, "#mon-header")
        assert "VRAM" in text_of(app, "#mon-memory") and "plan 59.5" in text_of(app, "#mon-memory")
        clock.now += 10_000
        await until(pilot, lambda: "finished" in text_of(app, "#mon-header"), what="the end of the run")
        assert monitor.eval_losses and len(monitor.steps) + len(monitor.eval_steps) == len(runs.records)


async def test_stop_asks_first_and_only_yes_stops():
    app, runs, _ = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        assert not runs.stopped
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await until(pilot, lambda: runs.stopped, what="the stop")
        await until(pilot, lambda: "stopped" in text_of(app, "#mon-header"))


async def test_g_and_p_on_the_monitor_leave_it_instead_of_switching_the_tab_behind_it():
    """Issue 10: g / p on a run's monitor switched the tab under it and left the monitor on top."""
    app, runs, _ = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        await pilot.press("g")
        await until(pilot, lambda: len(app.screen_stack) == 1, what="the monitor to close")
        assert active_tab(app) == "gpus"
        await until(pilot, lambda: app.focused is app.query_one("#gpu-table"), what="focus on the GPU table")

        app.show_run(runs.run_id)
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor again")
        await pilot.press("p")
        await until(pilot, lambda: len(app.screen_stack) == 1, what="the monitor to close")
        assert active_tab(app) == "planner"
        await until(pilot, lambda: app.focused is app.query_one("#f-model"), what="focus on the model field")


async def test_a_tab_key_on_a_log_opened_from_the_monitor_leaves_both():
    app, _, _ = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LogScreen), what="the log")
        await pilot.press("r")
        await until(pilot, lambda: len(app.screen_stack) == 1, what="back on the tabs")
        assert active_tab(app) == "runs"
        await until(pilot, lambda: app.focused is app.query_one("#runs-table"), what="focus on the runs table")


async def test_esc_from_ftui_monitor_lands_on_the_runs_tab_not_the_gpus(tmp_path, monkeypatch):
    """Issue 10: `ftui monitor RUN` opens the app on the run's monitor; esc showed the GPUs tab."""
    import tui.app_cmd
    from tui.app.app import FtuiApp
    from tui.cli import main

    root = tmp_path / "runs"
    for name in ("alpha", "beta"):
        run = new_run_dir(root, name)
        run.recipe.write_text("tuner: lora\n")
        run.set_status("finished")
        run.metrics.write_text(json.dumps({"step": 80, "total_steps": 80, "loss": 1.25, "time": 1.0}) + "\n")
    started: list[FtuiApp] = []
    monkeypatch.setattr(tui.app_cmd, "_needs_terminal", lambda: None)
    monkeypatch.setattr(FtuiApp, "run", lambda self, **kwargs: started.append(self))
    assert main(["monitor", "beta", "--runs-dir", str(root)]) == 0
    app = started[0]
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        assert app.screen.run_id.startswith("beta")
        table = app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="both runs listed")
        await pilot.press("escape")
        await until(pilot, lambda: len(app.screen_stack) == 1, what="the monitor to close")
        assert active_tab(app) == "runs"
        await until(pilot, lambda: app.focused is table, what="focus on the runs table")
        assert str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value).startswith("beta")


async def test_the_monitor_footer_offers_stop_while_running_and_resume_once_stopped():
    """Issue 10: the footer shows the keys that work here; a dialog shows its own, not those below it."""
    app, runs, _ = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        await until(pilot, lambda: footer(app).get("s"), what="stop offered on a running run")
        assert footer(app) == {
            "escape": True, "s": True, "R": False, "l": True, "q": True, "g": True, "p": True, "r": True
        }  # fmt: skip
        await pilot.press("R")  # dimmed: nothing happens
        assert not runs.stopped and isinstance(app.screen, MonitorScreen)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, Confirm), what="the question")
        await until(pilot, lambda: footer(app), what="the dialog's footer")
        assert footer(app) == {"y": True, "n": True}  # esc answers no as well: one key per answer is shown
        await pilot.press("g")  # the tabs' keys do not reach past a dialog
        assert isinstance(app.screen, Confirm)
        await pilot.press("y")
        await until(pilot, lambda: footer(app).get("R"), what="resume offered once stopped")
        assert footer(app)["s"] is False
        await pilot.press("R")
        await until(pilot, lambda: footer(app).get("s"), what="stop offered again after the resume")
        assert not runs.stopped


async def test_a_nan_loss_is_flagged(tmp_path):
    recording = tmp_path / "diverged"
    recording.mkdir()
    lines = [{"step": s, "total_steps": 50, "loss": 2.0 - 0.01 * s, "time": 100.0 + s} for s in range(1, 10)]
    lines.append({"step": 10, "total_steps": 50, "loss": math.nan, "time": 110.0})
    (recording / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    app, _, clock = replay_app("none", recording)
    async with app.run_test(size=SIZE) as pilot:
        clock.now += 100
        await until(pilot, lambda: "diverged" in text_of(app, "#mon-flags"), what="the NaN flag")
        assert "loss is nan at step 10" in text_of(app, "#mon-flags")


# --- runs tab ----------------------------------------------------------------------------------


async def test_the_runs_tab_lists_runs_and_opens_one(tmp_path):
    root = tmp_path / "runs"
    for name, state, step in (("alpha", "finished", 80), ("beta", "failed", 12)):
        run = new_run_dir(root, name)
        run.recipe.write_text("tuner: lora\n")
        run.set_status(state)
        run.metrics.write_text(json.dumps({"step": step, "total_steps": 80, "loss": 1.25, "time": 1.0}) + "\n")
    app = make_app("none", runs=DirRunSource(root), initial_tab="runs")
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="two runs")
        await until(pilot, lambda: app.focused is table, what="focus on the runs table")
        cells = {str(table.get_row_at(i)[0]): [str(c) for c in table.get_row_at(i)] for i in range(2)}
        alpha = next(v for k, v in cells.items() if k.startswith("alpha"))
        assert "finished" in alpha[2] and alpha[3] == "80/80" and alpha[4] == "1.2500"
        await pilot.press("s")  # a finished run: nothing to stop, no question asked
        assert not isinstance(app.screen, Confirm)
        table.move_cursor(row=[k.startswith("beta") for k in cells].index(True))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        assert app.screen.run_id.startswith("beta")
        await until(pilot, lambda: "failed" in text_of(app, "#mon-header"))


async def test_the_monitor_of_an_evaluated_run_shows_what_ftui_eval_measured(tmp_path):
    root = tmp_path / "runs"
    run = new_run_dir(root, "done")
    run.recipe.write_text("tuner: lora\n")
    run.set_status("finished")
    run.metrics.write_text(json.dumps({"step": 80, "total_steps": 80, "loss": 1.25, "time": 1.0}) + "\n")
    result = {"loss": 1.4321, "perplexity": 4.19, "examples": 12, "samples": [{"prompt": "Say hi", "generated": "Hi!"}]}
    (run.path / "eval.json").write_text(json.dumps(result))
    app = make_app("none", runs=DirRunSource(root), initial_tab="runs")
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 1, what="the run")
        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: "ftui eval" in text_of(app, "#mon-stats"), what="the evaluation")
        stats = text_of(app, "#mon-stats")
        assert "loss 1.4321" in stats and "ppl 4.19" in stats and "12 examples" in stats and "Hi!" in stats


async def test_runs_of_other_tools_are_listed_watched_and_left_alone(tmp_path):
    """A LLaMA-Factory output dir and an ms-swift one under a watched directory: listed with their
    tool, opened in the monitor with their loss points; stop and resume are not offered for them."""
    saves = tmp_path / "saves"
    lf = saves / "qwen-lora"
    lf.mkdir(parents=True)
    lf_lines = [
        {
            "current_steps": s,
            "total_steps": 100,
            "loss": 2.0 - s / 100,
            "lr": 1e-4,
            "epoch": s / 100,
            "percentage": float(s),
            "elapsed_time": f"0:00:{s:02d}",
            "remaining_time": "0:05:00",
        }
        for s in (10, 20, 30)
    ]
    (lf / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lf_lines))
    swift = saves / "swift" / "v0-20260101-000000"
    swift.mkdir(parents=True)
    swift_line = {
        "loss": 1.7,
        "learning_rate": 9e-05,
        "epoch": 0.05,
        "global_step/max_steps": "10/200",
        "elapsed_time": "19s",
        "remaining_time": "6m 4s",
    }
    (swift / "logging.jsonl").write_text(json.dumps(swift_line) + "\n")
    app = make_app("none", runs=DirRunSource(tmp_path / "runs", watch=(saves,)), initial_tab="runs")
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="both foreign runs")
        rows = {str(table.get_row_at(i)[1]): (i, [str(c) for c in table.get_row_at(i)]) for i in range(2)}
        assert set(rows) == {"llamafactory", "swift"}, rows
        index, cells = rows["llamafactory"]
        assert cells[3] == "30/100" and cells[4] == "1.7000"
        table.move_cursor(row=index)
        await until(pilot, lambda: app.focused is table, what="focus on the runs table")
        await until(pilot, lambda: "l" in footer(app), what="the run's keys in the footer")
        assert "s" not in footer(app) and "R" not in footer(app)  # ftui cannot stop or resume it
        await pilot.press("s")
        assert not isinstance(app.screen, Confirm)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        monitor = app.screen
        await until(pilot, lambda: monitor.steps == [10, 20, 30], what="the three loss points")
        assert "step 30/100" in text_of(app, "#mon-header")
        assert "llamafactory run, watched only" in text_of(app, "#mon-header")
        await until(pilot, lambda: "l" in footer(app), what="the monitor's footer")
        assert "s" not in footer(app) and "R" not in footer(app)


async def test_q_quits_without_touching_a_running_run():
    app, runs, _ = replay_app(monitor=False, initial_tab="runs")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.query_one("#runs-table", DataTable).row_count == 1)
        await pilot.press("q")
    assert not runs.stopped and app.return_code in (0, None)


@pytest.mark.parametrize("ref", ["nonexistent-run"])
def test_ftui_monitor_with_an_unknown_run_says_where_it_looked(ref, tmp_path, capsys):
    from tui.cli import main

    code = main(["monitor", ref, "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"no run {ref!r}" in err and str(tmp_path) in err


def test_bare_ftui_without_a_terminal_says_what_to_use_instead(capsys):
    from tui.cli import main

    code = main([])
    err = capsys.readouterr().err
    assert code == 2 and "needs a terminal" in err and "ftui runs --json" in err


async def test_nvml_memory_reaches_the_monitor_for_ranked_and_single_process_runs():
    from runner.machine.nvml import GpuProcess, GpuSnapshot

    app = make_app("none")
    async with app.run_test(size=SIZE):
        pane = app.gpu_pane
        gib = 2**30
        pane.gpus = [
            GpuSnapshot(0, "H100", "u0", 80 * gib, 30 * gib, 90, 60, 500.0, 700.0, (GpuProcess(11, 20 * gib),)),
            GpuSnapshot(1, "H100", "u1", 80 * gib, 30 * gib, 90, 60, 500.0, 700.0, (GpuProcess(12, 21 * gib),)),
            GpuSnapshot(2, "H100", "u2", 80 * gib, 30 * gib, 90, 60, 500.0, 700.0, (GpuProcess(13, 9 * gib),)),
        ]
        pane.owners = {11: ("ddp", 0), 12: ("ddp", 1), 13: ("single", None)}
        assert app.gpu_used("ddp") == {"0": 20.0, "1": 21.0}
        assert app.gpu_used("single") == {"0": 9.0}  # no RANK in its environment: rank 0
        assert app.gpu_used("other") == {}


async def test_the_monitor_of_a_two_node_run_shows_both_nodes_gpus_and_names_the_straggler(tmp_path):
    """What each node's local rank 0 wrote (RUN_DIR/nodes/): one A100 on n1, eight H100s on n2, as the
    fake NVML scenarios per node give them; rank 1 on n2 runs its forward pass 1.5x slower."""
    from runner.machine.nvml import NvmlReader
    from runner.machine.fake_nvml import FakeNvml

    root = tmp_path / "runs"
    run = new_run_dir(root, "two-nodes")
    run.recipe.write_text("tuner: lora\n")
    run.set_status("running")
    (run.path / "nodes").mkdir()
    for node, scenario in (("n1", "1xa100"), ("n2", "8xh100")):
        gpus = [g.as_json() for g in NvmlReader(FakeNvml(scenario)).snapshot()]
        (run.path / "nodes" / f"{node}.json").write_text(json.dumps({"node": node, "step": 10, "gpus": gpus}))
    ranks = {"0": {"node": "n1", "forward_s": 0.100}, "1": {"node": "n2", "forward_s": 0.150}}
    records = [{"step": s, "total_steps": 100, "loss": 2.0, "time": float(s), "ranks": ranks} for s in (5, 10)]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    app = make_app("none", runs=DirRunSource(root), initial_tab="runs")
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 1, what="the run")
        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: "GPUs by node" in text_of(app, "#mon-nodes"), what="the nodes' GPUs")
        nodes = text_of(app, "#mon-nodes")
        assert "n1" in nodes and "n2" in nodes and "forward skew 1.50x" in nodes
        assert nodes.count(" g") >= 9, nodes  # 1 + 8 GPUs
        assert "rank 1 on node n2 is the straggler" in text_of(app, "#mon-flags")
