"""Following a run's log in the terminal until it ends (Ctrl-C detaches, the run goes on)."""

from __future__ import annotations

import sys
import time

from runner.rundir.runs import ACTIVE, RunDir


def follow_log(run: RunDir, poll_s: float = 0.25, from_start: bool = True) -> int:
    """Print train.log as it grows; return when the run is no longer active."""
    offset = 0 if from_start else (run.log.stat().st_size if run.log.exists() else 0)
    try:
        while True:
            offset = _print_new(run, offset)
            state = run.effective_state()
            if state not in ACTIVE:
                _print_new(run, offset)
                print(f"-- run {run.id} is {state}", file=sys.stderr)
                return 0 if state in ("finished", "stopped") else 1
            time.sleep(poll_s)  # a file that grows: nothing to await but its size
    except KeyboardInterrupt:
        print(f"\n-- detached; {run.id} keeps running", file=sys.stderr)
        return 0


def _print_new(run: RunDir, offset: int) -> int:
    try:
        with open(run.log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


# --- the live view of --attach and `ftui logs -f` ------------------------------------------------


def _num(value, fmt: str) -> str:
    import math

    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    text = fmt.format(value)
    return text[1:] if text.startswith("-") and not text.strip("-0.,e+") else text


def _eta(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _latest(records: list[dict], key: str):
    return next((r[key] for r in reversed(records) if r.get(key) is not None), None)


def progress_line(records: list[dict], state: str) -> str:
    """One line a person reads at a glance: step, loss, eval loss, lr, speed, ETA, memory."""
    last = records[-1] if records else {}
    step, total = last.get("step"), last.get("total_steps")
    mem = _latest(records, "mem") or {}
    peak = max((m.get("reserved_gib") or 0 for m in mem.values()), default=None) if mem else None
    parts = [
        f"step {step if step is not None else '-'}/{total or '?'}",
        f"loss {_num(_latest(records, 'loss'), '{:.4f}')}",
        f"eval {_num(_latest(records, 'eval_loss'), '{:.4f}')}",
        f"lr {_num(_latest(records, 'lr'), '{:.2e}')}",
        f"tok/s {_num(_latest(records, 'tokens_per_s'), '{:,.0f}')}",
        f"ETA {_eta(last.get('eta_s')) if state == 'running' else '-'}",
    ]
    if peak:
        parts.append(f"mem {peak:.1f} GiB/rank max")
    return "  ".join(parts)


def _view(run: RunDir, records: list[dict], state: str, lines: list[str], flags):
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    last = records[-1] if records else {}
    step, total = last.get("step") or 0, last.get("total_steps") or 0
    head = Table.grid(padding=(0, 2))
    head.add_row(Text(f" {state} ", style="reverse"), Text(progress_line(records, state)))
    parts = [head]
    if total:
        parts.append(ProgressBar(total=total, completed=min(step, total), width=60))
    mem = _latest(records, "mem") or {}
    if mem:
        ranks = "  ".join(
            f"rank {r}: {_num(m.get('allocated_gib'), '{:.1f}')}/{_num(m.get('reserved_gib'), '{:.1f}')} GiB"
            for r, m in sorted(mem.items(), key=lambda kv: int(kv[0]))
        )
        parts.append(Text("memory (allocated/reserved)  " + ranks, style="dim"))
    for flag in flags:
        parts.append(Text(f"{flag.level}: {flag.text}", style="bold red" if flag.level == "error" else "yellow"))
    parts.append(Text("\n".join(lines[-6:]), style="dim"))
    return Panel(Group(*parts), title=f"{run.id}", subtitle="ctrl-c detaches (the run goes on)")


def attach(run: RunDir, raw: bool = False, poll_s: float = 0.25) -> int:
    """Follow a run until it ends: a live view on a terminal (plain progress lines when stdout is not
    one); `raw` prints train.log itself. Ctrl-C detaches and says how to come back."""
    if raw:
        return follow_log(run, poll_s)
    from runner.rundir.metrics import MetricsTail
    from runner.watch.health import assess

    tail = MetricsTail(run.metrics)
    records: list[dict] = []
    log_offset, lines, printed = 0, [], None
    tty = sys.stdout.isatty()
    live = None
    if tty:
        from rich.live import Live

        live = Live(refresh_per_second=4, transient=False)
        live.start()
    try:
        while True:
            records += tail.read()
            log_offset, new = _new_lines(run, log_offset)
            lines = (lines + [ln for ln in new if not ln.startswith("{'")])[
                -50:
            ]  # the trainer's own dicts: shown above
            state = run.effective_state()
            if state == "downloading":
                d = run.status().get("download") or {}
                text = (
                    f"downloading {d.get('repo_id', 'the model')}: {(d.get('done') or 0) / 1e9:.2f}/"
                    f"{(d.get('total') or 0) / 1e9:.2f} GB, {(d.get('bytes_per_s') or 0) / 1e6:.0f} MB/s"
                )
                if not lines or lines[-1] != text:
                    lines = lines[-49:] + [text]
                if live is None and text != printed:
                    print(text, flush=True)
                    printed = text
            if live is not None:
                flags = assess(records, now=time.time(), running=state == "running")
                live.update(_view(run, records, state, lines, flags))
            else:
                line = progress_line(records, state)
                if records and line != printed:
                    print(line, flush=True)
                    printed = line
            if state not in ACTIVE:
                break
            time.sleep(poll_s)  # files that grow: nothing to await but their size
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        print(f"\n-- detached; {run.id} keeps running. Back to it: ftui logs {run.id} -f  (or ftui monitor {run.id})")
        return 0
    if live is not None:
        live.stop()
    state, error = run.explain()
    print(f"-- run {run.id} is {state}" + (f": {error}" if state == "failed" and error else ""), file=sys.stderr)
    return 0 if state in ("finished", "stopped") else 1


def _new_lines(run: RunDir, offset: int) -> tuple[int, list[str]]:
    try:
        with open(run.log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset, []
    cut = data.rfind(b"\n") + 1  # whole lines only
    return offset + cut, data[:cut].decode("utf-8", errors="replace").splitlines()
