"""Bare `ftui` (the app) and `ftui monitor RUN` (the app opened on one run).

Textual is imported only here, when the app starts, so `ftui plan` and friends stay fast; `tui.cli` imports
this module for the app's options on every command, so the runner is imported inside the functions too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import CliError

EPILOG = """examples:
  ftui monitor tiny-demo                  a run under ./runs (a unique id prefix is enough)
  ftui monitor runs/qwen-lora-20261122-101500
  ftui monitor saves/llama3-lora          a LLaMA-Factory / ms-swift / HF Trainer output dir
  ftui monitor llamafactory:llama3-lora --watch saves    by the id `ftui runs --watch saves` lists
"""

APP_HELP = """keys: g GPUs · p planner · r runs · q quit (runs keep going) · ctrl+l launch from the planner
  ftui                     open the app on ./runs and the GPUs NVML sees
  ftui --demo              a recorded 8 x H100 LoRA run on fake GPUs (no GPU needed)
  ftui --watch saves       also list runs of other tools found under saves/"""


def add_app_options(parser: argparse.ArgumentParser) -> None:
    """Options of bare `ftui` (they open the app)."""
    parser.add_argument("--demo", action="store_true", help="replay a recorded run on fake GPUs (no GPU needed)")
    _common(parser)
    parser.epilog = APP_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, help="where runs are (default ./runs or $FTUI_RUNS_DIR)")
    add_watch_option(parser)


def add_watch_option(parser: argparse.ArgumentParser, what: str = "list") -> None:
    """--watch DIR, repeatable (also accepted before the subcommand: `ftui --watch saves runs`)."""
    parser.add_argument(
        "--watch",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help=f"also {what} runs of other tools under DIR (HF Trainer, LLaMA-Factory, ms-swift); repeatable",
    )


def watch_dirs(args: argparse.Namespace) -> tuple[Path, ...]:
    """The --watch directories, resolved; a CliError names one that is not a directory."""
    dirs = []
    for given in getattr(args, "watch", None) or []:
        path = Path(given).expanduser()
        if not path.is_dir():
            what = "is a file, not a directory" if path.exists() else "does not exist"
            raise CliError(f"--watch {given}: {what}; give a directory that holds other tools' output directories")
        resolved = path.resolve()
        if resolved not in dirs:
            dirs.append(resolved)
    return tuple(dirs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="live view of one run (loss chart, speed, ETA, memory, log)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ref", metavar="RUN", help="run id, id prefix, or run directory")
    _common(p)
    p.set_defaults(run=run_monitor)


def _needs_terminal() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CliError(
            "the ftui app needs a terminal (stdin and stdout are not one here); "
            "for scripts use `ftui runs --json`, `ftui logs RUN -f` or `ftui plan --json`"
        )


def launch_recipe(recipe: Path) -> Path:
    """The app's launcher: `ftui train RECIPE`, detached; returns the new run directory."""
    from runner.launch.lifecycle import start_run

    return start_run(recipe, []).run.path


def run_app(args: argparse.Namespace, open_run: str | None = None, extra_watch: list[Path] | None = None) -> int:
    watch_dirs(args)  # a missing --watch dir is the error to report, terminal or not
    _needs_terminal()
    from runner.machine.host import host_ram_bytes
    from runner.rundir.runs import default_runs_dir
    from runner.watch.sources import DirRunSource, NvmlGpuSource

    from .app.app import FtuiApp

    if getattr(args, "demo", False):
        return _run_demo()
    root = (args.runs_dir or default_runs_dir()).expanduser().resolve()
    watch = watch_dirs(args)
    watch += tuple(p.expanduser().resolve() for p in extra_watch or [] if p.expanduser().resolve() not in watch)

    app = FtuiApp(
        NvmlGpuSource(),
        DirRunSource(root, watch=watch),
        open_run=open_run,
        launcher=launch_recipe,
        runs_root=root,
        host_ram=host_ram_bytes,
    )
    app.run()
    return 0


def _run_demo() -> int:
    from runner.machine.fake_nvml import FakeNvml
    from runner.watch.replay import ReplayRunSource
    from runner.watch.sources import NvmlGpuSource

    from .app.app import FtuiApp
    from .demo import RECORDING

    runs = ReplayRunSource(RECORDING)
    FtuiApp(NvmlGpuSource(FakeNvml("8xh100")), runs, open_run=runs.run_id, initial_tab="runs").run()
    return 0


def monitor_target(args: argparse.Namespace) -> tuple[str, Path | None, list[Path]]:
    """(run id to open, runs dir for an ftui run, watch dirs to add) for `ftui monitor RUN`: ftui's run id or
    directory, another tool's output directory or `<tool>:<dir>` id (as the Runs tab lists them); a directory of
    runs is a CliError listing them."""
    from runner.rundir.runs import RunDir, RunError, default_runs_dir
    from runner.watch.locate import listed, locate

    root = (args.runs_dir or default_runs_dir()).expanduser().resolve()
    watch = watch_dirs(args)
    try:
        run = locate(args.run_ref, [root], watch, command="monitor")
    except RunError as err:
        raise CliError(str(err)) from None
    if isinstance(run, RunDir):
        return run.id, run.path.parent, []
    shown, extra = listed(run.path, watch)  # the id the app's list will give it
    return shown.id, None, extra


def run_monitor(args: argparse.Namespace) -> int:
    run_id, runs_dir, extra = monitor_target(args)
    if runs_dir is not None:
        args.runs_dir = runs_dir
    return run_app(args, open_run=run_id, extra_watch=extra)
