"""Combinations that cannot work, and why; plus warnings for ones that work poorly."""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Architecture
from .setup import Cluster, Setup


@dataclass(frozen=True)
class Refusal:
    """A configuration that will not run, with what to do instead."""

    rule: str
    reason: str


def sdpa_refused(arch: Architecture) -> bool:
    """transformers builds Gemma-2 (attention logit soft-capping) only with eager or flash attention:
    `_supports_sdpa = False` in its modeling code, so asking for sdpa fails at model load."""
    return arch.attn_softcap


def usable_attn(arch: Architecture, attn: str) -> str:
    """The kernel a run asking for `attn` by default gets: eager where transformers refuses sdpa."""
    return "eager" if attn == "sdpa" and sdpa_refused(arch) else attn


def refusals(arch: Architecture, setup: Setup, cluster: Cluster) -> list[Refusal]:
    """Every rule `setup` breaks on `cluster` (empty when it can run)."""
    out: list[Refusal] = []
    gpu = cluster.gpu

    def refuse(rule: str, reason: str) -> None:
        out.append(Refusal(rule, reason))

    if setup.precision.startswith("bf16") and not gpu.bf16:
        refuse(
            "bf16-unsupported", f"{gpu.name} has no bf16 arithmetic (needs Ampere or newer); use --precision fp16-mixed"
        )
    if setup.attn == "flash" and not gpu.flash_attention:
        refuse("flash-unsupported", f"FlashAttention-2 needs an Ampere or newer GPU, not {gpu.name}; use --attn sdpa")
    if setup.attn == "sdpa" and sdpa_refused(arch):
        refuse(
            "sdpa-unsupported",
            f"transformers does not run {arch.family} through SDPA (attention soft-capping); "
            "use --attn eager, or --attn flash with flash-attn installed",
        )
    if setup.adapters and setup.dora and arch.fused_experts:
        refuse(
            "dora-fused-experts",
            "peft cannot apply DoRA to fused MoE experts (transformers 5's 3-D expert weights); use plain LoRA",
        )
    if setup.attn == "flash" and setup.precision == "fp32":
        refuse("flash-fp32", "FlashAttention runs only in fp16/bf16; use --attn sdpa with --precision fp32")
    if setup.tuner == "qlora" and arch.linear_subclass:
        refuse(
            "qlora-unquantized",
            f"transformers' bitsandbytes quantizer converts only plain nn.Linear layers, and {arch.family}'s blocks "
            f"use {arch.linear_subclass}: they would stay 16-bit (LoRA's memory, not QLoRA's); use --tuner lora",
        )
    if setup.tuner == "qlora" and setup.zero == 3:
        refuse(
            "qlora-zero3",
            "ZeRO-3 cannot partition bitsandbytes 4-bit weights here; use --zero 2 "
            "(QLoRA's frozen base is small enough to replicate)",
        )
    if setup.tuner == "qlora" and setup.offload != "none" and not setup.is_fsdp:
        refuse(
            "qlora-offload",
            "DeepSpeed's offload moves optimizer states, and QLoRA keeps only the adapters': it saves nothing. "
            "Use --offload none, or --fsdp full_shard --offload optimizer+params to move the 4-bit base to the CPU",
        )
    if setup.tuner == "lisa" and setup.zero > 0:
        refuse(
            "lisa-zero",
            "LISA changes which layers train every few steps, but DeepSpeed ZeRO builds its "
            "optimizer partitions once at start; use --zero 0 (plain data parallel)",
        )
    if setup.offload != "none" and setup.stage == 0:
        refuse(
            "offload-needs-zero",
            "CPU offload needs a sharding engine; add --zero 2 (optimizer) or --zero 3 (optimizer+params), "
            "or --fsdp full_shard with --offload optimizer+params",
        )
    if setup.offload == "optimizer+params" and setup.zero not in (0, 3):
        refuse("param-offload-needs-zero3", "parameter offload needs --zero 3 (or --fsdp full_shard)")
    if setup.tuner == "lisa" and setup.is_fsdp:
        refuse(
            "lisa-fsdp",
            "LISA switches which layers train by changing requires_grad and the optimizer's groups every few "
            "steps; FSDP2 shards parameters into DTensors and groups them once when it wraps the model. "
            "Use plain data parallel (no --fsdp) for LISA",
        )
    if setup.optim in ("adamw-8bit", "paged-adamw-8bit") and setup.is_fsdp:
        refuse(
            "8bit-optim-fsdp",
            "bitsandbytes' 8-bit optimizer kernels update plain tensors through their raw pointers, and FSDP2's "
            "parameters are DTensors; use --optim adamw with --fsdp",
        )
    if setup.optim in ("adamw-8bit", "paged-adamw-8bit") and setup.zero > 0:
        refuse(
            "8bit-optim-zero",
            "bitsandbytes 8-bit optimizers do not work inside DeepSpeed ZeRO; "
            "use --optim adamw with --zero, or --zero 0 with the 8-bit optimizer",
        )
    if setup.precision == "bf16-true" and setup.zero > 0:
        refuse(
            "deepspeed-master",
            "DeepSpeed always keeps fp32 master weights and optimizer states; use --precision bf16-mixed with --zero",
        )
    if setup.tuner == "freeze" and setup.trainable_layers > arch.layers:
        refuse("freeze-layers", f"--trainable-layers {setup.trainable_layers} exceeds the model's {arch.layers} layers")
    if setup.tuner == "lisa" and setup.lisa_layers > arch.layers:
        refuse("lisa-layers", f"--lisa-layers {setup.lisa_layers} exceeds the model's {arch.layers} layers")
    return out


def warnings(arch: Architecture, setup: Setup, cluster: Cluster) -> list[str]:
    """Things that run but deserve a note."""
    out = []
    if setup.seq_len > arch.max_position:
        out.append(
            f"--seq-len {setup.seq_len} is beyond the model's {arch.max_position} trained positions; "
            "quality may drop without RoPE scaling"
        )
    if setup.stage > 0 and cluster.world == 1 and setup.offload == "none":
        engine = "FSDP" if setup.is_fsdp else "ZeRO"
        out.append(f"{engine} on a single GPU shards nothing; it only helps together with --offload")
    if setup.fsdp == "hybrid_shard" and cluster.nodes == 1:
        out.append("hybrid_shard on one node is full_shard (it replicates only across nodes)")
    if setup.attn == "eager" and cluster.gpu.flash_attention and setup.precision != "fp32":
        out.append("eager attention keeps heads x seq^2 scores per layer; sdpa or flash use far less memory")
    if setup.tuner == "qlora" and setup.precision == "fp32":
        out.append("QLoRA dequantizes to the compute dtype; in fp32 it runs several times slower")
    return out
