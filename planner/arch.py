"""Model architectures: what memory depends on, and exact parameter counts.

An `Architecture` describes one decoder-only transformer as the training code sees it: the
linear layers of one decoder block (which LoRA can target), its norms, the embeddings and the
head. Parameter counts are exact sums over those pieces, so they equal what PyTorch reports for
the real model (checked against transformers on the meta device in tests/test_catalog.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Linear:
    """One linear layer inside a decoder block."""

    name: str
    """Module name as peft sees it (`q_proj`, `c_attn`, `query_key_value`, ...)."""
    in_features: int
    out_features: int
    bias: bool
    group: str
    """`attn`, `mlp` or `router` (the MoE gate; `all-linear` leaves it out, as peft does not
    adapt a router by default)."""
    reads: str = "attn_in"
    """Which activation it reads: `attn_in` (normed block input), `attn_out` (attention context),
    `mlp_in` (normed input of the MLP) or `mlp_mid` (the MLP's hidden activation)."""
    copies: int = 1
    """How many instances one block holds (the experts of a mixture-of-experts layer)."""

    @property
    def params(self) -> int:
        """Parameters of all copies."""
        return self.copies * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class Architecture:
    """Shape of a decoder-only transformer, with what training memory depends on.

    The sizes the planner asks for on every estimate (parameter counts, fused qkv) are computed once per
    instance (`cached_property`: frozen fields, so they cannot change; equality and hashing ignore them).
    """

    family: str
    """Code family (`llama`, `qwen2`, `qwen` for Qwen-1, `chatglm`, `falcon`, ...)."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    """Key/value heads: equal to `heads` for multi-head, fewer for GQA, 1 for MQA."""
    head_dim: int
    intermediate: int
    """Width of the MLP's hidden activation (per expert for MoE)."""
    gated_mlp: bool
    """SwiGLU/GeGLU (gate * up) rather than a plain GeLU MLP: one more saved activation."""
    vocab: int
    tied_embeddings: bool
    block: tuple[Linear, ...]
    """Linear layers of one decoder block (dense layers; MoE experts carry `copies`)."""
    norm: str = "rmsnorm"
    """`rmsnorm` or `layernorm` (LayerNorm saves its fp32 input; RMSNorm an fp32 copy too)."""
    norm_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3)."""
    head_bias: bool = False
    """The LM head has a bias (phi-2)."""
    experts: int = 0
    """Routed experts per MoE layer (0 for a dense model)."""
    experts_per_token: int = 0
    moe_layers: int = 0
    """How many of the layers are MoE layers (the rest use `dense_block`)."""
    dense_block: tuple[Linear, ...] = ()
    """Block used by the non-MoE layers of a partly-MoE model."""
    parallel_block: bool = False
    """Attention and MLP read the same normed input (falcon, phi-2)."""
    max_position: int = 4096
    final_logit_softcap: bool = False
    """Gemma-2 squashes logits with tanh: extra vocabulary-sized tensors in the loss path."""
    attn_softcap: bool = False
    """Gemma-2 squashes attention scores with tanh (eager keeps one more heads x s^2 tensor)."""
    mlp_act: str = "silu"
    """`silu`/`gelu` (one fused op) or `gelu_new` (phi's GeLU written as pow/tanh/mul ops)."""
    norm_fp32_weight: bool = False
    """Gemma's RMSNorm multiplies by (1 + weight) in fp32, keeping an fp32 copy for the weight grad."""
    extra_params: int = 0
    """Parameters outside the regular pieces (e.g. learned position embeddings)."""
    sliding_window: int | None = None
    """Local attention window: from this sequence length on, transformers builds a 4-D mask."""
    fused_experts: bool = False
    """transformers 5 keeps a MoE layer's experts as two 3-D parameters, gate_up_proj (E, 2i, h) and
    down_proj (E, h, i); peft adapts them as parameters (its ParamWrapper), not as linear layers."""
    linear_subclass: str = ""
    """The block's linears are this nn.Linear subclass (falcon's FalconLinear). transformers' bitsandbytes
    quantizer converts `type(module) is nn.Linear` (and Conv1D) only (replace_with_bnb_linear,
    transformers 5.24), so a QLoRA load leaves them in the compute dtype."""
    sdpa_math: bool = False
    """The model's SDPA call passes k/v with fewer heads than q and no enable_gqa (falcon), which
    only SDPA's math kernel accepts: it upcasts to fp32 and keeps the heads x s^2 softmax, as eager."""

    # --- sizes ---------------------------------------------------------------------------

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @cached_property
    def fused_qkv(self) -> bool:
        """One projection produces q, k and v (c_attn, query_key_value, W_pack, wqkv, qkv_proj)."""
        return any(
            lin.reads == "attn_in"
            and lin.group == "attn"
            and lin.out_features == self.q_dim + 2 * self.kv_dim
            and lin.out_features > self.q_dim
            for lin in self.block
        )

    @property
    def norm_params(self) -> int:
        """Parameters of one norm over the hidden size."""
        return self.hidden * (2 if self.norm_bias else 1)

    def block_params(self, moe: bool = True) -> int:
        """Parameters of one decoder block (MoE block, or the dense block of a partly-MoE model)."""
        linears = self.block if moe or not self.dense_block else self.dense_block
        qk = 2 * self.head_dim if self.qk_norm else 0
        return sum(lin.params for lin in linears) + self.norms_per_layer * self.norm_params + qk

    @cached_property
    def layer_params(self) -> tuple[int, ...]:
        """Parameters of each decoder block, bottom to top."""
        dense = self.layers - self.moe_layers if self.dense_block else 0
        return (self.block_params(moe=False),) * dense + (self.block_params(),) * (self.layers - dense)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """Untied LM head (0 when tied to the embeddings)."""
        if self.tied_embeddings:
            return self.vocab if self.head_bias else 0
        return self.vocab * self.hidden + (self.vocab if self.head_bias else 0)

    @cached_property
    def params(self) -> int:
        """Exact total parameter count."""
        return sum(self.layer_params) + self.embedding_params + self.head_params + self.norm_params + self.extra_params

    @cached_property
    def active_params(self) -> int:
        """Parameters touched per token (MoE: only the routed experts)."""
        if not self.experts:
            return self.params
        expert = sum(lin.params // lin.copies for lin in self.block if lin.copies > 1)
        unused = self.moe_layers * expert * (self.experts - self.experts_per_token)
        return self.params - unused

    def _quantized(self) -> tuple[tuple[Linear, ...], tuple[Linear, ...], int]:
        """(linears of an MoE-or-plain block, of a dense block, number of dense blocks) that 4-bit
        quantisation converts: nothing with a `linear_subclass`, no fused experts."""
        if self.linear_subclass:
            return (), (), 0
        dense = self.layers - self.moe_layers if self.dense_block else 0
        block = tuple(lin for lin in self.block if not (self.fused_experts and lin.copies > 1))
        return block, self.dense_block, dense

    @cached_property
    def layer_linear_params(self) -> int:
        """Parameters in the linear layers of all blocks (what 4-bit quantisation converts).

        transformers' bitsandbytes quantizer (replace_with_bnb_linear) converts plain nn.Linear modules
        only: fused MoE experts (3-D nn.Parameters) and a `linear_subclass` stay in the compute dtype and
        are not counted (the CPU trace of a qwen3_moe or falcon QLoRA step holds them at 16 bits)."""
        block, dense_block, dense = self._quantized()
        return dense * sum(lin.params for lin in dense_block) + (self.layers - dense) * sum(lin.params for lin in block)

    @cached_property
    def quantized_linears(self) -> int:
        """4-bit linear modules in the model (those layer_linear_params counts; an unfused expert is one
        module per expert)."""
        block, dense_block, dense = self._quantized()
        return dense * sum(lin.copies for lin in dense_block) + (self.layers - dense) * sum(lin.copies for lin in block)

    @cached_property
    def fused_expert_params(self) -> int:
        """Parameters of fused MoE experts (3-D nn.Parameters, not nn.Linear)."""
        if not self.fused_experts:
            return 0
        dense = self.layers - self.moe_layers if self.dense_block else 0
        return (self.layers - dense) * sum(lin.params for lin in self.block if lin.copies > 1)

    # --- LoRA ----------------------------------------------------------------------------

    def linear_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(lin.name for lin in self.block + self.dense_block))

    def lora_targets(self, spec: str | tuple[str, ...]) -> tuple[Linear, ...]:
        """The block's linears selected by `all-linear`, `attn`, `mlp` or a list of names.

        Raises ValueError naming the valid module names when a name is not in this block.
        """
        names = _split_names(spec)
        block = self.block
        if names == ("all-linear",):
            return block  # peft's all-linear: every nn.Linear but the LM head, a MoE router included
        if names in (("attn",), ("mlp",)):
            return tuple(lin for lin in block if lin.group == names[0])
        valid = self.linear_names()
        expanded = [self._by_role(name) if name not in valid else name for name in names]
        unknown = [n for n in expanded if n not in valid]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} is not a linear layer of {self.family} blocks; "
                f"use all-linear, attn, mlp or some of: {', '.join(valid)}"
            )
        return tuple(lin for lin in block if lin.name in expanded)

    def _by_role(self, name: str) -> str:
        """Llama's module names on other families: `q_proj` -> the one attention-input projection
        (c_attn, query_key_value, qkv_proj, W_pack, wqkv), `gate_proj`/`up_proj` -> a fused
        gate_up_proj, `o_proj` -> the attention output, `down_proj` -> the MLP output. Names that
        match no single module are returned unchanged (and reported as unknown)."""
        role = {
            "q_proj": "attn_in",
            "k_proj": "attn_in",
            "v_proj": "attn_in",
            "o_proj": "attn_out",
            "gate_proj": "mlp_in",
            "up_proj": "mlp_in",
            "down_proj": "mlp_mid",
        }.get(name)
        matches = [lin.name for lin in self.block if lin.reads == role and lin.group != "router"]
        return matches[0] if len(matches) == 1 else name

    def lora_params(self, spec: str | tuple[str, ...], rank: int) -> int:
        """Trainable LoRA parameters: A (r x in) and B (out x r) for every targeted linear.

        Fused experts (peft ParamWrapper on a 3-D parameter of E experts): one pair per stack, A
        (E r' x in) and B (out x E r'), where the gate/up stack counts gate and up as two experts
        each (r' = r, out = 2i): peft's lora_A/lora_B shapes for transformers 5 MoE layers."""
        names = {lin.name for lin in self.lora_targets(spec)}

        def per_block(linears: tuple[Linear, ...]) -> int:
            total = 0
            for lin in linears:
                if lin.name not in names:
                    continue
                if self.fused_experts and lin.copies > 1:
                    total += fused_expert_lora(lin, linears, rank)
                else:
                    total += lin.copies * rank * (lin.in_features + lin.out_features)
            return total

        dense = self.layers - self.moe_layers if self.dense_block else 0
        return dense * per_block(self.dense_block) + (self.layers - dense) * per_block(self.block)


class ArchMemo:
    """Answers remembered per architecture instance and key, for the planner's searches (hundreds of
    estimates per `ftui plan` that share most of their parts). Keyed by the instance's id and checked
    by identity (the entry holds the instance, so its id cannot be reused while remembered); cleared
    when it grows past `limit`."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._entries: dict[tuple, tuple[Architecture, object]] = {}

    def get(self, arch: Architecture, key: tuple, make):
        full = (id(arch), *key)
        hit = self._entries.get(full)
        if hit is not None and hit[0] is arch:
            return hit[1]
        value = make()
        if len(self._entries) > self.limit:
            self._entries.clear()
        self._entries[full] = (arch, value)
        return value


def fused_expert_lora(lin: Linear, linears: tuple[Linear, ...], rank: int) -> int:
    """LoRA parameters peft gives the fused stack `lin` belongs to, counted on its first member: the
    gate/up stack (two experts' worth of rank per expert, B dense over 2i) or the down stack."""
    experts = lin.copies
    if lin.reads == "mlp_in":
        pair = [x for x in linears if x.reads == "mlp_in" and x.copies == experts]
        if lin is not pair[0]:
            return 0
        out = sum(x.out_features for x in pair)
        r = rank * len(pair) * experts
        return r * lin.in_features + out * r
    r = rank * experts
    return r * lin.in_features + lin.out_features * r


def _split_names(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(spec, str):
        return tuple(part.strip() for part in spec.split(",") if part.strip())
    return tuple(spec)
