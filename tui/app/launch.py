"""The launch dialog: the plan as a recipe (dataset, output dir, overrides), the YAML it will
write, and ctrl+s to write it and start the run through the runner."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Static
from textual.worker import get_current_worker

from runner.recipe.from_plan import recipe_from_plan, recipe_text
from runner.recipe.schema import Recipe, RecipeError

from .plan_form import PlanOutcome

Launcher = Callable[[Path], Path]
"""Starts the run a recipe file describes; returns its run directory."""


NO_DATASET = "<the dataset path above>"
"""Shown in the YAML until a dataset is given (launching needs a real one)."""


def free_path(path: Path) -> Path:
    """`path`, or `name-2.yaml`, `name-3.yaml`… if it exists (never overwrite a recipe)."""
    if not path.exists():
        return path
    n = 2
    while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "run"


class LaunchScreen(ModalScreen[Path | None]):
    BINDINGS = [Binding("ctrl+s", "launch", "write + launch"), Binding("escape", "cancel", "cancel")]

    def __init__(self, outcome: PlanOutcome, typed_model: str, runs_root: Path, launcher: Launcher | None) -> None:
        super().__init__()
        self.outcome = outcome
        self.typed_model = typed_model
        self.runs_root = runs_root
        self.launcher = launcher
        self.recipe: Recipe | None = None

    def compose(self) -> ComposeResult:
        setup = self.outcome.setup
        name = slug(f"{Path(self.typed_model).name}-{setup.tuner}")
        with Vertical(id="launch"):
            yield Static(f"Launch: {setup.summary()}", id="launch-title")
            for label, widget in (
                ("dataset", Input(placeholder="path to jsonl / json / csv / parquet", id="l-dataset")),
                ("output dir", Input(str(self.runs_root), id="l-output")),
                ("run name", Input(name, id="l-name")),
                ("recipe file", Input(str(Path.cwd() / f"{name}.yaml"), id="l-file")),
                ("overrides", Input(placeholder="train.epochs=2 dataset.format=alpaca", id="l-set")),
            ):
                with Horizontal(classes="field"):
                    yield Label(label, classes="field-label")
                    yield widget
            yield Static(id="launch-error")
            with VerticalScroll(id="launch-yaml-box"):
                yield Static(id="launch-yaml")
            with Horizontal(id="launch-buttons"):
                yield Button("Write + launch (ctrl+s)", id="go", variant="success")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()  # its own keys: the app's do not work while the dialog is open

    def on_mount(self) -> None:
        self.query_one("#l-dataset", Input).focus()
        self.render_recipe()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.render_recipe()

    def value(self, key: str) -> str:
        return self.query_one(f"#l-{key}", Input).value.strip()

    def build(self) -> Recipe:
        """The recipe for the plan and the dialog's fields (raises RecipeError)."""
        plan = self.outcome.plan
        dataset = self.value("dataset")
        return recipe_from_plan(
            self.outcome.model,
            self.typed_model,
            self.outcome.setup,
            plan.cluster,
            dataset=str(Path(dataset).expanduser().resolve()) if dataset else NO_DATASET,
            output_dir=str(Path(self.value("output") or self.runs_root).expanduser().resolve()),
            name=self.value("name"),
            grad_accum=self.outcome.grad_accum,
            lr=self.outcome.learning_rate,
            overrides=self.value("set").split(),
        )

    def render_recipe(self) -> None:
        error = self.query_one("#launch-error", Static)
        try:
            self.recipe = self.build()
        except RecipeError as err:
            self.recipe = None
            error.update(Text(str(err), style="yellow"))
            return
        error.update("")
        est = self.outcome.plan.estimate
        text = recipe_text(
            self.recipe,
            Path(self.value("file")),
            self.outcome.setup,
            self.outcome.plan.cluster,
            est.memory.peak_reserved / 2**30,
        )
        self.query_one("#launch-yaml", Static).update(Text(text))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "go":
            self.action_launch()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_launch(self) -> None:
        error = self.query_one("#launch-error", Static)
        if self.recipe is None:
            return
        if self.recipe.dataset.path == NO_DATASET:
            error.update(Text("dataset: give the path of your training data (jsonl, json, csv, parquet)", style="red"))
            self.query_one("#l-dataset", Input).focus()
            return
        dataset = Path(self.recipe.dataset.path)
        if not dataset.exists():
            error.update(Text(f"dataset: {dataset} does not exist; give the path of your training data", style="red"))
            return
        if self.launcher is None:
            error.update(
                Text("demo mode: nothing is launched (the YAML below is what would be written)", style="yellow")
            )
            return
        path = free_path(Path(self.value("file")).expanduser().resolve())
        text = recipe_text(
            self.recipe,
            path,
            self.outcome.setup,
            self.outcome.plan.cluster,
            self.outcome.plan.estimate.memory.peak_reserved / 2**30,
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as err:
            error.update(Text(f"recipe file: cannot write {path}: {err.strerror}", style="red"))
            return
        error.update(Text(f"wrote {path}; starting…"))
        self._start(path)

    @work(thread=True, exclusive=True, group="launch")
    def _start(self, path: Path) -> None:
        try:
            run_dir = self.launcher(path)
        except Exception as err:  # every launch failure is shown in the dialog, none crashes the app
            message = str(err) or type(err).__name__
            if not get_current_worker().is_cancelled:
                self.app.call_from_thread(self._failed, path, message)
            return
        self.app.call_from_thread(self._started, run_dir)

    def _started(self, run_dir: Path) -> None:
        # not awaited: popping this screen waits for its workers, and the launch worker is one
        self.dismiss(run_dir)

    def _failed(self, path: Path, message: str) -> None:
        self.query_one("#launch-error", Static).update(
            Text(f"not launched ({path.name} was written):\n{message}", style="red")
        )
