"""The supervisor of a Slurm run: `python -m runner.launch.slurm_job --run-dir DIR`, started by the
batch script (RUN_DIR/slurm.sbatch) on the allocation's first node, once per start of the job.

It does what runner.launch.supervise does for a local launch (status.json, the run lock, the Hub
download, how the run ended), and what only a job needs:

- Every start, first or after a requeue, trains from the newest complete checkpoint, so a job that
  Slurm requeued (preemption, node failure) or that requeued itself resumes with nobody there.
- One `srun` step with one task per node runs runner.launch.slurm_node, which starts that node's
  launcher with node rank SLURM_NODEID and the rendezvous on this node's NodeAddr and a free port.
- SIGUSR1, sent by Slurm `--signal=B:USR1@N` seconds before the time limit: ask the trainer to
  checkpoint (the stop request); when it has, requeue the job (`scontrol requeue`) and let it start
  again at once. The run is `queued` meanwhile, with `requeued` in status.json.
- A stop request (`ftui stop`): the trainer saves and exits; if it has not within --stop-grace s the
  step is ended here, so a hung node cannot hold the allocation.
- SIGTERM (scancel, preemption): record it; a preempted job that Slurm requeues starts again here.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
import time

from runner.machine import slurm
from runner.rundir.lock import LockBusy, acquire_launch, share
from runner.rundir.runs import TIME_LIMIT_REQUEST, RunDir, time_limit_pause

from .build import free_port
from .slurm import recorded_grace


class JobSupervisor:
    def __init__(self, run: RunDir, job_id: str, restarts: int) -> None:
        self.run = run
        self.job_id = job_id
        self.restarts = restarts
        self.time_warning = False
        self.terminated = False
        self.grace_ended: int | None = None
        """The stop's grace (s) when the step had to be ended for it."""
        self.child: subprocess.Popen | None = None

    # signals -------------------------------------------------------------------------------

    def _on_usr1(self, *_):
        if self.run.stop_request.exists():
            return  # a user's stop is under way: it ends the run, no requeue
        self.time_warning = True
        self.run.stop_request.write_text(TIME_LIMIT_REQUEST)
        print("ftui: Slurm says the time limit is near: saving a checkpoint, then requeueing the job", flush=True)

    def _on_term(self, *_):
        self.terminated = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    # the run -------------------------------------------------------------------------------

    def start(self) -> int:
        from runner.recipe.resolve import detect_machine, resolve
        from runner.recipe.schema import load_recipe
        from runner.rundir.checkpoints import newest_complete

        from .build import build_launch, deepspeed_hostfile
        from .supervise import _download, free_interrupted_save

        run = self.run
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_term)
        if run.stop_request.exists() and not time_limit_pause(run.path):
            run.set_status("stopped", exit_code=0, last_error="stopped before it started", phase="done")
            run.stop_request.unlink(missing_ok=True)
            return 0
        run.stop_request.unlink(missing_ok=True)  # a time-limit request of the start before
        nodes = slurm.hostnames(os.environ.get("SLURM_JOB_NODELIST", socket.gethostname()))
        run.update_last_launch(
            slurm={
                **(run.launches()[-1].get("slurm") or {}),
                "job_id": self.job_id,
                "nodes": nodes,
                "restarts": self.restarts,
                "batch_host": socket.gethostname(),
            }
        )
        launch = run.launches()[-1]
        if launch.get("download") and not _download(run, launch["download"]):
            return 1
        settings = resolve(load_recipe(run.recipe), detect_machine())
        removed = free_interrupted_save(run)
        if removed:
            print(f"ftui: removed what an interrupted save left: {', '.join(removed)}", flush=True)
        best, _ = newest_complete(run.checkpoints, settings.world, require_marker=True)
        resume_from = str(best.path) if best else None
        master, port = slurm.node_address(nodes[0]), free_port()
        # The generated launcher files, once, here: the nodes only read them.
        node0 = build_launch(_at(settings, 0, master, port), run.path, resume_from=resume_from)
        files = dict(node0.files)
        if "hostfile" in files and "--include" not in node0.argv:  # --include names the placeholders
            files["hostfile"] = deepspeed_hostfile(settings, names=nodes)
        for name, text in files.items():
            (run.path / name).write_text(text, encoding="utf-8")
        what = f"from {best.path.name}" if best else "from the start"
        again = f" (start {self.restarts + 1} of the job)" if self.restarts else ""
        print(f"ftui: Slurm job {self.job_id} on {', '.join(nodes)}{again}: training {what}", flush=True)
        log_offset = run.log.stat().st_size if run.log.exists() else 0
        run.set_status(
            "running",
            phase="starting",
            exit_code=None,
            last_error="",
            started=time.time(),
            log_offset=log_offset,
            requeued=None,
        )
        argv = [
            "srun",
            f"--nodes={len(nodes)}",
            f"--ntasks={len(nodes)}",
            "--ntasks-per-node=1",
            "--kill-on-bad-exit=1",
            sys.executable,
            "-m",
            "runner.launch.slurm_node",
            "--run-dir",
            str(run.path),
            "--master-addr",
            master,
            "--master-port",
            str(port),
        ]
        if resume_from:
            argv += ["--resume-from", resume_from]
        code = self._wait(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        return self._end(code, log_offset)

    def _wait(self, child: subprocess.Popen) -> int:
        self.child = child
        grace = recorded_grace(self.run.launches())
        asked_at = None
        while True:
            try:
                return child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if asked_at is None and self.run.stop_request.exists():
                asked_at = time.monotonic()
            if asked_at is not None and time.monotonic() - asked_at > grace:
                print(f"ftui: the run did not stop within {grace} s of the request; ending the step", flush=True)
                self.grace_ended = grace
                child.terminate()
                asked_at = float("inf")

    def _end(self, code: int, log_offset: int) -> int:
        from .supervise import _record_end

        run = self.run
        if self.time_warning and code == 0 and not self.terminated:
            run.stop_request.unlink(missing_ok=True)
            run.set_status("queued", phase="requeued", requeued=time.time(), exit_code=None, last_error="")
            print(f"ftui: checkpoint saved; requeueing Slurm job {self.job_id}", flush=True)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue ends this process's job
            try:
                slurm.requeue(self.job_id)
                # Slurm holds a requeued batch job (Reason BeginTime) for the job credential's lifetime,
                # AuthInfo cred_expire (120 s by default): starting it sooner would meet the revoked credential.
                print(f"ftui: job {self.job_id} requeued; Slurm starts it again after its requeue hold", flush=True)
            except slurm.SlurmError as err:
                run.set_status("stopped", phase="done", last_error=f"could not requeue: {err}; `ftui resume` resubmits")
                return 1
            return 0
        if self.grace_ended is not None:
            run.stop_request.unlink(missing_ok=True)
            run.set_status(
                "stopped",
                exit_code=code,
                phase="done",
                ended=time.time(),
                forced=True,
                last_error=f"it did not stop within {self.grace_ended} s of the stop request, so the job ended it; "
                "`ftui resume` continues from the newest complete checkpoint",
            )
            return code
        if self.terminated and code != 0:
            stop = run.stop_request.exists() and not time_limit_pause(run.path)
            run.set_status(
                "stopped" if stop else "cancelled",
                exit_code=code,
                phase="done",
                ended=time.time(),
                last_error="" if stop else "the Slurm job was cancelled (scancel, or preempted)",
            )
            run.stop_request.unlink(missing_ok=True)
            return code
        _record_end(run, code, log_offset)
        return code


def _at(settings, node_rank: int, master: str, port: int):
    """`settings` for node `node_rank` of the job, with the job's rendezvous (torchrun: c10d, named
    after the job and its start, so a requeued start never meets a stale one)."""
    import dataclasses

    job = os.environ.get("SLURM_JOB_ID")
    rdzv = f"ftui-{job}-{os.environ.get('SLURM_RESTART_COUNT') or 0}" if job else None
    return dataclasses.replace(settings, node_rank=node_rank, master_addr=master, master_port=port, rendezvous_id=rdzv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.launch.slurm_job")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        print("ftui: runner.launch.slurm_job runs inside a Slurm job (sbatch RUN_DIR/slurm.sbatch)", file=sys.stderr)
        return 2
    run = RunDir(Path(os.path.abspath(args.run_dir)))
    try:
        lock = acquire_launch(run.path)
    except LockBusy:
        print(f"ftui: {run.id} already has a live launch; Slurm job {job} leaves it alone", file=sys.stderr)
        return 3
    share(lock)
    try:
        return JobSupervisor(run, job, int(os.environ.get("SLURM_RESTART_COUNT") or 0)).start()
    except Exception as err:  # recorded for `ftui runs`, then the traceback goes to train.log
        run.set_status("failed", phase="done", ended=time.time(), last_error=f"the job's supervisor failed: {err!r}")
        raise


if __name__ == "__main__":
    sys.exit(main())
