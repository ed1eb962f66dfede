"""Planner accuracy against published peak-memory measurements.

For every row of a validation CSV (default: ../shared/validation/memory_public.csv next to the
repository), runs `ftui plan --json` in-process with the row's settings, reads the metric the
source measured (torch max_memory_reserved -> peak_reserved_gib, max_memory_allocated ->
peak_allocated_gib, NVML -> nvml_used_gib; `fits` rows check the fit verdict) and prints
predicted vs measured, the error, and the mean absolute error. Values in the file are GiB.

    python bench/planner_accuracy.py [--csv PATH] [--verbose]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tui.cli import main as ftui  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "validation" / "memory_public.csv"
METRIC_KEY = {"reserved": "peak_reserved_gib", "allocated": "peak_allocated_gib", "nvml": "nvml_used_gib"}
FLAGS = {
    "tuner": "--tuner",
    "lora_rank": "--lora-rank",
    "lora_targets": "--lora-targets",
    "lisa_layers": "--lisa-layers",
    "quant": "--quant",
    "precision": "--precision",
    "optim": "--optim",
    "zero": "--zero",
    "offload": "--offload",
    "gpus": "--gpus",
    "gpu": "--gpu",
    "micro_batch": "--micro-batch",
    "seq_len": "--seq-len",
    "attn": "--attn",
}


class Unsupported(RuntimeError):
    """A row whose setup the planner does not model yet."""


def plan_argv(row: dict[str, str]) -> list[str]:
    argv = ["plan", "--json", "--model", row["model"]]
    for column, flag in FLAGS.items():
        value = row.get(column)
        if not value:
            continue
        if column == "zero" and value == "fsdp":  # FSDP full shard (with `offload` optimizer+params: its CPU offload)
            argv += ["--fsdp", "full_shard"]
            continue
        if column == "gpu" and value.startswith("mem:"):  # usable memory in GiB, GPU type unknown
            argv += ["--gpu-mem", value.removeprefix("mem:")]
            continue
        argv += [flag, value]
    if row.get("grad_ckpt") in ("0", "1"):
        argv.append("--grad-ckpt" if row["grad_ckpt"] == "1" else "--no-grad-ckpt")
    return argv


def run_plan(argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = ftui(argv)
        except SystemExit as exit_:  # argparse refused a flag
            code = exit_.code if isinstance(exit_.code, int) else 2
    if code != 0:
        raise RuntimeError(err.getvalue().strip())
    return json.loads(out.getvalue())["estimate"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--verbose", action="store_true", help="also print the per-GPU breakdown of each row")
    args = parser.parse_args()
    rows = list(csv.DictReader(args.csv.open()))
    errors: list[float] = []
    fit_checks: list[bool] = []
    started = time.perf_counter()
    print(
        f"{'id':6} {'model':14} {'tuner':5} {'mb':>3} {'seq':>5} {'ckpt':>4} {'attn':5} {'metric':9} "
        f"{'measured':>9} {'predicted':>9} {'error':>8}"
    )
    for row in rows:
        try:
            est = run_plan(plan_argv(row))
        except Unsupported as err:
            print(f"{row['id']:6} skipped: {err}")
            continue
        except RuntimeError as err:
            print(f"{row['id']:6} could not plan: {err}")
            continue
        head = (
            f"{row['id']:6} {row['model']:14} {row['tuner']:5} {row['micro_batch']:>3} {row['seq_len']:>5} "
            f"{row['grad_ckpt']:>4} {row['attn']:5} {row['metric']:9}"
        )
        if row["metric"] == "fits":
            expected = row["kind"] != "oom"
            ok = est["fits"] == expected
            fit_checks.append(ok)
            print(
                f"{head} {'fits' if expected else 'OOM':>9} {'fits' if est['fits'] else 'OOM':>9} "
                f"{'ok' if ok else 'WRONG':>8}   (needs {est['required_gib']:.1f} of {est['capacity_gib']:.1f} GiB)"
            )
            continue
        measured = float(row["value"])
        predicted = est["per_gpu"][METRIC_KEY[row["metric"]]]
        error = (predicted - measured) / measured
        errors.append(abs(error))
        print(f"{head} {measured:9.2f} {predicted:9.2f} {error:+8.1%}")
        if args.verbose:
            parts = ", ".join(f"{k[:-4]} {v:.2f}" for k, v in est["per_gpu"].items())
            print(f"       {parts}")
    elapsed = time.perf_counter() - started
    print()
    if errors:
        print(
            f"mean absolute error: {sum(errors) / len(errors):.1%} over {len(errors)} measured rows "
            f"(max {max(errors):.1%})"
        )
    if fit_checks:
        print(f"fit verdicts: {sum(fit_checks)}/{len(fit_checks)} correct")
    print(f"planned {len(rows)} rows in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
