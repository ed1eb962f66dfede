"""Activation memory: what autograd keeps alive for one decoder block, per token.

The ledger follows what the Hugging Face modules save for backward (each PyTorch op saves
only the inputs its derivative needs, so frozen weights change what is kept):

- RMSNorm upcasts its input to fp32 and keeps that copy for `pow` and the scaling (4 bytes
  per element); a trainable norm weight also keeps the normalised 16-bit tensor.
- A linear layer keeps its input only when its weight is trained (grad_W = dY^T X); a frozen
  one keeps nothing. A LoRA adapter keeps its (dropped-out) input and the dropout mask.
- RoPE multiplies by cos/sin, which are constants: nothing per layer beyond its outputs.
- FlashAttention / SDPA keep q, k, v, the output and the fp32 log-sum-exp per head; eager
  attention also keeps the fp32 softmax and the 16-bit probabilities (heads x s^2 each).
- A gated MLP (SwiGLU/GeGLU) keeps gate and up (for act(gate) * up) and act(gate).

Sizes are bytes per token (per sequence position of one sample); the s^2 attention term is
given per token per key position.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Architecture, Linear

MASK_BYTES = 1
"""torch's dropout keeps a bool mask: one byte per element."""


@dataclass(frozen=True)
class Precision:
    """Byte widths a run computes and stores with."""

    compute: int
    """Matmul outputs (2 under bf16/fp16 autocast or a 16-bit model, 4 in fp32)."""
    stream: int
    """Residual stream between blocks (4 when the weights are fp32 under autocast)."""


@dataclass(frozen=True)
class BlockActivations:
    """Saved and transient activation bytes of one decoder block."""

    saved: float
    """Bytes per token kept from forward until this block's backward."""
    saved_scores: float
    """Eager attention only: bytes per token per key position (heads x s^2 terms)."""
    transient: float
    """Peak extra bytes per token while this block's backward runs (gradients of activations)."""
    transient_scores: float = 0.0


def _norm_saved(arch: Architecture, trainable: bool, p: Precision) -> float:
    # RMSNorm/LayerNorm keep an fp32 view of their input (4 B) plus the fp32 rsqrt/mean per row;
    # a trained RMSNorm weight also needs the normalised input (compute dtype).
    extra = p.compute * arch.hidden if trainable and arch.norm == "rmsnorm" else 0
    return 4 * arch.hidden + 8 + extra


def _reads_width(arch: Architecture, reads: str, moe: bool) -> int:
    return {"attn_in": arch.hidden, "attn_out": arch.q_dim, "mlp_in": arch.hidden,
            "mlp_mid": arch.intermediate}[reads]


def block_activations(arch: Architecture, *, trainable: bool, adapters: tuple[Linear, ...],
                      lora_rank: int, lora_dropout: float, dora: bool, attn: str, micro_batch: int,
                      p: Precision, quantized: bool = False, moe: bool = True) -> BlockActivations:
    """Activation bytes of one block.

    `trainable`: its base weights get gradients. `quantized`: its linears are bitsandbytes 4/8-bit
    layers, whose matmul (MatMul4Bit up to bitsandbytes 0.44, the version behind published QLoRA
    measurements) keeps its input for backward although the weight is frozen.
    """
    h, i, dt = arch.hidden, arch.intermediate, p.compute
    linears = arch.block if moe or not arch.dense_block else arch.dense_block
    routed = arch.experts_per_token if (moe and arch.experts) else 1
    saved = 0.0
    norms = 1 if arch.parallel_block and arch.norms_per_layer == 1 else 2
    saved += norms * _norm_saved(arch, trainable, p)
    if arch.qk_norm:
        saved += 4 * (arch.q_dim + arch.kv_dim)

    # Inputs kept for weight gradients: each distinct activation once if any trained reader.
    adapted = {lin.name for lin in adapters}
    kept_inputs: set[str] = set()
    for lin in linears:
        if (trainable or quantized) and lin.group != "router":
            kept_inputs.add(lin.reads)
        if lin.name in adapted and lora_dropout == 0:
            kept_inputs.add(lin.reads)
    for reads in kept_inputs:
        if reads == "attn_out" and attn != "eager":
            continue  # flash/SDPA already keep their output, which o_proj reads as a view
        if reads == "mlp_in" and arch.parallel_block:
            reads_w = 0 if "attn_in" in kept_inputs else h
        else:
            reads_w = _reads_width(arch, reads, moe)
        copies = routed if reads.startswith("mlp") else 1
        saved += copies * dt * reads_w

    # LoRA: dropout keeps its mask and its output per adapted layer; A's output (r) is kept for B.
    for lin in adapters:
        width = _reads_width(arch, lin.reads, moe)
        copies = routed if lin.reads.startswith("mlp") else 1
        if lora_dropout > 0:
            saved += copies * (MASK_BYTES + dt) * width
        saved += copies * 4 * lora_rank
        if dora:
            saved += copies * dt * lin.out_features  # DoRA rescales the base output: keeps it

    # Attention core.
    q, kv = arch.q_dim, arch.kv_dim
    repeat_kv = attn == "eager" or (attn == "sdpa" and micro_batch > 1)  # HF repeats k/v when a mask is passed
    k_saved = q if repeat_kv else kv
    saved += dt * (2 * q + 2 * k_saved) + 4 * arch.heads
    saved_scores = 0.0
    if attn == "eager":
        saved_scores = arch.heads * (4 + (dt if dt != 4 else 0))  # fp32 softmax + 16-bit probabilities

    # MLP: gated keeps gate, up and act(gate); plain GeLU keeps fc1's output (gelu input).
    mlp = 3 * i if arch.gated_mlp else i
    saved += routed * dt * mlp
    if moe and arch.experts:
        saved += 4 * arch.experts + routed * dt * h  # router softmax (fp32) and weighted expert outputs

    # Backward of the block: gradients of the MLP activations are the largest live set.
    transient = routed * dt * (3 * i if arch.gated_mlp else 2 * i) + 2 * dt * h
    transient_scores = arch.heads * (dt + 8) if attn == "eager" else 0.0
    return BlockActivations(saved, saved_scores, transient, transient_scores)
