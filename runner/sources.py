"""Where the app's data comes from, behind small interfaces so it can be replayed.

The TUI never reads NVML or run directories itself: it gets a `GpuSource`, a `RunSource` and a
clock. The real ones read NVML and `./runs`; the replay ones serve a recorded run at the pace of
an injected clock, which is how tests and `ftui --demo` run without a GPU.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from .metrics import MetricsTail, last_record
from .nvml import GpuSnapshot, NoGpu, NvmlReader
from .runs import ACTIVE, RunDir, list_runs, request_stop

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

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


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


class RunTail(Protocol):
    def new_records(self) -> list[dict[str, Any]]:
        """Metrics records appended since the last call."""

    def new_log_lines(self) -> list[str]:
        """Log lines appended since the last call."""


# --- real sources --------------------------------------------------------------------------


class NvmlGpuSource:
    """NVML through runner.nvml (the real one, or a fake scenario via $FTUI_FAKE_NVML)."""

    def __init__(self, nvml: Any = None) -> None:
        self.reader = NvmlReader(nvml)

    def snapshot(self) -> list[GpuSnapshot]:
        gpus = self.reader.snapshot()
        if not gpus:
            raise NoGpu("no NVIDIA GPU found: NVML sees no devices")
        return gpus


class FileLogTail:
    """New lines of a growing text file (a partial last line waits for its newline)."""

    def __init__(self, path: Path, last: int = 200) -> None:
        self.path = path
        self.offset = 0
        self.pending = ""
        self.first = True
        self.last = last

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                if self.first:  # start with the file's end, not all of it
                    fh.seek(0, 2)
                    size = fh.tell()
                    fh.seek(max(0, size - 64 * 1024))
                    self.offset = fh.tell()
                    self.first = False
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        text = self.pending + data.decode("utf-8", errors="replace")
        *lines, self.pending = text.split("\n")
        return lines[-self.last :]


class DirRunTail:
    def __init__(self, run: RunDir) -> None:
        self.metrics = MetricsTail(run.metrics)
        self.log = FileLogTail(run.log)

    def new_records(self) -> list[dict[str, Any]]:
        return self.metrics.read()

    def new_log_lines(self) -> list[str]:
        return self.log.read()


def run_info(run: RunDir) -> RunInfo:
    status = run.status()
    last = last_record(run.metrics) or {}
    launches = run.launches()
    planned = None
    try:
        planned = json.loads(run.plan.read_text()).get("per_gpu", {}).get("peak_reserved_gib")
    except (OSError, ValueError):
        pass
    loss = last.get("loss") if last.get("loss") is not None else status.get("loss")
    pids = tuple(int(entry["pid"]) for entry in launches[-1:] if entry.get("pid"))
    return RunInfo(run.id, run.path, run.effective_state(), "ftui", last.get("step", status.get("step")),
                   last.get("total_steps", status.get("total_steps")), loss, last.get("eta_s"),
                   launches[0].get("created") if launches else None, status.get("last_error") or "", planned, pids)


@dataclass
class DirRunSource:
    """Runs under a directory (ftui's own; foreign runs come from runner.foreign)."""

    root: Path
    extra: Iterable[Callable[[], list[RunInfo]]] = field(default_factory=tuple)

    def _dirs(self) -> dict[str, RunDir]:
        return {r.id: r for r in list_runs(self.root)}

    def runs(self) -> list[RunInfo]:
        infos = [run_info(r) for r in self._dirs().values()]
        for source in self.extra:
            infos += source()
        return infos

    def info(self, run_id: str) -> RunInfo:
        return run_info(self._dirs()[run_id])

    def tail(self, run_id: str) -> RunTail:
        return DirRunTail(self._dirs()[run_id])

    def stop(self, run_id: str) -> str:
        return request_stop(self._dirs()[run_id])

    def resume(self, run_id: str) -> None:
        from .lifecycle import resume_run

        resume_run(self._dirs()[run_id])

    def owner(self, pid: int) -> tuple[str, int | None] | None:
        group = process_group(pid)
        if group is None:
            return None
        for run in self._dirs().values():
            launches = run.launches()
            if launches and launches[-1].get("pgid") == group:
                return run.id, process_rank(pid)
        return None


# --- replay --------------------------------------------------------------------------------


class ReplayTail:
    """Serves a recorded run's metrics and log as if they were being written now."""

    def __init__(self, records: list[dict[str, Any]], log: list[str], clock: Clock, start: float,
                 speed: float) -> None:
        t0 = records[0]["time"] if records else 0.0
        self.pending = deque((start + (r["time"] - t0) / speed, r) for r in records)
        self.log = deque(log)
        self.clock = clock
        self.per_record = max(1, len(log) // max(1, len(records)))

    def new_records(self) -> list[dict[str, Any]]:
        now, out = self.clock(), []
        while self.pending and self.pending[0][0] <= now:
            out.append(self.pending.popleft()[1])
        self._released = len(out)
        return out

    def new_log_lines(self) -> list[str]:
        count = getattr(self, "_released", 0) * self.per_record
        return [self.log.popleft() for _ in range(min(count, len(self.log)))]


class ReplayRunSource:
    """One recorded run directory replayed against `clock` (`speed` x real time)."""

    def __init__(self, recording: Path, clock: Clock = time.time, speed: float = 1.0) -> None:
        self.recording = recording
        self.clock = clock
        self.speed = speed
        self.start = clock()
        self.records = [json.loads(line) for line in (recording / "metrics.jsonl").read_text().splitlines() if line]
        self.log = (recording / "train.log").read_text().splitlines() if (recording / "train.log").exists() else []
        self.stopped = False

    @property
    def run_id(self) -> str:
        return self.recording.name

    def _released(self) -> list[dict[str, Any]]:
        t0 = self.records[0]["time"] if self.records else 0.0
        now = self.clock()
        return [r for r in self.records if self.start + (r["time"] - t0) / self.speed <= now]

    def runs(self) -> list[RunInfo]:
        return [self.info(self.run_id)]

    def info(self, run_id: str) -> RunInfo:
        shown = self._released()
        last = shown[-1] if shown else {}
        done = len(shown) == len(self.records)
        state = "stopped" if self.stopped else ("finished" if done else "running")
        planned = None
        plan = self.recording / "plan.json"
        if plan.exists():
            planned = json.loads(plan.read_text()).get("per_gpu", {}).get("peak_reserved_gib")
        losses = [r["loss"] for r in shown if r.get("loss") is not None]
        return RunInfo(self.run_id, self.recording, state, "ftui", last.get("step"), last.get("total_steps"),
                       losses[-1] if losses else None, last.get("eta_s"), self.start, "", planned)

    def tail(self, run_id: str) -> RunTail:
        return ReplayTail(self.records, self.log, self.clock, self.start, self.speed)

    def stop(self, run_id: str) -> str:
        self.stopped = True
        return "requested"

    def resume(self, run_id: str) -> None:
        self.stopped = False

    def owner(self, pid: int) -> tuple[str, int | None] | None:
        """The recording plays on the fake 8xH100 scenario, whose ranks have pids 4100 + rank."""
        return (self.run_id, pid - 4100) if 4100 <= pid < 4108 else None


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def process_rank(pid: int) -> int | None:
    """RANK from a process's environment (readable for our own processes)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            try:
                return int(item[5:])
            except ValueError:
                return None
    return None


def merge_runs(*sources: Callable[[], list[RunInfo]]) -> list[RunInfo]:
    """Runs from several sources, newest first."""
    out = [info for source in sources for info in source()]
    return sorted(out, key=lambda r: r.started or 0.0, reverse=True)
