"""How long the trace of ftui's own training step takes: every catalog model transformers can build,
LoRA and full fine-tuning at 2048 tokens, the way `ftui plan --verify` runs it (two short traces
extrapolated to the whole model), in this process (the child process adds its imports, ~5 s).

python bench/trace_time.py [--models a,b] [--tuners lora,full]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="")
    parser.add_argument("--tuners", default="lora,full")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from planner import Setup, architecture_from_config
    from planner.rules import usable_attn
    from runner.train.trace import NotTraceable, trace_setup

    models = sorted(ROOT.joinpath("planner", "models").glob("*.json"))
    wanted = {m for m in args.models.split(",") if m}
    worst = (0.0, "")
    t0 = time.perf_counter()
    warm = ROOT / "planner" / "models" / "llama-3.2-1b.json"  # a family transformers builds from its config
    trace_setup(json.loads(warm.read_text())["config"], Setup(tuner="lora", attn="sdpa"))  # warm imports
    print(f"warm-up (imports, first trace): {time.perf_counter() - t0:.1f} s")
    for path in models:
        entry = json.loads(path.read_text())
        if wanted and entry["name"] not in wanted:
            continue
        config = entry["config"]
        for tuner in args.tuners.split(","):
            attn = usable_attn(architecture_from_config(config), "sdpa")  # eager where transformers refuses sdpa
            setup = Setup(tuner=tuner, attn=attn, seq_len=2048, precision="bf16-true")
            started = time.perf_counter()
            try:
                result = trace_setup(config, setup)
            except NotTraceable as err:
                print(f"{entry['name']:26} {tuner:5} not traceable: {err}")
                continue
            except Exception as err:  # remote-code families transformers cannot build from a config alone
                print(f"{entry['name']:26} {tuner:5} not built: {type(err).__name__}: {str(err).splitlines()[0][:90]}")
                continue
            seconds = time.perf_counter() - started
            worst = max(worst, (seconds, f"{entry['name']} {tuner}"))
            print(
                f"{entry['name']:26} {tuner:5} {seconds:6.1f} s  layers {result.layers_traced} of {result.layers}"
                f"  peak {result.peak_allocated / 2**30:8.2f} GiB"
            )
    print(f"\nslowest: {worst[0]:.1f} s ({worst[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
