"""Run directories: atomic status, liveness (and pid reuse), stop requests, lookup; checkpoint checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runner.rundir.checkpoints import inspect_checkpoint, newest_complete
from runner.rundir.metrics import MetricsTail, last_record
from runner.rundir.runs import (
    RunDir,
    RunError,
    find_run,
    list_runs,
    new_run_dir,
    process_alive,
    process_start_time,
    read_json,
    request_stop,
)
from runner.launch.supervise import last_error_line


def make_run(root: Path, name: str = "demo", state: str | None = None) -> RunDir:
    run = new_run_dir(root, name)
    run.recipe.write_text("tuner: lora\n")
    if state:
        run.set_status(state)
    return run


def test_run_ids_are_unique_and_slugged(tmp_path):
    a, b = new_run_dir(tmp_path, "my run!"), new_run_dir(tmp_path, "my run!")
    assert a.id != b.id and a.id.startswith("my-run-")


def test_status_writes_are_atomic_under_concurrent_readers(tmp_path):
    run = make_run(tmp_path, state="running")
    bad: list[str] = []

    def reader():
        for _ in range(300):
            if read_json(run.status_file) is None:
                bad.append("torn read")

    t = threading.Thread(target=reader)
    t.start()
    for step in range(300):
        run.set_status("running", step=step, payload="x" * 2000)
    t.join()
    assert not bad
    assert run.status()["step"] == 299


def test_a_live_process_is_alive_and_a_reused_pid_is_not():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = process_start_time(proc.pid)
        assert process_alive(proc.pid, started)
        assert not process_alive(proc.pid, started + 1)  # same pid, different process: not ours
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid, started)


def test_an_active_run_whose_supervisor_is_gone_is_dead(tmp_path):
    run = make_run(tmp_path, state="running")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run.record_launch({"argv": ["x"], "pid": proc.pid, "start_time": 1, "host": os.uname().nodename})
    assert run.effective_state() == "dead"
    run.set_status("finished")
    assert run.effective_state() == "finished"


def test_stop_asks_first_and_kills_the_group_the_second_time(tmp_path):
    run = make_run(tmp_path, state="running")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    run.record_launch(
        {
            "argv": ["x"],
            "pid": proc.pid,
            "pgid": proc.pid,
            "start_time": process_start_time(proc.pid),
            "host": os.uname().nodename,
        }
    )
    assert request_stop(run) == "requested"
    assert run.stop_request.exists() and run.status()["state"] == "stopping"
    assert proc.poll() is None  # a graceful stop leaves the process to checkpoint
    assert request_stop(run, grace_s=5) == "killed"
    assert proc.wait(timeout=10) in (-signal.SIGTERM, -signal.SIGKILL)
    assert run.status()["state"] == "stopped"
    with pytest.raises(RunError, match="nothing to stop"):
        request_stop(run)


def test_runs_are_found_by_id_prefix_or_path_with_helpful_errors(tmp_path):
    a = make_run(tmp_path, "alpha", "finished")
    make_run(tmp_path, "beta", "failed")
    make_run(tmp_path, "beta", "failed")
    assert find_run(a.id, [tmp_path]).path == a.path
    assert find_run("alpha", [tmp_path]).path == a.path
    assert find_run(str(a.path), []).path == a.path
    with pytest.raises(RunError, match="matches several runs"):
        find_run("beta", [tmp_path])
    with pytest.raises(RunError, match="no run 'gamma'.*Runs there"):
        find_run("gamma", [tmp_path])
    assert len(list_runs(tmp_path)) == 3


def test_metrics_tail_returns_only_complete_new_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []
    with open(path, "w") as fh:
        fh.write(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert [r["step"] for r in tail.read()] == [1]
    with open(path, "a") as fh:
        fh.write('ss": 1.5}\n' + json.dumps({"step": 3}) + "\n")
    assert [r["step"] for r in tail.read()] == [2, 3]
    assert tail.read() == []
    assert last_record(path) == {"step": 3}


def test_the_last_error_line_of_a_log_is_found(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("step 1\nTraceback (most recent call last):\n  File x\nValueError: bad column 'text'\nbye\n")
    assert last_error_line(log) == "ValueError: bad column 'text'"
    assert last_error_line(tmp_path / "missing.log") == ""


# --- checkpoints -------------------------------------------------------------------------


def plain_checkpoint(root: Path, step: int, world: int = 1, adapter: bool = True) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    for name in (
        "trainer_state.json",
        "optimizer.pt",
        "scheduler.pt",
        "adapter_model.safetensors" if adapter else "model.safetensors",
    ):
        (ckpt / name).write_text("x")
    for r in range(world):
        (ckpt / (f"rng_state_{r}.pth" if world > 1 else "rng_state.pth")).write_text("x")
    return ckpt


def test_a_complete_checkpoint_passes_and_a_broken_one_says_what_is_missing(tmp_path):
    ckpt = plain_checkpoint(tmp_path, 10)
    assert inspect_checkpoint(ckpt, 1).complete
    (ckpt / "optimizer.pt").unlink()
    report = inspect_checkpoint(ckpt, 1)
    assert report.missing == ("optimizer.pt",)


def test_rng_states_must_cover_every_rank_of_the_resume(tmp_path):
    ckpt = plain_checkpoint(tmp_path, 10, world=2)
    assert inspect_checkpoint(ckpt, 2).complete
    assert "rng_state_2.pth" in inspect_checkpoint(ckpt, 4).missing


def test_sharded_weights_need_every_shard_the_index_lists(tmp_path):
    ckpt = plain_checkpoint(tmp_path, 5, adapter=False)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    (ckpt / "model-00001-of-00002.safetensors").write_text("x")
    assert inspect_checkpoint(ckpt, 1).missing == ("model-00002-of-00002.safetensors",)


def deepspeed_checkpoint(root: Path, step: int, ranks: int) -> Path:
    ckpt = root / f"checkpoint-{step}"
    shards = ckpt / f"global_step{step}"
    shards.mkdir(parents=True)
    (ckpt / "latest").write_text(f"global_step{step}")
    for name in ("trainer_state.json", "model.safetensors"):
        (ckpt / name).write_text("x")
    (shards / "mp_rank_00_model_states.pt").write_text("x")
    for r in range(ranks):
        (shards / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_text("x")
        (ckpt / f"rng_state_{r}.pth").write_text("x")
    return ckpt


def test_deepspeed_checkpoints_need_the_latest_tag_and_every_ranks_shard(tmp_path):
    ckpt = deepspeed_checkpoint(tmp_path, 20, ranks=2)
    assert inspect_checkpoint(ckpt, 2).complete
    assert inspect_checkpoint(ckpt, 4).missing == (
        "global_step20/ optimizer shard of rank 2",
        "global_step20/ optimizer shard of rank 3",
        "rng_state_2.pth",
        "rng_state_3.pth",
    )
    (ckpt / "latest").write_text("global_step99")
    assert inspect_checkpoint(ckpt, 2).missing == ("global_step99/ (named by `latest`)",)


def test_resume_picks_the_newest_complete_checkpoint_and_reports_the_broken_newer_ones(tmp_path):
    plain_checkpoint(tmp_path, 10)
    broken = plain_checkpoint(tmp_path, 20)
    (broken / "scheduler.pt").unlink()
    best, skipped = newest_complete(tmp_path, 1)
    assert best.step == 10
    assert [(r.step, r.missing) for r in skipped] == [(20, ("scheduler.pt",))]
    assert newest_complete(tmp_path / "none", 1) == (None, [])
