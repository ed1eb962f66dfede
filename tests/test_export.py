"""`ftui export`: a finished tiny run as files transformers and peft load; merged = base + adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipes import find_recipe
from runner.recipe.schema import load_recipe
from runner.rundir.runs import RunDir
from tui.cli import main

from conftest import await_run_processes, kill_runs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

DEMO = str(find_recipe("tiny-demo"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    yield root
    kill_runs(root)


def finished_run(runs: Path, tuner: str, capsys) -> RunDir:
    sets = [f"tuner={tuner}", "train.max_steps=6", "train.save_steps=3", "train.logging_steps=2"]
    argv = ["train", DEMO, "--runs-dir", str(runs)] + [x for s in sets for x in ("--set", s)]
    assert main(argv) == 0
    run_id = capsys.readouterr().out.split()[1].rstrip(":")
    run = RunDir(runs / run_id)
    assert await_run_processes(run, timeout=240) == []
    assert run.effective_state() == "finished", run.log.read_text()[-2000:]
    return run


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_a_merged_lora_export_loads_with_transformers_and_equals_base_plus_adapter(runs, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.train.export import base_model

    run = finished_run(runs, "lora", capsys)
    assert main(["export", str(run.path), "--merge", "--dtype", "fp32"]) == 0
    out = run.path / "export-merged"
    assert f"exported {run.id} to {out}" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    recipe = load_recipe(run.recipe)
    tuned = PeftModel.from_pretrained(base_model(recipe, torch.float32), str(run.path / "final"))
    ids = AutoTokenizer.from_pretrained(out)("Give three tips for staying healthy.", return_tensors="pt").input_ids
    a, b = logits(tuned, ids), logits(merged, ids)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    untouched = logits(base_model(recipe, torch.float32), ids)
    assert not torch.allclose(untouched, b, atol=1e-4)  # the adapter changed something
    card = (out / "README.md").read_text()
    assert "lora" in card and "steps: 6" in card and "merged" in card

    assert main(["export", run.id, "--runs-dir", str(runs)]) == 0  # the adapter alone, peft format
    adapter = run.path / "export"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    again = PeftModel.from_pretrained(base_model(recipe, torch.float32), str(adapter))
    assert torch.allclose(logits(again, ids), a, atol=1e-5)


def test_a_full_run_exports_its_model_and_refuses_merge_and_a_busy_out_dir(runs, capsys):
    from transformers import AutoModelForCausalLM

    run = finished_run(runs, "full", capsys)
    capsys.readouterr()
    assert main(["export", str(run.path), "--merge"]) == 2
    assert "has none" in capsys.readouterr().err
    out = run.path / "export-fp32"
    assert main(["export", str(run.path), "--dtype", "fp32", "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    final = AutoModelForCausalLM.from_pretrained(run.path / "final", local_files_only=True)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    assert torch.allclose(logits(exported, ids), logits(final, ids), atol=1e-5)
    capsys.readouterr()
    assert main(["export", str(run.path), "--dtype", "fp32", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(run.path), "--checkpoint", "99"]) == 2
    assert "no checkpoint-99" in capsys.readouterr().err
    assert os.path.isdir(run.checkpoints / "checkpoint-3")
    assert main(["export", str(run.path), "--checkpoint", "3", "--out", str(run.path / "at-3")]) == 0
    assert (run.path / "at-3" / "model.safetensors").is_file()
