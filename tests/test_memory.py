"""The memory model, term by term: each test states the physics it checks."""

import pytest

from planner import Architecture, Cluster, Linear, Setup, architecture_from_config, gpu_spec, resolve_model
from planner.memory import PARTS, PHASES, USABLE_MARGIN, estimate

GB = 1e9
A100 = gpu_spec("a100-80g")
ONE = Cluster(A100, 1)
EIGHT = Cluster(A100, 8)


def arch(name: str) -> Architecture:
    return resolve_model(name).arch


def term(est, name: str) -> float:
    """Bytes of the named term (0 when absent); fails if the name is ambiguous."""
    found = [t for t in est.terms if t.name == name]
    assert len(found) <= 1, f"{name!r} appears {len(found)} times"
    return found[0].bytes if found else 0.0


def the_term(est, name: str):
    found = [t for t in est.terms if t.name == name]
    assert len(found) == 1, f"expected one {name!r} term, got {[t.name for t in est.terms]}"
    return found[0]


# --- the seed's 16-bytes-per-parameter rule and ZeRO figures (seed 004) -------------------


def seven_billion() -> Architecture:
    """A synthetic model with exactly 7e9 parameters: 7 blocks of one 1000 x 999,857 linear,
    a tied 1000 x 1000 embedding and a final norm of 1000."""
    block = (Linear("w", 1000, 999_857, False, "mlp", "mlp_in"),)
    return Architecture(
        family="llama",
        layers=7,
        hidden=1000,
        heads=8,
        kv_heads=8,
        head_dim=125,
        intermediate=1000,
        gated_mlp=False,
        vocab=1000,
        tied_embeddings=True,
        block=block,
        norms_per_layer=0,
    )


def test_synthetic_model_has_exactly_seven_billion_params():
    assert seven_billion().params == 7_000_000_000


@pytest.mark.parametrize(
    "zero,expected",
    [
        (0, 16 * 7e9),  # 112 GB: 2 + 2 + 12 bytes per param, nothing sharded
        (1, 4 * 7e9 + 12 * 7e9 / 8),  # 38.5 GB: optimizer states sharded
        (2, 2 * 7e9 + 14 * 7e9 / 8),  # 26.25 GB: + gradients sharded
        (3, 16 * 7e9 / 8),  # 14 GB: everything sharded
    ],
)
def test_seed_004_zero_model_states_on_8_gpus(zero, expected):
    est = estimate(seven_billion(), Setup(tuner="full", precision="bf16-mixed", zero=zero), EIGHT)
    assert est.model_states_bytes == pytest.approx(expected, rel=1e-12)


def test_seed_004_figures_in_gb():
    states = [
        estimate(seven_billion(), Setup(tuner="full", precision="bf16-mixed", zero=z), EIGHT).model_states_bytes
        for z in range(4)
    ]
    assert [round(s / GB, 2) for s in states] == [112.0, 38.5, 26.25, 14.0]


# --- precision modes ---------------------------------------------------------------------


def test_bf16_true_full_keeps_weights_grads_and_moments_in_bf16():
    a = arch("llama-2-7b")
    n = a.params
    est = estimate(a, Setup(tuner="full", precision="bf16-true"), ONE)
    assert term(est, "model weights") == 2 * n
    assert term(est, "gradients") == 2 * n
    assert term(est, "optimizer moments") == 4 * n  # m and v, 2 bytes each
    assert term(est, "fp32 master weights") == 0
    assert est.model_states_bytes == 8 * n


def test_adamw_foreach_temporary_exists_only_at_the_optimizer_step():
    est = estimate(arch("llama-2-7b"), Setup(tuner="full", precision="bf16-true"), ONE)
    temp = the_term(est, "AdamW foreach temporary")
    assert temp.phases == ("step",)
    assert temp.bytes > 0
    assert est.phase_total("step") - est.phase_total("backward") != 0


def test_mixed_precision_without_deepspeed_is_16_bytes_per_param():
    # torch AMP: fp32 params (4) + fp32 grads (4) + fp32 m and v (8).
    a = arch("llama-2-7b")
    est = estimate(a, Setup(tuner="full", precision="bf16-mixed"), ONE)
    assert est.model_states_bytes == 16 * a.params


# --- gradients exist only for trainable parameters ----------------------------------------


def test_lora_gradients_are_adapter_params_in_fp32():
    a = arch("llama-2-7b")
    setup = Setup(tuner="lora", precision="bf16-true", lora_rank=16, lora_targets="all-linear")
    est = estimate(a, setup, ONE)
    adapters = a.lora_params("all-linear", 16)
    assert term(est, "adapter gradients") == adapters * 4
    assert term(est, "gradients") == 0  # the frozen base gets none


@pytest.mark.parametrize("k", [1, 2, 5])
def test_freeze_trains_top_k_layers_and_the_final_norm(k):
    a = arch("qwen2.5-7b")
    est = estimate(a, Setup(tuner="freeze", precision="bf16-true", trainable_layers=k), ONE)
    trainable = sum(a.layer_params[-k:]) + a.norm_params
    assert term(est, "gradients") == trainable * 2
    assert term(est, "optimizer moments") == trainable * 2 * 2


def test_lisa_trains_embeddings_and_head_plus_sampled_layers():
    a = arch("qwen-7b")
    est = estimate(a, Setup(tuner="lisa", precision="bf16-true", lisa_layers=2), ONE)
    trainable = term(est, "gradients") / 2
    assert trainable == a.embedding_params + a.head_params + a.norm_params + 2 * max(a.layer_params)
    assert trainable > 1.24e9  # embeddings + head of a 152k vocabulary alone are 1.24e9


# --- ZeRO sharding -----------------------------------------------------------------------


def _full(zero: int) -> Setup:
    return Setup(tuner="full", precision="bf16-mixed", zero=zero)


def test_zero2_shards_gradients_over_the_world():
    a = arch("llama-2-7b")
    one, eight = estimate(a, _full(2), ONE), estimate(a, _full(2), EIGHT)
    assert term(eight, "gradients") == pytest.approx(term(one, "gradients") / 8, rel=1e-12)


def test_zero1_does_not_shard_gradients_but_shards_optimizer_states():
    a = arch("llama-2-7b")
    one, eight = estimate(a, _full(1), ONE), estimate(a, _full(1), EIGHT)
    assert term(eight, "gradients") == term(one, "gradients")
    assert term(eight, "optimizer moments") == pytest.approx(term(one, "optimizer moments") / 8, rel=1e-12)


def test_zero3_shards_weights_and_gathers_layers():
    a = arch("llama-2-7b")
    one, eight = estimate(a, _full(3), ONE), estimate(a, _full(3), EIGHT)
    assert term(eight, "model weights") == pytest.approx(term(one, "model weights") / 8, rel=1e-12)
    gathered = the_term(eight, "ZeRO-3 gathered layers")
    assert gathered.bytes >= 2 * max(a.layer_params)  # at least one whole block in 16 bits
    assert term(estimate(a, _full(2), EIGHT), "ZeRO-3 gathered layers") == 0


# --- offload -----------------------------------------------------------------------------


@pytest.mark.parametrize("zero,cluster", [(2, ONE), (3, EIGHT)], ids=["zero2-1gpu", "zero3-8gpu"])
def test_optimizer_offload_moves_states_to_cpu_ram(zero, cluster):
    a = arch("llama-2-7b")
    on_gpu = estimate(a, Setup(tuner="full", precision="bf16-mixed", zero=zero), cluster)
    off = estimate(a, Setup(tuner="full", precision="bf16-mixed", zero=zero, offload="optimizer"), cluster)
    assert term(on_gpu, "optimizer moments") > 0
    assert term(off, "optimizer moments") == 0
    assert term(off, "fp32 master weights") == 0
    assert off.required < on_gpu.required
    # fp32 master + m + v (12 B/param) at least, for the whole model, land in the node's RAM.
    assert off.cpu_ram_bytes >= 12 * a.params
    assert off.cpu_ram_bytes > on_gpu.cpu_ram_bytes + 0.5 * 12 * a.params


def test_param_offload_moves_weights_off_the_gpu():
    a = arch("llama-2-7b")
    est = estimate(a, Setup(tuner="full", precision="bf16-mixed", zero=3, offload="optimizer+params"), EIGHT)
    assert term(est, "model weights") == 0


# --- QLoRA -------------------------------------------------------------------------------


def test_qlora_nf4_stores_linears_in_about_half_a_byte():
    a = arch("llama-2-7b")
    est = estimate(a, Setup(tuner="qlora", quant="nf4"), ONE)
    per_param = term(est, "quantized linear weights") / a.layer_linear_params
    assert 0.5 < per_param < 0.6
    # Embeddings, head and norms are upcast to fp32 (peft's prepare_model_for_kbit_training, the runner's
    # prepare_quantized); DeepSpeed casts the module back to 16 bits, FSDP keeps one dtype.
    rest = a.params - a.layer_linear_params
    assert term(est, "unquantized weights (embeddings, head, norms)") == 4 * rest
    assert term(est, "model weights") == 0
    for launcher in (dict(zero=2), dict(fsdp="full_shard")):
        kept = estimate(a, Setup(tuner="qlora", quant="nf4", **launcher), EIGHT if "fsdp" in launcher else ONE)
        shard = 8 if "fsdp" in launcher else 1
        assert term(kept, "unquantized weights (embeddings, head, norms)") == 2 * rest / shard


def test_qlora_leaves_fused_moe_experts_in_16_bits():
    # transformers' bitsandbytes quantizer converts nn.Linear modules only; transformers 5 keeps a
    # MoE layer's experts as 3-D parameters, so a QLoRA load leaves them bf16
    a = arch("qwen3-30b-a3b")
    assert a.fused_experts
    experts = sum(lin.params for lin in a.block if lin.copies > 1) * a.layers
    assert experts > 0.8 * a.params  # most of the model
    assert a.layer_linear_params < a.params - experts
    est = estimate(a, Setup(tuner="qlora"), ONE)
    # the experts stay 16-bit; the rest (embeddings, head, norms, router) is upcast to fp32
    rest = a.params - a.layer_linear_params - experts
    assert term(est, "unquantized weights (embeddings, head, norms)") == 2 * experts + 4 * rest


def test_qlora_double_quant_is_smaller_than_plain_nf4():
    a = arch("llama-2-7b")
    dq = term(estimate(a, Setup(tuner="qlora", double_quant=True), ONE), "quantized linear weights")
    plain = term(estimate(a, Setup(tuner="qlora", double_quant=False), ONE), "quantized linear weights")
    assert dq < plain
    # 32-bit absmax per 64 weights = 0.5 bit/param; double quant ~0.127 bit/param (QLoRA paper 3).
    assert (plain - dq) / a.layer_linear_params * 8 == pytest.approx(0.5 - 0.127, abs=0.002)


# --- activations -------------------------------------------------------------------------


def _acts(a: Architecture, **kw) -> float:
    setup = Setup(**{"tuner": "full", "precision": "bf16-true", "grad_ckpt": False, **kw})
    return estimate(a, setup, ONE).part("activations", "backward")


def test_flash_activations_scale_linearly_with_micro_batch():
    a = arch("llama-2-7b")
    one = _acts(a, attn="flash", micro_batch=1)
    assert one > 0
    assert _acts(a, attn="flash", micro_batch=2) == pytest.approx(2 * one, rel=1e-9)
    assert _acts(a, attn="flash", micro_batch=4) == pytest.approx(4 * one, rel=1e-9)


def test_eager_attention_adds_a_quadratic_term():
    a = arch("llama-2-7b")
    flash_ratio = _acts(a, attn="flash", seq_len=2048) / _acts(a, attn="flash", seq_len=1024)
    eager_ratio = _acts(a, attn="eager", seq_len=2048) / _acts(a, attn="eager", seq_len=1024)
    assert flash_ratio == pytest.approx(2.0, rel=1e-9)
    assert eager_ratio > 2.2
    assert _acts(a, attn="eager") > _acts(a, attn="flash")


def test_gradient_checkpointing_cuts_7b_activations_at_2048_tokens():
    a = arch("llama-2-7b")
    ratio = _acts(a, grad_ckpt=True) / _acts(a, grad_ckpt=False)
    assert ratio < 0.15


def test_gqa_saves_less_key_value_activation_than_mha():
    gqa = resolve_model("llama-3-8b")
    assert gqa.arch.kv_heads == 8
    mha = architecture_from_config({**gqa.config, "num_key_value_heads": gqa.arch.heads})
    diff = _acts(mha) - _acts(gqa.arch)
    # flash keeps k and v at kv width: 2 tensors x 2 bytes x (q_dim - kv_dim) per token per layer.
    per_token_layer = 2 * 2 * (gqa.arch.q_dim - gqa.arch.kv_dim)
    assert diff == pytest.approx(per_token_layer * 2048 * gqa.arch.layers, rel=1e-9)


def test_logits_term_is_12_bytes_per_vocab_entry_per_token():
    a = arch("qwen2.5-7b")
    assert a.vocab == 152064
    est = estimate(a, Setup(tuner="lora", micro_batch=2, seq_len=4096), ONE)
    logits = the_term(est, "log-softmax and its fp32 gradients")
    assert logits.bytes == 12 * 152064 * 2 * 4096
    assert logits.phases == ("backward",)


def test_gemma2_softcap_keeps_one_more_16_bit_logits_tensor():
    # logits / cap -> tanh -> * cap runs in bf16 and tanh keeps its output: 2 B per element, not fp32.
    a = arch("gemma-2-9b")
    assert a.final_logit_softcap
    est = estimate(a, Setup(tuner="lora", seq_len=1024, attn="eager"), ONE)
    assert term(est, "log-softmax and its fp32 gradients") == (12 + 2) * a.vocab * 1024


# --- 8-bit optimizers --------------------------------------------------------------------


def test_adamw_8bit_is_about_two_bytes_per_param():
    a = arch("llama-2-7b")
    est = estimate(a, Setup(tuner="full", precision="bf16-true", optim="adamw-8bit"), ONE)
    assert term(est, "optimizer moments") / a.params == pytest.approx(2.0, rel=0.05)
    assert the_term(est, "optimizer moments").pool == "allocated"


def test_paged_adamw_8bit_lives_outside_the_allocator_but_in_nvml_used():
    a = arch("llama-2-7b")
    plain = estimate(a, Setup(tuner="full", precision="bf16-true", optim="adamw-8bit"), ONE)
    paged = estimate(a, Setup(tuner="full", precision="bf16-true", optim="paged-adamw-8bit"), ONE)
    states = the_term(paged, "optimizer moments")
    assert states.pool == "driver"
    assert states.bytes == term(plain, "optimizer moments")
    assert paged.peak_allocated < plain.peak_allocated - 0.9 * states.bytes
    assert paged.nvml_used >= paged.peak_reserved + states.bytes


# --- totals are consistent ---------------------------------------------------------------

SETUPS = [
    ("llama-2-7b", Setup(tuner="full", precision="bf16-mixed", zero=3), EIGHT),
    ("llama-2-7b", Setup(tuner="full", precision="bf16-true", optim="paged-adamw-8bit"), ONE),
    ("qwen2.5-7b", Setup(tuner="lora", micro_batch=4), ONE),
    ("qwen2.5-7b", Setup(tuner="qlora", seq_len=8192), Cluster(gpu_spec("rtx4090"))),
    ("llama-3.1-70b", Setup(tuner="full", precision="bf16-mixed", zero=3, offload="optimizer+params"), EIGHT),
    ("mixtral-8x7b", Setup(tuner="lisa"), ONE),
    ("gemma-2-9b", Setup(tuner="freeze", grad_ckpt=False, attn="eager"), EIGHT),
]


@pytest.mark.parametrize("name,setup,cluster", SETUPS, ids=[f"{s[0]}-{s[1].tuner}" for s in SETUPS])
def test_totals_are_ordered_and_parts_add_up(name, setup, cluster):
    est = estimate(arch(name), setup, cluster)
    assert 0 < est.peak_allocated <= est.peak_reserved <= est.nvml_used
    assert est.fits == (est.required <= est.capacity_bytes - USABLE_MARGIN)
    parts = {p: est.part(p) for p in PARTS}
    assert sum(parts.values()) == pytest.approx(est.nvml_used, rel=1e-12)
    assert all(v >= 0 for v in parts.values()), parts
    assert parts["overhead"] >= term(est, "CUDA context")
    assert est.peak_phase in PHASES


def test_required_includes_what_lives_outside_pytorch():
    est = estimate(arch("llama-2-7b"), Setup(tuner="lora"), EIGHT)
    assert est.required >= est.peak_allocated + term(est, "CUDA context") + term(est, "NCCL buffers")


def test_a_70b_full_finetune_does_not_fit_one_a100():
    est = estimate(arch("llama-3.1-70b"), Setup(tuner="full", precision="bf16-mixed"), ONE)
    assert not est.fits
    assert est.required > est.capacity_bytes


# --- monotonicity ------------------------------------------------------------------------


def test_more_gpus_under_zero3_never_increase_per_gpu_memory():
    a = arch("llama-3.1-8b")
    setup = Setup(tuner="full", precision="bf16-mixed", zero=3)
    clusters = [Cluster(A100, n) for n in (1, 2, 4, 8)] + [Cluster(A100, 8, nodes) for nodes in (2, 4, 8)]
    for metric in ("required", "peak_allocated", "nvml_used"):
        used = [getattr(estimate(a, setup, c), metric) for c in clusters]
        assert used == sorted(used, reverse=True), (metric, used)


@pytest.mark.parametrize("tuner", ["full", "lora", "qlora", "lisa", "freeze"])
def test_longer_sequences_never_need_less_memory(tuner):
    a = arch("qwen2.5-7b")
    for attn in ("flash", "eager"):
        required = [
            estimate(a, Setup(tuner=tuner, seq_len=s, attn=attn), ONE).required
            for s in (256, 512, 1024, 2048, 4096, 8192)
        ]
        assert required == sorted(required), (attn, required)


# --- Adafactor, paged 32-bit AdamW -------------------------------------------------------


def test_adafactor_keeps_factored_states_and_per_tensor_fp32_temporaries():
    arch = resolve_model("llama-2-7b").arch
    cluster = Cluster(gpu_spec("a100-80g"))
    ada = estimate(arch, Setup(tuner="full", optim="adafactor"), cluster)
    adam = estimate(arch, Setup(tuner="full", optim="adamw"), cluster)
    moments = {t.name: t for t in ada.terms}["optimizer moments"].bytes
    # rows + cols per matrix: tiny next to Adam's 2 x 2 bytes per param
    assert moments < adam.part("optimizer", "backward") / 500
    temp = {t.name: t for t in ada.terms}["Adafactor fp32 temporaries (largest tensor)"]
    assert temp.phases == ("step",)
    assert temp.bytes == 12 * arch.vocab * arch.hidden  # the embedding is the largest trained tensor


def test_paged_32bit_adamw_keeps_fp32_moments_outside_the_allocator():
    arch = resolve_model("llama-2-7b").arch
    est = estimate(arch, Setup(tuner="qlora", optim="paged-adamw"), Cluster(gpu_spec("a100-80g")))
    term = {t.name: t for t in est.terms}["optimizer moments"]
    assert term.pool == "driver"
    assert term.bytes == pytest.approx(8 * arch.lora_params("all-linear", 8))


def test_packed_rows_keep_no_cached_loss_blocks_of_other_lengths():
    """dataset.packing: every batch is seq_len tokens, so the allocator reuses the same loss-path blocks
    each step; unpacked batches vary in length and strand blocks (the cached term). Allocated is the same."""
    qwen = arch("qwen2.5-7b")
    loose = estimate(qwen, Setup(tuner="lora", seq_len=4096), ONE)
    packed = estimate(qwen, Setup(tuner="lora", seq_len=4096, packing=True), ONE)
    assert term(loose, "cached loss-path segments (long runs)") > 0
    assert not [t for t in packed.terms if t.name.startswith("cached loss-path")]
    assert packed.peak_allocated == loose.peak_allocated
    assert packed.peak_reserved == pytest.approx(
        loose.peak_reserved - term(loose, "cached loss-path segments (long runs)")
    )


def test_a_packed_recipe_is_planned_packed():
    from runner.recipe.resolve import planner_setup
    from runner.recipe.schema import Recipe

    recipe = Recipe()
    packed = recipe.but(dataset=recipe.dataset.__class__(**{**recipe.dataset.__dict__, "packing": True}))
    kw = dict(zero=0, offload="none", precision="bf16-true", attn="sdpa", micro_batch=1, grad_ckpt=True, seq_len=2048)
    assert planner_setup(packed, **kw).packing and not planner_setup(recipe, **kw).packing
