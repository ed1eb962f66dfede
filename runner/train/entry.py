"""The training entry point: `python -m runner.train --run-dir DIR [--resume-from CHECKPOINT]`.

Every process of a run executes this (under torchrun, accelerate or the deepspeed launcher). It
reads the resolved recipe from the run directory and trains with HF Trainer: full fine-tuning,
freeze (top K layers), LoRA/DoRA and QLoRA through peft and bitsandbytes, LISA through a callback.
Rank 0 appends metrics.jsonl and keeps status.json current. With the rest of runner.train
(callbacks, data), this is the only code that imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from runner.recipe.schema import Recipe, load_recipe
from runner.rundir.runs import RunDir, time_limit_pause

ATTN = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}
OPTIM = {
    "adamw": "adamw_torch",
    "adamw-8bit": "adamw_bnb_8bit",
    "paged-adamw-8bit": "paged_adamw_8bit",
    "paged-adamw": "paged_adamw_32bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
}
NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def model_dtype(recipe: Recipe):
    """The dtype the model is loaded in.

    bf16-true: bf16. Adapters (LoRA, QLoRA) under mixed precision: the frozen base in the 16-bit
    compute dtype, since only the fp32 adapters (peft keeps them fp32) need master weights; holding
    the base in fp32 would double its memory and change nothing it computes under autocast. Full,
    freeze and LISA under mixed precision keep fp32 weights: the optimizer updates them.
    """
    import torch

    precision = recipe.train.precision
    if precision == "bf16-true":
        return torch.bfloat16
    if recipe.tuner in ("lora", "qlora") and precision in ("bf16-mixed", "fp16-mixed"):
        return torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.float32


def quantization(recipe: Recipe):
    from transformers import BitsAndBytesConfig

    if recipe.qlora.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    extra = {}
    if recipe.distributed.fsdp != "none":
        # FSDP shards floating-point parameters only: 4-bit weights stored in the compute dtype can be
        # sharded (accelerate leaves uint8-stored Params4bit out of FSDP, replicated on every rank).
        extra["bnb_4bit_quant_storage"] = model_dtype(recipe)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=model_dtype(recipe),
        bnb_4bit_use_double_quant=recipe.qlora.double_quant,
        **extra,
    )


def model_from_config(config, recipe: Recipe):
    """A randomly initialised model from a transformers config, as the recipe trains it."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(recipe.train.seed)
    return AutoModelForCausalLM.from_config(
        config,
        dtype=model_dtype(recipe),
        attn_implementation=ATTN[recipe.train.attn],
        trust_remote_code=recipe.model.trust_remote_code,
    )


def load_model(recipe: Recipe, run: RunDir):
    """The model, from pretrained weights or randomly initialised from config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path, dtype = recipe.model.path, model_dtype(recipe)
    common = dict(
        attn_implementation=ATTN[recipe.train.attn],
        trust_remote_code=recipe.model.trust_remote_code,
        revision=recipe.model.revision,  # a Hub model: the supervisor fetched it into the cache
    )
    if recipe.model.init == "random":
        config = AutoConfig.from_pretrained(
            path,
            local_files_only=True,
            trust_remote_code=recipe.model.trust_remote_code,
            revision=recipe.model.revision,
        )
        model = model_from_config(config, recipe)
        if recipe.tuner != "qlora":
            return model
        path = str(run.path / f".random-init-rank{rank()}")  # bitsandbytes quantizes while loading
        model.save_pretrained(path)
    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True, **common)
    if recipe.tuner == "qlora":
        kwargs["quantization_config"] = quantization(recipe)
        kwargs["device_map"] = {"": local_rank() if torch.cuda.is_available() else "cpu"}
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def lora_targets(recipe: Recipe, arch=None) -> Any:
    """peft target_modules: `all-linear`, or the module names the planner resolves for this family
    (`arch`: the planner's Architecture, read from the model's config when not given)."""
    spec = recipe.lora.targets
    if spec == "all-linear":
        return "all-linear"
    if arch is None:
        from planner import resolve_model

        arch = resolve_model(recipe.model.path).arch
    return sorted({lin.name for lin in arch.lora_targets(spec)})


def apply_tuner(model, recipe: Recipe, arch=None):
    """Freeze / wrap the model for the recipe's tuner (full and LISA train everything at start)."""
    if recipe.tuner == "freeze":
        return freeze_all_but_top(model, recipe.freeze.trainable_layers)
    if recipe.tuner in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        if upcasts_unquantized(recipe):
            model = prepare_quantized(model)

        dropout = recipe.lora.dropout
        if dropout and fused_experts(model):
            print(
                "ftui: peft adapts this model's fused MoE experts as parameters, which takes no dropout; "
                f"lora.dropout {dropout} -> 0",
                file=sys.stderr,
                flush=True,
            )
            dropout = 0.0
        config = LoraConfig(
            r=recipe.lora.rank,
            lora_alpha=recipe.lora.alpha,
            lora_dropout=dropout,
            target_modules=lora_targets(recipe, arch),
            use_dora=recipe.lora.dora,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
    return model


def upcasts_unquantized(recipe: Recipe) -> bool:
    """The planner's rule (planner.setup.upcasts_unquantized) on the recipe: the plan and the run agree."""
    from planner.setup import upcasts_unquantized as rule

    d = recipe.distributed
    zero = d.zero if isinstance(d.zero, int) else 0  # resolved by the time a run trains
    return rule(recipe.tuner, zero, d.fsdp, recipe.train.precision)


def prepare_quantized(model):
    """What peft's prepare_model_for_kbit_training does before the adapters, without its
    checkpointing (the Trainer's own settings decide that): the base frozen, and every 16-bit
    parameter bitsandbytes left unquantized (embeddings, norms, the head) held in fp32. The norms'
    fp32 outputs then make the residual stream fp32 (bitsandbytes returns each matmul in its
    input's dtype). The 4-bit weights (Params4bit, also under a 16-bit quant storage) stay, and so
    do fused MoE expert stacks (3-D parameters bitsandbytes cannot quantize): in fp32 they would
    double the largest part of the model, and their grouped matmul takes 16-bit operands."""
    import torch

    for param in model.parameters():
        param.requires_grad_(False)
        sixteen_bit = param.dtype in (torch.float16, torch.bfloat16)
        if sixteen_bit and type(param).__name__ != "Params4bit" and param.ndim != 3:
            param.data = param.data.to(torch.float32)
    return model


def fused_experts(model) -> bool:
    """transformers 5 MoE layers keep their experts as 3-D parameters (peft's ParamWrapper adapts them)."""
    return any(p.ndim == 3 and "experts" in name for name, p in model.named_parameters())


def freeze_all_but_top(model, k: int):
    from .callbacks import decoder_layers

    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    for layer in layers[len(layers) - k :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = final_norm(model, layers)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    return model


def final_norm(model, layers):
    """The norm after the last decoder layer (model.norm, transformer.ln_f, ...)."""
    inside = {id(m) for m in layers.modules()}
    found = None
    for name, module in model.named_modules():
        if id(module) not in inside and name.rsplit(".", 1)[-1] in NORM_NAMES:
            found = module
    return found


def training_arguments(recipe: Recipe, run: RunDir, has_eval: bool):
    from transformers import TrainingArguments

    t, d = recipe.train, recipe.distributed
    cpu = d.device == "cpu"
    precision = t.precision
    eval_strategy = ("steps" if t.eval_steps > 0 else "epoch") if has_eval else "no"
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=t.micro_batch,
        per_device_eval_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        **_warmup(t.warmup_ratio),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        bf16=precision.startswith("bf16"),
        fp16=precision == "fp16-mixed",
        optim=OPTIM[t.optim],
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps or None,
        seed=t.seed,
        report_to=[] if t.report_to == "none" else [t.report_to],
        **_checkpointing(t.grad_ckpt),
        deepspeed=str(run.path / "ds_config.json") if d.zero > 0 else None,
        **_fsdp(recipe),
        ddp_backend="gloo" if cpu and world() > 1 else None,
        use_cpu=cpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_find_unused_parameters=(recipe.tuner == "lisa") if world() > 1 else None,
        disable_tqdm=True,
    )


def _fsdp(recipe: Recipe) -> dict[str, Any]:
    """HF Trainer's FSDP arguments: FSDP2, one unit per decoder layer (the model's _no_split_modules,
    accelerate's transformer_based_wrap default), sharded checkpoints (every rank writes its own
    shard, so save and resume need no gather), CPU offload for offload optimizer+params."""
    d = recipe.distributed
    if d.fsdp == "none":
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": d.fsdp != "shard_grad_op",
            "cpu_offload": d.offload == "optimizer+params",
            "state_dict_type": "SHARDED_STATE_DICT",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        },
    }


def _accepts(name: str) -> bool:
    import inspect

    from transformers import TrainingArguments

    return name in inspect.signature(TrainingArguments.__init__).parameters


def _warmup(ratio: float) -> dict[str, float]:
    """transformers 5 takes the warmup ratio as a float warmup_steps; 4.x has warmup_ratio."""
    return {"warmup_ratio": ratio} if _accepts("warmup_ratio") else {"warmup_steps": ratio}


def _checkpointing(on: bool) -> dict[str, Any]:
    """Non-reentrant checkpointing (works with frozen inputs, DDP and LISA); renamed in transformers 5."""
    kwargs = {"use_reentrant": False}
    if _accepts("activation_checkpointing"):
        return {"activation_checkpointing": on, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": on, "gradient_checkpointing_kwargs": kwargs}


def tuner_callbacks(model, recipe: Recipe) -> list[Any]:
    """The callbacks a tuner needs: LISA's layer switching; freeze's backward that stops at the
    trained layers when checkpointing is on."""
    from .callbacks import FrozenBelowCallback, LisaCallback

    if recipe.tuner == "lisa":
        return [LisaCallback(model, recipe.lisa.layers, recipe.lisa.interval, recipe.train.seed)]
    if recipe.tuner == "freeze" and recipe.train.grad_ckpt is True:
        return [FrozenBelowCallback(model)]
    return []


def build_trainer(recipe: Recipe, run: RunDir):
    from transformers import AutoTokenizer, Trainer, set_seed

    from .callbacks import CompletionCallback, MetricsCallback, StopCallback, TokenCounter, trainable_summary
    from .data import build_datasets, make_collator

    set_seed(recipe.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(
        recipe.model.path,
        local_files_only=True,
        trust_remote_code=recipe.model.trust_remote_code,
        revision=recipe.model.revision,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = apply_tuner(load_model(recipe, run), recipe)
    train_ds, eval_ds, stats = build_datasets(
        recipe.dataset, tokenizer, base_dir=recipe.base_dir(), seed=recipe.train.seed
    )
    if rank() == 0:
        print(f"ftui: {stats.summary()}; {trainable_summary(model)}", flush=True)
        run.set_status("running", phase="loaded", data=vars(stats), **trainable_summary(model))
    counter = TokenCounter(make_collator(tokenizer))
    callbacks = [
        MetricsCallback(run, recipe.train.micro_batch, world(), counter),
        StopCallback(run, every=recipe.train.logging_steps),
        CompletionCallback(),
        *tuner_callbacks(model, recipe),
    ]
    args = training_arguments(recipe, run, eval_ds is not None)
    trainer_class = (
        _cpu_fsdp_trainer(Trainer)
        if recipe.distributed.fsdp != "none" and recipe.distributed.device == "cpu"
        else Trainer
    )
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=counter,
        callbacks=callbacks,
        processing_class=tokenizer,
    )


def _cpu_fsdp_trainer(trainer_class):
    """HF Trainer that takes FSDP on the CPU as it does on GPUs.

    accelerate enters FSDP mode only for GPU-like distributed types (AcceleratorState: the FSDP
    branch covers MULTI_GPU/NPU/XPU/..., not MULTI_CPU), so with use_cpu=True it silently trains
    plain DDP. Here the accelerator gets the FSDP plugin HF built from the same arguments and the
    FSDP distributed type, as on a GPU; from then on accelerate's fsdp2_prepare_model, torch's
    fully_shard over gloo and HF's sharded checkpointing run unchanged. Only what is CUDA-specific
    (NCCL, mixed-precision casts on the device, CPU offload's pinned copies) is left to a GPU run."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class CpuFsdpTrainer(trainer_class):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            if getattr(state, "fsdp_plugin", None) is None and self.args.fsdp_plugin_args is not None:
                state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
                state.distributed_type = DistributedType.FSDP
                PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState mirrors it
                self.is_fsdp_enabled = True

    return CpuFsdpTrainer


def train(run: RunDir, resume_from: str | None) -> int:
    from .callbacks import write_final_status

    recipe = load_recipe(run.recipe)
    trainer = build_trainer(recipe, run)
    trainer.train(resume_from_checkpoint=resume_from)
    stopped = run.stop_request.exists()
    if not stopped:
        if trainer.is_fsdp_enabled:
            # Checkpoints stay sharded (each rank writes its own); the final model is gathered into one
            # full state dict that other tools load (HF's save_model writes nothing for a sharded one).
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(run.path / "final"))
    write_final_status(run, run.plan)
    if rank() == 0 and time_limit_pause(run.path):
        run.set_status("stopping", step=trainer.state.global_step)  # the Slurm job requeues and resumes
    elif rank() == 0:
        run.set_status("stopped" if stopped else "finished", step=trainer.state.global_step)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Tear the process group down before exit (gloo aborts the process if its threads outlive it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume-from", default=None)
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    try:
        return train(run, args.resume_from)
    except Exception as err:  # the traceback goes to train.log; status.json gets the one-line reason
        from runner.data.records import DataError

        if isinstance(err, DataError):
            print(f"error: {err}", file=sys.stderr, flush=True)  # says file, record and what to do
        else:
            traceback.print_exc()
        if rank() == 0:
            run.set_status("failed", last_error=f"{type(err).__name__}: {err}"[:500])
        return 1
