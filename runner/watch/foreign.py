"""Training runs that ftui did not launch, read from the files their tools write as they train.

Three formats are understood, each found by its file name in the run's output directory:

    trainer_log.jsonl   LLaMA-Factory's LogCallback (src/llamafactory/train/callbacks.py): one line per log step
                        with current_steps, total_steps, loss, eval_loss, lr, epoch, percentage, elapsed_time and
                        remaining_time ("0:01:02", str of a timedelta), throughput and total_tokens when tokens are
                        counted, vram_allocated / vram_reserved (GiB) with RECORD_VRAM=1.
    logging.jsonl       ms-swift's ProgressCallbackNew / PrinterCallbackNew (swift/trainers/patcher.py, formerly
                        callback.py): the Trainer's logs (loss, grad_norm, learning_rate, epoch, eval_loss, ...) plus
                        global_step/max_steps ("10/1000"), elapsed_time / remaining_time ("1h 3m 4s", swift's
                        format_time), memory(GiB), train_speed(iter/s) or (s/it); after training a summary line
                        holding the whole log_history.
    trainer_state.json  the HF Trainer's TrainerState (transformers/trainer_callback.py): global_step, max_steps and
                        log_history, a list of the logs (loss, grad_norm, learning_rate, epoch, step; eval_loss ...),
                        written into each checkpoint-N/ and, by `trainer.save_state()`, into the output directory.
    events.out.tfevents.*  the HF Trainer's TensorBoardCallback (in output_dir/runs/<date>_<host>/ by default): the same
                        logs as scalars tagged train/<key> and eval/<key>, flushed at every log; between checkpoints it
                        is the only file of an HF run that grows (runner.watch.tfevents reads it).

What each tool writes when training ends (the end marker; a run is finished on it, or on reaching its last step):
HF's final metrics (train_runtime, train_samples_per_second, train_steps_per_second, total_flos, train_loss; every
per-step log carries train_runtime too once input tokens are counted, so only total_flos / train_loss mark the end),
which ms-swift appends to logging.jsonl before its run summary (a line holding log_history), and which LLaMA-Factory
turns into a last line with the progress keys and epoch but no loss, eval_loss or lr.

Everything is read tolerantly: unknown keys are ignored, lines that are not JSON objects are skipped, and a value
that is missing or of the wrong type becomes None. Records are translated into the keys of ftui's metrics.jsonl.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from runner.rundir.metrics import MetricsTail
from runner.rundir.runs import is_run_dir

from .info import FileLogTail, RunInfo, clean_mem
from .tfevents import Event, EventFile, event_files

LOGS = (("trainer_log.jsonl", "llamafactory"), ("logging.jsonl", "swift"))
"""jsonl logs that mark a run directory, with the tool that writes each (checked before trainer_state.json, which
these tools also write)."""
STATE = "trainer_state.json"
TEXT_LOGS = ("running_log.txt", "train.log")
"""Text logs shown in the monitor when a run directory has one (LLaMA-Factory writes running_log.txt)."""
STALL_INTERVALS = 5
STALL_FLOOR_S = 120.0
"""A run whose files have not changed for STALL_INTERVALS of its tool's own intervals between records (and at least
STALL_FLOOR_S) is stalled: killed, hung, or in a long evaluation or save. None of the three tools writes a time of day,
so the file's modification time is the clock and the elapsed times (or event times) between records the cadence."""
UNKNOWN_CADENCE_S = 600.0
"""The stall limit while a run's cadence is unknown (one record or none yet, or a single HF checkpoint)."""

Record = dict[str, Any]


@dataclass(frozen=True)
class ForeignRun:
    """A run found on disk: `file` is its metrics file (for hf, the trainer_state.json found by the scan)."""

    id: str
    path: Path
    tool: str
    file: Path


# --- values ----------------------------------------------------------------------------------------------------------

_CLOCK = re.compile(r"(?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)")
_UNITS = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from a number, "H:MM:SS" / "N days, H:MM:SS" (LLaMA-Factory) or "1d 2h 3m 4s" (ms-swift)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    clock = _CLOCK.fullmatch(text)
    if clock:
        days, hours, minutes, seconds = clock.groups()
        return int(days or 0) * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)
    if text and re.fullmatch(rf"(?:\s*{_UNITS.pattern})+", text):
        return sum(float(n) * _UNIT_S[unit] for n, unit in _UNITS.findall(text))
    return None


def _num(value: Any) -> float | None:
    """A float from a JSON number; anything else is None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    """An int from an integral JSON number or a string of digits; anything else is None."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    number = _num(value)
    return int(number) if number is not None and number.is_integer() else None


def _first(raw: Record, *keys: str) -> Any:
    """The value of the first of `keys` that `raw` has (not None)."""
    return next((raw[k] for k in keys if raw.get(k) is not None), None)


def _progress(raw: Record) -> tuple[int | None, int | None]:
    """(step, total steps): swift's "10/1000", LLaMA-Factory's current_steps/total_steps or the HF step."""
    pair = raw.get("global_step/max_steps")
    if isinstance(pair, str) and "/" in pair:
        step, _, total = pair.partition("/")
        return _int(step), _int(total)
    return _int(_first(raw, "current_steps", "step", "global_step")), _int(raw.get("total_steps"))


def _memory(raw: Record) -> dict[str, dict[str, float]]:
    """Peak memory as ftui's {rank: {reserved_gib, allocated_gib}}, from what the tool reports for rank 0.

    ms-swift's memory(GiB) is the max reserved memory of rank 0 as swift reports it: torch's max_memory_reserved of
    the process that writes the log (world rank 0), kept as a running maximum, and summed over the GPUs that process
    drives when one process spans several (device_map). LLaMA-Factory's vram_reserved / vram_allocated are torch's
    max_memory_reserved / max_memory_allocated of rank 0's current device (extras/misc.py get_peak_memory).
    """
    reserved = _num(_first(raw, "memory(GiB)", "vram_reserved"))
    allocated = _num(raw.get("vram_allocated"))
    mem = {"reserved_gib": reserved, "allocated_gib": allocated}
    mem = {k: v for k, v in mem.items() if v is not None}
    return clean_mem({"0": mem}) if mem else {}


def translate(raw: Record, total: int | None = None) -> Record | None:
    """One tool's log entry in ftui's metrics keys; None for lines that are no step (the end-of-training lines).

    `total` is the total steps when the entry does not say (trainer_state.json keeps it outside log_history).
    """
    step, steps = _progress(raw)
    if step is None or end_of_training(raw):
        return None
    return {
        "step": step,
        "total_steps": steps if steps is not None else total,
        "epoch": _num(raw.get("epoch")),
        "loss": _num(raw.get("loss")),
        "eval_loss": _num(raw.get("eval_loss")),
        "lr": _num(_first(raw, "lr", "learning_rate")),
        "grad_norm": _num(raw.get("grad_norm")),
        "tokens": _int(_first(raw, "total_tokens", "num_input_tokens_seen")),
        "tokens_per_s": _num(_first(raw, "throughput", "train_tokens_per_second")),
        "samples_per_s": None,
        "elapsed_s": parse_duration(raw.get("elapsed_time")),
        "eta_s": parse_duration(raw.get("remaining_time")),
        "mem": _memory(raw),
        "time": _num(raw.get("time")),
    }


LF_VALUES = ("loss", "eval_loss", "predict_loss", "accuracy", "lr")
"""What a LLaMA-Factory line carries besides its progress keys, except the one written after the final metrics."""


def end_of_training(raw: Record) -> bool:
    """A line written once training is over: HF's final metrics (total_flos, train_loss; not train_runtime, which
    per-step logs carry when tokens are counted), swift's run summary, or LLaMA-Factory's line for the final metrics
    (progress and epoch, no value; its evaluation-progress lines have no epoch)."""
    if "log_history" in raw or "total_flos" in raw or "train_loss" in raw:
        return True
    return "current_steps" in raw and "epoch" in raw and not any(k in raw for k in LF_VALUES)


def _ended(raws: list[Record]) -> tuple[bool, int | None]:
    """(training ended, the step it ended at) from a run's latest entries, oldest first: an end marker with no
    training step logged after it (a run resumed in the same directory logs loss again)."""
    ended, step = False, None
    for raw in raws:
        if end_of_training(raw):
            ended, step = True, _progress(raw)[0]
            step = step if step is not None else _int(raw.get("global_step"))
        elif raw.get("loss") is not None:
            ended, step = False, None
    return ended, step


# --- files -----------------------------------------------------------------------------------------------------------


def _mtime(path: Path) -> float:
    """The file's modification time; 0 when it does not exist."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _checkpoint_step(state: Path) -> int:
    """N of checkpoint-N/trainer_state.json (-1 when N is not a number)."""
    suffix = state.parent.name.partition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def state_file(path: Path) -> Path | None:
    """The trainer_state.json of an HF run directory: its own unless older than the newest checkpoint's (by step)."""
    checkpoints = sorted(path.glob(f"checkpoint-*/{STATE}"), key=_checkpoint_step)
    newest = checkpoints[-1] if checkpoints and _checkpoint_step(checkpoints[-1]) >= 0 else None
    own = path / STATE
    if own.is_file() and (newest is None or _mtime(own) >= _mtime(newest)):
        return own
    return newest


def current_file(run: ForeignRun) -> Path:
    """The run's metrics file now (an HF run's newest trainer_state.json moves to each new checkpoint)."""
    return (state_file(run.path) or run.file) if run.tool == "hf" else run.file


_STATES: dict[Path, tuple[tuple[int, int], Record]] = {}
"""Parsed trainer_state.json files by path, with the (mtime, size) they were read at: lists poll often."""


def _load_state(path: Path) -> Record | None:
    """A trainer_state.json, or None while it is missing or half-written (the Trainer does not write it atomically)."""
    try:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        if path in _STATES and _STATES[path][0] == key:
            return _STATES[path][1]
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if len(_STATES) > 64:
        _STATES.clear()
    _STATES[path] = (key, data)
    return data


def _state_records(state: Record) -> list[Record]:
    """Every log_history entry of a trainer_state.json, translated."""
    history = state.get("log_history")
    total = _int(state.get("max_steps"))
    entries = history if isinstance(history, list) else []
    return [r for r in (translate(e, total) for e in entries if isinstance(e, dict)) if r is not None]


def _json_lines(lines: Iterable[bytes]) -> list[Record]:
    """The lines that are JSON objects (partial or malformed lines are skipped)."""
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def tail_objects(path: Path, chunk: int = 1 << 16, cap: int = 1 << 23) -> list[Record]:
    """The JSON objects on the last lines of a jsonl file, reading only its end.

    The read widens (up to `cap` bytes) while no complete line fits, as with swift's one-line run summary.
    """
    while True:
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - chunk))
                lines = fh.read().split(b"\n")
        except OSError:
            return []
        found = _json_lines(lines if size <= chunk else lines[1:])  # the first line may be cut
        if found or size <= chunk or chunk >= cap:
            return found
        chunk = min(chunk * 8, cap)


# --- HF's TensorBoard events ----------------------------------------------------------------------------------------


def _untag(tag: str) -> str:
    """An HF TensorBoard tag back to its log key: train/loss -> loss, eval/loss -> eval_loss, test/x -> test_x."""
    head, _, key = tag.partition("/")
    if not key:
        return tag
    return key if head == "train" else f"{head}_{key}"


_SUMMARY_ONLY = frozenset({"train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"})
"""Keys of HF's final metrics that no per-step log has (its first key, train_runtime, is also a per-step one)."""


def _is_eval(key: str) -> bool:
    return key.startswith(("eval_", "test_"))


def _next_log(group: Record, keys: Record) -> bool:
    """Whether scalars at a group's step begin the next log call: a key the group has, an evaluation's keys after
    a training log's (an evaluation logs its eval/ keys first, then its epoch), or the final metrics after a log."""
    if set(keys) & set(group):
        return True
    if any(map(_is_eval, keys)) and not all(map(_is_eval, group)):
        return True
    return bool(set(keys) & _SUMMARY_ONLY) and not set(group) <= _SUMMARY_ONLY | {"train_runtime"}


@dataclass
class _Group:
    """The scalars of one HF log call (one step, tags not repeated), as a log entry."""

    path: Path
    step: int
    wall: float
    raw: Record = field(default_factory=dict)


class EventRecords:
    """An HF run's records from its TensorBoard event files, read incrementally (older files first).

    A resumed run writes a new file that starts again from its checkpoint's step: its records up to the highest
    step of the older files are skipped, as the trainer_state.json tail skips steps it has returned. Total steps
    come from trainer_state.json once a checkpoint has one, before that from the `args` text the callback writes
    (max_steps, or num_train_epochs with the steps per epoch that step / epoch gives).
    """

    def __init__(self, path: Path, keep: int = 64) -> None:
        self.path = path
        self.files: dict[Path, EventFile] = {}
        self.floor: dict[Path, int] = {}
        self.session: dict[Path, tuple[float, tuple[int, float] | None]] = {}
        """Per file: when its writer opened (its first event), and the (step, time) its pace is counted from: step 0
        at that time for a fresh run, a resumed session's first record (None until it comes)."""
        self.args: Record = {}
        self.started: float | None = None
        self.ended: tuple[bool, int | None] = (False, None)
        self.pending: _Group | None = None
        self.last_step = -1
        self.recent: deque[Record] = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.state_total: int | None = None
        self.total_estimated = False
        """The latest total came from the epochs (no max_steps known yet)."""

    def read(self) -> list[Record]:
        """Records of the events appended since the last read."""
        with self.lock:
            state = state_file(self.path)
            self.state_total = _int((_load_state(state) or {}).get("max_steps")) if state else None
            self.total_estimated = False if self.state_total else self.total_estimated
            out: list[Record] = []
            for path in event_files(self.path):
                if path not in self.files:
                    self.files[path], self.floor[path] = EventFile(path), self.last_step
                for event in self.files[path].read():
                    out += self._absorb(path, event)
                out += self._flush()  # a log's events are written together: the last group is whole
            self.recent.extend(out)
            return out

    def _absorb(self, path: Path, event: Event) -> list[Record]:
        if path not in self.session:  # its first event: the writer was opened when training began
            self.started = event.wall_time if self.started is None else self.started
            fresh = self.floor[path] < 0
            self.session[path] = (event.wall_time, (0, event.wall_time) if fresh else None)
        for tag, text in event.texts.items():
            if tag.startswith("args"):
                self._read_args(text)
        if not event.scalars:
            return []
        keys = {_untag(tag): value for tag, value in event.scalars.items()}
        group, out = self.pending, []
        if group is None or (group.path, group.step) != (path, event.step) or _next_log(group.raw, keys):
            out = self._flush()
            self.pending = group = _Group(path, event.step, event.wall_time)
        group.raw.update(keys)
        group.wall = event.wall_time
        return out

    def _read_args(self, text: str) -> None:
        try:
            args = json.loads(text)
        except ValueError:
            return
        if isinstance(args, dict):
            self.args = args

    def _flush(self) -> list[Record]:
        """The pending group as a record; [] when there is none, it ends training, or it repeats older steps."""
        group, self.pending = self.pending, None
        if group is None:
            return []
        raw = {**group.raw, "step": group.step}
        if end_of_training(raw) or raw.get("loss") is not None:
            self.ended = _ended([raw])
        began, anchor = self.session[group.path]
        if anchor is None:  # a resumed session's pace counts from its first record
            anchor = (group.step, group.wall)
            self.session[group.path] = (began, anchor)
        if end_of_training(raw) or group.step <= self.floor[group.path]:
            return []
        raw["elapsed_time"] = group.wall - began
        record = translate(raw, self.total(group.step, _num(raw.get("epoch"))))
        if record is None:
            return []
        record["time"] = group.wall
        record["eta_s"] = _eta(record, *anchor)
        self.last_step = max(self.last_step, group.step)
        return [record]

    def total(self, step: int, epoch: float | None) -> int | None:
        """Total steps: trainer_state.json's max_steps, else the args' max_steps, else epochs x steps per epoch."""
        self.total_estimated = False
        if self.state_total:
            return self.state_total
        max_steps, epochs = _int(self.args.get("max_steps")), _num(self.args.get("num_train_epochs"))
        if max_steps and max_steps > 0:
            return max_steps
        if epochs and epoch and epoch > 0:
            self.total_estimated = True
            return max(step, round(step / epoch * epochs))
        return None


def _eta(record: Record, since_step: int, since_time: float) -> float | None:
    """Seconds left at the pace since (since_step, since_time)."""
    total, step = record["total_steps"], record["step"]
    if not total or step <= since_step or record["time"] <= since_time:
        return None
    return max(0.0, (total - step) * (record["time"] - since_time) / (step - since_step))


# --- reading a run ---------------------------------------------------------------------------------------------------


def _timed(records: list[Record], written: float) -> list[Record]:
    """jsonl records with the `time` none of these tools writes: the file's modification time for the last one
    with an elapsed time, and each earlier one that much before it as their elapsed times differ."""
    last = next((r["elapsed_s"] for r in reversed(records) if r["elapsed_s"] is not None), None)
    if last is None or not written:
        return records
    for r in records:
        if r["time"] is None and r["elapsed_s"] is not None and r["elapsed_s"] <= last:
            r["time"] = written - (last - r["elapsed_s"])
    return records


class ForeignTail:
    """The RunTail of a foreign run: its new records in ftui's keys, and its text log if it has one."""

    def __init__(self, run: ForeignRun) -> None:
        self.run = run
        self.metrics = MetricsTail(run.file)
        self.state_key: tuple[Path, int, int] | None = None
        self.last_step = -1
        self.log: FileLogTail | None = None
        self.events = EventRecords(run.path) if run.tool == "hf" and event_files(run.path) else None

    def new_records(self) -> list[Record]:
        if self.events is not None:
            return self.events.read()
        return self._new_state_records() if self.run.tool == "hf" else self._new_jsonl_records()

    def _new_jsonl_records(self) -> list[Record]:
        """Lines appended since the last call (from a byte offset; a half-written line waits for its newline)."""
        try:
            if self.run.file.stat().st_size < self.metrics.offset:  # rewritten from scratch: start over
                self.metrics = MetricsTail(self.run.file)
        except OSError:
            return []
        written = _mtime(self.run.file)
        return _timed([r for r in map(translate, self.metrics.read()) if r is not None], written)

    def _new_state_records(self) -> list[Record]:
        """log_history entries past the last step returned, re-reading trainer_state.json only when it changed."""
        path = current_file(self.run)
        try:
            st = path.stat()
        except OSError:
            return []
        key = (path, st.st_mtime_ns, st.st_size)
        state = _load_state(path) if key != self.state_key else None
        if state is None:
            return []
        self.state_key = key
        new = [r for r in _state_records(state) if r["step"] > self.last_step]
        self.last_step = max([self.last_step] + [r["step"] for r in new])
        return new

    def new_log_lines(self) -> list[str]:
        """New lines of the run's running_log.txt or train.log; [] when it has neither (nothing else is known)."""
        if self.log is None:
            found = text_log(self.run)
            self.log = FileLogTail(found) if found else None
        return self.log.read() if self.log else []


def text_log(run: ForeignRun) -> Path | None:
    """The run's text log (LLaMA-Factory's running_log.txt, or a train.log), when it has one."""
    return next((run.path / n for n in TEXT_LOGS if (run.path / n).is_file()), None)


def records(run: ForeignRun) -> list[Record]:
    """Every record of a run so far, in ftui's metrics keys."""
    return ForeignTail(run).new_records()


@dataclass(frozen=True)
class View:
    """What a run's files say now: its latest records (oldest first) and what lists need besides."""

    records: list[Record]
    ended: bool
    end_step: int | None
    started: float | None
    last_write: float
    cadence_s: float | None
    """The tool's usual time between writes of the file `last_write` is read from; None while unknown."""
    total_estimated: bool = False
    """The total steps are a guess (an HF run's epochs x steps per epoch): reaching them does not finish the run."""


def _cadence(points: Iterable[tuple[int, float | None]]) -> float | None:
    """The median time between records of successive steps ((step, time) pairs, oldest first; a step is timed by
    its first record: an evaluation logged at the same step is part of that interval)."""
    firsts: dict[int, float] = {}
    for step, when in points:
        if when is not None:
            firsts.setdefault(step, when)
    times = [firsts[s] for s in sorted(firsts)][-11:]
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return statistics.median(gaps) if gaps else None


def _text_logs_written(run: ForeignRun) -> float:
    return max([_mtime(run.path / n) for n in TEXT_LOGS], default=0.0)


def _jsonl_view(run: ForeignRun) -> View:
    raws = tail_objects(run.file)
    written = _mtime(run.file)
    recent = _timed([r for r in map(translate, raws) if r is not None], written)
    ended, end_step = _ended(raws)
    elapsed = [(r["step"], r["elapsed_s"]) for r in recent]
    cadence = _cadence(elapsed)
    if cadence is None and len(elapsed) == 1 and elapsed[0][1]:  # one record: the time from the start to it
        cadence = elapsed[0][1]
    last = next((r for r in reversed(recent) if r["time"] is not None), None)
    started = last["time"] - last["elapsed_s"] if last else _first_write(run)
    return View(recent, ended, end_step, started, max(written, _text_logs_written(run)), cadence)


_EVENTS: dict[Path, EventRecords] = {}
"""The event-file readers of HF runs that lists ask about, by run directory: each poll reads only what was added."""


def _events_view(run: ForeignRun) -> View:
    reader = _EVENTS.get(run.path)
    if reader is None:
        if len(_EVENTS) > 64:
            _EVENTS.clear()
        reader = _EVENTS[run.path] = EventRecords(run.path)
    reader.read()
    recent = list(reader.recent)
    written = max([_mtime(p) for p in event_files(run.path)] + [_mtime(current_file(run))])
    cadence = _cadence((r["step"], r["time"]) for r in recent)
    if cadence is None and recent and reader.started is not None:
        cadence = recent[0]["time"] - reader.started or None
    ended, end_step = reader.ended
    written = max(written, _text_logs_written(run))
    return View(recent, ended, end_step, reader.started, written, cadence, reader.total_estimated)


def _state_view(run: ForeignRun) -> View:
    path = current_file(run)
    state = _load_state(path) or {}
    now = translate({"step": state.get("global_step"), "total_steps": state.get("max_steps")})
    history = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
    ended, end_step = _ended(history[-4:])
    saves = sorted(run.path.glob(f"checkpoint-*/{STATE}"), key=_checkpoint_step)
    cadence = _cadence((_checkpoint_step(p), _mtime(p)) for p in saves if _checkpoint_step(p) >= 0)
    runtime = next((_num(e.get("train_runtime")) for e in reversed(history) if "train_runtime" in e), None)
    started = _mtime(path) - runtime if runtime else _extrapolated_start(saves) or _first_write(run)
    recent = _state_records(state) + ([now] if now else [])
    return View(recent, ended, end_step, started, max(_mtime(path), _text_logs_written(run)), cadence)


def view(run: ForeignRun) -> View:
    """The run's latest records and times (only the end of a jsonl file is read; event files incrementally)."""
    if run.tool != "hf":
        return _jsonl_view(run)
    return _events_view(run) if event_files(run.path) else _state_view(run)


def _extrapolated_start(saves: list[Path]) -> float | None:
    """When step 0 was, at the pace between the oldest and newest checkpoints left (older ones may be deleted)."""
    points = [(_checkpoint_step(p), _mtime(p)) for p in saves if _checkpoint_step(p) > 0 and _mtime(p)]
    if len(points) < 2 or points[-1][0] <= points[0][0] or points[-1][1] <= points[0][1]:
        return None
    (s0, t0), (s1, t1) = points[0], points[-1]
    return t0 - s0 * (t1 - t0) / (s1 - s0)


def _first_write(run: ForeignRun) -> float | None:
    """The earliest modification time among the run directory's entries (when no record tells the start)."""
    try:
        times = [e.stat().st_mtime for e in os.scandir(run.path)]
    except OSError:
        times = []
    return min([t for t in times + [_mtime(run.file)] if t > 0], default=None)


def stall_after(cadence_s: float | None) -> float:
    """Seconds without a write after which a run is stalled: several of its own intervals, never under the floor."""
    if cadence_s is None:
        return UNKNOWN_CADENCE_S
    return max(STALL_FLOOR_S, STALL_INTERVALS * cadence_s)


def judge(
    step: int | None, total: int | None, ended: bool, idle_s: float, cadence_s: float | None, guessed: bool = False
) -> str:
    """finished (an end-of-training line, or the last step reached; not a `guessed` total), running (written within
    its stall limit) or stalled (not written for several of its intervals: killed, hung, or in a long evaluation or
    save)."""
    if ended or (step is not None and total and step >= total and not guessed):
        return "finished"
    return "running" if idle_s < stall_after(cadence_s) else "stalled"


def latest(records: Iterable[Record], key: str) -> Any:
    """The newest value of `key` among `records` (a finished run's last record, its summary, has no lr)."""
    return next((r[key] for r in reversed(list(records)) if r.get(key) is not None), None)


def info(run: ForeignRun, now: float) -> RunInfo:
    """The run as lists and headers show it; `now` is the wall clock its file times are compared with."""
    return _info(run, view(run), now)


def _info(run: ForeignRun, seen: View, now: float) -> RunInfo:
    last = seen.records[-1] if seen.records else {}
    step, total = last.get("step"), last.get("total_steps")
    if seen.end_step is not None and (step is None or seen.end_step > step):
        step = seen.end_step
    state = judge(step, total, seen.ended, now - seen.last_write, seen.cadence_s, seen.total_estimated)
    eta = last.get("eta_s") if state == "running" else None
    loss = latest(seen.records, "loss")
    return RunInfo(run.id, run.path, state, run.tool, step, total, loss, eta, seen.started)


def summary(run: ForeignRun, now: float) -> dict[str, Any]:
    """The run as `ftui runs --json` lists it (the keys of ftui's own runs, with `tool`)."""
    seen = view(run)
    got = _info(run, seen, now)
    values = {k: latest(seen.records, k) for k in ("eval_loss", "lr", "grad_norm", "tokens_per_s")}
    return {
        "id": got.id,
        "tool": got.tool,
        "path": str(got.path),
        "state": got.state,
        "step": got.step,
        "total_steps": got.total_steps,
        "loss": got.loss,
        **values,
        "eta_s": got.eta_s,
        "started": got.started,
        "idle_s": round(max(0.0, now - seen.last_write), 1),
        "stall_after_s": round(stall_after(seen.cadence_s), 1),
    }


# --- finding runs ----------------------------------------------------------------------------------------------------


def detect(path: Path) -> tuple[str, Path] | None:
    """(tool, metrics file) when `path` is a foreign run's output directory."""
    for name, tool in LOGS:
        if (path / name).is_file():
            return tool, path / name
    state = state_file(path)
    if state:
        return "hf", state
    events = event_files(path)  # an HF run before its first checkpoint
    return ("hf", events[-1]) if events else None


def _subdirs(path: Path) -> list[Path]:
    """Subdirectories to look into: not hidden, not symlinks (no loops)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))


def _walk(path: Path, depth: int, found: dict[Path, tuple[str, Path]]) -> None:
    """Collect runs at `path` and up to `depth` levels below; a run's own subdirectories are not searched."""
    if is_run_dir(path):
        return  # ftui's own run (its checkpoints hold trainer_state.json too)
    kind = detect(path)
    if kind:
        found[path] = kind
    elif depth > 0:
        for child in _subdirs(path):
            _walk(child, depth - 1, found)


def _with_ids(found: dict[Path, tuple[str, Path]]) -> list[ForeignRun]:
    """ForeignRuns with ids "<tool>:<dir name>", lengthened with parent names ("hf:exp1/out") until unique."""
    paths = sorted(found)
    depth = dict.fromkeys(paths, 1)
    while True:
        ids = {p: f"{found[p][0]}:{'/'.join(p.parts[-depth[p] :])}" for p in paths}
        counts = Counter(ids.values())
        clashing = [p for p in paths if counts[ids[p]] > 1 and depth[p] < len(p.parts)]
        if not clashing:
            return [ForeignRun(ids[p], p, *found[p]) for p in paths]
        for p in clashing:
            depth[p] += 1


def scan(dirs: Iterable[Path], max_depth: int = 4) -> list[ForeignRun]:
    """Foreign runs in `dirs` and up to `max_depth` levels below them (hidden directories and ftui runs skipped)."""
    found: dict[Path, tuple[str, Path]] = {}
    for root in dirs:
        _walk(Path(root).expanduser().resolve(), max_depth, found)  # below it no symlink is followed
    return _with_ids(found)
