"""LISA: the optimizer never keeps state for frozen layers, and every rank trains the same layers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from recipes import RECIPES_DIR  # noqa: E402
from runner.train.callbacks import LisaCallback, decoder_layers  # noqa: E402


def tiny_model(layers: int = 4):
    config = transformers.AutoConfig.from_pretrained(RECIPES_DIR / "tiny" / "model", num_hidden_layers=layers)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def run_steps(model, callback, optimizer, steps: int) -> list[list[int]]:
    chosen = []
    for step in range(steps):
        callback.on_step_begin(None, SimpleNamespace(global_step=step), None, optimizer=optimizer)
        chosen.append(list(callback.active))
        ids = torch.randint(0, model.config.vocab_size, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return chosen


def test_only_sampled_layers_train_and_dropped_layers_lose_their_adam_state():
    model = tiny_model(layers=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    callback = LisaCallback(model, gamma=1, interval=2, seed=3)
    layers = decoder_layers(model)
    history = run_steps(model, callback, optimizer, steps=8)
    assert all(len(c) == 1 for c in history)
    assert len({tuple(c) for c in history}) > 1, "layers are re-sampled every `interval` steps"
    active = set(callback.active)
    in_state = {id(p) for p in optimizer.state}
    for index, layer in enumerate(layers):
        has_state = any(id(p) in in_state for p in layer.parameters())
        assert has_state == (index in active), f"layer {index}: state kept = {has_state}"
        assert all(p.requires_grad == (index in active) for p in layer.parameters())
    embeddings = model.get_input_embeddings().weight
    assert embeddings.requires_grad and id(embeddings) in in_state  # embeddings and head always train


def test_every_rank_draws_the_same_layers():
    a = LisaCallback(tiny_model(), gamma=2, interval=5, seed=11)
    b = LisaCallback(tiny_model(), gamma=2, interval=5, seed=11)
    assert [a.choose(s) for s in range(0, 50, 5)] == [b.choose(s) for s in range(0, 50, 5)]
    assert a.choose(0) == a.choose(4)  # the draw holds for the whole interval
