"""Following a run's log in the terminal until it ends (Ctrl-C detaches, the run goes on)."""

from __future__ import annotations

import sys
import time

from runner.rundir.runs import ACTIVE, RunDir


def follow_log(run: RunDir, poll_s: float = 0.25, from_start: bool = True) -> int:
    """Print train.log as it grows; return when the run is no longer active."""
    offset = 0 if from_start else (run.log.stat().st_size if run.log.exists() else 0)
    try:
        while True:
            offset = _print_new(run, offset)
            state = run.effective_state()
            if state not in ACTIVE:
                _print_new(run, offset)
                print(f"-- run {run.id} is {state}", file=sys.stderr)
                return 0 if state in ("finished", "stopped") else 1
            time.sleep(poll_s)  # a file that grows: nothing to await but its size
    except KeyboardInterrupt:
        print(f"\n-- detached; {run.id} keeps running", file=sys.stderr)
        return 0


def _print_new(run: RunDir, offset: int) -> int:
    try:
        with open(run.log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(data)
