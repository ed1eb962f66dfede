"""The run monitor: live loss chart, progress and ETA, speed, per-rank memory against the plan,
warnings, and the log's tail. New metrics are read incrementally (never the whole file again)."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Log, ProgressBar, Static
from textual_plotext import PlotextPlot

from runner.health import assess
from runner.sources import RunInfo, RunSource

from .confirm import Confirm
from .messages import RunData

POLL_S = 0.5
CHART_S = 1.0
"""The chart redraws at most this often (the numbers update every poll)."""


def fmt_eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _num(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


class MonitorScreen(Screen):
    """Everything about one run, live."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("s", "stop", "stop"),
        Binding("R", "resume", "resume"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, source: RunSource, run_id: str, gpu_util=lambda: None, gpu_used=lambda: {}) -> None:
        super().__init__()
        self.source = source
        self.run_id = run_id
        self.tail = source.tail(run_id)
        self.gpu_util = gpu_util
        self.gpu_used = gpu_used
        self.records: list[dict[str, Any]] = []
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_losses: list[float] = []
        self.info: RunInfo | None = None
        self.chart_dirty = False

    def compose(self) -> ComposeResult:
        yield Static(id="mon-header")
        yield ProgressBar(id="mon-progress", show_eta=False)
        with Horizontal(id="mon-body"):
            yield PlotextPlot(id="mon-chart")
            with Vertical(id="mon-side"):
                yield Static(id="mon-stats")
                yield Static(id="mon-memory")
        yield Static(id="mon-flags")
        yield Log(id="mon-log", max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        plt = self.query_one(PlotextPlot).plt
        plt.title("loss")
        plt.xlabel("step")
        self.poll()
        self.set_interval(POLL_S, self.poll)
        self.set_interval(CHART_S, self.redraw_chart)

    def poll(self) -> None:
        self.run_worker(self._read, thread=True, exclusive=True, group="monitor-poll")

    def _read(self) -> None:
        data = RunData(self.tail.new_records(), self.tail.new_log_lines())
        self.info = self.source.info(self.run_id)
        self.app.call_from_thread(self.absorb, data)

    def absorb(self, data: RunData) -> None:
        for r in data.records:
            self.records.append(r)
            if r.get("loss") is not None and math.isfinite(r["loss"]):
                self.steps.append(r["step"])
                self.losses.append(r["loss"])
                self.chart_dirty = True
            if r.get("eval_loss") is not None and math.isfinite(r["eval_loss"]):
                self.eval_steps.append(r["step"])
                self.eval_losses.append(r["eval_loss"])
                self.chart_dirty = True
        if data.log_lines:
            self.query_one(Log).write_lines(data.log_lines)
        self.refresh_numbers()
        if data.records and len(self.steps) <= 2:
            self.redraw_chart()  # the first points show at once

    def refresh_numbers(self) -> None:
        info, last = self.info, (self.records[-1] if self.records else {})
        state = info.state if info else "?"
        step, total = last.get("step"), last.get("total_steps")
        header = Text.assemble(
            (f" {self.run_id} ", "bold"),
            (f" {state} ", state_style(state)),
            f"  step {step if step is not None else '-'}/{total or '-'}",
            f"  ETA {fmt_eta(last.get('eta_s')) if state == 'running' else '-'}",
            f"  elapsed {fmt_eta(last.get('elapsed_s'))}",
        )
        self.query_one("#mon-header", Static).update(header)
        bar = self.query_one(ProgressBar)
        if total:
            bar.update(total=total, progress=step or 0)
        stats = Text.assemble(
            "loss ",
            (_num(self.losses[-1] if self.losses else None, "{:.4f}"), "bold"),
            "  eval ",
            (_num(self.eval_losses[-1] if self.eval_losses else None, "{:.4f}"), "bold"),
            f"\nlr {_num(last.get('lr'), '{:.2e}')}  gnorm {_num(last.get('grad_norm'), '{:.3f}')}",
            f"\ntok/s {_num(_latest(self.records, 'tokens_per_s'), '{:,.0f}')}"
            f"  smp/s {_num(_latest(self.records, 'samples_per_s'), '{:,.2f}')}",
            f"\ntokens {_num(last.get('tokens'), '{:,}')}",
        )
        self.query_one("#mon-stats", Static).update(stats)
        self.query_one("#mon-memory", Static).update(self.memory_text())
        flags = assess(
            self.records,
            now=self.app.clock(),
            running=state == "running",
            gpu_util=self.gpu_util(),
            planned_gib=info.planned_peak_gib if info else None,
        )
        text = Text()
        for flag in flags:
            text.append(f" ⚠ {flag.text}\n", style="bold red" if flag.level == "error" else "yellow")
        self.query_one("#mon-flags", Static).update(text)

    def memory_text(self) -> Text:
        """One line per rank: reserved memory as a bar with the planned peak marked (│)."""
        mem = next((r["mem"] for r in reversed(self.records) if r.get("mem")), {})
        planned = self.info.planned_peak_gib if self.info else None
        used = self.gpu_used()
        text = Text("VRAM GiB", style="bold")
        text.append(f"  │ plan {planned:.1f}\n" if planned else "\n", style="cyan")
        if not mem and not used:
            text.append("none reported (CPU run)\n", style="dim")
        for rank in sorted(set(mem) | set(used), key=int):
            text.append_text(rank_line(rank, mem.get(rank, {}), used.get(rank), planned))
        return text

    def redraw_chart(self) -> None:
        if not self.chart_dirty:
            return
        self.chart_dirty = False
        chart = self.query_one(PlotextPlot)
        plt = chart.plt
        plt.clear_data()
        if self.steps:
            plt.plot(self.steps, self.losses, label="train")
        if self.eval_steps:
            plt.plot(self.eval_steps, self.eval_losses, label="eval", marker="dot")
        chart.refresh()

    def action_stop(self) -> None:
        def done(confirmed: bool | None) -> None:
            if confirmed:
                outcome = self.source.stop(self.run_id)
                self.notify("stopping after the current step" if outcome == "requested" else "killed")

        self.app.push_screen(Confirm(f"Stop {self.run_id}? It saves a checkpoint first."), done)

    def action_resume(self) -> None:
        try:
            self.source.resume(self.run_id)
        except Exception as err:  # RunError and friends: show, don't crash
            self.notify(str(err), severity="error")
            return
        self.tail = self.source.tail(self.run_id)
        self.notify(f"resumed {self.run_id}")


BAR = 8


def rank_line(rank: str, mem: dict[str, float], nvml: float | None, planned: float | None) -> Text:
    """`r0 █████▌░│ 34.9 nv 59.1`: reserved (bar, number) against the plan, and NVML's view."""
    reserved = mem.get("reserved_gib")
    top = max(v for v in (reserved or 0.0, planned or 0.0, 1e-9))
    over = planned is not None and reserved is not None and reserved > 1.1 * planned
    text = Text(f"r{rank} ")
    cells = round((reserved or 0.0) / top * BAR)
    mark = round(planned / top * BAR) if planned else None
    for i in range(BAR + 1):
        if i == mark:
            text.append("│", style="cyan")
        elif i < cells:
            text.append("█", style="red" if over else "green")
        else:
            text.append("░", style="grey35")
    text.append(f" {_num(reserved, '{:.1f}')}", style="red" if over else "")
    if nvml is not None:
        text.append(f" nv {nvml:.1f}", style="dim")
    return text + "\n"


def _latest(records: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(records) if r.get(key) is not None), None)


def state_style(state: str) -> str:
    return {
        "running": "black on green",
        "finished": "black on cyan",
        "failed": "white on red",
        "dead": "white on red",
        "stopping": "black on yellow",
        "stopped": "black on yellow",
    }.get(state, "reverse")
