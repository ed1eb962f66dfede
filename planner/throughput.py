"""Throughput: FLOPs per token, achievable speed, and communication time -> tokens/s.

Compute follows the usual dense-transformer accounting (Kaplan et al. 2020; Narayanan et al.
2021): a forward pass costs 2 FLOPs per weight per token plus the attention scores; backward
costs twice the forward for trained weights (input and weight gradients) and once for frozen
ones (input gradient only); checkpointing re-runs the forward of every checkpointed block.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Architecture
from .memory import Params, params
from .setup import Cluster, Setup

MFU = {"flash": 0.45, "sdpa": 0.40, "eager": 0.30}
"""Fraction of peak tensor-core speed HF Trainer runs reach on large matmuls (typical 7B SFT)."""
ZERO3_EFFICIENCY = 0.85
"""ZeRO-3 gathers every layer's weights before use: kernel launches and waits that bucketing
cannot fully hide (the seed ranks speed ZeRO-1 > ZeRO-2 > ZeRO-3)."""
QUANT_SLOWDOWN = {"int8": 0.45}
"""8-bit weights: bitsandbytes' int8 matmul (outlier decomposition) runs well below the 16-bit kernels."""
ADAPTER_CALL_S = 0.25e-3
"""Seconds a LoRA-adapted linear adds per pass beyond its FLOPs: peft's dropout, A, B, scaling and
add are several small kernels and Python per call whatever the batch. Measured on an H200
(bench/results/gpu_check-2026-12-04-*): LoRA steps of llama-3.1-8b and qwen2.5-7b took 0.13-0.24 s
more than their FLOPs at the planner's MFU, 5-8 ms per layer of 7 adapted linears x 3 passes;
LISA's plain layers of the same model, under 1 ms."""
NF4_CALL_S = 0.67e-3
"""Seconds a 4-bit linear adds per pass (forward, the input gradient in backward, the checkpoint
re-run): bitsandbytes dequantizes the whole weight (and, with double quantisation, its absmax)
before every matmul, a few kernels and Python per call whatever the batch. A per-step cost, not a
slower matmul: measured on an H200 (bench/results/gpu_check-2026-12-04-*), QLoRA llama-3.1-8b took
0.89 s a step at 2k tokens and 3.2 s at 16k, LoRA 0.72 s at 4k and 1.3 s at 8k, so about 0.45 s
a step more at any length over 224 4-bit linears x 3 passes."""
COMM_OVERLAP = 0.5
"""Share of gradient communication hidden behind backward compute (DDP/ZeRO bucketing)."""
PCIE_HOST_GBPS = 20.0
CPU_ADAM_PARAMS_PER_S = 1.5e9
"""DeepSpeedCPUAdam updates about this many parameters per second per rank (AVX2/AVX-512)."""


@dataclass(frozen=True)
class Throughput:
    flops_per_token: float
    compute_s: float
    """Seconds of compute per micro-batch on one GPU."""
    comm_s: float
    """Seconds per micro-batch of communication left after overlap (amortised over accumulation)."""
    offload_s: float
    tokens_per_s: float
    """Whole-cluster training tokens per second."""
    mfu: float


def flops_per_token(arch: Architecture, setup: Setup, pr: Params) -> float:
    """Training FLOPs per token: forward, backward and recomputation."""
    s = setup.seq_len
    active = arch.active_params - arch.embedding_params + (0 if arch.head_params else arch.embedding_params)
    layer_active = (active - arch.head_params - (arch.embedding_params if arch.tied_embeddings else 0)) / arch.layers
    head = 2 * arch.vocab * arch.hidden
    causal = 0.5 if setup.attn != "eager" else 1.0
    attn = 2 * 2 * s * arch.q_dim * causal  # QK^T and PV per token per layer
    fwd_layer = 2 * layer_active + attn
    trained, grad_layers = pr.trained_layers, pr.grad_layers
    frozen = grad_layers - trained
    fwd = arch.layers * fwd_layer + head
    # Frozen layers still pass gradients down: the input-gradient matmuls and the attention backward.
    bwd = trained * 2 * fwd_layer + frozen * (fwd_layer + attn) + head * (2 if pr.head_trainable else 1)
    if pr.adapter:
        bwd += 6 * pr.adapter  # adapters: forward + both gradients, 2 FLOPs each
    recompute = grad_layers * fwd_layer if setup.grad_ckpt else 0
    return fwd + bwd + recompute


def estimate_throughput(
    arch: Architecture, setup: Setup, cluster: Cluster, global_batch: int | None = None
) -> Throughput:
    """Tokens per second for the whole cluster."""
    pr = params(arch, setup)
    gpu = cluster.gpu
    fpt = flops_per_token(arch, setup, pr)
    peak = (gpu.tflops_fp32 if setup.precision == "fp32" else gpu.tflops_16bit) * 1e12
    tokens = setup.tokens
    mfu = MFU[setup.attn] * tokens / (tokens + 512)  # short micro-batches underfill the GPU
    if setup.tuner == "qlora" and setup.quant in QUANT_SLOWDOWN:
        mfu *= QUANT_SLOWDOWN[setup.quant]
    if setup.stage == 3:  # ZeRO-3 or FSDP full/hybrid shard: parameters gathered every pass
        mfu *= ZERO3_EFFICIENCY
    compute = fpt * tokens / (peak * mfu) + per_call_seconds(arch, setup)
    accum = setup.grad_accum or max(1, (global_batch or 64) // (setup.micro_batch * cluster.world))
    comm = _comm_seconds(arch, setup, cluster, pr, accum)
    hidden = COMM_OVERLAP * compute
    comm_left = max(0.0, comm - hidden)
    offload = _offload_seconds(setup, cluster, pr) / accum
    step = compute + comm_left + offload
    return Throughput(fpt, compute, comm_left, offload, tokens * cluster.world / step, mfu)


def per_call_seconds(arch: Architecture, setup: Setup) -> float:
    """Per micro-batch: what adapted and 4-bit linears cost per call, once per pass of each
    (forward, the input gradient in backward, the checkpoint re-run)."""
    if not setup.adapters:
        return 0.0
    passes = 3 if setup.grad_ckpt else 2
    adapted = len(arch.lora_targets(setup.lora_targets)) * arch.layers
    seconds = adapted * passes * ADAPTER_CALL_S
    if setup.tuner == "qlora" and setup.quant == "nf4":  # each unfused expert sees tokens at training batches
        seconds += arch.quantized_linears * passes * NF4_CALL_S
    return seconds


def _bandwidth(cluster: Cluster) -> float:
    gbps = (
        cluster.gpu.intra_node_gbps
        if cluster.nodes == 1
        else min(cluster.gpu.intra_node_gbps, cluster.gpu.inter_node_gbps)
    )
    return gbps * 1e9


def _comm_seconds(arch: Architecture, setup: Setup, cluster: Cluster, pr: Params, accum: int) -> float:
    """Communication per micro-batch: gradient sync once per step, ZeRO-3 gathers every pass."""
    n = cluster.world
    if n == 1:
        return 0.0
    ring = 2 * (n - 1) / n
    trainable = pr.trainable_base + pr.adapter
    grad_bytes = trainable * (2 if setup.precision != "fp32" else 4)
    per_step = ring * grad_bytes / _bandwidth(cluster)
    per_micro = 0.0
    if setup.stage == 3:
        gathers = 3 if setup.grad_ckpt else 2  # forward, backward (and the recompute)
        per_micro = gathers * (n - 1) / n * arch.params * 2 / _bandwidth(cluster)
    return per_micro + per_step / accum


def _offload_seconds(setup: Setup, cluster: Cluster, pr: Params) -> float:
    """Per optimizer step: gradients to the host, the CPU Adam update, weights back."""
    if setup.offload == "none":
        return 0.0
    shard = (pr.trainable_base + pr.adapter) / cluster.world
    traffic = shard * (4 + 2) / (PCIE_HOST_GBPS * 1e9)
    update = shard / CPU_ADAM_PARAMS_PER_S
    params_traffic = 0.0
    if setup.offload == "optimizer+params":
        params_traffic = 3 * pr.total * 2 / cluster.world / (PCIE_HOST_GBPS * 1e9)
    return traffic + update + params_traffic


def epoch_seconds(tput: Throughput, dataset_tokens: int) -> float:
    """Time to train on `dataset_tokens` tokens once."""
    return dataset_tokens / tput.tokens_per_s
