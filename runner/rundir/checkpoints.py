"""Which checkpoint can a run resume from? Complete ones only, newest first.

An HF Trainer checkpoint `checkpoint-<step>/` is complete when it has the trainer state, the
model (full weights or a peft adapter, possibly sharded: every shard the index lists), and the
optimizer, scheduler and RNG states. With DeepSpeed the optimizer lives in the `latest` tag's
directory (`global_step<N>/`) as one shard per rank — all of them for the same world size; without
DeepSpeed there is one rng_state_<rank>.pth per rank when more than one process trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class CheckpointReport:
    path: Path
    step: int
    missing: tuple[str, ...] = field(default_factory=tuple)

    @property
    def complete(self) -> bool:
        return not self.missing


def _model_missing(ckpt: Path) -> list[str]:
    if any((ckpt / name).is_file() for name in WEIGHTS):
        return []
    for index in INDEXES:
        if (ckpt / index).is_file():
            try:
                files = set(json.loads((ckpt / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return [f"{index} (unreadable)"]
            return sorted(f for f in files if not (ckpt / f).is_file())
    return ["model weights (model.safetensors, an indexed shard set, or adapter_model.safetensors)"]


def _deepspeed_missing(ckpt: Path, world: int) -> list[str]:
    tag = (ckpt / "latest").read_text().strip()
    shards = ckpt / tag
    if not shards.is_dir():
        return [f"{tag}/ (named by `latest`)"]
    missing = []
    optim = sorted(shards.glob("*optim_states.pt"))
    ranks = {int(m.group(1)) for p in optim if (m := re.search(r"zero_pp_rank_(\d+)_", p.name))}
    missing += [f"{tag}/ optimizer shard of rank {r}" for r in range(world) if r not in ranks]
    if not list(shards.glob("*model_states.pt")):
        missing.append(f"{tag}/ model states")
    return missing


def _rng_missing(ckpt: Path, world: int) -> list[str]:
    if world > 1:
        return [f"rng_state_{r}.pth" for r in range(world) if not (ckpt / f"rng_state_{r}.pth").is_file()]
    if (ckpt / "rng_state.pth").is_file() or (ckpt / "rng_state_0.pth").is_file():
        return []
    return ["rng_state.pth"]


def _plain_missing(ckpt: Path, world: int) -> list[str]:
    return [name for name in ("optimizer.pt", "scheduler.pt") if not (ckpt / name).is_file()]


def inspect_checkpoint(ckpt: Path, world: int) -> CheckpointReport:
    """What `ckpt` lacks for a resume with `world` processes."""
    match = CHECKPOINT.match(ckpt.name)
    step = int(match.group(1)) if match else -1
    missing = [] if (ckpt / "trainer_state.json").is_file() else ["trainer_state.json"]
    missing += _model_missing(ckpt)
    if (ckpt / "latest").is_file():
        missing += _deepspeed_missing(ckpt, world)
    else:
        missing += _plain_missing(ckpt, world)
    missing += _rng_missing(ckpt, world)
    return CheckpointReport(ckpt, step, tuple(missing))


def checkpoints(directory: Path, world: int) -> list[CheckpointReport]:
    """Every checkpoint under `directory`, newest first, with what each lacks."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    reports = [inspect_checkpoint(p, world) for p in found]
    return sorted(reports, key=lambda r: r.step, reverse=True)


def newest_complete(directory: Path, world: int) -> tuple[CheckpointReport | None, list[CheckpointReport]]:
    """(the newest complete checkpoint, the incomplete ones newer than it)."""
    skipped = []
    for report in checkpoints(directory, world):
        if report.complete:
            return report, skipped
        skipped.append(report)
    return None, skipped
