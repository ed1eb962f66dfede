"""The activation side of one training step, walked in the order the step runs.

The model states (weights, gradients, optimizer states) are alive throughout. On top of them,
memory peaks at one of a few moments of the forward and backward pass, and which one depends on the
setup. Each is modelled as an event with everything alive at that moment; the largest is the
`backward` phase's activation part (the optimizer step is memory.optimizer_terms'):

- forward end: the saved activations (or checkpointed block inputs), the autocast cache, and the
  loss path's forward (logits, their fp32 copy, log-softmax);
- cross-entropy backward: the log-softmax output and two fp32 gradients of the logits;
- LM head backward (a trained head): the 16-bit logits gradient and the head's weight gradient;
- the top block's backward: everything saved, the block recomputed (checkpointing), the
  gradients of its activations and of its weights;
- the bottom block's backward (without accumulated gradients, those of every block above exist);
- the embedding backward (trained embeddings): the dense vocab x hidden gradient (three of them
  at once when the head is tied to the embeddings: the head's, the embedding's and their sum).

Sources, read from the code that runs (torch 2.13, transformers 5, peft 0.21, accelerate 1.15)
and checked against ftui's trace of that code (runner/train/trace.py):
- HF Trainer with bf16=True runs the forward under accelerate's autocast, also for a bf16 model;
  autocast caches the 16-bit copy of every fp32 weight that requires grad until the forward ends
  (torch/csrc/autograd autocast `cached_cast`), and the copy the LM head multiplies with stays
  saved until the head's backward.
- transformers' ForCausalLMLoss upcasts the logits to fp32 and calls cross_entropy
  (log_softmax + nll_loss); the log-softmax output is saved for backward.
- autograd hands a weight gradient to AccumulateGrad, which adds it into an existing `.grad`
  (accumulation) or keeps it as `.grad`; a weight used twice (tied embeddings) has its gradients
  summed in the node's input buffer first, so the head's gradient waits until the embedding's.
- peft's DoRA computes the adapter's full weight delta by passing an identity matrix of the input
  width through lora_A and lora_B (`DoraLinearLayer.get_lora_weight`), then the column norms of
  W + delta in the input dtype: big temporaries in every adapted layer's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .activations import BlockActivations, block_activations, builds_4d_mask
from .arch import ArchMemo, Architecture, Linear


@dataclass(frozen=True)
class Piece:
    part: str
    name: str
    bytes: float
    source: str = ""


@dataclass(frozen=True)
class Event:
    name: str
    pieces: tuple[Piece, ...]

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.pieces)


def _largest(linears: tuple[Linear, ...]) -> int:
    return max((lin.in_features * lin.out_features for lin in linears), default=0)


def _block_linear_params(linears: tuple[Linear, ...]) -> int:
    return sum(lin.copies * lin.in_features * lin.out_features for lin in linears)


@dataclass(frozen=True)
class DoraMoment:
    """One DoRA layer building its weight norm: its temporaries, the fp32 copies of its input per
    token, and the saved weight copies of this and the later DoRA layers of the block (not made yet)."""

    transient: float
    inputs_per_token: float
    later_consts: float
    output_const: float = 0.0
    """While the output is combined: the weight and the delta cast to the fp32 input dtype."""
    output_per_token: float = 0.0
    """(m/|W'| - 1) * base + (m/|W'|) * lora * scale in fp32 (the magnitude is fp32): three tensors."""


def dora_moments(arch: Architecture, adapters: tuple[Linear, ...], compute: int, dropout: float) -> list[DoraMoment]:
    """peft's DoRA, for each adapted linear in block order: an fp32 identity of the input width (the
    adapter dtype) and, under 16-bit autocast, its 16-bit copy plus lora_B's output; then the delta
    (in x out) and the weight cast to the input dtype with their scaled sum (14 B per weight element
    in the trace of bf16 runs). Its input is held in fp32 (peft's cast, and the dropped-out copy)."""
    widths = {"attn_in": arch.hidden, "attn_out": arch.q_dim, "mlp_in": arch.hidden, "mlp_mid": arch.intermediate}
    consts = [
        lin.copies * compute * lin.in_features * lin.out_features if dropout > 0 and compute != 4 else 0.0
        for lin in adapters
    ]
    out = []
    for k, lin in enumerate(adapters):
        i, o = lin.in_features, lin.out_features
        if compute != 4:
            transient = max(6 * i * i + 2 * i * o, 14 * i * o)
        else:
            transient = max(4 * i * i + 4 * i * o, 16 * i * o)
        inputs = (4 + (4 if dropout > 0 else 0)) * widths[lin.reads]
        out.append(DoraMoment(transient, inputs, sum(consts[k:]), 8 * i * o, 12 * o))
    return out


_WALKS = ArchMemo()
"""walk's events per arguments: the recommender's search asks for the same walk under several engines
and offloads (ZeRO 0 and 1 keep the same activations)."""


def walk(arch: Architecture, **kw) -> list[Event]:
    """Every candidate peak of the forward and backward pass (see _walk), remembered per arguments."""
    return list(_WALKS.get(arch, tuple(sorted(kw.items())), lambda: tuple(_walk(arch, **kw))))


def _walk(
    arch: Architecture,
    *,
    tokens: int,
    seq_len: int,
    micro_batch: int,
    trained: BlockActivations,
    frozen: BlockActivations,
    n_trained: int,
    n_frozen_with_grad: int,
    grad_ckpt: bool,
    head_trainable: bool,
    embedding_trainable: bool,
    grads_persist: bool,
    compute: int,
    stream: int,
    weight: int,
    grad: int,
    autocast_fp32_weights: bool,
    trained_linears: tuple[Linear, ...],
    frozen_fp32_head: bool = False,
    dora: tuple[DoraMoment, ...] = (),
    grad_shard: int = 1,
) -> list[Event]:
    """Every candidate peak of the forward and backward pass (bytes beyond the model states).

    `n_trained` blocks have trained weights and `n_frozen_with_grad` frozen blocks still run
    backward (LoRA's base, LISA's inactive layers). `weight`/`grad`: bytes of a base weight and of
    its gradient; `compute`/`stream`: of matmul outputs and of the residual stream.
    """
    T, s, V, H = tokens, seq_len, arch.vocab, arch.hidden
    n_grad = n_trained + n_frozen_with_grad

    def saved(b: BlockActivations) -> float:
        return b.saved * T + b.saved_scores * T * s + b.saved_const

    def transient(b: BlockActivations) -> float:
        return b.transient * T + b.transient_scores * T * s

    block_lin = _block_linear_params(trained_linears)
    cast = 2 if autocast_fp32_weights else 0
    """bytes of the 16-bit copy autocast makes of an fp32 weight"""
    wgrad_temp = (compute + 4) if autocast_fp32_weights else weight
    """a weight gradient on its way to .grad: the matmul's 16-bit result and its fp32 cast (mixed)"""

    # --- forward end ------------------------------------------------------------------------
    final_norm = (4 * H + (compute * H if head_trainable else 0)) * T
    if grad_ckpt:
        kept = Piece(
            "activations",
            "checkpointed block inputs",
            n_grad * stream * H * T + final_norm,
            f"{n_grad} blocks x hidden x {stream} B per token",
        )
    else:
        blocks = n_trained * saved(trained) + n_frozen_with_grad * saved(frozen) + final_norm
        if cast:
            blocks += cast * block_lin * n_trained  # the 16-bit weight copies the matmuls saved
        kept = Piece("activations", "saved activations", blocks, f"{n_grad} blocks' saved tensors")
    # The head's 16-bit copy, made by autocast from an fp32 head (trained, or QLoRA's upcast one) and
    # saved by its matmul for the input gradient until the head's backward.
    head_cast = (
        [Piece("weights", "16-bit copy of the LM head (autocast)", 2 * V * H, "saved by the head's matmul")]
        if cast or frozen_fp32_head
        else []
    )
    cache = (
        [Piece("weights", "autocast cache of 16-bit weights", cast * block_lin * n_trained, "until the forward ends")]
        if cast and grad_ckpt
        else []
    )
    # Gemma-2 soft-caps the logits (divide, tanh, multiply) in the compute dtype; tanh's output is
    # kept for backward, one more 16-bit tensor the size of the logits (not fp32).
    softcap = compute * V * T if arch.final_logit_softcap else 0
    loss_fwd = (10 if compute == 2 else 8) * V * T + softcap
    events = [
        Event(
            "forward end",
            (
                kept,
                *cache,
                *head_cast,
                Piece("logits", "logits, fp32 copy and log-softmax", loss_fwd, f"vocab {V:,} x {T:,} tokens"),
            ),
        ),
        Event(
            "cross-entropy backward",
            (
                kept,
                *head_cast,
                Piece(
                    "logits",
                    "log-softmax and its fp32 gradients",
                    12 * V * T + softcap,
                    f"12 B x vocab {V:,} x {T:,} tokens" + (" + the soft-cap's tanh output" if softcap else ""),
                ),
            ),
        ),
    ]
    top_block = trained if n_trained else frozen
    for moment in dora:
        # The DoRA layer's norm in the top block, with the blocks below saved (no checkpointing) or
        # the top block being recomputed in backward (checkpointing): what the block has saved so far.
        so_far = saved(top_block) - moment.later_consts
        events.append(
            Event(
                "DoRA weight norm",
                (
                    kept if not grad_ckpt else Piece("activations", "checkpointed inputs", kept.bytes),
                    Piece(
                        "activations",
                        "block saved so far" + (" (recomputed)" if grad_ckpt else ""),
                        so_far if grad_ckpt else -moment.later_consts,
                    ),
                    Piece(
                        "activations",
                        "fp32 input of the DoRA layer",
                        moment.inputs_per_token * T,
                        "peft's cast and dropout",
                    ),
                    Piece(
                        "activations",
                        "DoRA identity and weight delta",
                        moment.transient,
                        "peft's get_lora_weight, weight norm",
                    ),
                ),
            )
        )
        events.append(
            Event(
                "DoRA output",
                (
                    kept if not grad_ckpt else Piece("activations", "checkpointed inputs", kept.bytes),
                    Piece("activations", "block saved so far", so_far if grad_ckpt else -moment.later_consts),
                    Piece("activations", "fp32 input of the DoRA layer", moment.inputs_per_token * T),
                    Piece("activations", "fp32 weight and delta", moment.output_const, "cast to the input dtype"),
                    Piece(
                        "activations", "fp32 DoRA output terms", moment.output_per_token * T, "the magnitude is fp32"
                    ),
                ),
            )
        )

    # --- LM head backward -------------------------------------------------------------------------
    head_grad_waits: list[Piece] = []
    grads_so_far: list[Piece] = []
    if head_trainable:
        g_head = 4 if autocast_fp32_weights else grad
        new = Piece("gradients", "LM head weight gradient", compute * V * H, "head matmul's weight gradient")
        grad_logits = Piece("logits", "16-bit logits gradient", compute * V * T, "cast back for the head's matmul")
        events.append(Event("LM head backward", (kept, *head_cast, grad_logits, new)))
        if autocast_fp32_weights:
            events.append(
                Event(
                    "LM head gradient cast to fp32",
                    (kept, new, Piece("gradients", "fp32 LM head gradient", 4 * V * H, "autocast cast's backward")),
                )
            )
        if arch.tied_embeddings:
            head_grad_waits = [
                Piece("gradients", "head gradient waiting for the tied embedding's", g_head * V * H, "input buffer")
            ]
        elif not grads_persist:
            grads_so_far.append(
                Piece("gradients", "LM head gradient", g_head * V * H / grad_shard, "kept as .grad (its ZeRO share)")
            )

    # --- blocks -------------------------------------------------------------------------------------
    if n_grad:
        top_trained = n_trained > 0
        top = trained if top_trained else frozen
        top_saved = saved(top)
        recompute = top_saved + (cast * _block_linear_params(trained_linears) if top_trained else 0)
        wg = wgrad_temp * _largest(trained_linears) if top_trained else 0
        pieces = [kept, *head_grad_waits, *grads_so_far]
        if grad_ckpt:
            pieces.append(Piece("activations", "recomputed block", recompute, "one block re-run in backward"))
        pieces.append(Piece("activations", "block backward", transient(top), "gradients of its activations"))
        if wg:
            pieces.append(Piece("gradients", "weight gradient in flight", wg, "largest linear's, before .grad"))
        if top.attn_transient_scores:
            attention = [p for p in pieces if p.name not in ("block backward", "weight gradient in flight")]
            attention += [
                Piece("activations", "MLP half done", -(top.mlp_saved * T + top.saved_scores * T * s)),
                Piece(
                    "activations",
                    "eager attention backward",
                    top.attn_transient * T + top.attn_transient_scores * T * s,
                    "fp32 softmax, the fp32 gradient of the probabilities and softmax's gradient",
                ),
            ]
            events.append(Event("top block attention backward", tuple(attention)))
        events.append(Event("top block backward", tuple(pieces)))
        if n_grad > 1:
            bottom_trained = n_frozen_with_grad == 0
            bottom = trained if bottom_trained else frozen
            remaining = (stream * H * T) if grad_ckpt else saved(bottom)
            above = []
            if not grads_persist and n_trained:
                done = n_trained - (1 if bottom_trained else 0)
                above.append(
                    Piece("gradients", "gradients of the blocks above", done * block_lin * grad / grad_shard, ".grad")
                )
            pieces = [
                Piece("activations", "bottom block's saved input" if grad_ckpt else "bottom block's saved", remaining),
                *head_grad_waits,
                *grads_so_far,
                *above,
                Piece("activations", "block backward", transient(bottom), "gradients of its activations"),
            ]
            if grad_ckpt:
                rec = saved(bottom) + (cast * block_lin if bottom_trained else 0)
                pieces.append(Piece("activations", "recomputed block", rec, "one block re-run in backward"))
            if bottom_trained:
                pieces.append(Piece("gradients", "weight gradient in flight", wgrad_temp * _largest(trained_linears)))
            events.append(Event("bottom block backward", tuple(pieces)))

    # --- embeddings ------------------------------------------------------------------------------------
    if embedding_trainable:
        g_emb = 4 if autocast_fp32_weights else grad
        above = []
        if not grads_persist:
            above.append(
                Piece("gradients", "gradients of every block", n_trained * block_lin * grad / grad_shard, ".grad")
            )
        if arch.tied_embeddings:
            emb = Piece(
                "gradients",
                "tied embedding: head and embedding gradients and their sum",
                (2 if grads_persist else 2) * g_emb * V * H + g_emb * V * H,
                "summed in the input buffer before .grad",
            )
            events.append(Event("embedding backward", (*above, emb)))
        elif grads_persist:
            dense = Piece("gradients", "dense embedding gradient", g_emb * V * H, "added into .grad")
            events.append(Event("embedding backward", (*above, *grads_so_far, dense)))
        else:  # the end of backward: every gradient exists, the embedding's last
            dense = Piece("gradients", "embedding gradient", g_emb * V * H, "made whole, then kept (or its share)")
            events.append(Event("embedding backward", (*above, *grads_so_far, dense)))
    return events


def peak(events: list[Event]) -> Event:
    return max(events, key=lambda e: e.bytes)


def effective_dropout(arch: Architecture, setup) -> float:
    """LoRA dropout as the run applies it: 0 when peft adapts fused MoE experts (its ParamWrapper
    refuses dropout, and the runner turns it off for the whole adapter)."""
    if not setup.adapters:
        return 0.0
    if arch.fused_experts and any(lin.copies > 1 for lin in arch.lora_targets(setup.lora_targets)):
        return 0.0
    return setup.lora_dropout


_BLOCKS = ArchMemo()
"""blocks_for's answers: the recommender asks for the same blocks hundreds of times per plan."""


def blocks_for(arch, setup, w, *, trainable: bool) -> BlockActivations:
    key = (
        trainable,
        setup.tuner,
        setup.lora_targets if setup.adapters else "",
        setup.lora_rank,
        effective_dropout(arch, setup),
        setup.dora,
        setup.attn,
        builds_4d_mask(arch, setup.micro_batch, setup.seq_len),  # all block_activations reads of both
        w.act,
    )
    return _BLOCKS.get(
        arch,
        key,
        lambda: block_activations(
            arch,
            trainable=trainable,
            adapters=arch.lora_targets(setup.lora_targets) if setup.adapters else (),
            lora_rank=setup.lora_rank,
            quantized=setup.tuner == "qlora",
            lora_dropout=effective_dropout(arch, setup),
            dora=setup.dora,
            attn=setup.attn,
            micro_batch=setup.micro_batch,
            p=w.act,
            seq_len=setup.seq_len,
        ),
    )
