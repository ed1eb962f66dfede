"""The analytic memory model agrees with the trace of ftui's own training step (within 3 % per phase).

Whole models (the trace at two depths, extrapolated), one catalog model per family transformers can
build, a few setups each; bench/trace_agreement.py prints the whole matrix.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from runner.train.agreement import TRACEABLE_FAMILIES, compare  # noqa: E402

TOLERANCE = 3.0
"""Percent, per phase (forward + backward, optimizer step)."""
CASES = (
    [
        (family, dict(tuner="lora", seq_len=1024, micro_batch=2, attn="eager" if family == "gemma2" else "sdpa"))
        for family in TRACEABLE_FAMILIES
    ]
    + [
        (family, dict(tuner="full", seq_len=512, grad_ckpt=False, attn="eager" if family == "gemma2" else "sdpa"))
        for family in TRACEABLE_FAMILIES
    ]
    + [
        ("llama", dict(tuner="full", precision="bf16-mixed", seq_len=2048)),
        ("qwen2", dict(tuner="lora", dora=True, seq_len=2048, micro_batch=2)),
        ("mistral", dict(tuner="freeze", trainable_layers=2, seq_len=2048)),
        ("qwen3", dict(tuner="lisa", lisa_layers=2, seq_len=1024, grad_ckpt=False)),
        ("phi3", dict(tuner="lora", attn="eager", seq_len=2048, micro_batch=2)),
        ("qwen3_moe", dict(tuner="qlora", seq_len=512, micro_batch=2)),  # fused experts stay 16-bit
        ("llama", dict(tuner="qlora", seq_len=2048)),  # embeddings, norms, head upcast to fp32: an fp32 stream
        ("qwen2", dict(tuner="qlora", seq_len=1024, grad_ckpt=False)),  # every block's fp32 MLP tensors kept
    ]
)


@pytest.mark.parametrize(("family", "knobs"), CASES, ids=[f"{f}-{'-'.join(map(str, k.values()))}" for f, k in CASES])
def test_the_planner_matches_the_trace(family, knobs):
    row = compare(TRACEABLE_FAMILIES[family], knobs)
    assert "reason" not in row, row.get("reason")
    detail = (
        f"{family} {knobs}: planned {row['plan_backward']} / {row['plan_step']} GiB, "
        f"traced {row['trace_backward']} / {row['trace_step']} GiB; most: {row['worst_part']}"
    )
    assert abs(row["backward_err"]) <= TOLERANCE, detail
    assert abs(row["step_err"]) <= TOLERANCE, detail
