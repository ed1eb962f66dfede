"""What does running through ftui cost per training step?

The same training (a small random Llama on the demo data, 2 processes over gloo on the CPU, or on
GPUs where there are some) is launched alternately (a) with `ftui train` (detached supervisor,
ftui's launcher, metrics and stop callbacks) and (b) bare: a plain HF Trainer script under
`torchrun`. Step time is measured the same way in both, between logging steps after a warm-up.

    python bench/runner_overhead.py [--runs 3] [--steps 120] [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes import find_recipe  # noqa: E402
from runner.rundir.runs import RunDir  # noqa: E402

WARMUP = 20
LOG_EVERY = 10

BARE = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments
from runner.recipe.schema import load_recipe
from runner.train.data import build_datasets, make_collator
recipe = load_recipe({recipe!r})
tok = AutoTokenizer.from_pretrained(recipe.model.path)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(recipe.model.path))
train, _, _ = build_datasets(recipe.dataset.__class__(**{{**recipe.dataset.__dict__, "eval_split": 0.0}}), tok,
                             base_dir=recipe.base_dir(), seed=recipe.train.seed)
times = {{}}
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.is_world_process_zero and state.global_step in ({warmup}, {steps}):
            times[state.global_step] = time.perf_counter()
t = recipe.train
args = TrainingArguments(output_dir={out!r}, per_device_train_batch_size=t.micro_batch, gradient_accumulation_steps=1,
                         learning_rate=t.lr, max_steps={steps}, logging_steps={log}, save_strategy="no", report_to=[],
                         use_cpu={cpu}, ddp_backend={backend!r}, dataloader_num_workers=0, disable_tqdm=True,
                         remove_unused_columns=False, seed=t.seed)
Trainer(model=model, args=args, train_dataset=train, data_collator=make_collator(tok), callbacks=[Clock()]).train()
if times:
    Path({result!r}).write_text(json.dumps((times[{steps}] - times[{warmup}]) / ({steps} - {warmup})))
"""


def bench_model(tmp: Path) -> Path:
    """The demo's tokenizer with a wider, deeper random model (steps long enough to time)."""
    src = find_recipe("tiny-demo").parent / "tiny" / "model"
    dst = tmp / "model"
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
    )
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def ftui_step_time(model: Path, runs_dir: Path, steps: int, procs: int) -> float:
    sets = [
        f"model.path={model}",
        f"train.max_steps={steps}",
        f"train.logging_steps={LOG_EVERY}",
        "train.save_steps=100000",
        "dataset.eval_split=0",
        f"distributed.gpus={procs}",
        "tuner=full",
    ]
    argv = [sys.executable, "-m", "tui.cli", "train", "tiny-demo", "--runs-dir", str(runs_dir)]
    for item in sets:
        argv += ["--set", item]
    out = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    run = RunDir(runs_dir / out.split()[1].rstrip(":"))
    fd = os.pidfd_open(run.launches()[-1]["pid"])
    select.select([fd], [], [])
    os.close(fd)
    records = {r["step"]: r for r in map(json.loads, run.metrics.read_text().splitlines()) if r.get("loss") is not None}
    return (records[steps]["elapsed_s"] - records[WARMUP]["elapsed_s"]) / (steps - WARMUP)


def bare_step_time(model: Path, tmp: Path, steps: int, procs: int, index: int) -> float:
    recipe = tmp / f"bare-{index}.yaml"
    recipe.write_text(
        find_recipe("tiny-demo")
        .read_text()
        .replace("path: tiny/model", f"path: {model}")
        .replace("path: tiny/data", f"path: {find_recipe('tiny-demo').parent / 'tiny' / 'data'}")
    )
    result = tmp / f"bare-{index}.json"
    script = tmp / f"bare-{index}.py"
    cpu = not shutil.which("nvidia-smi")
    script.write_text(
        BARE.format(
            root=str(ROOT),
            recipe=str(recipe),
            warmup=WARMUP,
            steps=steps,
            log=LOG_EVERY,
            out=str(tmp / f"bare-out-{index}"),
            cpu=cpu,
            backend="gloo" if cpu else "nccl",
            result=str(result),
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs)), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), str(script)],
        check=True,
        capture_output=True,
        env=env,
    )
    return json.loads(result.read_text())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = bench_model(tmp)
        ftui, bare = [], []
        for i in range(args.runs):
            ftui.append(ftui_step_time(model, tmp / "runs", args.steps, args.procs))
            bare.append(bare_step_time(model, tmp, args.steps, args.procs, i))
            print(
                f"run {i + 1}: ftui {ftui[-1] * 1000:7.2f} ms/step   bare torchrun {bare[-1] * 1000:7.2f} ms/step",
                flush=True,
            )
    ratio = statistics.median(ftui) / statistics.median(bare)
    print(
        f"median step time: ftui {statistics.median(ftui) * 1000:.2f} ms, bare {statistics.median(bare) * 1000:.2f} ms;"
        f" ratio {ratio:.3f} (target <= 1.02) over {args.runs} alternating runs of {args.steps} steps x "
        f"{args.procs} processes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
