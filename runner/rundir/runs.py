"""Run directories: layout, atomic status, liveness, stop requests, listing.

A run lives in `<output.dir>/<run-id>/`:

    recipe.yaml      the resolved recipe (no `auto` left)
    plan.json        the planner's estimate for it
    launch.json      every launch: argv, environment delta, pid/pgid, host, start time
    status.json      queued | downloading | running | stopping | stopped | finished | failed | cancelled
                     (+ exit code, last error)
    metrics.jsonl    one object per logging step
    train.log        stdout + stderr of every process
    checkpoints/     HF Trainer checkpoints
    stop.request     present while a graceful stop is asked for
    run.lock         held by the launch, the supervisor and every training process (runner.rundir.lock)
    ranks/           one file per training process: pid, start time, host, rank (runner.train.guard)
    nodes/           one file per node: its GPUs as NVML saw them at the last logging step
    slurm.sbatch     the batch script of a run submitted with --slurm (job id: launch.json)

A run whose status says it is active while none of its processes lives (killed, machine rebooted)
is reported as `dead`, or `failed` if it never got past `queued` (see RunDir.explain).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lock import held as lock_held

ACTIVE = ("queued", "downloading", "running", "stopping")
STATES = ACTIVE + ("stopped", "finished", "failed", "dead", "cancelled")
"""`cancelled`: a Slurm job cancelled from outside ftui (scancel, preemption without requeue)."""


TIME_LIMIT_REQUEST = "time-limit\n"
"""stop.request's text when a Slurm job's supervisor asks for a checkpoint before the time limit
(then requeues the job): the run pauses, it is not stopped."""


def time_limit_pause(run_dir: Path) -> bool:
    """Is the stop request a Slurm time-limit pause (runner.launch.slurm_job)?"""
    try:
        return (Path(run_dir) / "stop.request").read_text() == TIME_LIMIT_REQUEST
    except OSError:
        return False


JOB_ENDS = {"finished": "COMPLETED", "stopped": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED"}
"""How a Slurm job ended, for a run that ended (SETTLED_S ago) as status.json says."""
SETTLED_S = 300.0


class RunError(LookupError):
    """A run that cannot be found or acted on; the message says what to do."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so readers never see a half-written file (temp file + rename; no fsync: the file
    is rewritten often and a crash can at worst lose the latest update, never corrupt it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no empty temp file behind
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of /proc/PID/stat: starttime


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """Is `pid` running, and the same process that started at `start_time` (not a reused pid)?"""
    if pid <= 0:
        return False
    started = process_start_time(pid)
    if started is None:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return start_time is None
    if start_time is not None and started != start_time:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    recipe = property(lambda self: self.path / "recipe.yaml")
    plan = property(lambda self: self.path / "plan.json")
    launch_file = property(lambda self: self.path / "launch.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    log = property(lambda self: self.path / "train.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    stop_request = property(lambda self: self.path / "stop.request")

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file) or {"state": "queued"}

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into status.json and set the state (atomically)."""
        status = self.status()
        status.update(fields, state=state, updated=time.time())
        write_json_atomic(self.status_file, status)
        return status

    def launches(self) -> list[dict[str, Any]]:
        return (read_json(self.launch_file) or {}).get("launches", [])

    def record_launch(self, entry: dict[str, Any]) -> None:
        data = read_json(self.launch_file) or {"launches": []}
        data["launches"].append(entry)
        write_json_atomic(self.launch_file, data)

    def update_last_launch(self, **fields: Any) -> None:
        data = read_json(self.launch_file) or {"launches": [{}]}
        data["launches"][-1].update(fields)
        write_json_atomic(self.launch_file, data)

    def supervisor(self, launches: list[dict[str, Any]] | None = None) -> tuple[int, int | None] | None:
        """(pid, start time) of the supervisor of the latest launch on this host, if recorded
        (`launches`: what launch.json holds, when the caller has just read it)."""
        launches = self.launches() if launches is None else launches
        if not launches or "pid" not in launches[-1]:
            return None
        last = launches[-1]
        if last.get("host") not in (None, socket.gethostname()):
            return None
        return int(last["pid"]), last.get("start_time")

    def effective_state(
        self,
        status: dict[str, Any] | None = None,
        launches: list[dict[str, Any]] | None = None,
        holding_lock: bool = False,
    ) -> str:
        """The state readers show (`status`, `launches`: status.json and launch.json as the caller
        has just read them; `holding_lock`: the caller holds the run's launch lock); see `explain`."""
        return self.explain(status, launches, holding_lock)[0]

    def explain(
        self,
        status: dict[str, Any] | None = None,
        launches: list[dict[str, Any]] | None = None,
        holding_lock: bool = False,
    ) -> tuple[str, str]:
        """(state, last error) derived from status.json and the processes that are really there.

        An active state (queued/running/stopping) holds only while a process of the run lives: its
        supervisor, a training process or a launch in progress (the run lock, runner.rundir.lock).
        Otherwise a run that got as far as running is `dead`; one still `queued` never started and
        is `failed`, with the cause."""
        status = self.status() if status is None else status
        state = status.get("state", "queued")
        error = status.get("last_error") or ""
        if state not in ACTIVE:
            return state, error
        launches = self.launches() if launches is None else launches
        job_id = _job_id(launches)
        if job_id is not None:
            return self._explain_job(state, error, job_id)
        if not holding_lock and lock_held(self.path):
            return state, error
        sup = self.supervisor(launches)
        if sup is not None and process_alive(*sup):
            return state, error
        if launches and launches[-1].get("host") not in (None, socket.gethostname()):
            return state, error  # launched on another machine: its processes cannot be seen from here
        if state != "queued":
            return ("dead", error) if sup is not None or launches else (state, error)
        if not launches:
            return state, error  # nothing was ever launched (a directory being set up by hand)
        if sup is None:
            return (
                "failed",
                "the launch was interrupted before the run's supervisor started; `ftui resume` starts it again",
            )
        return "failed", error or f"the run's supervisor exited before training started; see {self.log}"

    def job(
        self, launches: list[dict[str, Any]] | None = None, status: dict[str, Any] | None = None
    ) -> tuple[str | None, Any]:
        """(job id, what Slurm says of it: runner.machine.slurm.JobState) of a run submitted with
        --slurm: state UNKNOWN (reason: why) when Slurm cannot be asked from here, None when Slurm no
        longer knows the job; (None, None) for a local run. A run that ended a while ago is not
        asked about (lists refresh every second): its job's end is read from status.json."""
        job_id = _job_id(self.launches() if launches is None else launches)
        if job_id is None:
            return None, None
        from runner.machine import slurm

        status = self.status() if status is None else status
        state = status.get("state")
        if state in JOB_ENDS and time.time() - float(status.get("updated") or 0) > SETTLED_S:
            return job_id, slurm.JobState(JOB_ENDS[state], source="status.json")
        try:
            return job_id, slurm.job_state(job_id)
        except slurm.SlurmError as err:
            return job_id, slurm.JobState("UNKNOWN", str(err), source="error")

    def _explain_job(self, state: str, error: str, job_id: str) -> tuple[str, str]:
        """An active run of a Slurm job: the controller's word decides what is alive."""
        from runner.machine import slurm

        try:
            job = slurm.job_state(job_id)
        except slurm.SlurmError:
            return state, error  # no Slurm from here (not a login node): status.json as written
        if job is None:
            gone = f"Slurm no longer knows job {job_id} and the run did not record its end; see {self.log}"
            return ("failed" if state == "queued" else "dead"), error or gone
        if job.pending:
            return "queued", error
        if job.running:
            return state, error
        if job.state == "CANCELLED":
            return ("stopped", error) if self.stop_request.exists() else ("cancelled", error)
        if job.state == "COMPLETED":
            return "failed", error or f"the Slurm job ended without recording how the run ended; see {self.log}"
        if job.state == "TIMEOUT":
            return "failed", error or (
                f"Slurm job {job_id} reached its time limit before the run could checkpoint; `ftui resume` "
                "continues from the newest checkpoint (ask for a longer --time)"
            )
        return "failed", error or f"Slurm job {job_id} {job.label()} (exit {job.exit_code or '?'}); see {self.log}"

    def rank_processes(self) -> list[dict[str, Any]]:
        """The training processes the latest launch recorded on this host (runner.train.guard)."""
        found = []
        host = socket.gethostname()
        for path in sorted((self.path / "ranks").glob("*.json")):
            entry = read_json(path)
            if entry and entry.get("host") == host and isinstance(entry.get("pid"), int):
                found.append(entry)
        return found

    def live_rank_pids(self) -> list[int]:
        return [e["pid"] for e in self.rank_processes() if process_alive(e["pid"], e.get("start_time"))]

    def begin_launch_status(self, launch: int) -> None:
        """A fresh status.json for launch number `launch`: flags and errors belong to one launch
        (a `forced` stop or an old error must not colour how the next launch ends); progress stays."""
        old = self.status()
        keep = {k: old[k] for k in ("step", "total_steps", "loss", "eval_loss") if k in old}
        write_json_atomic(self.status_file, {**keep, "state": "queued", "launch": launch, "updated": time.time()})


def _job_id(launches: list[dict[str, Any]]) -> str | None:
    """The Slurm job of the latest launch (None: a local launch)."""
    job = (launches[-1].get("slurm") or {}).get("job_id") if launches else None
    return str(job) if job else None


RUNS_DIR_ENV = "FTUI_RUNS_DIR"


def default_runs_dir() -> Path:
    """Where runs go and are looked for: $FTUI_RUNS_DIR, else ./runs."""
    return Path(os.environ.get(RUNS_DIR_ENV, "runs")).expanduser()


def new_run_dir(root: Path, name: str) -> RunDir:
    """A fresh, uniquely named run directory under `root` (always an absolute path: the run's
    processes do not share the caller's working directory)."""
    root = root.expanduser().resolve()
    fix = f"choose a writable directory with --runs-dir DIR or {RUNS_DIR_ENV}=DIR"
    if root.exists() and not root.is_dir():
        raise RunError(f"the runs directory {root} is a file, not a directory; move it away or {fix}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create the runs directory {root}: {err.strerror}; {fix}") from None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = root / (f"{slug}-{stamp}" + (f"-{n}" if n else ""))
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise RunError(f"cannot create a run directory in {root}: {err.strerror}; {fix}") from None
        return RunDir(candidate)
    raise RunError(f"cannot create a run directory under {root}")


def is_run_dir(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() and ((path / "status.json").is_file() or (path / "launch.json").is_file())


def list_runs(root: Path) -> list[RunDir]:
    """Runs under `root`, newest first."""
    root = root.expanduser().resolve()
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(runs, key=lambda r: r.path.stat().st_mtime, reverse=True)


def find_run(ref: str, roots: list[Path]) -> RunDir:
    """A run by path, id, or unique id prefix, looked up under `roots`."""
    path = Path(ref).expanduser()
    if path.is_dir() and is_run_dir(path):
        return RunDir(path.resolve())
    matches = [r for root in roots for r in list_runs(root) if r.id == ref]
    if not matches:
        matches = [r for root in roots for r in list_runs(root) if r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(r.id for r in matches[:5])
        raise RunError(f"{ref!r} matches several runs ({names}); give more of the id")
    known = [r.id for root in roots for r in list_runs(root)][:8]
    where = ", ".join(str(r) for r in roots)
    hint = f" Runs there: {', '.join(known)}." if known else ""
    raise RunError(f"no run {ref!r} under {where}.{hint} Pass the run directory, or --runs-dir DIR.")


def request_stop(run: RunDir, grace_s: float = 10.0) -> str:
    """First call: ask the run to checkpoint and exit. Second call: kill its process group."""
    state = run.effective_state()
    if state not in ACTIVE:
        raise RunError(f"run {run.id} is {state}; nothing to stop")
    job_id, job = run.job()
    if job_id is not None:
        return _stop_job(run, state, job_id, job)
    if not run.stop_request.exists():
        run.stop_request.write_text(f"{time.time()}\n")
        if state != "queued":
            run.set_status("stopping")
        return "requested"
    sup = run.supervisor()
    groups = set()
    if sup is not None:
        last = run.launches()[-1]
        groups.add(int(last.get("pgid") or sup[0]))
    ranks = [e for e in run.rank_processes() if process_alive(e["pid"], e.get("start_time"))]
    groups |= {int(e["pgid"]) for e in ranks if e.get("pgid")}
    for pgid in groups:
        _kill_group(pgid, grace_s)
    for entry in ranks:  # a rank in a group of its own (a launcher that started a new session)
        _kill_pid(entry["pid"], entry.get("start_time"), grace_s)
    run.set_status("stopped", forced=True, last_error="killed by a second `ftui stop`")
    return "killed"


def _stop_job(run: RunDir, state: str, job_id: str, job: Any) -> str:
    """A Slurm run: a pending job is cancelled at once (nothing to save); a running one is asked to
    checkpoint and exit (its supervisor ends the step if that takes too long); asked twice, scancel."""
    from runner.machine import slurm

    asked = run.stop_request.exists() and not time_limit_pause(run.path)
    if job is not None and job.state == "UNKNOWN" and asked:
        raise RunError(f"cannot cancel Slurm job {job_id} from here: {job.reason}")
    if job is not None and job.pending or asked:
        run.stop_request.write_text(f"{time.time()}\n")
        try:
            slurm.cancel(job_id)
        except slurm.SlurmError as err:
            raise RunError(f"could not cancel Slurm job {job_id}: {err}") from None
        run.set_status(
            "stopped",
            phase="done",
            ended=time.time(),
            forced=asked,
            last_error=(
                f"Slurm job {job_id} cancelled by a second `ftui stop`" if asked else "stopped before the job started"
            ),
        )
        return "killed" if asked else "cancelled"
    run.stop_request.write_text(f"{time.time()}\n")
    if state != "queued":
        run.set_status("stopping")
    return "requested"


def await_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait on pidfds (no polling) until every pid has exited; the pids still alive at `timeout`."""
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        while fds:
            ready, _, _ = select.select(list(fds), [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            for fd in ready:
                os.close(fd)
                del fds[fd]
    finally:
        alive = list(fds.values())
        for fd in fds:
            os.close(fd)
    return alive


def _kill_pid(pid: int, start_time: int | None, grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not process_alive(pid, start_time):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if not await_exit([pid], grace_s):
            return


def _kill_group(pgid: int, grace_s: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
