"""Runs of other tools (LLaMA-Factory, ms-swift, HF Trainer) read from the files those tools write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.watch import foreign
from runner.watch.foreign import ForeignRun, ForeignTail, info, parse_duration, records, scan
from runner.rundir.runs import RunError, new_run_dir
from runner.watch.sources import DirRunSource

# --- the files, as each tool writes them ---------------------------------------------------------------------------

LF_LINES = [  # LLaMA-Factory LogCallback.on_log: json.dumps(logs) of the non-None values
    {
        "current_steps": 10,
        "total_steps": 100,
        "loss": 1.9,
        "lr": 4.5e-05,
        "epoch": 0.1,
        "percentage": 10.0,
        "elapsed_time": "0:01:02",
        "remaining_time": "0:09:18",
        "throughput": 1523.4,
        "total_tokens": 94400,
    },
    {
        "current_steps": 20,
        "total_steps": 100,
        "loss": 1.5,
        "lr": 4.0e-05,
        "epoch": 0.2,
        "percentage": 20.0,
        "elapsed_time": "0:02:04",
        "remaining_time": "0:08:16",
        "throughput": 1530.0,
        "total_tokens": 189700,
        "vram_allocated": 13.2,
        "vram_reserved": 15.75,
    },
    {
        "current_steps": 20,
        "total_steps": 100,
        "eval_loss": 1.61,
        "epoch": 0.2,
        "percentage": 20.0,
        "elapsed_time": "0:02:10",
        "remaining_time": "1 day, 0:00:03",
    },
]

SWIFT_LINES = [  # ms-swift add_train_message + the Trainer's logs, appended by append_to_jsonl
    {
        "loss": 2.1,
        "grad_norm": 3.25,
        "learning_rate": 9.9e-05,
        "memory(GiB)": 17.42,
        "train_speed(iter/s)": 0.51,
        "epoch": 0.05,
        "global_step/max_steps": "10/200",
        "percentage": "5.00%",
        "elapsed_time": "19s",
        "remaining_time": "6m 4s",
    },
    {
        "eval_loss": 1.8,
        "eval_runtime": 3.1,
        "epoch": 0.1,
        "global_step/max_steps": "20/200",
        "percentage": "10.00%",
        "elapsed_time": "1m 2s",
        "remaining_time": "1h 3m",
        "memory(GiB)": 18.0,
        "train_speed(s/it)": 1.9,
    },
]


def hf_state(steps: list[int], max_steps: int = 100, eval_at: tuple[int, ...] = ()) -> dict:
    """A TrainerState as save_to_json writes it: log entries every logging step, eval entries after them."""
    history: list[dict] = []
    for step in steps:
        history.append(
            {
                "epoch": step / max_steps,
                "grad_norm": 0.5,
                "learning_rate": 1e-4 - step * 1e-7,
                "loss": 3.0 - step / 100,
                "num_input_tokens_seen": step * 1000,
                "step": step,
            }
        )
        if step in eval_at:
            history.append({"epoch": step / max_steps, "eval_loss": 2.5, "eval_runtime": 4.2, "step": step})
    return {
        "best_metric": None,
        "epoch": steps[-1] / max_steps if steps else 0,
        "eval_steps": 500,
        "global_step": steps[-1] if steps else 0,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": 10,
        "max_steps": max_steps,
        "num_train_epochs": 1,
        "total_flos": 0.0,
    }


def write_jsonl(path: Path, lines: list, mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def write_state(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return path


def one_run(root: Path) -> ForeignRun:
    (run,) = scan([root])
    return run


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


# --- each format in ftui's keys -------------------------------------------------------------------------------------


def test_llamafactory_trainer_log_becomes_ftui_records(tmp_path):
    write_jsonl(tmp_path / "out" / "trainer_log.jsonl", LF_LINES)
    got = records(one_run(tmp_path))
    assert [r["step"] for r in got] == [10, 20, 20]
    first, second, ev = got
    assert first["total_steps"] == 100 and first["loss"] == 1.9 and first["lr"] == 4.5e-05
    assert first["epoch"] == 0.1 and first["tokens"] == 94400 and first["tokens_per_s"] == 1523.4
    assert first["elapsed_s"] == 62 and first["eta_s"] == 558
    assert first["mem"] == {} and first["grad_norm"] is None
    written = (tmp_path / "out" / "trainer_log.jsonl").stat().st_mtime  # no tool writes a time: the file's, and
    assert ev["time"] == written and second["time"] == written - 6 and first["time"] == written - 68  # elapsed
    assert second["mem"] == {"0": {"reserved_gib": 15.75, "allocated_gib": 13.2}}
    assert ev["eval_loss"] == 1.61 and ev["loss"] is None and ev["eta_s"] == 86403


def test_swift_logging_jsonl_becomes_ftui_records(tmp_path):
    write_jsonl(tmp_path / "v0-20250101-120000" / "logging.jsonl", SWIFT_LINES)
    run = one_run(tmp_path)
    assert run.tool == "swift"
    train, ev = records(run)
    assert (train["step"], train["total_steps"]) == (10, 200)
    assert train["loss"] == 2.1 and train["grad_norm"] == 3.25 and train["lr"] == 9.9e-05 and train["epoch"] == 0.05
    assert train["mem"] == {"0": {"reserved_gib": 17.42}}
    assert train["elapsed_s"] == 19 and train["eta_s"] == 6 * 60 + 4
    assert train["tokens"] is None and train["tokens_per_s"] is None  # swift logs iterations/s, not tokens/s
    assert (ev["step"], ev["eval_loss"], ev["elapsed_s"], ev["eta_s"]) == (20, 1.8, 62, 3780)


def test_hf_trainer_state_becomes_ftui_records_with_total_from_max_steps(tmp_path):
    write_state(tmp_path / "out" / "checkpoint-20" / "trainer_state.json", hf_state([10, 20], 50, eval_at=(20,)))
    run = one_run(tmp_path)
    assert run.tool == "hf" and run.path == (tmp_path / "out").resolve()
    got = records(run)
    assert [(r["step"], r["total_steps"]) for r in got] == [(10, 50), (20, 50), (20, 50)]
    assert got[0]["loss"] == pytest.approx(2.9) and got[0]["grad_norm"] == 0.5 and got[0]["tokens"] == 10000
    assert got[0]["lr"] == pytest.approx(1e-4 - 1e-6) and got[0]["epoch"] == 0.2
    assert got[2]["eval_loss"] == 2.5 and got[2]["loss"] is None
    assert got[0]["eta_s"] is None and got[0]["mem"] == {}


def test_unknown_keys_malformed_lines_and_wrong_types_are_tolerated(tmp_path):
    lines = [
        "{not json",
        "[1, 2, 3]",
        "",
        '"a string"',
        {"current_steps": 5, "total_steps": 50, "loss": "high", "lr": None, "novel_metric": [1], "epoch": True},
        {"loss": 1.0},  # no step: not a record
        {"current_steps": 6, "total_steps": 50, "loss": 0.75},
    ]
    write_jsonl(tmp_path / "trainer_log.jsonl", lines)
    got = records(one_run(tmp_path))
    assert [r["step"] for r in got] == [5, 6]
    assert got[0]["loss"] is None and got[0]["lr"] is None and got[0]["epoch"] is None
    assert got[1]["loss"] == 0.75 and "novel_metric" not in got[0]


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0:01:02", 62),
        ("12:00:00", 43200),
        ("1 day, 2:03:04", 93784),
        ("3 days, 0:00:00", 259200),
        ("1h 3m 4s", 3784),
        ("1m 2s", 62),
        ("1h 3m", 3780),
        ("2d 0h 0m 5s", 172805),
        ("45s", 45),
        (12.5, 12.5),
        ("soon", None),
        ("", None),
        ("1m and 2s", None),
        (None, None),
        (True, None),
    ],
)
def test_durations_of_both_tools_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


# --- incremental reading ---------------------------------------------------------------------------------------------


def test_jsonl_tail_returns_only_new_lines_and_holds_a_half_written_line(tmp_path):
    log = write_jsonl(tmp_path / "trainer_log.jsonl", LF_LINES[:1])
    tail = ForeignTail(one_run(tmp_path))
    assert [r["step"] for r in tail.new_records()] == [10]
    assert tail.new_records() == []
    line = json.dumps(LF_LINES[1])
    with open(log, "a") as fh:
        fh.write(line[:30])  # the tool is in the middle of writing a line
    assert tail.new_records() == []
    with open(log, "a") as fh:
        fh.write(line[30:] + "\n" + json.dumps(LF_LINES[2]) + "\n")
    assert [(r["step"], r["loss"], r["eval_loss"]) for r in tail.new_records()] == [(20, 1.5, None), (20, None, 1.61)]
    assert tail.metrics.offset == log.stat().st_size  # read from where it stopped, up to the end
    write_jsonl(log, LF_LINES[:1])  # rewritten from scratch (a new run in the same directory)
    assert [r["step"] for r in tail.new_records()] == [10]


def test_trainer_state_tail_emits_only_steps_beyond_the_last_one(tmp_path):
    state = write_state(tmp_path / "out" / "checkpoint-20" / "trainer_state.json", hf_state([10, 20], eval_at=(20,)))
    tail = ForeignTail(one_run(tmp_path))
    assert [r["step"] for r in tail.new_records()] == [10, 20, 20]
    assert tail.new_records() == []  # unchanged file: not read again
    newer = write_state(tmp_path / "out" / "checkpoint-40" / "trainer_state.json", hf_state([10, 20, 30, 40]))
    assert [r["step"] for r in tail.new_records()] == [30, 40]  # follows the newest checkpoint
    newer.write_text(newer.read_text()[:50])  # being rewritten: not valid JSON yet
    assert tail.new_records() == []
    write_state(newer, hf_state([10, 20, 30, 40, 50]))
    assert [r["step"] for r in tail.new_records()] == [50]
    assert state.exists()


def test_trainer_state_is_not_read_again_while_its_time_and_size_stay(tmp_path):
    path = write_state(tmp_path / "trainer_state.json", hf_state([10, 20]))
    tail = ForeignTail(one_run(tmp_path))
    assert len(tail.new_records()) == 2
    before = path.stat()
    text = path.read_text().replace('"step": 20', '"step": 90')  # same size, new content
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert tail.new_records() == []
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert [r["step"] for r in tail.new_records()] == [90]


def test_text_log_lines_come_from_running_log_txt(tmp_path):
    write_jsonl(tmp_path / "trainer_log.jsonl", LF_LINES[:1])
    tail = ForeignTail(one_run(tmp_path))
    assert tail.new_log_lines() == []
    (tmp_path / "running_log.txt").write_text("[INFO] step 10\n[INFO] step 2")
    assert tail.new_log_lines() == ["[INFO] step 10"]
    with open(tmp_path / "running_log.txt", "a") as fh:
        fh.write("0\n")
    assert tail.new_log_lines() == ["[INFO] step 20"]


# --- finding runs ----------------------------------------------------------------------------------------------------


def test_scan_finds_each_kind_once(tmp_path):
    lf = tmp_path / "saves" / "llama3-lora"
    write_jsonl(lf / "trainer_log.jsonl", LF_LINES)
    write_state(lf / "trainer_state.json", hf_state([10]))  # LLaMA-Factory writes this too
    sw = tmp_path / "output" / "v0-20250101-120000"
    write_jsonl(sw / "logging.jsonl", SWIFT_LINES)
    write_state(sw / "checkpoint-10" / "trainer_state.json", hf_state([10]))
    hf = tmp_path / "hf-out"
    write_state(hf / "checkpoint-5" / "trainer_state.json", hf_state([5]))
    write_state(hf / "checkpoint-10" / "trainer_state.json", hf_state([5, 10]))
    set_mtime(hf / "checkpoint-5" / "trainer_state.json", 2_000_000_000)  # newest by time, not by step
    found = {run.id: run for run in scan([tmp_path])}
    assert sorted(found) == ["hf:hf-out", "llamafactory:llama3-lora", "swift:v0-20250101-120000"]
    assert found["hf:hf-out"].file == hf.resolve() / "checkpoint-10" / "trainer_state.json"
    assert found["llamafactory:llama3-lora"].file == lf.resolve() / "trainer_log.jsonl"
    assert found["swift:v0-20250101-120000"].path == sw.resolve()


def test_scan_skips_ftui_runs_and_hidden_directories(tmp_path):
    run = new_run_dir(tmp_path / "runs", "mine")
    write_state(run.path / "checkpoints" / "checkpoint-1" / "trainer_state.json", hf_state([1]))
    write_jsonl(tmp_path / ".cache" / "old" / "trainer_log.jsonl", LF_LINES)
    assert [r.id for r in scan([tmp_path])] == ["hf:checkpoints"]  # not yet an ftui run: no recipe.yaml
    run.recipe.write_text("tuner: lora\n")
    run.set_status("running")
    assert scan([tmp_path]) == []
    assert [r.tool for r in scan([tmp_path / ".cache"])] == ["llamafactory"]  # a watched hidden dir itself is read


def test_scan_respects_max_depth(tmp_path):
    write_jsonl(tmp_path / "a" / "b" / "c" / "d" / "e" / "trainer_log.jsonl", LF_LINES)
    assert scan([tmp_path], max_depth=4) == []
    assert [r.id for r in scan([tmp_path], max_depth=5)] == ["llamafactory:e"]
    assert [r.id for r in scan([tmp_path / "a" / "b"], max_depth=3)] == ["llamafactory:e"]


def test_scan_gives_unique_ids_and_dedups_overlapping_dirs(tmp_path, monkeypatch):
    for exp in ("exp1", "exp2"):
        write_state(tmp_path / exp / "out" / "trainer_state.json", hf_state([10]))
    write_state(tmp_path / "solo" / "trainer_state.json", hf_state([10]))
    monkeypatch.chdir(tmp_path)
    runs = scan([tmp_path, Path("exp1"), Path("solo")])
    assert [r.id for r in runs] == ["hf:exp1/out", "hf:exp2/out", "hf:solo"]
    assert len({r.path for r in runs}) == 3


# --- what lists show -------------------------------------------------------------------------------------------------


def test_info_state_follows_file_age_and_progress(tmp_path):
    log = write_jsonl(tmp_path / "trainer_log.jsonl", LF_LINES)
    t = 1_700_000_000.0
    set_mtime(log, t)
    run = one_run(tmp_path)
    live = info(run, now=t + 60)
    assert (live.state, live.tool, live.step, live.total_steps) == ("running", "llamafactory", 20, 100)
    assert live.loss == 1.5  # the last train loss, not the eval loss after it
    assert live.eta_s == 86403 and live.active
    assert live.started == t - 130  # the last line was written 0:02:10 after training began
    assert info(run, now=t + 5 * 62 - 1).state == "running"  # a line every 62 s: five of them without one
    assert info(run, now=t + 5 * 62 + 1).state == "stalled"
    write_jsonl(log, [{"current_steps": 100, "total_steps": 100, "loss": 0.9}], mode="a")
    set_mtime(log, t)
    assert info(run, now=t + 3600).state == "finished"


def test_swift_run_summary_marks_the_run_finished_even_when_wider_than_the_read(tmp_path):
    log = write_jsonl(tmp_path / "logging.jsonl", SWIFT_LINES)
    run = one_run(tmp_path)
    assert info(run, now=log.stat().st_mtime + 5).state == "running"
    summary = {
        "memory": {"cuda:0": "18.00GiB"},
        "last_model_checkpoint": "/x/checkpoint-20",
        "global_step": 20,
        "log_history": [{"loss": 2.0, "step": s, "note": "x" * 200} for s in range(1000)],
    }
    write_jsonl(log, [summary], mode="a")
    assert log.stat().st_size > 100_000
    done = info(run, now=log.stat().st_mtime + 5)
    assert (done.state, done.step, done.loss) == ("finished", 20, 2.1)
    assert [r["step"] for r in records(run)] == [10, 20]  # the summary is no record


def test_hf_info_uses_global_step_and_max_steps(tmp_path):
    path = write_state(tmp_path / "out" / "checkpoint-30" / "trainer_state.json", hf_state([10, 20, 30], 30))
    run = one_run(tmp_path)
    got = info(run, now=path.stat().st_mtime + 1)
    assert (got.state, got.step, got.total_steps, got.loss) == ("finished", 30, 30, pytest.approx(2.7))
    write_state(path, hf_state([10, 20], 30))
    assert info(run, now=path.stat().st_mtime + 1).state == "running"
    assert info(run, now=path.stat().st_mtime + 3600).state == "stalled"


# --- through the RunSource -------------------------------------------------------------------------------------------


def test_dir_run_source_lists_foreign_runs_and_refuses_to_stop_them(tmp_path):
    mine = new_run_dir(tmp_path / "runs", "mine")
    mine.recipe.write_text("tuner: lora\n")
    mine.set_status("finished")
    write_jsonl(tmp_path / "saves" / "llama3" / "trainer_log.jsonl", LF_LINES)
    source = DirRunSource(tmp_path / "runs", watch=(tmp_path / "saves",))
    listed = {r.id: r.tool for r in source.runs()}
    assert listed == {mine.id: "ftui", "llamafactory:llama3": "llamafactory"}
    assert source.info("llamafactory:llama3").step == 20
    assert [r["step"] for r in source.tail("llamafactory:llama3").new_records()] == [10, 20, 20]
    with pytest.raises(RunError, match="did not launch"):
        source.stop("llamafactory:llama3")
    with pytest.raises(RunError, match="tool that started it"):
        source.resume("llamafactory:llama3")
    assert [r.id for r in DirRunSource(tmp_path / "runs").runs()] == [mine.id]


def test_dir_run_source_rescans_at_most_every_ten_seconds(tmp_path):
    write_jsonl(tmp_path / "saves" / "one" / "trainer_log.jsonl", LF_LINES)
    source = DirRunSource(tmp_path / "runs", watch=(tmp_path / "saves",))
    assert [r.id for r in source.runs()] == ["llamafactory:one"]
    write_jsonl(tmp_path / "saves" / "two" / "logging.jsonl", SWIFT_LINES)
    assert [r.id for r in source.runs()] == ["llamafactory:one"]  # the cached scan
    source._scanned_at -= 11
    assert [r.id for r in source.runs()] == ["llamafactory:one", "swift:two"]


def test_importing_foreign_pulls_in_no_heavy_module():
    heavy = ("torch", "transformers", "textual")
    code = f"import sys, runner.watch.foreign; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    repo = Path(foreign.__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# --- honest states: when a run has ended, stalled, or started --------------------------------------------------------


def hf_token_entries(steps: list[int], max_steps: int) -> list[dict]:
    """log_history entries of an HF run with include_num_input_tokens_seen: Trainer.log adds the tokens and
    speed_metrics("train", start_time, num_tokens=...), so every step's entry carries train_runtime."""
    return [
        {
            "epoch": step / max_steps,
            "grad_norm": 0.5,
            "learning_rate": 1e-4,
            "loss": 3.0 - step / 100,
            "num_input_tokens_seen": step * 1000,
            "step": step,
            "train_runtime": step * 2.0,
            "train_tokens_per_second": 500.0,
        }
        for step in steps
    ]


HF_FINAL = {  # _finalize_training: speed_metrics with samples and steps, total_flos, train_loss; Trainer.log's epoch
    "epoch": 0.4,
    "step": 40,
    "total_flos": 1.5e12,
    "train_loss": 2.7,
    "train_runtime": 81.2,
    "train_samples_per_second": 3.9,
    "train_steps_per_second": 0.49,
}


def test_hf_run_logging_num_input_tokens_is_not_finished_mid_training(tmp_path):
    state = hf_state([], 100)
    state |= {"global_step": 40, "log_history": hf_token_entries([10, 20, 30, 40], 100)}
    path = write_state(tmp_path / "out" / "checkpoint-40" / "trainer_state.json", state)
    run = one_run(tmp_path)
    got = info(run, now=path.stat().st_mtime + 1)
    assert (got.state, got.step, got.total_steps) == ("running", 40, 100)
    assert got.started == pytest.approx(path.stat().st_mtime - 80.0)  # the entry's train_runtime: 80 s in
    assert records(run)[-1]["tokens"] == 40000


def test_hf_final_metrics_mark_a_run_finished_before_its_last_step_and_are_no_record(tmp_path):
    state = hf_state([10, 20, 30, 40], 100) | {"global_step": 40}
    state["log_history"].append(HF_FINAL)  # stopped early (a callback), then trainer.save_state()
    path = write_state(tmp_path / "out" / "trainer_state.json", state)
    run = one_run(tmp_path)
    got = info(run, now=path.stat().st_mtime + 1)
    assert (got.state, got.step, got.loss) == ("finished", 40, pytest.approx(2.6))
    assert got.started == pytest.approx(path.stat().st_mtime - 81.2)
    assert [r["step"] for r in records(run)] == [10, 20, 30, 40]  # the final metrics are no step record
    assert foreign.summary(run, path.stat().st_mtime + 1)["lr"] == pytest.approx(1e-4 - 40 * 1e-7)


def test_llamafactory_line_for_the_final_metrics_marks_the_run_finished_early(tmp_path):
    end = {  # LogCallback.on_log of the final metrics: no loss, eval_loss or lr; epoch, progress and time
        "current_steps": 20,
        "total_steps": 100,
        "epoch": 0.2,
        "percentage": 20.0,
        "elapsed_time": "0:02:12",
        "remaining_time": "0:08:48",
    }
    log = write_jsonl(tmp_path / "out" / "trainer_log.jsonl", [*LF_LINES, end])
    run = one_run(tmp_path)
    done = info(run, now=log.stat().st_mtime + 1)
    assert (done.state, done.step, done.eta_s) == ("finished", 20, None)
    assert [r["step"] for r in records(run)] == [10, 20, 20]
    row = foreign.summary(run, log.stat().st_mtime + 1)
    assert (row["lr"], row["loss"], row["eval_loss"], row["tool"]) == (4.0e-05, 1.5, 1.61, "llamafactory")


def test_llamafactory_evaluation_without_a_loss_mid_run_is_no_end(tmp_path):
    progress = {"current_steps": 20, "total_steps": 100, "epoch": 0.2, "percentage": 20.0, "elapsed_time": "0:02:10"}
    later = dict(LF_LINES[1], current_steps=30, elapsed_time="0:03:06")
    log = write_jsonl(tmp_path / "trainer_log.jsonl", [*LF_LINES[:2], progress, later])
    assert info(one_run(tmp_path), now=log.stat().st_mtime + 1).state == "running"


def test_swift_final_metrics_then_summary_finish_the_run_and_keep_its_lr(tmp_path):
    final = dict(HF_FINAL, **{"global_step/max_steps": "20/200", "elapsed_time": "1m 5s"})
    final.pop("step")
    log = write_jsonl(tmp_path / "logging.jsonl", [*SWIFT_LINES, SWIFT_LINES[0] | {"global_step/max_steps": "20/200"}])
    write_jsonl(log, [final, {"last_model_checkpoint": "/x/checkpoint-20", "log_history": []}], mode="a")
    run = one_run(tmp_path)
    row = foreign.summary(run, log.stat().st_mtime + 1)
    assert (row["state"], row["step"], row["lr"], row["grad_norm"]) == ("finished", 20, 9.9e-05, 3.25)


def test_killed_swift_run_reads_stalled_after_several_of_its_intervals_not_running(tmp_path):
    lines = [
        dict(SWIFT_LINES[0], **{"global_step/max_steps": f"{s}/1000", "elapsed_time": f"{s * 3}s"})
        for s in range(10, 110, 10)
    ]  # a line every 30 s
    log = write_jsonl(tmp_path / "v0" / "logging.jsonl", lines)
    t = 1_700_000_000.0
    set_mtime(log, t)
    run = one_run(tmp_path)
    assert info(run, now=t + 149).state == "running"
    stalled = info(run, now=t + 151)
    assert (stalled.state, stalled.eta_s, stalled.active) == ("stalled", None, False)
    row = foreign.summary(run, t + 151)
    assert (row["stall_after_s"], row["idle_s"]) == (150.0, 151.0)


def test_a_stall_needs_at_least_the_floor_when_a_tool_logs_often(tmp_path):
    lines = [
        {"current_steps": s, "total_steps": 1000, "loss": 1.0, "elapsed_time": f"0:00:{s:02d}"} for s in range(1, 9)
    ]
    log = write_jsonl(tmp_path / "trainer_log.jsonl", lines)  # a line a second
    t = 1_700_000_000.0
    set_mtime(log, t)
    run = one_run(tmp_path)
    assert info(run, now=t + foreign.STALL_FLOOR_S - 1).state == "running"
    assert info(run, now=t + foreign.STALL_FLOOR_S + 1).state == "stalled"


def test_hf_checkpoint_only_run_stalls_after_several_save_intervals(tmp_path):
    t = 1_700_000_000.0
    for step in (100, 200, 300):
        path = write_state(tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json", hf_state([step], 1000))
        set_mtime(path, t + step * 6)  # a save every 600 s
    run = one_run(tmp_path)
    assert info(run, now=t + 1800 + 5 * 600 - 1).state == "running"
    assert info(run, now=t + 1800 + 5 * 600 + 1).state == "stalled"


def test_start_time_comes_from_the_records_not_the_oldest_surviving_checkpoint(tmp_path):
    t = 1_700_000_000.0
    state = hf_state([], 100) | {"global_step": 50, "log_history": hf_token_entries([10, 20, 30, 40, 50], 100)}
    for step in (40, 50):  # save_total_limit=2: checkpoint-10 .. -30 are gone
        path = write_state(tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json", state)
        set_mtime(path, t + step * 2)
        set_mtime(path.parent, t + step * 2)
    assert info(one_run(tmp_path), now=t + 101).started == t  # written 100 s after start, when train_runtime was 100


def test_start_time_without_a_runtime_is_extrapolated_from_the_checkpoints_left(tmp_path):
    t = 1_700_000_000.0
    for step in (40, 50):
        path = write_state(tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json", hf_state([step], 100))
        set_mtime(path, t + step * 2)
        set_mtime(path.parent, t + step * 2)
    assert info(one_run(tmp_path), now=t + 101).started == t  # 2 s a step: step 0 was 80 s before checkpoint-40


def test_memory_values_never_read_negative_zero(tmp_path):
    write_jsonl(tmp_path / "trainer_log.jsonl", [dict(LF_LINES[0], vram_allocated=-0.0, vram_reserved=-0.004)])
    (rec,) = records(one_run(tmp_path))
    assert rec["mem"] == {"0": {"reserved_gib": 0.0, "allocated_gib": 0.0}}
    assert all(str(v) == "0.0" for v in rec["mem"]["0"].values())


def test_ftui_run_tail_cleans_negative_zero_memory(tmp_path):
    from runner.watch.sources import DirRunTail

    run = new_run_dir(tmp_path / "runs", "mine")
    write_jsonl(run.metrics, [{"step": 1, "mem": {"0": {"allocated_gib": -0.0, "reserved_gib": 1.5}}}])
    (rec,) = DirRunTail(run).new_records()
    assert f"{rec['mem']['0']['allocated_gib']:.1f}" == "0.0" and rec["mem"]["0"]["reserved_gib"] == 1.5
