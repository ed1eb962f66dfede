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

Everything is read tolerantly: unknown keys are ignored, lines that are not JSON objects are skipped, and a value
that is missing or of the wrong type becomes None. Records are translated into the keys of ftui's metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from runner.rundir.metrics import MetricsTail
from runner.rundir.runs import is_run_dir

from .info import FileLogTail, RunInfo

LOGS = (("trainer_log.jsonl", "llamafactory"), ("logging.jsonl", "swift"))
"""jsonl logs that mark a run directory, with the tool that writes each (checked before trainer_state.json, which
these tools also write)."""
STATE = "trainer_state.json"
TEXT_LOGS = ("running_log.txt", "train.log")
"""Text logs shown in the monitor when a run directory has one (LLaMA-Factory writes running_log.txt)."""
ACTIVE_S = 600.0
"""A run whose files changed this recently (and that has not reached its last step) counts as running."""

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
    return {"0": mem} if mem else {}


def translate(raw: Record, total: int | None = None) -> Record | None:
    """One tool's log entry in ftui's metrics keys; None for lines that are no step (swift's end summary).

    `total` is the total steps when the entry does not say (trainer_state.json keeps it outside log_history).
    """
    step, steps = _progress(raw)
    if step is None or "log_history" in raw:
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


def _finished_marker(raw: Record) -> bool:
    """A line written only once training is over: HF's final metrics (train_runtime) or swift's run summary."""
    return "train_runtime" in raw or "log_history" in raw


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


def _tail_objects(path: Path, chunk: int = 1 << 16, cap: int = 1 << 23) -> list[Record]:
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


# --- reading a run ---------------------------------------------------------------------------------------------------


class ForeignTail:
    """The RunTail of a foreign run: its new records in ftui's keys, and its text log if it has one."""

    def __init__(self, run: ForeignRun) -> None:
        self.run = run
        self.metrics = MetricsTail(run.file)
        self.state_key: tuple[Path, int, int] | None = None
        self.last_step = -1
        self.log: FileLogTail | None = None

    def new_records(self) -> list[Record]:
        return self._new_state_records() if self.run.tool == "hf" else self._new_jsonl_records()

    def _new_jsonl_records(self) -> list[Record]:
        """Lines appended since the last call (from a byte offset; a half-written line waits for its newline)."""
        try:
            if self.run.file.stat().st_size < self.metrics.offset:  # rewritten from scratch: start over
                self.metrics = MetricsTail(self.run.file)
        except OSError:
            return []
        return [r for r in map(translate, self.metrics.read()) if r is not None]

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
            found = next((self.run.path / n for n in TEXT_LOGS if (self.run.path / n).is_file()), None)
            self.log = FileLogTail(found) if found else None
        return self.log.read() if self.log else []


def records(run: ForeignRun) -> list[Record]:
    """Every record of a run so far, in ftui's metrics keys."""
    return ForeignTail(run).new_records()


def _recent(run: ForeignRun) -> tuple[list[Record], bool]:
    """The run's latest records (only the end of a jsonl file is read) and whether training has ended."""
    if run.tool != "hf":
        raws = _tail_objects(run.file)
        return [r for r in map(translate, raws) if r is not None], any(map(_finished_marker, raws))
    state = _load_state(current_file(run)) or {}
    now = translate({"step": state.get("global_step"), "total_steps": state.get("max_steps")})
    history = state.get("log_history") if isinstance(state.get("log_history"), list) else []
    ended = any(_finished_marker(e) for e in history[-1:] if isinstance(e, dict))
    return _state_records(state) + ([now] if now else []), ended


def _started(run: ForeignRun) -> float | None:
    """The earliest modification time among the run directory's entries: about when the tool began writing it."""
    try:
        times = [e.stat().st_mtime for e in os.scandir(run.path)]
    except OSError:
        times = []
    return min([t for t in times + [_mtime(run.file)] if t > 0], default=None)


def _last_write(run: ForeignRun) -> float:
    """When the run last wrote its metrics file or text log."""
    return max(_mtime(p) for p in (current_file(run),) + tuple(run.path / n for n in TEXT_LOGS))


def _state(step: int | None, total: int | None, ended: bool, idle_s: float) -> str:
    """finished (last step reached, or an end-of-training line), running (written recently) or stale."""
    if ended or (step is not None and total and step >= total):
        return "finished"
    return "running" if idle_s < ACTIVE_S else "stale"


def info(run: ForeignRun, now: float) -> RunInfo:
    """The run as lists and headers show it; `now` is the wall clock its file times are compared with."""
    recent, ended = _recent(run)
    last = recent[-1] if recent else {}
    step, total = last.get("step"), last.get("total_steps")
    loss = next((r["loss"] for r in reversed(recent) if r["loss"] is not None), None)
    state = _state(step, total, ended, now - _last_write(run))
    return RunInfo(run.id, run.path, state, run.tool, step, total, loss, last.get("eta_s"), _started(run))


# --- finding runs ----------------------------------------------------------------------------------------------------


def detect(path: Path) -> tuple[str, Path] | None:
    """(tool, metrics file) when `path` is a foreign run's output directory."""
    for name, tool in LOGS:
        if (path / name).is_file():
            return tool, path / name
    state = state_file(path)
    return ("hf", state) if state else None


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
