"""Where the app's data comes from, behind small interfaces so it can be replayed.

The TUI never reads NVML or run directories itself: it gets a `GpuSource`, a `RunSource` and a
clock. The real ones read NVML and `./runs`; the replay ones serve a recorded run at the pace of
an injected clock, which is how tests and `ftui --demo` run without a GPU.
"""

from __future__ import annotations

import bisect
import json
import os
import pwd
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from .metrics import MetricsTail, last_record
from .nvml import GpuSnapshot, NoGpu, NvmlReader
from .runs import ACTIVE, RunDir, is_run_dir, list_runs, request_stop

Clock = Callable[[], float]
OWNER_CACHE_S = 5.0
"""How long the map of process groups to runs is reused (the GPU pane asks every second)."""


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

    def adopt(self, run_dir: Path) -> str:
        """Make a run started outside the usual place visible; returns its id."""


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


class DirRunTail:
    def __init__(self, run: RunDir) -> None:
        self.metrics = MetricsTail(run.metrics)
        self.log = FileLogTail(run.log)

    def new_records(self) -> list[dict[str, Any]]:
        return self.metrics.read()

    def new_log_lines(self) -> list[str]:
        return self.log.read()


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


def run_info(run: RunDir) -> RunInfo:
    status = run.status()
    last = last_record(run.metrics) or {}
    launches = run.launches()
    planned = planned_peak(run.plan)
    loss = last.get("loss") if last.get("loss") is not None else status.get("loss")
    pids = tuple(int(entry["pid"]) for entry in launches[-1:] if entry.get("pid"))
    return RunInfo(
        run.id,
        run.path,
        run.effective_state(status, launches),
        "ftui",
        last.get("step", status.get("step")),
        last.get("total_steps", status.get("total_steps")),
        loss,
        last.get("eta_s"),
        launches[0].get("created") if launches else None,
        status.get("last_error") or "",
        planned,
        pids,
    )


FOREIGN_SCAN_S = 10.0
"""DirRunSource looks for new foreign runs under its watched directories at most this often."""


@dataclass
class DirRunSource:
    """Runs under a directory (ftui's own), plus the runs of other tools found under `watch` (runner.foreign)."""

    root: Path
    extra: Iterable[Callable[[], list[RunInfo]]] = field(default_factory=tuple)
    watch: tuple[Path, ...] = ()
    roots: list[Path] = field(default_factory=list)
    """More directories of our runs (output dirs chosen when launching from the app)."""
    _group_map: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _groups_at: float | None = field(default=None, init=False, repr=False)
    _foreign: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    """runner.foreign.ForeignRun by id, from the latest scan."""
    _scanned_at: float | None = field(default=None, init=False, repr=False)

    def _dirs(self) -> dict[str, RunDir]:
        return {r.id: r for root in (self.root, *self.roots) for r in list_runs(root)}

    def _dir(self, run_id: str) -> RunDir:
        """One of our runs by id (a direct look first: the monitor asks twice a second)."""
        for root in (self.root, *self.roots):
            path = root / run_id
            if is_run_dir(path):
                return RunDir(path)
        return self._dirs()[run_id]

    def adopt(self, run_dir: Path) -> str:
        """A run started elsewhere than `root` (another output dir): list it from now on."""
        parent = run_dir.resolve().parent
        if parent != self.root.resolve() and parent not in self.roots:
            self.roots.append(parent)
        return run_dir.name

    def _foreign_runs(self) -> dict[str, Any]:
        """Foreign runs under `watch` by id; the directories are scanned again at most every FOREIGN_SCAN_S."""
        from . import foreign

        now = time.monotonic()
        if self.watch and (self._scanned_at is None or now - self._scanned_at >= FOREIGN_SCAN_S):
            self._foreign = {run.id: run for run in foreign.scan(self.watch)}
            self._scanned_at = now
        return self._foreign

    def _refuse_foreign(self, run_id: str, action: str) -> None:
        """RunError for a run ftui did not launch: ftui knows neither its process nor a way to ask it to stop."""
        run = self._foreign_runs().get(run_id)
        if run is not None:
            from .runs import RunError

            raise RunError(
                f"cannot {action} {run_id}: ftui did not launch it (a {run.tool} run in {run.path}) and "
                f"does not know its process; {action} it with the tool that started it"
            )

    def runs(self) -> list[RunInfo]:
        from . import foreign

        infos = [run_info(r) for r in self._dirs().values()]
        now = time.time()
        infos += [foreign.info(run, now) for run in self._foreign_runs().values()]
        for source in self.extra:
            infos += source()
        return infos

    def info(self, run_id: str) -> RunInfo:
        from . import foreign

        run = self._foreign_runs().get(run_id)
        return foreign.info(run, time.time()) if run is not None else run_info(self._dir(run_id))

    def tail(self, run_id: str) -> RunTail:
        from . import foreign

        run = self._foreign_runs().get(run_id)
        return foreign.ForeignTail(run) if run is not None else DirRunTail(self._dir(run_id))

    def stop(self, run_id: str) -> str:
        self._refuse_foreign(run_id, "stop")
        return request_stop(self._dir(run_id))

    def resume(self, run_id: str) -> None:
        from .lifecycle import resume_run

        self._refuse_foreign(run_id, "resume")
        resume_run(self._dir(run_id))

    def owner(self, pid: int) -> tuple[str, int | None] | None:
        group = process_group(pid)
        run_id = self._groups().get(group) if group is not None else None
        return (run_id, process_rank(pid)) if run_id is not None else None

    def _groups(self) -> dict[int, str]:
        """Process group of each run's latest launch -> run id (re-read at most every OWNER_CACHE_S)."""
        now = time.monotonic()
        if self._groups_at is None or now - self._groups_at >= OWNER_CACHE_S:
            groups = {}
            for run in self._dirs().values():
                launches = run.launches()
                if launches and launches[-1].get("pgid"):
                    groups[int(launches[-1]["pgid"])] = run.id
            self._group_map, self._groups_at = groups, now
        return self._group_map


# --- replay --------------------------------------------------------------------------------


class ReplayTail:
    """Serves a recorded run's metrics and log as if they were being written now.

    Log lines come out in proportion to the recorded time elapsed, so the log keeps pace.
    """

    def __init__(self, records: list[dict[str, Any]], log: list[str], clock: Clock, start: float, speed: float) -> None:
        t0 = records[0]["time"] if records else 0.0
        self.due = [start + (r["time"] - t0) / speed for r in records]
        self.records = records
        self.next = 0
        self.log = log
        self.log_shown = 0
        self.clock = clock

    def _released(self) -> int:
        return bisect.bisect_right(self.due, self.clock())

    def new_records(self) -> list[dict[str, Any]]:
        upto = self._released()
        out = self.records[self.next : upto]
        self.next = max(self.next, upto)
        return out

    def new_log_lines(self) -> list[str]:
        released, total = self._released(), len(self.records)
        upto = len(self.log) if released >= total else len(self.log) * released // max(1, total)
        lines = self.log[self.log_shown : upto]
        self.log_shown = max(self.log_shown, upto)
        return lines


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
        planned = planned_peak(self.recording / "plan.json")
        losses = [r["loss"] for r in shown if r.get("loss") is not None]
        return RunInfo(
            self.run_id,
            self.recording,
            state,
            "ftui",
            last.get("step"),
            last.get("total_steps"),
            losses[-1] if losses else None,
            last.get("eta_s"),
            self.start,
            "",
            planned,
        )

    def tail(self, run_id: str) -> RunTail:
        return ReplayTail(self.records, self.log, self.clock, self.start, self.speed)

    def stop(self, run_id: str) -> str:
        self.stopped = True
        return "requested"

    def resume(self, run_id: str) -> None:
        self.stopped = False

    def adopt(self, run_dir: Path) -> str:
        return run_dir.name

    def owner(self, pid: int) -> tuple[str, int | None] | None:
        """The recording plays on the fake 8xH100 scenario, whose ranks have pids 4100 + rank."""
        return (self.run_id, pid - 4100) if 4100 <= pid < 4108 else None


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def process_user(pid: int) -> str | None:
    """Login name of a process's owner (None when the pid is not visible, e.g. another container)."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
