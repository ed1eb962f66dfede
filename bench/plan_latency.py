"""How long `ftui plan` takes: whole command in a fresh process, and the planner call alone; then the cold
start of `ftui plan --model 7b --gpus 8 --gpu a100-80g` against a bare `python -c "import rich.console,
rich.table"`, the two run alternately (run by run, so machine noise hits both) and compared by their medians.

python bench/plan_latency.py [--runs 10]

The comparison runs twice: with the bytecode of every module cached (in a temporary PYTHONPYCACHEPREFIX,
written by one warm-up run of each command; what an installed ftui sees), and in the environment as it is
(with PYTHONDONTWRITEBYTECODE=1 the project's sources are compiled again on every run, rich's are not).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "recommend 7b on 8 x a100-80g": ["--model", "7b", "--gpus", "8", "--gpu", "a100-80g"],
    "recommend qwen2.5-72b on 2 nodes x 8 h100": [
        "--model",
        "qwen2.5-72b",
        "--gpus",
        "8",
        "--nodes",
        "2",
        "--gpu",
        "h100",
    ],
    "estimate llama-3.1-8b full ZeRO-3": [
        "--model",
        "llama-3.1-8b",
        "--gpus",
        "8",
        "--gpu",
        "h100",
        "--tuner",
        "full",
        "--zero",
        "3",
    ],
}


PLAN_ARGV = ["-m", "tui.cli", "plan", "--model", "7b", "--gpus", "8", "--gpu", "a100-80g"]
BASELINE_ARGV = ["-c", "import rich.console, rich.table"]
BASELINE = 'python -c "import rich.console, rich.table"'
COMPARED = {
    "ftui plan --model 7b --gpus 8 --gpu a100-80g": PLAN_ARGV,
    "ftui plan --model 7b --gpus 8 --gpu a100-80g --json": [*PLAN_ARGV, "--json"],
}


def _wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def compare_with_rich(runs: int, env: dict[str, str], mode: str) -> None:
    """Median wall time of each compared command and of the baseline, run alternately, and their ratio."""
    commands = {"baseline": BASELINE_ARGV, **COMPARED}
    for argv in commands.values():  # warm-up: the OS file cache, and the bytecode cache where there is one
        _wall(argv, env)
    walls: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            walls[label].append(_wall(argv, env))
    base = statistics.median(walls["baseline"])
    print(f"cold start vs `{BASELINE}`, {runs} alternated runs, {mode}:")
    print(f"  {BASELINE:52s} median {base * 1000:6.0f} ms")
    for label in COMPARED:
        med = statistics.median(walls[label])
        print(f"  {label:52s} median {med * 1000:6.0f} ms   ratio {med / base:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    from planner import Cluster, Setup, gpu_spec, make_plan, resolve_model

    for label, flags in CASES.items():
        cmd = [sys.executable, "-m", "tui.cli", "plan", "--json", *flags]
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
        model = resolve_model(flags[1])
        gpus = int(flags[flags.index("--gpus") + 1])
        nodes = int(flags[flags.index("--nodes") + 1]) if "--nodes" in flags else 1
        cluster = Cluster(gpu_spec(flags[flags.index("--gpu") + 1]), gpus, nodes)
        tuner = flags[flags.index("--tuner") + 1] if "--tuner" in flags else "lora"
        setup = Setup(
            tuner=tuner,
            zero=3 if "--zero" in flags else 0,
            precision="bf16-mixed" if "--zero" in flags else "bf16-true",
        )
        calls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            make_plan(model, setup, cluster, recommend_tuner="--tuner" not in flags)
            calls.append(time.perf_counter() - t0)
        print(
            f"{label:45s} command median {statistics.median(walls) * 1000:6.0f} ms (max {max(walls) * 1000:.0f})"
            f" · planner call median {statistics.median(calls) * 1000:6.1f} ms"
        )
    with tempfile.TemporaryDirectory(prefix="ftui-pycache-") as prefix:
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        compare_with_rich(args.runs, {**cached, "PYTHONPYCACHEPREFIX": prefix}, "bytecode cached")
    as_is = "environment as is" + (
        " (PYTHONDONTWRITEBYTECODE set: the project's sources are compiled on every run)"
        if os.environ.get("PYTHONDONTWRITEBYTECODE")
        else ""
    )
    compare_with_rich(args.runs, dict(os.environ), as_is)
    return 0


if __name__ == "__main__":
    sys.exit(main())
