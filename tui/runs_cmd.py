"""`ftui runs`: every run with status, step, loss, ETA (ftui's, and with --watch other tools')."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from runner.rundir.metrics import last_record
from runner.rundir.runs import RunDir, default_runs_dir, list_runs
from runner.watch import foreign
from runner.watch.sources import latest_values

from .app_cmd import add_watch_option, watch_dirs

EPILOG = """examples:
  ftui runs                    runs under ./runs (or $FTUI_RUNS_DIR)
  ftui runs --runs-dir /data/runs --json
  ftui runs --watch saves --watch output     also LLaMA-Factory, ms-swift and HF Trainer runs found there
"""

LATEST = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s")
"""Values shown as their newest (a run's last record may be an evaluation, or its end, without them)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list runs with status, step, loss and ETA",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs-dir", type=Path, help="where to look (default ./runs or $FTUI_RUNS_DIR)")
    add_watch_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def summary(r: RunDir) -> dict:
    status = r.status()
    last = last_record(r.metrics) or {}
    newest = latest_values(r.metrics, LATEST)
    launches = r.launches()
    state, error = r.explain(status, launches)
    return {
        "id": r.id,
        "tool": "ftui",
        "path": str(r.path),
        "state": state,
        "step": last.get("step", status.get("step")),
        "total_steps": last.get("total_steps", status.get("total_steps")),
        "loss": newest["loss"] if newest["loss"] is not None else status.get("loss"),
        "eval_loss": newest["eval_loss"] if newest["eval_loss"] is not None else status.get("eval_loss"),
        "lr": newest["lr"],
        "grad_norm": newest["grad_norm"],
        "eta_s": last.get("eta_s"),
        "tokens_per_s": newest["tokens_per_s"],
        "started": launches[0].get("created") if launches else None,
        "launches": len(launches),
        "exit_code": status.get("exit_code"),
        "last_error": error or None,
        "download": status.get("download") if state == "downloading" else None,
        "diagnosis": diagnosis(r, state),
        "slurm": slurm_summary(r, launches, status),
    }


def slurm_summary(r: RunDir, launches: list[dict], status: dict) -> dict | None:
    """The Slurm job of a run submitted with --slurm: id, Slurm's state and reason, as shown."""
    job_id, job = r.job(launches, status)
    if job_id is None:
        return None
    if job is None:
        return {"job_id": job_id, "state": None, "reason": None, "label": "gone from Slurm"}
    return {"job_id": job_id, "state": job.state, "reason": job.reason or None, "label": job.label()}


def diagnosis(r: RunDir, state: str) -> list[str]:
    """The learning-curve diagnoses (runner.watch.health) of a run that trained: texts with the action."""
    from runner.rundir.metrics import MetricsTail
    from runner.watch.health import curve_flags, overfit_flags

    records = MetricsTail(r.metrics).read()
    steps = sorted(
        int(p.name.split("-")[1]) for p in r.checkpoints.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    )
    flags = overfit_flags(records, steps) + curve_flags(records, finished=state == "finished")
    return [f.text for f in flags]


def run(args: argparse.Namespace) -> int:
    root = args.runs_dir or default_runs_dir()
    watch = watch_dirs(args)
    rows = [summary(r) for r in list_runs(root)]
    now = time.time()
    others = [foreign.summary(r, now) for r in foreign.scan(watch)] if watch else []
    rows += sorted(others, key=lambda r: r["started"] or 0.0, reverse=True)
    if args.json:
        print(json.dumps({"runs_dir": str(root), "watch": [str(w) for w in watch], "runs": rows}, indent=2))
        return 0
    if not rows:
        where = " or ".join([str(root), *map(str, watch)])
        print(f"no runs under {where} (start one with `ftui train RECIPE`)")
        return 0
    render(rows)
    return 0


def _eta(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def number(value, fmt: str) -> str:
    """`value` formatted, "-" when it is no finite number; never "-0.0" (a negative zero or a tiny negative)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    text = fmt.format(value)
    return text[1:] if text.startswith("-") and not text.strip("-0.,e+") else text


def downloading(d: dict) -> str:
    """`3.2/15.1 GB 48 MB/s` for a run fetching its model."""
    done, total, rate = d.get("done") or 0, d.get("total") or 0, d.get("bytes_per_s") or 0
    return f"{done / 1e9:.1f}/{total / 1e9:.1f} GB" + (f" {rate / 1e6:.0f} MB/s" if rate else "")


def render(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    jobs = any(r.get("slurm") for r in rows)
    for col in ("run", "tool", "state", *(("slurm job",) if jobs else ()), "step", "loss", "ETA", "started"):
        t.add_column(col)
    for r in rows:
        step = f"{r['step']}/{r['total_steps'] or '?'}" if r["step"] is not None else "-"
        started = time.strftime("%m-%d %H:%M", time.localtime(r["started"])) if r["started"] else "-"
        error = r.get("last_error")
        state = r["state"] + (f" ({error[:60]})" if r["state"] == "failed" and error else "")
        if r["state"] == "downloading" and r.get("download"):
            state += " " + downloading(r["download"])
        eta = _eta(r["eta_s"]) if r["state"] == "running" else "-"
        job = (f"{r['slurm']['job_id']} {r['slurm']['label']}",) if r.get("slurm") else ("-",) if jobs else ()
        t.add_row(r["id"], r["tool"], state, *job, step, number(r["loss"], "{:.4f}"), eta, started)
    console = Console(highlight=False)
    console.print(t)
    for r in rows:
        for text in r.get("diagnosis") or []:
            console.print(f"[yellow]{r['id']}: {text}[/yellow]")
