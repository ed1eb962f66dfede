"""What the planner tab's fields mean: the form's text values in, the planner's answer out.

Kept apart from the widgets so it can be tested and so the tab and `ftui plan` agree: both build
the setup with `plan_cmd.build_setup` and ask `planner.make_plan`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from planner import Cluster, Plan, SetupError, UnknownModel, gpu_spec, make_plan, resolve_model
from planner.catalog import ModelEntry
from planner.gpus import match_nvml_name
from planner.recommend import LEARNING_RATES
from planner.setup import Setup

from ..errors import CliError
from ..plan_cmd import build_setup

AUTO = "auto"
DETECTED = "detected"


@dataclass(frozen=True)
class Detected:
    """The local GPUs as the GPU pane last saw them."""

    name: str
    memory_mib: int
    count: int
    host_ram_bytes: int | None = None


@dataclass(frozen=True)
class PlanForm:
    """The planner tab's fields as typed (text, or `auto`)."""

    model: str = ""
    gpu: str | None = None
    """`detected`, a GPU type key (`a100-80g`), or None when none is picked yet."""
    gpus: str = ""
    tuner: str = "recommend"
    seq_len: str = "2048"
    micro_batch: str = ""
    zero: str = AUTO
    offload: str = AUTO
    grad_ckpt: str = AUTO
    precision: str = AUTO
    lora_rank: str = "8"


@dataclass(frozen=True)
class PlanOutcome:
    plan: Plan | None = None
    model: ModelEntry | None = None
    error: str = ""
    """Why there is no plan, in words that say which field to change."""

    @property
    def setup(self) -> Setup | None:
        return self.plan.estimate.setup if self.plan and self.plan.estimate else None

    @property
    def grad_accum(self) -> int:
        """Micro-batches per step: the recommender's, else what reaches 64 sequences per step."""
        rec = self.plan.recommendation if self.plan else None
        if rec is not None:
            return rec.grad_accum
        setup = self.setup
        return max(1, math.ceil(64 / (setup.micro_batch * self.plan.cluster.world))) if setup else 1

    @property
    def learning_rate(self) -> float | None:
        rec = self.plan.recommendation if self.plan else None
        if rec is not None:
            return rec.learning_rate
        return LEARNING_RATES.get(self.setup.tuner) if self.setup else None


def _whole(label: str, text: str, default: int | None = None) -> int | None:
    text = text.strip()
    if not text or text == AUTO:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{label}: {text!r} is not a whole number of at least 1")
    return int(text)


def cluster_of(form: PlanForm, detected: Detected | None) -> Cluster:
    if form.gpu is None or (form.gpu == DETECTED and detected is None):
        raise ValueError("GPU: no NVIDIA GPU found here; pick the GPU type you will train on")
    if form.gpu == DETECTED:
        spec = match_nvml_name(detected.name, detected.memory_mib)
        return Cluster(spec, _whole("GPUs", form.gpus, detected.count), 1, detected.host_ram_bytes)
    return Cluster(gpu_spec(form.gpu), _whole("GPUs", form.gpus, 1))


def _namespace(form: PlanForm) -> argparse.Namespace:
    choice = {AUTO: None}
    return argparse.Namespace(
        tuner=None if form.tuner == "recommend" else form.tuner,
        precision=choice.get(form.precision, form.precision),
        optim=None,
        zero=None if form.zero in (AUTO, "fsdp") else int(form.zero),
        fsdp="full_shard" if form.zero == "fsdp" else None,  # the ZeRO field's last choice: FSDP full_shard
        offload=choice.get(form.offload, form.offload),
        grad_ckpt={AUTO: None, "on": True, "off": False}[form.grad_ckpt],
        attn=None,
        micro_batch=_whole("micro-batch", form.micro_batch),
        lora_rank=_whole("LoRA rank", form.lora_rank, 8),
        dora=False,
        lora_targets="all-linear",
        lisa_layers=2,
        trainable_layers=2,
        quant="nf4",
    )


def compute(form: PlanForm, detected: Detected | None, *, fetch: bool = False) -> PlanOutcome:
    """The plan for the form's values, or the first thing wrong with them (`fetch`: a Hub id not in the
    local cache may be fetched; only on enter, never per keystroke)."""
    if not form.model.strip():
        return PlanOutcome(error="model: type a name (qwen2.5-7b, llama-3.1-8b, 7b…) or a model directory")
    try:
        model = resolve_model(form.model.strip(), fetch=fetch)
    except UnknownModel as err:
        return PlanOutcome(error=f"model: {err}")
    try:
        cluster = cluster_of(form, detected)
        seq_len = _whole("seq len", form.seq_len, 2048)
        args = _namespace(form)
        setup, fixed = build_setup(args, cluster, seq_len)
        plan = make_plan(model, setup, cluster, recommend_tuner=args.tuner is None, fixed=fixed)
    except (ValueError, SetupError, CliError) as err:
        return PlanOutcome(model=model, error=str(err))
    return PlanOutcome(plan, model)
