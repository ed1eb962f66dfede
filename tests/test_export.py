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


_TRAINED: dict[tuple[Path, str], RunDir] = {}


def finished_run(runs: Path, tuner: str, capsys) -> RunDir:
    """A finished tiny run of `tuner` (trained once per module; the tests only read it or export elsewhere)."""
    if (runs, tuner) in _TRAINED:
        return _TRAINED[runs, tuner]
    _TRAINED[runs, tuner] = run = _train(runs, tuner, capsys)
    return run


def _train(runs: Path, tuner: str, capsys) -> RunDir:
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


def test_chat_prompt_answers_with_the_tuned_model_and_compare_with_the_base_too(runs, capsys):
    run = finished_run(runs, "lora", capsys)
    assert (
        main(["chat", str(run.path), "--prompt", "Give three tips for staying healthy.", "--max-new-tokens", "8"]) == 0
    )
    answer = capsys.readouterr().out.strip()
    assert answer and "Traceback" not in answer
    assert main(["chat", str(run.path), "--prompt", "Hi", "--compare", "--max-new-tokens", "4"]) == 0
    both = capsys.readouterr().out
    assert both.startswith("base:\n") and "\ntuned:\n" in both


def test_eval_reports_held_out_loss_perplexity_and_samples_and_saves_them(runs, capsys, tmp_path):
    import math

    run = finished_run(runs, "full", capsys)
    assert main(["eval", str(run.path), "--json", "--samples", "2", "--max-new-tokens", "6"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] > 0 and result["tokens"] > 0
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-3)
    assert len(result["samples"]) == 2 and all(s["reference"] and "generated" in s for s in result["samples"])
    assert json.loads((run.path / "eval.json").read_text())["loss"] == result["loss"]
    status_eval = run.status().get("eval_loss")
    assert status_eval is None or abs(status_eval - result["loss"]) < 0.5  # the same split, the same model
    data = tmp_path / "other.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi there."}) + "\n")
    assert main(["eval", run.id, "--runs-dir", str(runs), "--data", str(data), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "other.jsonl" in out and "reference: Hi there." in out
