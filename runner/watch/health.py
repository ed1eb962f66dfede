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
STRAGGLER = 1.25
"""A rank whose forward pass takes this many times the other ranks' median is the one they wait for."""
STRAGGLER_MIN_S = 0.005
STRAGGLER_RECORDS = 3


@dataclass(frozen=True)
class Flag:
    kind: str
    """nan | spike | overfit | underfit | validation | stall | memory"""
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


def overfit_flags(records: Sequence[dict[str, Any]], checkpoints: Sequence[int] = ()) -> list[Flag]:
    """Seed 002 §7.2.2: train loss keeps falling while the validation loss, after falling, turns up.
    Names the lowest eval loss so far and the checkpoint nearest before it (`checkpoints`: their steps)."""
    evals = [(r.get("step"), r["eval_loss"]) for r in records if _finite(r.get("eval_loss"))]
    train = [r["loss"] for r in records if _finite(r.get("loss"))]
    if len(evals) < 3 or len(train) < 10:
        return []
    last = [v for _, v in evals[-3:]]
    rising = last[0] < last[1] < last[2]
    falling = statistics.mean(train[-5:]) < statistics.mean(train[-10:-5])
    if rising and falling:
        best_step, best = min(evals, key=lambda e: e[1])
        kept = [c for c in checkpoints if best_step is not None and c <= best_step]
        where = f"checkpoint-{max(kept)}" if kept else "the checkpoint nearest that step"
        return [
            Flag(
                "overfit",
                "warning",
                f"eval loss rising ({last[0]:.3f} → {last[2]:.3f}) while train loss falls: over-fitting; "
                f"the lowest eval loss so far is {best:.3f} at step {best_step}: stop and use {where}, or add data",
            )
        ]
    return []


def curve_flags(records: Sequence[dict[str, Any]], finished: bool) -> list[Flag]:
    """The learning-curve diagnoses of seed 002 §7.2 besides over-fitting, each with the action to take.

    Under-fitting: train loss flat and high (it barely moved from where it started), or still falling
    steadily when training ended. An unrepresentative validation set: eval loss far below the train
    loss at the same time, or too noisy to read (its recent values scatter more than training moves)."""
    train = [(r.get("step") or 0, r["loss"]) for r in records if _finite(r.get("loss"))]
    evals = [r["eval_loss"] for r in records if _finite(r.get("eval_loss"))]
    out: list[Flag] = []
    if len(train) >= 10:
        n = max(2, len(train) // 5)
        first = statistics.mean(v for _, v in train[:n])
        end = statistics.mean(v for _, v in train[-n:])
        before_end = statistics.mean(v for _, v in train[-2 * n : -n])
        if first > 0 and end > 0.95 * first:
            out.append(
                Flag(
                    "underfit",
                    "warning",
                    f"train loss is flat ({first:.3f} → {end:.3f}): the model is not learning the data; raise the "
                    "learning rate, train longer, or give it more capacity (higher LoRA rank, or full fine-tuning)",
                )
            )
        elif finished and end < 0.97 * before_end:
            out.append(
                Flag(
                    "underfit",
                    "warning",
                    f"train loss was still falling when training ended ({before_end:.3f} → {end:.3f} over the last "
                    "fifth): under-fitted; train longer (more epochs or max_steps)",
                )
            )
        if evals:
            latest_train = statistics.mean(v for _, v in train[-n:])
            if evals[-1] < 0.7 * latest_train:
                out.append(
                    Flag(
                        "validation",
                        "warning",
                        f"eval loss ({evals[-1]:.3f}) is far below train loss ({latest_train:.3f}): the validation "
                        "set is easier than the training data or overlaps it; hold out a representative split",
                    )
                )
            elif len(evals) >= 4:
                recent = evals[-4:]
                spread = statistics.pstdev(recent) / max(statistics.mean(recent), 1e-9)
                moved = abs(train[-1][1] - train[-n][1]) / max(train[-n][1], 1e-9)
                if spread > 0.15 and spread > 2 * moved:
                    out.append(
                        Flag(
                            "validation",
                            "warning",
                            f"eval loss is too noisy to read (its last values scatter by {spread:.0%}): "
                            "use a larger evaluation split (dataset.eval_split)",
                        )
                    )
    return out


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


def rank_forward(records: Sequence[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """{rank: (node, forward seconds)}: each rank's median forward time over the last few records that
    carry per-rank times (MetricsCallback's `ranks`)."""
    times: dict[str, list[float]] = {}
    nodes: dict[str, str] = {}
    for record in [r for r in records if r.get("ranks")][-STRAGGLER_RECORDS:]:
        for rank, who in record["ranks"].items():
            if isinstance(who, dict) and _finite(who.get("forward_s")):
                times.setdefault(rank, []).append(who["forward_s"])
                nodes[rank] = str(who.get("node") or "?")
    return {rank: (nodes[rank], statistics.median(ts)) for rank, ts in times.items()}


def skew(records: Sequence[dict[str, Any]]) -> float | None:
    """Slowest over fastest rank's forward time (None with fewer than two ranks timed)."""
    ranks = rank_forward(records)
    if len(ranks) < 2:
        return None
    values = [t for _, t in ranks.values()]
    return max(values) / min(values) if min(values) > 0 else None


def straggler_flags(records: Sequence[dict[str, Any]]) -> list[Flag]:
    ranks = rank_forward(records)
    if len(ranks) < 2:
        return []
    rank, (node, slowest) = max(ranks.items(), key=lambda kv: kv[1][1])
    median = statistics.median(t for r, (_, t) in ranks.items() if r != rank)  # of the others
    if median <= 0 or slowest < STRAGGLER * median or slowest - median < STRAGGLER_MIN_S:
        return []
    nodes = {n for n, _ in ranks.values()}
    where = f"rank {rank} on node {node}" if len(nodes) > 1 else f"rank {rank}"
    return [
        Flag(
            "straggler",
            "warning",
            f"{where} is the straggler: its forward pass takes {slowest / median:.1f}x the other ranks' median "
            f"({slowest * 1000:.0f} vs {median * 1000:.0f} ms) and they wait for it every step; "
            "check that node's GPUs (clocks, temperature, other jobs)",
        )
    ]


def assess(
    records: Sequence[dict[str, Any]],
    *,
    now: float,
    running: bool,
    gpu_util: float | None = None,
    planned_gib: float | None = None,
    finished: bool = False,
    checkpoints: Sequence[int] = (),
) -> list[Flag]:
    """Every warning that applies to a run now."""
    return (
        loss_flags(records)
        + overfit_flags(records, checkpoints)
        + curve_flags(records, finished)
        + stall_flags(records, now, running, gpu_util)
        + memory_flags(records, planned_gib)
        + straggler_flags(records)
    )
