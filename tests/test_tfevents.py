"""HF Trainer runs seen through their TensorBoard event files: live between checkpoints, listed before the first one."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from tfevents_writer import HfTensorBoard, crc32c, event, hf_final_metrics, hf_step_logs, masked, record, scalar_value

from runner.watch import foreign
from runner.watch.foreign import ForeignTail, info, scan
from runner.watch.tfevents import EventFile, event_files, masked_crc32c

T0 = 1_700_000_000.0
ARGS = {"output_dir": "out", "max_steps": -1, "num_train_epochs": 2, "logging_steps": 10, "save_steps": 500}


def set_mtime(path, when: float) -> None:
    os.utime(path, (when, when))


@pytest.fixture(autouse=True)
def _fresh_caches():
    foreign._EVENTS.clear()
    yield
    foreign._EVENTS.clear()


def test_masked_crc32c_matches_the_known_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert masked_crc32c(b"123456789") == masked(b"123456789")


def test_event_file_reader_returns_scalars_texts_and_waits_for_a_half_written_record(tmp_path):
    tb = HfTensorBoard(tmp_path, T0, ARGS)
    tb.log(10, {"loss": 2.5, "learning_rate": 1e-4}, T0 + 5)
    reader = EventFile(tb.path)
    first, text, loss, lr = reader.read()
    assert first.file_version == "brain.Event:2" and first.wall_time == T0
    assert json.loads(text.texts["args/text_summary"])["num_train_epochs"] == 2
    assert (loss.step, loss.scalars) == (10, {"train/loss": 2.5})
    assert lr.scalars["train/learning_rate"] == pytest.approx(1e-4)
    whole = record(event(T0 + 9, 20, values=[scalar_value("train/loss", 2.0)]))
    with open(tb.path, "ab") as fh:
        fh.write(whole[:15])  # the writer is in the middle of a record
    assert reader.read() == []
    with open(tb.path, "ab") as fh:
        fh.write(whole[15:])
    (again,) = reader.read()
    assert (again.step, again.scalars, again.wall_time) == (20, {"train/loss": 2.0}, T0 + 9)


def test_event_file_reader_stops_at_a_damaged_length(tmp_path):
    tb = HfTensorBoard(tmp_path, T0)
    with open(tb.path, "ab") as fh:
        fh.write(b"\x05" + b"\x00" * 15)  # a length whose check sum is wrong
    tb.log(10, {"loss": 2.5}, T0 + 5)
    reader = EventFile(tb.path)
    assert [e.file_version for e in reader.read()] == ["brain.Event:2"]
    assert reader.broken and reader.read() == []


def test_new_style_tensor_scalars_are_read_too(tmp_path):
    tb = HfTensorBoard(tmp_path, T0)
    tb.log(10, {"loss": 2.5}, T0 + 5, new_style=True)
    assert EventFile(tb.path).read()[-1].scalars == {"train/loss": 2.5}


def test_hf_run_with_only_tensorboard_events_lists_before_its_first_checkpoint(tmp_path):
    out = tmp_path / "out"
    tb = HfTensorBoard(out, T0, ARGS)
    for step in (10, 20, 30):
        tb.log(step, hf_step_logs(step, 100), T0 + step)
    tb.log(30, {"eval_loss": 2.4, "eval_runtime": 1.5, "epoch": 0.6}, T0 + 32)
    set_mtime(tb.path, T0 + 32)
    (run,) = scan([tmp_path])
    assert (run.id, run.tool, run.path, run.file) == ("hf:out", "hf", out.resolve(), tb.path.resolve())
    got = info(run, now=T0 + 40)
    assert (got.state, got.step, got.loss, got.started) == ("running", 30, pytest.approx(2.7), T0)
    assert got.total_steps == 100  # no max_steps: 2 epochs x 50 steps per epoch (step / epoch)
    assert got.eta_s == pytest.approx(70 * 32 / 30)  # the pace since the writer opened, at the last record
    recs = ForeignTail(run).new_records()
    assert [(r["step"], r["loss"] is not None, r["eval_loss"] is not None) for r in recs] == [
        (10, True, False),
        (20, True, False),
        (30, True, False),
        (30, False, True),  # the evaluation at step 30 is a record of its own
    ]
    assert recs[3]["eval_loss"] == pytest.approx(2.4)
    assert recs[0]["lr"] == pytest.approx(1e-4 - 1e-6) and recs[0]["grad_norm"] == 0.5
    assert recs[0]["time"] == T0 + 10 and recs[0]["elapsed_s"] == 10


def test_hf_run_events_give_progress_that_checkpoints_trail(tmp_path):
    out = tmp_path / "out"
    tb = HfTensorBoard(out, T0, {**ARGS, "max_steps": 200})
    state = out / "checkpoint-20" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    history = [{**hf_step_logs(s, 200), "step": s} for s in (10, 20)]
    state.write_text(json.dumps({"global_step": 20, "max_steps": 200, "log_history": history}))
    for step in (10, 20, 30, 40, 50):
        tb.log(step, hf_step_logs(step, 200), T0 + step)
    (run,) = scan([tmp_path])
    tail = ForeignTail(run)
    assert [r["step"] for r in tail.new_records()] == [10, 20, 30, 40, 50]  # not just the checkpoint's 10, 20
    assert info(run, now=T0 + 55).step == 50
    tb.log(60, hf_step_logs(60, 200), T0 + 60)
    assert [(r["step"], r["total_steps"]) for r in tail.new_records()] == [(60, 200)]
    assert tail.new_records() == []


def test_hf_events_of_a_resumed_run_skip_the_steps_the_older_file_has(tmp_path):
    out = tmp_path / "out"
    first = HfTensorBoard(out, T0, {**ARGS, "max_steps": 100}, name="Jan01_00-00-00_host")
    for step in (10, 20, 30):
        first.log(step, hf_step_logs(step, 100), T0 + step)
    again = HfTensorBoard(out, T0 + 1000, {**ARGS, "max_steps": 100}, name="Jan01_00-16-40_host")
    for step in (30, 40):  # resumed from checkpoint-20: step 30 again, then on
        again.log(step, hf_step_logs(step, 100), T0 + 1000 + step)
    assert [p.name for p in event_files(out)] == [first.path.name, again.path.name]
    (run,) = scan([tmp_path])
    recs = ForeignTail(run).new_records()
    assert [r["step"] for r in recs] == [10, 20, 30, 40]
    assert recs[-1]["eta_s"] == pytest.approx(60 * 1.0)  # the resumed session's pace (a second a step from 30)
    assert info(run, now=T0 + 1050).started == T0  # the run's start, not the resumed session's


def test_hf_run_logging_num_input_tokens_is_not_finished_mid_training_in_its_events(tmp_path):
    out = tmp_path / "out"
    tb = HfTensorBoard(out, T0, {**ARGS, "max_steps": 100})
    for step in (10, 20):
        tb.log(step, hf_step_logs(step, 100, tokens=True, runtime=step * 1.0), T0 + step)
    (run,) = scan([tmp_path])
    got = info(run, now=T0 + 21)
    assert (got.state, got.step) == ("running", 20)
    rec = ForeignTail(run).new_records()[-1]
    assert rec["tokens"] == 20000 and rec["tokens_per_s"] == 1000.0
    tb.log(20, hf_final_metrics(20, 100, 20.5), T0 + 21)  # stopped early (callback): the final metrics
    foreign._EVENTS.clear()
    done = info(run, now=T0 + 22)
    assert (done.state, done.step, done.loss) == ("finished", 20, pytest.approx(2.8))


def test_hf_events_stall_after_several_logging_intervals(tmp_path):
    out = tmp_path / "out"
    tb = HfTensorBoard(out, T0, {**ARGS, "max_steps": 1000})
    for step in range(10, 110, 10):
        tb.log(step, hf_step_logs(step, 1000), T0 + step * 6)  # a log a minute
    set_mtime(tb.path, T0 + 600)
    (run,) = scan([tmp_path])
    assert info(run, now=T0 + 600 + 4 * 60).state == "running"
    stalled = info(run, now=T0 + 600 + 5 * 60 + 1)
    assert (stalled.state, stalled.eta_s, stalled.active) == ("stalled", None, False)


def test_an_estimated_total_does_not_finish_an_hf_run(tmp_path):
    out = tmp_path / "out"
    tb = HfTensorBoard(out, T0, {**ARGS, "num_train_epochs": 1})  # max_steps -1: epochs decide
    for step in (10, 20):
        tb.log(step, hf_step_logs(step, 20), T0 + step)  # epoch 1.0 at step 20: 20 of ~20 steps
    (run,) = scan([tmp_path])
    got = info(run, now=T0 + 21)
    assert (got.state, got.step, got.total_steps) == ("running", 20, 20)
    tb.log(20, hf_final_metrics(20, 20, 20.2), T0 + 21)
    assert info(run, now=T0 + 22).state == "finished"  # on the final metrics


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_events_written_by_torch_summary_writer_are_read(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "out" / "runs" / "Jan01_host"))
    writer.add_text("args", json.dumps({"max_steps": 50}))
    for step in (10, 20):
        for tag, value in {"train/loss": 2.0 - step / 100, "train/learning_rate": 1e-4, "train/epoch": 0.1}.items():
            writer.add_scalar(tag, value, step)
        writer.flush()
    writer.close()
    (run,) = scan([tmp_path])
    recs = ForeignTail(run).new_records()
    assert [(r["step"], r["total_steps"]) for r in recs] == [(10, 50), (20, 50)]
    assert recs[1]["loss"] == pytest.approx(1.8)
