"""End to end on the CPU: `ftui train` launches real, detached HF Trainer runs of the tiny demo model.

Each tuner trains; 2-process DDP over gloo; DeepSpeed ZeRO-2/3 (+ CPU offload); a 2-"node" run on
loopback; stop -> resume continues the step count and the loss curve; kill -9 -> dead -> resume.
Waiting for a run to end awaits its supervisor's exit (pidfd); waiting for a step reads status.json
against a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from recipes import find_recipe
from runner.rundir.runs import RunDir, list_runs
from tui.cli import main

from conftest import await_run_processes

pytest.importorskip("torch")
pytest.importorskip("transformers")

DEMO = str(find_recipe("tiny-demo"))
QUICK = ["train.max_steps=12", "train.save_steps=6", "train.logging_steps=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(capsys, *sets: str, recipe: str = DEMO) -> RunDir:
    argv = ["train", recipe]
    for item in sets:
        argv += ["--set", item]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    run_id = out.split()[1].rstrip(":")
    return RunDir(Path(os.environ["FTUI_RUNS_DIR"]) / run_id)


def wait_end(run: RunDir, timeout: float = 240) -> str:
    """Await the exit of the supervisor and every training process (pidfds), then return the run's state."""
    alive = await_run_processes(run, timeout)
    assert not alive, f"{run.id} still running after {timeout} s (pids {alive}):\n{tail(run)}"
    return run.effective_state()


def wait_step(run: RunDir, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.status()
        if (status.get("step") or 0) >= step:
            return
        assert run.effective_state() in ("queued", "running", "stopping"), tail(run)
        time.sleep(0.2)
    raise AssertionError(f"{run.id} did not reach step {step}:\n{tail(run)}")


def tail(run: RunDir, n: int = 40) -> str:
    try:
        return "\n".join(run.log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def metrics(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]


def losses(run: RunDir) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in metrics(run) if m.get("loss") is not None]


def check_finished(run: RunDir, steps: int = 12) -> None:
    state = wait_end(run)
    assert state == "finished", f"{state}: {run.status().get('last_error')}\n{tail(run)}"
    status = run.status()
    assert status["step"] == steps and status["exit_code"] == 0
    records = metrics(run)
    assert records and {
        "step",
        "total_steps",
        "loss",
        "lr",
        "grad_norm",
        "tokens",
        "tokens_per_s",
        "samples_per_s",
        "elapsed_s",
        "eta_s",
        "mem",
        "time",
    } <= set(records[0])
    assert (run.checkpoints / f"checkpoint-{steps}").is_dir() and (run.path / "final").is_dir()


# --- every tuner ---------------------------------------------------------------------------


@pytest.mark.parametrize("tuner", ["full", "freeze", "lora", "qlora", "lisa"])
def test_each_tuner_trains_the_tiny_model_detached(capsys, runs_dir, tuner):
    extra = ["lisa.layers=1", "lisa.interval=3"] if tuner == "lisa" else []
    run = train(capsys, f"tuner={tuner}", *QUICK, *extra)
    check_finished(run)
    curve = losses(run)
    assert curve[-1][1] < curve[0][1], f"loss did not fall: {curve}"
    trained = run.status()["trainable_params"]
    total = run.status()["total_params"]
    assert (trained == total) == (tuner in ("full", "lisa")), (trained, total)


def test_the_demo_recipe_as_shipped_learns_and_attach_follows_it(capsys, runs_dir):
    # Its wall time (well under a minute on an idle 2-core machine) is not asserted here: beside the
    # other test workers it is what the machine's load makes it.
    assert main(["train", DEMO, "--attach"]) == 0  # returns when the run has finished
    out, err = capsys.readouterr()
    assert "'loss'" not in out, out[:500]  # the trainer's raw log dicts are not what --attach shows
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert progress and progress[-1].startswith("step 80/80") and "loss " in progress[-1] and "tok/s" in out
    assert "is finished" in err
    run = list_runs(runs_dir)[0]
    check_finished(run, steps=80)
    curve = losses(run)
    assert curve[-1][1] < 0.75 * curve[0][1], curve
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert run.id in table and "finished" in table and "80/80" in table
    assert main(["logs", run.id]) == 0
    assert "train_loss" in capsys.readouterr().out


# --- several processes -----------------------------------------------------------------------


@pytest.mark.parametrize(("launcher", "tuner"), [("torchrun", "lora"), ("accelerate", "lora"), ("torchrun", "lisa")])
def test_two_process_ddp_over_gloo(capsys, runs_dir, launcher, tuner):
    extra = ["lisa.layers=1", "lisa.interval=3"] if tuner == "lisa" else []
    run = train(capsys, "distributed.gpus=2", f"distributed.launcher={launcher}", f"tuner={tuner}", *QUICK, *extra)
    assert run.launches()[-1]["launcher"] == launcher
    check_finished(run)
    first = metrics(run)[1]  # two processes x micro-batch 16 per step
    assert first["samples_per_s"] and first["tokens"] > 2 * 16 * first["step"]


def test_two_nodes_on_loopback(capsys, runs_dir):
    port = free_port()
    common = [
        "distributed.nodes=2",
        "distributed.gpus=1",
        "distributed.launcher=torchrun",
        f"distributed.master_port={port}",
        "tuner=lora",
        *QUICK,
    ]
    node0 = train(capsys, "distributed.node_rank=0", *common)
    node1 = train(capsys, "distributed.node_rank=1", *common)
    check_finished(node0)
    assert wait_end(node1) in ("finished", "stopped")
    assert metrics(node0) and not node1.metrics.exists()  # global rank 0 writes the metrics


# --- stop, kill, resume ----------------------------------------------------------------------


def test_stop_then_resume_continues_the_steps_and_the_loss_curve(capsys, runs_dir):
    run = train(capsys, "tuner=lora", "train.max_steps=400", "train.save_steps=1000", "train.logging_steps=2")
    wait_step(run, 6)
    assert main(["stop", run.id]) == 0
    assert wait_end(run) == "stopped"
    stopped_at = run.status()["step"]
    assert (run.checkpoints / f"checkpoint-{stopped_at}").is_dir()  # the stop saved where it stopped
    before = losses(run)
    assert main(["resume", run.id]) == 0
    wait_step(run, stopped_at + 6)
    assert main(["stop", run.id]) == 0
    assert wait_end(run) == "stopped"
    after = [(s, v) for s, v in losses(run) if s > stopped_at]
    steps = [s for s, _ in losses(run)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps  # no restart from 0
    assert after[0][0] > stopped_at
    assert abs(after[0][1] - before[-1][1]) < 0.5 * before[0][1], (before[-3:], after[:3])
    assert len(run.launches()) == 2 and run.launches()[-1]["resume_from"].endswith(f"checkpoint-{stopped_at}")


def test_kill_minus_9_is_seen_as_dead_and_resume_finishes_the_run(capsys, runs_dir):
    run = train(capsys, "tuner=full", "train.max_steps=60", "train.save_steps=4", "train.logging_steps=2")
    wait_step(run, 9)
    os.killpg(run.launches()[-1]["pgid"], signal.SIGKILL)
    wait_end(run)
    assert run.effective_state() == "dead"
    code = main(["runs", "--json"])
    listing = json.loads(capsys.readouterr().out)
    assert code == 0 and listing["runs"][0]["state"] == "dead"
    assert main(["resume", run.id]) == 0
    check_finished(run, steps=60)
    first_after = [s for s in (m["step"] for m in metrics(run))][-1]
    assert first_after == 60
    launches = len(run.launches())
    capsys.readouterr()
    assert main(["resume", run.id]) != 0  # a finished run has nothing left to train
    err = capsys.readouterr().err
    assert "finished" in err and "train.max_steps" in err and "Traceback" not in err
    assert len(run.launches()) == launches and [m["step"] for m in metrics(run)][-1] == 60


# --- what a user sees when something is wrong ----------------------------------------------


def test_a_malformed_recipe_is_refused_before_anything_starts(capsys, runs_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: x\ntrain:\n  lrr: 1\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: unknown key train.lrr (did you mean train.lr?)" in err and "Traceback" not in err
    assert not list_runs(runs_dir)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"dataset:\n  path: data.jsonl\n", "model.path is required"),
        (b"model:\n  path: x\n", "dataset.path is required"),
        (b"\x00\x01\xff\xfe", "not a text file"),
        (b"model:\n  path: x\ndataset:\n  path: d.jsonl\ntrain:\n  logging_steps: 0\n", "logging_steps"),
    ],
    ids=["no-model", "no-dataset", "binary", "logging-steps-0"],
)
def test_a_recipe_missing_its_parts_is_refused_by_name(capsys, runs_dir, tmp_path, content, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    for argv in (["train", str(bad)], ["train", str(bad), "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and "internal error" not in err
        assert str(tmp_path) + " has no config.json" not in err  # not the recipe's own directory
    assert not list_runs(runs_dir)


def test_a_runs_dir_that_is_a_file_is_refused_and_the_file_kept(capsys, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("keep me")
    assert main(["train", DEMO, "--runs-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "internal error" not in err
    assert blocker.read_text() == "keep me"


def test_a_dataset_with_the_wrong_columns_is_refused_at_launch(capsys, runs_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "a", "reply": "b"}\n')
    assert main(["train", DEMO, "--set", f"dataset.path={data}", "--set", "dataset.format=auto"]) == 2
    err = capsys.readouterr().err
    assert "question" in err and "alpaca" in err and "Traceback" not in err
    assert not list_runs(runs_dir)


def test_unknown_lora_targets_are_refused_at_launch(capsys, runs_dir):
    assert main(["train", DEMO, "--set", "tuner=lora", "--set", "lora.targets=no_such_module"]) == 2
    err = capsys.readouterr().err
    assert "lora.targets" in err and "q_proj" in err


def test_a_run_that_crashes_is_failed_with_its_error_line(capsys, runs_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(Path(find_recipe("tiny-demo")).parent / "tiny" / "model", model)
    (model / "tokenizer.json").write_text("{ not json")  # there, so the launch's checks pass; unreadable
    run = train(capsys, f"model.path={model}", *QUICK)  # fails in the training process
    assert wait_end(run) == "failed"
    status = run.status()
    assert status["exit_code"] != 0 and status["last_error"], status


def test_dry_run_prints_the_resolved_recipe_and_the_data_and_starts_nothing(capsys, runs_dir):
    assert main(["train", "tiny-demo", "--dry-run", "--set", "train.micro_batch=auto"]) == 0
    out = capsys.readouterr().out
    assert "micro_batch: 1" in out and "device: cpu" in out and "auto" not in out.split("# data")[0]
    assert "# data: 480 records (alpaca)" in out
    assert not list_runs(runs_dir)


def test_a_plan_that_does_not_fit_is_refused_unless_forced(capsys, runs_dir, monkeypatch):
    from runner.launch import lifecycle
    from runner.recipe.resolve import Machine

    t4 = Machine(gpu_names=("Tesla T4",), gpu_memory_mib=15360, host_ram_bytes=64 * 2**30)
    monkeypatch.setattr(lifecycle, "detect_machine", lambda: t4)
    big = str(find_recipe("qwen2.5-7b-lora"))
    data = str(Path(DEMO).parent / "tiny/data/instructions.jsonl")
    assert main(["train", big, "--set", f"dataset.path={data}", "--set", "tuner=full"]) == 2
    err = capsys.readouterr().err
    assert "will not fit" in err and "GiB per GPU" in err and "--force" in err
    assert not list_runs(runs_dir)


def test_the_shipped_recipes_are_listed_and_shown(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "tiny-demo" in out and "ftui train recipes/tiny-demo.yaml" in out
    assert main(["recipes", "show", "tiny-demo"]) == 0
    assert "tuner: full" in capsys.readouterr().out
    assert main(["recipes", "show", "nope"]) == 2


def test_a_relative_runs_directory_works_from_any_working_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FTUI_RUNS_DIR", raising=False)
    assert main(["train", "recipes/tiny-demo.yaml", "--set", "train.max_steps=4", "--attach"]) == 0
    runs = list_runs(Path("runs"))
    assert len(runs) == 1 and runs[0].path.is_absolute() and runs[0].status()["state"] == "finished"


def test_attach_raw_prints_the_log_and_the_live_view_renders_on_a_terminal(capsys, runs_dir):
    import io

    from rich.console import Console

    from tui import follow

    assert main(["train", DEMO, "--attach", "--raw", *[x for s in QUICK for x in ("--set", s)]]) == 0
    out, err = capsys.readouterr()
    assert "'loss'" in out and "is finished" in err  # --raw: the log itself
    run = list_runs(runs_dir)[0]
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    console.print(follow._view(run, metrics(run), "finished", ["a log line"], []))
    screen = console.file.getvalue()
    assert run.id in screen and "step 12/12" in screen and "ctrl-c detaches" in screen and "a log line" in screen


@pytest.mark.parametrize("tuner", ["full", "lora"])
def test_the_checkpoint_size_estimate_matches_what_a_save_writes(capsys, runs_dir, tuner):
    from runner.launch.lifecycle import checkpoint_bytes_estimate, prepare

    run = train(capsys, f"tuner={tuner}", *QUICK)
    assert wait_end(run) == "finished"
    ckpt = run.checkpoints / "checkpoint-12"
    written = sum(
        (ckpt / n).stat().st_size
        for n in ("model.safetensors", "adapter_model.safetensors", "optimizer.pt")
        if (ckpt / n).exists()
    )
    estimate = checkpoint_bytes_estimate(prepare(run.recipe, []))
    assert abs(estimate - written) < 0.10 * written, (estimate, written)


def test_a_run_whose_checkpoints_would_not_fit_the_disk_is_refused_before_launch(capsys, runs_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))  # the disk: hardware
    assert main(["train", DEMO, "--set", "train.save_total_limit=3"]) == 2
    err = capsys.readouterr().err
    assert "train.save_total_limit" in err and "4 x" in err and "GB free" in err and "Traceback" not in err
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


@pytest.mark.parametrize(
    ("remove", "init", "says"),
    [("tokenizer.json", "random", "has no tokenizer"), (None, "pretrained", "has no weights")],
)
def test_a_local_model_without_its_tokenizer_or_weights_is_refused_before_launch(
    capsys, runs_dir, tmp_path, remove, init, says
):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(Path(DEMO).parent / "tiny" / "model", model)
    if remove:
        (model / remove).unlink()
    code = main(["train", DEMO, "--set", f"model.path={model}", "--set", f"model.init={init}"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err
    assert not runs_dir.exists() or not list(runs_dir.iterdir())
