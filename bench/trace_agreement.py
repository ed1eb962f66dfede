"""The analytic memory model against the exact trace of ftui's own training step.

For every catalog family transformers can build, a matrix of setups (full in bf16-true and
bf16-mixed, LoRA all-linear and attention-only, DoRA, freeze, LISA, QLoRA; checkpointing on and off; SDPA
and eager; two sequence lengths; two micro-batches) is traced on the CPU at real widths (two
depths, extrapolated to the whole model) and the planner is evaluated on the same model. Prints each case's
peak allocated per phase (planner vs trace), the part that differs most, and a summary.

python bench/trace_agreement.py [--layers 1] [--families llama,qwen2] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TUNERS = {
    "full bf16-true": dict(tuner="full", precision="bf16-true"),
    "full bf16-mixed": dict(tuner="full", precision="bf16-mixed"),
    "lora all-linear": dict(tuner="lora", lora_targets="all-linear"),
    "lora attn": dict(tuner="lora", lora_targets="attn"),
    "dora": dict(tuner="lora", dora=True),
    "freeze": dict(tuner="freeze", trainable_layers=1),
    "lisa": dict(tuner="lisa", lisa_layers=1),
    "qlora": dict(tuner="qlora"),
}
SEQ_LENS = (512, 2048)
MICRO_BATCHES = (1, 2)


def cases(quick: bool):
    """The whole grid, or (quick) each tuner with checkpointing on and off and the other three
    knobs rotated so that every value of each appears."""
    rest = list(itertools.product(("sdpa", "eager"), SEQ_LENS, MICRO_BATCHES))
    for t, tuner in enumerate(TUNERS):
        for c, ckpt in enumerate((True, False)):
            chosen = [rest[(2 * t + c) % len(rest)], rest[(2 * t + c + 3) % len(rest)]] if quick else rest
            for attn, seq, mb in chosen:
                yield tuner, dict(TUNERS[tuner], grad_ckpt=ckpt, attn=attn, seq_len=seq, micro_batch=mb)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=0, help="cut the models to this many layers (0: whole)")
    parser.add_argument("--families", default="")
    parser.add_argument("--quick", action="store_true", help="every 8th case of the matrix")
    parser.add_argument("--json", type=Path, help="also write every case to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from runner.train.agreement import TRACEABLE_FAMILIES, compare

    families = [f for f in args.families.split(",") if f] or list(TRACEABLE_FAMILIES)
    rows = []
    t0 = time.perf_counter()
    for family in families:
        model = TRACEABLE_FAMILIES[family]
        for label, knobs in cases(args.quick):
            row = compare(model, knobs, layers=args.layers)
            row.update(family=family, case=label)
            rows.append(row)
            print(_line(row), flush=True)
    errs = [abs(r[f"{ph}_err"]) for r in rows if "backward_err" in r for ph in ("backward", "step")]
    worst = max(rows, key=lambda r: max(abs(r.get("backward_err", 0)), abs(r.get("step_err", 0))), default=None)
    within = sum(e <= 3.0 for e in errs)
    print(
        f"\n{len(rows)} cases, {len(errs)} phase peaks: {within} within 3 % "
        f"({100 * within / max(1, len(errs)):.0f} %), "
        f"mean |error| {sum(errs) / max(1, len(errs)):.2f} %, worst {max(errs, default=0):.2f} % "
        f"({worst['family']} {worst['case']} {worst['knobs']})"
        if worst
        else "no cases"
    )
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _line(r: dict) -> str:
    if "reason" in r:
        return f"{r['family']:10} {r['case']:16} {r['knobs']}: not traced: {r['reason']}"
    k = r["knobs"]
    tag = f"ckpt={'on' if k['grad_ckpt'] else 'off'} {k['attn']:5} s={k['seq_len']} mb={k['micro_batch']}"
    return (
        f"{r['family']:10} {r['case']:16} {tag:30} backward {r['plan_backward']:8.3f} vs {r['trace_backward']:8.3f} "
        f"({r['backward_err']:+6.2f} %)  step {r['plan_step']:8.3f} vs {r['trace_step']:8.3f} ({r['step_err']:+6.2f} %)"
        f"  most: {r['worst_part']}"
    )


if __name__ == "__main__":
    sys.exit(main())
