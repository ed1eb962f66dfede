"""`ftui plan --verify`: the plan beside a trace of ftui's own training step, and traced-only plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tui.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")

STARCODER2 = {
    "model_type": "starcoder2",
    "architectures": ["Starcoder2ForCausalLM"],
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 6,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "vocab_size": 49152,
    "max_position_embeddings": 4096,
    "use_bias": True,
}


def plan_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(["plan", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def test_verify_puts_the_traced_step_beside_the_plan(capsys):
    code, out, _ = plan_json(
        capsys, "--model", "qwen2.5-0.5b", "--gpu", "a100-80g", "--tuner", "lora", "--seq-len", "1024", "--verify"
    )
    assert code == 0
    verified = out["verified"]
    assert verified["traceable"] is True
    assert set(verified) >= {"peak_allocated_gib", "phases", "parts", "layers_traced", "seconds", "planned"}
    assert verified["layers"] == 24 and verified["layers_traced"][1] < 24
    planned, traced = (
        verified["planned"]["phases"]["step"]["allocated_gib"],
        verified["phases"]["step"]["allocated_gib"],
    )
    assert planned == pytest.approx(traced, rel=0.03)
    assert verified["peak_allocated_gib"] == pytest.approx(verified["planned"]["peak_allocated_gib"], rel=0.03)


def test_the_table_view_shows_planned_and_traced(capsys):
    code = main(["plan", "--model", "qwen2.5-0.5b", "--gpu", "a100-80g", "--tuner", "full", "--verify"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Verified against a trace" in out and "planned GiB" in out and "traced GiB" in out


def test_a_setup_the_trace_cannot_run_says_so_and_the_plan_stands(capsys):
    code, out, _ = plan_json(
        capsys, "--model", "qwen2.5-0.5b", "--gpu", "rtx4090", "--tuner", "qlora", "--quant", "int8", "--verify"
    )
    assert code == 0
    assert out["verified"] == {
        "traceable": False,
        "reason": "QLoRA int8 is not traceable (bitsandbytes' 8-bit layers): analytic only",
    }
    assert out["estimate"]["per_gpu"]["peak_allocated_gib"] > 0


def test_a_remote_code_family_is_analytic_only_in_one_line(capsys):
    code, out, _ = plan_json(capsys, "--model", "qwen-7b", "--gpu", "a100-80g", "--tuner", "lora", "--verify")
    assert code == 0
    verified = out["verified"]
    assert verified["traceable"] is False
    assert "no model type 'qwen'" in verified["reason"] and "remote code" in verified["reason"]
    assert verified["reason"].endswith("analytic only") and len(verified["reason"]) < 250
    assert out["estimate"]["fits"] is True  # the analytic plan stands


def test_without_the_training_stack_verify_says_what_to_install(capsys, monkeypatch):
    import runner.launch.verify as verify

    monkeypatch.setattr(verify, "missing_training_stack", lambda: ["torch", "transformers"])
    code = main(["plan", "--model", "qwen2.5-0.5b", "--gpu", "a100-80g", "--tuner", "lora", "--verify"])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing: torch, transformers" in err and "pip install 'ftui[train]'" in err
    assert "Traceback" not in err


def test_a_model_type_without_a_reader_gets_a_traced_plan(capsys, tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(STARCODER2))
    code, out, err = plan_json(capsys, "--model", str(tmp_path), "--gpu", "a100-80g", "--tuner", "lora")
    assert code == 0
    assert "no reader for model type starcoder2: traced only" in err
    assert out["model"]["traced_only"] is True
    assert out["verified"]["traceable"] is True and out["verified"]["layers"] == 6
    assert out["verified"]["peak_allocated_gib"] > 0


def test_plan_without_verify_does_not_trace(capsys):
    code, out, _ = plan_json(capsys, "--model", "qwen2.5-0.5b", "--gpu", "a100-80g", "--tuner", "lora")
    assert code == 0 and "verified" not in out
