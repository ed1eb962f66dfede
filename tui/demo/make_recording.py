"""Write the demo recording: a synthetic Qwen2.5-7B LoRA run on 8 x H100 (one record per second).

The numbers are made up to look like such a run (loss falling with noise, an eval every 100
steps, ~24k tokens/s, ~59 GiB reserved per rank, as the fake 8xh100 GPUs show); nothing here
was measured. Deterministic: `python tui/demo/make_recording.py` rewrites the same files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

OUT = Path(__file__).with_name("qwen2.5-7b-lora-8xh100")
STEPS, EVERY, T0 = 600, 5, 1_800_000_000.0


def records() -> list[dict]:
    rng = random.Random(2026)
    out, tokens = [], 0
    for i, step in enumerate(range(EVERY, STEPS + 1, EVERY)):
        t = T0 + i
        tokens += EVERY * 8 * 4 * 1900
        loss = 1.05 + 1.1 * math.exp(-step / 140) + rng.gauss(0, 0.035)
        lr = 1e-4 * min(1.0, step / 18) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        # the fake 8xh100 NVML scenario shows 60_500 + 500 r MiB per rank: reserved is that less the context
        mem = {
            str(r): {
                "allocated_gib": round((60_500 + 500 * r) / 1024 - 4.8, 2),
                "reserved_gib": round((60_500 + 500 * r) / 1024 - 0.6, 2),
            }
            for r in range(8)
        }
        out.append(
            {
                "step": step,
                "total_steps": STEPS,
                "epoch": round(step / 300, 4),
                "loss": round(loss, 4),
                "eval_loss": None,
                "lr": lr,
                "grad_norm": round(0.4 + rng.random() * 0.2, 3),
                "tokens": tokens,
                "tokens_per_s": round(24_100 + rng.gauss(0, 300), 1),
                "samples_per_s": round(12.6 + rng.gauss(0, 0.2), 3),
                "elapsed_s": float(i + 1) * 6.3,
                "eta_s": round((STEPS - step) * 1.26, 1),
                "mem": mem,
                "time": t,
            }
        )
        if step % 100 == 0:
            out.append(
                {
                    **out[-1],
                    "loss": None,
                    "eval_loss": round(1.12 + 1.0 * math.exp(-step / 160), 4),
                    "lr": None,
                    "grad_norm": None,
                    "tokens_per_s": None,
                    "samples_per_s": None,
                    "time": t + 0.5,
                }
            )
    return out


def main() -> None:
    OUT.mkdir(exist_ok=True)
    recs = records()
    (OUT / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    log = [
        f"{{'loss': '{r['loss']:.4f}', 'grad_norm': '{r['grad_norm']}', 'learning_rate': '{r['lr']:.3e}', "
        f"'epoch': '{r['epoch']}'}}"
        if r["loss"] is not None
        else f"{{'eval_loss': '{r['eval_loss']:.4f}'}}"
        for r in recs
    ]
    (OUT / "train.log").write_text(
        "synthetic demo recording (see tui/demo/make_recording.py)\n" + "\n".join(log) + "\n"
    )
    (OUT / "plan.json").write_text(
        json.dumps(
            {"per_gpu": {"peak_allocated_gib": 55.2, "peak_reserved_gib": 59.5, "nvml_used_gib": 60.1}, "fits": True},
            indent=2,
        )
        + "\n"
    )
    (OUT / "status.json").write_text(json.dumps({"state": "finished", "step": STEPS, "total_steps": STEPS}) + "\n")
    (OUT / "recipe.yaml").write_text(
        "# synthetic demo recording\ntuner: lora\nmodel:\n  path: Qwen/Qwen2.5-7B-Instruct\n"
    )


if __name__ == "__main__":
    main()
