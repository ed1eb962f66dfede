"""End to end on the CPU, sharded: DeepSpeed ZeRO-2/3 (+ CPU offload) and FSDP full shard on two
processes over gloo, each rank's shards saved, stop -> resume and kill -9 -> resume from them.

Apart from tests/test_e2e_train.py so that the two heaviest groups of runs can go to different test
workers; the helpers are that file's.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tui.cli import main

from test_e2e_train import QUICK, check_finished, metrics, tail, train, wait_end, wait_step

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize(("zero", "offload"), [(2, "none"), (3, "none"), (3, "optimizer")])
def test_deepspeed_zero_on_two_cpu_processes(capsys, runs_dir, zero, offload):
    run = train(
        capsys,
        "distributed.gpus=2",
        f"distributed.zero={zero}",
        f"distributed.offload={offload}",
        "tuner=full",
        "train.precision=fp32",
        *QUICK,
    )
    assert run.launches()[-1]["launcher"] == "deepspeed"
    config = json.loads((run.path / "ds_config.json").read_text())
    assert config["zero_optimization"]["stage"] == zero
    check_finished(run)


def test_deepspeed_stop_and_resume_keeps_every_ranks_shards(capsys, runs_dir):
    from runner.rundir.checkpoints import inspect_checkpoint

    sets = [
        "distributed.gpus=2",
        "distributed.zero=2",
        "tuner=full",
        "train.precision=fp32",
        "train.max_steps=400",
        "train.save_steps=1000",
        "train.logging_steps=2",
    ]
    run = train(capsys, *sets)
    wait_step(run, 4)
    assert main(["stop", run.id]) == 0
    assert wait_end(run) == "stopped"
    step = run.status()["step"]
    report = inspect_checkpoint(run.checkpoints / f"checkpoint-{step}", world=2)
    assert report.complete, report.missing
    assert main(["resume", run.id]) == 0
    wait_step(run, step + 4)
    assert main(["stop", run.id]) == 0
    assert wait_end(run) == "stopped"
    steps = [m["step"] for m in metrics(run) if m.get("loss") is not None]
    assert steps == sorted(steps) and steps[-1] >= step + 4


@pytest.mark.parametrize("tuner", ["full", "lora", "qlora"])
def test_fsdp_full_shard_on_two_cpu_processes_trains_and_saves_every_ranks_shard(capsys, runs_dir, tuner):
    from runner.rundir.checkpoints import inspect_checkpoint

    run = train(capsys, "distributed.gpus=2", "distributed.fsdp=full_shard", f"tuner={tuner}", *QUICK)
    assert run.launches()[-1]["launcher"] == "torchrun"
    assert wait_end(run) == "finished", f"{run.explain()}\n{tail(run)}"
    ckpt = run.checkpoints / "checkpoint-12"
    assert inspect_checkpoint(ckpt, world=2, require_marker=True).complete
    assert {p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "adapter_model.safetensors").exists()
    assert not inspect_checkpoint(ckpt, world=1, require_marker=True).complete  # saved by 2 ranks, not 1
    final = run.path / "final"  # gathered into one full state dict other tools load
    assert (final / ("model.safetensors" if tuner == "full" else "adapter_model.safetensors")).is_file()
    assert [m["step"] for m in metrics(run) if m.get("loss") is not None][-1] == 12


def test_fsdp_stop_then_resume_keeps_the_step_count(capsys, runs_dir):
    run = train(
        capsys,
        "distributed.gpus=2",
        "distributed.fsdp=full_shard",
        "tuner=lora",
        "train.max_steps=400",
        "train.save_steps=1000",
        "train.logging_steps=2",
    )
    wait_step(run, 4)
    assert main(["stop", run.id]) == 0
    assert wait_end(run) == "stopped"
    step = run.status()["step"]
    assert (run.checkpoints / f"checkpoint-{step}" / "pytorch_model_fsdp_0").is_dir()
    assert main(["resume", run.id]) == 0
    wait_step(run, step + 4)
    assert main(["stop", run.id]) == 0
    assert wait_end(run) == "stopped"
    second = [m["step"] for m in metrics(run) if m.get("loss") is not None and m.get("launch") == 2]
    assert second and second[0] > step and second == sorted(second)
    assert run.launches()[-1]["resume_from"].endswith(f"checkpoint-{step}")


def test_fsdp_kill_minus_9_then_resume_finishes_from_the_sharded_checkpoint(capsys, runs_dir):
    from runner.rundir.checkpoints import MARKER

    sets = ["train.max_steps=40", "train.save_steps=6", "train.logging_steps=2"]  # room to kill before the end
    run = train(capsys, "distributed.gpus=2", "distributed.fsdp=full_shard", "tuner=full", *sets)
    deadline = time.monotonic() + 180
    while not (run.checkpoints / "checkpoint-6" / MARKER).exists():
        assert time.monotonic() < deadline and run.effective_state() in ("queued", "running"), tail(run)
        time.sleep(0.05)
    ranks = run.live_rank_pids()
    os.killpg(run.launches()[-1]["pgid"], signal.SIGKILL)
    for pid in ranks:  # torchrun's workers run in sessions of their own
        os.kill(pid, signal.SIGKILL)
    assert wait_end(run) == "dead"
    assert main(["resume", run.id]) == 0
    assert wait_end(run) == "finished", tail(run)
    assert run.launches()[-1]["resume_from"].endswith("-6") or run.launches()[-1]["resume_from"].endswith("-12")
    assert run.status()["step"] == 40
