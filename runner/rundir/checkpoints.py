"""Which checkpoint can a run resume from? Complete ones only, newest first.

An HF Trainer checkpoint `checkpoint-<step>/` is complete when it has the trainer state, the
model (full weights or a peft adapter, possibly sharded: every shard the index lists), and the
optimizer, scheduler and RNG states. With DeepSpeed the optimizer lives in the `latest` tag's
directory (`global_step<N>/`) as one shard per rank — all of them for the same world size; without
DeepSpeed there is one rng_state_<rank>.pth per rank when more than one process trained.

Files alone do not prove a save finished (a kill or a full disk can stop a write half way, and
HF Trainer writes straight into checkpoint-<step>/). So ftui's trainer writes a completion marker,
`ftui-complete.json`, after every rank has saved: every file of the checkpoint with its size. A
checkpoint of a run that writes markers counts only when its marker is there and every file it
lists is on disk at that size.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MARKER = "ftui-complete.json"


def _files(ckpt: Path) -> dict[str, int]:
    return {
        str(p.relative_to(ckpt)): p.stat().st_size
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp")
    }


def write_marker(ckpt: Path) -> None:
    """Record that the save into `ckpt` finished: its files and their sizes (atomically)."""
    data = {"files": _files(ckpt), "time": time.time()}
    tmp = ckpt / f".{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, ckpt / MARKER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _marker_missing(ckpt: Path) -> list[str]:
    try:
        listed = json.loads((ckpt / MARKER).read_text())["files"]
    except FileNotFoundError:
        return [f"{MARKER} (the save did not finish)"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{MARKER} (unreadable)"]
    missing = []
    for name, size in listed.items():
        try:
            actual = (ckpt / name).stat().st_size
        except OSError:
            missing.append(f"{name} (listed by {MARKER})")
            continue
        if actual != size:
            missing.append(f"{name} ({actual} bytes, saved as {size})")
    return missing


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of the newest checkpoint under `directory` that has a marker (0 when none): what the
    next save will need."""
    for report in checkpoints(directory, 1):
        if (report.path / MARKER).is_file():
            try:
                return sum(json.loads((report.path / MARKER).read_text())["files"].values())
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return 0


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


def _fsdp_missing(ckpt: Path, world: int) -> list[str]:
    """FSDP sharded state dicts (HF Trainer with SHARDED_STATE_DICT, torch.distributed.checkpoint):
    pytorch_model_fsdp_0/ and optimizer_0/, each with a .metadata file and one __<rank>_0.distcp
    per rank of the world that saved it."""
    missing = []
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        shards = ckpt / part
        if not shards.is_dir():
            missing.append(f"{part}/")
            continue
        if not (shards / ".metadata").is_file():
            missing.append(f"{part}/.metadata")
        missing += [f"{part}/ shard of rank {r}" for r in range(world) if not (shards / f"__{r}_0.distcp").is_file()]
    saved = {
        int(m.group(1))
        for p in (ckpt / "pytorch_model_fsdp_0").glob("__*_0.distcp")
        if (m := re.match(r"__(\d+)_0", p.name))
    }
    if saved and max(saved) >= world:
        missing.append(f"a resume with {max(saved) + 1} processes (saved by {max(saved) + 1}, resuming with {world})")
    return missing


def _plain_missing(ckpt: Path, world: int) -> list[str]:
    return [name for name in ("optimizer.pt", "scheduler.pt") if not (ckpt / name).is_file()]


def inspect_checkpoint(ckpt: Path, world: int, require_marker: bool = False) -> CheckpointReport:
    """What `ckpt` lacks for a resume with `world` processes (`require_marker`: the run writes
    completion markers, so a checkpoint without one was interrupted)."""
    match = CHECKPOINT.match(ckpt.name)
    step = int(match.group(1)) if match else -1
    missing = _marker_missing(ckpt) if require_marker or (ckpt / MARKER).exists() else []
    missing += [] if (ckpt / "trainer_state.json").is_file() else ["trainer_state.json"]
    if (ckpt / "pytorch_model_fsdp_0").is_dir() or (ckpt / "optimizer_0").is_dir():
        missing += _fsdp_missing(ckpt, world) + [n for n in ("scheduler.pt",) if not (ckpt / n).is_file()]
    elif (ckpt / "latest").is_file():
        missing += _model_missing(ckpt) + _deepspeed_missing(ckpt, world)
    else:
        missing += _model_missing(ckpt) + _plain_missing(ckpt, world)
    missing += _rng_missing(ckpt, world)
    return CheckpointReport(ckpt, step, tuple(missing))


def checkpoints(directory: Path, world: int, require_marker: bool = False) -> list[CheckpointReport]:
    """Every checkpoint under `directory`, newest first, with what each lacks."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    reports = [inspect_checkpoint(p, world, require_marker) for p in found]
    return sorted(reports, key=lambda r: r.step, reverse=True)


def newest_complete(
    directory: Path, world: int, require_marker: bool = False
) -> tuple[CheckpointReport | None, list[CheckpointReport]]:
    """(the newest complete checkpoint, the incomplete ones newer than it)."""
    skipped = []
    for report in checkpoints(directory, world, require_marker):
        if report.complete:
            return report, skipped
        skipped.append(report)
    return None, skipped


def interrupted(directory: Path, all_marked: bool) -> list[Path]:
    """Checkpoint directories an interrupted save left: those without a marker when every launch
    of the run wrote markers (`all_marked`); otherwise only those newer than the newest marked one
    (older unmarked ones may be whole saves of a launch that wrote no markers)."""
    found = checkpoints(directory, 1)
    if all_marked:
        return [r.path for r in found if not (r.path / MARKER).exists()]
    marked = [r.step for r in found if (r.path / MARKER).is_file()]
    if not marked:
        return []
    return [r.path for r in found if r.step > max(marked) and not (r.path / MARKER).exists()]
