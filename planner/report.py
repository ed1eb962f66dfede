"""Plans as plain data: the JSON objects `ftui plan --json` prints and runs store in plan.json."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .catalog import ModelEntry
from .memory import PARTS, PHASES, MemoryEstimate
from .plan import Estimate
from .recommend import Alternative
from .setup import Setup

if TYPE_CHECKING:
    from .dataset_stats import DatasetStats

GIB = 2**30


def gib(x: float) -> float:
    return round(x / GIB, 3)


def setup_json(s: Setup) -> dict[str, Any]:
    out = asdict(s)
    out["engine"] = s.engine  # ddp, deepspeed or fsdp
    if not s.adapters:
        for key in ("lora_rank", "lora_targets", "lora_dropout", "dora"):
            out.pop(key)
    if s.tuner != "qlora":
        out.pop("quant"), out.pop("double_quant")
    if s.tuner != "lisa":
        out.pop("lisa_layers")
    if s.tuner != "freeze":
        out.pop("trainable_layers")
    return out


def per_gpu_json(mem: MemoryEstimate) -> dict[str, float]:
    out = {f"{part}_gib": gib(mem.part(part)) for part in PARTS}
    out.update(
        peak_allocated_gib=gib(mem.peak_allocated),
        peak_reserved_gib=gib(mem.peak_reserved),
        nvml_used_gib=gib(mem.nvml_used),
    )
    return out


def estimate_json(est: Estimate, stats: DatasetStats | None = None) -> dict[str, Any]:
    mem = est.memory
    out: dict[str, Any] = {
        "fits": est.fits,
        "per_gpu": per_gpu_json(mem),
        "cpu_ram_gib": gib(mem.cpu_ram_bytes),
        "max_micro_batch": est.max_micro_batch,
        "max_seq_len": est.max_seq_len,
        "tokens_per_s": round(est.throughput.tokens_per_s, 1),
        "host_ram_fits": est.host_ram_fits,
        "setup": setup_json(est.setup),
        "capacity_gib": gib(mem.capacity_bytes),
        "required_gib": gib(mem.required),
        "model_states_gib": gib(mem.model_states_bytes),
        "peak_phase": mem.peak_phase,
        "phases": {ph: {"allocated_gib": gib(mem.phase_total(ph))} for ph in PHASES},
        "terms": [
            {
                "part": t.part,
                "name": t.name,
                "gib": gib(t.bytes),
                "phases": list(t.phases),
                "pool": t.pool,
                "source": t.source,
            }
            for t in mem.terms
            if t.bytes
        ],
        "refusals": [{"rule": r.rule, "reason": r.reason} for r in est.refusals],
        "warnings": list(est.warnings),
    }
    if stats is not None:
        out["epoch_s"] = round(stats.total_tokens / est.throughput.tokens_per_s, 1)
    return out


def alternative_json(alt: Alternative) -> dict[str, Any]:
    c = alt.candidate
    return {
        "tuner": alt.tuner,
        "zero": alt.zero,
        "fsdp": alt.fsdp,
        "engine": alt.engine,
        "fits": alt.fits,
        "reason": alt.reason,
        "setup": setup_json(c.setup) if c else None,
        "required_gib": gib(c.memory.required) if c else None,
        "tokens_per_s": round(c.throughput.tokens_per_s, 1) if c else None,
    }


def model_json(m: ModelEntry) -> dict[str, Any]:
    a = m.arch
    return {
        "name": m.name,
        "hf_id": m.hf_id,
        "source": m.source,
        "family": a.family,
        "params": a.params,
        "active_params": a.active_params,
        "layers": a.layers,
        "hidden": a.hidden,
        "heads": a.heads,
        "kv_heads": a.kv_heads,
        "vocab": a.vocab,
    }
