"""One node of a Slurm run: `python -m runner.launch.slurm_node --run-dir DIR --master-addr A
--master-port P [--resume-from CKPT]`, the task of the job's srun step (one per node).

It builds this node's launcher exactly as a local multi-node launch would (runner.launch.build),
with node rank SLURM_NODEID and the job's rendezvous, and runs it. It is the node's local
supervisor: the training processes watch it (FTUI_SUPERVISOR) and end with it, and it ends with
the step (srun delivers SIGTERM/SIGKILL here). The launcher files (accelerate.yaml, hostfile,
ds_config.json) were written once by the job's supervisor; nodes only read them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from runner.rundir.runs import RunDir, process_start_time

from .build import PACKAGE_ROOT, build_launch
from .slurm_job import _at
from .supervise import SUPERVISOR_ENV, _die_with_parent


def main(argv: list[str] | None = None) -> int:
    from runner.recipe.resolve import detect_machine, resolve
    from runner.recipe.schema import load_recipe

    parser = argparse.ArgumentParser(prog="python -m runner.launch.slurm_node")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", required=True, type=int)
    parser.add_argument("--resume-from")
    args = parser.parse_args(argv)
    run = RunDir(Path(os.path.abspath(args.run_dir)))
    node_rank = int(os.environ.get("SLURM_NODEID", "0"))
    settings = _at(resolve(load_recipe(run.recipe), detect_machine()), node_rank, args.master_addr, args.master_port)
    plan = build_launch(settings, run.path, resume_from=args.resume_from)
    node = os.environ.get("SLURMD_NODENAME", "?")
    print(f"ftui: node {node} (node rank {node_rank}): {shlex.join(plan.argv)}", flush=True)
    env = {**os.environ, **plan.env, SUPERVISOR_ENV: f"{os.getpid()}:{process_start_time(os.getpid()) or ''}"}
    env["PYTHONPATH"] = plan.env.get("PYTHONPATH", str(PACKAGE_ROOT))
    child = subprocess.Popen(
        plan.argv, stdin=subprocess.DEVNULL, env=env, cwd=PACKAGE_ROOT, preexec_fn=_die_with_parent
    )

    def forward(sig, _frame):
        if child.poll() is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
