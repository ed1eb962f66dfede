"""The planner tab: a form on the left, the plan on the right, recomputed on every change.

The plan comes from a thread worker (the recommender tries a few hundred setups); only the newest
answer is shown. ctrl+l turns the plan into a recipe and launches it (see launch.py).
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.reactive import reactive
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Input, Label, Select, Static
from textual.worker import get_current_worker

from planner import PARTS
from planner.catalog import names
from planner.gpus import GPUS
from planner.setup import OFFLOADS, PRECISIONS, TUNERS

from ..plan_view import alternative_rows, duration
from .plan_form import AUTO, DETECTED, Detected, PlanForm, PlanOutcome, compute

GIB = 2**30
PART_STYLE = {
    "weights": "blue",
    "gradients": "magenta",
    "optimizer": "yellow",
    "activations": "green",
    "logits": "cyan",
    "overhead": "grey50",
}
SELECTS = {
    "f-tuner": [("recommend", "recommend")] + [(t, t) for t in TUNERS],
    "f-zero": [(AUTO, AUTO)] + [(str(z), str(z)) for z in range(4)] + [("fsdp", "fsdp")],
    "f-offload": [(AUTO, AUTO)] + [(o, o) for o in OFFLOADS],
    "f-ckpt": [(AUTO, AUTO), ("on", "on"), ("off", "off")],
    "f-precision": [(AUTO, AUTO)] + [(p, p) for p in PRECISIONS],
}


def stacked_bar(outcome: PlanOutcome, width: int) -> Text:
    """The per-GPU memory parts as one bar, scaled to the GPU's capacity, with a legend."""
    mem = outcome.plan.estimate.memory
    scale = max(mem.capacity_bytes, mem.nvml_used)
    bar, used = Text(), 0
    for part in PARTS:
        cells = round(mem.part(part) / scale * width)
        cells = min(cells, width - used)
        bar.append("█" * cells, style=PART_STYLE[part])
        used += cells
    free = round(mem.capacity_bytes / scale * width) - used
    bar.append("░" * max(0, free), style="grey35")
    if mem.nvml_used > mem.capacity_bytes:
        cap = round(mem.capacity_bytes / scale * width)
        bar = bar[:cap] + Text("▏", style="bold red") + bar[cap:]
    legend = Text()
    for part in PARTS:
        legend.append("■ ", style=PART_STYLE[part])
        legend.append(f"{part} {mem.part(part) / GIB:.1f}  ")
    return Text("\n").join([bar, legend])


def verify_line(outcome: PlanOutcome, answer: dict) -> Text:
    """The traced peak beside the planned one (allocated memory, as the trace counts it)."""
    if not answer.get("traceable"):
        return Text(f"not traceable: {answer.get('reason', '')}", style="yellow")
    mem = outcome.plan.estimate.memory
    planned = max(sum(mem.traceable_parts(ph).values()) for ph in ("backward", "step")) / GIB
    traced = answer["peak_allocated_gib"]
    diff = 100 * (planned / traced - 1) if traced else 0.0
    text = Text("traced ", style="bold")
    text.append(f"peak allocated {traced:.1f} GiB · planned {planned:.1f} GiB ({diff:+.1f} %)")
    text.append(f" · {answer['seconds']:.1f} s", style="grey50")
    return text


class AlternativesTable(DataTable):
    """The setups the recommender weighed; the footer says what enter does here."""

    BINDINGS = [Binding("enter", "select_cursor", "plan this one")]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """enter plans an alternative: offered while there are some (a given tuner has none)."""
        if action == "select_cursor":
            return self.display and self.row_count > 0
        return True


class PlannerTab(Horizontal):
    """Model, GPUs and settings in; memory, fit, speed and alternatives out."""

    BINDINGS = [
        Binding("ctrl+l", "launch", "launch…"),
        Binding("ctrl+t", "verify", "trace"),
        Binding("escape", "leave", "leave field"),
    ]

    detected: reactive[Detected | None] = reactive(None, init=False)
    outcome: reactive[PlanOutcome | None] = reactive(None, init=False)

    class Launch(Message):
        """Ask the app to open the launch dialog for this plan."""

        def __init__(self, outcome: PlanOutcome, typed_model: str) -> None:
            super().__init__()
            self.outcome = outcome
            self.typed_model = typed_model

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gpu_known = False
        self._keys: tuple[bool, bool] = (False, False)
        """(a setup to launch and trace, alternatives shown), as the footer last showed them."""

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="plan-form"):
            yield from self._row(
                "model",
                Input(
                    placeholder="qwen2.5-7b, 7b, ./dir",
                    id="f-model",
                    suggester=SuggestFromList(names(), case_sensitive=False),
                ),
            )
            yield Static("→ completes the name", id="f-hint")
            yield from self._row("GPU", Select([(g.key, g.key) for g in GPUS], prompt="pick a type", id="f-gpu"))
            yield from self._row("GPUs", Input(placeholder="auto", type="integer", id="f-gpus"))
            yield from self._row(
                "tuner", Select(SELECTS["f-tuner"], value="recommend", allow_blank=False, id="f-tuner")
            )
            yield from self._row("seq len", Input("2048", type="integer", id="f-seq"))
            yield from self._row("micro-batch", Input(placeholder="auto", type="integer", id="f-mb"))
            for label, key in (
                ("ZeRO", "f-zero"),
                ("offload", "f-offload"),
                ("grad ckpt", "f-ckpt"),
                ("precision", "f-precision"),
            ):
                yield from self._row(label, Select(SELECTS[key], value=AUTO, allow_blank=False, id=key))
            yield from self._row("LoRA rank", Input("8", type="integer", id="f-rank"))
        with VerticalScroll(id="plan-result"):
            yield Static("Type a model to plan.", id="plan-title")
            yield Static(id="plan-bar")
            yield Static(id="plan-verify")
            yield Static(id="plan-numbers")
            yield Static(id="plan-reasons")
            table = AlternativesTable(id="plan-alts", cursor_type="row", zebra_stripes=True)
            table.add_columns("tuner", "ZeRO", "fits", "micro-batch", "GiB", "tok/s", "why not")
            table.display = False
            yield table

    @staticmethod
    def _row(label: str, widget) -> ComposeResult:
        with Horizontal(classes="field"):
            yield Label(label, classes="field-label")
            yield widget

    # --- the form ------------------------------------------------------------------------------

    def form(self) -> PlanForm:
        def value(selector: str) -> str:
            return str(self.query_one(selector).value)

        gpu = self.query_one("#f-gpu", Select).value
        return PlanForm(
            model=value("#f-model"),
            gpu=None if gpu == Select.NULL else str(gpu),
            gpus=value("#f-gpus"),
            tuner=value("#f-tuner"),
            seq_len=value("#f-seq"),
            micro_batch=value("#f-mb"),
            zero=value("#f-zero"),
            offload=value("#f-offload"),
            grad_ckpt=value("#f-ckpt"),
            precision=value("#f-precision"),
            lora_rank=value("#f-rank"),
        )

    def on_mount(self) -> None:
        if self.gpu_known:  # the GPU pane answered before this tab was built
            self.gpu_known = False
            detected, self.detected = self.detected, None
            self.set_detected(detected)

    def set_detected(self, detected: Detected | None) -> None:
        """What the GPU pane found: offer `detected` in the GPU field (once known)."""
        first = not self.gpu_known
        self.gpu_known = True
        if detected == self.detected and not first:
            return
        self.set_reactive(PlannerTab.detected, detected)
        try:
            select = self.query_one("#f-gpu", Select)
        except NoMatches:  # not built yet (on_mount applies it) or being torn down
            return
        options = [(g.key, g.key) for g in GPUS]
        if detected is not None:
            label = f"here: {detected.count} x {detected.name.replace('NVIDIA ', '')}"
            options.insert(0, (label, DETECTED))
        current = select.value
        select.set_options(options)
        if detected is not None and (current == Select.NULL or current == DETECTED):
            select.value = DETECTED
        elif current != Select.NULL and current != DETECTED:
            select.value = current
        self.recompute()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.recompute()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the model field: a Hub id not in the local cache is fetched (never per keystroke)."""
        if event.input.id == "f-model":
            event.stop()
            self._plan(self.form(), self.detected, True)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.recompute()

    def recompute(self) -> None:
        self._plan(self.form(), self.detected)

    @work(thread=True, exclusive=True, group="plan")
    def _plan(self, form: PlanForm, detected: Detected | None, fetch: bool = False) -> None:
        outcome = compute(form, detected, fetch=fetch)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(setattr, self, "outcome", outcome)

    @work(thread=True, exclusive=True, group="verify")
    def _trace(self, outcome: PlanOutcome) -> None:
        """The trace of ftui's own training step for the shown setup (a child process; seconds)."""
        from runner.launch.verify import VerifyError, trace

        try:
            answer = trace(outcome.model.config, outcome.setup)
        except VerifyError as err:
            answer = {"traceable": False, "reason": str(err)}
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_trace, outcome, answer)

    def _show_trace(self, outcome: PlanOutcome, answer: dict) -> None:
        if self.outcome is not outcome:
            return  # the plan changed while it traced
        self.query_one("#plan-verify", Static).update(verify_line(outcome, answer))

    # --- the answer ----------------------------------------------------------------------------

    def watch_outcome(self, outcome: PlanOutcome) -> None:
        title = self.query_one("#plan-title", Static)
        parts = [self.query_one(f"#plan-{name}", Static) for name in ("bar", "numbers", "reasons")]
        table = self.query_one("#plan-alts", DataTable)
        self.query_one("#plan-verify", Static).update("")  # a trace belongs to the plan it traced
        table.clear()
        table.display = outcome.plan is not None and outcome.plan.recommendation is not None
        if outcome.plan is None:
            title.update(Text(outcome.error, style="yellow"))
            for part in parts:
                part.update("")
            return
        plan, est = outcome.plan, outcome.plan.estimate
        rec = plan.recommendation
        head = Text.assemble(
            (f"{outcome.model.name}", "bold"),
            f" · {plan.cluster.world} x {plan.cluster.gpu.name.replace('NVIDIA ', '')}\n",
        )
        if est is None:
            head.append("Nothing fits. ", style="bold red")
            head.append(rec.reasons[0] if rec and rec.reasons else "")
            title.update(head)
            for part in parts:
                part.update("")
        else:
            verdict = ("FITS", "black on green") if est.fits else ("DOES NOT FIT", "white on red")
            head.append(f" {verdict[0]} ", style=verdict[1])
            head.append(" recommended: " if rec else " ")
            head.append(est.setup.summary())
            title.update(head)
            parts[0].update(stacked_bar(outcome, max(20, self.query_one("#plan-result").size.width - 4)))
            parts[1].update(self._numbers(outcome))
            parts[2].update(self._reasons(outcome))
        if rec is not None:
            for row in alternative_rows(rec.alternatives):
                table.add_row(*row)
        if (outcome.setup is not None, table.display) != self._keys:
            self._keys = (outcome.setup is not None, table.display)
            self.refresh_bindings()  # launch and trace, enter on an alternative

    def _numbers(self, outcome: PlanOutcome) -> Text:
        est = outcome.plan.estimate
        mem = est.memory
        text = Text()
        text.append(
            f"peak {mem.peak_reserved / GIB:.1f} GiB reserved · {mem.nvml_used / GIB:.1f} nvml"
            f" / {mem.capacity_bytes / GIB:.1f} GiB per GPU\n"
        )
        text.append(f"max micro-batch {est.max_micro_batch} · max seq len {est.max_seq_len:,}\n")
        text.append(
            f"{est.throughput.tokens_per_s:,.0f} tokens/s · 1B tokens in "
            f"{duration(1e9 / est.throughput.tokens_per_s)} · host RAM {mem.cpu_ram_bytes / GIB:.0f} GiB\n"
        )
        text.append(
            f"grad-accum {outcome.grad_accum} · lr {outcome.learning_rate:.0e}"
            if outcome.learning_rate
            else f"grad-accum {outcome.grad_accum}"
        )
        return text

    def _reasons(self, outcome: PlanOutcome) -> Group:
        est, rec = outcome.plan.estimate, outcome.plan.recommendation
        lines = [Text(f"refused ({r.rule}): {r.reason}", style="red") for r in est.refusals]
        lines += [Text(f"note: {w}", style="yellow") for w in est.warnings]
        lines += [Text(f"• {reason}") for reason in (rec.reasons if rec else ())]
        return Group(*lines)

    # --- keys ----------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Launch and trace are dimmed until there is a setup; `leave field` is offered in the form."""
        if action in ("launch", "verify"):
            return True if self.outcome is not None and self.outcome.setup is not None else None
        if action == "leave":
            focused = self.screen.focused
            return focused is not None and self.query_one("#plan-form") in focused.ancestors
        return True

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on an alternative plans that tuner and ZeRO stage."""
        if event.data_table.id != "plan-alts":
            return
        event.stop()
        row = event.data_table.get_row_at(event.cursor_row)
        self.query_one("#f-tuner", Select).value = str(row[0])
        self.query_one("#f-zero", Select).value = str(row[1]).split("-")[0]

    def action_leave(self) -> None:
        """Out of the form (so g / r / q switch tabs and quit again): to the alternatives table, or
        to the plan itself when there are none."""
        table = self.query_one("#plan-alts", DataTable)
        (table if table.display and table.row_count else self.query_one("#plan-result")).focus()

    def action_verify(self) -> None:  # offered only with a setup (check_action)
        outcome = self.outcome
        self.query_one("#plan-verify", Static).update(Text("tracing ftui's own training step…", style="italic"))
        self._trace(outcome)

    def action_launch(self) -> None:  # offered only with a setup (check_action)
        self.post_message(self.Launch(self.outcome, self.form().model.strip()))
