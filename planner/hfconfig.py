"""Read a Hugging Face `config.json` (as a dict) into an `Architecture`.

Each family's block layout follows the model code it runs under: transformers' own modeling
files for llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma, gemma2, glm, phi, phi3 and
falcon; the models' remote code for Qwen-1 (`qwen`), ChatGLM (`chatglm`), Baichuan and InternLM2.
"""

from __future__ import annotations

from typing import Any, Callable

from .arch import Architecture, Linear

Config = dict[str, Any]


class ConfigError(ValueError):
    """A config.json this planner cannot read (unknown family or missing keys)."""


def _get(cfg: Config, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    if default is None:
        raise ConfigError(f"config.json has none of the keys {', '.join(keys)}")
    return default


def _common(cfg: Config, head_dim: int | None = None) -> dict[str, Any]:
    """Shared fields; `head_dim` is the family's default when the config omits it (transformers'
    Qwen3/GLM configs default to 128, Gemma's to 256), else hidden / heads."""
    hidden = _get(cfg, "hidden_size", "n_embd", "d_model")
    heads = _get(cfg, "num_attention_heads", "n_head", "num_heads")
    kv_heads = _get(cfg, "num_key_value_heads", "num_kv_heads", default=heads)
    return dict(
        layers=_get(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=_get(cfg, "head_dim", default=head_dim or hidden // heads),
        vocab=_get(cfg, "vocab_size", "padded_vocab_size"),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=_get(cfg, "max_position_embeddings", "seq_length", default=4096),
        sliding_window=_sliding_window(cfg),
    )


def _sliding_window(cfg: Config) -> int | None:
    """The local-attention window transformers applies (a mask is built for sequences that reach it)."""
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or cfg.get("use_sliding_window") is False:
        return None
    return window


def _attn(c: dict[str, Any], qkv_bias: bool, o_bias: bool) -> tuple[Linear, ...]:
    h, q, kv = c["hidden"], c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    return (
        Linear("q_proj", h, q, qkv_bias, "attn"),
        Linear("k_proj", h, kv, qkv_bias, "attn"),
        Linear("v_proj", h, kv, qkv_bias, "attn"),
        Linear("o_proj", q, h, o_bias, "attn", "attn_out"),
    )


def _swiglu(
    h: int,
    i: int,
    bias: bool = False,
    copies: int = 1,
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> tuple[Linear, ...]:
    gate, up, down = names
    return (
        Linear(gate, h, i, bias, "mlp", "mlp_in", copies),
        Linear(up, h, i, bias, "mlp", "mlp_in", copies),
        Linear(down, i, h, bias, "mlp", "mlp_mid", copies),
    )


def _llama(cfg: Config) -> Architecture:
    # transformers LlamaAttention: q/k/v/o all take `attention_bias`; LlamaMLP takes `mlp_bias`.
    c = _common(cfg)
    bias = bool(cfg.get("attention_bias", False))
    block = _attn(c, bias, bias) + _swiglu(c["hidden"], cfg["intermediate_size"], bool(cfg.get("mlp_bias", False)))
    return Architecture(family="llama", intermediate=cfg["intermediate_size"], gated_mlp=True, block=block, **c)


def _qwen2(cfg: Config) -> Architecture:
    # Qwen2Attention: bias on q/k/v only.
    c = _common(cfg)
    block = _attn(c, True, False) + _swiglu(c["hidden"], cfg["intermediate_size"])
    return Architecture(family="qwen2", intermediate=cfg["intermediate_size"], gated_mlp=True, block=block, **c)


def _qwen3(cfg: Config) -> Architecture:
    # Qwen3Attention: optional bias on q/k/v/o, RMSNorm over head_dim on q and k.
    c = _common(cfg, head_dim=128)
    bias = bool(cfg.get("attention_bias", False))
    block = _attn(c, bias, bias) + _swiglu(c["hidden"], cfg["intermediate_size"])
    return Architecture(
        family="qwen3", intermediate=cfg["intermediate_size"], gated_mlp=True, block=block, qk_norm=True, **c
    )


def _moe(
    cfg: Config,
    family: str,
    experts: int,
    top_k: int,
    expert_i: int,
    names: tuple[str, str, str],
    qk_norm: bool,
    moe_layers: int,
    dense_i: int,
) -> Architecture:
    c = _common(cfg, head_dim=128 if qk_norm else None)
    bias = bool(cfg.get("attention_bias", False))
    attn = _attn(c, bias, bias)
    router = Linear("gate", c["hidden"], experts, False, "router", "mlp_in")
    block = attn + (router,) + _swiglu(c["hidden"], expert_i, copies=experts, names=names)
    dense = attn + _swiglu(c["hidden"], dense_i) if moe_layers < c["layers"] else ()
    return Architecture(
        family=family,
        intermediate=expert_i,
        gated_mlp=True,
        block=block,
        qk_norm=qk_norm,
        experts=experts,
        experts_per_token=top_k,
        moe_layers=moe_layers,
        dense_block=dense,
        fused_experts=True,  # transformers 5's grouped experts (3-D gate_up_proj / down_proj parameters)
        **c,
    )


def _mixtral(cfg: Config) -> Architecture:
    # MixtralSparseMoeBlock: router `gate` (hidden -> experts), experts w1/w3 (hidden -> i), w2 (i -> hidden).
    layers = cfg["num_hidden_layers"]
    return _moe(
        cfg,
        "mixtral",
        cfg["num_local_experts"],
        cfg["num_experts_per_tok"],
        cfg["intermediate_size"],
        ("w1", "w3", "w2"),
        False,
        layers,
        cfg["intermediate_size"],
    )


def _qwen3_moe(cfg: Config) -> Architecture:
    # Qwen3MoeDecoderLayer: sparse when not in mlp_only_layers and (idx + 1) % decoder_sparse_step == 0.
    layers, step = cfg["num_hidden_layers"], cfg.get("decoder_sparse_step", 1)
    dense_only = set(cfg.get("mlp_only_layers") or [])
    moe = sum(1 for i in range(layers) if i not in dense_only and step > 0 and (i + 1) % step == 0)
    return _moe(
        cfg,
        "qwen3_moe",
        cfg["num_experts"],
        cfg["num_experts_per_tok"],
        cfg["moe_intermediate_size"],
        ("gate_proj", "up_proj", "down_proj"),
        True,
        moe,
        cfg["intermediate_size"],
    )


def _gemma(cfg: Config) -> Architecture:
    # GemmaMLP is GeGLU (gate/up/down); embeddings tied; head_dim given explicitly (256 on gemma-7b).
    c = _common(cfg, head_dim=256)
    c["tied_embeddings"] = bool(cfg.get("tie_word_embeddings", True))
    bias = bool(cfg.get("attention_bias", False))
    block = _attn(c, bias, bias) + _swiglu(c["hidden"], cfg["intermediate_size"])
    gemma2 = cfg.get("model_type") == "gemma2"
    return Architecture(
        family="gemma2" if gemma2 else "gemma",
        intermediate=cfg["intermediate_size"],
        gated_mlp=True,
        block=block,
        norms_per_layer=4 if gemma2 else 2,
        norm_fp32_weight=True,
        final_logit_softcap=bool(cfg.get("final_logit_softcapping")),
        attn_softcap=bool(cfg.get("attn_logit_softcapping")),
        **c,
    )


def _glm(cfg: Config) -> Architecture:
    # transformers GlmAttention: bias on q/k/v (attention_bias), none on o; GlmMLP fuses gate and up.
    c = _common(cfg, head_dim=128)
    bias = bool(cfg.get("attention_bias", True))
    h, i = c["hidden"], cfg["intermediate_size"]
    block = _attn(c, bias, False) + (
        Linear("gate_up_proj", h, 2 * i, False, "mlp", "mlp_in"),
        Linear("down_proj", i, h, False, "mlp", "mlp_mid"),
    )
    return Architecture(family="glm", intermediate=i, gated_mlp=True, block=block, **c)


def _phi(cfg: Config) -> Architecture:
    # PhiDecoderLayer: one LayerNorm feeding attention and MLP in parallel; biases everywhere; head with bias.
    c = _common(cfg)
    h, i = c["hidden"], cfg["intermediate_size"]
    q, kv = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    block = (
        Linear("q_proj", h, q, True, "attn"),
        Linear("k_proj", h, kv, True, "attn"),
        Linear("v_proj", h, kv, True, "attn"),
        Linear("dense", q, h, True, "attn", "attn_out"),
        Linear("fc1", h, i, True, "mlp", "mlp_in"),
        Linear("fc2", i, h, True, "mlp", "mlp_mid"),
    )
    act = "gelu_new" if cfg.get("hidden_act", "gelu_new") == "gelu_new" else "gelu"
    return Architecture(
        family="phi",
        intermediate=i,
        gated_mlp=False,
        block=block,
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=1,
        parallel_block=True,
        head_bias=True,
        mlp_act=act,
        **c,
    )


def _phi3(cfg: Config) -> Architecture:
    # Phi3Attention fuses q/k/v into qkv_proj; Phi3MLP fuses gate and up into gate_up_proj.
    c = _common(cfg)
    h, i = c["hidden"], cfg["intermediate_size"]
    q, kv = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    block = (
        Linear("qkv_proj", h, q + 2 * kv, False, "attn"),
        Linear("o_proj", q, h, False, "attn", "attn_out"),
        Linear("gate_up_proj", h, 2 * i, False, "mlp", "mlp_in"),
        Linear("down_proj", i, h, False, "mlp", "mlp_mid"),
    )
    return Architecture(family="phi3", intermediate=i, gated_mlp=True, block=block, **c)


def _falcon(cfg: Config) -> Architecture:
    # FalconDecoderLayer: fused query_key_value; multi-query (one kv head) unless new_decoder_architecture
    # (then num_kv_heads, and two LayerNorms ln_attn/ln_mlp); GeLU MLP of width 4h; tied head.
    c = _common(cfg)
    h, heads, d = c["hidden"], c["heads"], c["head_dim"]
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    if new_arch:
        kv = _get(cfg, "num_kv_heads", "n_head_kv", default=heads)
    else:
        kv = 1 if cfg.get("multi_query", True) else heads
    c["kv_heads"] = kv
    c["tied_embeddings"] = bool(cfg.get("tie_word_embeddings", True))
    i = cfg.get("ffn_hidden_size") or 4 * h
    bias = bool(cfg.get("bias", False))
    block = (
        Linear("query_key_value", h, (heads + 2 * kv) * d, bias, "attn"),
        Linear("dense", heads * d, h, bias, "attn", "attn_out"),
        Linear("dense_h_to_4h", h, i, bias, "mlp", "mlp_in"),
        Linear("dense_4h_to_h", i, h, bias, "mlp", "mlp_mid"),
    )
    parallel = bool(cfg.get("parallel_attn", True))
    norms = (cfg.get("num_ln_in_parallel_attn") or 2) if new_arch else (1 if parallel else 2)
    return Architecture(
        family="falcon",
        intermediate=i,
        gated_mlp=False,
        block=block,
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=norms,
        parallel_block=parallel or new_arch,
        mlp_act="gelu",
        # transformers >= 5.25 sends FalconAttention through the shared attention interface, which repeats
        # k/v (or passes enable_gqa) like every other model's: the flash/efficient SDPA kernels, no s^2 softmax.
        # (Before, it handed SDPA unrepeated k/v without enable_gqa, which only the math kernel accepts.)
        sdpa_math=False,
        linear_subclass="FalconLinear",
        **c,
    )


def _gpt_neox(cfg: Config) -> Architecture:
    # GPTNeoXLayer: fused query_key_value and dense with biases, GeLU MLP, two LayerNorms (the
    # parallel residual feeds attention and MLP from separate norms of the same input), untied head.
    c = _common(cfg)
    h, i = c["hidden"], cfg.get("intermediate_size") or 4 * c["hidden"]
    block = (
        Linear("query_key_value", h, 3 * h, True, "attn"),
        Linear("dense", h, h, True, "attn", "attn_out"),
        Linear("dense_h_to_4h", h, i, True, "mlp", "mlp_in"),
        Linear("dense_4h_to_h", i, h, True, "mlp", "mlp_mid"),
    )
    return Architecture(
        family="gpt_neox",
        intermediate=i,
        gated_mlp=False,
        block=block,
        norm="layernorm",
        norm_bias=True,
        mlp_act="gelu",
        **c,
    )


def _qwen1(cfg: Config) -> Architecture:
    # Qwen-1 remote code (modeling_qwen.py): c_attn hidden->3*hidden with bias; c_proj without bias;
    # MLP w1, w2 (hidden -> intermediate/2) and c_proj (intermediate/2 -> hidden).
    c = _common(cfg)
    h, half = c["hidden"], cfg["intermediate_size"] // 2
    proj = cfg.get("kv_channels", c["head_dim"]) * c["heads"]
    no_bias = bool(cfg.get("no_bias", True))
    block = (
        Linear("c_attn", h, 3 * proj, True, "attn"),
        Linear("c_proj", proj, h, not no_bias, "attn", "attn_out"),
        Linear("w1", h, half, not no_bias, "mlp", "mlp_in"),
        Linear("w2", h, half, not no_bias, "mlp", "mlp_in"),
        Linear("mlp.c_proj", half, h, not no_bias, "mlp", "mlp_mid"),
    )
    return Architecture(family="qwen", intermediate=half, gated_mlp=True, block=block, **c)


def _chatglm(cfg: Config) -> Architecture:
    # ChatGLM2/3 remote code: query_key_value with bias (add_qkv_bias), multi-query groups of kv_channels;
    # dense_h_to_4h produces 2 * ffn_hidden_size (SwiGLU); output_layer untied.
    c = _common(cfg)
    h, heads = c["hidden"], c["heads"]
    d = cfg.get("kv_channels", h // heads)
    groups = cfg.get("multi_query_group_num", heads) if cfg.get("multi_query_attention") else heads
    c.update(head_dim=d, kv_heads=groups, vocab=_get(cfg, "padded_vocab_size", "vocab_size"), tied_embeddings=False)
    lin_bias, qkv_bias = bool(cfg.get("add_bias_linear", False)), bool(cfg.get("add_qkv_bias", True))
    i = cfg["ffn_hidden_size"]
    block = (
        Linear("query_key_value", h, heads * d + 2 * groups * d, lin_bias or qkv_bias, "attn"),
        Linear("dense", heads * d, h, lin_bias, "attn", "attn_out"),
        Linear("dense_h_to_4h", h, 2 * i, lin_bias, "mlp", "mlp_in"),
        Linear("dense_4h_to_h", i, h, lin_bias, "mlp", "mlp_mid"),
    )
    norm = "rmsnorm" if cfg.get("rmsnorm", True) else "layernorm"
    return Architecture(family="chatglm", intermediate=i, gated_mlp=True, block=block, norm=norm, **c)


def _baichuan(cfg: Config) -> Architecture:
    # Baichuan2 remote code: W_pack (hidden -> 3*hidden) and o_proj without bias; NormHead untied.
    c = _common(cfg)
    h, i = c["hidden"], cfg["intermediate_size"]
    block = (Linear("W_pack", h, 3 * h, False, "attn"), Linear("o_proj", h, h, False, "attn", "attn_out")) + _swiglu(
        h, i
    )
    return Architecture(family="baichuan", intermediate=i, gated_mlp=True, block=block, **c)


def _internlm2(cfg: Config) -> Architecture:
    # InternLM2 remote code: fused wqkv (q heads + 2 * kv heads), wo, feed_forward w1/w3 (gate/up), w2.
    c = _common(cfg)
    h, i = c["hidden"], cfg["intermediate_size"]
    q, kv = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    bias = bool(cfg.get("bias", False))
    block = (
        Linear("wqkv", h, q + 2 * kv, bias, "attn"),
        Linear("wo", q, h, bias, "attn", "attn_out"),
        Linear("w1", h, i, False, "mlp", "mlp_in"),
        Linear("w3", h, i, False, "mlp", "mlp_in"),
        Linear("w2", i, h, False, "mlp", "mlp_mid"),
    )
    return Architecture(family="internlm2", intermediate=i, gated_mlp=True, block=block, **c)


READERS: dict[str, Callable[[Config], Architecture]] = {
    "llama": _llama,
    "mistral": _llama,
    "yi": _llama,
    "deepseek": _llama,
    "internlm": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "mixtral": _mixtral,
    "qwen3_moe": _qwen3_moe,
    "gemma": _gemma,
    "gemma2": _gemma,
    "glm": _glm,
    "phi": _phi,
    "phi3": _phi3,
    "falcon": _falcon,
    "RefinedWeb": _falcon,
    "RefinedWebModel": _falcon,
    "gpt_neox": _gpt_neox,
    "qwen": _qwen1,
    "chatglm": _chatglm,
    "baichuan": _baichuan,
    "internlm2": _internlm2,
}


def architecture_from_config(cfg: Config) -> Architecture:
    """The architecture a config.json describes; ConfigError says what is missing or unknown."""
    model_type = cfg.get("model_type")
    reader = READERS.get(model_type or "")
    if reader is None:
        known = ", ".join(sorted(READERS))
        raise ConfigError(f"model_type {model_type!r} is not supported; supported: {known}")
    try:
        return reader(cfg)
    except KeyError as err:
        raise ConfigError(f"config.json for model_type {model_type!r} lacks the key {err.args[0]!r}") from None
