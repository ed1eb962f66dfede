"""What every training process does first, before torch is imported: join the run's lock, say who it
is, and die with its supervisor.

- A read lock on RUN_DIR/run.lock (runner.rundir.lock) for the life of the process, so no second
  launch of the run can start while this process lives, even if its supervisor is gone.
- RUN_DIR/ranks/<host>-rank<R>.json: pid, kernel start time, host, rank, so `ftui stop` reaches
  every process of the run, not only the supervisor's process group.
- A watcher thread on the supervisor's pidfd (FTUI_SUPERVISOR="pid:start_time", set by
  runner.launch.supervise): when the supervisor dies, by kill -9 or otherwise, nobody is left to
  record how the run ended or to stop it, so the training processes end too, at once. The watcher
  blocks on the pidfd (an event, not polling); where pidfd_open is missing it checks once a second.

Imports nothing heavy: this runs before `import torch` so an orphan never gets far.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from runner.rundir.lock import hold_shared
from runner.rundir.runs import process_alive, process_start_time, write_json_atomic

SUPERVISOR_ENV = "FTUI_SUPERVISOR"
_held: list[int] = []  # the lock descriptor lives as long as the process


def rank_file(run_dir: Path, rank: int, host: str | None = None) -> Path:
    return Path(run_dir) / "ranks" / f"{host or socket.gethostname()}-rank{rank}.json"


def record_rank(run_dir: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    path = rank_file(run_dir, rank)
    try:
        path.parent.mkdir(exist_ok=True)
        write_json_atomic(
            path,
            {
                "pid": os.getpid(),
                "start_time": process_start_time(os.getpid()),
                "host": socket.gethostname(),
                "rank": rank,
                "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                "pgid": os.getpgrp(),
                "supervisor": os.environ.get(SUPERVISOR_ENV),
                "time": time.time(),
            },
        )
    except OSError as err:  # a full disk must not stop training; stop then reaches the group only
        print(f"ftui: could not record this process in {path}: {err.strerror}", file=sys.stderr, flush=True)


def supervisor_from_env(environ=os.environ) -> tuple[int, int | None] | None:
    text = environ.get(SUPERVISOR_ENV, "")
    pid, _, start = text.partition(":")
    if not pid.isdigit():
        return None
    return int(pid), int(start) if start.isdigit() else None


def _end_with_supervisor(pid: int) -> None:
    print(
        f"ftui: the run's supervisor (pid {pid}) is gone; this training process ends with it "
        "(resume the run with `ftui resume`)",
        file=sys.stderr,
        flush=True,
    )
    group = os.getpgrp()
    try:
        same_group = os.getpgid(pid) == group
    except ProcessLookupError:
        same_group = group == pid  # the supervisor led the group it started
    if same_group:
        os.killpg(group, signal.SIGKILL)  # the launcher and every local rank, with this process
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(pid: int, start_time: int | None) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _end_with_supervisor(pid)
        return
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0 and not process_alive(pid, start_time):  # a reused pid: not ours
        os.close(fd)
        _end_with_supervisor(pid)
    if fd >= 0:
        select.select([fd], [], [])
        _end_with_supervisor(pid)
    while process_alive(pid, start_time):
        time.sleep(1.0)
    _end_with_supervisor(pid)


def watch_supervisor(environ=os.environ) -> threading.Thread | None:
    sup = supervisor_from_env(environ)
    if sup is None:
        return None
    thread = threading.Thread(target=_watch, args=sup, name="ftui-supervisor-watch", daemon=True)
    thread.start()
    return thread


def guard(run_dir: Path) -> None:
    """Everything above, for the process running the run in `run_dir`."""
    fd = hold_shared(run_dir)
    if fd is not None:
        _held.append(fd)
    record_rank(run_dir)
    watch_supervisor()
