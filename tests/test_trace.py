"""The trace of ftui's own training step (runner/train/trace.py): real Trainer, fake tensors, exact bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from planner import ConfigError, Setup, architecture_from_config  # noqa: E402
from runner.train.agreement import catalog_config  # noqa: E402
from runner.train.trace import (  # noqa: E402
    NotTraceable,
    trace,
    trace_setup,
    truncated_config,
)

from conftest import REPO  # noqa: E402

GIB = 2**30
LLAMA = catalog_config("llama-3.1-8b")
BASE = dict(precision="bf16-true", attn="sdpa", seq_len=1024, micro_batch=1, grad_ckpt=True)


def setup(**knobs) -> Setup:
    return Setup(**{**BASE, **knobs})


@pytest.mark.parametrize(
    "knobs",
    [
        dict(tuner="full"),
        dict(tuner="lora", grad_ckpt=False),
        dict(tuner="freeze", trainable_layers=2),
        dict(tuner="lisa", lisa_layers=2, grad_ckpt=False),
    ],
    ids=["full", "lora-no-ckpt", "freeze", "lisa"],
)
def test_two_short_traces_extrapolate_to_a_full_trace_of_eight_layers(knobs):
    config = truncated_config(LLAMA, 8)
    s = setup(**knobs)
    extrapolated = trace_setup(config, s)
    assert extrapolated.layers_traced[1] < 8  # it did extrapolate
    full = trace(config, s, 8)
    for phase, value in extrapolated.phases.items():
        assert value == pytest.approx(full.phases[phase].bytes, rel=0.005), phase


def test_model_states_are_exact():
    # 2 layers of Llama-3.1-8B, full fine-tuning in bf16: weights, gradients and Adam's two moments are
    # 2 bytes per parameter each; the optimizer step adds AdamW's foreach temporary (one more copy).
    config = truncated_config(LLAMA, 2)
    params = architecture_from_config(config).params
    t = trace(config, setup(tuner="full"), 2)
    step = t.phases["step"].parts
    assert 0 <= step["weights"] - 2 * params < 64 * 1024  # + the rotary buffers
    assert step["gradients"] == 2 * params
    assert step["optimizer"] == pytest.approx(3 * 2 * params, rel=1e-4)  # m, v and sqrt(v)
    assert t.phases["backward"].parts["optimizer"] - 2 * 2 * params < 1024  # + Adam's step counters


def test_a_lora_base_under_mixed_precision_is_held_in_16_bits():
    # The runner loads the frozen base in bf16 for bf16-mixed LoRA (fp32 adapters): same base bytes as bf16-true.
    config = truncated_config(LLAMA, 2)
    mixed = trace(config, setup(tuner="lora", precision="bf16-mixed"), 2).phases["step"].parts["weights"]
    true = trace(config, setup(tuner="lora", precision="bf16-true"), 2).phases["step"].parts["weights"]
    params = architecture_from_config(config).params
    assert mixed < 2.1 * params  # not 4 bytes per base parameter
    assert mixed == true


def test_freeze_with_checkpointing_does_not_keep_or_rerun_the_frozen_layers():
    # Each frozen layer below the trained top adds exactly its weights: no checkpointed input, no recompute.
    s = setup(tuner="freeze", trainable_layers=1)
    a, b = (trace(truncated_config(LLAMA, n), s, n) for n in (3, 4))
    layer = architecture_from_config(LLAMA).layer_params[0]
    for phase in ("forward", "backward", "step"):
        assert b.phases[phase].bytes - a.phases[phase].bytes == 2 * layer, phase


def test_dropout_keeps_a_one_byte_mask_as_on_cuda():
    # LoRA dropout: the CPU kernel would keep an fp32 noise tensor (4 B); CUDA's fused one keeps a bool
    # mask. Per layer (the second layer, whose inputs require grad), one byte per element of each
    # adapted layer's input.
    def per_layer(dropout: float) -> int:
        s = setup(tuner="lora", lora_dropout=dropout, grad_ckpt=False)
        a, b = (trace(truncated_config(LLAMA, n), s, n).phases["forward"].bytes for n in (2, 3))
        return b - a

    arch = architecture_from_config(LLAMA)
    widths = {"attn_in": arch.hidden, "attn_out": arch.q_dim, "mlp_in": arch.hidden, "mlp_mid": arch.intermediate}
    masks = sum(widths[lin.reads] for lin in arch.block) * 1024
    assert per_layer(0.1) - per_layer(0.0) == masks


@pytest.mark.parametrize(
    ("knobs", "why"),
    [
        (dict(tuner="qlora", quant="int8"), "int8"),
        (dict(tuner="full", zero=2, precision="bf16-mixed"), "ZeRO"),
        (dict(tuner="lora", fsdp="full_shard"), "FSDP is not traced"),
    ],
)
def test_setups_the_trace_cannot_run_say_so(knobs, why):
    with pytest.raises(NotTraceable, match=why):
        trace(truncated_config(LLAMA, 1), setup(**knobs), 1)


def test_qlora_nf4_is_traced_with_4_bit_weights():
    # bitsandbytes' fake kernels: packed 4-bit weights plus double-quantized constants, about 0.516 B
    # per linear parameter; the embeddings, head and norms upcast to fp32 (the runner's prepare_quantized,
    # as peft's prepare_model_for_kbit_training); the adapters are fp32.
    config = truncated_config(LLAMA, 2)
    arch = architecture_from_config(config)
    t = trace(config, setup(tuner="qlora"), 2)
    weights = t.phases["step"].parts["weights"]
    linear = arch.layer_linear_params
    rest = arch.params - linear
    adapters = arch.lora_params("all-linear", 8)
    assert weights == pytest.approx(0.515869 * linear + 4 * rest + 4 * adapters, rel=0.001)
    assert t.phases["backward"].bytes > weights  # the step ran (logits, activations)


def test_an_architecture_the_planner_cannot_read_is_still_traced():
    # A model type with no planner reader: transformers builds it from the config and the trace runs.
    config = {
        "model_type": "starcoder2",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 49152,
        "max_position_embeddings": 4096,
    }
    with pytest.raises(ConfigError):
        architecture_from_config(config)
    result = trace_setup(config, setup(tuner="lora"))
    assert result.peak_allocated > 0


def test_python_m_runner_train_trace_answers_in_json():
    request = {"config": truncated_config(LLAMA, 4), "setup": {**BASE, "tuner": "lora"}}
    proc = subprocess.run(
        [sys.executable, "-m", "runner.train.trace"],
        input=json.dumps(request),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["traceable"] is True
    assert set(answer) >= {"peak_allocated_gib", "phases", "parts", "layers_traced", "seconds"}
    assert answer["layers"] == 4 and answer["peak_allocated_gib"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "runner.train.trace"],
        input=json.dumps({"config": request["config"], "setup": {**BASE, "tuner": "qlora", "quant": "int8"}}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 0 and json.loads(bad.stdout) == {
        "traceable": False,
        "reason": "QLoRA int8 is not traceable (bitsandbytes' 8-bit layers): analytic only",
    }


@pytest.mark.parametrize("launcher", [{}, {"zero": 2}, {"fsdp": "full_shard"}])
def test_qlora_holds_what_bitsandbytes_left_unquantized_in_fp32_unless_the_launcher_recasts_it(tmp_path, launcher):
    # As peft's prepare_model_for_kbit_training (the QLoRA recipe): embeddings, norms and the head in
    # fp32, the 4-bit weights untouched, only the adapters trainable. DeepSpeed would cast the module
    # back to 16 bits and FSDP wants one dtype per shard group: there the base stays 16-bit.
    import dataclasses

    import bitsandbytes as bnb
    import torch

    from recipes import RECIPES_DIR, find_recipe
    from runner.recipe.schema import load_recipe
    from runner.rundir.runs import RunDir
    from runner.train.entry import apply_tuner, load_model

    recipe = load_recipe(find_recipe("tiny-demo"))
    recipe = recipe.but(
        model=dataclasses.replace(recipe.model, path=str(RECIPES_DIR / "tiny" / "model")),
        tuner="qlora",
        train=dataclasses.replace(recipe.train, precision="bf16-true"),
        distributed=dataclasses.replace(recipe.distributed, **{"zero": 0, **launcher}),
    )
    model = apply_tuner(load_model(recipe, RunDir(tmp_path)), recipe)
    quantized = [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(w.dtype in (torch.uint8, torch.bfloat16) for w in quantized)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = {p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.dtype.is_floating_point}
    if not launcher:
        assert base == {torch.float32}
    else:
        assert torch.bfloat16 in base and torch.float32 not in base
