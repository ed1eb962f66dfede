"""`ftui train RECIPE`: resolve, check the plan, launch detached."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recipes import find_recipe
from runner.launch.download import describe
from runner.launch.lifecycle import PlanRefused, check_data, check_model_files, model_download, prepare, start_run
from runner.recipe.schema import RecipeError, dump_recipe
from runner.recipe.resolve import verdict
from runner.launch.slurm import STOP_GRACE_S, SlurmRequest, job_script
from runner.machine.slurm import SlurmError
from runner.rundir.runs import RunError, default_runs_dir

from . import follow
from .errors import CliError

EPILOG = """examples:
  ftui train recipes/tiny-demo.yaml                   the CPU demo: a tiny model, well under a minute
  ftui train tiny-demo --set train.max_steps=20       shipped recipes work by name too
  ftui train my.yaml --set train.lr=3e-5 --set distributed.gpus=4
  ftui train my.yaml --dry-run                        print the resolved recipe and the plan's verdict
  ftui train my.yaml --attach                         launch, then follow the log (Ctrl-C detaches)
  ftui train my.yaml --slurm --nodes 2 --partition gpu --time 24:00:00
                                                      submit a Slurm job (2 nodes of the partition's GPUs)
  ftui train my.yaml --slurm --nodes 4 --dry-run      print the batch script that would be submitted
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="launch a training run from a recipe (detached)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe (ftui recipes)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.lr=3e-5 (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="resolve and check, launch nothing")
    p.add_argument("--attach", action="store_true", help="follow the log after launching")
    p.add_argument("--raw", action="store_true", help="with --attach: print the log itself rather than the live view")
    p.add_argument("--force", action="store_true", help="launch even when the plan says it will not fit")
    p.add_argument("--runs-dir", type=Path, help="where the run directory goes (default ./runs or $FTUI_RUNS_DIR)")
    g = p.add_argument_group("Slurm (the run directory must be on a filesystem every node shares)")
    g.add_argument(
        "--slurm", action="store_true", help="submit the run as a Slurm batch job instead of starting it here"
    )
    g.add_argument("--partition", help="the partition (default: the cluster's default partition)")
    g.add_argument("--nodes", type=int, default=1, metavar="K", help="nodes to train on (default 1)")
    g.add_argument(
        "--gpus-per-node", type=int, metavar="G", help="GPUs per node (default: all a node of the partition has)"
    )
    g.add_argument(
        "--time", help="time limit, as sbatch takes it (e.g. 24:00:00); the job checkpoints and requeues before it"
    )
    g.add_argument("--account", help="the account to charge")
    g.add_argument("--gpu", help="the GPU type to plan for when sinfo does not name it (e.g. a100-80g)")
    g.add_argument(
        "--stop-grace",
        type=int,
        default=STOP_GRACE_S,
        metavar="S",
        help=f"after `ftui stop`, seconds the job may take to checkpoint before it is ended (default {STOP_GRACE_S})",
    )
    g.add_argument(
        "--sbatch-arg",
        dest="sbatch_args",
        action="append",
        default=[],
        metavar="ARG",
        help="one more sbatch option, e.g. --sbatch-arg=--qos=high (repeatable)",
    )
    p.set_defaults(run=run)


def slurm_request(args: argparse.Namespace) -> SlurmRequest | None:
    given = [f"--{k.replace('_', '-')}" for k in ("partition", "gpus_per_node", "time", "account") if getattr(args, k)]
    given += ["--nodes"] * (args.nodes != 1) + ["--sbatch-arg"] * bool(args.sbatch_args)
    given += ["--stop-grace"] * (args.stop_grace != STOP_GRACE_S)
    if not args.slurm:
        if given:
            raise CliError(f"{', '.join(dict.fromkeys(given))} only apply to Slurm jobs: add --slurm")
        return None
    request = SlurmRequest(
        partition=args.partition,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        time=args.time,
        account=args.account,
        sbatch_args=tuple(args.sbatch_args),
        stop_grace_s=args.stop_grace,
    )
    request.check()
    return request


def run(args: argparse.Namespace) -> int:
    path = find_recipe(args.recipe)
    if path is None:
        raise CliError(f"no recipe {args.recipe!r}: not a file, and not a shipped recipe (see `ftui recipes`)")
    try:
        request = slurm_request(args)
        if args.dry_run:
            return dry_run(path, args.overrides, request, args.gpu, args.runs_dir)
        started = start_run(path, args.overrides, runs_dir=args.runs_dir, force=args.force, slurm=request, gpu=args.gpu)
    except (RecipeError, PlanRefused, RunError, SlurmError) as err:
        raise CliError(str(err)) from None
    s, run_dir = started.settings, started.run
    for note in s.notes:
        print(f"note: {note}", file=sys.stderr)
    if started.job_id is not None:
        print(
            f"submitted {run_dir.id}: Slurm job {started.job_id}, {s.recipe.tuner} on {s.nodes} node(s) x "
            f"{s.gpus_per_node} {s.device} process(es) via {s.launcher}"
        )
        print(f"  run directory  {run_dir.path}")
        print(f"  follow         ftui logs {run_dir.id} -f      state  ftui runs      stop  ftui stop {run_dir.id}")
        if args.attach:
            return follow.attach(run_dir, raw=args.raw)
        return 0
    print(f"started {run_dir.id}: {s.recipe.tuner} on {s.world} {s.device} process(es) via {s.launcher}")
    print(f"  run directory  {run_dir.path}")
    print(f"  follow         ftui logs {run_dir.id} -f      stop  ftui stop {run_dir.id}")
    if args.attach:
        return follow.attach(run_dir, raw=args.raw)
    return 0


def dry_run(
    path: Path,
    overrides: list[str],
    request: SlurmRequest | None = None,
    gpu: str | None = None,
    runs_dir: Path | None = None,
) -> int:
    settings = prepare(path, overrides, slurm=request, gpu=gpu)
    data = check_data(settings)
    print(dump_recipe(settings.resolved_recipe(), f"# resolved from {path}"))
    tokens = data.get("approx_tokens", {})
    print(
        f"# data: {data['records']} records ({data['format']}), ~{tokens.get('mean', 0):.0f} tokens each "
        f"(p95 {tokens.get('p95', 0)}), {data.get('approx_overlong', 0)} longer than max_seq_len"
    )
    ok, problems = verdict(settings)
    check_model_files(settings)
    download = model_download(settings)
    if download is not None:
        print("\n".join("# " + line for line in describe(download).splitlines()))
    for note in settings.notes:
        print(f"# note: {note}")
    if settings.plan is not None:
        mem = settings.plan.memory
        print(
            f"# plan: needs {mem.required / 2**30:.1f} of {mem.capacity_bytes / 2**30:.1f} GiB per GPU; "
            f"{'fits' if ok else 'does NOT fit: ' + '; '.join(problems)}"
        )
    if request is not None:
        run_dir = (runs_dir or default_runs_dir()).expanduser().resolve() / "RUN-ID"
        job = job_script(run_dir, settings, request, sys.executable)
        print("# the batch script (RUN-ID: the run directory made at submission), submitted with:")
        print("#   " + " ".join(job.argv))
        print(job.text, end="")
    return 0 if ok else 3
