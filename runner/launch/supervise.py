"""The supervisor of one launch: `python -m runner.launch.supervise --run-dir DIR`.

It is started detached (its own session and process group, see runner.launch.build.spawn_detached),
runs the launcher command recorded in launch.json in the same process group, waits for it, and
records how the run ended in status.json: finished, stopped (after a graceful stop request) or
failed (exit code and the last error line of train.log). Killing the whole group (second `ftui
stop`, or kill -9) leaves the status active with no live supervisor, which readers report as dead
or stopped.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from runner.rundir.runs import RunDir

ERROR_LINE = re.compile(r"(^\w*(Error|Exception)\b.*|CUDA out of memory.*|Killed.*|.*\bFATAL\b.*|^error: .*)")


def last_error_line(log: Path, tail: int = 400) -> str:
    """The most telling error line near the end of the log ('' when none)."""
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            lines = deque(fh, maxlen=tail)
    except OSError:
        return ""
    for line in reversed(lines):
        text = line.strip()
        if ERROR_LINE.search(text):
            return text[:500]
    return ""


def supervise(run: RunDir) -> int:
    launch = run.launches()[-1]
    if run.stop_request.exists():
        run.set_status("stopped", exit_code=0, last_error="stopped before it started")
        return 0
    run.set_status("running", phase="starting", exit_code=None, last_error="", started=time.time())
    signal.signal(signal.SIGTERM, lambda *_: None)  # outlive a group SIGTERM long enough to record it
    with open(run.log, "ab") as log:
        child = subprocess.Popen(launch["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        code = child.wait()
    _record_end(run, code)
    return code


def _record_end(run: RunDir, code: int) -> None:
    status = run.status()
    stop_asked = run.stop_request.exists()
    if code == 0:
        state = "stopped" if stop_asked or status.get("state") == "stopping" else "finished"
        run.set_status(state, exit_code=0, phase="done", ended=time.time())
    elif status.get("forced") or (stop_asked and code in (-signal.SIGTERM, -signal.SIGKILL, 143, 137)):
        run.set_status("stopped", exit_code=code, phase="done", ended=time.time())
    else:
        error = last_error_line(run.log) or f"the launcher exited with code {code}"
        run.set_status("failed", exit_code=code, last_error=error, phase="done", ended=time.time())
    if stop_asked:
        run.stop_request.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.launch.supervise")
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return supervise(RunDir(args.run_dir))


if __name__ == "__main__":
    sys.exit(main())
