"""Turn a recipe into concrete settings: fill `auto` from the machine and the planner, and get
the planner's verdict for the target GPUs."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner import Cluster, Setup, SetupError, UnknownModel, evaluate_setup, generic_gpu, resolve_model
from planner.catalog import ModelEntry
from planner.gpus import match_nvml_name
from planner.memory import estimate
from planner.rules import usable_attn
from planner.plan import Estimate
from planner.recommend import LEARNING_RATES, fits_with_headroom, largest_fitting

from .schema import AUTO, Recipe, RecipeError, validate


@dataclass(frozen=True)
class Machine:
    """What the launching machine offers (injected in tests)."""

    gpu_names: tuple[str, ...] = ()
    gpu_memory_mib: int = 0
    host_ram_bytes: int | None = None
    flash_attn_installed: bool = False

    @property
    def gpus(self) -> int:
        return len(self.gpu_names)


def detect_machine() -> Machine:
    """The local GPUs (NVML) and host RAM; no GPUs when NVML is unusable."""
    from runner.machine.host import host_ram_bytes
    from runner.machine.nvml import NoGpu, local_gpus

    try:
        gpus = local_gpus()
    except NoGpu:
        gpus = []
    import importlib.util

    flash = importlib.util.find_spec("flash_attn") is not None
    memory = gpus[0].memory_total_mib if gpus else 0
    return Machine(tuple(g.name for g in gpus), memory, host_ram_bytes(), flash)


@dataclass(frozen=True)
class RunSettings:
    """Every value the launcher and the training entry point need, with no `auto` left."""

    recipe: Recipe
    model: ModelEntry
    device: str
    """cuda or cpu."""
    launcher: str
    """python | torchrun | accelerate | deepspeed."""
    gpus_per_node: int
    """Processes per node (GPUs, or CPU processes on a machine without GPUs)."""
    nodes: int
    node_rank: int
    master_addr: str
    master_port: int
    zero: int
    offload: str
    precision: str
    attn: str
    micro_batch: int
    grad_accum: int
    lr: float
    grad_ckpt: bool
    max_seq_len: int
    plan: Estimate | None
    """The planner's estimate on the target GPUs (None on CPU-only runs)."""
    notes: tuple[str, ...] = ()
    fsdp: str = "none"
    """FSDP strategy (none: DeepSpeed ZeRO per `zero`, or plain DDP)."""
    rendezvous_id: str | None = None
    """torchrun across nodes: None for the static rendezvous (--node_rank, --master_addr), or the id
    of a c10d rendezvous hosted at master_addr:master_port (a Slurm job's id)."""

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def deepspeed(self) -> bool:
        return self.zero > 0

    def planner_setup(self) -> Setup:
        """The planner's view of this run, as resolved (what `plan` was evaluated for on GPUs)."""
        return planner_setup(
            self.recipe,
            zero=self.zero,
            offload=self.offload,
            precision=self.precision,
            attn=self.attn,
            micro_batch=self.micro_batch,
            grad_ckpt=self.grad_ckpt,
            seq_len=self.max_seq_len,
            grad_accum=self.grad_accum,
        )

    def resolved_recipe(self) -> Recipe:
        """The recipe with every auto replaced by what this run uses."""
        r = self.recipe
        train = dataclasses.replace(
            r.train,
            micro_batch=self.micro_batch,
            grad_accum=self.grad_accum,
            lr=self.lr,
            precision=self.precision,
            attn=self.attn,
            grad_ckpt=self.grad_ckpt,
        )
        dist = dataclasses.replace(
            r.distributed,
            gpus=self.gpus_per_node,
            nodes=self.nodes,
            node_rank=self.node_rank,
            zero=self.zero,
            fsdp=self.fsdp,
            offload=self.offload,
            launcher=self.launcher,
            device=self.device,
            master_addr=self.master_addr,
            master_port=self.master_port,
        )
        data = dataclasses.replace(r.dataset, max_seq_len=self.max_seq_len)
        return r.but(train=train, distributed=dist, dataset=data)


def planner_setup(
    recipe: Recipe,
    *,
    zero: int,
    offload: str,
    precision: str,
    attn: str,
    micro_batch: int,
    grad_ckpt: bool,
    seq_len: int,
    grad_accum: int | None = None,
) -> Setup:
    """The planner's view of a recipe."""
    return Setup(
        tuner=recipe.tuner,
        precision=precision,
        optim=recipe.train.optim,
        zero=zero,
        fsdp=recipe.distributed.fsdp,
        offload=offload,
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_ckpt=grad_ckpt,
        attn=attn,
        lora_rank=recipe.lora.rank,
        lora_targets=recipe.lora.targets,
        lora_dropout=recipe.lora.dropout,
        dora=recipe.lora.dora,
        lisa_layers=recipe.lisa.layers,
        trainable_layers=recipe.freeze.trainable_layers,
        quant=recipe.qlora.quant,
        double_quant=recipe.qlora.double_quant,
        grad_accum=grad_accum,
        packing=recipe.dataset.packing,
    )


def _model(recipe: Recipe) -> ModelEntry:
    path = recipe.path_of(recipe.model.path)
    name = str(path) if path.exists() else recipe.model.path
    try:
        return resolve_model(name)
    except UnknownModel as err:
        raise RecipeError(f"{recipe.source or 'recipe'} model.path", str(err)) from None


def resolve(recipe: Recipe, machine: Machine, *, gpu: str | None = None) -> RunSettings:
    """Concrete settings for `recipe` on `machine` (or on `gpu` type, planning for another machine)."""
    recipe = validate(recipe)
    src = recipe.source or "recipe"
    model = _model(recipe)
    arch = model.arch
    if recipe.tuner in ("lora", "qlora"):
        try:
            arch.lora_targets(recipe.lora.targets)
        except ValueError as err:
            raise RecipeError(f"{src} lora.targets", str(err)) from None
    d, t = recipe.distributed, recipe.train
    device = d.device if d.device != AUTO else ("cuda" if machine.gpus else "cpu")
    if device == "cuda" and not machine.gpus and gpu is None:
        raise RecipeError(f"{src} distributed.device", "cuda was asked for but no NVIDIA GPU is visible here")
    if device == "cpu" and d.fsdp != "none" and d.offload != "none":
        raise RecipeError(
            f"{src} distributed.offload",
            "FSDP's CPU offload moves shards between the GPU and host memory, and torch's offload policy needs "
            "a GPU (on this machine: 'Cannot access accelerator device'); on the CPU use distributed.offload none",
        )
    gpus = d.gpus if d.gpus != AUTO else (machine.gpus or 1)
    if device == "cuda" and machine.gpus and gpus > machine.gpus:
        raise RecipeError(f"{src} distributed.gpus", f"{gpus} GPUs asked for, {machine.gpus} visible")
    spec = None
    if device == "cuda":
        from planner import gpu_spec

        spec = gpu_spec(gpu) if gpu else match_nvml_name(machine.gpu_names[0], machine.gpu_memory_mib)
    cluster = Cluster(spec or generic_gpu(1024), gpus, d.nodes, machine.host_ram_bytes)
    seq_len = recipe.dataset.max_seq_len if recipe.dataset.max_seq_len != AUTO else min(2048, arch.max_position)
    if device == "cpu":
        precision = "fp32" if t.precision == AUTO else t.precision
        attn = usable_attn(arch, "sdpa") if t.attn == AUTO else t.attn
    else:
        precision = t.precision if t.precision != AUTO else ("bf16-true" if spec.bf16 else "fp16-mixed")
        attn = (
            t.attn
            if t.attn != AUTO
            else ("flash" if spec.flash_attention and machine.flash_attn_installed else usable_attn(arch, "sdpa"))
        )
    grad_ckpt = t.grad_ckpt if t.grad_ckpt != AUTO else device == "cuda"
    if d.fsdp != "none":
        zero = 0
    elif d.zero != AUTO:
        zero = d.zero
    elif device == "cuda":
        zero = _lowest_fitting_zero(recipe, arch, cluster, precision, attn, grad_ckpt, seq_len)
    else:
        zero = 2 if d.offload != "none" else 0
    if zero > 0 and precision == "bf16-true":
        precision = "bf16-mixed"  # DeepSpeed's bf16 keeps fp32 master weights
    base = planner_setup(
        recipe,
        zero=zero,
        offload=d.offload,
        precision=precision,
        attn=attn,
        micro_batch=1,
        grad_ckpt=grad_ckpt,
        seq_len=seq_len,
    )
    if t.micro_batch != AUTO:
        micro_batch = t.micro_batch
    elif device == "cuda":
        micro_batch = max(
            1,
            largest_fitting(
                1, 64, lambda b: fits_with_headroom(estimate(arch, base.but(micro_batch=b), cluster), cluster)
            ),
        )
    else:
        micro_batch = 1
    world = gpus * d.nodes
    grad_accum = t.grad_accum if t.grad_accum != AUTO else max(1, math.ceil(t.global_batch / (micro_batch * world)))
    lr = t.lr if t.lr != AUTO else LEARNING_RATES[recipe.tuner]
    launcher = d.launcher if d.launcher != AUTO else _launcher(zero, world, d.fsdp)
    try:
        setup = base.but(micro_batch=micro_batch, grad_accum=grad_accum)
    except SetupError as err:
        raise RecipeError(src, str(err)) from None
    plan = evaluate_setup(arch, setup, cluster) if device == "cuda" else None
    notes = () if plan else ("no GPU here: training runs on the CPU; the memory plan applies to GPUs only",)
    return RunSettings(
        recipe,
        model,
        device,
        launcher,
        gpus,
        d.nodes,
        d.node_rank,
        d.master_addr,
        d.master_port,
        zero,
        d.offload,
        precision,
        attn,
        micro_batch,
        grad_accum,
        float(lr),
        grad_ckpt,
        seq_len,
        plan,
        notes,
        d.fsdp,
    )


def _lowest_fitting_zero(
    recipe: Recipe, arch, cluster: Cluster, precision: str, attn: str, grad_ckpt: bool, seq_len: int
) -> int:
    """The lowest ZeRO stage at which one sequence per GPU fits (fastest first: seed 004's order)."""
    from planner.rules import refusals

    stages = (
        [0] if recipe.tuner == "lisa" or cluster.world == 1 and recipe.distributed.offload == "none" else [0, 1, 2, 3]
    )
    for zero in stages:
        mixed = "bf16-mixed" if precision == "bf16-true" and zero else precision
        setup = planner_setup(
            recipe,
            zero=zero,
            offload=recipe.distributed.offload if zero else "none",
            precision=mixed,
            attn=attn,
            micro_batch=1,
            grad_ckpt=grad_ckpt,
            seq_len=seq_len,
        )
        if not refusals(arch, setup, cluster) and fits_with_headroom(estimate(arch, setup, cluster), cluster):
            return zero
    return 0


def _launcher(zero: int, world: int, fsdp: str = "none") -> str:
    if zero > 0:
        return "deepspeed"
    return "torchrun" if world > 1 or fsdp != "none" else "python"


def verdict(settings: RunSettings) -> tuple[bool, list[str]]:
    """Can the run go ahead? (ok, reasons it cannot)."""
    plan = settings.plan
    if plan is None:
        return True, []
    problems = [f"{r.reason}" for r in plan.refusals]
    if not plan.memory.fits:
        mem = plan.memory
        problems.append(
            f"needs {mem.required / 2**30:.1f} GiB per GPU, {mem.capacity_bytes / 2**30:.1f} GiB there "
            f"(max micro-batch {plan.max_micro_batch}, max seq len {plan.max_seq_len})"
        )
    if not plan.host_ram_fits:
        problems.append(f"needs {plan.memory.cpu_ram_bytes / 2**30:.0f} GiB of host RAM per node")
    return not problems, problems


def cpu_threads_env(processes: int) -> dict[str, str]:
    """OMP/MKL threads per process so several CPU processes do not oversubscribe the cores."""
    cores = os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(max(1, cores // max(1, processes)))}


def model_dir(settings: RunSettings) -> Path:
    recipe = settings.recipe
    return recipe.path_of(recipe.model.path)


def json_ready(value: Any) -> Any:
    """Dataclasses -> dicts for run-directory JSON files."""
    if dataclasses.is_dataclass(value):
        return {k: json_ready(v) for k, v in dataclasses.asdict(value).items()}
    return value
