"""The supervisor of one launch: `python -m runner.launch.supervise --run-dir DIR`.

It is started detached (its own session and process group, see runner.launch.build.spawn_detached),
runs the launcher command recorded in launch.json in the same process group, waits for it, and
records how the run ended in status.json: finished, stopped (after a graceful stop request) or
failed (exit code and the last error line this launch wrote to train.log). Killing the whole group
(second `ftui stop`, or kill -9) leaves the status active with no live process, which readers
report as dead or stopped.

One trainer per run: the supervisor holds the run lock the launch handed it (--lock-fd, see
runner.rundir.lock) as a read lock, and the training command gets FTUI_SUPERVISOR=pid:start and a
parent-death signal, so when the supervisor is killed alone the training processes end with it
(runner.train.guard) instead of training on unseen.

A full disk is a named failure: the supervisor frees what an interrupted save left (checkpoint
directories without a completion marker, temp files) so that it can record the end at all, and
says how much room a checkpoint needs.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from runner.rundir.checkpoints import checkpoint_bytes, interrupted
from runner.rundir.lock import LockBusy, acquire_launch, share
from runner.rundir.runs import RunDir, process_start_time

SUPERVISOR_ENV = "FTUI_SUPERVISOR"  # read by runner.train.guard (which must not import this module)

ERROR_LINE = re.compile(r"(^\w*(Error|Exception)\b.*|CUDA out of memory.*|Killed.*|.*\bFATAL\b.*|^error: .*)")


DISK_FULL = re.compile(r"No space left on device|\[Errno 28\]|ENOSPC|disk quota exceeded", re.IGNORECASE)


def _log_lines(log: Path, offset: int = 0, tail: int = 400) -> deque[str]:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return deque((line.decode("utf-8", "replace") for line in fh), maxlen=tail)
    except OSError:
        return deque()


def last_error_line(log: Path, tail: int = 400, offset: int = 0) -> str:
    """The most telling error line near the end of the log, from byte `offset` on (where this
    launch began writing; an older launch's error is not this one's) ('' when none)."""
    lines = _log_lines(log, offset, tail)
    for line in reversed(lines):
        text = line.strip()
        if ERROR_LINE.search(text):
            return text[:500]
    return ""


def supervise(run: RunDir, lock_fd: int | None = None) -> int:
    if lock_fd is None:
        try:
            lock_fd = acquire_launch(run.path)
        except LockBusy:
            print(f"ftui: {run.id} already has a live launch; this supervisor leaves it alone", file=sys.stderr)
            return 3
    share(lock_fd)
    launch = run.launches()[-1]
    if run.stop_request.exists():
        run.set_status("stopped", exit_code=0, last_error="stopped before it started")
        return 0
    log_offset = run.log.stat().st_size if run.log.exists() else 0
    if launch.get("download") and not _download(run, launch["download"]):
        return 1
    if run.stop_request.exists():
        run.set_status("stopped", exit_code=0, last_error="stopped before it started")
        return 0
    run.set_status(
        "running", phase="starting", exit_code=None, last_error="", started=time.time(), log_offset=log_offset
    )
    signal.signal(signal.SIGTERM, lambda *_: None)  # outlive a group SIGTERM long enough to record it
    env = {**os.environ, SUPERVISOR_ENV: f"{os.getpid()}:{process_start_time(os.getpid()) or ''}"}
    with open(run.log, "ab") as log:
        child = subprocess.Popen(
            launch["argv"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        code = child.wait()
    try:
        _record_end(run, code, log_offset)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        freed = free_interrupted_save(run)
        _record_end(run, code, log_offset, disk_full=True, freed=freed)
    return code


def _download(run: RunDir, spec: dict) -> bool:
    """Fetch the recipe's Hub model into the HF cache before training (state `downloading`, with bytes
    and rate in status.json); False (and the run `failed` with the reason) when it cannot."""
    from planner.hub import HubError

    from .download import fetch, plan_download

    os.environ["HF_HUB_OFFLINE"] = "0"  # the launch checked it may download; ranks stay offline
    repo = spec["repo_id"]
    run.set_status(
        "downloading", phase="downloading", download={"repo_id": repo, "done": 0, "total": spec["total_bytes"]}
    )

    def progress(done: int, total: int, rate: float) -> None:
        state = "stopping" if run.stop_request.exists() else "downloading"
        run.set_status(state, download={"repo_id": repo, "done": done, "total": total, "bytes_per_s": round(rate)})

    try:
        plan = plan_download(repo, spec.get("revision") or "main", bool(spec.get("trust_remote_code")))
        print(f"ftui: downloading {repo} ({plan.missing_bytes / 1e9:.2f} GB) into the Hugging Face cache", flush=True)
        fetch(plan, progress)
    except HubError as err:
        run.set_status("failed", exit_code=None, last_error=str(err), phase="done", ended=time.time())
        print(f"ftui: {err}", flush=True)
        return False
    print(f"ftui: {repo} is in the cache", flush=True)
    return True


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM when the supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def free_interrupted_save(run: RunDir) -> list[str]:
    """Remove what a save that never finished left: checkpoint directories newer than the newest
    complete one that carry no completion marker, and stale temp files. Returns what was removed."""
    removed = []
    for path in interrupted(run.checkpoints, all_marked=all(entry.get("markers") for entry in run.launches())):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    for tmp in list(run.path.glob(".*.tmp")) + list(run.path.glob("ranks/.*.tmp")):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


def disk_full_message(run: RunDir, freed: list[str] | None = None) -> str:
    free = shutil.disk_usage(run.path).free
    need = checkpoint_bytes(run.checkpoints)
    text = f"the disk is full ({_gb(free)} free on the file system of {run.path})"
    if need and free < need + need // 10:
        more = _gb(need + need // 10 - free)
        text += f": free at least {more} or lower train.save_total_limit (one checkpoint is {_gb(need)})"
    elif need:
        text += f"; there is room for one checkpoint ({_gb(need)}) now, lower train.save_total_limit to keep it so"
    else:
        text += ": free some space or lower train.save_total_limit"
    if freed:
        text += f"; removed what the interrupted save left ({', '.join(freed[:4])})"
    return text


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def _no_room(run: RunDir) -> bool:
    """Too little free space for another checkpoint (or for anything): the log may not have been
    able to say so, since writing it needs room too."""
    free = shutil.disk_usage(run.path).free
    return free < max(checkpoint_bytes(run.checkpoints), 2**20)


def _disk_full_in_log(log: Path, offset: int) -> bool:
    return any(DISK_FULL.search(line) for line in _log_lines(log, offset))


def _record_end(run: RunDir, code: int, log_offset: int = 0, disk_full: bool = False, freed=None) -> None:
    status = run.status()
    stop_asked = run.stop_request.exists()
    if code == 0 and not disk_full:
        state = "stopped" if stop_asked or status.get("state") == "stopping" else "finished"
        run.set_status(state, exit_code=0, phase="done", ended=time.time())
    elif status.get("forced") or (stop_asked and code in (-signal.SIGTERM, -signal.SIGKILL, 143, 137)):
        run.set_status("stopped", exit_code=code, phase="done", ended=time.time())
    else:
        if disk_full or _disk_full_in_log(run.log, log_offset) or _no_room(run):
            if freed is None:
                freed = free_interrupted_save(run)
            error = disk_full_message(run, freed)
        else:
            error = last_error_line(run.log, offset=log_offset) or f"the launcher exited with code {code}"
        run.set_status("failed", exit_code=code, last_error=error, phase="done", ended=time.time())
    if stop_asked:
        run.stop_request.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.launch.supervise")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--lock-fd", type=int, default=None, help="the run lock, taken by the launch")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run = RunDir(args.run_dir)
    try:
        return supervise(run, args.lock_fd)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        freed = free_interrupted_save(run)
        run.set_status("failed", exit_code=None, last_error=disk_full_message(run, freed), phase="done")
        return 1


if __name__ == "__main__":
    sys.exit(main())
