"""`ftui plan`: a dry-run memory and throughput plan."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from planner import Cluster, Setup, SetupError, UnknownModel, generic_gpu, gpu_spec, make_plan, resolve_model
from planner.catalog import UnreadableModel, entries
from planner.gpus import GPUS, GpuSpec, match_nvml_name
from planner.setup import ATTENTIONS, FSDP_MODES, OFFLOADS, OPTIMIZERS, PRECISIONS, QUANTS, TUNERS

from . import plan_view
from .errors import CliError

EPILOG = """examples:
  ftui plan --model 7b --gpus 8 --gpu a100-80g          what should I run on 8 A100s?
  ftui plan --model qwen2.5-7b --gpu rtx4090 --tuner qlora --seq-len 4096
  ftui plan --model llama-3.1-8b --gpu h100 --gpus 8 --tuner full --zero 3 --micro-batch 4 --json
  ftui plan --model ./my-model/config.json --gpu-mem 48 --dataset data/train.jsonl
  ftui plan --list-models
"""

EXAMPLE_GPU = "a100-80g"
"""Planned for, with a note on stderr, when no GPU is given and NVML finds none here."""

SEARCHED = ("precision", "optim", "zero", "fsdp", "offload", "grad_ckpt", "attn", "micro_batch")
"""Flags the recommender searches unless the user fixes them."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="dry-run memory and throughput plan",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per-GPU memory breakdown, fit limits and speed for a fine-tuning setup; "
        "without --tuner, the recommended setup and every alternative.",
    )
    p.add_argument("--model", metavar="NAME|PATH", help="catalog name, size (7b), HF id, model dir or config.json")
    p.add_argument("--list-models", action="store_true", help="list the model catalog and exit")
    p.add_argument("--gpus", type=_positive_int, metavar="N", help="GPUs per node (default: the local GPUs, else 1)")
    p.add_argument("--nodes", type=_positive_int, default=1, metavar="K", help="number of nodes (default 1)")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", metavar="TYPE", help="GPU type, e.g. a100-80g, h100-80g, l40s, rtx4090, a10g, t4")
    gpu.add_argument("--gpu-mem", type=_positive_float, metavar="GIB", help="GPU memory in GiB (unknown GPU type)")
    p.add_argument(
        "--host-ram",
        type=_positive_float,
        metavar="GIB",
        help="host RAM per node in GiB (default: this machine's when planning for its GPUs)",
    )
    p.add_argument(
        "--tuner",
        type=_canonical,
        choices=TUNERS + ("dora",),
        help="evaluate this tuner (omit to get a recommendation); dora = LoRA with DoRA",
    )
    p.add_argument("--dora", action="store_true", help="LoRA/QLoRA with weight-decomposed adapters (DoRA)")
    p.add_argument("--precision", type=_canonical, choices=PRECISIONS)
    p.add_argument("--optim", type=_optimizer, choices=OPTIMIZERS)
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage (0 = plain DDP)")
    p.add_argument(
        "--fsdp",
        choices=FSDP_MODES,
        help="PyTorch FSDP instead of DeepSpeed: full_shard, shard_grad_op or hybrid_shard (none = not FSDP); "
        "with --offload optimizer+params, FSDP's CPU offload",
    )
    p.add_argument("--offload", choices=OFFLOADS)
    p.add_argument("--micro-batch", type=_positive_int, metavar="B", help="sequences per GPU per step (default 1)")
    p.add_argument("--seq-len", type=_positive_int, metavar="L", help="tokens per sequence (default 2048)")
    p.add_argument(
        "--grad-ckpt", action=argparse.BooleanOptionalAction, default=None, help="gradient checkpointing (default on)"
    )
    p.add_argument(
        "--attn", type=_canonical, choices=ATTENTIONS, help="attention kernel (default flash where supported)"
    )
    p.add_argument(
        "--packing",
        action="store_true",
        help="sequences packed into full --seq-len rows (dataset.packing): every batch has one shape, so no "
        "cached loss-path blocks of other lengths build up",
    )
    p.add_argument("--lora-rank", type=_positive_int, metavar="R", default=8)
    p.add_argument(
        "--lora-targets",
        default="all-linear",
        metavar="SPEC",
        help="all-linear, attn, mlp or module names like q_proj,v_proj",
    )
    p.add_argument("--lisa-layers", type=_positive_int, default=2, metavar="K")
    p.add_argument("--trainable-layers", type=_positive_int, default=2, metavar="K", help="freeze: top K layers train")
    p.add_argument(
        "--quant",
        type=_quant,
        choices=QUANTS,
        default="nf4",
        help="QLoRA weight format: nf4 (with double quantization) or int8",
    )
    p.add_argument(
        "--global-batch",
        type=_positive_int,
        default=64,
        metavar="N",
        help="target sequences per optimizer step, for gradient accumulation (default 64)",
    )
    p.add_argument("--dataset", metavar="PATH", help="data file whose token lengths set --seq-len and epoch time")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also trace ftui's own training step on the CPU (fake tensors; needs ftui[train]), shown beside the plan",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _canonical(text: str) -> str:
    return text.strip().lower().replace("_", "-")


OPTIMIZER_ALIASES = {
    "adamw-torch": "adamw",
    "adamw-torch-fused": "adamw",
    "adam": "adamw",
    "adamw-hf": "adamw",
    "adamw-bnb-8bit": "adamw-8bit",
    "adamw8bit": "adamw-8bit",
    "paged-adamw-32bit": "paged-adamw",
    "paged-adamw8bit": "paged-adamw-8bit",
}


def _optimizer(text: str) -> str:
    key = _canonical(text)
    return OPTIMIZER_ALIASES.get(key, key)


def _quant(text: str) -> str:
    key = _canonical(text)
    return {"nf4-dq": "nf4", "bnb.nf4": "nf4", "bnb.nf4-dq": "nf4", "4bit": "nf4", "8bit": "int8"}.get(key, key)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    if not math.isfinite(value) or value > 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a plausible size in GiB (at most 1000000)")
    return value


def resolve_cluster(args: argparse.Namespace) -> tuple[Cluster, str]:
    """The GPUs to plan for: --gpu / --gpu-mem, else what NVML sees here."""
    host = int(args.host_ram * 2**30) if args.host_ram else None
    if args.gpu:
        try:
            spec = gpu_spec(args.gpu)
        except ValueError as err:
            raise CliError(f"--gpu: {err}") from None
        return Cluster(spec, args.gpus or 1, args.nodes, host), "--gpu"
    if args.gpu_mem:
        return Cluster(generic_gpu(args.gpu_mem), args.gpus or 1, args.nodes, host), "--gpu-mem"
    from runner.machine.host import host_ram_bytes
    from runner.machine.nvml import NoGpu, local_gpus

    try:
        found = local_gpus()
    except NoGpu as err:
        types = ", ".join(g.key for g in GPUS)
        example = gpu_spec(EXAMPLE_GPU)
        print(
            f"ftui: {err}. Planning for {example.name} as an example; say which GPUs you will train on with "
            f"--gpu TYPE (one of {types}) or --gpu-mem GIB.",
            file=sys.stderr,
        )
        return Cluster(example, args.gpus or 1, args.nodes, host), "assumed: no GPU found here"
    spec: GpuSpec = match_nvml_name(found[0].name, found[0].memory_total_mib)
    return Cluster(spec, args.gpus or len(found), args.nodes, host or host_ram_bytes()), "nvml"


def build_setup(args: argparse.Namespace, cluster: Cluster, seq_len: int) -> tuple[Setup, frozenset[str]]:
    gpu = cluster.gpu
    given = {name: getattr(args, name) for name in SEARCHED if getattr(args, name) is not None}
    defaults = dict(
        precision="bf16-true" if gpu.bf16 else "fp16-mixed",
        optim="adamw",
        zero=0,
        fsdp="none",
        offload="none",
        grad_ckpt=True,
        attn="flash" if gpu.flash_attention else "sdpa",
        micro_batch=1,
    )
    values = {**defaults, **given}
    if args.tuner is not None:
        # What the run accumulates to reach --global-batch: with one micro-batch per step no gradient
        # outlives the backward pass (the recommender sets this for the setup it picks).
        per_step = values["micro_batch"] * cluster.world
        values["grad_accum"] = max(1, math.ceil(getattr(args, "global_batch", 64) / per_step))
    tuner = "lora" if args.tuner in (None, "dora") else args.tuner
    try:
        setup = Setup(
            tuner=tuner,
            seq_len=seq_len,
            lora_rank=args.lora_rank,
            dora=args.dora or args.tuner == "dora",
            lora_targets=args.lora_targets,
            lisa_layers=args.lisa_layers,
            trainable_layers=args.trainable_layers,
            quant=args.quant,
            packing=getattr(args, "packing", False),
            **values,
        )
    except SetupError as err:
        raise CliError(str(err)) from None
    return setup, frozenset(given)


def run(args: argparse.Namespace) -> int:
    if args.list_models:
        plan_view.print_models(entries(), as_json=args.json)
        return 0
    if not args.model:
        raise CliError(
            "ftui plan needs --model (a catalog name like llama-3.1-8b, a size like 7b, or a path); "
            "see `ftui plan --list-models`"
        )
    try:
        model = resolve_model(args.model)
    except UnreadableModel as err:
        return traced_only(args, err.config)
    except UnknownModel as err:
        raise CliError(f"--model: {err}") from None
    cluster, gpu_source = resolve_cluster(args)
    stats = None
    if args.dataset:
        from planner.dataset_stats import DatasetError, dataset_stats

        try:
            stats = dataset_stats(args.dataset)
        except DatasetError as err:
            raise CliError(f"--dataset: {err}") from None
    seq_len = args.seq_len or (stats.suggested_seq_len(model.arch.max_position) if stats else 2048)
    setup, fixed = build_setup(args, cluster, seq_len)
    try:
        model.arch.lora_targets(setup.lora_targets)
    except ValueError as err:
        raise CliError(f"--lora-targets: {err}") from None
    result = make_plan(
        model, setup, cluster, recommend_tuner=args.tuner is None, global_batch=args.global_batch, fixed=fixed
    )
    verified = None
    if args.verify:
        planned = result.estimate.setup if result.estimate is not None else setup
        verified = _verify(model.config, planned)
    mem = result.estimate.memory if result.estimate is not None else None
    if args.json:
        out = plan_view.to_json(result, gpu_source, stats)
        if verified is not None:
            out["verified"] = plan_view.verified_json(verified, mem)
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        plan_view.render(result, gpu_source, stats)
        if verified is not None:
            plan_view.render_verified(verified, mem)
    return 0


def _verify(config: dict, setup: Setup) -> dict:
    from runner.launch.verify import VerifyError, trace

    try:
        return trace(config, setup)
    except VerifyError as err:
        raise CliError(f"--verify: {err}") from None


def traced_only(args: argparse.Namespace, config: dict) -> int:
    """A model type the planner has no reader for: the trace of the setup is the plan."""
    model_type = config.get("model_type") or "unknown"
    print(f"ftui: no reader for model type {model_type}: traced only", file=sys.stderr)
    if args.tuner is None:
        print(
            "ftui: no recommendation without a reader; tracing --tuner lora (pass --tuner to choose)", file=sys.stderr
        )
    cluster, gpu_source = resolve_cluster(args)
    setup, _ = build_setup(args, cluster, args.seq_len or 2048)
    if setup.adapters and setup.lora_targets != "all-linear":
        raise CliError("--lora-targets: only all-linear works for a model type the planner cannot read")
    verified = _verify(config, setup)
    if args.json:
        out = {
            "model": {"name": args.model, "model_type": model_type, "traced_only": True},
            "cluster": {"gpu": cluster.gpu.key, "gpu_memory_gib": round(cluster.gpu.memory_gib, 2)},
            "setup": dataclasses.asdict(setup),
            "verified": verified,
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{args.model} ({model_type}) on {cluster.gpu.name}: {setup.summary()}")
        plan_view.render_verified(verified, None)
        if verified.get("traceable"):
            print(
                f"traced peak allocated {verified['peak_allocated_gib']:.2f} GiB of {cluster.gpu.memory_gib:.0f} GiB; "
                "the CUDA context and allocator slack (1-2 GiB) come on top"
            )
    return 0
