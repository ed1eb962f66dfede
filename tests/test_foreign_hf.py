"""A real HF Trainer run (a tiny random Llama on the CPU, in a child process) read as another tool's run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from runner.watch import foreign
from runner.watch.foreign import info, scan

CHILD = r"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=2, max_position_embeddings=32,
)


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        ids = torch.randint(0, 64, (8,))
        return {"input_ids": ids, "labels": ids}


class Pause(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # after checkpoint-N/ is written
        if state.global_step == 4:
            print("saved", state.global_step, flush=True)
            sys.stdin.readline()


args = TrainingArguments(
    sys.argv[1], max_steps=6, logging_steps=1, save_steps=2, save_total_limit=1, per_device_train_batch_size=2,
    include_num_input_tokens_seen=True, report_to="none", use_cpu=True, disable_tqdm=True,
)
trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=Data(), callbacks=[Pause()])
trainer.train()
trainer.save_state()
"""


@pytest.mark.slow
def test_real_hf_run_counting_input_tokens_reads_running_mid_training_then_finished(tmp_path):
    out = tmp_path / "hf-out"
    spawned = time.time()
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(out)], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, text=True,
        )  # fmt: skip
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("saved"):  # other libraries print to stdout too
            line = proc.stdout.readline()
        assert line == "saved 4\n", errors.read_text()
        state = out / "checkpoint-4" / "trainer_state.json"
        history = json.loads(state.read_text())["log_history"]
        assert all("train_runtime" in entry for entry in history)  # what made every entry look like the end
        (run,) = scan([tmp_path])
        assert (run.id, run.tool) == ("hf:hf-out", "hf")
        mid = info(run, now=time.time())
        assert (mid.state, mid.step, mid.total_steps) == ("running", 4, 6)
        assert spawned < mid.started < state.stat().st_mtime - history[-1]["train_runtime"] + 1
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=300) == 0, errors.read_text()
    finally:
        proc.kill()
        proc.wait()
    done = foreign.summary(run, time.time())
    assert (done["state"], done["step"], done["total_steps"]) == ("finished", 6, 6)
    assert done["lr"] is not None and done["grad_norm"] is not None  # the last record has neither: the final metrics
    final = json.loads((out / "trainer_state.json").read_text())["log_history"][-1]
    assert "train_loss" in final and "learning_rate" not in final
    assert [r["step"] for r in foreign.records(run)] == [1, 2, 3, 4, 5, 6]
