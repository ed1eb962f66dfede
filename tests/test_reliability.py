"""One trainer per run whatever gets killed, states derived from the processes that are really there,
checkpoints that count only when their save finished, a full disk named — and the soak that kills
a real run again and again (bench/soak.py, short and seeded here).

Each test is named after a failure seen when users broke things; real processes throughout (the
run lock, pidfds, tiny HF Trainer runs on the CPU), a tmpfs where a full disk is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.launch import supervise
from runner.launch.lifecycle import _no_hangup, resume_run
from runner.rundir.checkpoints import MARKER, inspect_checkpoint, interrupted, newest_complete, write_marker
from runner.rundir.lock import acquire_launch, held, share
from runner.rundir.runs import (
    RunDir,
    RunError,
    await_exit,
    new_run_dir,
    process_start_time,
    request_stop,
    write_json_atomic,
)

from conftest import REPO, await_run_processes

HOST = socket.gethostname()


def make_run(root: Path, state: str | None = None) -> RunDir:
    run = new_run_dir(root, "demo")
    run.recipe.write_text("tuner: lora\n")
    if state:
        run.set_status(state)
    return run


def sleeper(new_session: bool = True) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, start_new_session=new_session
    )


def lock_holder(run: RunDir) -> subprocess.Popen:
    """A process that holds the run's read lock, as a training process does (runner.train.guard)."""
    code = (
        "import sys; from pathlib import Path; from runner.rundir.lock import hold_shared\n"
        f"fd = hold_shared(Path({str(run.path)!r})); print('held' if fd is not None else 'no', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


# --- the run lock -------------------------------------------------------------------------------


def test_a_run_lock_refuses_a_second_launch_while_any_holder_lives_and_looking_takes_nothing(tmp_path):
    fd = acquire_launch(tmp_path)
    assert held(tmp_path)
    with pytest.raises(OSError):
        acquire_launch(tmp_path)
    share(fd)  # the supervisor's atomic downgrade: still refuses a launch
    with pytest.raises(OSError):
        acquire_launch(tmp_path)
    os.close(fd)
    assert not held(tmp_path)
    for _ in range(100):  # readers never make a launch fail
        held(tmp_path)
    os.close(acquire_launch(tmp_path))


def test_an_orphaned_trainer_keeps_the_run_running_and_refuses_a_resume(tmp_path):
    run = make_run(tmp_path, state="running")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run.record_launch({"argv": ["x"], "pid": gone.pid, "start_time": 1, "host": HOST})
    orphan = lock_holder(run)  # the supervisor is dead, a training process still holds the lock
    try:
        assert run.effective_state() == "running"  # not `dead` while it trains on
        with pytest.raises(RunError, match="already running"):
            resume_run(run)
        assert len(run.launches()) == 1
        assert request_stop(run) == "requested"  # stop reaches it (it reads stop.request), not "nothing to stop"
        assert run.stop_request.exists()
    finally:
        orphan.kill()
        orphan.wait()
    assert run.effective_state() == "dead"


# --- states derived, flags and errors per launch -----------------------------------------------


def test_a_launch_interrupted_before_its_supervisor_started_reads_failed_not_queued_forever(tmp_path):
    run = make_run(tmp_path)
    run.record_launch({"argv": ["x"], "host": HOST, "created": time.time()})  # the CLI died right here
    run.begin_launch_status(1)
    state, error = run.explain()
    assert state == "failed" and "interrupted" in error and "ftui resume" in error
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run.update_last_launch(pid=gone.pid, start_time=1)  # a supervisor that died before it ran anything
    state, error = run.explain()
    assert state == "failed" and str(run.log) in error


def test_a_hangup_in_the_first_second_of_train_does_not_kill_the_launch():
    before = signal.getsignal(signal.SIGHUP)
    with _no_hangup():
        os.kill(os.getpid(), signal.SIGHUP)  # the default action would end this process here
    assert signal.getsignal(signal.SIGHUP) == before  # and a hang-up after the launch acts as before


def test_after_a_double_stop_a_later_crash_reads_failed_not_stopped(tmp_path):
    run = make_run(tmp_path, state="running")
    run.set_status("stopped", forced=True, last_error="killed by a second `ftui stop`")
    run.record_launch({"argv": ["x"], "host": HOST})
    run.begin_launch_status(2)
    status = run.status()
    assert "forced" not in status and not status.get("last_error") and status["state"] == "queued"
    run.log.write_text("RuntimeError: the new launch broke\n")
    supervise._record_end(run, 1)
    assert run.status()["state"] == "failed"
    assert run.status()["last_error"] == "RuntimeError: the new launch broke"


def test_a_new_failure_does_not_show_an_older_launchs_error(tmp_path):
    run = make_run(tmp_path, state="running")
    run.log.write_text("Traceback ...\nValueError: the first launch's problem\n")
    offset = run.log.stat().st_size
    with open(run.log, "a") as fh:
        fh.write("step 1\nstep 2\n")
    supervise._record_end(run, 3, offset)
    assert run.status()["last_error"] == "the launcher exited with code 3"


def test_a_second_stop_reaches_every_recorded_rank_even_in_its_own_session(tmp_path):
    run = make_run(tmp_path, state="running")
    sup, rank = sleeper(), sleeper()  # a rank a launcher put in a session of its own
    run.record_launch(
        {"argv": ["x"], "pid": sup.pid, "pgid": sup.pid, "start_time": process_start_time(sup.pid), "host": HOST}
    )
    (run.path / "ranks").mkdir()
    write_json_atomic(
        run.path / "ranks" / f"{HOST}-rank1.json",
        {"pid": rank.pid, "start_time": process_start_time(rank.pid), "host": HOST, "rank": 1, "pgid": rank.pid},
    )
    assert run.live_rank_pids() == [rank.pid]
    assert request_stop(run) == "requested"
    assert request_stop(run, grace_s=5) == "killed"
    assert sup.wait(timeout=10) and rank.wait(timeout=10)  # both signalled
    assert run.live_rank_pids() == []


# --- checkpoints that count only when their save finished ---------------------------------------


def plain_checkpoint(root: Path, step: int, marker: bool = True) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors", "rng_state.pth"):
        (ckpt / name).write_bytes(b"x" * 100)
    if marker:
        write_marker(ckpt)
    return ckpt


def test_a_checkpoint_cut_short_by_a_kill_is_never_resumed_from(tmp_path):
    good = plain_checkpoint(tmp_path, 4)
    cut = plain_checkpoint(tmp_path, 8, marker=False)  # every file there, but the save never finished
    short = plain_checkpoint(tmp_path, 12)
    (short / "optimizer.pt").write_bytes(b"x" * 10)  # rewritten after its marker, and cut short
    best, skipped = newest_complete(tmp_path, 1, require_marker=True)
    assert best.path == good
    assert [(r.step, r.missing) for r in skipped] == [
        (12, ("optimizer.pt (10 bytes, saved as 100)",)),
        (8, (f"{MARKER} (the save did not finish)",)),
    ]
    assert inspect_checkpoint(cut, 1).complete  # without markers in use, the files decide (other tools' runs)
    assert interrupted(tmp_path, all_marked=True) == [cut]


def test_an_older_runs_checkpoints_without_markers_are_never_removed(tmp_path):
    plain_checkpoint(tmp_path, 4, marker=False)
    plain_checkpoint(tmp_path, 8, marker=False)
    assert interrupted(tmp_path, all_marked=False) == []


# --- real runs: the supervisor killed alone, two resumes at once, a full disk --------------------


pytest_train = pytest.importorskip  # the tests below train the tiny model


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    pytest_train("torch")
    pytest_train("transformers")
    from conftest import kill_runs

    monkeypatch.setenv("FTUI_RUNS_DIR", str(tmp_path / "runs"))
    yield tmp_path / "runs"
    kill_runs(tmp_path / "runs")


def start(runs_dir: Path, *sets: str) -> RunDir:
    from recipes import find_recipe
    from runner.launch.lifecycle import start_run

    return start_run(find_recipe("tiny-demo"), list(sets), runs_dir=runs_dir).run


def wait_for(run: RunDir, what, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, run.log.read_text(errors="replace")[-3000:]
        assert run.effective_state() in ("queued", "running", "stopping"), run.explain()
        time.sleep(0.05)


def step_of(run: RunDir) -> int:
    return int(run.status().get("step") or 0)


def test_killing_the_supervisor_alone_ends_its_trainer_and_the_resume_is_the_only_trainer(runs_dir):
    run = start(runs_dir, "tuner=lora", "train.max_steps=30", "train.save_steps=4", "train.logging_steps=1")
    wait_for(run, lambda: step_of(run) >= 5 and run.live_rank_pids())
    trainer = run.live_rank_pids()
    os.kill(run.launches()[-1]["pid"], signal.SIGKILL)  # the supervisor only
    assert await_exit(trainer, timeout=30) == []  # the trainer ends with it, unasked
    assert run.effective_state() == "dead"
    resume_run(run)
    assert await_run_processes(run, timeout=240) == []
    assert run.effective_state() == "finished" and run.status()["step"] == 30
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    launches = [r["launch"] for r in records]
    assert launches == sorted(launches) and set(launches) == {1, 2}  # never interleaved
    for n in (1, 2):
        steps = [r["step"] for r in records if r["launch"] == n and r["loss"] is not None]
        assert steps == sorted(set(steps))


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_every_rank_of_a_two_process_run_ends_with_its_killed_supervisor_and_a_double_stop_reaches_all(
    runs_dir, launcher
):
    sets = ["distributed.gpus=2", f"distributed.launcher={launcher}", "tuner=lora", "train.logging_steps=1"]
    if launcher == "deepspeed":
        sets += ["distributed.zero=2", "train.precision=fp32"]
    run = start(runs_dir, *sets, "train.max_steps=400", "train.save_steps=1000")
    wait_for(run, lambda: step_of(run) >= 2 and len(run.live_rank_pids()) == 2)
    ranks = run.live_rank_pids()
    assert all(os.getpgid(pid) != run.launches()[-1]["pgid"] for pid in ranks) or launcher == "deepspeed"
    os.kill(run.launches()[-1]["pid"], signal.SIGKILL)  # the supervisor only; the ranks are in other sessions
    assert await_exit(ranks, timeout=60) == []
    assert run.effective_state() == "dead"
    resume = resume_run(run)  # no checkpoint yet: it starts over, with two fresh ranks
    assert resume.run.launches()[-1]["resume_from"] is None
    wait_for(run, lambda: len(run.live_rank_pids()) == 2 and step_of(run) >= 1)
    ranks = run.live_rank_pids()
    assert request_stop(run) == "requested" and request_stop(run, grace_s=5) == "killed"
    assert await_exit(ranks, timeout=30) == []
    assert await_run_processes(run, timeout=30) == []
    assert run.effective_state() == "stopped"


def test_two_resumes_at_once_launch_one_and_the_other_says_why(runs_dir):
    run = start(runs_dir, "tuner=lora", "train.max_steps=400", "train.save_steps=2", "train.logging_steps=1")
    wait_for(run, lambda: (run.checkpoints / "checkpoint-2" / MARKER).exists())
    os.killpg(run.launches()[-1]["pgid"], signal.SIGKILL)
    assert await_run_processes(run, timeout=60) == []
    code = f"import sys; from tui.cli import main; sys.exit(main(['resume', {str(run.path)!r}]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code)
    assert "already running" in refused and "Traceback" not in refused
    assert len(run.launches()) == 2
    wait_for(run, lambda: run.live_rank_pids())
    assert request_stop(run) == "requested"
    assert await_run_processes(run, timeout=120) == []
    assert run.effective_state() == "stopped"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_during_a_save_is_a_named_failure_and_resume_says_how_much_to_free(tmp_path, monkeypatch):
    pytest_train("torch")
    pytest_train("transformers")
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "20m"):
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        runs = disk / "runs"
        monkeypatch.setenv("FTUI_RUNS_DIR", str(runs))
        run = start(runs, "tuner=full", "train.max_steps=40", "train.save_steps=4", "train.save_total_limit=5")
        # room for the launch's check; then something else fills the disk while it trains
        ballast = shutil.disk_usage(disk).free - 4 * 2**20
        (disk / "ballast").write_bytes(b"\0" * ballast)
        assert await_run_processes(run, timeout=240) == []
        state, error = run.explain()
        assert state == "failed" and "disk is full" in error and "save_total_limit" in error, (state, error)
        assert not list(run.path.glob(".*.tmp")) and not list(run.path.glob("ranks/.*.tmp"))
        assert all((c / MARKER).exists() for c in run.checkpoints.glob("checkpoint-*"))  # the partial one is gone
        code = subprocess.run(
            [sys.executable, "-m", "tui.cli", "resume", str(run.path)], cwd=REPO, capture_output=True, text=True
        )
        assert code.returncode == 2 and "not enough disk" in code.stderr and "GB" in code.stderr, code.stderr
        assert "Traceback" not in code.stderr
        (disk / "ballast").unlink()  # the user frees space
        resume_run(run)
        assert await_run_processes(run, timeout=240) == []
        assert run.effective_state() == "finished" and run.status()["step"] == 40
    finally:
        from conftest import kill_runs

        kill_runs(disk / "runs")
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- the soak -----------------------------------------------------------------------------------


def test_soak_kills_of_supervisor_trainer_or_both_at_steps_and_saves_end_finished(runs_dir):
    spec = importlib.util.spec_from_file_location("soak", REPO / "bench" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak  # its dataclasses look their module up
    spec.loader.exec_module(soak)
    counts = soak.soak(runs_dir, kills=4, seed=3, log=lambda *_: None).as_dict()
    assert counts["kills"] == 4 and counts["resumes"] == 4
    assert counts["max_trainers_seen"] == 1 and counts["final_state"] == "finished"
    assert counts["steps_lost_max"] <= 4
