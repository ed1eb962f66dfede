"""A recipe naming a Hub model that is not cached: checked before launch, downloaded once by the run's
supervisor (state `downloading`), then trained from the cache. Against a stand-in hub on 127.0.0.1
serving a tiny model repo built here; nothing reaches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipes import find_recipe
from runner.rundir.runs import RunDir
from tui.cli import main

from conftest import await_run_processes, kill_runs
from hub_support import GOOD_TOKEN, OTHER_TOKEN

pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = find_recipe("tiny-demo").parent / "tiny" / "model"
REPO = "acme/tiny-llama"


@pytest.fixture(scope="module")
def tiny_repo_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a real (tiny, random) model repo: weights as HF saves them, its config and tokenizer,
    plus what a run must not fetch (an `original/` checkpoint, a GGUF, a .bin duplicate)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-repo")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).save_pretrained(out)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    files.update({p.name: p.read_bytes() for p in TINY.iterdir() if p.is_file() and p.name != "config.json"})
    files.update({"original/consolidated.00.pth": b"x" * 5000, "tiny.Q4_K_M.gguf": b"GGUF" * 100})
    files["pytorch_model.bin"] = b"y" * 3000
    return files


@pytest.fixture
def recipe(tmp_path) -> Path:
    text = find_recipe("tiny-demo").read_text()
    text = text.replace(
        "  path: tiny/model            # config.json + tokenizer next to this file; no weights\n", f"  path: {REPO}\n"
    )
    text = text.replace(
        "  init: random                # build the architecture from config.json\n", "  init: pretrained\n"
    )
    data = find_recipe("tiny-demo").parent / "tiny" / "data" / "instructions.jsonl"
    text = text.replace("path: tiny/data/instructions.jsonl", f"path: {data}")
    path = tmp_path / "hub-recipe.yaml"
    path.write_text(text)
    assert f"path: {REPO}" in text and "init: pretrained" in text
    return path


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FTUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # the run's processes read it from the environment
    yield tmp_path / "runs"
    kill_runs(tmp_path / "runs")


def only_run(runs: Path) -> RunDir:
    dirs = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    assert len(dirs) == 1, dirs
    return RunDir(dirs[0])


def test_a_hub_model_not_in_the_cache_is_downloaded_once_by_the_run_and_trains(
    hub, hf_home, tiny_repo_files, recipe, runs, capsys
):
    hub.add(REPO, files=dict(tiny_repo_files))
    sets = ["--set", "train.max_steps=6", "--set", "train.save_steps=6", "--set", "train.logging_steps=2"]
    assert main(["train", str(recipe), "--dry-run", *sets]) == 0
    listing = capsys.readouterr().out
    assert f"model {REPO}@main" in listing and "model.safetensors" in listing and "tokenizer.json" in listing
    assert "gguf" not in listing and "original/" not in listing and "pytorch_model.bin" not in listing
    assert not runs.exists() or not list(runs.iterdir())  # a dry run starts nothing
    assert main(["train", str(recipe), *sets]) == 0, capsys.readouterr().err
    run = only_run(runs)
    assert run.launches()[-1]["download"]["repo_id"] == REPO
    assert await_run_processes(run, timeout=240) == []
    state, error = run.explain()
    assert state == "finished", (error, run.log.read_text()[-3000:])
    status = run.status()
    assert status["download"]["done"] == status["download"]["total"] > 0
    snapshot = next((hf_home / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    fetched = {str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()}
    assert "model.safetensors" in fetched and "tokenizer.json" in fetched
    assert not {"pytorch_model.bin", "tiny.Q4_K_M.gguf", "original/consolidated.00.pth"} & fetched
    weights = [s for s in hub.seen() if s.method == "GET" and s.path.endswith("/model.safetensors")]
    assert len(weights) == 1  # one download, not one per rank or per launch
    assert "downloading acme/tiny-llama" in run.log.read_text()


@pytest.mark.parametrize("token", [None, OTHER_TOKEN], ids=["anonymous-401", "not-granted-403"])
def test_a_gated_hub_model_is_refused_before_launch_with_the_licence_page(
    hub, hf_home, tiny_repo_files, recipe, runs, capsys, monkeypatch, token
):
    hub.add(REPO, files=dict(tiny_repo_files), gated=True)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "gated" in err and f"{hub.url}/{REPO}" in err and "HF_TOKEN" in err and "Traceback" not in err
    assert not runs.exists() or not list(runs.iterdir())  # nothing launched, no run directory
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert main(["train", str(recipe), "--dry-run"]) == 0  # a granted token opens it
    assert "to download" in capsys.readouterr().out


def test_offline_with_the_model_not_cached_says_so_before_launch(
    hub, hf_home, tiny_repo_files, recipe, runs, capsys, monkeypatch
):
    hub.add(REPO, files=dict(tiny_repo_files))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from hub_support import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and REPO in err and "Traceback" not in err
    assert not [s for s in hub.seen() if "/resolve/" in s.path and s.path.endswith(".safetensors")]
    assert not runs.exists() or not list(runs.iterdir())


def test_too_little_disk_for_the_download_is_refused_with_how_much_to_free(
    hub, hf_home, tiny_repo_files, recipe, runs, capsys, monkeypatch
):
    import shutil
    from collections import namedtuple

    hub.add(REPO, files=dict(tiny_repo_files))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))  # the disk: hardware
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "GB more in the Hugging Face cache" in err and "HF_HUB_CACHE" in err
    assert not runs.exists() or not list(runs.iterdir())


def test_a_missing_hub_model_is_refused_by_name(hub, hf_home, recipe, runs, capsys):
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"no model {REPO}" in err and "Traceback" not in err
    assert not runs.exists() or not list(runs.iterdir())  # nothing launched
    assert any(s.path.startswith(f"/{REPO}/resolve/") for s in hub.seen())  # the stand-in hub was asked


def test_ftui_runs_shows_a_downloading_run_with_bytes_and_rate(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    from runner.rundir.runs import new_run_dir, process_start_time

    monkeypatch.setenv("COLUMNS", "200")
    run = new_run_dir(tmp_path, "hub")
    run.recipe.write_text("tuner: lora\n")
    sup = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        run.record_launch(
            {"argv": ["x"], "pid": sup.pid, "start_time": process_start_time(sup.pid), "host": os.uname().nodename}
        )
        run.set_status(
            "downloading",
            download={"repo_id": REPO, "done": 1_200_000_000, "total": 3_000_000_000, "bytes_per_s": 48_000_000},
        )
        assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
        assert "downloading 1.2/3.0 GB 48 MB/s" in capsys.readouterr().out
        assert main(["runs", "--runs-dir", str(tmp_path), "--json"]) == 0
        row = json.loads(capsys.readouterr().out)["runs"][0]
        assert row["state"] == "downloading" and row["download"]["total"] == 3_000_000_000
    finally:
        sup.kill()
        sup.wait()
    assert main(["runs", "--runs-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["state"] == "dead"  # its supervisor is gone


def test_a_download_cut_part_way_is_fetched_again_whole_and_the_run_trains(
    hub, hf_home, tiny_repo_files, recipe, runs, capsys
):
    repo = hub.add(REPO, files=dict(tiny_repo_files), cut_after=50_000)  # the first weights download drops
    sets = ["--set", "train.max_steps=2", "--set", "train.save_steps=2"]
    assert main(["train", str(recipe), *sets]) == 0, capsys.readouterr().err
    run = only_run(runs)
    assert await_run_processes(run, timeout=240) == []
    assert run.explain()[0] == "finished", run.log.read_text()[-3000:]
    assert repo.cut_done
    gets = [s for s in hub.seen() if s.method == "GET" and s.path.endswith("/model.safetensors")]
    assert len(gets) >= 2  # the dropped transfer was tried again
    snapshot = next((hf_home / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").read_bytes() == tiny_repo_files["model.safetensors"]  # whole, not cut


def test_a_hub_data_set_is_fetched_before_launch_its_split_chosen_and_the_run_trains_on_it(
    hub, hf_home, runs, capsys, tmp_path
):
    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}!"} for w in ("hi", "yes", "no", "ok") * 10]
    shard = lambda part: "".join(json.dumps(r) + "\n" for r in part).encode()  # noqa: E731
    hub.add(
        "acme/tiny-instructions",
        files={
            "README.md": b"# tiny",
            "data/train-00000-of-00002.jsonl": shard(rows[:20]),
            "data/train-00001-of-00002.jsonl": shard(rows[20:]),
            "data/test-00000-of-00001.jsonl": shard(rows[:4]),
        },
    )
    text = find_recipe("tiny-demo").read_text()
    model = find_recipe("tiny-demo").parent / "tiny" / "model"
    text = text.replace("path: tiny/model", f"path: {model}").replace(
        "path: tiny/data/instructions.jsonl", "path: acme/tiny-instructions"
    )
    recipe = tmp_path / "hub-data.yaml"
    recipe.write_text(text)
    assert main(["train", str(recipe), "--set", "train.max_steps=4", "--set", "train.save_steps=4"]) == 0
    err = capsys.readouterr().err
    assert "data set acme/tiny-instructions (train) from the Hub" in err
    run = only_run(runs)
    local = Path(load_recipe_path(run))
    assert local.is_file() and sum(1 for _ in local.open()) == 40  # both train shards, not the test split
    assert await_run_processes(run, timeout=240) == []
    assert run.explain()[0] == "finished", run.log.read_text()[-2000:]
    capsys.readouterr()
    assert main(["train", str(recipe), "--set", "dataset.split=validation", "--dry-run"]) == 2
    message = capsys.readouterr().err
    assert "no files for split 'validation'" in message and "data/test-00000-of-00001.jsonl" in message


def load_recipe_path(run: RunDir) -> str:
    from runner.recipe.schema import load_recipe

    return load_recipe(run.recipe).dataset.path


def test_a_download_killed_with_its_supervisor_is_fetched_again_by_resume_and_the_run_trains(
    hub, hf_home, tiny_repo_files, recipe, runs, capsys
):
    import signal

    repo = hub.add(REPO, files=dict(tiny_repo_files), hang_after=300_000)
    assert main(["train", str(recipe), "--set", "train.max_steps=2", "--set", "train.save_steps=2"]) == 0
    run = only_run(runs)
    assert repo.hung.wait(120), run.log.read_text()[-2000:]  # 300 kB of the weights are in, the rest stalls
    assert run.effective_state() == "downloading"
    os.killpg(run.launches()[-1]["pgid"], signal.SIGKILL)
    assert await_run_processes(run, timeout=60) == []
    repo.released.set()
    assert run.effective_state() == "dead"
    assert main(["resume", str(run.path)]) == 0
    assert await_run_processes(run, timeout=240) == []
    assert run.explain()[0] == "finished", run.log.read_text()[-3000:]
    gets = [s for s in hub.seen() if s.method == "GET" and s.path.endswith("/model.safetensors")]
    assert len(gets) == 2  # huggingface_hub 2.4 downloads into a per-process temp file: the file starts over
    snapshot = next((hf_home / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").read_bytes() == tiny_repo_files["model.safetensors"]
