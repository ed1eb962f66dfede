"""The planner's activation ledger against what autograd really saves.

For one decoder layer of transformers' own model code (random weights, small width, CPU, bf16
autocast), every tensor autograd saves for backward is recorded with `saved_tensors_hooks`;
the per-token slope between two sequence lengths (which cancels per-layer constants such as
autocast's cached weight casts) must match `block_activations` within a few percent.

CPU differs from CUDA in two places we account for: CPU autocast runs neither `pow` nor
`layer_norm` in fp32, so phi's composite gelu_new keeps 8 bytes per MLP element here (14 on CUDA)
and a LayerNorm keeps its bf16 input (an fp32 copy on CUDA).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from planner.activations import Precision, block_activations  # noqa: E402
from planner.hfconfig import architecture_from_config  # noqa: E402

SMALL = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    pad_token_id=0,
)
FAMILIES = {
    "llama": dict(model_type="llama", **SMALL),
    "qwen2": dict(model_type="qwen2", **SMALL),
    "qwen3": dict(model_type="qwen3", head_dim=64, **SMALL),
    "mistral": dict(model_type="mistral", **SMALL),
    "phi3": dict(model_type="phi3", **{**SMALL, "num_key_value_heads": 4}),
    "gemma2": dict(model_type="gemma2", head_dim=64, **SMALL),
    "phi": dict(model_type="phi", **{**SMALL, "num_key_value_heads": 4, "intermediate_size": 1024}),
}
MODES = ("full", "frozen", "lora")
T1, T2 = 48, 144


def _saved_bytes(model, layer, hidden: int, tokens: int) -> int:
    x = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = model.model.rotary_emb(x, torch.arange(tokens)[None])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x, position_embeddings=(cos, sin), attention_mask=None)
    skip = params | {x.untyped_storage().data_ptr()}
    return sum(nbytes for ptr, nbytes in seen.items() if ptr not in skip)


def _measure(config: dict, mode: str, attn: str) -> float:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)](cfg).to(torch.bfloat16)
    root = model
    if mode == "lora":
        peft = pytest.importorskip("peft")
        root = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    for name, p in root.named_parameters():
        p.requires_grad_(mode == "full" or "lora_" in name)
    layer = model.model.layers[0]
    b1 = _saved_bytes(model, layer, cfg.hidden_size, T1)
    b2 = _saved_bytes(model, layer, cfg.hidden_size, T2)
    return (b2 - b1) / (T2 - T1)


def _ledger(config: dict, mode: str, attn: str) -> float:
    arch = architecture_from_config(config)
    adapters = arch.lora_targets("all-linear") if mode == "lora" else ()
    b = block_activations(
        arch,
        trainable=mode == "full",
        adapters=adapters,
        lora_rank=8,
        lora_dropout=0.0,
        dora=False,
        attn=attn,
        micro_batch=1,
        p=Precision(2, 2),
    )
    per_token = b.saved + b.saved_scores * (T1 + T2)  # s^2 terms: (T2^2 - T1^2) / (T2 - T1)
    if arch.mlp_act == "gelu_new":
        per_token -= 6 * arch.intermediate  # CPU autocast keeps pow in bf16 (see module docstring)
    if arch.norm == "layernorm":
        per_token -= 2 * arch.hidden * arch.norms_per_layer  # and layer_norm's input in bf16
    return per_token


CASES = [(fam, mode, "sdpa") for fam in FAMILIES if fam != "gemma2" for mode in MODES]
CASES += [(fam, "full", "eager") for fam in FAMILIES]


@pytest.mark.parametrize(("family", "mode", "attn"), CASES, ids=[f"{f}-{m}-{a}" for f, m, a in CASES])
def test_ledger_matches_what_autograd_saves(family: str, mode: str, attn: str) -> None:
    config = FAMILIES[family]
    measured = _measure(config, mode, attn)
    predicted = _ledger(config, mode, attn)
    assert predicted == pytest.approx(measured, rel=0.08), (
        f"{family} {mode} {attn}: ledger {predicted:.0f} B/token, autograd {measured:.0f}"
    )
