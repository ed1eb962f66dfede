"""A recorded run replayed at the pace of an injected clock: how tests and `ftui --demo` show a
live-looking run without a GPU or a training process."""

from __future__ import annotations

import bisect
import json
import time
from pathlib import Path
from typing import Any

from .info import Clock, RunInfo, RunTail, planned_peak


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
