"""What a run source answers, whoever reads it: `RunInfo`, the `GpuSource` / `RunSource` / `RunTail`
interfaces the app is written against, a tail of a growing log file and the planned peak of a run.

Imported by the live sources (`sources`), other tools' runs (`foreign`), the replay (`replay`) and
the app; it imports only the run-directory model and the GPU snapshot type.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from runner.machine.nvml import GpuSnapshot
from runner.rundir.runs import ACTIVE

Clock = Callable[[], float]


@dataclass(frozen=True)
class RunInfo:
    """One run as lists and headers show it."""

    id: str
    path: Path
    state: str
    tool: str = "ftui"
    """ftui, or the tool whose files a foreign run was read from (hf, llamafactory, swift)."""
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    started: float | None = None
    last_error: str = ""
    planned_peak_gib: float | None = None
    pids: tuple[int, ...] = ()
    """Processes of the latest launch (the supervisor's group) to match GPU processes to ranks."""
    job: str = ""
    """A Slurm run's job as Slurm says it: `job 812 pending (Resources)`; empty for a local run."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def clean_mem(mem: Any) -> dict[str, dict[str, float]]:
    """A record's `mem` {rank: {key: GiB}} with every number at least 0.0: memory is never negative, and a -0.0
    (or a tiny negative delta some tools report) would print as "-0.0"."""
    if not isinstance(mem, dict):
        return {}
    return {
        str(rank): {k: (v if v > 0 else 0.0) if _number(v) else v for k, v in parts.items()}
        for rank, parts in mem.items()
        if isinstance(parts, dict)
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class GpuSource(Protocol):
    def snapshot(self) -> list[GpuSnapshot]:
        """Every GPU now; raises NoGpu when there is no usable NVIDIA GPU."""


class RunSource(Protocol):
    def runs(self) -> list[RunInfo]: ...

    def info(self, run_id: str) -> RunInfo: ...

    def tail(self, run_id: str) -> "RunTail": ...

    def stop(self, run_id: str) -> str: ...

    def resume(self, run_id: str) -> None: ...

    def owner(self, pid: int) -> tuple[str, int | None] | None:
        """(run id, rank) of a process that belongs to one of our runs."""

    def adopt(self, run_dir: Path) -> str:
        """Make a run started outside the usual place visible; returns its id."""


class RunTail(Protocol):
    def new_records(self) -> list[dict[str, Any]]:
        """Metrics records appended since the last call."""

    def new_log_lines(self) -> list[str]:
        """Log lines appended since the last call."""


class FileLogTail:
    """New lines of a growing text file. The first read starts near the end (whole lines only); a
    partial last line, or a character split between writes, waits for the rest."""

    def __init__(self, path: Path, last: int = 200) -> None:
        self.path = path
        self.offset: int | None = None
        self.pending = b""
        self.last = last

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                if self.offset is None:
                    size = fh.seek(0, os.SEEK_END)
                    self.offset = max(0, size - 64 * 1024)
                    if self.offset:  # skip the line the window starts inside
                        fh.seek(self.offset - 1)
                        self.offset += len(fh.readline()) - 1
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines[-self.last :]]


_PLANNED: dict[Path, tuple[int, float | None]] = {}


def planned_peak(plan: Path) -> float | None:
    """peak_reserved_gib from a run's plan.json, parsed again only when the file changes (the
    monitor asks for it on every poll)."""
    try:
        mtime = plan.stat().st_mtime_ns
    except OSError:
        return None
    cached = _PLANNED.get(plan)
    if cached is None or cached[0] != mtime:
        try:
            peak = json.loads(plan.read_text()).get("per_gpu", {}).get("peak_reserved_gib")
        except (OSError, ValueError, AttributeError):
            peak = None
        cached = _PLANNED[plan] = (mtime, peak)
    return cached[1]
