"""Finding the run a command names: one of ftui's runs, another tool's run, or neither (and why).

A reference is a path or an id. A path may be ftui's run directory, another tool's output directory, or a directory
that holds runs (then the caller gets the list to choose from, never the first one). An id is ftui's run id (or a
unique prefix), or the `<tool>:<dir>` id the lists show for other tools' runs (found again under the watched
directories the list was made from).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from runner.rundir.runs import RunDir, RunError, find_run, is_run_dir, list_runs

from . import foreign
from .foreign import ForeignRun

TOOLS = ("hf", "llamafactory", "swift")
_FOREIGN_ID = re.compile(rf"({'|'.join(TOOLS)}):(.+)")
FORMATS = (
    "ftui's (recipe.yaml and status.json), LLaMA-Factory's (trainer_log.jsonl), ms-swift's (logging.jsonl) "
    "or the HF Trainer's (trainer_state.json, checkpoint-N/ or TensorBoard events in runs/)"
)


@dataclass(frozen=True)
class Listed:
    """A run found inside a directory that was given where one run is needed."""

    id: str
    tool: str
    path: Path


class ManyRuns(RunError):
    """A directory of runs was given where one run is needed: the message lists them, `runs` holds them."""

    def __init__(self, message: str, runs: list[Listed]) -> None:
        super().__init__(message)
        self.runs = runs


def runs_inside(path: Path) -> list[Listed]:
    """ftui's runs directly in `path`, and other tools' runs in it or below (as `ftui --watch PATH` lists them)."""
    ours = [Listed(r.id, "ftui", r.path) for r in list_runs(path)]
    return ours + [Listed(r.id, r.tool, r.path) for r in foreign.scan([path])]


def _many(path: Path, runs: list[Listed], command: str) -> ManyRuns:
    shown = "\n".join(f"  {r.id:<40} {r.tool:<12} {r.path}" for r in runs[:20])
    more = f"\n  ... and {len(runs) - 20} more" if len(runs) > 20 else ""
    first = runs[0]
    pick = first.path if first.tool != "ftui" else first.id
    count = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
    return ManyRuns(
        f"{path} is not a run directory; it holds {count}: pass one of them (its directory, or its id with the "
        f"--runs-dir / --watch it was listed under), e.g. `ftui {command} {pick}`:\n{shown}{more}",
        runs,
    )


def listed(path: Path, watch: Sequence[Path]) -> tuple[ForeignRun, list[Path]]:
    """The foreign run whose output directory is `path`, as a list over `watch` names it, and the directories to
    add to `watch` for the list to show it ([] when a watched directory already does, else [path])."""
    path = path.resolve()
    watch = [w.resolve() for w in watch]
    for dirs, extra in ((watch, []), ([*watch, path], [path])):
        found = next((r for r in foreign.scan(dirs) if r.path == path), None) if dirs else None
        if found:
            return found, extra
    raise RunError(f"{path} is not a run directory ({FORMATS})")


def _foreign_at(path: Path, watch: Sequence[Path]) -> ForeignRun:
    return listed(path, watch)[0]


def _by_path(path: Path, watch: Sequence[Path], command: str) -> RunDir | ForeignRun:
    if is_run_dir(path):
        return RunDir(path.resolve())
    if foreign.detect(path.resolve()):
        return _foreign_at(path, watch)
    inside = runs_inside(path)
    if inside:  # even one: a directory of runs is not a run, and opening one of them would be a guess
        raise _many(path, inside, command)
    raise RunError(f"{path} is not a run directory ({FORMATS}) and holds no run")


def _unique(ref: str, runs: list[ForeignRun], key) -> ForeignRun | None:
    exact = [r for r in runs if key(r) == ref]
    found = exact or [r for r in runs if key(r).startswith(ref)]
    if len(found) > 1:
        names = ", ".join(r.id for r in found[:5])
        raise RunError(f"{ref!r} matches several runs ({names}); give more of the id")
    return found[0] if found else None


def _by_foreign_id(ref: str, tool: str, rest: str, watch: Sequence[Path]) -> ForeignRun:
    found = _unique(ref, foreign.scan(watch), lambda r: r.id) if watch else None
    if found:
        return found
    guess = Path(rest).expanduser()  # the id's dir part is often the path from here
    if guess.is_dir() and (foreign.detect(guess.resolve()) or (None,))[0] == tool:
        return _foreign_at(guess, watch)
    where = f" under {', '.join(map(str, watch))}" if watch else ""
    raise RunError(
        f"no {tool} run {ref!r}{where}. Ids like this are given to other tools' runs found under a watched "
        "directory: pass the same --watch DIR the list was made with, or the run's output directory"
    )


def locate(
    ref: str, roots: Sequence[Path], watch: Iterable[Path] = (), command: str = "monitor"
) -> RunDir | ForeignRun:
    """The run `ref` names (see the module's docstring); RunError (ManyRuns for a directory of runs) otherwise."""
    watch = tuple(Path(w).expanduser() for w in watch)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _by_path(path, watch, command)
    match = _FOREIGN_ID.fullmatch(ref)
    if match:
        return _by_foreign_id(ref, match[1], match[2], watch)
    try:
        return find_run(ref, list(roots))
    except RunError:
        by_name = _unique(ref, foreign.scan(watch), lambda r: r.id.partition(":")[2]) if watch else None
        if by_name:
            return by_name
        raise


# --- the processes of a run ftui did not launch -----------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    pid: int
    command: str


def _inside(target: Path, path: str) -> bool:
    try:
        return Path(path).is_relative_to(target)
    except ValueError:
        return False


def _uses(pid: str, target: Path) -> bool:
    """Whether process `pid` has a file open under `target`, or names it (or a path inside) on its command line."""
    proc = Path("/proc", pid)
    try:
        fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
    except OSError:
        fds = []
    if any(_inside(target, fd) for fd in fds):
        return True
    try:
        cwd = os.readlink(proc / "cwd")
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    for arg in argv[1:]:
        text = arg.decode("utf-8", errors="replace").partition("=")[2] or arg.decode("utf-8", errors="replace")
        if text and ("/" in text or text == target.name) and _inside(target, os.path.normpath(Path(cwd, text))):
            return True
    return False


def processes_using(path: Path) -> list[Process]:
    """Processes this user can see that have files open in `path` or name it in their arguments (not this one)."""
    target = path.resolve()
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not _uses(entry.name, target):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        out.append(Process(int(entry.name), " ".join(a.decode("utf-8", errors="replace") for a in argv)[:200]))
    return out
