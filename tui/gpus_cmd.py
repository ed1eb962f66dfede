"""`ftui gpus`: what NVML sees."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from runner.machine.nvml import GpuSnapshot, NoGpu, local_gpus

EPILOG = """examples:
  ftui gpus            table of GPUs, memory, utilisation, temperature, power, processes
  ftui gpus --json     the same as JSON, for scripts
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gpus",
        help="the local NVIDIA GPUs, from NVML",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _cell(value, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def run(args: argparse.Namespace) -> int:
    try:
        gpus = local_gpus()
    except NoGpu as err:
        if args.json:
            print(json.dumps({"gpus": [], "error": str(err)}))
        else:
            print(str(err), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"gpus": [asdict(g) for g in gpus]}, indent=2))
        return 0
    render(gpus)
    return 0


def render(gpus: list[GpuSnapshot]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in ("#", "name", "memory used / total", "util", "temp", "power", "processes"):
        t.add_column(col)
    for g in gpus:
        used = "n/a" if g.memory_used is None else f"{g.memory_used / 2**30:.1f}"
        power = "n/a" if g.power_w is None else f"{g.power_w:.0f}/{_cell(g.power_limit_w, '{:.0f}')} W"
        procs = (
            ", ".join(f"{p.pid} ({_cell(p.used_bytes and p.used_bytes / 2**30, '{:.1f}')} GiB)" for p in g.processes)
            or "-"
        )
        t.add_row(
            str(g.index),
            g.name,
            f"{used} / {g.memory_total / 2**30:.1f} GiB",
            _cell(g.utilization, "{}%"),
            _cell(g.temperature, "{}°C"),
            power,
            procs,
        )
    Console(highlight=False).print(t)
