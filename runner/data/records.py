"""Data sets as files: read a .jsonl / .json / .csv / .tsv / .parquet file or a saved `datasets`
directory, find its format from the columns and turn each record into chat turns or a text.

No tokenizer and no torch: `ftui train` checks a data set with this before it launches anything,
and the training process (runner.train.data) builds its tokenized sets from the same records.

Formats (`dataset.format`, or detected from the columns):
  alpaca    instruction, output [, input, system]      one user turn and its answer
  sharegpt  conversations: [{from, value}]              from: system | human | gpt
  messages  messages: [{role, content}]                 role: system | user | assistant
  text      text                                        plain text, every token trained
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from runner.recipe.schema import AUTO, DatasetSection

if TYPE_CHECKING:
    import datasets

FORMATS = ("alpaca", "sharegpt", "messages", "text")
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
"""Columns each format needs, in detection order."""
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
SUPPORTED = ".jsonl, .json, .csv, .tsv, .parquet or a directory saved with datasets.Dataset.save_to_disk"
Turn = dict[str, str]


class DataError(ValueError):
    """A data set problem the user can fix; the message names the file (and record or line)."""


# --- loading -------------------------------------------------------------------------------


def resolve_path(value: str, base_dir: Path) -> Path:
    """A data path from the recipe: `~` expanded, relative to `base_dir` (the recipe's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_records(path: Path) -> list[dict]:
    """Every record of a .jsonl / .json / .csv / .tsv / .parquet file or a saved `datasets` directory."""
    path = Path(path)
    if path.is_dir():
        records = _load_saved(path)
    elif not path.exists():
        raise DataError(
            f"{path}: no such file or directory; check dataset.path (relative paths are relative to the recipe file)"
        )
    else:
        records = _load_file(path)
    if not records:
        raise DataError(f"{path}: the data set is empty; it needs at least one record")
    return records


def _load_file(path: Path) -> list[dict]:
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: cannot read {path.suffix or 'files without an extension'}; use {SUPPORTED}")
    try:
        return loader(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None


def _load_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                    "each line must be one JSON object"
                ) from None
            records.append(_must_be_object(record, f"{path}:{lineno}"))
    return records


def _must_be_object(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object (a record with named columns), found {type(record).__name__}")
    return record


def _load_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    data = _record_list(data, path)
    return [_must_be_object(r, f"{path}: record {i}") for i, r in enumerate(data, 1)]


def _record_list(data: Any, path: Path) -> list:
    """The list of records in a JSON document: the document itself, or the one list an object holds."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) == 1:
            return data[lists[0]]
    found = f"an object with lists {', '.join(lists)}" if isinstance(data, dict) and lists else type(data).__name__
    raise DataError(f"{path}: expected a JSON list of records or an object holding one list of records, found {found}")


def _load_csv(path: Path) -> list[dict]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as fh:
        return [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(fh, delimiter=delimiter)]


def _load_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq  # installed with `datasets`
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow; pip install pyarrow (or ftui[train])") from None
    try:
        return pq.read_table(str(path)).to_pylist()
    except Exception as err:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable parquet file ({err})") from None


def _load_saved(path: Path) -> list[dict]:
    """A directory written by `Dataset.save_to_disk` (or a DatasetDict: its `train` split)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"{path}: a directory, but not one saved with datasets save_to_disk ({err}); "
            f"point dataset.path at a data file or such a directory"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        data = _train_split(data, path)
    return data.to_list()


def _train_split(data: "datasets.DatasetDict", path: Path) -> "datasets.Dataset":
    if "train" in data:
        return data["train"]
    if len(data) == 1:
        return next(iter(data.values()))
    raise DataError(
        f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(data)}); save the training split on its own"
    )


LOADERS: dict[str, Callable[[Path], list[dict]]] = {
    ".jsonl": _load_jsonl,
    ".json": _load_json,
    ".csv": _load_csv,
    ".tsv": _load_csv,
    ".parquet": _load_parquet,
}


# --- formats -------------------------------------------------------------------------------


def _columns(records: list[dict]) -> list[str]:
    """Column names of the first 100 records, in order of appearance."""
    seen: dict[str, None] = {}
    for record in records[:100]:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _expected() -> str:
    return "; ".join(f"{fmt} ({', '.join(cols)})" for fmt, cols in REQUIRED.items())


def detect_format(records: list[dict], source: str = "data set") -> str:
    """The format whose columns the records have (messages > sharegpt > alpaca > text)."""
    columns = _columns(records)
    for fmt, required in REQUIRED.items():
        if all(c in columns for c in required):
            return fmt
    raise DataError(
        f"{source}: no known format matches the columns {', '.join(columns) or '(none)'}; "
        f"expected columns for {_expected()}. Rename the columns or set dataset.format"
    )


def check_columns(records: list[dict], fmt: str, source: str = "data set") -> None:
    """DataError naming the first record that lacks a column the format needs."""
    if fmt not in REQUIRED:
        raise DataError(f"{source}: unknown dataset.format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    for number, record in enumerate(records, 1):
        missing = [c for c in REQUIRED[fmt] if c not in record]
        if missing:
            raise DataError(
                f"{source}: record {number} has no {', '.join(missing)} column "
                f"(format {fmt} needs {', '.join(REQUIRED[fmt])}; the record has "
                f"{', '.join(record) or 'no columns'}); fix the record or set dataset.format"
            )


def resolve_format(records: list[dict], fmt: str, source: str) -> str:
    """`fmt`, or the detected format when it is auto; every record is checked for its columns."""
    fmt = detect_format(records, source) if fmt in (AUTO, "", None) else fmt
    check_columns(records, fmt, source)
    return fmt


def _text(value: Any) -> str:
    """A cell as text: None (CSV/parquet nulls) is empty; a list of content parts is joined."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in value)
    return value if isinstance(value, str) else str(value)


def _alpaca_turns(record: dict) -> list[Turn]:
    system, prompt, extra = _text(record.get("system")), _text(record["instruction"]), _text(record.get("input"))
    turns = [{"role": "system", "content": system}] if system.strip() else []
    turns.append({"role": "user", "content": f"{prompt}\n\n{extra}" if extra.strip() else prompt})
    return turns + [{"role": "assistant", "content": _text(record["output"])}]


def _turn(item: Any, where: str) -> Turn:
    """One {role, content} or {from, value} item as a {role, content} turn."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: a turn is {type(item).__name__}; expected {{role, content}} or {{from, value}}")
    role = item.get("role", item.get("from"))
    if role not in ROLE_NAMES:
        raise DataError(
            f"{where}: turn role {role!r} is unknown; use system, user or assistant (sharegpt: system, human, gpt)"
        )
    return {"role": ROLE_NAMES[role], "content": _text(item.get("content", item.get("value")))}


def _conversation(value: Any, where: str) -> list[Turn]:
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: the conversation is text, not a JSON list of turns") from None
    if not isinstance(value, list):
        raise DataError(f"{where}: the conversation must be a list of turns, found {type(value).__name__}")
    return [_turn(item, where) for item in value]


def record_turns(record: dict, fmt: str, where: str) -> list[Turn]:
    """The record as chat turns (alpaca, sharegpt, messages)."""
    if fmt == "alpaca":
        return _alpaca_turns(record)
    return _conversation(record[REQUIRED[fmt][0]], where)


def _trim(turns: list[Turn]) -> list[Turn] | None:
    """Turns up to the last answer; None when there is no answer or a turn is blank (an empty row)."""
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
    kept = turns[: last + 1]
    if last < 0 or any(not t["content"].strip() for t in kept if t["role"] != "system"):
        return None
    return kept


def prepare(record: dict, fmt: str, where: str) -> Union[str, list[Turn], None]:
    """The text (text format) or the turns of a record; None for an empty row."""
    if fmt == "text":
        text = _text(record["text"])
        return text if text.strip() else None
    return _trim(record_turns(record, fmt, where))


def eval_source(section: DatasetSection, base_dir: Path) -> Union[float, Path]:
    """The eval fraction (0.0: none), or the evaluation file's path."""
    value = section.eval_split
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value or "").strip()
    if text in ("", AUTO):
        return 0.0
    try:
        return float(text)
    except ValueError:
        return resolve_path(text, base_dir)
