"""What is being planned: the training setup and the cluster it runs on."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .gpus import GpuSpec

TUNERS = ("full", "freeze", "lora", "qlora", "lisa")
PRECISIONS = ("bf16-true", "bf16-mixed", "fp16-mixed", "fp32")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "sgd", "adafactor")
OFFLOADS = ("none", "optimizer", "optimizer+params")
ATTENTIONS = ("flash", "sdpa", "eager")
FSDP_MODES = ("none", "full_shard", "shard_grad_op", "hybrid_shard")
"""PyTorch FSDP sharding strategies, by the names HF Trainer and accelerate use."""
FSDP_STAGE = {"none": 0, "full_shard": 3, "shard_grad_op": 2, "hybrid_shard": 3}
"""What each strategy shards, in ZeRO terms: parameters (3), gradients (2), optimizer states (1+)."""
QUANTS = ("nf4", "int8")


def upcasts_unquantized(tuner: str, zero: int, fsdp: str, precision: str) -> bool:
    """QLoRA holding what bitsandbytes left unquantized (embeddings, norms, the head) in fp32, as
    peft's prepare_model_for_kbit_training does and the runner does after it; not under DeepSpeed
    (it casts the module to 16 bits) or FSDP (one dtype per shard group), nor in fp32 anyway. The
    planner and the runner both ask this."""
    return tuner == "qlora" and zero == 0 and fsdp == "none" and precision != "fp32"


class SetupError(ValueError):
    """A setting out of range; the message names the flag."""


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SetupError(f"{flag} {value!r} is not one of: {', '.join(choices)}")


def _positive(flag: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise SetupError(f"{flag} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Setup:
    """One training configuration (per-GPU micro-batch; defaults are the common SFT choices)."""

    tuner: str = "lora"
    precision: str = "bf16-true"
    """`bf16-true`: model, grads and Adam states in bf16 (HF Trainer on a bf16-loaded model).
    `bf16-mixed`/`fp16-mixed`: 16-bit compute with fp32 master weights and fp32 Adam states.
    `fp32`: everything in fp32."""
    optim: str = "adamw"
    zero: int = 0
    """DeepSpeed ZeRO stage; 0 is plain data parallel (DDP) unless `fsdp` is set."""
    fsdp: str = "none"
    """PyTorch FSDP (FSDP2 `fully_shard`, as accelerate applies it) instead of DeepSpeed: `full_shard`
    shards parameters, gradients and optimizer states over every GPU; `shard_grad_op` keeps the
    parameters whole between forward and backward; `hybrid_shard` shards within a node and
    replicates across nodes. With `offload` `optimizer+params`: FSDP's CPU offload."""
    offload: str = "none"
    micro_batch: int = 1
    seq_len: int = 2048
    grad_ckpt: bool = True
    attn: str = "flash"
    lora_rank: int = 8
    lora_targets: str = "all-linear"
    lora_dropout: float = 0.05
    """p > 0 makes every adapted layer keep a dropout mask and a dropped copy of its input."""
    dora: bool = False
    lisa_layers: int = 2
    """LISA: decoder layers trained at a time (gamma)."""
    trainable_layers: int = 2
    """freeze: the top K decoder layers are trained."""
    quant: str = "nf4"
    """QLoRA weight format."""
    double_quant: bool = True
    grad_accum: int | None = None
    """Micro-batches per optimizer step; None plans for > 1 (gradients stay allocated between them)."""
    packing: bool = False
    """Sequences packed into full seq_len rows: every batch has the same shape (no cached loss-path
    blocks of other batch lengths build up over the run)."""

    def __post_init__(self) -> None:
        _choice("--tuner", self.tuner, TUNERS)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("--optim", self.optim, OPTIMIZERS)
        _choice("--offload", self.offload, OFFLOADS)
        _choice("--attn", self.attn, ATTENTIONS)
        _choice("--quant", self.quant, QUANTS)
        if self.zero not in (0, 1, 2, 3):
            raise SetupError(f"--zero must be 0, 1, 2 or 3, got {self.zero!r}")
        _choice("--fsdp", self.fsdp, FSDP_MODES)
        if self.fsdp != "none" and self.zero:
            raise SetupError(
                f"--fsdp {self.fsdp} and --zero {self.zero} are two sharding engines "
                "(PyTorch FSDP, DeepSpeed); choose one"
            )
        if self.fsdp != "none" and self.offload == "optimizer":
            raise SetupError(
                "FSDP's CPU offload moves parameters, gradients and optimizer states together: "
                "use --offload optimizer+params (or --zero 2 --offload optimizer for DeepSpeed's)"
            )
        _positive("--micro-batch", self.micro_batch)
        _positive("--seq-len", self.seq_len, 2)
        _positive("--lora-rank", self.lora_rank)
        _positive("--lisa-layers", self.lisa_layers)
        _positive("--trainable-layers", self.trainable_layers)
        if self.grad_accum is not None:
            _positive("grad_accum", self.grad_accum)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise SetupError(f"lora dropout must be in [0, 1), got {self.lora_dropout!r}")

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch."""
        return self.micro_batch * self.seq_len

    @property
    def adapters(self) -> bool:
        return self.tuner in ("lora", "qlora")

    @property
    def upcasts_unquantized(self) -> bool:
        return upcasts_unquantized(self.tuner, self.zero, self.fsdp, self.precision)

    @property
    def deepspeed(self) -> bool:
        return self.zero > 0

    @property
    def is_fsdp(self) -> bool:
        return self.fsdp != "none"

    @property
    def stage(self) -> int:
        """What is sharded, in ZeRO terms, whichever engine shards it (0: nothing, plain DDP)."""
        return self.zero or FSDP_STAGE[self.fsdp]

    @property
    def engine(self) -> str:
        """`ddp`, `deepspeed` or `fsdp`."""
        return "deepspeed" if self.zero else "fsdp" if self.is_fsdp else "ddp"

    @property
    def grads_persist(self) -> bool:
        """Gradients outlive the backward pass (accumulation over several micro-batches)."""
        return self.grad_accum is None or self.grad_accum > 1

    def summary(self) -> str:
        """One line a person can read: `lora r=8 all-linear · ZeRO-2 · bf16-mixed · ...`."""
        bits = [self.tuner + (" (DoRA)" if self.dora and self.adapters else "")]
        if self.adapters:
            bits.append(f"r={self.lora_rank} {self.lora_targets}" + (f" {self.quant}" if self.tuner == "qlora" else ""))
        if self.tuner == "lisa":
            bits.append(f"{self.lisa_layers} layers at a time")
        if self.tuner == "freeze":
            bits.append(f"top {self.trainable_layers} layers")
        bits += [self.engine_label, self.precision, self.optim]
        if self.offload != "none":
            bits.append(f"offload {self.offload}")
        bits += [
            "grad-ckpt" if self.grad_ckpt else "no grad-ckpt",
            f"{self.attn} attention",
            f"micro-batch {self.micro_batch} x {self.seq_len} tokens",
        ]
        if self.grad_accum:
            bits.append(f"grad-accum {self.grad_accum}")
        return " · ".join(bits)

    @property
    def engine_label(self) -> str:
        """`ZeRO-2`, `FSDP full_shard` or `no ZeRO`."""
        if self.zero:
            return f"ZeRO-{self.zero}"
        return f"FSDP {self.fsdp}" if self.is_fsdp else "no ZeRO"

    def but(self, **changes: object) -> "Setup":
        """A copy with some fields changed (validated again).

        dataclasses.replace, without its per-call field walk: the planner's search makes hundreds of
        these per `ftui plan`. Unknown names fail as they would there."""
        unknown = changes.keys() - _SETUP_FIELDS
        if unknown:
            raise TypeError(f"Setup has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(Setup)
        state = new.__dict__
        state.update(self.__dict__)
        state.update(changes)
        new.__post_init__()
        return new


_SETUP_FIELDS = frozenset(f.name for f in fields(Setup))


@dataclass(frozen=True)
class Cluster:
    """Where the job runs: identical GPUs, `gpus_per_node` on each of `nodes` machines."""

    gpu: GpuSpec
    gpus_per_node: int = 1
    nodes: int = 1
    host_ram_bytes: int | None = None
    """Host memory per node, when known (offload and model loading need it)."""

    def __post_init__(self) -> None:
        _positive("--gpus", self.gpus_per_node)
        _positive("--nodes", self.nodes)

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes
