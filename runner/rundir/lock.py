"""The run lock: at most one launch of a run at a time, and a way to see that any of its processes lives.

`RUN_DIR/run.lock` carries open-file-description (OFD) record locks, which belong to an open file
(not to a process), pass to children with the descriptor, and vanish when the last process holding
that descriptor exits, however it exits: kill -9 included. Nothing has to clean them up.

- Launching (`ftui train`, `ftui resume`, the app) takes the **write** lock without waiting; if
  anything holds the lock the launch refuses. The launcher hands its descriptor to the supervisor
  and closes its own copy, so there is no gap in which a second launch could slip in.
- The supervisor turns that write lock into a **read** lock (one atomic call) before it starts the
  training command, and every training process takes its own read lock when it starts. So the
  lock stays held while the supervisor *or any training process* is alive: a second launch is
  refused even when only an orphaned rank survives.
- Readers (`ftui runs`, the app) ask whether a write lock *could* be taken (F_OFD_GETLK), which
  takes nothing and so never makes a launch fail by looking.

On a filesystem without record locks the calls fail with ENOLCK/EINVAL/EOPNOTSUPP: the lock is then
treated as absent (launches go ahead, liveness falls back to the supervisor's pid), never as held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

LOCK_NAME = "run.lock"

# struct flock: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t); padded to its C size.
_FLOCK = "hhqqi4x" if struct.calcsize("hhqqi") == 28 else "hhqqi"
_UNSUPPORTED = {errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}
_BUSY = {errno.EAGAIN, errno.EACCES}


class LockBusy(OSError):
    """Another launch or a live process of the run holds its lock."""


def _flock(kind: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)


def _set(fd: int, kind: int) -> bool:
    """Set (or convert to) `kind` on the whole file without waiting; False when unsupported here."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(kind))
    except OSError as err:
        if err.errno in _BUSY:
            raise LockBusy(err.errno, "the run lock is held") from None
        if err.errno in _UNSUPPORTED:
            return False
        raise
    return True


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def acquire_launch(run_dir: Path) -> int:
    """Open the run's lock file and take its write lock; returns the descriptor (inheritable, so it
    can be handed to the supervisor). Raises LockBusy if the run has a launch or a live process."""
    fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _set(fd, fcntl.F_WRLCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def share(fd: int) -> None:
    """Turn the write lock on `fd` into a read lock (atomic: no moment without a lock)."""
    _set(fd, fcntl.F_RDLCK)


def hold_shared(run_dir: Path) -> int | None:
    """Take a read lock for a training process (kept until the process exits); None when the file
    system has no locks or a launch holds the write lock (then there is nothing to add)."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        if _set(fd, fcntl.F_RDLCK):
            return fd
    except (LockBusy, OSError):
        pass
    os.close(fd)
    return None


def held(run_dir: Path) -> bool:
    """Does any process hold the run's lock (a launch in progress, the supervisor, a training
    process)? Takes nothing."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK))
    except OSError:
        return False
    finally:
        os.close(fd)
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK
