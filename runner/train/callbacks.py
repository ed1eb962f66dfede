"""HF Trainer callbacks of the training entry point: metrics, graceful stop, LISA.

Imported only by runner.train (the one place that imports torch).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from runner.rundir.checkpoints import write_marker
from runner.rundir.runs import RunDir

GIB = 2**30


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class TokenCounter:
    """Wraps the data collator to count this rank's non-padding tokens with no communication
    (HF's own counter all-reduces on every step; ranks are summed here only when metrics are logged)."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.tokens = 0

    def __call__(self, features):
        batch = self.collate(features)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


def _gather(mine: Any) -> list[Any]:
    """Every rank's `mine`, in rank order (one collective; just [mine] in a single process)."""
    if not _distributed():
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def _local_memory() -> dict[str, float]:
    if not torch.cuda.is_available():
        return {}
    return {
        "allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
    }


def _memory_per_rank() -> dict[str, dict[str, float]]:
    """{rank: {allocated_gib, reserved_gib}}: each rank's peak so far, gathered from every rank."""
    return {str(r): m for r, m in enumerate(_gather(_local_memory())) if m}


def sample_node_gpus(run: RunDir, step: int) -> None:
    """This node's GPUs as NVML sees them now, into RUN_DIR/nodes/<node>.json (local rank 0 of each
    node, at every logging step): one monitor then shows every node's GPUs, which NVML on the first
    node cannot see. A node without GPUs (or NVML) writes an empty list and the reason."""
    import os
    import socket

    from runner.machine.nvml import NoGpu, local_gpus, node_name
    from runner.rundir.runs import write_json_atomic

    try:
        gpus = [g.as_json() for g in local_gpus()]
        why = None
    except NoGpu as err:
        gpus, why = [], str(err)
    node = node_name()
    path = run.path / "nodes" / f"{node}.json"
    try:
        path.parent.mkdir(exist_ok=True)
        write_json_atomic(
            path,
            {
                "node": node,
                "host": socket.gethostname(),
                "time": time.time(),
                "step": step,
                "gpus": gpus,
                "no_gpu": why,
                "rank": int(os.environ.get("RANK", "0")),
            },
        )
    except OSError:
        pass  # a full disk must not stop training


class ForwardTimer:
    """Seconds this rank spends in the model's forward pass (hooks on the top module; CUDA events on a
    GPU, so the time is the kernels', not the launches'). Forward has no collective under DDP, so a
    rank that is slower here is the one the others wait for in backward: the straggler."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.seconds = 0.0
        self.passes = 0
        self._start: Any = None

    def attach(self, model: torch.nn.Module) -> None:
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def _now(self) -> Any:
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _before(self, module, args):
        if module.training:
            self._start = self._now()

    def _after(self, module, args, output):
        if module.training and self._start is not None:
            self.pending.append((self._start, self._now()))
            self._start = None

    def take(self) -> float | None:
        """Mean forward seconds per pass since the last call (None when there was none)."""
        for start, end in self.pending:
            if isinstance(start, float):
                self.seconds += end - start
            else:
                end.synchronize()
                self.seconds += start.elapsed_time(end) / 1000
            self.passes += 1
        self.pending.clear()
        if not self.passes:
            return None
        mean, self.seconds, self.passes = self.seconds / self.passes, 0.0, 0
        return mean


class MetricsCallback(TrainerCallback):
    """Appends one line per logging step to metrics.jsonl (rank 0), in ftui's metrics schema; every
    node's local rank 0 samples its GPUs beside it (sample_node_gpus)."""

    def __init__(self, run: RunDir, micro_batch: int, world: int, counter: TokenCounter) -> None:
        self.run = run
        self.counter = counter
        self.samples_per_step = micro_batch * world
        self.t0 = self.t_last = time.time()
        self.step0 = self.step_last = 0
        self.tokens_before = self.tokens_last = 0
        self.forward = ForwardTimer()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.forward.attach(model)
        self.launch = self.run.status().get("launch")  # which launch of the run wrote each record
        self.t0 = self.t_last = time.time()
        self.step0 = self.step_last = state.global_step
        self.tokens_before = self.tokens_last = self._resumed_tokens() if state.global_step else 0
        if state.is_world_process_zero:
            self.run.set_status("running", phase="training", step=state.global_step, total_steps=state.max_steps)

    def _resumed_tokens(self) -> int:
        """Tokens trained before a resume (from the last metrics record), so the count continues."""
        from runner.rundir.metrics import last_record

        return int((last_record(self.run.metrics) or {}).get("tokens") or 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        import os

        from runner.machine.nvml import node_name

        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            sample_node_gpus(self.run, state.global_step)
        mine = (_local_memory(), self.counter.tokens, {"node": node_name(), "forward_s": self.forward.take()})
        gathered = _gather(mine)  # a collective: every rank takes part
        if not state.is_world_process_zero or "train_loss" in (logs or {}):
            return  # the end-of-training summary (train_loss over the run) is not a step record
        mem = {str(r): m for r, (m, _, _) in enumerate(gathered) if m}
        tokens = self.tokens_before + sum(t for _, t, _ in gathered)
        record = self._record(state, logs or {}, mem, tokens)
        if len(gathered) > 1:
            record["ranks"] = {
                str(r): {
                    "node": who["node"],
                    "forward_s": None if who["forward_s"] is None else round(who["forward_s"], 5),
                }
                for r, (_, _, who) in enumerate(gathered)
            }
        with open(self.run.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        latest = {k: record[k] for k in ("loss", "eval_loss") if record[k] is not None}  # keep the last of each
        self.run.set_status(
            self.run.status().get("state", "running"),
            step=state.global_step,
            total_steps=state.max_steps,
            eta_s=record["eta_s"],
            **latest,
        )

    def _record(self, state, logs: dict[str, Any], mem: dict[str, Any], tokens: int) -> dict[str, Any]:
        now, step = time.time(), state.global_step
        dt = max(now - self.t_last, 1e-9)
        steps_done = step - self.step_last
        rate = (step - self.step0) / max(now - self.t0, 1e-9)
        record = {
            "step": step,
            "total_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": tokens,
            "tokens_per_s": round((tokens - self.tokens_last) / dt, 2) if steps_done else None,
            "samples_per_s": round(steps_done * self.samples_per_step / dt, 3) if steps_done else None,
            "elapsed_s": round(now - self.t0, 2),
            "eta_s": round((state.max_steps - step) / rate, 1) if rate > 0 else None,
            "mem": mem,
            "time": round(now, 3),
        }
        if getattr(self, "launch", None) is not None:
            record["launch"] = self.launch
        if steps_done:
            self.t_last, self.step_last, self.tokens_last = now, step, tokens
        return record


class StopCallback(TrainerCallback):
    """Checks for stop.request; all ranks agree on the step, then save and stop together.

    One process checks after every step (a stat call). Several processes check on logging steps
    only, where rank 0 broadcasts its answer: a collective per step would cost more than the
    check is worth, and a stop then lands within `logging_steps` steps.
    """

    def __init__(self, run: RunDir, every: int = 1) -> None:
        self.run = run
        self.every = max(1, every)

    def on_step_end(self, args, state, control, **kwargs):
        if _distributed() and state.global_step % self.every:
            return control
        asked = torch.tensor([1 if self.run.stop_request.exists() else 0])
        if _distributed():
            if dist.get_backend() == "nccl":
                asked = asked.cuda()
            dist.broadcast(asked, src=0)
        if int(asked.item()):
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                self.run.set_status("stopping", step=state.global_step)
        return control


class CompletionCallback(TrainerCallback):
    """After every save (HF has written every file and rotated old checkpoints), all ranks meet,
    then rank 0 writes the checkpoint's completion marker (runner.rundir.checkpoints): a save cut
    short by a kill or a full disk never gets one, so a resume never loads it."""

    def on_save(self, args, state, control, **kwargs):
        if _distributed():
            dist.barrier()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_marker(ckpt)
        return control


LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer", "decoder_layers")
"""What transformers calls the ModuleList of decoder blocks (model.layers, transformer.h, ...)."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks (model.model.layers, transformer.h, ...): the outermost list
    with one of the usual names, else the longest list (a MoE layer's experts are a list too, and
    can be longer than a model with few layers)."""
    named = []
    longest = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList):
            continue
        if name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES:
            named.append((name.count("."), name, module))
        if longest is None or len(module) > len(longest):
            longest = module
    if named:
        return min(named, key=lambda item: item[:2])[2]
    if longest is None:
        raise RuntimeError("cannot find the decoder layers of this model")
    return longest


class LisaCallback(TrainerCallback):
    """LISA (Pan et al. 2024): every `interval` steps train `gamma` sampled decoder layers, keep the
    embeddings, head and final norm trained, and freeze the rest.

    The optimizer is built over every parameter (so any layer can be switched on), and the state of
    a layer that is switched off is dropped together with its gradient, so Adam never keeps moments
    for frozen layers. Every rank draws the same layers (the draw is seeded by the step), so data
    parallel replicas stay identical (DDP runs with find_unused_parameters).
    """

    def __init__(self, model: torch.nn.Module, gamma: int, interval: int, seed: int) -> None:
        self.layers = decoder_layers(model)
        self.gamma = min(gamma, len(self.layers))
        self.interval = interval
        self.seed = seed
        self.active: list[int] = []

    def choose(self, step: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + step // self.interval)
        return sorted(rng.sample(range(len(self.layers)), self.gamma))

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.active and state.global_step % self.interval:
            return
        chosen = self.choose(state.global_step)
        for index, layer in enumerate(self.layers):
            on = index in chosen
            for p in layer.parameters():
                p.requires_grad_(on)
                if not on:
                    p.grad = None
                    if optimizer is not None:
                        _optimizer_of(optimizer).state.pop(p, None)
        self.active = chosen


class FrozenBelowCallback(TrainerCallback):
    """freeze with gradient checkpointing: backward stops at the lowest trained layer.

    With checkpointing on, transformers makes the embedding output require grad
    (`enable_input_require_grads`), so every frozen layer below the trained ones is checkpointed,
    kept as a saved input and run again in backward, only to produce gradients nobody uses. At the
    start of training (after the Trainer enabled checkpointing) this undoes that: the frozen layers
    run once, without autograd, and only the trained top layers are checkpointed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def on_train_begin(self, args, state, control, **kwargs):
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        if hasattr(base, "disable_input_require_grads"):
            try:
                base.disable_input_require_grads()
            except AttributeError:  # the hook was never installed (checkpointing off)
                pass
        for layer in decoder_layers(self.model):
            if not any(p.requires_grad for p in layer.parameters()) and hasattr(layer, "gradient_checkpointing"):
                layer.gradient_checkpointing = False


def _optimizer_of(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def trainable_summary(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": sum(p.numel() for p in model.parameters())}


def write_final_status(run: RunDir, plan_path: Path) -> None:
    """Planned vs measured peak memory in status.json (rank 0 writes; every rank gathers)."""
    measured = _memory_per_rank()
    if _distributed() and dist.get_rank() != 0:
        return
    planned = {}
    try:
        per_gpu = json.loads(plan_path.read_text()).get("per_gpu", {})
        planned = {k: per_gpu.get(k) for k in ("peak_allocated_gib", "peak_reserved_gib", "nvml_used_gib")}
    except (OSError, ValueError):
        pass
    run.set_status(run.status().get("state", "running"), planned_peak=planned, measured_peak=measured)
