"""Recipes: schema, errors with locations, overrides, cross-field checks, shipped recipes, resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes import find_recipe, header, shipped
from runner.recipe.schema import AUTO, RecipeError, apply_overrides, dump_recipe, load_recipe, parse_recipe, validate
from runner.recipe.resolve import Machine, resolve, verdict

MINIMAL = """\
model:
  path: tiny/model
  init: random
dataset:
  path: tiny/data/instructions.jsonl
tuner: lora
train:
  max_steps: 10
"""

A100X8 = Machine(gpu_names=("NVIDIA A100-SXM4-80GB",) * 8, gpu_memory_mib=81920, host_ram_bytes=1024 * 2**30)


def test_a_recipe_reads_into_typed_sections():
    r = parse_recipe(MINIMAL + "  lr: 3e-4\n  micro_batch: 4\n", "r.yaml")
    assert r.tuner == "lora" and r.train.max_steps == 10
    assert r.train.lr == 3e-4  # YAML 1.1 reads 3e-4 as a string: accepted as a number
    assert r.train.micro_batch == 4 and r.train.grad_accum == AUTO


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("train:\n  lrr: 1\n", "r.yaml:2", "unknown key train.lrr (did you mean train.lr?)"),
        ("trian:\n  lr: 1\n", "r.yaml:1", "unknown key trian (did you mean train?)"),
        ("train:\n  micro_batch: two\n", "r.yaml:2", "train.micro_batch must be an integer or auto"),
        ("tuner: bogus\n", "r.yaml:1", "choose one of: full, freeze, lora, qlora, lisa"),
        ("train: 3\n", "r.yaml:1", "train must be a section"),
        ("model:\n  path: [1\n", "r.yaml:3", "not valid YAML"),
        ("qlora:\n  quant: fp4\n", "r.yaml:2", "qlora.quant is 'fp4'; choose one of: nf4, int8"),
        ("- a\n- b\n", "r.yaml:1", "a recipe is a mapping of sections"),
    ],
)
def test_errors_name_the_file_line_and_what_was_wrong(text, where, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    assert err.value.where == where
    assert message in str(err.value)


def test_overrides_are_typed_and_report_the_flag():
    r = apply_overrides(parse_recipe(MINIMAL, "r.yaml"), ["train.lr=3e-5", "distributed.zero=2", "tuner=full"])
    assert r.train.lr == 3e-5 and r.distributed.zero == 2 and r.tuner == "full"
    for bad, message in (
        ("train.lr=abc", "train.lr must be a number or auto"),
        ("trainlr=1", "unknown key"),
        ("train.lr", "expected section.key=value"),
    ):
        with pytest.raises(RecipeError) as err:
            apply_overrides(r, [bad])
        assert err.value.where == f"--set {bad}" and message in str(err.value)


def test_override_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "mine.jsonl").write_text('{"text": "hi"}\n')
    monkeypatch.chdir(tmp_path)
    r = apply_overrides(parse_recipe(MINIMAL, "/somewhere/else/r.yaml"), ["dataset.path=mine.jsonl"])
    assert r.dataset.path == str(tmp_path / "mine.jsonl")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.path="], "model.path is required"),
        (["train.max_steps=0", "train.epochs=0"], "train.epochs > 0 or train.max_steps > 0"),
        (["dataset.eval_split=1.5"], "must be a fraction"),
        (["distributed.offload=optimizer", "distributed.zero=0"], "offload needs DeepSpeed"),
        (["distributed.offload=optimizer+params", "distributed.zero=2"], "needs distributed.zero 3"),
        (["tuner=lisa", "distributed.zero=2"], "LISA"),
        (["tuner=qlora", "distributed.zero=3"], "QLoRA with ZeRO-3"),
        (["distributed.node_rank=2", "distributed.nodes=2"], "node_rank 2 must be in [0, nodes=2)"),
        (["distributed.launcher=python", "distributed.gpus=2"], "runs one process"),
        (["train.logging_steps=0"], "train.logging_steps must be at least 1"),
        (["train.save_steps=0"], "train.save_steps must be at least 1"),
        (["train.save_total_limit=0"], "train.save_total_limit must be at least 1"),
        (["train.warmup_ratio=-0.5"], "train.warmup_ratio -0.5 must be a fraction in [0, 1)"),
        (["train.eval_steps=-1"], "train.eval_steps must be 0"),
        (["train.max_grad_norm=-1"], "must be 0 or more"),
    ],
)
def test_cross_field_checks(overrides, message):
    with pytest.raises(RecipeError, match=None) as err:
        validate(apply_overrides(parse_recipe(MINIMAL, "r.yaml"), overrides))
    assert message in str(err.value)


def test_dump_round_trips():
    r = apply_overrides(parse_recipe(MINIMAL, "r.yaml"), ["train.lr=0.001", "lora.rank=16"])
    again = parse_recipe(dump_recipe(r), "again.yaml")
    assert again.train == r.train and again.lora == r.lora and again.tuner == r.tuner


# --- shipped recipes ---------------------------------------------------------------------


def test_the_demo_and_the_realistic_recipes_ship():
    names = {p.stem for p in shipped()}
    assert {
        "tiny-demo",
        "qwen2.5-7b-lora",
        "qwen2.5-7b-qlora-24gb",
        "qwen2.5-7b-lisa",
        "qwen2.5-7b-full-zero3",
        "llama-3.1-70b-qlora",
    } <= names
    assert find_recipe("tiny-demo") == find_recipe("tiny-demo.yaml") is not None


@pytest.mark.parametrize("path", shipped(), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates_and_says_how_to_run_it(path):
    recipe = validate(load_recipe(path))
    assert header(path)[0].startswith(f"ftui train recipes/{path.name}")
    assert recipe.tuner in ("full", "freeze", "lora", "qlora", "lisa")


TARGETS = {  # the hardware each recipe's header promises it fits
    "qwen2.5-7b-lora": Machine(("NVIDIA A100-SXM4-80GB",), 81920, 256 * 2**30),
    "qwen2.5-7b-qlora-24gb": Machine(("NVIDIA GeForce RTX 4090",), 24564, 64 * 2**30),
    "qwen2.5-7b-lisa": Machine(("NVIDIA A100-SXM4-80GB",), 81920, 256 * 2**30),
    "qwen2.5-7b-full-zero3": A100X8,
    "llama-3.1-70b-qlora": Machine(("NVIDIA A100-SXM4-80GB",), 81920, 256 * 2**30),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_realistic_recipe_fits_the_hardware_its_header_names(name):
    settings = resolve(load_recipe(find_recipe(name)), TARGETS[name])
    ok, problems = verdict(settings)
    assert ok, problems
    assert settings.device == "cuda" and settings.plan is not None


def test_the_demo_resolves_to_one_cpu_process_with_no_plan():
    settings = resolve(load_recipe(find_recipe("tiny-demo")), Machine())
    assert (settings.device, settings.launcher, settings.world) == ("cpu", "python", 1)
    assert settings.plan is None and settings.notes


def test_auto_values_come_from_the_planner_and_the_machine():
    recipe = apply_overrides(
        load_recipe(find_recipe("qwen2.5-7b-full-zero3")),
        ["train.micro_batch=auto", "train.lr=auto", "train.grad_accum=auto"],
    )
    s = resolve(recipe, A100X8)
    assert s.micro_batch >= 1 and s.plan.memory.fits
    assert s.grad_accum * s.micro_batch * s.world >= recipe.train.global_batch
    assert s.lr == 2e-5  # the planner's starting point for full fine-tuning
    resolved = s.resolved_recipe()
    assert AUTO not in (resolved.train.micro_batch, resolved.train.lr, resolved.distributed.zero)


def test_a_recipe_that_will_not_fit_gets_the_plans_verdict():
    recipe = apply_overrides(
        load_recipe(find_recipe("qwen2.5-7b-lora")), ["tuner=full", "train.micro_batch=8", "train.grad_ckpt=false"]
    )
    ok, problems = verdict(resolve(recipe, TARGETS["qwen2.5-7b-lora"]))
    assert not ok and any("per GPU" in p for p in problems)


def test_asking_for_more_gpus_than_visible_is_an_error():
    recipe = apply_overrides(load_recipe(find_recipe("qwen2.5-7b-lora")), ["distributed.gpus=4"])
    with pytest.raises(RecipeError, match="4 GPUs asked for, 1 visible"):
        resolve(recipe, TARGETS["qwen2.5-7b-lora"])


def test_an_unknown_model_names_the_recipe_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL.replace("tiny/model", "no-such-model-xyz"))
    with pytest.raises(RecipeError) as err:
        resolve(load_recipe(path), Machine())
    assert "model.path" in err.value.where and "unknown model" in str(err.value)


def test_relative_recipe_paths_resolve_from_the_recipe_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(Path(find_recipe("tiny-demo")))
    assert recipe.path_of(recipe.dataset.path).is_file()


def test_auto_zero_is_the_lowest_stage_the_planner_says_fits():
    recipe = apply_overrides(load_recipe(find_recipe("qwen2.5-7b-full-zero3")), ["distributed.zero=auto"])
    on_a100s = resolve(recipe, A100X8)
    assert on_a100s.zero == 1  # 16 bytes/param do not fit unsharded; ZeRO-1's 4A + 12A/8 does
    assert resolve(recipe.but(tuner="lora"), A100X8).zero == 0
    forty = Machine(gpu_names=("NVIDIA A100-SXM4-40GB",) * 8, gpu_memory_mib=40960, host_ram_bytes=1024 * 2**30)
    assert resolve(recipe, forty).zero == 2  # 2A + 14A/8 = 28.5 GB of states: ZeRO-1's 42 GB does not fit
    two_l4 = Machine(gpu_names=("NVIDIA L4",) * 2, gpu_memory_mib=23034, host_ram_bytes=1024 * 2**30)
    on_l4 = resolve(apply_overrides(recipe, ["distributed.gpus=2"]), two_l4)
    assert on_l4.zero == 0 and not verdict(on_l4)[0]  # nothing fits: stage 0, and the plan refuses it


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["distributed.fsdp=full_shard", "distributed.zero=2"], "two sharding engines"),
        (["distributed.fsdp=hybrid_shard"], "2-D device mesh"),
        (["distributed.fsdp=full_shard", "distributed.offload=optimizer"], "offload optimizer+params"),
        (["distributed.fsdp=full_shard", "tuner=lisa"], "FSDP cannot follow"),
        (["distributed.fsdp=full_shard", "distributed.launcher=deepspeed"], "not the deepspeed launcher"),
        (["distributed.fsdp=zero3"], "choose one of: none, full_shard, shard_grad_op, hybrid_shard"),
    ],
)
def test_fsdp_settings_the_runner_cannot_launch_are_refused_by_name(sets, message):
    with pytest.raises(RecipeError) as err:
        validate(apply_overrides(parse_recipe(MINIMAL, "r.yaml"), sets))
    assert message in str(err.value)


def test_an_fsdp_recipe_with_cpu_offload_is_accepted_and_plans_fsdp():
    r = validate(
        apply_overrides(
            parse_recipe(MINIMAL, "r.yaml"), ["distributed.fsdp=full_shard", "distributed.offload=optimizer+params"]
        )
    )
    assert r.distributed.fsdp == "full_shard" and r.distributed.offload == "optimizer+params"


def test_fsdp_cpu_offload_on_a_machine_without_a_gpu_is_refused_before_launch_and_planned_on_gpus():
    recipe = apply_overrides(
        load_recipe(find_recipe("tiny-demo")),
        ["distributed.fsdp=full_shard", "distributed.offload=optimizer+params", "distributed.gpus=2"],
    )
    with pytest.raises(RecipeError, match="offload policy needs a GPU"):
        resolve(recipe, Machine())
    on_gpus = resolve(apply_overrides(recipe, ["distributed.device=auto"]), A100X8)
    assert on_gpus.fsdp == "full_shard" and on_gpus.launcher == "torchrun" and on_gpus.plan.setup.fsdp == "full_shard"
