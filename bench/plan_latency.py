"""How long `ftui plan` takes: whole command in a fresh process, and the planner call alone.

python bench/plan_latency.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
