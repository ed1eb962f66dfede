"""The live sources: GPUs through NVML, and the runs under ftui's runs directories plus the runs of
other tools found under watched directories.

The TUI never reads NVML or run directories itself: it gets a `GpuSource`, a `RunSource` and a
clock (see `info`). These are the real ones; `replay` serves a recorded run instead, which is how
tests and `ftui --demo` run without a GPU. Stop and resume go through the run directory and the
launch wing, as `ftui stop` and `ftui resume` do.
"""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from runner.machine.nvml import GpuSnapshot, NoGpu, NvmlReader
from runner.rundir.metrics import MetricsTail, last_record
from runner.rundir.runs import RunDir, RunError, is_run_dir, list_runs, request_stop

from . import foreign
from .info import FileLogTail, RunInfo, RunTail, clean_mem, planned_peak

OWNER_CACHE_S = 5.0
"""How long the map of process groups to runs is reused (the GPU pane asks every second)."""


# --- real sources --------------------------------------------------------------------------


class NvmlGpuSource:
    """NVML through runner.machine.nvml (the real one, or a fake scenario via $FTUI_FAKE_NVML)."""

    def __init__(self, nvml: Any = None) -> None:
        self.reader = NvmlReader(nvml)

    def snapshot(self) -> list[GpuSnapshot]:
        gpus = self.reader.snapshot()
        if not gpus:
            raise NoGpu("no NVIDIA GPU found: NVML sees no devices")
        return gpus


class DirRunTail:
    def __init__(self, run: RunDir) -> None:
        self.metrics = MetricsTail(run.metrics)
        self.log = FileLogTail(run.log)

    def new_records(self) -> list[dict[str, Any]]:
        records = self.metrics.read()
        for r in records:
            if "mem" in r:
                r["mem"] = clean_mem(r["mem"])
        return records

    def new_log_lines(self) -> list[str]:
        return self.log.read()


def run_info(run: RunDir) -> RunInfo:
    status = run.status()
    last = last_record(run.metrics) or {}
    launches = run.launches()
    planned = planned_peak(run.plan)
    loss = latest_values(run.metrics, ("loss",))["loss"] if last and last.get("loss") is None else last.get("loss")
    loss = loss if loss is not None else status.get("loss")
    pids = tuple(int(entry["pid"]) for entry in launches[-1:] if entry.get("pid"))
    state, error = run.explain(status, launches)
    job_id, job = run.job(launches, status)
    return RunInfo(
        run.id,
        run.path,
        state,
        "ftui",
        last.get("step", status.get("step")),
        last.get("total_steps", status.get("total_steps")),
        loss,
        last.get("eta_s"),
        launches[0].get("created") if launches else None,
        error,
        planned,
        pids,
        f"job {job_id} {job.label() if job is not None else 'gone from Slurm'}" if job_id is not None else "",
    )


def latest_values(metrics: Path, keys: Iterable[str]) -> dict[str, Any]:
    """The newest value of each key among the last records of a metrics.jsonl (the last record alone may be an
    evaluation without lr or grad norm, or the loss of a step that logged none)."""
    recent = foreign.tail_objects(metrics)
    return {k: foreign.latest(recent, k) for k in keys}


FOREIGN_SCAN_S = 10.0
"""DirRunSource looks for new foreign runs under its watched directories at most this often."""


@dataclass
class DirRunSource:
    """Runs under a directory (ftui's own), plus the runs of other tools found under `watch` (runner.watch.foreign)."""

    root: Path
    extra: Iterable[Callable[[], list[RunInfo]]] = field(default_factory=tuple)
    watch: tuple[Path, ...] = ()
    roots: list[Path] = field(default_factory=list)
    """More directories of our runs (output dirs chosen when launching from the app)."""
    _group_map: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _groups_at: float | None = field(default=None, init=False, repr=False)
    _foreign: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    """foreign.ForeignRun by id, from the latest scan."""
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
        now = time.monotonic()
        if self.watch and (self._scanned_at is None or now - self._scanned_at >= FOREIGN_SCAN_S):
            self._foreign = {run.id: run for run in foreign.scan(self.watch)}
            self._scanned_at = now
        return self._foreign

    def _refuse_foreign(self, run_id: str, action: str) -> None:
        """RunError for a run ftui did not launch: ftui knows neither its process nor a way to ask it to stop."""
        run = self._foreign_runs().get(run_id)
        if run is not None:
            raise RunError(
                f"cannot {action} {run_id}: ftui did not launch it (a {run.tool} run in {run.path}) and "
                f"does not know its process; {action} it with the tool that started it"
            )

    def runs(self) -> list[RunInfo]:
        infos = [run_info(r) for r in self._dirs().values()]
        now = time.time()
        infos += [foreign.info(run, now) for run in self._foreign_runs().values()]
        for source in self.extra:
            infos += source()
        return infos

    def info(self, run_id: str) -> RunInfo:
        run = self._foreign_runs().get(run_id)
        return foreign.info(run, time.time()) if run is not None else run_info(self._dir(run_id))

    def tail(self, run_id: str) -> RunTail:
        run = self._foreign_runs().get(run_id)
        return foreign.ForeignTail(run) if run is not None else DirRunTail(self._dir(run_id))

    def stop(self, run_id: str) -> str:
        self._refuse_foreign(run_id, "stop")
        return request_stop(self._dir(run_id))

    def resume(self, run_id: str) -> None:
        from runner.launch.lifecycle import resume_run

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
