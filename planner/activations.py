"""Activation memory: what autograd keeps alive for one decoder block, per token.

The ledger follows what the Hugging Face modules save for backward (each PyTorch op saves
only the inputs its derivative needs, so frozen weights change what is kept):

- RMSNorm upcasts its input to fp32 and keeps that copy for `pow` and the scaling (4 bytes
  per element); a trainable norm weight also keeps the normalised 16-bit tensor.
- A linear layer keeps its input only when its weight is trained (grad_W = dY^T X); a frozen
  one keeps nothing. A LoRA adapter keeps its own 16-bit copy of its input (peft casts the input
  to the fp32 adapter dtype, autocast casts it back for the matmul, and that copy is saved for
  grad_A) plus, with dropout, the 1-byte mask of CUDA's fused dropout kernel.
- RoPE multiplies by cos/sin, which are constants: nothing per layer beyond its outputs.
- FlashAttention / SDPA keep q, k, v, the output and the fp32 log-sum-exp per head; eager
  attention also keeps the fp32 softmax and the 16-bit probabilities (heads x s^2 each). With a
  fused q/k/v projection, v is a view of its output, so the whole fused tensor stays alive.
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
    quantized_out: int = 0
    """Outputs of 4-bit linears when not `compute`: bitsandbytes' Linear4bit casts its input to the
    compute dtype and its output back to the input's dtype, so an fp32 stream gives fp32 outputs."""


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
    saved_const: float = 0.0
    """Bytes kept per block whatever the token count (DoRA's 16-bit weight copies)."""
    mlp_saved: float = 0.0
    """Of `saved`, what the MLP half keeps (freed once the MLP's backward is done)."""
    attn_transient: float = 0.0
    """Per token while the attention core runs backward: the gradients of q, k, v and the output."""
    attn_transient_scores: float = 0.0
    """Eager attention backward, per token per key: the kept fp32 softmax, the fp32 gradient of the
    probabilities and softmax's input gradient (12 B per head)."""


def _norm_saved(arch: Architecture, trainable: bool, p: Precision, width: int | None = None) -> float:
    # RMSNorm/LayerNorm keep an fp32 view of their input (4 B) plus the fp32 rsqrt/mean per row;
    # a trained RMSNorm weight also needs the normalised input (in the weight's dtype: fp32 for Gemma,
    # and for fp32 weights under autocast).
    width = width or arch.hidden
    extra = 0
    if trainable and arch.norm == "rmsnorm":
        extra = (4 if arch.norm_fp32_weight or p.stream == 4 else p.compute) * width
    return 4 * width + 8 + extra


def _reads_width(arch: Architecture, reads: str) -> int:
    return {"attn_in": arch.hidden, "attn_out": arch.q_dim, "mlp_in": arch.hidden, "mlp_mid": arch.intermediate}[reads]


def builds_4d_mask(arch: Architecture, micro_batch: int, seq_len: int) -> bool:
    """transformers hands SDPA a 4-D mask for a padded batch, or from the sliding window on; then it
    repeats k/v to all heads (no enable_gqa with a mask)."""
    return micro_batch > 1 or (arch.sliding_window is not None and seq_len >= arch.sliding_window)


def block_activations(
    arch: Architecture,
    *,
    trainable: bool,
    adapters: tuple[Linear, ...],
    lora_rank: int,
    lora_dropout: float,
    dora: bool,
    attn: str,
    micro_batch: int,
    p: Precision,
    quantized: bool = False,
    moe: bool = True,
    seq_len: int = 0,
) -> BlockActivations:
    """Activation bytes of one block.

    `trainable`: its base weights get gradients. `quantized`: its linears are bitsandbytes 4/8-bit
    layers. Their matmul keeps no input for backward (bitsandbytes >= 0.45's MatMul4Bit holds only
    the packed weight: the trace of a QLoRA step without checkpointing shows no copy per reader);
    fed an fp32 stream, they return fp32 outputs (`p.quantized_out`).
    """
    h, i, dt = arch.hidden, arch.intermediate, p.compute
    q_out = p.quantized_out if quantized else 0
    """Width of this block's 4-bit linear outputs when not `dt` (0: they are `dt`)."""
    linears = arch.block if moe or not arch.dense_block else arch.dense_block
    routed = arch.experts_per_token if (moe and arch.experts) else 1
    saved = 0.0
    saved_const = 0.0
    mlp_saved = 0.0
    saved += arch.norms_per_layer * _norm_saved(arch, trainable, p)
    if arch.norms_per_layer >= 2 and not arch.parallel_block:
        mlp_saved += _norm_saved(arch, trainable, p)  # the post-attention norm feeds the MLP
    if arch.qk_norm:
        saved += _norm_saved(arch, trainable, p, arch.q_dim + arch.kv_dim)

    # Inputs kept for weight gradients: each distinct activation once if any trained reader.
    kept_inputs: set[str] = set()
    # peft's LoRA on fused experts (transformers 5) adapts the 3-D weight itself: the adapted stack
    # W + scale * B A is built in every forward (a baddbmm in peft's _LoraFactorsProxy) and the
    # grouped matmul keeps it, and the tokens routed to each expert, for the gradients.
    fused_adapted = [lin for lin in adapters if arch.fused_experts and lin.copies > 1]
    for lin in fused_adapted:
        saved_const += dt * lin.copies * lin.in_features * lin.out_features
    for lin in linears:
        if (trainable and lin.group != "router") or lin in fused_adapted:
            kept_inputs.add(lin.reads)
    # fp32 weights under 16-bit autocast (full/freeze/LISA in bf16-mixed): the residual stream and
    # the norms' outputs are fp32, and autocast casts them to 16 bits separately for every linear that
    # reads them (it caches only weights), so each reader saves its own copy.
    casts_per_reader = p.stream == 4 and dt == 2
    for reads in kept_inputs:
        if reads == "attn_out" and attn == "flash":
            continue  # flash-attn keeps its output, which o_proj reads as a view
        if reads == "mlp_in" and arch.parallel_block:
            reads_w = 0 if "attn_in" in kept_inputs else h
        else:
            reads_w = _reads_width(arch, reads)
        copies = routed if reads.startswith("mlp") else 1
        if casts_per_reader and reads in ("attn_in", "mlp_in"):
            copies *= sum(1 for lin in linears if lin.reads == reads and trainable)
        saved += copies * dt * reads_w
        if reads.startswith("mlp"):
            mlp_saved += copies * dt * reads_w

    # LoRA: each adapter keeps its own copy of its input and, with dropout, the mask; A's output (r)
    # is kept for B.
    for lin in adapters:
        if lin in fused_adapted:
            continue
        width = _reads_width(arch, lin.reads)
        copies = routed if lin.reads.startswith("mlp") else 1
        adapter_saved = copies * (dt + (MASK_BYTES if lora_dropout > 0 else 0)) * width + copies * 4 * lora_rank
        saved += adapter_saved
        if lin.reads.startswith("mlp"):
            mlp_saved += adapter_saved
        if dora:
            # DoRA's output is (m/|W'| - 1) * base + (m/|W'|) * scale * lora: the products keep both the
            # base output and the adapter's output for the magnitude's gradient.
            saved += copies * 2 * dt * lin.out_features
            if lora_dropout > 0 and dt != 4:
                # peft's DoRA recomputes the base output from the dropped-out input with the weight
                # cast to the (fp32) adapter dtype; autocast casts it back to 16 bits for F.linear,
                # which saves that copy for the input gradient: one weight-sized tensor per layer.
                saved_const += copies * dt * lin.in_features * lin.out_features

    # Attention core.
    q, kv = arch.q_dim, arch.kv_dim
    math = attn == "sdpa" and arch.sdpa_math
    masked = attn == "sdpa" and builds_4d_mask(arch, micro_batch, seq_len)
    repeat_kv = (attn == "eager" or masked) and arch.kv_heads < arch.heads  # n_rep = 1 repeats nothing
    k_saved = q if repeat_kv else kv
    # 4-bit q/k/v fed an fp32 stream return fp32, which autocast copies to 16 bits for the attention
    # matmuls: those copies are saved, not views of a fused q/k/v output, which is then freed.
    cast_qkv = q_out == 4 and dt == 2
    saved_scores = 0.0
    if math:
        # SDPA's math kernel: q (scaled), k and v upcast to fp32 and kept, the fp32 softmax kept.
        saved += 4 * (q + 2 * kv)
        saved_scores = arch.heads * 4
    elif attn == "eager":
        # q and k for the scores, v for probabilities @ v; a v sliced from a fused q/k/v output (and
        # not repeated) keeps all of that output alive. o_proj's input is counted above.
        v_saved = (q + 2 * kv) if arch.fused_qkv and not repeat_kv and not cast_qkv else k_saved
        saved += dt * (q + k_saved + v_saved)
    else:
        # q, k, v, the output and the log-sum-exp; o_proj reads a transposed contiguous copy of the
        # output (counted above for a trained o_proj; flash-attn's output needs no copy).
        saved += dt * (2 * q + 2 * k_saved) + 4 * arch.heads
        if arch.fused_qkv and not repeat_kv and not cast_qkv:
            saved += dt * (q + kv)  # v is a view of the fused q/k/v output and keeps all of it alive
        if masked:
            # A padded batch reaches SDPA with transformers' 4-D bool mask, which SDPA turns into an
            # additive mask in the compute dtype on every call and keeps for backward: per layer,
            # batch x s^2 (per token per key: one element, shared by the heads).
            saved_scores += dt
    if attn == "eager":
        saved_scores = arch.heads * (4 + (dt if dt != 4 else 0))  # fp32 softmax + 16-bit probabilities
        if arch.attn_softcap:
            saved_scores += arch.heads * dt  # tanh keeps its output

    # MLP: gated keeps gate, up and act(gate); plain GeLU keeps fc1's output (gelu input). Phi's
    # gelu_new is separate ops: pow (fp32 under autocast) keeps its input, tanh its output, and the
    # final product 0.5*x and (1 + tanh): 4 + 4 + 2 + 4 bytes per element.
    # 4-bit MLP linears fed an fp32 stream return fp32 (Precision.quantized_out); fused MoE experts
    # are not bitsandbytes layers and compute in the autocast dtype.
    mw = q_out if q_out and not (moe and arch.fused_experts) else dt
    if arch.mlp_act == "gelu_new":
        mlp_core = routed * (14 if mw == 2 else 16) * i
    else:
        mlp_core = routed * mw * (3 * i if arch.gated_mlp else i)
    if moe and arch.experts:
        mlp_core += 4 * arch.experts + routed * dt * h  # router softmax (fp32) and weighted expert outputs
    saved += mlp_core
    mlp_saved += mlp_core

    # Backward of the block, MLP first: the gradients of the MLP activations are the largest live
    # set while everything the block saved is alive. Then the attention core's backward, once the
    # MLP's saved tensors are gone: eager attention holds its fp32 softmax, the fp32 gradient of the
    # probabilities and softmax's input gradient (the 16-bit probabilities are freed by then).
    transient = routed * mw * (3 * i if arch.gated_mlp else 2 * i) + 2 * dt * h
    attn_transient = dt * (2 * q + 2 * k_saved)
    attn_transient_scores = arch.heads * 12 if attn == "eager" or math else 0.0
    return BlockActivations(
        saved, saved_scores, transient, 0.0, saved_const, mlp_saved, attn_transient, attn_transient_scores
    )
