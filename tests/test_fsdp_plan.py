"""FSDP in the planner: what each strategy shards and gathers, what the libraries refuse, the
recommender trying it beside the ZeRO stages, and `ftui plan --fsdp`."""

from __future__ import annotations

import json

import pytest

from planner import Cluster, Setup, SetupError, gpu_spec, refusals, resolve_model
from planner.memory import estimate
from planner.recommend import recommend
from planner.setup import TUNERS
from tui.cli import main

GIB = 2**30


def arch(name: str = "llama-3.1-8b"):
    return resolve_model(name).arch


def term(mem, name: str) -> float:
    return sum(t.bytes for t in mem.terms if t.name == name)


def cluster(gpu: str = "a100-80g", n: int = 8, nodes: int = 1) -> Cluster:
    return Cluster(gpu_spec(gpu), n, nodes)


@pytest.mark.parametrize("tuner", TUNERS)
def test_fsdp_full_shard_answers_for_every_tuner(tuner):
    setup = Setup(
        tuner=tuner, fsdp="full_shard", precision="bf16-mixed" if tuner in ("full", "freeze") else "bf16-true"
    )
    mem = estimate(arch(), setup, cluster())
    assert mem.peak_allocated > 0 and term(mem, "FSDP gathered units") > 0
    refused = [r.rule for r in refusals(arch(), setup, cluster())]
    assert refused == (["lisa-fsdp"] if tuner == "lisa" else [])


def test_full_shard_shards_weights_gradients_and_optimizer_with_fp32_trainables_and_no_master_copy():
    a, c = arch(), cluster()
    mem = estimate(a, Setup(tuner="full", fsdp="full_shard", precision="bf16-mixed"), c)
    # accelerate upcasts trainable parameters to fp32 under mixed precision: fp32 shards of all three
    assert term(mem, "model weights") == pytest.approx(a.params * 4 / 8)
    assert term(mem, "gradients") == pytest.approx(a.params * 4 / 8)
    assert term(mem, "optimizer moments") == pytest.approx(a.params * 8 / 8)
    assert term(mem, "fp32 master weights") == 0 and term(mem, "ZeRO reduce bucket") == 0
    # gathered for backward: the head unit (kept after forward) + the last layer and the prefetched one, bf16
    assert term(mem, "FSDP gathered units") == pytest.approx(2 * (a.head_params + 2 * max(a.layer_params)))


def test_shard_grad_op_holds_the_whole_model_gathered_when_backward_begins():
    a = arch()
    full = estimate(a, Setup(tuner="full", fsdp="full_shard", precision="bf16-true"), cluster())
    sgo = estimate(a, Setup(tuner="full", fsdp="shard_grad_op", precision="bf16-true"), cluster())
    assert term(sgo, "FSDP gathered units") == pytest.approx(2 * a.params)
    assert sgo.peak_allocated > full.peak_allocated + 10 * GIB


def test_hybrid_shard_shards_within_a_node_and_replicates_across_nodes():
    a = arch()
    two_nodes = cluster(n=8, nodes=2)
    hybrid = estimate(a, Setup(tuner="full", fsdp="hybrid_shard", precision="bf16-true"), two_nodes)
    full = estimate(a, Setup(tuner="full", fsdp="full_shard", precision="bf16-true"), two_nodes)
    assert term(hybrid, "model weights") == pytest.approx(a.params * 2 / 8)
    assert term(full, "model weights") == pytest.approx(a.params * 2 / 16)


def test_qlora_under_fsdp_shards_its_4bit_base_and_cpu_offload_moves_it_to_the_host():
    a, c = arch("llama-3.1-70b"), cluster("rtx4090", 2)
    plain = estimate(a, Setup(tuner="qlora", fsdp="full_shard"), c)
    offloaded = estimate(a, Setup(tuner="qlora", fsdp="full_shard", offload="optimizer+params"), c)
    replicated = estimate(a, Setup(tuner="qlora"), c)
    assert term(plain, "quantized linear weights") == pytest.approx(term(replicated, "quantized linear weights") / 2)
    assert term(offloaded, "quantized linear weights") == 0
    assert offloaded.cpu_ram_bytes > plain.cpu_ram_bytes
    assert not refusals(a, Setup(tuner="qlora", fsdp="full_shard", offload="optimizer+params"), c)
    deepspeed = Setup(tuner="qlora", zero=2, offload="optimizer", precision="bf16-mixed")
    assert [r.rule for r in refusals(a, deepspeed, c)] == ["qlora-offload"]


def test_the_recommender_offers_qlora_with_fsdp_and_cpu_offload_for_70b_on_two_24gb_cards():
    rec = recommend(arch("llama-3.1-70b"), Setup(), cluster("rtx4090", 2))
    qlora_fsdp = next(alt for alt in rec.alternatives if alt.tuner == "qlora" and alt.engine == "fsdp")
    assert qlora_fsdp.fits and qlora_fsdp.candidate.setup.offload == "optimizer+params"
    assert qlora_fsdp.candidate.setup.fsdp == "full_shard"
    only_qlora = recommend(arch("llama-3.1-70b"), Setup(), cluster("rtx4090", 2), tuners=("qlora",))
    assert only_qlora.chosen is not None and only_qlora.chosen.setup.is_fsdp
    assert any("fsdp" == alt.engine for alt in rec.alternatives if alt.tuner == "lisa" and "refused" in alt.reason)


def test_fsdp_with_zero_or_with_optimizer_only_offload_is_refused_by_name():
    with pytest.raises(SetupError, match="two sharding engines"):
        Setup(fsdp="full_shard", zero=3)
    with pytest.raises(SetupError, match="optimizer\\+params"):
        Setup(fsdp="full_shard", offload="optimizer")
    with pytest.raises(SetupError, match="--fsdp"):
        Setup(fsdp="sharded")


def test_ftui_plan_fsdp_json_says_the_engine_and_the_table_shows_fsdp_rows(capsys):
    code = main(
        [
            "plan",
            "--model",
            "llama-3.1-8b",
            "--gpu",
            "a100-80g",
            "--gpus",
            "8",
            "--tuner",
            "full",
            "--fsdp",
            "full_shard",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["estimate"]["setup"]["engine"] == "fsdp" and out["estimate"]["setup"]["fsdp"] == "full_shard"
    assert any(t["name"] == "FSDP gathered units" for t in out["estimate"]["terms"])
    code = main(["plan", "--model", "llama-3.1-8b", "--gpu", "a100-80g", "--gpus", "8", "--json"])
    rec = json.loads(capsys.readouterr().out)
    assert code == 0 and {"fsdp", "0", "3"} <= {a["engine"] for a in rec["alternatives"]}
    code = main(["plan", "--model", "llama-3.1-8b", "--zero", "2", "--fsdp", "full_shard"])
    err = capsys.readouterr().err
    assert code == 2 and "two sharding engines" in err and "Traceback" not in err


def test_a_recipe_from_an_fsdp_plan_launches_fsdp_and_hybrid_shard_is_refused_with_the_reason():
    from runner.recipe.from_plan import recipe_from_plan
    from runner.recipe.schema import RecipeError

    model = resolve_model("llama-3.1-8b")
    c = cluster()
    recipe = recipe_from_plan(model, "llama-3.1-8b", Setup(tuner="lora", fsdp="full_shard"), c, dataset="d.jsonl")
    assert recipe.distributed.fsdp == "full_shard" and recipe.distributed.zero == 0
    with pytest.raises(RecipeError, match="hybrid_shard"):
        recipe_from_plan(model, "llama-3.1-8b", Setup(tuner="lora", fsdp="hybrid_shard"), c, dataset="d.jsonl")
