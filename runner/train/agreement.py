"""The planner's analytic memory model against the trace of the same setup on the same cut model.

Used by tests/test_trace_agreement.py and bench/trace_agreement.py. Both sides see the whole model
(the trace extrapolated from two depths, see trace_setup), with the attention kernel the planner
would use; a setup the planner refuses is not compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner import Cluster, Setup, architecture_from_config, estimate, gpu_spec, refusals
from planner.memory import PARTS
from planner.rules import usable_attn

from .trace import NotTraceable, trace_setup, truncated_config

MODELS = Path(__file__).resolve().parents[2] / "planner" / "models"
TRACEABLE_FAMILIES = {
    "llama": "llama-3.1-8b",
    "mistral": "mistral-7b",
    "qwen2": "qwen2.5-7b",
    "qwen3": "qwen3-8b",
    "gemma": "gemma-7b",
    "gemma2": "gemma-2-9b",
    "phi": "phi-1.5",
    "phi3": "phi-3-mini",
    "falcon": "falcon-7b",
    "gpt_neox": "stablelm-base-alpha-3b",
    "mixtral": "mixtral-8x7b",
    "qwen3_moe": "qwen3-30b-a3b",
}
"""One catalog model of every family transformers builds without remote code."""
GIB = 2**30
BASE = dict(precision="bf16-true", attn="sdpa", seq_len=2048, micro_batch=1, grad_ckpt=True)


def catalog_config(name: str) -> dict[str, Any]:
    return json.loads((MODELS / f"{name}.json").read_text())["config"]


CLUSTER = Cluster(gpu_spec("h100"))


def analytic(config: dict[str, Any], setup: Setup) -> dict[str, dict[str, float]]:
    """Allocated bytes per phase and part, as the trace can see them (no CUDA-only terms)."""
    mem = estimate(architecture_from_config(config), setup, CLUSTER)
    return {phase: mem.traceable_parts(phase) for phase in ("backward", "step")}


def compare(model: str, knobs: dict[str, Any], *, layers: int | None = None) -> dict[str, Any]:
    """One case: planner vs trace, peak allocated per phase (GiB) and the part that differs most.

    Both sides see the whole model: the trace at two depths extrapolated to the layer count
    (exact, see trace_setup), the planner on the full config. `layers` cuts the model first."""
    config = catalog_config(model)
    if layers:
        config = truncated_config(config, layers)
    arch = architecture_from_config(config)
    knobs = {**BASE, **knobs}
    knobs["attn"] = usable_attn(arch, knobs["attn"])  # e.g. eager for Gemma-2, which refuses sdpa
    setup = Setup(**knobs)
    row: dict[str, Any] = {"model": model, "knobs": knobs}
    refused = refusals(arch, setup, CLUSTER)
    if refused:
        row["reason"] = f"refused by the planner ({refused[0].rule}): {refused[0].reason}"
        return row
    try:
        traced = trace_setup(config, setup)
    except NotTraceable as err:
        row["reason"] = str(err)
        return row
    plan = analytic(config, setup)
    loss_phase = "forward" if traced.phases["forward"] >= traced.phases["backward"] else "backward"
    pairs = {"backward": (plan["backward"], loss_phase), "step": (plan["step"], "step")}
    diffs: dict[str, float] = {}
    for phase, (p, traced_phase) in pairs.items():
        planned = sum(p.values())
        t_bytes = traced.phases[traced_phase]
        parts_t = dict(traced.parts[traced_phase])
        parts_t["overhead"] = parts_t.pop("temporaries", 0)
        row[f"plan_{phase}"] = round(planned / GIB, 3)
        row[f"trace_{phase}"] = round(t_bytes / GIB, 3)
        row[f"{phase}_err"] = round(100 * (planned / t_bytes - 1), 2) if t_bytes else 0.0
        row[f"{phase}_parts"] = {
            k: [round(p.get(k, 0) / GIB, 3), round(parts_t.get(k, 0) / GIB, 3)]
            for k in PARTS
            if p.get(k) or parts_t.get(k)
        }
        for k in PARTS:
            diffs[f"{phase}:{k}"] = p.get(k, 0) - parts_t.get(k, 0)
    worst = max(diffs, key=lambda k: abs(diffs[k]))
    row["worst_part"] = f"{worst} {diffs[worst] / GIB:+.3f} GiB"
    row["layers_traced"] = list(traced.layers_traced)
    row["seconds"] = round(traced.seconds, 2)
    return row
