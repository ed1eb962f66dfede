"""A plan turned into a recipe: what the app's planner writes before it launches a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from planner import Cluster, Setup
from planner.catalog import ModelEntry

from .schema import AUTO, Recipe, RecipeError, apply_overrides, to_dict, validate

TUNER_SECTIONS = {"lora": ("lora",), "qlora": ("lora", "qlora"), "lisa": ("lisa",), "freeze": ("freeze",)}
"""The tuner sections a recipe needs; the others are left out of the file (defaults apply)."""


def model_reference(model: ModelEntry, typed: str) -> str:
    """What recipe.model.path should say: the directory of a local model, the id typed for a model
    found in the local HF cache, else the catalog entry's HF id."""
    if model.source.startswith("path "):  # "path /abs/dir/config.json"
        return str(Path(model.source.removeprefix("path ")).resolve().parent)
    if model.source.startswith("local HF cache"):
        return typed.strip()
    return model.hf_id or model.name


def recipe_from_plan(
    model: ModelEntry,
    typed_model: str,
    setup: Setup,
    cluster: Cluster,
    *,
    dataset: str,
    output_dir: str = "runs",
    name: str = "",
    grad_accum: int | None = None,
    lr: float | None = None,
    overrides: list[str] | None = None,
) -> Recipe:
    """A validated recipe that trains `setup` on `cluster`; `overrides` are `section.key=value`."""
    s = setup
    if s.fsdp == "hybrid_shard":
        raise RecipeError(
            "plan",
            "FSDP hybrid_shard is planned but `ftui train` does not launch it yet (it needs a 2-D device mesh); "
            "plan --fsdp full_shard",
        )
    recipe = Recipe()
    recipe = recipe.but(
        model=dataclasses.replace(recipe.model, path=model_reference(model, typed_model)),
        dataset=dataclasses.replace(recipe.dataset, path=dataset, max_seq_len=s.seq_len),
        tuner=s.tuner,
        lora=dataclasses.replace(
            recipe.lora,
            rank=s.lora_rank,
            alpha=2 * s.lora_rank,
            dropout=s.lora_dropout,
            targets=s.lora_targets,
            dora=s.dora,
        ),
        qlora=dataclasses.replace(recipe.qlora, quant=s.quant, double_quant=s.double_quant),
        lisa=dataclasses.replace(recipe.lisa, layers=s.lisa_layers),
        freeze=dataclasses.replace(recipe.freeze, trainable_layers=s.trainable_layers),
        train=dataclasses.replace(
            recipe.train,
            micro_batch=s.micro_batch,
            grad_accum=grad_accum or AUTO,
            lr=lr if lr is not None else AUTO,
            precision=s.precision,
            grad_ckpt=s.grad_ckpt,
            # flash when flash-attn is installed where the run starts, else sdpa (same memory class)
            attn=AUTO if s.attn == "flash" else s.attn,
            optim=s.optim,
        ),
        distributed=dataclasses.replace(
            recipe.distributed,
            gpus=cluster.gpus_per_node,
            nodes=cluster.nodes,
            zero=s.zero,
            fsdp=s.fsdp,
            offload=s.offload,
        ),
        output=dataclasses.replace(recipe.output, dir=output_dir, name=name),
    )
    return validate(apply_overrides(recipe, overrides or []))


def recipe_text(recipe: Recipe, path: Path, setup: Setup, cluster: Cluster, planned_gib: float | None) -> str:
    """The YAML as written, with a header saying how to run it and what was planned."""
    lines = [
        f"# ftui train {path}",
        f"# Planned by ftui for {cluster.world} x {cluster.gpu.name}: {setup.summary()}",
    ]
    if planned_gib is not None:
        lines.append(f"# Planned peak: {planned_gib:.1f} GiB reserved per GPU.")
    data = to_dict(recipe)
    for section in ("lora", "qlora", "lisa", "freeze"):
        if section not in TUNER_SECTIONS.get(recipe.tuner, ()):
            del data[section]
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
