"""A plan turned into a recipe: the model reference each kind of model name becomes, the planned
setup carried over, overrides applied and checked, and the YAML the launch dialog writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.recipe.from_plan import model_reference, recipe_from_plan, recipe_text
from runner.recipe.schema import RecipeError, load_recipe
from tui.app.plan_form import PlanForm, compute

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "recipes" / "tiny" / "model"


def outcome(model: str, **form):
    result = compute(PlanForm(model=model, gpu=form.pop("gpu", "a100-80g"), **form), None)
    assert result.plan is not None, result.error
    return result


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
        ("7b", None),  # a size alias: the HF id of the catalog model it stands for
        (str(TINY_MODEL), str(TINY_MODEL)),
        (str(TINY_MODEL / "config.json"), str(TINY_MODEL)),
    ],
)
def test_the_recipe_names_the_model_so_the_runner_can_load_it(typed, expected):
    result = outcome(typed)
    reference = model_reference(result.model, typed)
    if expected is None:
        assert "/" in reference and reference == result.model.hf_id
    else:
        assert reference == expected


def test_a_relative_model_directory_becomes_absolute(monkeypatch):
    monkeypatch.chdir(REPO / "recipes")
    result = outcome("tiny/model")
    assert model_reference(result.model, "tiny/model") == str(TINY_MODEL)


def test_the_planned_setup_is_what_the_recipe_trains(tmp_path):
    result = outcome("qwen2.5-7b", gpus="4", tuner="lora", seq_len="1024", micro_batch="2", lora_rank="16")
    recipe = recipe_from_plan(
        result.model,
        "qwen2.5-7b",
        result.setup,
        result.plan.cluster,
        dataset="/data/train.jsonl",
        output_dir=str(tmp_path),
        name="try",
        grad_accum=8,
        lr=1e-4,
    )
    assert recipe.tuner == "lora" and recipe.lora.rank == 16
    assert recipe.dataset.max_seq_len == 1024 and recipe.train.micro_batch == 2
    assert recipe.train.grad_accum == 8 and recipe.train.lr == 1e-4
    assert recipe.distributed.gpus == 4 and recipe.distributed.zero == result.setup.zero
    assert recipe.output.dir == str(tmp_path) and recipe.output.name == "try"


def test_overrides_apply_and_bad_ones_say_which(tmp_path):
    result = outcome("qwen2.5-7b", tuner="full")
    args = (result.model, "qwen2.5-7b", result.setup, result.plan.cluster)
    recipe = recipe_from_plan(*args, dataset="d.jsonl", overrides=["train.epochs=3", "dataset.format=alpaca"])
    assert recipe.train.epochs == 3 and recipe.dataset.format == "alpaca"
    with pytest.raises(RecipeError, match="train.nonsense"):
        recipe_from_plan(*args, dataset="d.jsonl", overrides=["train.nonsense=1"])


def test_the_written_yaml_loads_back_as_the_same_recipe_with_only_its_tuners_section(tmp_path):
    result = outcome("qwen2.5-7b", tuner="qlora")
    recipe = recipe_from_plan(
        result.model, "qwen2.5-7b", result.setup, result.plan.cluster, dataset=str(tmp_path / "d.jsonl")
    )
    path = tmp_path / "plan.yaml"
    text = recipe_text(recipe, path, result.setup, result.plan.cluster, 20.5)
    assert text.startswith(f"# ftui train {path}\n") and "Planned peak: 20.5 GiB" in text
    data = yaml.safe_load(text)
    assert "qlora" in data and "lisa" not in data and "freeze" not in data
    path.write_text(text)
    loaded = load_recipe(path)
    assert loaded.tuner == "qlora" and loaded.qlora == recipe.qlora and loaded.train == recipe.train
