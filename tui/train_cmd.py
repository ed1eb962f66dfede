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
from runner.rundir.runs import RunError

from . import follow
from .errors import CliError

EPILOG = """examples:
  ftui train recipes/tiny-demo.yaml                   the CPU demo: a tiny model, well under a minute
  ftui train tiny-demo --set train.max_steps=20       shipped recipes work by name too
  ftui train my.yaml --set train.lr=3e-5 --set distributed.gpus=4
  ftui train my.yaml --dry-run                        print the resolved recipe and the plan's verdict
  ftui train my.yaml --attach                         launch, then follow the log (Ctrl-C detaches)
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = find_recipe(args.recipe)
    if path is None:
        raise CliError(f"no recipe {args.recipe!r}: not a file, and not a shipped recipe (see `ftui recipes`)")
    try:
        if args.dry_run:
            return dry_run(path, args.overrides)
        started = start_run(path, args.overrides, runs_dir=args.runs_dir, force=args.force)
    except (RecipeError, PlanRefused, RunError) as err:
        raise CliError(str(err)) from None
    s, run_dir = started.settings, started.run
    for note in s.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"started {run_dir.id}: {s.recipe.tuner} on {s.world} {s.device} process(es) via {s.launcher}")
    print(f"  run directory  {run_dir.path}")
    print(f"  follow         ftui logs {run_dir.id} -f      stop  ftui stop {run_dir.id}")
    if args.attach:
        return follow.attach(run_dir, raw=args.raw)
    return 0


def dry_run(path: Path, overrides: list[str]) -> int:
    settings = prepare(path, overrides)
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
    return 0 if ok else 3
