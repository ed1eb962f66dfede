"""Per-GPU memory of one training configuration, term by term.

A training step has two memory peaks: right after the forward pass and the loss (every saved
activation plus the loss buffers alive: phase `backward`), and the optimizer step (all
gradients plus the optimizer's temporaries: phase `step`). Each `Term` says which phases it
is alive in and which pool holds it: the PyTorch caching allocator (`allocated`), the
allocator's cached-but-free slack (`reserved`), or memory outside PyTorch (`driver`: the CUDA
context, NCCL buffers, paged optimizer states in unified memory). Those three pools are what
`torch.cuda.max_memory_allocated`, `max_memory_reserved` and NVML report.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

from .activations import Precision
from .arch import ArchMemo, Architecture
from .setup import Cluster, Setup

GIB = 2**30
MIB = 2**20
PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "overhead")
PHASES = ("backward", "step")
BOTH = PHASES

CUDA_CONTEXT = 0.74 * GIB
"""CUDA context + loaded kernels of torch, outside the allocator: NVML's used memory of the training
process less torch.cuda.max_memory_reserved(), 0.73-0.74 GiB in each of 7 ftui runs on an H200
(driver 580, CUDA 13.0, torch 2.11; bench/results/gpu_check-2026-12-04-*). CUDA 12 stacks with lazy
module loading show about 0.5-0.6 GiB; the larger figure is kept, so a plan errs toward room."""
NCCL_BUFFERS = 0.40 * GIB
"""NCCL communicator buffers per GPU when more than one process trains (outside the allocator)."""
LIB_WORKSPACES = 64 * MIB
"""cuBLAS/cuBLASLt workspaces, allocated through the caching allocator."""
CUDA_ONLY_TERMS = frozenset({"library workspaces"})
"""Allocated terms a CPU trace of the training step cannot see (CUDA libraries' own buffers)."""
PROCESS_CPU_RAM = 2.5 * GIB
"""Host memory of one training process before the model: Python, torch, CUDA host libraries."""
FRAGMENTATION = 0.10
"""Fraction of the step-scale working set (activations, loss buffers, step temporaries) the
caching allocator keeps reserved beyond what is allocated: freed blocks of one size cannot
always serve the next request of another size."""
LOSS_CACHE_GROWTH = 2.0
"""Extra reserved memory over a long run, as a multiple of the loss-path buffers. Those buffers
are few and huge (2 or 4 bytes x vocab x tokens each) and change size with every batch length,
so the allocator keeps segments cut for earlier batches that a later request cannot reuse. One
step alone can strand up to 1x (HF Trainer path: 24 B/elem allocated in total for a 12 B/elem
peak); published long unpacked runs (ms-swift benchmark, torch 2.1) show 1-3x, so we take the
middle. Harnesses that call torch.cuda.empty_cache() often see less. The allocator releases such
cached blocks before it reports out-of-memory, so this growth does not decide fit."""
ROUNDING_PER_TENSOR = 1 * MIB
"""Blocks over 1 MiB are rounded up to 2 MiB multiples: about 1 MiB lost per large tensor."""


@dataclass(frozen=True)
class Term:
    """One named piece of memory."""

    part: str
    name: str
    bytes: float
    phases: tuple[str, ...] = BOTH
    pool: str = "allocated"
    """`allocated`; `reserved` (allocator slack that stays); `cached` (reserved growth over a long
    run that the allocator gives back under pressure); or `driver` (outside PyTorch)."""
    source: str = ""
    state: bool = False
    """Part of the model states (weights, gradients, optimizer states) the ZeRO arithmetic counts."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of one configuration; bytes throughout."""

    terms: tuple[Term, ...]
    capacity_bytes: int
    cpu_ram_bytes: float
    model_states_bytes: float
    """Weights + gradients + optimizer states held per GPU (the seed's 16A / ZeRO arithmetic)."""

    @cached_property
    def _totals(self) -> dict[tuple[str, str], float]:
        """Bytes per (phase, pool), summed once: the figures below are read many times per estimate."""
        totals: dict[tuple[str, str], float] = {}
        for t in self.terms:
            for ph in t.phases:
                totals[ph, t.pool] = totals.get((ph, t.pool), 0.0) + t.bytes
        return totals

    def phase_total(self, phase: str, pools: Iterable[str] = ("allocated",)) -> float:
        totals = self._totals
        return sum(totals.get((phase, pool), 0.0) for pool in pools)

    @cached_property
    def peak_phase(self) -> str:
        return max(PHASES, key=lambda ph: self.phase_total(ph, ("allocated", "reserved", "cached")))

    @cached_property
    def peak_allocated(self) -> float:
        return max(self.phase_total(ph) for ph in PHASES)

    @cached_property
    def driver_bytes(self) -> float:
        return sum(t.bytes for t in self.terms if t.pool == "driver")

    @cached_property
    def required(self) -> float:
        """Bytes the run cannot do without: allocated + unavoidable slack + memory outside PyTorch."""
        return max(self.phase_total(ph, ("allocated", "reserved")) for ph in PHASES) + self.driver_bytes

    @cached_property
    def peak_reserved(self) -> float:
        """What torch.cuda.max_memory_reserved() reaches over a long run (never beyond the GPU)."""
        grown = max(self.phase_total(ph, ("allocated", "reserved", "cached")) for ph in PHASES)
        room = self.capacity_bytes - USABLE_MARGIN - self.driver_bytes
        floor = self.required - self.driver_bytes
        return max(floor, min(grown, room))

    @property
    def nvml_used(self) -> float:
        return self.peak_reserved + self.driver_bytes

    def part(self, name: str, phase: str | None = None) -> float:
        """Bytes of one part at `phase` (default: the peak phase).

        At the peak phase `overhead` is whatever makes the parts add up to `nvml_used`: allocator
        slack, cache growth (as far as the GPU has room for it), the CUDA context, NCCL."""
        phase = phase or self.peak_phase
        named = sum(t.bytes for t in self.terms if t.part == name and phase in t.phases)
        if name != "overhead" or phase != self.peak_phase:
            return named
        others = sum(self.part(p, phase) for p in PARTS if p != "overhead")
        return self.nvml_used - others

    @property
    def fits(self) -> bool:
        return self.required <= self.capacity_bytes - USABLE_MARGIN

    def traceable_parts(self, phase: str) -> dict[str, float]:
        """Allocated bytes per part at `phase` that a CPU trace of the step can see (no CUDA libraries)."""
        parts = dict.fromkeys(PARTS, 0.0)
        for t in self.terms:
            if phase in t.phases and t.pool == "allocated" and t.name not in CUDA_ONLY_TERMS:
                parts[t.part] += t.bytes
        return parts


USABLE_MARGIN = 0.25 * GIB
"""NVML's total includes memory no process can get (driver reservations, page-table overhead)."""


# --- byte widths by precision ------------------------------------------------------------


@dataclass(frozen=True)
class Widths:
    weight: int
    """Stored base weights on the GPU."""
    grad: int
    moment: int
    """Each optimizer moment (Adam m and v)."""
    master: int
    """fp32 master copy kept by the optimizer (DeepSpeed mixed precision), else 0."""
    adapter: int
    """LoRA adapter weights: peft keeps them in fp32 unless DeepSpeed casts the module."""
    act: Precision


def widths(setup: Setup) -> Widths:
    """Byte widths of each state for the precision mode and launcher."""
    p = setup.precision
    if p == "fp32":
        return Widths(4, 4, 4, 0, 4, Precision(4, 4))
    if setup.upcasts_unquantized:
        # QLoRA with its unquantized parameters in fp32: the fp32 norms make the residual stream fp32,
        # and bitsandbytes returns each 4-bit matmul in its input's dtype (fp32 outputs but o_proj's).
        return Widths(2, 4, 4, 0, 4, Precision(2, 4, 4))
    if p == "bf16-true":
        # HF Trainer on a bf16-loaded model: torch AdamW keeps its moments in the param dtype.
        return Widths(2, 2, 2, 0, 2 if setup.deepspeed else 4, Precision(2, 2))
    if setup.deepspeed:
        # DeepSpeed mixed precision: 16-bit params and grads, fp32 master + m + v (the seed's 16A).
        return Widths(2, 2, 4, 4, 2, Precision(2, 2))
    if setup.is_fsdp and not setup.adapters:
        # accelerate's fsdp2_prepare_model upcasts every trainable parameter to fp32 when mixed
        # precision is on (FSDP2 wants one dtype per group); MixedPrecisionPolicy(param_dtype=bf16)
        # casts the gathered copy for compute, so blocks see 16-bit weights and a 16-bit stream.
        return Widths(4, 4, 4, 0, 4, Precision(2, 2))
    if setup.adapters:
        # Adapters under autocast: the frozen base stays 16-bit, peft keeps the adapters in fp32.
        return Widths(2, 4, 4, 0, 4, Precision(2, 2))
    # torch AMP: fp32 params, fp32 grads, fp32 moments; autocast computes in 16 bits.
    return Widths(4, 4, 4, 0, 4, Precision(2, 4))


# --- parameters by role ------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    total: int
    trainable_base: int
    """Base-model parameters that get gradients (full / freeze / LISA)."""
    adapter: int
    """LoRA/DoRA parameters added by peft."""
    quantized: int
    """Parameters stored 4-bit or 8-bit (QLoRA's linear layers)."""
    grad_layers: int
    """Decoder layers backward has to run through."""
    trained_layers: int
    """Decoder layers whose own weights are trained."""
    head_trainable: bool
    tensors: int
    """Number of parameter tensors (allocator rounding)."""


def params(arch: Architecture, setup: Setup) -> Params:
    L = arch.layers
    tensors = L * (2 * len(arch.block) + arch.norms_per_layer) + 3
    top_layer = max(arch.layer_params)
    if setup.tuner == "full":
        return Params(arch.params, arch.params, 0, 0, L, L, True, tensors)
    if setup.tuner == "freeze":
        k = min(setup.trainable_layers, L)
        trainable = sum(arch.layer_params[L - k :]) + arch.norm_params
        return Params(arch.params, trainable, 0, 0, k, k, False, tensors)
    if setup.tuner == "lisa":
        # LISA (Pan et al. 2024): embeddings, LM head and final norm always train, plus gamma layers.
        k = min(setup.lisa_layers, L)
        trainable = arch.embedding_params + arch.head_params + arch.norm_params + k * top_layer
        return Params(arch.params, trainable, 0, 0, L, k, True, tensors)
    targets = arch.lora_targets(setup.lora_targets)
    adapter = arch.lora_params(setup.lora_targets, setup.lora_rank)
    if setup.dora:
        adapter += L * sum(lin.out_features * lin.copies for lin in targets)  # DoRA magnitude vectors
    quantized = arch.layer_linear_params if setup.tuner == "qlora" else 0
    return Params(arch.params, 0, adapter, quantized, L, 0, False, tensors + 2 * L * len(targets))


# --- the estimate ------------------------------------------------------------------------


_STATES = ArchMemo()
"""What an estimate holds whatever the batch shape (widths, parameter counts, the weight, gradient and
optimizer terms, host RAM), per setup less its micro-batch and sequence length and per cluster: the
planner's searches over micro-batch and sequence length reuse it."""


def _shape_free(arch: Architecture, setup: Setup, cluster: Cluster) -> tuple:
    def make() -> tuple:
        w = widths(setup)
        pr = params(arch, setup)
        terms = weight_terms(arch, setup, cluster, w, pr)
        terms += gradient_terms(arch, setup, cluster, w, pr)
        terms += optimizer_terms(setup, cluster, w, pr, arch)
        return w, pr, tuple(terms), cpu_ram(arch, setup, cluster, w, pr)

    return _STATES.get(arch, (setup.but(micro_batch=1, seq_len=2), cluster), make)


def estimate(arch: Architecture, setup: Setup, cluster: Cluster) -> MemoryEstimate:
    """Per-GPU peak memory of `setup` for `arch` on `cluster`."""
    w, pr, model_terms, host_ram = _shape_free(arch, setup, cluster)
    terms: list[Term] = list(model_terms)
    terms += activation_terms(arch, setup, w, pr, cluster)
    terms += overhead_terms(terms, setup, cluster, pr)
    states = sum(t.bytes for t in terms if t.state)
    return MemoryEstimate(tuple(terms), cluster.gpu.memory_bytes, host_ram, states)


def _shard(setup: Setup, cluster: Cluster, stage: int) -> int:
    """Ranks a state is split over: ZeRO stage (or the FSDP strategy's equivalent) >= `stage`
    shards it across the world; FSDP's hybrid_shard only across the GPUs of one node."""
    if setup.stage < stage:
        return 1
    return cluster.gpus_per_node if setup.fsdp == "hybrid_shard" else cluster.world


def weight_terms(arch: Architecture, setup: Setup, cluster: Cluster, w: Widths, pr: Params) -> list[Term]:
    terms: list[Term] = []
    on_gpu = 0 if setup.offload == "optimizer+params" else 1
    shard = _shard(setup, cluster, 3)
    if setup.tuner == "qlora":
        terms += _quantized_weight_terms(arch, setup, pr, shard if setup.is_fsdp else 1, on_gpu)
    else:
        terms.append(
            Term(
                "weights",
                "model weights",
                on_gpu * pr.total * w.weight / shard,
                source=f"{pr.total:,} params x {w.weight} B ({setup.precision}); ZeRO-3 shards over {shard}",
                state=True,
            )
        )
    if pr.adapter:
        terms.append(
            Term(
                "weights",
                "LoRA adapter weights",
                pr.adapter * w.adapter * on_gpu / (shard if setup.is_fsdp else 1),  # FSDP shards them too
                source=f"r={setup.lora_rank} A and B for {setup.lora_targets}; peft stores them fp32",
                state=True,
            )
        )
    if setup.is_fsdp:
        terms.append(_fsdp_gathered(arch, setup, pr, w))
    if setup.zero == 3:
        # ZeRO-3 all-gathers each module's 16-bit params before use, prefetching the next one.
        gathered = 2 * max(arch.embedding_params, arch.head_params, 2 * max(arch.layer_params))
        terms.append(
            Term(
                "weights",
                "ZeRO-3 gathered layers",
                gathered,
                ("backward",),
                source="current + prefetched block (or the embedding) in 16 bits",
            )
        )
    return terms


def _fsdp_gathered(arch: Architecture, setup: Setup, pr: Params, w: Widths) -> Term:
    """What FSDP holds unsharded when backward begins (accelerate's fsdp2_prepare_model: one unit
    per decoder layer, the embedding its own unit, the final norm + LM head a unit with
    reshard_after_forward=False, the root with torch's default, False).

    full_shard / hybrid_shard: the tail unit (head, and the embedding when tied) stays gathered
    from the end of forward, plus the last layer, whose backward runs first, and the layer FSDP2
    prefetches behind it. shard_grad_op (reshard_after_forward=False everywhere): every unit stays
    gathered from its forward to its backward, so at that moment the whole model is."""
    compute = 4 if setup.precision == "fp32" else 2  # MixedPrecisionPolicy param_dtype (or the stored dtype)
    if setup.tuner == "qlora":
        per = _nf4_bytes(setup) if setup.quant == "nf4" else 1.0
        layer = (
            arch.layer_linear_params // arch.layers * per
            + (max(arch.layer_params) - arch.layer_linear_params // arch.layers) * compute
        )
        model = pr.quantized * per + (pr.total - pr.quantized) * compute
    else:
        layer = max(arch.layer_params) * compute
        model = pr.total * compute
    tail = arch.head_params * compute
    if setup.fsdp == "shard_grad_op":
        gathered, how = model, "every unit stays gathered from its forward to its backward"
    else:
        gathered, how = tail + 2 * layer, "the head unit (kept after forward) + the last layer and the one prefetched"
    return Term(
        "weights",
        "FSDP gathered units",
        gathered,
        ("backward",),
        source=f"FSDP {setup.fsdp}: {how}, in {compute}-byte compute dtype",
    )


def _nf4_bytes(setup: Setup) -> float:
    # bitsandbytes NF4: 4 bits + one absmax per 64-block; double quantisation stores that absmax
    # as 8 bits with an fp32 scale per 256 blocks (Dettmers et al. 2023, QLoRA section 3).
    return 0.5 + ((1 + 4 / 256) / 64 if setup.double_quant else 4 / 64)


def _quantized_weight_terms(
    arch: Architecture, setup: Setup, pr: Params, shard: int = 1, on_gpu: int = 1
) -> list[Term]:
    """`shard`: FSDP shards the 4-bit weights (stored in a 16-bit quant_storage dtype); `on_gpu` 0:
    FSDP's CPU offload keeps the shards in host memory and gathers each unit to the GPU for use."""
    if setup.quant == "nf4":
        per = _nf4_bytes(setup)
    else:
        per = 1.0 + 4 / arch.hidden  # LLM.int8: int8 weights + an fp32 scale per output row
    rest = pr.total - pr.quantized
    rest_bytes = 4 if setup.precision == "fp32" else 2  # loaded in the compute dtype
    # The runner (as peft's prepare_model_for_kbit_training) upcasts the 16-bit rest to fp32, all but
    # fused MoE expert stacks (the bulk of an MoE model, kept in the compute dtype).
    upcast = rest - arch.fused_expert_params if setup.upcasts_unquantized else 0
    # Under FSDP the 4-bit weights are stored in a 16-bit quant_storage dtype, so FSDP can shard them
    # like any other parameter (accelerate leaves integer-stored Params4bit unsharded).
    sharded = f"; FSDP shards over {shard}" if shard > 1 else ""
    return [
        Term(
            "weights",
            "quantized linear weights",
            on_gpu * pr.quantized * per / shard,
            source=f"{pr.quantized:,} linear params in {setup.quant} ({per:.4f} B each){sharded}",
            state=True,
        ),
        Term(
            "weights",
            "unquantized weights (embeddings, head, norms)",
            on_gpu * ((rest - upcast) * rest_bytes + upcast * 4) / shard,
            source=_unquantized_source(upcast, rest - upcast, rest_bytes) + sharded,
            state=True,
        ),
        Term(
            "weights",
            "dequantized weight (one layer at a time)",
            2 * max(lin.in_features * lin.out_features for lin in arch.block),
            ("backward",),
            source="bitsandbytes dequantizes a 4-bit weight to bf16 for each matmul",
        ),
    ]


def _unquantized_source(upcast: int, kept: int, kept_bytes: int) -> str:
    if not upcast:
        return "embeddings, LM head, norms (and fused MoE experts, not nn.Linear) stay in the compute dtype"
    experts = f", {kept:,} fused expert params in {kept_bytes} B" if kept else ""
    return f"{upcast:,} unquantized params upcast to fp32 (prepare_model_for_kbit_training){experts}"


def gradient_terms(arch: Architecture, setup: Setup, cluster: Cluster, w: Widths, pr: Params) -> list[Term]:
    terms: list[Term] = []
    phases = BOTH if setup.grads_persist else ("step",)
    offloaded = setup.offload != "none" and setup.stage >= 2  # DeepSpeed offload, or FSDP's (grads on the CPU)
    shard = _shard(setup, cluster, 2)
    if pr.trainable_base:
        grad = 0 if offloaded else pr.trainable_base * w.grad / shard
        terms.append(
            Term(
                "gradients",
                "gradients",
                grad,
                phases,
                source=f"{pr.trainable_base:,} trainable x {w.grad} B; {setup.engine_label} shards over {shard}",
                state=True,
            )
        )
        if setup.deepspeed:
            terms.append(
                Term(
                    "gradients",
                    "ZeRO reduce bucket",
                    2 * 2 * arch.hidden**2,
                    ("backward",),
                    source="reduce_bucket_size=auto (hidden^2), double-buffered, 16-bit",
                )
            )
    if pr.adapter:
        terms.append(
            Term(
                "gradients",
                "adapter gradients",
                0 if offloaded else pr.adapter * w.adapter / (shard if setup.is_fsdp else 1),
                phases,
                source="gradients of the LoRA weights, same dtype",
                state=True,
            )
        )
    return terms


def _factored_elements(arch: Architecture, setup: Setup, pr: Params) -> float:
    """Elements of Adafactor's factored state for the trainable parameters."""

    def block(linears) -> int:
        mats = sum(
            lin.copies * (lin.in_features + lin.out_features + (lin.out_features if lin.bias else 0)) for lin in linears
        )
        return mats + arch.norms_per_layer * arch.norm_params

    if pr.adapter:
        r = setup.lora_rank
        return arch.layers * sum(
            lin.copies * (lin.in_features + lin.out_features + 2 * r) for lin in arch.lora_targets(setup.lora_targets)
        )
    total = pr.trained_layers * block(arch.block) + arch.norm_params
    if pr.head_trainable:
        total += 2 * (arch.vocab + arch.hidden)  # embedding and head matrices
    return total


def optimizer_terms(setup: Setup, cluster: Cluster, w: Widths, pr: Params, arch: Architecture) -> list[Term]:
    terms: list[Term] = []
    on_cpu = setup.offload != "none"
    shard = _shard(setup, cluster, 1)
    base, adapter = pr.trainable_base / shard, pr.adapter / shard
    optim = setup.optim
    moments = {"adamw": 2, "sgd": 1}.get(optim, 0)
    pool = "driver" if optim.startswith("paged") else "allocated"
    if optim == "paged-adamw":
        states = (base + adapter) * 8  # bitsandbytes PagedAdamW (32-bit): fp32 m and v in unified memory
        src = "fp32 m and v, paged: unified memory outside the PyTorch allocator"
    elif optim in ("adamw-8bit", "paged-adamw-8bit"):
        per = 2 + 2 * 4 / 256  # bnb 8-bit Adam: 1 byte per moment + fp32 absmax per 256-block
        states = (base + adapter) * per
        src = "bitsandbytes blockwise 8-bit m and v"
        if optim == "paged-adamw-8bit":
            src += "; paged: unified memory outside the PyTorch allocator"
    elif optim == "adafactor":
        # Adafactor (Shazeer & Stern 2018; transformers' implementation, beta1=None): an fp32 row
        # and column vector per weight matrix, a full fp32 vector per bias/norm, no first moment.
        states = 4 * _factored_elements(arch, setup, pr) / shard
        src = "factored fp32 second moments: rows + cols per matrix"
    else:
        states = base * moments * w.moment + adapter * moments * 4
        src = f"{moments} moment(s) x {w.moment} B per trainable param"
    if on_cpu:
        states = 0
    terms.append(
        Term(
            "optimizer",
            "optimizer moments",
            states,
            pool=pool,
            source=src + f"; {setup.engine_label} shards over {shard}",
            state=True,
        )
    )
    if w.master and not on_cpu:
        terms.append(
            Term(
                "optimizer",
                "fp32 master weights",
                (base + adapter) * w.master,
                source="fp32 copy of the trainable params kept by the mixed-precision optimizer",
                state=True,
            )
        )
    if on_cpu:
        return terms
    if setup.deepspeed:
        terms.append(
            Term(
                "optimizer",
                "fp32 gradient partition at step",
                4 * (base + adapter),
                ("step",),
                source="DeepSpeed converts the gradient partition to fp32 for the update",
            )
        )
    elif optim == "adafactor":
        # Per tensor, in turn: fp32 copies of the gradient and the weight plus the fp32 update.
        largest = (
            arch.vocab * arch.hidden
            if pr.head_trainable
            else max(lin.in_features * lin.out_features for lin in arch.block)
        )
        if pr.adapter:
            largest = max(
                setup.lora_rank * max(lin.in_features, lin.out_features)
                for lin in arch.lora_targets(setup.lora_targets)
            )
        terms.append(
            Term(
                "optimizer",
                "Adafactor fp32 temporaries (largest tensor)",
                12 * largest,
                ("step",),
                source="grad.float(), p.float() and the update for one tensor at a time",
            )
        )
    elif optim == "adamw":
        # torch.optim.AdamW's default foreach path computes sqrt(v) for all params at once.
        temp = base * w.moment + adapter * 4
        terms.append(
            Term(
                "optimizer",
                "AdamW foreach temporary",
                temp,
                ("step",),
                source="torch _multi_tensor_adamw: one params-sized tensor list for sqrt(v)",
            )
        )
    return terms


def loss_bytes_per_token(arch: Architecture, w: Widths) -> float:
    """The loss path's peak per token (bytes): transformers' ForCausalLMLoss keeps the fp32
    log-softmax for backward, which allocates the nll gradient and log-softmax's input gradient
    while it is alive: 12 bytes x vocab (see planner.step for the whole walk)."""
    return 12.0 * arch.vocab


def activation_terms(
    arch: Architecture, setup: Setup, w: Widths, pr: Params, cluster: Cluster | None = None
) -> list[Term]:
    """The activation side of the `backward` phase: the largest event of planner.step's walk."""
    from .step import blocks_for, dora_moments, effective_dropout, peak, walk

    adapters = arch.lora_targets(setup.lora_targets) if setup.adapters else ()
    # Under FSDP the gathered weights are already 16-bit (MixedPrecisionPolicy): no fp32 weight casts.
    autocast_fp32 = setup.precision in ("bf16-mixed", "fp16-mixed") and w.weight == 4 and not setup.is_fsdp
    events = walk(
        arch,
        tokens=setup.tokens,
        seq_len=setup.seq_len,
        micro_batch=setup.micro_batch,
        trained=blocks_for(arch, setup, w, trainable=True),
        frozen=blocks_for(arch, setup, w, trainable=False),
        n_trained=pr.trained_layers,
        n_frozen_with_grad=pr.grad_layers - pr.trained_layers,
        grad_ckpt=setup.grad_ckpt,
        head_trainable=pr.head_trainable,
        embedding_trainable=pr.head_trainable,
        grads_persist=setup.grads_persist,
        compute=w.act.compute,
        stream=w.act.stream,
        weight=w.weight,
        grad=w.grad,
        autocast_fp32_weights=autocast_fp32,
        frozen_fp32_head=setup.upcasts_unquantized,
        trained_linears=arch.block if pr.trained_layers else (),
        dora=tuple(dora_moments(arch, adapters, w.act.compute, effective_dropout(arch, setup))) if setup.dora else (),
        grad_shard=_shard(setup, cluster, 2) if cluster is not None else 1,
    )
    top = peak(events)
    return [
        Term(p.part, p.name, p.bytes, ("backward",), source=f"{top.name}: {p.source}".rstrip(": ")) for p in top.pieces
    ]


def overhead_terms(terms: list[Term], setup: Setup, cluster: Cluster, pr: Params) -> list[Term]:
    out = [Term("overhead", "library workspaces", LIB_WORKSPACES, source="cuBLAS/cuBLASLt workspaces")]
    for phase in PHASES:
        working = sum(t.bytes for t in terms if phase in t.phases and len(t.phases) == 1 and t.pool == "allocated")
        out.append(
            Term(
                "overhead",
                "allocator fragmentation",
                FRAGMENTATION * working,
                (phase,),
                "reserved",
                source="caching-allocator slack on the per-step working set",
            )
        )
    loss = sum(t.bytes for t in terms if t.part == "logits")
    if not setup.packing:  # packed rows: one batch shape, so each step reuses the same cached blocks
        out.append(
            Term(
                "overhead",
                "cached loss-path segments (long runs)",
                LOSS_CACHE_GROWTH * loss,
                ("backward",),
                "cached",
                source="vocab-sized blocks of earlier batch lengths kept by the allocator",
            )
        )
    states = 3 if pr.trainable_base else 1
    out.append(
        Term(
            "overhead",
            "allocator rounding",
            ROUNDING_PER_TENSOR * pr.tensors * states,
            pool="reserved",
            source="large blocks rounded to 2 MiB",
        )
    )
    out.append(Term("overhead", "CUDA context", CUDA_CONTEXT, pool="driver", source="driver + torch kernels"))
    if cluster.world > 1:
        out.append(Term("overhead", "NCCL buffers", NCCL_BUFFERS, pool="driver", source="communicator buffers"))
    return out


def cpu_ram(arch: Architecture, setup: Setup, cluster: Cluster, w: Widths, pr: Params) -> float:
    """Host memory per node: the processes, model loading, and what offload moves to the CPU."""
    procs = cluster.gpus_per_node
    load_bytes = 2 if setup.precision != "fp32" else 4
    if setup.zero == 3:
        loading = procs * 5 * GIB  # zero.Init partitions while loading: about one checkpoint shard per rank
    elif setup.is_fsdp and setup.tuner != "qlora":
        # cpu_ram_efficient_loading: rank 0 loads the checkpoint, the others build on `meta`.
        loading = pr.total * load_bytes + procs * 5 * GIB
    elif setup.tuner == "qlora":
        loading = procs * 5 * GIB  # quantized shard by shard straight onto the GPU
    else:
        loading = procs * pr.total * load_bytes  # each rank materialises the model before moving it
    offloaded = 0.0
    if setup.offload != "none":
        per_rank = (pr.trainable_base + pr.adapter) / cluster.world
        offloaded += procs * per_rank * (12 + 4)  # fp32 master, m, v and the fp32 gradient buffer (pinned)
        if setup.offload == "optimizer+params":
            if setup.tuner == "qlora":  # FSDP's offload of the 4-bit base (16-bit quant storage)
                stored = pr.quantized * _nf4_bytes(setup) + (pr.total - pr.quantized) * 2
            else:
                stored = pr.total * (w.weight if setup.is_fsdp else 2)
            offloaded += procs * stored / cluster.world
    return procs * PROCESS_CPU_RAM + max(loading, offloaded)
