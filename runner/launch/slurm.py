"""Slurm runs: what a job asks for, and the batch script that starts a run on the allocation.

The commands themselves (sbatch, squeue, scancel, ...) are behind runner.machine.slurm.

How a run becomes a job (`ftui train RECIPE --slurm`):

- The run directory is written as for a local run (recipe.yaml, plan.json) on the shared
  filesystem, then `RUN_DIR/slurm.sbatch` and `sbatch --parsable` with the job's options. The job
  id goes into the launch record (`launch.json`: `slurm.job_id`).
- The batch script runs `python -m runner.launch.slurm_job` on the allocation's first node. That
  process is the run's supervisor there: it picks the newest complete checkpoint (so a requeued
  job resumes by itself), writes status.json, and starts ONE `srun` step with one task per node,
  `python -m runner.launch.slurm_node`, which builds that node's launcher and runs it: torchrun
  with a c10d rendezvous at the first node's NodeAddr and a free port, accelerate with machine rank
  SLURM_NODEID, DeepSpeed with a hostfile of the job's nodes (SLURM_JOB_NODELIST).
- `--signal=B:USR1@N`: Slurm signals the batch process N seconds before the time limit; the
  supervisor asks the trainer to checkpoint (the stop request), and when it has, requeues the job
  (`scontrol requeue`), which then starts again from that checkpoint. `--requeue` lets Slurm requeue
  it after a preemption or a node failure as well.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from runner.machine import slurm
from runner.machine.slurm import SlurmError, time_limit_s
from runner.recipe.resolve import Machine, RunSettings

from .build import PACKAGE_ROOT

WARN_BEFORE_END_S = 300
"""Seconds before the time limit that the batch step is told to checkpoint (`--signal`); a
checkpoint of a 70B model's adapter takes seconds, a full 8B with optimizer states a minute or two."""
STOP_GRACE_S = 600
"""After a stop request, how long the job may take to checkpoint and exit before it is ended."""


@dataclass(frozen=True)
class SlurmRequest:
    """What `ftui train --slurm` asks the cluster for."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int | None = None
    """GPUs (processes) per node; None: the partition's GPUs per node, or 1 on a CPU partition."""
    time: str | None = None
    """Time limit as sbatch takes it (MM, HH:MM:SS, D-HH:MM:SS)."""
    account: str | None = None
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)
    """Extra sbatch options, each one argument (`--qos=high`, `--exclusive`)."""
    stop_grace_s: int = STOP_GRACE_S
    """After a stop request, how long the job may take to checkpoint and exit before its step is ended."""

    def check(self) -> None:
        if self.nodes < 1:
            raise SlurmError(f"--nodes {self.nodes}: a job needs at least one node")
        if self.stop_grace_s < 1:
            raise SlurmError(f"--stop-grace {self.stop_grace_s}: give the seconds a checkpoint may take (1 or more)")
        if self.gpus_per_node is not None and self.gpus_per_node < 1:
            raise SlurmError(f"--gpus-per-node {self.gpus_per_node}: give 1 or more")
        if self.time is not None and time_limit_s(self.time) is None:
            raise SlurmError(
                f"--time {self.time!r} is not a Slurm time limit: use MM, HH:MM:SS or D-HH:MM:SS (e.g. 24:00:00)"
            )
        for arg in self.sbatch_args:
            if not arg.startswith("-") or "\n" in arg:
                raise SlurmError(f"--sbatch-arg {arg!r}: give one sbatch option per flag, e.g. --sbatch-arg=--qos=high")

    def warn_before_end_s(self) -> int:
        """When to signal before the end: WARN_BEFORE_END_S, but within the first half of a short job."""
        limit = time_limit_s(self.time) if self.time else None
        return WARN_BEFORE_END_S if limit is None else max(30, min(WARN_BEFORE_END_S, limit // 2))


# --- the batch script ----------------------------------------------------------------------


def sbatch_options(
    request: SlurmRequest, run_id: str, gpus_per_node: int, cuda: bool, cpus_per_task: int | None = None
) -> list[str]:
    """The job's options: written into the script as #SBATCH lines and meant to be read there."""
    opts = [
        f"--job-name=ftui-{run_id}",
        f"--nodes={request.nodes}",
        "--ntasks-per-node=1",  # one launcher per node; it starts the node's processes itself
        "--requeue",  # after a preemption or a node failure the job starts again (and resumes)
        f"--signal=B:USR1@{request.warn_before_end_s()}",  # checkpoint before the time limit
        "--open-mode=append",  # a requeued job appends to train.log
    ]
    if cuda:
        opts.append(f"--gpus-per-node={gpus_per_node}")
    if cpus_per_task:
        # Slurm's default is one CPU per task: one launcher's G processes and their data loaders
        # would then share a single core.
        opts.append(f"--cpus-per-task={cpus_per_task}")
    if request.partition:
        opts.append(f"--partition={request.partition}")
    if request.time:
        opts.append(f"--time={request.time}")
    if request.account:
        opts.append(f"--account={request.account}")
    return opts + list(request.sbatch_args)


def job_cpus(request: SlurmRequest) -> int | None:
    """CPUs for each node's launcher: the node's share for the GPUs asked for (all of them for a whole
    node or a CPU partition); None when sinfo cannot say."""
    try:
        part = slurm.partition(request.partition)
    except SlurmError:
        return None
    if not part.cpus_per_node:
        return None
    if part.gpus_per_node and request.gpus_per_node and request.gpus_per_node < part.gpus_per_node:
        return max(1, part.cpus_per_node * request.gpus_per_node // part.gpus_per_node)
    return part.cpus_per_node


def batch_script(run_dir: Path, options: list[str], python: str, env: dict[str, str]) -> str:
    lines = [
        "#!/bin/bash",
        f"# The Slurm job of ftui run {run_dir.name}. Submitted by `ftui train --slurm`; `ftui resume`",
        "# submits it again. The first node runs the run's supervisor, which starts one srun step",
        "# with one launcher per node (python -m runner.launch.slurm_node).",
        *(f"#SBATCH {opt}" for opt in options),
        "set -e",
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
        f"exec {shlex.quote(python)} -m runner.launch.slurm_job --run-dir {shlex.quote(str(run_dir))}",
    ]
    return "\n".join(lines) + "\n"


def job_script(run_dir: Path, settings: RunSettings, request: SlurmRequest, python: str) -> JobScript:
    """The batch script of `settings` as a job of `request`, and how it is submitted."""
    env = {"PYTHONPATH": str(PACKAGE_ROOT), "PYTHONUNBUFFERED": "1"}
    cuda = settings.device == "cuda"
    options = sbatch_options(request, run_dir.name, settings.gpus_per_node, cuda, job_cpus(request))
    return JobScript(batch_script(run_dir, options, python, env), sbatch_argv(run_dir / SCRIPT, run_dir), env)


@dataclass(frozen=True)
class JobScript:
    text: str
    argv: list[str]
    """The sbatch command that submits it."""
    env: dict[str, str]


SCRIPT = "slurm.sbatch"


def sbatch_argv(script: Path, run_dir: Path) -> list[str]:
    """The submission: paths on the command line (never parsed out of a #SBATCH line)."""
    return ["sbatch", "--parsable", f"--output={run_dir / 'train.log'}", f"--chdir={run_dir}", str(script)]


# --- what the job runs on ------------------------------------------------------------------


def job_machine(request: SlurmRequest, gpu: str | None = None) -> tuple[Machine, str | None, list[str]]:
    """The machine to plan for (the partition's GPUs, K nodes of G), the GPU type, and the recipe
    overrides that say so (distributed.nodes/gpus/device). SlurmError when the partition cannot
    give what is asked for or its GPUs have no known type."""
    from planner import gpu_spec

    request.check()
    part = slurm.partition(request.partition)
    cuda = part.gpus_per_node > 0 or gpu is not None
    per_node = request.gpus_per_node or part.gpus_per_node or 1
    if not cuda:
        device, machine, name = "cpu", Machine(), None
    else:
        name = gpu or part.gpu_type
        if name is None:
            raise SlurmError(
                f"partition {part.name} has {part.gpus_per_node} GPU(s) per node but its Gres names no type; "
                "say which with --gpu (e.g. --gpu a100-80g)"
            )
        try:
            spec = gpu_spec(name)
        except ValueError as err:
            raise SlurmError(f"the GPUs of partition {part.name} ({name}): {err}; say which with --gpu") from None
        if part.gpus_per_node and per_node > part.gpus_per_node:
            raise SlurmError(
                f"--gpus-per-node {per_node}: the nodes of partition {part.name} have {part.gpus_per_node} GPU(s)"
            )
        device, machine, name = "cuda", Machine((spec.name,) * per_node, spec.memory_mib), spec.key
    overrides = [f"distributed.nodes={request.nodes}", f"distributed.gpus={per_node}", f"distributed.device={device}"]
    return machine, name, overrides


def request_json(request: SlurmRequest) -> dict:
    return {**dataclasses.asdict(request), "sbatch_args": list(request.sbatch_args)}


def recorded_request(launches: list[dict]) -> SlurmRequest | None:
    """What the latest launch of a run asked Slurm for (None: not a Slurm run)."""
    job = (launches[-1].get("slurm") or {}) if launches else {}
    return request_from_json(job["request"]) if job.get("request") else None


def recorded_grace(launches: list[dict]) -> int:
    """Seconds the latest launch's job may take to stop after `ftui stop` (its request's, else the default)."""
    request = recorded_request(launches)
    return request.stop_grace_s if request is not None else STOP_GRACE_S


def request_from_json(data: dict) -> SlurmRequest:
    fields = {f.name for f in dataclasses.fields(SlurmRequest)}
    kept = {k: v for k, v in data.items() if k in fields}
    kept["sbatch_args"] = tuple(kept.get("sbatch_args") or ())
    return SlurmRequest(**kept)
