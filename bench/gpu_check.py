"""Measured GPU memory and speed of real `ftui train` runs against the plan, on one NVIDIA GPU.

Each case is a real, detached `ftui train RECIPE --attach` run (HF Trainer through ftui's own
runner) of a random-initialised, real-size architecture from the catalog (planner/models/*.json:
the real widths, depth and vocabulary; the tiny demo tokenizer of recipes/tiny/model, whose token
ids are all below the real vocabulary), trained for --steps steps on synthetic text that fills
every sequence to the target length. After each run it reads what the runner measured
(`torch.cuda.max_memory_allocated/reserved` per rank: status.json `measured_peak`, metrics.jsonl
`mem`), the NVML memory of the training process sampled during the run, and tokens/s from
metrics.jsonl, and sets them beside the plan `ftui train` checked the run against (the run's
plan.json: peak allocated, reserved, NVML used, tokens_per_s; `ftui plan --json` for the same
settings is kept too, as `planned_cli`). Error = (planned - measured) / measured.

Cases, cheapest first (a run cut short by the budget still leaves the earlier results; the JSON
file is rewritten after every case):

    full-1.5b     full fine-tuning, bf16, qwen2.5-1.5b, seq 2048, micro-batch 2
    lora-8b-2k    LoRA r8 all-linear, llama-3.1-8b, seq 2048, micro-batch 2
    lora-8b-8k    LoRA r8 all-linear, llama-3.1-8b, seq 8192, micro-batch 1
    qlora-8b      QLoRA nf4 (double quant), llama-3.1-8b, seq 2048, micro-batch 1
    lisa-8b       LISA (2 layers, switched every 10 steps), llama-3.1-8b, seq 2048, micro-batch 1

Extras, run only when named in --cases:

    qlora-8b-16k    QLoRA nf4, llama-3.1-8b, seq 16384, micro-batch 1 (the long-context boundary)
    lora-qwen7b-8k  LoRA r8 all-linear, qwen2.5-7b (152k vocabulary), seq 8192, micro-batch 1

Random weights: by default (`--init weights`) each architecture's weights are initialised once,
on the GPU in a child process (transformers' own init, seconds instead of minutes on the CPU),
saved next to the config and loaded by the runs (`model.init: pretrained`); `--init random`
leaves it to the runner (`model.init: random`: a CPU init of 8B parameters in every run, and for
QLoRA a save and reload, about a minute or more each). The parent process never touches CUDA, so
NVML sees only the training process.

    python bench/gpu_check.py                          # every case, ~8 minutes on one H100/H200
    python bench/gpu_check.py --cases lora-8b-2k,qlora-8b --steps 20
    python bench/gpu_check.py --dry-run --cases lora-8b-2k   # CPU, 2-layer hidden-64 configs, ~10 s a case

Writes bench/results/gpu_check-<date>-<gpu>.json (or --out DIR; a dry run: $TMPDIR/ftui-gpu-check/):
versions, GPU, driver, and per case the resolved settings, planned and measured figures, errors,
and the log tail of a failure (bench/results/README.md describes every key). Getting the packages
onto a GPU box without network: bench/gpu_bundle/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.rundir.metrics import MetricsTail  # noqa: E402
from runner.rundir.runs import RunDir  # noqa: E402

GIB = 2**30
TINY_MODEL = ROOT / "recipes" / "tiny" / "model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CATALOG = ROOT / "planner" / "models"
CPU_NOTE = "cpu dry run: no CUDA peaks"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "deepspeed", "nvidia-ml-py")
DRY_PLAN_GPU = "h200"
"""What a dry run plans for (it trains on the CPU, where there is no GPU to plan for)."""


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    """Catalog name (planner/models/<model>.json)."""
    tuner: str
    seq_len: int
    micro_batch: int
    est_s: float
    """Wall time on one H200 with --steps 30, model already built (for the budget; the first five
    measured on 2026-12-04, bench/results/gpu_check-2026-12-04-015919-nvidia-h200.json)."""
    dry_seq_len: int = 128
    sets: tuple[tuple[str, Any], ...] = ()
    """Extra recipe values (section.key, value)."""
    extra: bool = False
    """Run only when named in --cases (the default set fits the 8-minute budget)."""

    def describe(self) -> str:
        return f"{self.tuner} {self.model} seq {self.seq_len} x {self.micro_batch}"


CASES = (
    Case("full-1.5b", "qwen2.5-1.5b", "full", 2048, 2, est_s=55),
    Case("lora-8b-2k", "llama-3.1-8b", "lora", 2048, 2, est_s=50),
    Case("lora-8b-8k", "llama-3.1-8b", "lora", 8192, 1, est_s=75, dry_seq_len=512),
    Case("qlora-8b", "llama-3.1-8b", "qlora", 2048, 1, est_s=60),
    Case("lisa-8b", "llama-3.1-8b", "lisa", 2048, 1, est_s=100, sets=(("lisa.layers", 2), ("lisa.interval", 10))),
    # Extras, by name only: the long-context QLoRA boundary and LoRA at 8k on a 152k vocabulary.
    Case("qlora-8b-16k", "llama-3.1-8b", "qlora", 16384, 1, est_s=240, dry_seq_len=512, extra=True),
    Case("lora-qwen7b-8k", "qwen2.5-7b", "lora", 8192, 1, est_s=80, dry_seq_len=512, extra=True),
)
BY_NAME = {c.name: c for c in CASES}
HARD_SLACK_S = 30.0
"""A case still running this long after --budget-s is killed (what it measured so far is kept)."""
BUILD_EST_S = {"qwen2.5-1.5b": 25.0, "llama-3.1-8b": 45.0, "qwen2.5-7b": 45.0}
"""Rough time to initialise and save a model's weights once (--init weights) on the GPU box."""


# --- model directories and data ----------------------------------------------------------------


def catalog_config(name: str) -> dict[str, Any]:
    return dict(json.loads((CATALOG / f"{name}.json").read_text())["config"])


def tiny_version(config: dict[str, Any]) -> dict[str, Any]:
    """The same architecture at 2 layers and hidden 64 (real vocabulary, same head ratios, same family)."""
    heads, kv = (
        int(config["num_attention_heads"]),
        int(config.get("num_key_value_heads") or config["num_attention_heads"]),
    )
    group = max(1, heads // max(1, kv))
    tiny_heads = 4
    tiny_kv = max(1, tiny_heads // min(group, tiny_heads))
    ratio = int(config.get("intermediate_size") or 4 * config["hidden_size"]) / int(config["hidden_size"])
    out = dict(config)
    out.update(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=tiny_heads,
        num_key_value_heads=tiny_kv,
        head_dim=64 // tiny_heads,
        intermediate_size=max(16, int(round(64 * ratio / 16)) * 16),
    )
    if "max_window_layers" in out:
        out["max_window_layers"] = 2
    return out


def write_model_dir(path: Path, config: dict[str, Any]) -> Path:
    """config.json plus the tiny demo tokenizer (its model_max_length raised to the model's context)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(TINY_MODEL / name, path / name)
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = int(config.get("max_position_embeddings") or 131072)
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return path


WORDS = (
    "the of and to in is was for on that with as by at from his her an which have are were this be not or had "
    "their one all also has been more its new first after other two who they over into only most years time "
    "memory plan gradient layer token model train batch sequence adapter weight optimizer state shard kernel "
    "attention forward backward logits loss vocabulary embedding norm rotary window checkpoint device"
).split()


def write_text_data(path: Path, seq_len: int, records: int, seed: int = 0) -> Path:
    """`records` texts of more than `seq_len` words: every word is at least one token, so each
    sample is truncated to exactly `seq_len` tokens (overlong: truncate) and no batch is padded."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(records):
            text = " ".join(rng.choice(WORDS) for _ in range(seq_len + 32))
            fh.write(json.dumps({"text": text}) + "\n")
    return path


BUILD = r"""
import json, sys, time
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
device, dirs = sys.argv[1], sys.argv[2:]
for d in dirs:
    t0 = time.time()
    original = open(d + "/config.json").read()
    config = AutoConfig.from_pretrained(d, local_files_only=True)
    torch.manual_seed(0)
    new_api = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)  # dtype= was torch_dtype=
    with torch.device(device):  # initialised where it is built: on the GPU, seconds for 8B parameters
        model = AutoModelForCausalLM.from_config(config, **{"dtype" if new_api else "torch_dtype": torch.bfloat16})
    model = model.to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(d)
    open(d + "/config.json", "w").write(original)  # the catalog's config, not this transformers' rewrite
    del model
    print(json.dumps({"dir": d, "params": n, "seconds": round(time.time() - t0, 2)}), flush=True)
"""


def build_weights(dirs: list[Path], device: str) -> dict[str, Any]:
    """Random weights for each model directory, initialised on `device` in a child process."""
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, device, *map(str, dirs)], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building weights failed:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"dir"')]  # libraries print too
    return {Path(d["dir"]).name: d for d in map(json.loads, lines)}


def recipe_yaml(case: Case, model_dir: Path, data: Path, *, dry: bool, steps: int, init: str) -> str:
    import yaml

    seq = case.dry_seq_len if dry else case.seq_len
    recipe: dict[str, Any] = {
        "model": {"path": str(model_dir), "init": "random" if init == "random" else "pretrained"},
        "dataset": {"path": str(data), "format": "text", "max_seq_len": seq, "overlong": "truncate", "eval_split": 0.0},
        "tuner": case.tuner,
        "train": {
            "max_steps": steps,
            "micro_batch": 1 if dry else case.micro_batch,
            "grad_accum": 1,
            "lr": 1e-4,
            "warmup_ratio": 0.0,
            "grad_ckpt": True,
            "logging_steps": 1,
            "save_steps": 1_000_000,
            "save_total_limit": 1,
        },
        "distributed": {"gpus": 1, "zero": 0, "device": "cpu" if dry else "cuda"},
        "output": {"name": f"gpu-check-{case.name}"},
    }
    for dotted, value in case.sets:
        section, key = dotted.split(".")
        recipe.setdefault(section, {})[key] = value
    return yaml.safe_dump(recipe, sort_keys=False)


# --- NVML -------------------------------------------------------------------------------------


def nvml_reader():
    """runner.machine.nvml's reader (honours FTUI_FAKE_NVML), or None when NVML is unusable here."""
    from runner.machine.nvml import NoGpu, NvmlReader

    reader = NvmlReader()
    try:
        if not reader.snapshot():
            return None
    except NoGpu:
        return None
    return reader


def gpu_info(reader) -> dict[str, Any]:
    if reader is None:
        return {"name": None, "driver": None, "memory_total_gib": None, "note": "no NVIDIA GPU seen by NVML"}
    gpu = reader.snapshot()[0]
    lib = reader._lib()
    driver = cuda_driver = None
    try:
        driver = lib.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:
        pass
    try:
        v = int(lib.nvmlSystemGetCudaDriverVersion())
        cuda_driver = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:
        pass
    return {
        "name": gpu.name,
        "driver": driver,
        "cuda_driver": cuda_driver,
        "memory_total_gib": round(gpu.memory_total / GIB, 2),
        "count": len(reader.snapshot()),
    }


class NvmlSampler(threading.Thread):
    """Samples GPU 0 while a run trains: device used memory above the baseline, and the used memory
    of the processes that were not there at the start (the run's own: its CUDA context included)."""

    def __init__(self, reader, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.reader, self.period_s = reader, period_s
        first = reader.snapshot()[0]
        self.baseline_used = first.memory_used or 0
        self.baseline_pids = {p.pid for p in first.processes}
        self.peak_used = self.baseline_used
        self.peak_procs = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                gpu = self.reader.snapshot()[0]
            except Exception:
                gpu = None
            if gpu is not None:
                self.samples += 1
                self.peak_used = max(self.peak_used, gpu.memory_used or 0)
                mine = sum(p.used_bytes or 0 for p in gpu.processes if p.pid not in self.baseline_pids)
                self.peak_procs = max(self.peak_procs, mine)
            self._done.wait(self.period_s)

    def finish(self) -> dict[str, Any]:
        self._done.set()
        self.join(timeout=5)
        delta = round((self.peak_used - self.baseline_used) / GIB, 3)
        return {
            # the run's processes as NVML lists them; where it lists none (some containers), the device's growth
            "nvml_used_gib": round(self.peak_procs / GIB, 3) if self.peak_procs else (delta if self.samples else None),
            "nvml_source": "processes" if self.peak_procs else "device used - baseline",
            "nvml_device_delta_gib": delta,
            "nvml_baseline_gib": round(self.baseline_used / GIB, 3),
            "nvml_samples": self.samples,
        }


# --- one case ---------------------------------------------------------------------------------


def ftui(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT, text=True, capture_output=True, **kwargs)


def the_run(runs_dir: Path) -> RunDir | None:
    found = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.is_dir() else []
    return RunDir(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def kill_run(run: RunDir | None, attach: subprocess.Popen) -> None:
    """SIGKILL the run's process group (started by this script through ftui) and the attach process."""
    if run is not None:
        for launch in run.launches():
            if launch.get("pgid"):
                try:
                    os.killpg(int(launch["pgid"]), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    if attach.poll() is None:
        attach.kill()
        attach.wait()


def wait_supervisor(run: RunDir, timeout: float = 60.0) -> None:
    """`--attach` returns when status.json says the run ended; its processes may still be exiting."""
    from runner.rundir.runs import process_alive

    supervisor = run.supervisor()
    deadline = time.monotonic() + timeout
    while supervisor and process_alive(*supervisor) and time.monotonic() < deadline:
        time.sleep(0.2)


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The run's step records (the runner's own metrics reader; a half-written last line is left out)."""
    return [r for r in MetricsTail(run.metrics).read() if r.get("step") is not None]


def steady_tokens_per_s(records: list[dict[str, Any]]) -> float | None:
    """Tokens per second between the step after a warm-up (a fifth of the steps, at least step 2)
    and the last step; a single interval's figure when there are too few records."""
    records = sorted(records, key=lambda r: r["step"])
    if not records:
        return None
    last = records[-1]
    warm = max(2, last["step"] // 5)
    start = next((r for r in records if r["step"] >= warm and r is not last), None)
    if start is None or not last.get("time") or not start.get("time") or last["time"] <= start["time"]:
        rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
        return rates[-1] if rates else None
    return round((last["tokens"] - start["tokens"]) / (last["time"] - start["time"]), 1)


def cuda_peaks(status: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Rank 0's peak allocated/reserved: status.json's final measurement, else the newest metrics record."""
    measured = (status.get("measured_peak") or {}).get("0")
    if not measured:
        for r in reversed(records):
            if (r.get("mem") or {}).get("0"):
                measured = r["mem"]["0"]
                break
    measured = measured or {}
    return {"peak_allocated_gib": measured.get("allocated_gib"), "peak_reserved_gib": measured.get("reserved_gib")}


def plan_argv(recipe: dict[str, Any], model_dir: Path, gpu: str | None) -> list[str]:
    """`ftui plan` for the settings the run resolved (recipe.yaml in the run directory)."""
    t, ds, d = recipe["train"], recipe["dataset"], recipe["distributed"]
    precision = t["precision"] if d["device"] == "cuda" else "bf16-true"  # a dry run trains fp32 on the CPU
    argv = [
        "plan",
        "--model",
        str(model_dir),
        "--gpus",
        "1",
        "--tuner",
        recipe["tuner"],
        "--seq-len",
        str(ds["max_seq_len"]),
        "--micro-batch",
        str(t["micro_batch"]),
        "--precision",
        precision,
        "--attn",
        t["attn"],
        "--grad-ckpt" if t["grad_ckpt"] else "--no-grad-ckpt",
        "--zero",
        str(d["zero"]),
        "--optim",
        t["optim"],
        "--lora-rank",
        str(recipe["lora"]["rank"]),
        "--lora-targets",
        str(recipe["lora"]["targets"]),
        "--lisa-layers",
        str(recipe["lisa"]["layers"]),
        "--quant",
        recipe["qlora"]["quant"],
        "--global-batch",
        str(t["micro_batch"] * t["grad_accum"]),
        "--json",
    ]
    if recipe["lora"].get("dora"):
        argv.append("--dora")
    if gpu:
        argv += ["--gpu", gpu]
    return argv


def _figures(est: dict[str, Any], source: str) -> dict[str, Any]:
    per_gpu = est.get("per_gpu") or {}
    return {
        "source": source,
        "fits": est.get("fits"),
        "required_gib": est.get("required_gib"),
        "peak_allocated_gib": per_gpu.get("peak_allocated_gib"),
        "peak_reserved_gib": per_gpu.get("peak_reserved_gib"),
        "nvml_used_gib": per_gpu.get("nvml_used_gib"),
        "tokens_per_s": est.get("tokens_per_s"),
        "peak_phase": est.get("peak_phase"),
        "per_gpu": per_gpu,
        "setup": est.get("setup"),
    }


def cli_plan(recipe: dict[str, Any], model_dir: Path, gpu: str | None) -> dict[str, Any]:
    """`ftui plan --json` for the run's settings (`--global-batch` = micro-batch x grad_accum, so it
    plans the run's accumulation); the same figures as the run's plan.json unless the two drift apart."""
    proc = ftui(*plan_argv(recipe, model_dir, gpu))
    if proc.returncode != 0:
        return {"source": "ftui plan --json", "error": (proc.stderr or proc.stdout).strip()[-500:]}
    out = json.loads(proc.stdout)
    return {**_figures(out.get("estimate") or {}, "ftui plan --json"), "gpu": (out.get("cluster") or {}).get("gpu")}


def run_plan(run: RunDir, recipe_path: Path, dry: bool) -> dict[str, Any] | None:
    """The plan `ftui train` checked this run against (plan.json). A dry run has none (it runs on the
    CPU), so it gets the plan the same recipe resolves to on an H200 (device cuda, auto values)."""
    plan = None
    try:
        plan = json.loads(run.plan.read_text())
    except (OSError, ValueError):
        pass
    if plan is not None:
        return {**_figures(plan, "plan.json of the run"), "gpu": None}
    if not dry:
        return None
    from planner.report import estimate_json
    from runner.launch.lifecycle import absolute_paths
    from runner.recipe.resolve import Machine, resolve
    from runner.recipe.schema import load_recipe

    recipe = load_recipe(recipe_path)
    recipe = recipe.set("distributed.device", "cuda")
    settings = resolve(absolute_paths(recipe), Machine(), gpu=DRY_PLAN_GPU)
    return {**_figures(estimate_json(settings.plan), f"ftui's resolve on {DRY_PLAN_GPU}"), "gpu": DRY_PLAN_GPU}


def error_pct(planned: Any, measured: Any) -> float | None:
    if not isinstance(planned, (int, float)) or not isinstance(measured, (int, float)) or not measured:
        return None
    return round(100.0 * (planned - measured) / measured, 1)


def log_tail(run: RunDir | None, fallback: Path, n: int = 25) -> str:
    for path in ([run.log] if run else []) + [fallback]:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            continue
    return ""


def clean_heavy(run: RunDir) -> None:
    """Drop what a run wrote that only costs disk here: the final model, checkpoints, QLoRA's random init."""
    for path in [run.path / "final", run.checkpoints, *run.path.glob(".random-init-rank*")]:
        shutil.rmtree(path, ignore_errors=True)


def run_case(
    case: Case,
    recipe_path: Path,
    model_dir: Path,
    runs_dir: Path,
    *,
    reader,
    dry: bool,
    gpu: str | None,
    timeout: float,
) -> dict[str, Any]:
    """Launch one `ftui train --attach`, sample NVML while it runs, then collect planned and measured figures."""
    result: dict[str, Any] = {"state": "failed"}
    sampler = NvmlSampler(reader) if reader is not None else None
    if sampler:
        sampler.start()
    out_path = runs_dir.parent / f"{case.name}.attach.log"
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "tui.cli", "train", str(recipe_path), "--attach", "--force", "--runs-dir"]
    with open(out_path, "w") as out:
        attach = subprocess.Popen([*cmd, str(runs_dir)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        timed_out = False
        try:
            attach.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_run(the_run(runs_dir), attach)
    run = the_run(runs_dir)
    if run is not None:
        wait_supervisor(run)  # the training process has let go of the GPU before the next case's baseline
    wall = time.monotonic() - t0
    nvml = sampler.finish() if sampler else {"nvml_used_gib": None}
    result["seconds"] = round(wall, 1)
    if run is None:
        result["reason"] = "ftui train started no run: " + log_tail(None, out_path, 8)
        return result
    status, records = run.status(), read_metrics(run)
    state = run.effective_state()
    result["state"] = "timeout" if timed_out else state
    result["run_dir"] = str(run.path)
    if state not in ("finished", "stopped") or timed_out:
        result["reason"] = status.get("last_error") or ("killed at the time limit" if timed_out else state)
        result["log_tail"] = log_tail(run, out_path)
    resolved = _read_yaml(run.recipe)
    if resolved:
        t, d = resolved["train"], resolved["distributed"]
        result["settings"] = {
            "precision": t["precision"],
            "attn": t["attn"],
            "grad_ckpt": t["grad_ckpt"],
            "micro_batch": t["micro_batch"],
            "grad_accum": t["grad_accum"],
            "seq_len": resolved["dataset"]["max_seq_len"],
            "zero": d["zero"],
            "launcher": d["launcher"],
            "device": d["device"],
            "init": resolved["model"]["init"],
        }
        result["planned_cli"] = cli_plan(resolved, model_dir, DRY_PLAN_GPU if dry else gpu)
    try:
        result["planned"] = run_plan(run, recipe_path, dry) or result.get("planned_cli")
    except Exception as err:  # a plan that cannot be made is a finding, not a crash
        result["planned"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    peaks = cuda_peaks(status, records)
    first = min((r["time"] for r in records if r.get("time")), default=None)
    launched = (run.launches() or [{}])[0].get("created")
    result["measured"] = {
        **peaks,
        "nvml_used_gib": nvml.pop("nvml_used_gib"),
        **nvml,
        "tokens_per_s": steady_tokens_per_s(records),
        "steps": max((r["step"] for r in records), default=0),
        "final_loss": next((r["loss"] for r in reversed(records) if r.get("loss") is not None), None),
        "load_s": round(first - launched, 1) if first and launched else None,
        "trainable_params": status.get("trainable_params"),
        "total_params": status.get("total_params"),
    }
    if dry or peaks["peak_allocated_gib"] is None:
        result["note"] = CPU_NOTE if dry else "no CUDA peaks recorded by the run"
    planned = result.get("planned") or {}
    measured = result["measured"]
    result["error_pct"] = {
        key: error_pct(planned.get(p), measured.get(m))
        for key, p, m in (
            ("allocated", "peak_allocated_gib", "peak_allocated_gib"),
            ("reserved", "peak_reserved_gib", "peak_reserved_gib"),
            ("nvml", "nvml_used_gib", "nvml_used_gib"),
            ("tokens_per_s", "tokens_per_s", "tokens_per_s"),
        )
    }
    if dry:
        result["error_pct"]["tokens_per_s"] = None  # the CPU against an H200's plan says nothing
    clean_heavy(run)
    return result


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


# --- report -----------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch  # no CUDA call: the parent never holds a CUDA context

        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        out["torch_cuda"] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        out["ftui_commit"] = (commit + ("+changes" if dirty.stdout.strip() else "")) if commit else None
    except (OSError, subprocess.SubprocessError):
        out["ftui_commit"] = None
    return out


def _gib(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{value:+.0f}%" if isinstance(value, (int, float)) else "-"


def _rate(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "-"


COLUMNS = (
    ("case", 11),
    ("state", 9),
    ("plan alloc", 10),
    ("resv", 6),
    ("nvml", 6),
    ("meas alloc", 10),
    ("resv", 6),
    ("nvml", 6),
    ("err alloc", 9),
    ("resv", 5),
    ("nvml", 5),
    ("tok/s plan", 10),
    ("meas", 7),
    ("err", 5),
)


def _row(cells: list[str]) -> str:
    return " ".join(
        f"{v:<{w}}" if i < 2 else f"{v:>{w}}" for i, (v, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def table(cases: list[dict[str, Any]]) -> str:
    """Planned vs measured (GiB), the errors, and tokens/s planned vs measured, one line per case."""
    head = _row([name for name, _ in COLUMNS])
    lines = [head, "-" * len(head)]
    for c in cases:
        p, m, e = c.get("planned") or {}, c.get("measured") or {}, c.get("error_pct") or {}
        lines.append(
            _row(
                [
                    c["case"],
                    c["state"],
                    *(_gib(p.get(k)) for k in ("peak_allocated_gib", "peak_reserved_gib", "nvml_used_gib")),
                    *(_gib(m.get(k)) for k in ("peak_allocated_gib", "peak_reserved_gib", "nvml_used_gib")),
                    *(_pct(e.get(k)) for k in ("allocated", "reserved", "nvml")),
                    _rate(p.get("tokens_per_s")),
                    _rate(m.get("tokens_per_s")),
                    _pct(e.get("tokens_per_s")),
                ]
            )
        )
    notes = sorted({c["note"] for c in cases if c.get("note")})
    reasons = [f"  {c['case']}: {c['reason']}" for c in cases if c.get("reason")]
    return "\n".join(lines + [f"note: {n}" for n in notes] + reasons)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/gpu_check.py",
        description="Real `ftui train` runs on one NVIDIA GPU: measured peak memory and tokens/s against the plan.",
        epilog="cases (cheapest first; extras only by name): "
        + ", ".join(f"{c.name} ({c.describe()}{', extra' if c.extra else ''})" for c in CASES),
    )
    p.add_argument("--dry-run", action="store_true", help="the same pipeline on the CPU: 2-layer hidden-64 configs")
    p.add_argument("--cases", default="", help="comma-separated cases (default: all but the extras)")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no case that would end past this (default 480)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default 30; dry run 3)")
    p.add_argument(
        "--out", type=Path, default=None, help="where the JSON file goes (default bench/results; dry run: $TMPDIR)"
    )
    p.add_argument("--init", choices=("weights", "random"), default="weights", help="see the module docstring")
    p.add_argument("--gpu", default=None, help="GPU type to plan for (default: what NVML sees; dry run: h200)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a fresh temporary one)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch directory (run dirs, models, data)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()] or [c.name for c in CASES if not c.extra]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    args.selected = [c for c in CASES if c.name in names]  # always cheapest first
    args.steps = args.steps or (3 if args.dry_run else 30)
    if args.out is None:  # a dry run measures nothing worth keeping in the repository
        args.out = Path(tempfile.gettempdir()) / "ftui-gpu-check" if args.dry_run else ROOT / "bench" / "results"
    return args


def estimated_s(case: Case, args: argparse.Namespace, built: dict[str, Path]) -> float:
    """Rough wall time of a case (its model's build included when it is still to do), for the budget."""
    if args.dry_run:
        return 20.0
    build = 0.0 if case.model in built or args.init == "random" else BUILD_EST_S.get(case.model, 45.0)
    return build + case.est_s * max(0.5, args.steps / 30)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    reader = nvml_reader()
    gpu = gpu_info(reader)
    if not args.dry_run and reader is None:
        print("gpu_check: no NVIDIA GPU seen by NVML; use --dry-run to test the pipeline on the CPU", file=sys.stderr)
        return 2
    if args.dry_run:
        reader = None  # a dry run trains on the CPU: NVML would only see other processes
    work = args.work or Path(tempfile.mkdtemp(prefix="ftui-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    gpu_slug = "cpu-dry-run" if args.dry_run else slug(gpu["name"] or "gpu")
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"gpu_check-{stamp}-{gpu_slug}.json"
    report: dict[str, Any] = {
        "tool": "bench/gpu_check.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dry_run": args.dry_run,
        "init": args.init,
        "steps": args.steps,
        "budget_s": args.budget_s,
        "host": platform.node(),
        "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES")},
        "gpu": gpu,
        "versions": versions(),
        "cases": [],
    }
    print(
        f"gpu_check: {'CPU dry run' if args.dry_run else gpu['name']}, {len(args.selected)} case(s), "
        f"{args.steps} steps each, budget {args.budget_s:.0f} s, init {args.init}; scratch {work}",
        flush=True,
    )
    built: dict[str, Path] = {}
    inits: dict[str, str] = {}
    """Per model: `weights` (built once here) or `random` (the runner's init; also when a build failed)."""
    for case in args.selected:
        elapsed = time.monotonic() - started
        need = estimated_s(case, args, built)
        entry: dict[str, Any] = {"case": case.name, "model": case.model, "tuner": case.tuner}
        entry.update(seq_len=case.dry_seq_len if args.dry_run else case.seq_len)
        entry.update(micro_batch=1 if args.dry_run else case.micro_batch)
        if elapsed + need > args.budget_s:
            entry.update(state="skipped", reason=f"budget: {elapsed:.0f} s used, ~{need:.0f} s needed")
            report["cases"].append(entry)
            print(f"-- {case.name}: skipped ({entry['reason']})", flush=True)
            continue
        try:
            if case.model not in built:
                config = catalog_config(case.model)
                model_dir = write_model_dir(
                    work / "models" / case.model, tiny_version(config) if args.dry_run else config
                )
                inits[case.model] = args.init
                if args.init == "weights":
                    t0 = time.monotonic()
                    try:
                        info = build_weights([model_dir], "cpu" if args.dry_run else "cuda").get(case.model, {})
                        print(f"-- {case.model}: weights built in {time.monotonic() - t0:.1f} s", flush=True)
                    except RuntimeError as err:  # the runner's own random init still measures the same run
                        for leftover in model_dir.glob("*.safetensors*"):
                            leftover.unlink()
                        inits[case.model] = "random"
                        info = {"error": str(err)[-1500:], "fallback": "model.init random"}
                        print(f"-- {case.model}: building weights failed; model.init random instead", flush=True)
                    entry["build"] = {**info, "wall_s": round(time.monotonic() - t0, 1)}
                built[case.model] = model_dir
            model_dir = built[case.model]
            seq, mb = entry["seq_len"], entry["micro_batch"]
            data = write_text_data(work / "data" / f"text-{seq}-{mb}.jsonl", seq, records=args.steps * mb + 4)
            case_dir = work / case.name
            case_dir.mkdir(parents=True, exist_ok=True)
            recipe_path = case_dir / "recipe.yaml"
            recipe_path.write_text(
                recipe_yaml(case, model_dir, data, dry=args.dry_run, steps=args.steps, init=inits[case.model])
            )
            remaining = args.budget_s + HARD_SLACK_S - (time.monotonic() - started)
            timeout = max(60.0, min(remaining, 4 * need)) if not args.dry_run else max(120.0, remaining)
            print(
                f"-- {case.name}: {case.tuner} {case.model}{' (tiny)' if args.dry_run else ''} seq {seq} x {mb} "
                f"(time limit {timeout:.0f} s)",
                flush=True,
            )
            entry.update(
                run_case(
                    case,
                    recipe_path,
                    model_dir,
                    case_dir / "runs",
                    reader=reader,
                    dry=args.dry_run,
                    gpu=args.gpu,
                    timeout=timeout,
                )
            )
        except Exception as err:  # one broken case must not cost the others
            entry.update(state="failed", reason=f"{type(err).__name__}: {err}"[:2000])
        report["cases"].append(entry)
        later = {c.model for c in args.selected[args.selected.index(case) + 1 :]}
        for name in [n for n in built if n not in later and not args.keep_work]:  # disk: 8B is 16 GB of weights
            shutil.rmtree(built.pop(name), ignore_errors=True)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        out_file.write_text(json.dumps(report, indent=2) + "\n")  # after every case: a timeout keeps what ran
        m = entry.get("measured") or {}
        note = f" ({entry['note']})" if entry.get("note") else ""
        print(
            f"   {entry['state']} in {entry.get('seconds', '-')} s: peak allocated "
            f"{_gib(m.get('peak_allocated_gib'))} GiB, {_rate(m.get('tokens_per_s'))} tokens/s{note}",
            flush=True,
        )
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    out_file.write_text(json.dumps(report, indent=2) + "\n")
    if reader is not None:
        reader.close()
    if not args.keep_work and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(report["cases"]))
    print(f"\nwrote {out_file} ({report['elapsed_s']:.0f} s)")
    ran = [c for c in report["cases"] if c["state"] != "skipped"]
    return 0 if ran and all(c["state"] in ("finished", "stopped") for c in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
