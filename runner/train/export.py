"""`python -m runner.train.export --run-dir DIR --out OUT [--checkpoint STEP] [--merge] [--dtype D]`

A trained run as a model other tools load (`AutoModelForCausalLM.from_pretrained`, vLLM, llama.cpp's
converter): safetensors weights, config and generation config, the tokenizer with its chat template,
and a model card (README.md) saying what was trained on what.

- LoRA / QLoRA without --merge: the adapter alone, in peft's format (adapter_config.json +
  adapter_model.safetensors), with the tokenizer.
- LoRA / QLoRA with --merge: the adapter folded into the base weights. QLoRA merges onto the
  16-bit base (loaded again in --dtype), never onto its 4-bit copy, whose rounding would be baked in.
- full, freeze, LISA: the trained model, in --dtype.

The base of a run that started from a random initialisation (`model.init: random`, the demo) is
rebuilt exactly as the trainer built it (same config, same seed), so merged = base + adapter holds.
The source is the run's `final/` model, or `checkpoint-STEP/` with --checkpoint. Started by the
`ftui export` command by module name, like every runner.train entry point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from runner.recipe.modelfiles import TOKENIZER_FILES
from runner.recipe.schema import load_recipe
from runner.rundir.metrics import last_record
from runner.rundir.runs import RunDir

DTYPES = ("bf16", "fp16", "fp32")


class ExportError(RuntimeError):
    """What cannot be exported, and what to do instead."""


def source_dir(run: RunDir, checkpoint: int | None) -> Path:
    if checkpoint is None:
        final = run.path / "final"
        if final.is_dir() and any(final.iterdir()):
            return final
        steps = sorted(
            (int(p.name.split("-")[1]) for p in run.checkpoints.glob("checkpoint-*") if p.name.split("-")[1].isdigit()),
        )
        hint = f" (checkpoints: {', '.join(map(str, steps[-5:]))}; pass --checkpoint STEP)" if steps else ""
        raise ExportError(f"run {run.id} has no final model yet: it has not finished{hint}")
    ckpt = run.checkpoints / f"checkpoint-{checkpoint}"
    if not ckpt.is_dir():
        raise ExportError(f"run {run.id} has no checkpoint-{checkpoint} in {run.checkpoints}")
    if (ckpt / "pytorch_model_fsdp_0").is_dir():
        raise ExportError(
            f"checkpoint-{checkpoint} holds FSDP shards (one per rank); export the run's final model, which is "
            "gathered into one state dict at the end"
        )
    if (ckpt / "latest").is_file() and not any(
        (ckpt / n).is_file() for n in ("model.safetensors", "adapter_model.safetensors")
    ):
        raise ExportError(f"checkpoint-{checkpoint} holds DeepSpeed shards only; export the run's final model")
    return ckpt


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def base_model(recipe, dtype):
    """The 16-bit (or --dtype) base the run started from: pretrained weights, or the seeded random init."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .entry import model_from_config

    model = recipe.model
    if model.init == "random":
        config = AutoConfig.from_pretrained(
            model.path, local_files_only=True, trust_remote_code=model.trust_remote_code
        )
        return model_from_config(config, recipe).to(dtype)
    return AutoModelForCausalLM.from_pretrained(
        model.path,
        dtype=dtype,
        local_files_only=True,
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
    )


def export(run: RunDir, out: Path, *, checkpoint: int | None = None, merge: bool = False, dtype: str = "bf16") -> Path:
    recipe = load_recipe(run.recipe)
    src = source_dir(run, checkpoint)
    adapters = recipe.tuner in ("lora", "qlora")
    if merge and not adapters:
        raise ExportError(f"--merge folds an adapter into its base; this run trained {recipe.tuner}, which has none")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    kind = "adapter"
    if adapters and not merge:
        for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
        if not (out / "adapter_config.json").is_file():
            raise ExportError(f"{src} has no adapter_config.json: not a peft adapter")
    else:
        from transformers import AutoModelForCausalLM

        d = torch_dtype(dtype)
        if adapters:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base_model(recipe, d), str(src)).merge_and_unload()
            kind = "merged"
        else:
            model = AutoModelForCausalLM.from_pretrained(str(src), dtype=d, local_files_only=True)
            kind = "model"
        model.save_pretrained(str(out), safe_serialization=True)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(out))
    copy_tokenizer(recipe, src, out)
    (out / "README.md").write_text(model_card(run, recipe, src, kind, dtype))
    return out


def copy_tokenizer(recipe, src: Path, out: Path) -> None:
    """The tokenizer and chat template the run trained with (saved beside the model, else the base's)."""
    from transformers import AutoTokenizer

    for where in (src, Path(recipe.model.path)):
        if (where / "tokenizer_config.json").is_file():
            for name in TOKENIZER_FILES:
                if (where / name).is_file():
                    shutil.copy2(where / name, out / name)
            return
    tok = AutoTokenizer.from_pretrained(recipe.model.path, local_files_only=True, revision=recipe.model.revision)
    tok.save_pretrained(str(out))


def model_card(run: RunDir, recipe, src: Path, kind: str, dtype: str) -> str:
    status = run.status()
    last = last_record(run.metrics) or {}
    what = {
        "adapter": f"a {recipe.tuner} adapter (peft format) for the base model",
        "merged": f"the base model with its {recipe.tuner} adapter merged in ({dtype})",
        "model": f"the {recipe.tuner}-trained model ({dtype})",
    }[kind]
    lines = [
        f"# {run.id}",
        "",
        f"Fine-tuned with ftui: {what}.",
        "",
        f"- base model: `{recipe.model.path}`" + (" (random initialisation)" if recipe.model.init == "random" else ""),
        f"- tuner: {recipe.tuner}"
        + (f" (rank {recipe.lora.rank}, targets {recipe.lora.targets})" if recipe.tuner in ("lora", "qlora") else ""),
        f"- data: `{recipe.dataset.path}` ({recipe.dataset.format})",
        f"- steps: {status.get('step', last.get('step'))}; exported from `{src.name}`",
        f"- final train loss: {_fmt(status.get('loss'))}; eval loss: {_fmt(status.get('eval_loss'))}",
        f"- learning rate {recipe.train.lr}, micro-batch {recipe.train.micro_batch} x grad-accum "
        f"{recipe.train.grad_accum}, max sequence {recipe.dataset.max_seq_len}, precision {recipe.train.precision}",
        "",
        "Load it with `AutoModelForCausalLM.from_pretrained(dir)`"
        + (" on top of the base with `PeftModel.from_pretrained(base, dir)`." if kind == "adapter" else "."),
        "",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train.export")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--checkpoint", type=int, default=None)
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    args = parser.parse_args(argv)
    try:
        out = export(RunDir(args.run_dir), args.out, checkpoint=args.checkpoint, merge=args.merge, dtype=args.dtype)
    except (ExportError, OSError) as err:
        print(f"ftui: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "files": sorted(p.name for p in out.iterdir())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
