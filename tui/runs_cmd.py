"""`ftui runs`: every run with status, step, loss, ETA."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runner.rundir.metrics import last_record
from runner.rundir.runs import RunDir, default_runs_dir, list_runs

EPILOG = """examples:
  ftui runs                    runs under ./runs (or $FTUI_RUNS_DIR)
  ftui runs --runs-dir /data/runs --json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list runs with status, step, loss and ETA",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs-dir", type=Path, help="where to look (default ./runs or $FTUI_RUNS_DIR)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def summary(r: RunDir) -> dict:
    status = r.status()
    last = last_record(r.metrics) or {}
    launches = r.launches()
    return {
        "id": r.id,
        "path": str(r.path),
        "state": r.effective_state(),
        "step": last.get("step", status.get("step")),
        "total_steps": last.get("total_steps", status.get("total_steps")),
        "loss": last.get("loss") if last.get("loss") is not None else status.get("loss"),
        "eval_loss": last.get("eval_loss") if last.get("eval_loss") is not None else status.get("eval_loss"),
        "eta_s": last.get("eta_s"),
        "tokens_per_s": last.get("tokens_per_s"),
        "started": launches[0].get("created") if launches else None,
        "launches": len(launches),
        "exit_code": status.get("exit_code"),
        "last_error": status.get("last_error") or None,
    }


def run(args: argparse.Namespace) -> int:
    root = args.runs_dir or default_runs_dir()
    rows = [summary(r) for r in list_runs(root)]
    if args.json:
        print(json.dumps({"runs_dir": str(root), "runs": rows}, indent=2))
        return 0
    if not rows:
        print(f"no runs under {root} (start one with `ftui train RECIPE`)")
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


def render(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in ("run", "state", "step", "loss", "ETA", "started"):
        t.add_column(col)
    for r in rows:
        step = f"{r['step']}/{r['total_steps']}" if r["step"] is not None else "-"
        loss = f"{r['loss']:.4f}" if isinstance(r["loss"], (int, float)) else "-"
        started = time.strftime("%m-%d %H:%M", time.localtime(r["started"])) if r["started"] else "-"
        state = r["state"] + (f" ({r['last_error'][:60]})" if r["state"] == "failed" and r["last_error"] else "")
        t.add_row(r["id"], state, step, loss, _eta(r["eta_s"]) if r["state"] == "running" else "-", started)
    Console(highlight=False).print(t)
