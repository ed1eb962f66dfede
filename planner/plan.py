"""One call for callers: the estimate of a given setup, or a recommendation, plus fit limits."""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Architecture
from .catalog import ModelEntry
from .memory import MemoryEstimate, estimate
from .recommend import Recommendation, max_micro_batch, max_seq_len, recommend
from .rules import Refusal, refusals, warnings
from .setup import Cluster, Setup
from .throughput import Throughput, estimate_throughput


@dataclass(frozen=True)
class Estimate:
    """A fully specified setup, evaluated."""

    setup: Setup
    memory: MemoryEstimate
    throughput: Throughput
    max_micro_batch: int
    max_seq_len: int
    refusals: tuple[Refusal, ...]
    warnings: tuple[str, ...]

    host_ram_bytes: int | None = None

    @property
    def host_ram_fits(self) -> bool:
        """Host RAM suffices (True when the node's RAM is unknown)."""
        return self.host_ram_bytes is None or self.memory.cpu_ram_bytes <= self.host_ram_bytes

    @property
    def fits(self) -> bool:
        return not self.refusals and self.memory.fits and self.host_ram_fits


@dataclass(frozen=True)
class Plan:
    model: ModelEntry
    cluster: Cluster
    estimate: Estimate | None
    recommendation: Recommendation | None


def evaluate_setup(arch: Architecture, setup: Setup, cluster: Cluster) -> Estimate:
    """Memory, speed and fit limits of one setup."""
    mem = estimate(arch, setup, cluster)
    notes = list(warnings(arch, setup, cluster))
    host = cluster.host_ram_bytes
    if host is not None and mem.cpu_ram_bytes > host:
        notes.append(
            f"needs about {mem.cpu_ram_bytes / 2**30:.0f} GiB of host RAM per node, "
            f"more than the {host / 2**30:.0f} GiB there"
        )
    return Estimate(
        setup,
        mem,
        estimate_throughput(arch, setup, cluster),
        max_micro_batch(arch, setup, cluster),
        max_seq_len(arch, setup, cluster),
        tuple(refusals(arch, setup, cluster)),
        tuple(notes),
        host,
    )


def make_plan(
    model: ModelEntry,
    setup: Setup,
    cluster: Cluster,
    *,
    recommend_tuner: bool,
    global_batch: int = 64,
    fixed: frozenset[str] = frozenset(),
) -> Plan:
    """With `recommend_tuner`, search for the best setup (seq_len, the LoRA/LISA knobs and the
    fields named in `fixed` are kept from `setup`); otherwise evaluate `setup` as given."""
    arch = model.arch
    if recommend_tuner:
        rec = recommend(arch, setup, cluster, global_batch, fixed=fixed)
        chosen = evaluate_setup(arch, rec.chosen.setup, cluster) if rec.chosen else None
        return Plan(model, cluster, chosen, rec)
    return Plan(model, cluster, evaluate_setup(arch, setup, cluster), None)
