"""The run monitor: live loss chart, progress and ETA, speed, per-rank memory against the plan,
warnings, and the log's tail. New metrics are read incrementally (never the whole file again)."""

from __future__ import annotations

import json

from pathlib import Path

import math
from collections import deque
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from runner.watch.health import assess
from runner.watch.info import RunInfo, RunSource

from .chart import LineChart, Series
from .confirm import Confirm
from .logs import LogScreen
from .messages import RunData

POLL_S = 0.7
"""Seconds between reads of the run's files: a new line is on screen within about this long.
bench/monitor_cost.py weighs it: 0.5 s cost 2.8 % of a core, 0.7 s 2.0 % (a line every 100 ms)."""
LOG_LINES = 20
"""Log lines kept for the monitor's tail pane."""

HEALTH_WINDOW = 2000
"""The warnings look at this many latest records: recent behaviour, at a cost that does not grow
with the length of the run."""


def fmt_eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


MAX_CHART_POINTS = 600
"""More points than the chart has braille dots across only cost time: longer series are thinned."""


def thin(xs: list, ys: list, limit: int = MAX_CHART_POINTS) -> tuple[list, list]:
    """At most about `limit` points: each of limit/2 buckets keeps its lowest and highest point
    (in step order), so a spike or a NaN-free dip still shows after thinning."""
    if len(xs) <= limit:
        return xs, ys
    buckets = limit // 2
    out_x, out_y = [], []
    for b in range(buckets):
        lo, hi = b * len(xs) // buckets, (b + 1) * len(xs) // buckets
        if lo >= hi:
            continue
        i_min = min(range(lo, hi), key=ys.__getitem__)
        i_max = max(range(lo, hi), key=ys.__getitem__)
        first_or_last = {0, len(xs) - 1} & set(range(lo, hi))  # the x axis spans the whole run
        for i in sorted({i_min, i_max} | first_or_last):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def show(widget: Static, content: Text) -> None:
    """Update a Static only when its content changed; a new layout only when its height did."""
    old = getattr(widget, "_ftui_shown", None)
    if old is not None and old == content:
        return
    lines = content.plain.count("\n")
    widget.update(content, layout=old is None or old.plain.count("\n") != lines)
    widget._ftui_shown = content


def progress_bar(step: int, total: int, width: int) -> Text:
    """`━━━━━━━━╺━━━━━━━  51%`: done in the accent colour, the rest dim."""
    share = max(0.0, min(1.0, step / total))
    cells = max(10, width - 8)
    done = round(share * cells)
    return Text.assemble(
        ("━" * done, "bold magenta"),
        ("╺" if done < cells else "", "grey35"),
        ("━" * max(0, cells - done - 1), "grey35"),
        f" {share * 100:3.0f}%",
    )


def run_keys(info: RunInfo) -> dict[str, bool | None]:
    """Stop and resume for a run, as `check_action` answers: True works, None shown dimmed (not in
    this state), False hidden (another tool's run: ftui knows neither its process nor its
    checkpoints). Resume works where the runner resumes: an ended run that did not finish."""
    if info.tool != "ftui":
        return {"stop": False, "resume": False}
    return {
        "stop": True if info.active else None,
        "resume": True if not info.active and info.state != "finished" else None,
    }


def _num(value: Any, fmt: str) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    text = fmt.format(value)
    return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text  # no "-0.0"


class MonitorScreen(Screen):
    """Everything about one run, live."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("s", "stop", "stop"),
        Binding("R", "resume", "resume"),
        Binding("l", "logs", "log"),
        Binding("c", "chat", "chat"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, source: RunSource, run_id: str, gpu_util=lambda: None, gpu_used=lambda: {}) -> None:
        super().__init__()
        self.source = source
        self.run_id = run_id
        self.tail = source.tail(run_id)
        self._file_cache: dict[str, tuple[int | None, Any]] = {}
        self.gpu_util = gpu_util
        self.gpu_used = gpu_used
        self.records: list[dict[str, Any]] = []
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_losses: list[float] = []
        self.info: RunInfo | None = None
        self.chart_dirty = False
        self.log_tail: deque[str] = deque(maxlen=LOG_LINES)
        self.keys: dict[str, bool | None] = {}
        """stop and resume as the footer shows them (run_keys); none until the run is read."""

    def compose(self) -> ComposeResult:
        yield Static(id="mon-header")
        yield Static(id="mon-progress")
        with Horizontal(id="mon-body"):
            yield LineChart(title="loss by step", id="mon-chart")
            with Vertical(id="mon-side"):
                yield Static(id="mon-stats")
                yield Static(id="mon-memory")
                yield Static(id="mon-nodes")
        yield Static(id="mon-flags")
        yield Static(id="mon-log")
        yield Footer()

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(POLL_S, self.poll)

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
            self.log_tail.extend(data.log_lines)
            self.show_log_tail()
        self.refresh_numbers()
        self.redraw_chart()  # in the same frame as the numbers: one repaint per poll
        keys = run_keys(self.info) if self.info else {}
        if keys != self.keys:
            self.keys = keys
            self.refresh_bindings()

    def show_log_tail(self) -> None:
        """The newest lines of the log, cut to the width (the whole log is `l` away)."""
        widget = self.query_one("#mon-log", Static)
        width = max(10, widget.size.width or 80)
        lines = [line if len(line) <= width else line[: width - 1] + "…" for line in self.log_tail]
        show(widget, Text("\n".join(lines[-max(1, widget.size.height or LOG_LINES) :]), no_wrap=True))

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
        if info and info.tool != "ftui":  # why the footer has no stop or resume
            header.append(f"  {info.tool} run, watched only", style="dim")
        if info and getattr(info, "job", ""):
            header.append(f"  Slurm {info.job}", style="cyan")
        show(self.query_one("#mon-header", Static), header)
        bar = self.query_one("#mon-progress", Static)
        show(bar, progress_bar(step or 0, total, bar.size.width) if total else Text(""))
        stats = Text.assemble(
            "loss ",
            (_num(self.losses[-1] if self.losses else None, "{:.4f}"), "bold"),
            "  eval ",
            (_num(self.eval_losses[-1] if self.eval_losses else None, "{:.4f}"), "bold"),
            f"\nlr {_num(_latest(self.records, 'lr'), '{:.2e}')}"
            f"  gnorm {_num(_latest(self.records, 'grad_norm'), '{:.3f}')}",
            f"\ntok/s {_num(_latest(self.records, 'tokens_per_s'), '{:,.0f}')}"
            f"  smp/s {_num(_latest(self.records, 'samples_per_s'), '{:,.2f}')}",
            f"\ntokens {_num(last.get('tokens'), '{:,}')}",
        )
        evaluated = self.evaluation()
        if evaluated:
            stats.append(
                f"\nftui eval: loss {_num(evaluated.get('loss'), '{:.4f}')}"
                f"  ppl {_num(evaluated.get('perplexity'), '{:.2f}')}  ({evaluated.get('examples', '?')} examples)"
            )
            for sample in (evaluated.get("samples") or [])[:1]:
                stats.append(f"\n  {str(sample.get('prompt'))[:40]} → {str(sample.get('generated'))[:60]}", style="dim")
        show(self.query_one("#mon-stats", Static), stats)
        show(self.query_one("#mon-memory", Static), self.memory_text())
        nodes = self.query_one("#mon-nodes", Static)
        nodes_shown = nodes_text(self.node_samples(), self.records[-HEALTH_WINDOW:])
        if nodes.display != bool(nodes_shown.plain):
            nodes.display = bool(nodes_shown.plain)  # a one-node run without GPUs keeps the old layout
        show(nodes, nodes_shown)
        flags = assess(
            self.records[-HEALTH_WINDOW:],
            now=self.app.clock(),
            running=state == "running",
            gpu_util=self.gpu_util(),
            planned_gib=info.planned_peak_gib if info else None,
            finished=state == "finished",
            checkpoints=self.checkpoint_steps(),
        )
        text = Text()
        for flag in flags:
            text.append(f" ⚠ {flag.text}\n", style="bold red" if flag.level == "error" else "yellow")
        show(self.query_one("#mon-flags", Static), text)

    def _run_file(self, *parts: str) -> Path | None:
        path = getattr(self.info, "path", None) if self.info else None
        return Path(path).joinpath(*parts) if path else None

    def _cached(self, key: str, path: Path | None, read):
        """`read(path)`, redone only when the file (or directory) changes: the monitor refreshes twice a
        second, the evaluation and the checkpoint list change rarely."""
        try:
            stamp = path.stat().st_mtime_ns if path is not None else None
        except OSError:
            stamp = None
        cache = self._file_cache
        if key not in cache or cache[key][0] != stamp:
            cache[key] = (stamp, read(path) if stamp is not None else None)
        return cache[key][1]

    def evaluation(self) -> dict | None:
        """What `ftui eval` measured for this run (RUN_DIR/eval.json), if it ran."""

        def read(path: Path) -> dict | None:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None

        return self._cached("eval", self._run_file("eval.json"), read)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the run's saved checkpoints (to name the best one when it over-fits)."""

        def read(folder: Path) -> list[int]:
            names = (p.name.split("-")[1] for p in folder.glob("checkpoint-*"))
            return sorted(int(n) for n in names if n.isdigit())

        return self._cached("checkpoints", self._run_file("checkpoints"), read) or []

    def node_samples(self) -> list[dict]:
        """What each node's local rank 0 last wrote of its GPUs (RUN_DIR/nodes/*.json)."""
        folder = self._run_file("nodes")
        return read_node_samples(folder) if folder is not None else []

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
        chart = self.query_one(LineChart)
        limit = max(200, 4 * chart.size.width)  # 2 braille dots per cell, a low and a high for each
        series = []
        if self.steps:
            series.append(Series("train", *map(tuple, thin(self.steps, self.losses, limit)), "cyan"))
        if self.eval_steps:
            series.append(Series("eval", *map(tuple, thin(self.eval_steps, self.eval_losses, limit)), "magenta", True))
        chart.plot(series)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The footer offers stop and resume only where they work (run_keys)."""
        if action in ("stop", "resume"):
            return self.keys.get(action)
        if action == "chat":  # a finished ftui run has a final model to talk to; otherwise not offered
            info = self.info
            return True if info is not None and info.tool == "ftui" and info.state == "finished" else False
        return True

    def action_back(self) -> None:
        self.dismiss()

    def action_logs(self) -> None:
        self.app.push_screen(LogScreen(self.source, self.run_id))

    def action_chat(self) -> None:
        from .chat import ChatScreen

        if self.info is not None:
            self.app.push_screen(ChatScreen(Path(self.info.path), self.run_id))

    def action_stop(self) -> None:
        def done(confirmed: bool | None) -> None:
            if not confirmed:
                return
            try:
                outcome = self.source.stop(self.run_id)
            except Exception as err:  # RunError and friends: show, don't crash
                self.notify(str(err), severity="error")
                return
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


def read_node_samples(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("gpus"), list):
            out.append(data)
    return out


def nodes_text(samples: list[dict], records: list[dict[str, Any]]) -> Text:
    """Every node's GPUs (memory used/total, utilisation, power) and the ranks' forward-time skew:
    `  g0 ██████░░ 61.0/80 GiB 97% 610 W` under each node. Empty for a single node without GPUs."""
    from runner.watch.health import rank_forward, skew

    if not samples or (len(samples) == 1 and not samples[0]["gpus"]):
        return Text()
    text = Text("GPUs by node", style="bold")
    ratio = skew(records)
    if ratio is not None:
        text.append(f"  forward skew {ratio:.2f}x", style="yellow" if ratio >= 1.25 else "dim")
    text.append("\n")
    timed = rank_forward(records)
    for sample in samples:
        node = str(sample.get("node") or sample.get("host") or "?")
        ranks = sorted((r for r, (n, _) in timed.items() if n == node), key=int)
        text.append(f"{node}", style="bold")
        if ranks:
            text.append(
                f"  ranks {','.join(ranks)}  fwd " + "/".join(f"{timed[r][1] * 1000:.0f}" for r in ranks) + " ms",
                style="dim",
            )
        text.append("\n")
        if not sample["gpus"]:
            text.append(f"  {sample.get('no_gpu') or 'no GPUs'}\n", style="dim")
        for gpu in sample["gpus"]:
            used, total = gpu.get("memory_used"), gpu.get("memory_total") or 0
            frac = (used or 0) / total if total else 0.0
            cells = round(frac * BAR)
            text.append(f"  g{gpu.get('index')} ")
            text.append("█" * cells, style="red" if frac > 0.95 else "green")
            text.append("░" * (BAR - cells), style="grey35")
            text.append(f" {_num(used / 2**30 if used is not None else None, '{:.1f}')}/{total / 2**30:.0f} GiB")
            if gpu.get("utilization") is not None:
                text.append(f" {gpu['utilization']}%")
            if gpu.get("power_w") is not None:
                text.append(f" {gpu['power_w']:.0f} W", style="dim")
            text.append("\n")
    return text


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
        "stalled": "black on yellow",
        "downloading": "black on blue",
        "cancelled": "black on yellow",
    }.get(state, "reverse")
