"""Data sources: the replayed recording against an injected clock, the log and metrics tails of a real run
directory, run ownership of processes, and merging run lists."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from runner.rundir.runs import RunDir, new_run_dir, process_start_time
from runner.watch.info import FileLogTail, RunInfo
from runner.watch.replay import ReplayRunSource
from runner.watch.sources import DirRunSource, DirRunTail, merge_runs, run_info
from tui.demo import RECORDING

# The environment this test process was started with, before any test changes os.environ (see the
# ownership tests: /proc/<pid>/environ shows the environment at exec time).
EXEC_RANK = os.environ.get("RANK")


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]


RECORDS = records_of(RECORDING)
LOG = (RECORDING / "train.log").read_text().splitlines()
T_REC = RECORDS[0]["time"]
SPAN = RECORDS[-1]["time"] - T_REC  # seconds from the first record to the last


START = 5_000.0
"""What the injected clock reads when a replay is created (t = 0)."""


def replay(speed: float = 1.0) -> tuple[ReplayRunSource, Callable[[float], None]]:
    """A replay of the recording on a list-backed fake clock, and a function that sets the clock to t."""
    now = [START]
    source = ReplayRunSource(RECORDING, clock=lambda: now[0], speed=speed)
    return source, lambda t: now.__setitem__(0, START + t)


# --- replay ---------------------------------------------------------------------------------------------


def test_recording_is_what_these_tests_assume():
    assert len(RECORDS) > 100 and len(LOG) > 100
    assert [r["time"] for r in RECORDS] == sorted(r["time"] for r in RECORDS)
    assert RECORDS[1]["time"] > T_REC  # only the first record is at t = 0


def test_replay_starts_with_only_the_first_record():
    source, _clock = replay()
    tail = source.tail(source.run_id)
    assert tail.new_records() == [RECORDS[0]]
    assert tail.new_records() == []
    info = source.info(source.run_id)
    assert info.state == "running" and info.active
    assert info.step == RECORDS[0]["step"] and info.total_steps == RECORDS[0]["total_steps"]
    assert info.loss == RECORDS[0]["loss"]
    assert info.started == START


def test_replay_releases_records_in_time_order_each_exactly_once():
    source, clock = replay()
    tail = source.tail(source.run_id)
    got: list[dict] = []
    t = 0.0
    while t <= SPAN + 1:
        clock(t)
        batch = tail.new_records()
        # Everything due by now and nothing later: the released prefix ends exactly at the clock.
        assert all(r["time"] - T_REC <= t for r in batch)
        got += batch
        assert len(got) == sum(1 for r in RECORDS if r["time"] - T_REC <= t)
        assert tail.new_records() == []  # asking again at the same time gives nothing new
        t += 0.25
    assert got == RECORDS


def test_replay_releases_a_backlog_in_one_call():
    source, clock = replay()
    tail = source.tail(source.run_id)
    clock(SPAN / 2)
    first = tail.new_records()
    assert first == [r for r in RECORDS if r["time"] - T_REC <= SPAN / 2]
    clock(SPAN)
    assert first + tail.new_records() == RECORDS


def test_a_tail_opened_later_catches_up_on_the_history():
    source, clock = replay()
    early = source.tail(source.run_id)
    early.new_records()
    clock(30.0)
    late = source.tail(source.run_id)
    assert late.new_records() == [r for r in RECORDS if r["time"] - T_REC <= 30.0]


def test_replay_speed_scales_the_clock():
    fast, clock = replay(speed=10.0)
    tail = fast.tail(fast.run_id)
    clock(3.0)  # 30 s of the recording
    assert tail.new_records() == [r for r in RECORDS if r["time"] - T_REC <= 30.0]
    assert fast.info(fast.run_id).state == "running"
    clock(SPAN / 10)
    tail.new_records()
    assert fast.info(fast.run_id).state == "finished"
    slow, clock = replay(speed=1.0)
    clock(SPAN / 10)
    assert slow.info(slow.run_id).state == "running"


def test_info_runs_then_finishes_when_everything_is_released():
    source, clock = replay()
    clock(SPAN - 0.01)
    info = source.info(source.run_id)
    assert info.state == "running"
    assert info.step == RECORDS[-2]["step"]
    clock(SPAN)
    info = source.info(source.run_id)
    assert info.state == "finished" and not info.active
    assert info.step == RECORDS[-1]["step"] == info.total_steps
    # The last record is an eval (loss None): the loss shown is the last train loss.
    assert RECORDS[-1]["loss"] is None
    assert info.loss == [r["loss"] for r in RECORDS if r["loss"] is not None][-1]
    assert info.eta_s == RECORDS[-1]["eta_s"]
    plan = json.loads((RECORDING / "plan.json").read_text())
    assert info.planned_peak_gib == plan["per_gpu"]["peak_reserved_gib"]
    assert source.runs() == [info]


def test_stop_and_resume():
    source, clock = replay()
    assert source.stop(source.run_id) == "requested"
    assert source.info(source.run_id).state == "stopped"
    clock(SPAN + 10)
    assert source.info(source.run_id).state == "stopped"  # stopped wins over finished
    source.resume(source.run_id)
    assert source.info(source.run_id).state == "finished"
    source2, _clock = replay()
    source2.stop(source2.run_id)
    source2.resume(source2.run_id)
    assert source2.info(source2.run_id).state == "running"


def test_owner_maps_the_fake_gpu_pids_to_ranks():
    source, _clock = replay()
    for rank in range(8):
        assert source.owner(4100 + rank) == (source.run_id, rank)
    for pid in (4099, 4108, 1, os.getpid()):
        assert source.owner(pid) is None


def test_replay_log_keeps_pace_and_every_line_comes_out_once():
    source, clock = replay()
    tail = source.tail(source.run_id)
    lines: list[str] = []
    released = 0
    t = 0.0
    while t <= SPAN + 1:
        clock(t)
        released += len(tail.new_records())
        lines += tail.new_log_lines()
        assert tail.new_log_lines() == []  # nothing twice
        if released < len(RECORDS):
            # In step with the metrics: the same fraction of the log as of the records, within a line.
            assert abs(len(lines) / len(LOG) - released / len(RECORDS)) <= 1 / len(LOG) + 1e-9, t
        t += 0.5
    assert released == len(RECORDS)
    assert lines == LOG


# --- FileLogTail ----------------------------------------------------------------------------------------


def test_log_tail_of_a_big_file_starts_near_its_end(tmp_path):
    log = tmp_path / "train.log"
    lines = [f"line {i:06d} " + "x" * (i % 37) for i in range(20_000)]
    log.write_text("\n".join(lines) + "\n")
    assert log.stat().st_size > 8 * 64 * 1024

    tail = FileLogTail(log, last=10**6)
    got = tail.read()
    assert got[-1] == lines[-1]
    assert sum(len(line) + 1 for line in got) <= 64 * 1024  # only the file's last 64 KiB is read
    # The first element may be the cut-off end of a line; every later one is a complete, consecutive line.
    complete = got[1:]
    start = lines.index(complete[0])
    assert complete == lines[start:]
    assert sum(len(line) + 1 for line in complete) > 63 * 1024
    assert lines[0] not in got


def test_log_tail_first_read_keeps_the_last_lines(tmp_path):
    log = tmp_path / "train.log"
    lines = [f"line {i:05d}" for i in range(10_000)]
    log.write_text("\n".join(lines) + "\n")
    assert FileLogTail(log).read() == lines[-200:]
    assert FileLogTail(log, last=5).read() == lines[-5:]


def test_log_tail_returns_appended_lines_and_waits_for_a_partial_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("old 1\nold 2\n")
    tail = FileLogTail(log)
    assert tail.read() == ["old 1", "old 2"]  # a small file is read whole
    assert tail.read() == []
    with open(log, "a") as fh:
        fh.write("new 1\nnew 2\npart")
    assert tail.read() == ["new 1", "new 2"]
    with open(log, "a") as fh:
        fh.write("ial")
    assert tail.read() == []
    with open(log, "a") as fh:
        fh.write(" line\nnext\n")
    assert tail.read() == ["partial line", "next"]
    assert tail.read() == []


def test_log_tail_of_a_file_that_appears_later(tmp_path):
    log = tmp_path / "train.log"
    tail = FileLogTail(log)
    assert tail.read() == []
    log.write_text("a\nb\n")
    assert tail.read() == ["a", "b"]


# --- run directories ------------------------------------------------------------------------------------


def make_run(root: Path, *, state: str = "running", plan_gib: float | None = 36.0, **status) -> RunDir:
    run = new_run_dir(root, "qwen lora")
    run.recipe.write_text("tuner: lora\n")
    run.set_status(state, **status)
    if plan_gib is not None:
        run.plan.write_text(json.dumps({"per_gpu": {"peak_reserved_gib": plan_gib}, "fits": True}))
    return run


def append_records(run: RunDir, records: list[dict]) -> None:
    with open(run.metrics, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))


def record_own_launch(run: RunDir, created: float = 1234.5, **fields) -> None:
    pid = os.getpid()
    run.record_launch(
        {
            "pid": pid,
            "pgid": os.getpgid(pid),
            "start_time": process_start_time(pid),
            "host": socket.gethostname(),
            "created": created,
            **fields,
        }
    )


def test_run_info_reads_status_metrics_plan_and_launch(tmp_path):
    run = make_run(tmp_path, step=0, total_steps=600)
    record_own_launch(run, created=1111.0)
    record_own_launch(run, created=2222.0)
    append_records(run, RECORDS[:10])
    info = run_info(run)
    assert info.id == run.id and info.path == run.path and info.tool == "ftui"
    assert info.state == "running"  # its supervisor (this process) is alive
    assert info.step == RECORDS[9]["step"] and info.total_steps == 600
    assert info.loss == RECORDS[9]["loss"] and info.eta_s == RECORDS[9]["eta_s"]
    assert info.started == 1111.0  # the first launch
    assert info.planned_peak_gib == 36.0
    assert info.pids == (os.getpid(),)
    assert info.last_error == ""


def test_run_info_falls_back_to_the_status(tmp_path):
    run = make_run(tmp_path, state="failed", plan_gib=None, step=40, total_steps=600, loss=1.75, last_error="OOM")
    info = run_info(run)
    assert (info.state, info.step, info.total_steps, info.loss, info.last_error) == ("failed", 40, 600, 1.75, "OOM")
    assert info.eta_s is None and info.started is None and info.planned_peak_gib is None and info.pids == ()
    # An eval record (loss None) last: the loss comes from status.json, which keeps the last train loss.
    append_records(run, [{"step": 100, "total_steps": 600, "loss": None, "eval_loss": 1.6, "time": 1.0}])
    assert run_info(run).loss == 1.75 and run_info(run).step == 100


def test_run_info_survives_a_broken_plan(tmp_path):
    run = make_run(tmp_path)
    run.plan.write_text("{not json")
    assert run_info(run).planned_peak_gib is None


def test_run_info_of_a_run_whose_supervisor_is_gone_is_dead(tmp_path):
    run = make_run(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run.record_launch({"pid": child.pid, "start_time": 1, "host": socket.gethostname()})
    assert run_info(run).state == "dead"


def test_dir_tail_returns_only_new_records_and_log_lines(tmp_path):
    run = make_run(tmp_path)
    append_records(run, RECORDS[:3])
    run.log.write_text("starting\n")
    tail = DirRunTail(run)
    assert tail.new_records() == RECORDS[:3]  # what is there when the tail opens
    assert tail.new_log_lines() == ["starting"]
    assert tail.new_records() == [] and tail.new_log_lines() == []
    append_records(run, RECORDS[3:5])
    with open(run.log, "a") as fh:
        fh.write("step 4\nstep 5\n")
    assert tail.new_records() == RECORDS[3:5]
    assert tail.new_log_lines() == ["step 4", "step 5"]
    with open(run.metrics, "a") as fh:
        fh.write(json.dumps(RECORDS[5])[:40])  # half-written record: held back
    assert tail.new_records() == []
    with open(run.metrics, "a") as fh:
        fh.write(json.dumps(RECORDS[5])[40:] + "\n")
    assert tail.new_records() == [RECORDS[5]]


def test_dir_source_lists_and_reads_runs(tmp_path):
    run = make_run(tmp_path, state="finished")
    append_records(run, RECORDS[:2])
    (tmp_path / "not-a-run").mkdir()
    extra = RunInfo("foreign", tmp_path / "foreign", "finished", tool="hf")
    source = DirRunSource(tmp_path, extra=(lambda: [extra],))
    assert [r.id for r in source.runs()] == [run.id, "foreign"]
    assert source.info(run.id) == run_info(run)
    assert source.tail(run.id).new_records() == RECORDS[:2]
    with pytest.raises(KeyError):
        source.info("no-such-run")


# --- ownership of processes -----------------------------------------------------------------------------


def test_owner_is_none_without_a_run_in_our_process_group(tmp_path):
    assert DirRunSource(tmp_path).owner(os.getpid()) is None
    other = make_run(tmp_path)
    other.record_launch({"pid": 1, "pgid": os.getpgid(os.getpid()) + 1, "created": 1.0})
    assert DirRunSource(tmp_path).owner(os.getpid()) is None


def test_owner_only_looks_at_the_latest_launch(tmp_path):
    run = make_run(tmp_path)
    record_own_launch(run)
    run.record_launch({"pid": 1, "pgid": os.getpgid(os.getpid()) + 1, "created": 2.0})
    assert DirRunSource(tmp_path).owner(os.getpid()) is None


def test_owner_of_our_own_process(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    make_run(tmp_path)  # a second run, not ours
    record_own_launch(run)
    # process_rank reads /proc/<pid>/environ, which shows the environment the process was exec'd with;
    # setting RANK in os.environ now does not change it. So our own rank is whatever RANK this test
    # process started with (normally none), never the value set here.
    monkeypatch.setenv("RANK", "97")
    expected = int(EXEC_RANK) if EXEC_RANK is not None else None
    assert DirRunSource(tmp_path).owner(os.getpid()) == (run.id, expected)


@pytest.fixture
def child_processes():
    """Start Python children that wait on stdin; close it and reap them afterwards."""
    started: list[subprocess.Popen] = []

    def start(code: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport sys\nsys.stdin.read()"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            **kwargs,
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"  # it is up (and has run `code`)
        return proc

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    return {**env, **extra}


def test_owner_reads_a_rank_process_s_rank(tmp_path, child_processes):
    run = make_run(tmp_path)
    record_own_launch(run)  # the launch's process group is ours, which children inherit
    rank3 = child_processes("", clean_env(RANK="3"))
    no_rank = child_processes("", clean_env())
    bad_rank = child_processes("", clean_env(RANK="x"))
    source = DirRunSource(tmp_path)
    assert source.owner(rank3.pid) == (run.id, 3)
    assert source.owner(no_rank.pid) == (run.id, None)
    assert source.owner(bad_rank.pid) == (run.id, None)


def test_owner_sees_the_exec_time_environment(tmp_path, child_processes):
    run = make_run(tmp_path)
    record_own_launch(run)
    # RANK set inside the process after it started is not in /proc/<pid>/environ.
    late = child_processes("import os\nos.environ['RANK'] = '5'", clean_env())
    assert DirRunSource(tmp_path).owner(late.pid) == (run.id, None)


def test_owner_of_a_process_in_another_group_or_gone(tmp_path, child_processes):
    run = make_run(tmp_path)
    record_own_launch(run)
    elsewhere = child_processes("", clean_env(RANK="2"), start_new_session=True)
    source = DirRunSource(tmp_path)
    assert source.owner(elsewhere.pid) is None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert source.owner(gone.pid) is None


# --- merging --------------------------------------------------------------------------------------------


def test_merge_runs_sorts_newest_first():
    def info(run_id: str, started: float | None) -> RunInfo:
        return RunInfo(run_id, Path(run_id), "finished", started=started)

    a = lambda: [info("a", 100.0), info("never-started", None)]
    b = lambda: [info("b", 300.0)]
    c = lambda: [info("c", 200.0)]
    assert [r.id for r in merge_runs(a, b, c)] == ["b", "c", "a", "never-started"]
    assert merge_runs() == []
    assert merge_runs(lambda: []) == []
