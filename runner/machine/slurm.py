"""Slurm's commands (sbatch, squeue, sacct, scontrol, scancel, sinfo) behind plain functions.

Every call goes through `_slurm`, which turns a missing command, a controller that does not
answer or a refusal into `SlurmError` carrying Slurm's own words; nothing here imports torch.

A job's state comes from `squeue` while the controller holds it, then `sacct` (when accounting is
on), then `scontrol show job` (kept for MinJobAge after the end); `job_state` says None when no
command knows the job any more, and the run's own status.json is all there is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
COMMAND_TIMEOUT_S = 30
CACHE_S = 2.0
"""How long an answer is reused: a list of runs asks about each job once per refresh, not once per
column, and a submission asks sinfo once."""


class SlurmError(RuntimeError):
    """A Slurm command is missing or refused; the message says which and why."""


def time_limit_s(text: str) -> int | None:
    """Seconds in a Slurm time limit (`90` = minutes, `1:30:00`, `2-00:00:00`); None when malformed."""
    m = TIME_LIMIT.match(text.strip())
    if not m:
        return None
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if c is not None:
        h, mi, s = a, b, c
    elif b is not None:
        h, mi, s = (a, b, 0) if days is not None else (0, a, b)
    else:
        h, mi, s = (a, 0, 0) if days is not None else (0, a, 0)
    return (days or 0) * 86400 + h * 3600 + mi * 60 + s


def _slurm(argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a Slurm command; its stdout, or SlurmError with its first error line."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(
            f"{argv[0]} not found: Slurm runs need Slurm's commands (sbatch, squeue, scancel) on PATH; "
            "run ftui on a login node of the cluster"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout:.0f} s: is the Slurm controller up?") from None
    if done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        raise SlurmError(f"{argv[0]} failed: {err[-1] if err else f'exit {done.returncode}'}")
    return done.stdout


# --- the partition -------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    name: str
    gpu_type: str | None
    """From the nodes' Gres (`gpu:h100:8`), when it names one."""
    gpus_per_node: int
    cpus_per_node: int
    nodes: int


GRES_GPU = re.compile(r"gpu(?::([A-Za-z][\w.-]*))?:(\d+)")


_PARTITIONS: dict[str | None, tuple[float, "Partition"]] = {}


def partition(name: str | None) -> Partition:
    """The partition `name` (None: the default one) as sinfo describes it (asked once per CACHE_S:
    a submission plans for it and sizes the job's CPUs from the same answer)."""
    hit = _PARTITIONS.get(name)
    if hit and time.monotonic() - hit[0] < CACHE_S:
        return hit[1]
    found = _partition(name)
    _PARTITIONS[name] = (time.monotonic(), found)
    return found


def _partition(name: str | None) -> Partition:
    argv = ["sinfo", "-h", "-o", "%P|%G|%c|%D"]
    if name:
        argv += ["-p", name]
    rows = [line.split("|") for line in _slurm(argv).splitlines() if line.count("|") == 3]
    if name is None:
        rows = [r for r in rows if r[0].endswith("*")] or rows
    if not rows:
        known = [r.split("|")[0] for r in _slurm(["sinfo", "-h", "-o", "%P|"]).splitlines()]
        raise SlurmError(f"no partition {name!r} on this cluster; partitions: {', '.join(known) or 'none'}")
    part = rows[0][0].rstrip("*")
    gpu_type, gpus = None, 0
    for row in rows:
        m = GRES_GPU.search(row[1])
        if m:
            gpu_type, gpus = m.group(1) or gpu_type, max(gpus, int(m.group(2)))
    cpus = max(int(r[2].rstrip("+")) for r in rows if r[2].rstrip("+").isdigit()) if rows else 1
    nodes = sum(int(r[3]) for r in rows if r[3].isdigit())
    return Partition(part, gpu_type, gpus, cpus, nodes)


# --- jobs ---------------------------------------------------------------------------------


def submit(argv: list[str]) -> str:
    """Run `sbatch --parsable ...` (argv); the job id."""
    out = _slurm(argv).strip()
    job = out.split(";")[0].strip()
    if not job.isdigit():
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    return job


# --- the job's state -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    state: str
    """Slurm's word: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, PREEMPTED, ..."""
    reason: str = ""
    """Why it waits (Resources, Priority, PartitionNodeLimit, ...), or why it ended."""
    exit_code: str = ""
    nodes: str = ""
    source: str = ""

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    def label(self) -> str:
        """`pending (Resources)`, `running`, `timed out`: how the job is shown beside the run."""
        word = LABELS.get(self.state, self.state.lower().replace("_", " "))
        if self.pending and self.reason and self.reason not in ("None", "(null)"):
            return f"{word} ({self.reason})"
        return word


PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"})
LABELS = {
    "PENDING": "pending",
    "CONFIGURING": "starting",
    "REQUEUED": "requeued",
    "RUNNING": "running",
    "COMPLETING": "completing",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timed out",
    "PREEMPTED": "preempted",
    "NODE_FAIL": "node failed",
    "OUT_OF_MEMORY": "out of memory",
    "BOOT_FAIL": "boot failed",
    "DEADLINE": "deadline",
    "SUSPENDED": "suspended",
    "UNKNOWN": "unknown (Slurm cannot be asked from here)",
}

_CACHE: dict[str, tuple[float, JobState | None]] = {}


def job_state(job_id: str, *, fresh: bool = False) -> JobState | None:
    """What the controller says of `job_id`; None when no Slurm command knows it (SlurmError when
    the commands are missing or the controller does not answer)."""
    now = time.monotonic()
    hit = _CACHE.get(job_id)
    if hit and not fresh and now - hit[0] < CACHE_S:
        return hit[1]
    state = _squeue(job_id) or _sacct(job_id) or _scontrol(job_id)
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[job_id] = (now, state)
    return state


def _squeue(job_id: str) -> JobState | None:
    try:
        out = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T|%r|%N"])
    except SlurmError as err:
        if "Invalid job id" in str(err):
            return None
        raise
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0]:
            return JobState(parts[0], parts[1], "", parts[2], "squeue")
    return None


def _sacct(job_id: str) -> JobState | None:
    if shutil.which("sacct") is None:
        return None
    try:
        out = _slurm(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Reason,NodeList"])
    except SlurmError:
        return None  # accounting is off on many small clusters: scontrol still knows recent jobs
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0]:
            state = parts[0].split()[0]  # "CANCELLED by 0"
            return JobState(state, parts[2], parts[1], parts[3], "sacct")
    return None


def _scontrol(job_id: str) -> JobState | None:
    try:
        out = _slurm(["scontrol", "show", "job", "-o", job_id])
    except SlurmError as err:
        if "Invalid job id" in str(err):
            return None
        raise
    fields = dict(re.findall(r"(\w+)=(\S*)", out))
    if not fields.get("JobState"):
        return None
    return JobState(
        fields["JobState"], fields.get("Reason", ""), fields.get("ExitCode", ""), fields.get("NodeList", ""), "scontrol"
    )


def cancel(job_id: str) -> None:
    _slurm(["scancel", job_id])
    _CACHE.pop(job_id, None)


def requeue(job_id: str) -> None:
    _slurm(["scontrol", "requeue", job_id])
    _CACHE.pop(job_id, None)


# --- inside the job ------------------------------------------------------------------------


def hostnames(nodelist: str) -> list[str]:
    """`n[1-2],gpu7` -> ['n1', 'n2', 'gpu7'] (Slurm's own expansion)."""
    return _slurm(["scontrol", "show", "hostnames", nodelist]).split()


def node_address(node: str) -> str:
    """The address Slurm itself reaches `node` at (its NodeAddr), for the rendezvous."""
    try:
        out = _slurm(["scontrol", "show", "node", "-o", node])
    except SlurmError:
        return node
    m = re.search(r"\bNodeAddr=(\S+)", out)
    return m.group(1) if m else node
