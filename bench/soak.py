"""Kill a real run over and over and check that it still ends right.

    python bench/soak.py [--kills 24] [--seed 7] [--runs-dir DIR]

Trains the tiny demo model (full fine-tuning, one CPU process) and, `--kills` times, kills the
supervisor, the trainer or both with SIGKILL, at a random step or while a checkpoint is being
written, then resumes (the same code path as `ftui resume`). Checked all along, and at the end:

- one trainer: never more than one `runner.train` process of the run alive (read from /proc, not
  from ftui's own records), and the orphan of a killed supervisor exits on its own;
- no partial checkpoint loaded: every resume starts from a checkpoint whose completion marker
  matches what is on disk;
- at most one save interval lost per kill;
- a monotone step sequence: metrics.jsonl groups by launch, in launch order, training steps
  strictly increasing within each launch (an evaluation record shares its step);
- `finished` at the end, at max_steps.

Prints the counts (kills by target and moment, resumes, steps lost, partial checkpoints skipped).
The CI test (tests/test_reliability.py) runs a short, seeded version of the same function.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from recipes import find_recipe  # noqa: E402
from runner.launch.lifecycle import resume_run, start_run  # noqa: E402
from runner.rundir.checkpoints import MARKER, inspect_checkpoint  # noqa: E402
from runner.rundir.runs import ACTIVE, RunDir, await_exit  # noqa: E402

TARGETS = ("supervisor", "trainer", "both")
MOMENTS = ("step", "save")


class SoakFailure(AssertionError):
    pass


@dataclass
class Counts:
    kills: dict[str, int] = field(default_factory=dict)
    resumes: int = 0
    steps_lost: list[int] = field(default_factory=list)
    partial_checkpoints_skipped: int = 0
    orphans_ended: int = 0
    max_trainers_seen: int = 0
    final_step: int | None = None
    final_state: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "kills": sum(self.kills.values()),
            "kills_by": dict(sorted(self.kills.items())),
            "resumes": self.resumes,
            "steps_lost_total": sum(self.steps_lost),
            "steps_lost_max": max(self.steps_lost, default=0),
            "partial_checkpoints_skipped": self.partial_checkpoints_skipped,
            "orphans_ended": self.orphans_ended,
            "max_trainers_seen": self.max_trainers_seen,
            "final_step": self.final_step,
            "final_state": self.final_state,
            "seconds": round(self.seconds, 1),
        }


def trainers(run: RunDir) -> list[int]:
    """pids of live `runner.train` processes of this run, from /proc (independent of ftui's records)."""
    found = []
    needle = str(run.path).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"runner.train" in cmd and needle in cmd:
            found.append(int(entry.name))
    return found


def _partial(run: RunDir) -> list[Path]:
    if not run.checkpoints.is_dir():
        return []
    return [p for p in run.checkpoints.glob("checkpoint-*") if p.is_dir() and not (p / MARKER).exists()]


def _watch(run: RunDir, counts: Counts, until, timeout: float = 180) -> None:
    """Poll `until()` every millisecond (a save of the tiny model takes a few) until it holds;
    every 50 ms check that one trainer at most is alive and that the run is still active."""
    deadline = time.monotonic() + timeout
    checked = 0.0
    while not until():
        now = time.monotonic()
        if now - checked > 0.05:
            checked = now
            live = trainers(run)
            counts.max_trainers_seen = max(counts.max_trainers_seen, len(live))
            if len(live) > 1:
                raise SoakFailure(f"{len(live)} trainers of {run.id} alive at once: {live}")
            state = run.effective_state()
            if state not in ACTIVE:
                if until():  # it got there between the two looks (the last wait: for the run's end)
                    return
                raise SoakFailure(f"{run.id} became {state} before the kill: {run.status().get('last_error')}")
            if now > deadline:
                raise SoakFailure(f"{run.id} did not get there in {timeout} s (step {run.status().get('step')})")
        time.sleep(0.001)


def _kill(run: RunDir, target: str, counts: Counts) -> int:
    """Kill `target`; returns the step the run had reached."""
    launch = run.launches()[-1]
    step = int(run.status().get("step") or 0)
    trainer = trainers(run)
    if target in ("supervisor", "both"):
        os.kill(int(launch["pid"]), signal.SIGKILL)
    if target in ("trainer", "both"):
        for pid in trainer:
            os.kill(pid, signal.SIGKILL)
    left = await_exit([int(launch["pid"]), *trainer], timeout=60)
    if left:
        raise SoakFailure(f"processes of {run.id} outlived the kill of the {target}: {left}")
    if target == "supervisor" and trainer:
        counts.orphans_ended += 1  # the trainer ended with its supervisor, without being killed
    return step


def _check_metrics(run: RunDir) -> None:
    records = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
    last_launch, last_step = 0, -1
    for rec in records:
        launch = rec.get("launch")
        if launch is None:
            raise SoakFailure(f"a metrics record without its launch: {rec}")
        if launch < last_launch:
            raise SoakFailure(f"metrics of launch {launch} after launch {last_launch}: interleaved trainers")
        if launch != last_launch:
            last_step = -1
        train_record = rec.get("loss") is not None  # an evaluation record shares its step
        if rec["step"] < last_step or (train_record and rec["step"] == last_step):
            raise SoakFailure(f"step {rec['step']} after step {last_step} within launch {launch}")
        last_launch, last_step = launch, rec["step"]


def soak(runs_dir: Path, kills: int, seed: int, save_steps: int = 4, log=print) -> Counts:
    rng = random.Random(seed)
    max_steps = kills * 4 * save_steps + 4 * save_steps  # room for saves that slip by
    started = time.monotonic()
    counts = Counts()
    sets = [
        "tuner=full",
        f"train.max_steps={max_steps}",
        f"train.save_steps={save_steps}",
        "train.logging_steps=1",
        "train.save_total_limit=2",
    ]
    run = start_run(find_recipe("tiny-demo"), sets, runs_dir=runs_dir).run
    for n in range(kills):
        target, moment = rng.choice(TARGETS), rng.choice(MOMENTS)
        if moment == "save":  # caught while writing; if a save slips by, the next one is tried
            _watch(run, counts, lambda: bool(_partial(run)) and bool(run.live_rank_pids()))
        else:
            at = int(run.status().get("step") or 0) + rng.randint(1, 2 * save_steps)
            _watch(run, counts, lambda at=at: int(run.status().get("step") or 0) >= at and bool(run.live_rank_pids()))
        step = _kill(run, target, counts)
        label = f"{target}@{'save' if _partial(run) else 'step'}"  # a save may have finished first
        counts.kills[label] = counts.kills.get(label, 0) + 1
        state = run.effective_state()
        if state in ACTIVE:
            raise SoakFailure(f"{run.id} reads {state} after every process was killed")
        counts.partial_checkpoints_skipped += len(_partial(run))
        resume_run(run)
        counts.resumes += 1
        origin = run.launches()[-1]["resume_from"]
        if origin is None:  # killed before its first save finished: it starts over
            name, lost = "the start", step
        else:
            report = inspect_checkpoint(Path(origin), 1, require_marker=True)
            if not report.complete:
                raise SoakFailure(f"resumed from an incomplete checkpoint {Path(origin).name}: {report.missing}")
            name, lost = Path(origin).name, max(step - report.step, 0)
        if lost > save_steps:
            raise SoakFailure(f"kill {n + 1} at step {step} lost {lost} steps (save interval {save_steps})")
        counts.steps_lost.append(lost)
        log(f"kill {n + 1}/{kills}: {label} at step {step}; resumed from {name}, lost {lost}")
    _watch(run, counts, lambda: run.effective_state() not in ACTIVE, timeout=600)
    left = await_exit(trainers(run), timeout=60)
    counts.final_state = run.effective_state()
    counts.final_step = run.status().get("step")
    counts.seconds = time.monotonic() - started
    if left:
        raise SoakFailure(f"trainers left after the end: {left}")
    if counts.final_state != "finished" or counts.final_step != max_steps:
        raise SoakFailure(f"ended {counts.final_state} at step {counts.final_step}, not finished at {max_steps}")
    _check_metrics(run)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="ftui-soak-"))
    try:
        counts = soak(root, args.kills, args.seed, args.save_steps)
    except SoakFailure as err:
        print(f"soak FAILED: {err}", file=sys.stderr)
        return 1
    print(json.dumps(counts.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
