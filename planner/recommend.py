"""What should I run? Search every tuner x engine (ZeRO stage or FSDP) x offload x checkpointing x micro-batch,
keep what fits with headroom, rank by expected quality then speed."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import product

from .arch import Architecture
from .memory import MemoryEstimate, estimate, USABLE_MARGIN
from .rules import Refusal, refusals, usable_attn
from .setup import Cluster, Setup
from .throughput import Throughput, estimate_throughput

QUALITY = ("full", "lisa", "lora", "qlora", "freeze")
"""Expected quality, best first. Seeds 000 and 003: full fine-tuning reaches the lowest loss; LISA
comes close at a third of the memory; LoRA trails on harder tasks (maths); QLoRA adds
quantisation error; training only the top layers adapts least."""
HEADROOM = 0.08
"""Recommended setups keep this share of GPU memory free (allocator variance, longer samples)."""
MAX_MICRO_BATCH = 64
LEARNING_RATES = {"full": 2e-5, "lisa": 5e-5, "freeze": 5e-5, "lora": 1e-4, "qlora": 1e-4}
"""Starting learning rates (seed 000: full 5e-5..1e-5, LoRA somewhat higher; seed 003: LoRA 1e-4,
lower it to 3e-5 if the loss spikes; seed 001: FastChat full fine-tuning at 2e-5)."""


@dataclass(frozen=True)
class Candidate:
    setup: Setup
    memory: MemoryEstimate
    throughput: Throughput
    refusal: Refusal | None = None

    fits: bool = False
    """Can run, fits the GPU with the recommender's headroom and the node's host RAM."""


@dataclass(frozen=True)
class Alternative:
    """The best variant found for one tuner x engine (ZeRO stage or FSDP), and why it was not chosen."""

    tuner: str
    zero: int
    candidate: Candidate | None
    fits: bool
    reason: str
    fsdp: str = "none"
    """The FSDP strategy of this row (`none`: a DeepSpeed/DDP row, `zero` says which stage)."""

    @property
    def engine(self) -> str:
        """`0`..`3` (ZeRO stage) or `fsdp`: the column the tables show."""
        return "fsdp" if self.fsdp != "none" else str(self.zero)


FSDP_ROW = "fsdp"
"""The engine key of the FSDP rows in the search (ZeRO rows are keyed by their stage)."""


def _engine(key: int | str, base: Setup, fixed: frozenset[str]) -> tuple[int, str]:
    """(zero, fsdp) of an engine key."""
    if key == FSDP_ROW:
        return 0, base.fsdp if "fsdp" in fixed and base.fsdp != "none" else "full_shard"
    return int(key), "none"


@dataclass(frozen=True)
class Recommendation:
    chosen: Candidate | None
    reasons: tuple[str, ...]
    alternatives: tuple[Alternative, ...]
    grad_accum: int
    global_batch: int
    learning_rate: float | None


ASSUMED_HOST_RAM = 256 * 2**30
"""Host RAM per node assumed when ranking setups for a machine we cannot see (--host-ram to set)."""


def fits_with_headroom(mem: MemoryEstimate, cluster: Cluster) -> bool:
    """Fits on the GPU with headroom, and in the node's host RAM."""
    host = cluster.host_ram_bytes or ASSUMED_HOST_RAM
    return mem.required <= (mem.capacity_bytes - USABLE_MARGIN) * (1 - HEADROOM) and mem.cpu_ram_bytes <= host


def evaluate(arch: Architecture, setup: Setup, cluster: Cluster, memory: MemoryEstimate | None = None) -> Candidate:
    refused = refusals(arch, setup, cluster)
    mem = estimate(arch, setup, cluster) if memory is None else memory
    return Candidate(
        setup,
        mem,
        estimate_throughput(arch, setup, cluster),
        refused[0] if refused else None,
        not refused and fits_with_headroom(mem, cluster),
    )


def largest_fitting(low: int, high: int, fits) -> int:
    """Largest n in [low, high] with fits(n), assuming fits is monotone; low - 1 if none."""
    if not fits(low):
        return low - 1
    n = low
    while n * 2 <= high and fits(n * 2):
        n *= 2
    lo, hi = n, min(high, n * 2)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _largest_from(start: int, low: int, high: int, fits) -> int:
    """largest_fitting(low, high, fits), searched up from `start` when that fits (the same answer for a
    monotone `fits`, with the doublings below `start` saved)."""
    if low < start <= high and fits(start):
        return largest_fitting(start, high, fits)
    return largest_fitting(low, high, fits)


def max_micro_batch(arch: Architecture, setup: Setup, cluster: Cluster, limit: int = 4096) -> int:
    """Largest micro-batch that fits (0 when even one sequence does not)."""
    return _largest_from(setup.micro_batch, 1, limit, lambda b: estimate(arch, setup.but(micro_batch=b), cluster).fits)


def max_seq_len(arch: Architecture, setup: Setup, cluster: Cluster, limit: int = 1 << 20) -> int:
    """Longest sequence that fits at this micro-batch (0 when none does)."""
    n = _largest_from(setup.seq_len, 2, limit, lambda s: estimate(arch, setup.but(seq_len=s), cluster).fits)
    return n if n >= 2 else 0


def _variants(
    base: Setup, cluster: Cluster, tuner: str, key: int | str, fixed: frozenset[str], arch: Architecture
) -> list[Setup]:
    """Setups to try for one tuner x engine; fields named in `fixed` keep the value in `base`."""
    gpu = cluster.gpu
    zero, fsdp = _engine(key, base, fixed)
    if "precision" in fixed:
        precisions = [base.precision]
    elif zero > 0:
        precisions = ["bf16-mixed"] if gpu.bf16 else ["fp16-mixed"]  # DeepSpeed's only 16-bit mode
    elif tuner in ("lora", "qlora"):
        precisions = ["bf16-true"] if gpu.bf16 else ["fp16-mixed"]
    else:
        precisions = ["bf16-mixed", "bf16-true"] if gpu.bf16 else ["fp16-mixed"]
    if "offload" in fixed:
        offloads = [base.offload]
    else:
        offloads = ["none"] + (["optimizer"] if zero >= 1 else []) + (["optimizer+params"] if zero == 3 else [])
        if fsdp != "none":
            offloads = ["none", "optimizer+params"]  # FSDP's CPU offload moves all three together
    ckpts = [base.grad_ckpt] if "grad_ckpt" in fixed else [False, True]
    attn = base.attn if "attn" in fixed or base.attn != "flash" or gpu.flash_attention else "sdpa"
    if "attn" not in fixed:
        attn = usable_attn(arch, attn)
    mb = base.micro_batch if "micro_batch" in fixed else 1
    optim = base.optim if "optim" in fixed else "adamw"
    return [
        base.but(
            tuner=tuner,
            zero=zero,
            fsdp=fsdp,
            precision=precision,
            offload=offload,
            grad_ckpt=ckpt,
            attn=attn,
            micro_batch=mb,
            optim=optim,
        )
        for offload, precision, ckpt in product(offloads, precisions, ckpts)  # least offload first
    ]


def _divisor_at_most(n: int, cap: int) -> int:
    """Largest divisor of n that is <= cap (so micro-batches split the per-GPU batch evenly)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _best_variant(
    arch: Architecture, base: Setup, cluster: Cluster, tuner: str, key: int | str, mb_cap: int, fixed: frozenset[str]
) -> tuple[Candidate | None, Candidate | None]:
    """(best fitting candidate, smallest non-fitting one) for one tuner x engine."""
    per_gpu = mb_cap
    best: Candidate | None = None
    smallest: Candidate | None = None
    seen: dict[Setup, MemoryEstimate] = {}

    def est(setup: Setup) -> MemoryEstimate:
        if setup not in seen:
            seen[setup] = estimate(arch, setup, cluster)
        return seen[setup]

    at_cap: set[tuple[str, str]] = set()
    """(offload, precision) whose no-checkpointing variant already runs the largest micro-batch: the
    checkpointed one would run the same micro-batch with a forward more per step, so it cannot win."""
    for setup in _variants(base, cluster, tuner, key, fixed, arch):
        if best is not None and OFFLOAD_RANK[setup.offload] > OFFLOAD_RANK[best.setup.offload]:
            break  # more offload never wins over a fit with less (the order below); variants come least first
        if setup.grad_ckpt and (setup.offload, setup.precision) in at_cap:
            continue
        first = evaluate(arch, setup, cluster, est(setup))
        if first.refusal is not None:
            smallest = smallest or first
            continue
        if not first.fits:
            if smallest is None or smallest.refusal or first.memory.required < smallest.memory.required:
                smallest = first
            continue
        if "micro_batch" in fixed:
            cand = first
        else:

            def fits_at(b: int, setup: Setup = setup) -> bool:
                return fits_with_headroom(est(setup.but(micro_batch=b)), cluster)

            mb = largest_fitting(1, mb_cap, fits_at)
            chosen_setup = setup.but(micro_batch=_divisor_at_most(per_gpu, mb))
            cand = evaluate(arch, chosen_setup, cluster, est(chosen_setup))
        if not setup.grad_ckpt and (
            "micro_batch" in fixed or cand.setup.micro_batch == _divisor_at_most(per_gpu, mb_cap)
        ):
            at_cap.add((setup.offload, setup.precision))
        if best is None or (OFFLOAD_RANK[cand.setup.offload], not _faster(cand, best)) < (
            OFFLOAD_RANK[best.setup.offload],
            False,
        ):
            best = cand
    return best, smallest


OFFLOAD_RANK = {"none": 0, "optimizer": 1, "optimizer+params": 2}
"""Seed 004: offload trades a lot of time for memory and is not recommended while something else
fits; go at most to ZeRO-2 + optimizer offload before parameter offload."""


def _choose(fitting: list[Candidate]) -> Candidate | None:
    """Least offload first, then the best-quality tuner, then the fastest (simplest when close)."""
    chosen: Candidate | None = None
    for cand in sorted(fitting, key=lambda c: (OFFLOAD_RANK[c.setup.offload], QUALITY.index(c.setup.tuner))):
        if chosen is not None and (cand.setup.tuner, cand.setup.offload) != (chosen.setup.tuner, chosen.setup.offload):
            break
        if chosen is None or _faster(cand, chosen):
            chosen = cand
    return chosen


def _faster(a: Candidate, b: Candidate) -> bool:
    """Speed first; within 3% prefer the simpler setup (no offload, lower ZeRO stage), then fp32
    master weights (more robust numerics)."""
    ta, tb = a.throughput.tokens_per_s, b.throughput.tokens_per_s
    if abs(ta - tb) > 0.03 * max(ta, tb):
        return ta > tb
    simpler = lambda c: (c.setup.offload != "none", c.setup.stage, c.setup.is_fsdp)  # noqa: E731
    if simpler(a) != simpler(b):
        return simpler(a) < simpler(b)
    return a.setup.precision.endswith("mixed") and not b.setup.precision.endswith("mixed")


def recommend(
    arch: Architecture,
    base: Setup,
    cluster: Cluster,
    global_batch: int = 64,
    tuners: tuple[str, ...] = QUALITY,
    fixed: frozenset[str] = frozenset(),
) -> Recommendation:
    """Try every tuner x engine: ZeRO stage 0-3 and FSDP (with offload, checkpointing and
    micro-batch searched inside).

    `base` carries the sequence length and the LoRA/LISA/freeze knobs; fields named in `fixed`
    (precision, optim, zero, fsdp, offload, grad_ckpt, attn, micro_batch) are not searched.
    """
    mb_cap = max(1, min(MAX_MICRO_BATCH, global_batch // cluster.world or 1))
    if "fsdp" in fixed and base.fsdp != "none":
        engines: tuple[int | str, ...] = (FSDP_ROW,)
    elif "zero" in fixed or "fsdp" in fixed:
        engines = (base.zero,)
    else:
        engines = (0, 1, 2, 3, FSDP_ROW)
    rows: list[tuple[str, int | str, Candidate | None, Candidate | None]] = []
    for tuner, key in product(tuners, engines):
        best, smallest = _best_variant(arch, base, cluster, tuner, key, mb_cap, fixed)
        rows.append((tuner, key, best, smallest))
    chosen = _choose([r[2] for r in rows if r[2] is not None])
    alternatives = tuple(_alternative(r, chosen, cluster) for r in rows)
    if chosen is None:
        return Recommendation(None, (_nothing_fits(arch, cluster, rows),), alternatives, 1, global_batch, None)
    accum = max(1, math.ceil(global_batch / (chosen.setup.micro_batch * cluster.world)))
    chosen = replace(chosen, setup=chosen.setup.but(grad_accum=accum))
    reasons = _reasons(chosen, cluster, rows, accum, global_batch)
    return Recommendation(
        chosen,
        reasons,
        alternatives,
        accum,
        accum * chosen.setup.micro_batch * cluster.world,
        LEARNING_RATES[chosen.setup.tuner],
    )


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def _alternative(
    row: tuple[str, int, Candidate | None, Candidate | None], chosen: Candidate | None, cluster: Cluster
) -> Alternative:
    tuner, key, best, smallest = row
    zero, fsdp = (0, "full_shard") if key == FSDP_ROW else (int(key), "none")
    if best is not None:
        fsdp = best.setup.fsdp if key == FSDP_ROW else "none"
    elif smallest is not None and key == FSDP_ROW:
        fsdp = smallest.setup.fsdp

    def alt(candidate: Candidate | None, fits: bool, reason: str) -> Alternative:
        return Alternative(tuner, zero, candidate, fits, reason, fsdp)

    if best is not None:
        if chosen is not None and _row_key(best) == _row_key(chosen) and best.setup.tuner == chosen.setup.tuner:
            return alt(best, True, "chosen")
        if chosen is not None and QUALITY.index(tuner) > QUALITY.index(chosen.setup.tuner):
            why = f"fits, but {tuner} is expected to train worse than {chosen.setup.tuner}"
        elif chosen is not None and best.setup.offload != chosen.setup.offload:
            why = f"fits only with {best.setup.offload} offload to the CPU"
        elif (
            chosen is not None
            and _faster(chosen, best)
            and not _faster(best, chosen)
            and best.throughput.tokens_per_s >= chosen.throughput.tokens_per_s * 0.97
        ):
            why = (
                f"fits and is about as fast ({best.throughput.tokens_per_s:,.0f} tokens/s); the chosen setup is simpler"
            )
        else:
            why = (
                f"fits, but slower: {best.throughput.tokens_per_s:,.0f} vs "
                f"{chosen.throughput.tokens_per_s:,.0f} tokens/s"
                if chosen
                else "fits"
            )
        return alt(best, True, why)
    if smallest is None:
        return alt(None, False, "no variant to try")
    if smallest.refusal is not None:
        return alt(smallest, False, f"refused: {smallest.refusal.reason}")
    return alt(smallest, False, _why_not(smallest, cluster))


def _row_key(c: Candidate) -> int | str:
    return FSDP_ROW if c.setup.is_fsdp else c.setup.zero


def _why_not(cand: Candidate, cluster: Cluster) -> str:
    mem = cand.memory
    gpu_room = (mem.capacity_bytes - USABLE_MARGIN) * (1 - HEADROOM)
    if mem.required > gpu_room:
        return (
            f"does not fit: needs {_gib(mem.required)} per GPU even with {cand.setup.summary()}; "
            f"{_gib(mem.capacity_bytes)} available"
        )
    host = cluster.host_ram_bytes or ASSUMED_HOST_RAM
    known = "" if cluster.host_ram_bytes else " (assumed; set --host-ram)"
    return (
        f"needs {_gib(mem.cpu_ram_bytes)} of host RAM per node with {cand.setup.summary()}; {_gib(host)} there{known}"
    )


def _reasons(chosen: Candidate, cluster: Cluster, rows, accum: int, global_batch: int) -> tuple[str, ...]:
    s, mem = chosen.setup, chosen.memory
    reasons = [f"fits: needs {_gib(mem.required)} of {_gib(mem.capacity_bytes)} per GPU, keeping {HEADROOM:.0%} free"]
    better = QUALITY[: QUALITY.index(s.tuner)]
    offloaded = [t for t in better if any(r[0] == t and r[2] is not None for r in rows)]
    missing = [t for t in better if t not in offloaded]
    if not better:
        reasons.append("full fine-tuning fits, and it reaches the lowest loss (seed 000; seed 003 on LoRA's gap)")
    else:
        where = f"{cluster.world} x {cluster.gpu.name}"
        if missing:
            reasons.append(f"{' and '.join(missing)} {'does' if len(missing) == 1 else 'do'} not fit on {where}")
        if offloaded:
            reasons.append(
                f"{' and '.join(offloaded)} would fit only with CPU offload, which trades much speed and "
                "host RAM for memory (seed 004 advises against it while something else fits)"
            )
        reasons.append(
            f"{s.tuner} is the best-quality tuner that fits"
            + (" without offload" if offloaded else "")
            + " (full > LISA > LoRA > QLoRA, seeds 000/003)"
        )
    if s.offload != "none":
        reasons.append(
            f"nothing fits without CPU offload; it needs about {mem.cpu_ram_bytes / 2**30:.0f} GiB of host RAM per node"
        )
    same = [r for r in rows if r[0] == s.tuner and r[2] is not None and r[1] != _row_key(chosen)]
    if same and cluster.world > 1:
        stage = s.engine_label if s.stage else "plain data parallel (no ZeRO)"
        reasons.append(f"{stage} is the fastest engine that fits: {chosen.throughput.tokens_per_s:,.0f} tokens/s")
    else:
        reasons.append(f"expected speed {chosen.throughput.tokens_per_s:,.0f} tokens/s")
    reasons.append(
        f"gradient accumulation {accum} gives a global batch of "
        f"{accum * s.micro_batch * cluster.world} sequences (target {global_batch})"
    )
    lr = LEARNING_RATES[s.tuner]
    note = "; drop to 3e-5 if the loss spikes (seed 003)" if s.adapters else ""
    reasons.append(f"learning rate {lr:g} to start with{note}")
    return tuple(reasons)


def _nothing_fits(arch: Architecture, cluster: Cluster, rows) -> str:
    smallest = min(
        (r[3] for r in rows if r[3] is not None and r[3].refusal is None), key=lambda c: c.memory.required, default=None
    )
    if smallest is None:
        return "nothing fits, and no setup could be evaluated"
    return (
        f"nothing fits on {cluster.world} x {cluster.gpu.name}: the smallest setup "
        f"({smallest.setup.summary()}) needs {_gib(smallest.memory.required)} per GPU. "
        "Use more or larger GPUs, a shorter --seq-len, or a smaller model"
    )
