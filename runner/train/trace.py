"""An exact trace of ftui's own training step, on the CPU, with no memory used.

The model is built at its real widths under torch's FakeTensorMode (shapes and dtypes are real, no
storage is allocated) by the runner's own code (`model_from_config`, `apply_tuner`, the recipe's
`TrainingArguments`, LISA's callback), and a real HF `Trainer` runs two optimizer steps on it.
A dispatch mode sees every tensor every op returns and counts each live storage once (views share
their storage), so the figures are the bytes `torch.cuda.max_memory_allocated()` would report for
those tensors: weights, gradients, optimizer states, saved activations, the loss path and the
temporaries, per phase (forward, backward, optimizer step) of the second step.

A few decisions torch and transformers take from the device or from the data; the trace takes them
as a CUDA run on real data would:
- dropout keeps a 1-byte mask (CUDA's fused kernel), not the fp32 noise tensor the CPU path keeps;
- a batch without padding (one sequence, or every row full) reaches attention without a mask:
  transformers checks `attention_mask.all()` and the position ids (packed sequences?) on real
  data and then lets SDPA run causal, with k/v not repeated; fake tensors cannot be inspected, so
  the trace decides from the lists it collates, and its rows are never packed;
- `flash` attention (flash-attn is a CUDA package) is traced as SDPA without a mask, which keeps
  the same tensors (q, k, v, the output and the log-sum-exp);
- AdamW runs its foreach implementation (torch's default on CUDA; the CPU default is per tensor);
- a value read back to Python (`.item()`: Adam's step count, a norm) reads as 1;
- fp16-mixed is traced as bf16-mixed on the CPU (the same byte widths; CPU autocast has no fp16);
- QLoRA: bitsandbytes' fake kernels quantize the fake weights (CUDA's shapes and dtypes), and its
  4-bit matmul runs as the CUDA backend does for a training batch (dequantize, then F.linear);
- autocast runs CUDA's fp32 list (pow, layer_norm, softmax, exp, ...), not the CPU's shorter one.

Depth: a trace builds `layers` decoder layers. `trace_setup` traces two depths and extrapolates
every figure linearly to the model's layer count (every layer adds the same bytes), which a test
checks against a full trace.

`python -m runner.train.trace` reads a JSON request on stdin and prints the result as JSON: how
`ftui plan --verify` runs it without importing torch into the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("forward", "backward", "step")
PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "temporaries")
TRACED_STEP = 2
"""Phases are reported for this optimizer step: the first has no optimizer state before its update."""
REGION_PART = {
    "build": "weights",
    "forward": "activations",
    "recompute": "activations",
    "backward": "activations",
    "head": "logits",
    "loss-backward": "logits",
    "step": "optimizer",
    "idle": "temporaries",
}
"""Where a storage was made -> the part it counts in, unless it is a parameter, a gradient or an
optimizer state (checked first). Activation gradients made in backward count as activations and the
update's temporaries as optimizer, as the planner books them."""


class NotTraceable(RuntimeError):
    """This setup cannot be traced; the message says why (the analytic plan still stands)."""


@dataclass
class PhasePeak:
    bytes: int = 0
    parts: dict[str, int] = field(default_factory=dict)


@dataclass
class Trace:
    layers: int
    """Decoder layers built."""
    phases: dict[str, PhasePeak]
    seconds: float
    moments: dict[str, dict[str, PhasePeak]] = field(default_factory=dict)
    """Phase -> moment (forward, head, loss-backward, block:top, block:bottom, embedding, step) -> its peak."""

    @property
    def peak_allocated(self) -> int:
        return max(p.bytes for p in self.phases.values())


@dataclass
class Verified:
    """A trace at two depths, extrapolated to the model's layer count."""

    peak_allocated: float
    phases: dict[str, float]
    parts: dict[str, dict[str, float]]
    """Phase -> part -> bytes at that phase's peak."""
    layers_traced: tuple[int, int]
    layers: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        gib = 2**30
        return {
            "peak_allocated_gib": round(self.peak_allocated / gib, 3),
            "phases": {ph: {"allocated_gib": round(v / gib, 3)} for ph, v in self.phases.items()},
            "parts": {ph: {k: round(v / gib, 3) for k, v in parts.items()} for ph, parts in self.parts.items()},
            "layers_traced": list(self.layers_traced),
            "layers": self.layers,
            "seconds": round(self.seconds, 2),
        }


# --- counting storage ------------------------------------------------------------------------


@dataclass
class _Entry:
    nbytes: int
    region: str
    ref: Any
    """weakref to the storage"""
    origin: str = ""
    """The op and shape that made it (with `Ledger(debug=True)`)."""


class Ledger:
    """Live storage bytes, the peak of each (step, phase), and what was alive at each peak."""

    def __init__(self, debug: bool = False) -> None:
        import torch
        from torch.utils.weak import WeakIdKeyDictionary

        self.debug = debug
        self.op = ""
        self.timeline: list[tuple[int, str, str, str]] = []
        self.torch = torch
        self.serial_of = WeakIdKeyDictionary()
        self.entries: dict[int, _Entry] = {}
        self.total = 0
        self.next_serial = 0
        self.region = "build"
        self.phase = "build"
        self.moment = "build"
        """Where in the step: forward, head, loss-backward, block:N (the N-th block backward runs
        through, 0 = the top one), embedding, step; each grows linearly with depth, the phase's
        peak is the largest of them, and which one it is may change with depth."""
        self.blocks_seen = 0
        self.step = 0
        self.peaks: dict[tuple, int] = {}
        self.snapshots: dict[tuple, list[_Entry]] = {}
        self._pending: list[tuple] = []
        self.ops = 0

    def track(self, tensor) -> None:
        storage = tensor.untyped_storage()
        serial = self.serial_of.get(storage)
        nbytes = storage.nbytes()
        if serial is not None:
            entry = self.entries[serial]
            if entry.nbytes != nbytes:  # resized in place (an out= op)
                self._grow(nbytes - entry.nbytes)
                entry.nbytes = nbytes
            return
        serial = self.next_serial
        self.next_serial += 1
        self.serial_of[storage] = serial
        origin = f"{self.op} {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}" if self.debug else ""
        self.entries[serial] = _Entry(nbytes, self.region, weakref.ref(storage), origin)
        weakref.finalize(storage, self._free, serial)
        self._grow(nbytes)

    def _grow(self, nbytes: int) -> None:
        self.total += nbytes
        for key in ((self.step, self.phase), (self.step, self.phase, self.moment)):
            if self.total > self.peaks.get(key, -1):
                self.peaks[key] = self.total
                if key not in self._pending:
                    self._pending.append(key)

    def _free(self, serial: int) -> None:
        self._settle()
        entry = self.entries.pop(serial, None)
        if entry is not None:
            self.total -= entry.nbytes

    def _settle(self) -> None:
        """Memory is about to fall: what is alive now is the newest peaks' content."""
        if self._pending:
            alive = list(self.entries.values())
            for key in self._pending:
                self.snapshots[key] = alive
            self._pending = []

    def enter(self, phase: str | None = None, region: str | None = None, moment: str | None = None) -> None:
        self._settle()
        if phase is not None:
            self.phase = phase
        if region is not None:
            self.region = region
        if moment is not None:
            self.moment = moment


def _dispatch_mode(ledger: Ledger):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    scalar = torch.ops.aten._local_scalar_dense.default

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is scalar:
                return True if args[0].dtype == torch.bool else 1
            out = func(*args, **(kwargs or {}))
            ledger.ops += 1
            leaves = [leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]
            if ledger.debug:
                ledger.op = f"{func} -> " + ", ".join(f"{tuple(x.shape)}:{str(x.dtype)[6:]}" for x in leaves[:2])
            for leaf in leaves:
                ledger.track(leaf)
            if ledger.debug and ledger.step == TRACED_STEP:
                ledger.timeline.append((ledger.total, ledger.op, ledger.phase, ledger.region))
            return out

    return Counting()


@contextlib.contextmanager
def _cuda_dropout():
    """F.dropout as CUDA runs it: the fused kernel, which keeps a bool mask (1 byte per element)."""
    import torch
    import torch.nn.functional as F

    original = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return input
        if p == 1.0:
            return input * 0
        return torch.ops.aten.native_dropout(input, p, True)[0]

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original


@contextlib.contextmanager
def _placed_modules():
    """Module.to(cpu) is a no-op: the fake model is already there, and swapping fake parameters for
    converted copies would leave the optimizer holding the old ones (it would keep no state)."""
    import torch

    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "cpu":
            return original(self, *args, **kwargs)
        if dtype is not None:  # in place, as Module.to does for real tensors (`param.data = ...`)
            with torch.no_grad():
                for param in self.parameters():
                    if param.is_floating_point() and param.dtype != dtype:
                        param.data = param.data.to(dtype)
                for module in self.modules():
                    for name, buffer in module._buffers.items():
                        if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                            module._buffers[name] = buffer.to(dtype)
        return self

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


@contextlib.contextmanager
def _cuda_autocast_policy():
    """CPU autocast with CUDA's fp32 list for the ops these models call on 16-bit tensors.

    CUDA's autocast runs pow, layer_norm, group_norm, softmax, log_softmax, exp, log, rsqrt, norm and
    cumsum in fp32 (torch's autocast op reference, "CUDA Ops that can autocast to float32"); CPU
    autocast does not (phi's gelu_new `pow`, the LayerNorms of phi, falcon and GPT-NeoX would stay
    16-bit). Inside an autocast region these functions get their 16-bit inputs cast to fp32 and run
    in fp32, as on a GPU. Python-level wrappers, so checkpointing's recomputation sees them too."""
    import torch
    import torch.nn.functional as F

    low = (torch.bfloat16, torch.float16)

    def up(x):
        if isinstance(x, torch.Tensor) and x.dtype in low:
            return x.float()
        return x

    def fp32(original):
        def run(*args, **kwargs):
            if not torch.is_autocast_enabled("cpu") or kwargs.get("dtype") is not None:
                return original(*args, **kwargs)
            if not any(isinstance(a, torch.Tensor) and a.dtype in low for a in (*args, *kwargs.values())):
                return original(*args, **kwargs)
            with torch.autocast("cpu", enabled=False):
                return original(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})

        return run

    targets = [(torch, name) for name in ("pow", "exp", "log", "rsqrt", "norm", "cumsum")]
    targets += [(torch.Tensor, name) for name in ("pow", "__pow__", "__rpow__", "exp", "log", "rsqrt", "cumsum")]
    targets += [(F, name) for name in ("layer_norm", "group_norm", "softmax", "log_softmax")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name, original in saved:
        setattr(owner, name, fp32(original))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextlib.contextmanager
def _unpacked_batches():
    """transformers looks for packed sequences in the position ids; on fake tensors it cannot look
    and assumes they may be packed, which builds a 4-D mask. The traced rows are never packed (a
    real batch's position ids are 0..n-1), so the answer is the one real data gives: none."""
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


# --- QLoRA: bitsandbytes 4-bit layers on fake tensors ------------------------------------------

GEMM_4BIT_FUSED_MAX_ROWS = 4
"""Rows (tokens) up to which bitsandbytes' CUDA backend multiplies with its fused 4-bit kernel, which
makes no dequantized weight (bnb 0.50, backends/cuda/ops.py). Past 1536 rows every GPU dequantizes;
between, the choice depends on the GPU and the weight's shape. The trace dequantizes past this floor:
exact for training batches of more than 1536 tokens, an upper bound below that."""


def _seed_bnb_tables() -> None:
    """bitsandbytes caches its 8-bit code table on first use; made under a fake mode it would belong
    to that mode and the next trace would refuse it. Made here, real, before any fake mode."""
    import bitsandbytes.functional as bnb_f

    if "dynamic" not in bnb_f.name2qmap:
        bnb_f.name2qmap["dynamic"] = bnb_f.create_dynamic_map()


@contextlib.contextmanager
def _outside_fake():
    """Outside the dispatch modes and the fake mode: real (meta) tensors can be made here."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), unset_fake_temporarily():
        yield


def _fake_params4bit(weight, like, module):
    """The packed weight `Params4bit` would hold, as a plain fake Parameter with Params4bit's
    attributes: Params4bit (a Tensor subclass) cannot wrap a fake tensor, and bitsandbytes, peft and
    transformers only read attributes off the weight. bitsandbytes' registered fake kernels give the
    CUDA shapes and dtypes: packed uint8 [N*K/2, 1], absmax, and with double quantization the 8-bit
    absmax with its fp32 scales."""
    import bitsandbytes as bnb
    import torch

    packed, state = bnb.functional.quantize_4bit(
        weight.detach().contiguous(),
        blocksize=like.blocksize,
        compress_statistics=like.compress_statistics,
        quant_type=like.quant_type,
        quant_storage=like.quant_storage,
    )
    param = torch.nn.Parameter(packed, requires_grad=False)
    for name in ("blocksize", "compress_statistics", "quant_type", "quant_storage"):
        setattr(param, name, getattr(like, name))
    param.quant_state = state
    param.bnb_quantized = True
    param.module = module
    module.quant_state = state
    return param


def quantize_fake(model, bnb_config, device: str = "cpu"):
    """What `from_pretrained(..., quantization_config=bnb_config)` does to the runner's model, on a
    model built under the fake mode: transformers' own bitsandbytes quantizer swaps every linear but
    the head for bnb Linear4bit (made outside the fake mode: their constructor makes a Params4bit),
    then each fake bf16 weight is quantized by bitsandbytes' fake kernels."""
    import bitsandbytes as bnb
    import torch
    from transformers.quantizers.auto import AutoHfQuantizer

    _seed_bnb_tables()
    quantizer = AutoHfQuantizer.from_config(bnb_config, pre_quantized=False)
    originals = {name: (m.weight, m.bias) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with _outside_fake():
        quantizer.preprocess_model(model=model, dtype=bnb_config.bnb_4bit_compute_dtype, device_map={"": device})
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight, bias = originals.pop(name)
        if getattr(module, "source_cls", torch.nn.Linear) is not torch.nn.Linear:
            weight = weight.T  # Conv1D-style [in, out] weights, transposed as transformers does
        module.weight = _fake_params4bit(weight, module.weight, module)
        if bias is not None:
            module.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)
        module.support_avx512bf16_for_cpu = False  # a GPU never repacks weights for bnb's CPU kernel
        module._is_hf_initialized = True
    del originals
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)
    return model


@contextlib.contextmanager
def _cuda_gemm_4bit():
    """bitsandbytes::gemm_4bit as its CUDA backend runs it for a training batch: the nested absmax
    dequantized to fp32 (and a copy with the offset added), the weight dequantized to the compute
    dtype, F.linear; the fake kernel alone would make the output only. Swapped on the op namespace
    for a Python function doing those ops, each seen by the trace."""
    import bitsandbytes  # noqa: F401  (defines torch.ops.bitsandbytes)
    import torch

    namespace = torch.ops.bitsandbytes
    packet = namespace.gemm_4bit

    def gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None,
                  absmax_offset=None):  # fmt: skip
        if A.numel() // A.shape[-1] <= GEMM_4BIT_FUSED_MAX_ROWS:
            return packet.default(
                A, B, shapeB, absmax, blocksize, quant_type, bias=bias, absmax_8bit=absmax_8bit,
                absmax_code=absmax_code, absmax_offset=absmax_offset,
            )  # fmt: skip
        dequantized_absmax = None
        if absmax_8bit is not None:
            dequantized_absmax = namespace.dequantize_blockwise.default(
                absmax_8bit, absmax, absmax_code, 256, torch.float32
            )
            absmax = dequantized_absmax + absmax_offset
        weight = namespace.dequantize_4bit.default(B, absmax, blocksize, quant_type, shapeB, A.dtype)
        out = torch.nn.functional.linear(A, weight, bias)
        del dequantized_absmax, weight  # alive until here, as in the CUDA fallback
        return out

    class Packet:
        default = staticmethod(gemm_4bit)

        def __call__(self, *args, **kwargs):
            return gemm_4bit(*args, **kwargs)

    namespace.gemm_4bit = Packet()
    try:
        yield
    finally:
        namespace.gemm_4bit = packet


@contextlib.contextmanager
def _cuda_autocast_query():
    """`torch.is_autocast_enabled()` with no device asks about CUDA's autocast, which a CPU trace
    never turns on; peft's bitsandbytes LoRA layers ask it to decide whether to cast their input to
    fp32. Here it answers for the CPU autocast that stands in for CUDA's."""
    import torch

    original = torch.is_autocast_enabled

    def is_autocast_enabled(*args, **kwargs):
        return original("cpu") if not args and not kwargs else original(*args, **kwargs)

    torch.is_autocast_enabled = is_autocast_enabled
    try:
        yield
    finally:
        torch.is_autocast_enabled = original


# --- the traced run ----------------------------------------------------------------------------


def truncated_config(config: dict[str, Any], layers: int) -> dict[str, Any]:
    """The config with `layers` decoder layers (per-layer lists cut to match)."""
    out = dict(config)
    key = "num_hidden_layers" if "num_hidden_layers" in out else "n_layer" if "n_layer" in out else "num_layers"
    out[key] = layers
    for name in ("layer_types", "mlp_only_layers"):
        if isinstance(out.get(name), list) and name == "layer_types":
            out[name] = out[name][:layers]
    return out


def model_layers(config: dict[str, Any]) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise NotTraceable("the config names no layer count (num_hidden_layers)")


def trace_recipe(setup, config: dict[str, Any]):
    """The recipe the runner would train `setup` with, on the CPU, one process."""
    from runner.recipe.schema import Recipe

    s = setup
    r = Recipe()
    attn = "sdpa" if s.attn == "flash" else s.attn
    precision = "bf16-mixed" if s.precision == "fp16-mixed" else s.precision
    return r.but(
        model=dataclasses.replace(r.model, path="", init="random"),
        dataset=dataclasses.replace(r.dataset, max_seq_len=s.seq_len),
        tuner=s.tuner,
        lora=dataclasses.replace(
            r.lora, rank=s.lora_rank, alpha=2 * s.lora_rank, dropout=s.lora_dropout, targets=s.lora_targets, dora=s.dora
        ),
        qlora=dataclasses.replace(r.qlora, quant=s.quant, double_quant=s.double_quant),
        lisa=dataclasses.replace(r.lisa, layers=s.lisa_layers),
        freeze=dataclasses.replace(r.freeze, trainable_layers=s.trainable_layers),
        train=dataclasses.replace(
            r.train,
            micro_batch=s.micro_batch,
            grad_accum=min(s.grad_accum or 2, 2),
            lr=1e-4,
            precision=precision,
            grad_ckpt=s.grad_ckpt,
            attn=attn,
            optim=s.optim,
            max_steps=TRACED_STEP,
            logging_steps=1000,
            save_steps=1000,
        ),
        distributed=dataclasses.replace(r.distributed, gpus=1, nodes=1, zero=0, offload="none", device="cpu"),
    )


def _rows(setup, vocab: int) -> list[dict[str, list[int]]]:
    """Token rows of exactly seq_len tokens (the collator marks the padding of a padded batch)."""
    n = setup.seq_len
    return [{"input_ids": [i % vocab for i in range(n)], "labels": [i % vocab for i in range(n)]}]


class _Collator:
    """The runner's collator, with the padding a real batch would have: one sequence (micro-batch 1)
    has none, so no mask reaches the model (see the module doc); several sequences of varied length
    have some, so the last row's last token is padding (mask 0, label ignored)."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, features):
        rows = [dict(f, attention_mask=[1] * len(f["input_ids"])) for f in features]
        if len(rows) > 1:
            last = rows[-1]
            last["attention_mask"] = last["attention_mask"][:-1] + [0]
            last["labels"] = last["labels"][:-1] + [-100]
        batch = self.collate(rows)
        if len(rows) == 1:
            batch.pop("attention_mask")
        return batch


def _phase_callback(ledger: Ledger):
    from transformers import TrainerCallback

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            ledger.step = state.global_step + 1

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            ledger.enter("step", "step", "step")

        def on_optimizer_step(self, args, state, control, optimizer=None, model=None, **kwargs):
            ledger.enter("idle", "idle", "idle")
            if ledger.step == TRACED_STEP:
                ledger.classified = _classify(ledger, model, optimizer)

    return Phases()


def _install_hooks(model, ledger: Ledger) -> list[Any]:
    """Regions of the forward and backward pass: blocks, the head and loss, recomputation."""
    import torch

    from .callbacks import decoder_layers

    handles = []
    head = model.get_output_embeddings()
    top = model

    def forward_begin(module, args, kwargs):
        ledger.blocks_seen = 0
        ledger.enter("forward", "forward", "forward")

    def forward_end(module, args, kwargs, output):
        ledger.enter("backward", "loss-backward", "loss-backward")  # the Trainer calls backward on the loss next

    def head_begin(module, args):
        ledger.enter(region="head", moment="head")
        hidden = args[0] if args else None
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(lambda grad: ledger.enter(region="backward"))

    def block_backward_begins(grad):
        ledger.enter(moment=f"block:{ledger.blocks_seen}")
        ledger.blocks_seen += 1

    def block_backward_ends(grad):
        ledger.enter(moment="embedding")  # the bottom block is done: what is left is the embedding's

    layers = decoder_layers(model)
    bottom = layers[0] if len(layers) else None

    def layer_begin(module, args):
        if ledger.phase == "backward":
            ledger.enter(region="recompute")
        elif ledger.phase == "forward" and module is bottom and args and isinstance(args[0], torch.Tensor):
            if args[0].requires_grad:
                args[0].register_hook(block_backward_ends)

    def layer_end(module, args, output):
        if ledger.phase == "backward":
            ledger.enter(region="backward")
        elif ledger.phase == "forward":
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(block_backward_begins)

    handles.append(top.register_forward_pre_hook(forward_begin, with_kwargs=True))
    handles.append(top.register_forward_hook(forward_end, with_kwargs=True))
    if head is not None:
        handles.append(head.register_forward_pre_hook(head_begin))
    for layer in layers:
        handles.append(layer.register_forward_pre_hook(layer_begin))
        handles.append(layer.register_forward_hook(layer_end))
    return handles


def _storages(tensors) -> set[int]:
    return {id(t.untyped_storage()) for t in tensors}


def _classify(ledger: Ledger, model, optimizer) -> dict[tuple, dict[str, int]]:
    """Part -> bytes of what was alive at each peak of the traced step (per phase, and per moment)."""
    import torch

    params = list(model.parameters()) + list(model.buffers())
    weights = _storages(params)
    grads = _storages(p.grad for p in model.parameters() if p.grad is not None)
    opt = getattr(optimizer, "optimizer", optimizer)
    states = _storages(
        v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor) and v.numel() > 1
    )
    out: dict[tuple, dict[str, int]] = {}
    for key, snapshot in ledger.snapshots.items():
        if key[0] != TRACED_STEP:
            continue
        parts = dict.fromkeys(PARTS, 0)
        for entry in snapshot:
            storage = entry.ref()
            sid = id(storage) if storage is not None else None
            if sid in weights:
                part = "weights"
            elif sid in grads:
                part = "gradients"
            elif sid in states:
                part = "optimizer"
            else:
                part = REGION_PART.get(entry.region, "temporaries")
            parts[part] += entry.nbytes
        out[key[1:]] = parts
    return out


def _moments(ledger: Ledger, classified: dict[tuple, dict[str, int]]) -> dict[str, dict[str, PhasePeak]]:
    """Per phase, the peak of each moment; of the blocks backward runs through, the first (top) and
    the last (bottom) only: memory there grows linearly along the blocks, so the extremes bound it."""
    found: dict[str, dict[str, PhasePeak]] = {}
    for key, value in ledger.peaks.items():
        if key[0] != TRACED_STEP or len(key) != 3:
            continue
        phase, moment = key[1], key[2]
        found.setdefault(phase, {})[moment] = PhasePeak(value, classified.get((phase, moment), dict.fromkeys(PARTS, 0)))
    for moments in found.values():
        blocks = sorted((int(m.split(":")[1]), m) for m in moments if m.startswith("block:"))
        if blocks:
            top, bottom = moments[blocks[0][1]], moments[blocks[-1][1]]
            for _, name in blocks:
                del moments[name]
            moments["block:top"], moments["block:bottom"] = top, bottom
    return found


def trace(config: dict[str, Any], setup, layers: int, *, debug: bool = False) -> Trace:
    """One traced run of `setup` on `config` cut to `layers` decoder layers."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoConfig, PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    from planner import ConfigError, architecture_from_config

    from .data import make_collator
    from .entry import apply_tuner, model_from_config, quantization, training_arguments, tuner_callbacks

    if setup.tuner == "qlora" and setup.quant != "nf4":
        raise NotTraceable("QLoRA int8 is not traceable (bitsandbytes' 8-bit layers): analytic only")
    if setup.zero or setup.offload != "none":
        raise NotTraceable("DeepSpeed ZeRO and offload are not traced (one process, no DeepSpeed): analytic only")
    if setup.is_fsdp:
        raise NotTraceable("FSDP is not traced (the trace runs one process; FSDP shards over several): analytic only")
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        remote = " (its config names remote code, auto_map)" if config.get("auto_map") else ""
        raise NotTraceable(
            f"transformers {transformers.__version__} has no model type {model_type!r}{remote}; the trace builds "
            "models with transformers' own code only: analytic only"
        )
    recipe = trace_recipe(setup, config)
    cut = truncated_config(config, layers)
    try:
        arch = architecture_from_config(cut)
    except ConfigError:
        arch = None
    if arch is None and setup.adapters and setup.lora_targets != "all-linear":
        raise NotTraceable("LoRA targets other than all-linear need a model type the planner can read")
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    ledger = Ledger(debug)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with (
        tempfile.TemporaryDirectory(prefix="ftui-trace-") as tmp,
        _cuda_dropout(),
        _placed_modules(),
        _unpacked_batches(),
        _cuda_autocast_policy(),
        _cuda_autocast_query(),
        _cuda_gemm_4bit() if setup.tuner == "qlora" else contextlib.nullcontext(),
    ):
        from runner.rundir.runs import RunDir

        run = RunDir(Path(tmp))
        with fake, _dispatch_mode(ledger):
            hf_config = AutoConfig.for_model(**cut)
            try:
                base = model_from_config(hf_config, recipe)
            except (ValueError, ImportError) as err:  # e.g. an attention kernel this model refuses
                raise NotTraceable(f"transformers cannot build this setup: {str(err).splitlines()[0]}") from None
            if setup.tuner == "qlora":
                base = quantize_fake(base, quantization(recipe))
            try:
                model = apply_tuner(base, recipe, arch)
            except ValueError as err:  # e.g. peft refusing DoRA on fused MoE experts
                raise NotTraceable(f"peft refuses this setup: {str(err).splitlines()[0]}") from None
            # e.g. DoRA's weight norm of a 4-bit weight, which the fake kernels cannot dequantize
            except RuntimeError as err:
                raise NotTraceable(f"peft cannot build this setup on fake tensors: {_first_line(err)}") from None
            vocab = hf_config.get_text_config().vocab_size
            rows = _rows(setup, vocab) * (setup.micro_batch * recipe.train.grad_accum * TRACED_STEP)
            args = training_arguments(recipe, run, has_eval=False)
            args.logging_nan_inf_filter = False
            args.logging_first_step = False
            args.save_strategy = "no"
            callbacks = [*tuner_callbacks(model, recipe), _phase_callback(ledger)]
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=rows,
                data_collator=_Collator(make_collator(_PadTo(vocab))),
                callbacks=callbacks,
            )
            trainer.remove_callback(PrinterCallback)  # the trace prints nothing of its own
            trainer.create_optimizer()
            for group in trainer.optimizer.param_groups:
                if "foreach" in group and group.get("fused") is not True:
                    group["foreach"] = True  # torch's default for CUDA parameters
            handles = _install_hooks(model, ledger)
            try:
                trainer.train()
            except NotImplementedError as err:
                raise NotTraceable(f"the traced step stopped: {_first_line(err)}") from None
            except RuntimeError as err:  # a kernel the CPU lacks for this setup (e.g. fp32 grouped GEMM)
                raise NotTraceable(f"the traced step stopped: {_first_line(err)}") from None
            finally:
                for handle in handles:
                    handle.remove()
    classified = getattr(ledger, "classified", None) or {}
    phases = {
        ph: PhasePeak(ledger.peaks.get((TRACED_STEP, ph), 0), classified.get((ph,), dict.fromkeys(PARTS, 0)))
        for ph in PHASES
    }
    del torch
    result = Trace(layers, phases, time.perf_counter() - started, _moments(ledger, classified))
    if debug:
        result.ledger = ledger
    return result


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


class _PadTo:
    """What make_collator reads from a tokenizer: the pad id."""

    def __init__(self, vocab: int) -> None:
        self.pad_token_id = 0
        self.eos_token_id = None
        self.vocab = vocab


def layer_period(config: dict[str, Any]) -> int:
    """How many layers repeat: 2 where layers alternate (sliding/global attention, sparse MoE steps)."""
    types = config.get("layer_types")
    if isinstance(types, list) and len(set(types)) > 1:
        return 2
    if config.get("model_type") in ("gemma2", "gemma3", "cohere2") or config.get("decoder_sparse_step", 1) > 1:
        return 2
    return 1


def depths(setup, config: dict[str, Any]) -> tuple[int, int]:
    """The two depths a setup is traced at: past the layers it always trains (freeze's top K, LISA's
    gamma), one layer period apart (models that alternate layer types repeat every two layers), and
    never a single block: the first block is the only one whose forward runs with no earlier block's
    outputs still held (falcon's eager blocks return their fp32 attention probabilities, alive until
    the next block's call returns), so depth 1 -> 2 is not the per-layer slope."""
    base = 0
    if setup.tuner == "freeze":
        base = setup.trainable_layers
    elif setup.tuner == "lisa":
        base = setup.lisa_layers
    period = layer_period(config)
    a = base + max(2, period)
    return a, a + period


def trace_setup(config: dict[str, Any], setup, *, layers: tuple[int, int] | None = None) -> Verified:
    """Trace at two depths and extrapolate linearly to the model's layer count."""
    total = model_layers(config)
    a, b = layers or depths(setup, config)
    if b >= total:  # small enough to trace whole
        t = trace(config, setup, total)
        parts = {ph: {k: float(v) for k, v in p.parts.items()} for ph, p in t.phases.items()}
        return Verified(
            float(t.peak_allocated),
            {ph: float(p.bytes) for ph, p in t.phases.items()},
            parts,
            (total, total),
            total,
            t.seconds,
        )
    ta, tb = trace(config, setup, a), trace(config, setup, b)

    def at(x: float, y: float) -> float:
        return x + (y - x) * (total - a) / (b - a)

    phases: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    for ph in PHASES:
        # Each moment of the phase grows linearly with depth; the phase's peak at full depth is the
        # largest extrapolated moment (which moment peaks can change with depth).
        common = set(ta.moments.get(ph, {})) & set(tb.moments.get(ph, {}))
        if not common:
            phases[ph] = at(ta.phases[ph].bytes, tb.phases[ph].bytes)
            parts[ph] = {k: at(ta.phases[ph].parts[k], tb.phases[ph].parts[k]) for k in PARTS}
            continue
        grown = {m: at(ta.moments[ph][m].bytes, tb.moments[ph][m].bytes) for m in common}
        best = max(grown, key=grown.get)
        phases[ph] = grown[best]
        parts[ph] = {k: at(ta.moments[ph][best].parts[k], tb.moments[ph][best].parts[k]) for k in PARTS}
    return Verified(max(phases.values()), phases, parts, (a, b), total, ta.seconds + tb.seconds)


# --- python -m runner.train.trace ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """stdin: {"config": {...}, "setup": {...Setup fields...}, "layers": [a, b] (optional)}.
    stdout: one JSON object; whatever the libraries print goes to stderr."""
    import os

    from planner import Setup, SetupError

    answer_fd = os.dup(1)
    os.dup2(2, 1)  # DeepSpeed and others log to stdout when transformers imports them

    def answer(obj: dict[str, Any], code: int) -> int:
        sys.stdout.flush()
        with os.fdopen(answer_fd, "w") as out:
            out.write(json.dumps(obj) + "\n")
        return code

    try:
        request = json.load(sys.stdin)
        setup = Setup(**request["setup"])
        layers = tuple(request["layers"]) if request.get("layers") else None
        result = trace_setup(request["config"], setup, layers=layers)
    except NotTraceable as err:
        return answer({"traceable": False, "reason": str(err)}, 0)
    except (KeyError, TypeError, ValueError, SetupError) as err:
        return answer({"traceable": False, "reason": f"bad trace request: {err}"}, 2)
    return answer({"traceable": True, **result.to_json()}, 0)


if __name__ == "__main__":
    sys.exit(main())
