"""Warnings about a run from its metrics: loss spikes and NaN, over-fitting, stalls, memory over plan."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

SPIKE = 1.5
"""A loss this many times the recent median is a spike."""
STALL_MIN_S = 120.0
STALL_STEPS = 10
"""No new step for STALL_STEPS typical step times (and at least STALL_MIN_S) is a stall."""
OVER_PLAN = 1.10


@dataclass(frozen=True)
class Flag:
    kind: str
    """nan | spike | overfit | stall | memory"""
    level: str
    """error | warning"""
    text: str


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def loss_flags(records: Sequence[dict[str, Any]]) -> list[Flag]:
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    if not losses:
        return []
    if not _finite(losses[-1]):
        return [Flag("nan", "error", f"loss is {losses[-1]} at step {records[-1].get('step')}: training diverged")]
    recent = [x for x in losses[-21:-1] if _finite(x)]
    if len(recent) >= 5 and losses[-1] > SPIKE * statistics.median(recent):
        return [
            Flag(
                "spike",
                "warning",
                f"loss spiked to {losses[-1]:.3f} (recent median "
                f"{statistics.median(recent):.3f}); lower the learning rate if it repeats",
            )
        ]
    return []


def overfit_flags(records: Sequence[dict[str, Any]]) -> list[Flag]:
    evals = [r["eval_loss"] for r in records if _finite(r.get("eval_loss"))]
    train = [r["loss"] for r in records if _finite(r.get("loss"))]
    if len(evals) < 3 or len(train) < 10:
        return []
    rising = evals[-3] < evals[-2] < evals[-1]
    falling = statistics.mean(train[-5:]) < statistics.mean(train[-10:-5])
    if rising and falling:
        return [
            Flag(
                "overfit",
                "warning",
                f"eval loss rising ({evals[-3]:.3f} → {evals[-1]:.3f}) while train loss "
                "falls: over-fitting; stop at the best checkpoint or add data",
            )
        ]
    return []


def stall_flags(records: Sequence[dict[str, Any]], now: float, running: bool, gpu_util: float | None) -> list[Flag]:
    if not running or not records:
        return []
    times = [r["time"] for r in records if r.get("time")]
    steps = [r["step"] for r in records if r.get("time")]
    if not times:
        return []
    points = list(zip(times, steps, strict=True))
    per_step = [(t2 - t1) / (s2 - s1) for (t1, s1), (t2, s2) in itertools.pairwise(points) if s2 > s1]
    typical = statistics.median(per_step) if per_step else 0.0
    waited = now - times[-1]
    if waited < max(STALL_MIN_S, STALL_STEPS * typical):
        return []
    minutes = waited / 60
    if gpu_util is not None and gpu_util < 10:
        return [
            Flag(
                "stall",
                "error",
                f"no new step for {minutes:.0f} min and the GPUs are idle: probably hung (ftui stop, then resume)",
            )
        ]
    return [
        Flag(
            "stall",
            "warning",
            f"no new step for {minutes:.0f} min while the GPUs are busy: still loading, evaluating or saving?",
        )
    ]


def memory_flags(records: Sequence[dict[str, Any]], planned_gib: float | None) -> list[Flag]:
    if not planned_gib or not records:
        return []
    mem = next((r["mem"] for r in reversed(records) if r.get("mem")), {})
    out = []
    for rank, m in sorted(mem.items(), key=lambda kv: int(kv[0])):
        used = m.get("reserved_gib")
        if used and used > OVER_PLAN * planned_gib:
            out.append(
                Flag(
                    "memory",
                    "warning",
                    f"rank {rank} has {used:.1f} GiB reserved, "
                    f"{used / planned_gib - 1:.0%} above the plan ({planned_gib:.1f} GiB)",
                )
            )
    return out[:1] + ([Flag("memory", "warning", f"… and {len(out) - 1} more ranks")] if len(out) > 1 else [])


def assess(
    records: Sequence[dict[str, Any]],
    *,
    now: float,
    running: bool,
    gpu_util: float | None = None,
    planned_gib: float | None = None,
) -> list[Flag]:
    """Every warning that applies to a run now."""
    return (
        loss_flags(records)
        + overfit_flags(records)
        + stall_flags(records, now, running, gpu_util)
        + memory_flags(records, planned_gib)
    )
