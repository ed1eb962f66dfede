"""The training data pipeline: read a data set file, convert its records to chat turns, tokenize
with loss on the answers only, handle overlong samples, pack, split off an evaluation set.

Used only by the training process (and `check_dataset` by `ftui train --dry-run`). `datasets`,
`transformers` and `torch` are imported inside the functions that need them.

Formats (`dataset.format`, or detected from the columns):
  alpaca    instruction, output [, input, system]      one user turn and its answer
  sharegpt  conversations: [{from, value}]              from: system | human | gpt
  messages  messages: [{role, content}]                 role: system | user | assistant
  text      text                                        plain text, every token trained

Label masking renders the conversation with the tokenizer's chat template, finds the characters of
each assistant answer (the text the template adds between the prompt with its generation marker and
the conversation through that answer, end-of-turn token included, up to where a following user turn
would begin) and trains exactly the tokens that cover those characters, using the tokenizer's
offsets (templates whose partial renderings are not prefixes of the whole fall back to finding the
answer text). Every assistant turn of a multi-turn
conversation is trained; system and user turns and the template's markers are not.
"""

from __future__ import annotations

import csv
import json
import random
from itertools import pairwise
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from planner.dataset_stats import estimate_tokens
from runner.recipe import AUTO, DatasetSection

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100
"""Label of a token that is not trained (HF / PyTorch cross-entropy ignore index)."""
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
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Assistant:\\n' + message['content'] + (eos_token or '') + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)
"""Installed on tokenizers that have no chat template (base models), so the saved tokenizer
generates with the format the model was trained on."""

Turn = dict[str, str]
Span = tuple[int, int]
Encoded = tuple[list[int], list[int]]
"""(input_ids, labels)"""
PROBE_TURN: Turn = {"role": "user", "content": "?"}
"""Appended after an answer to see where the template ends the assistant turn."""


class DataError(ValueError):
    """A data set problem the user can fix; the message names the file (and record or line)."""


@dataclass
class DataStats:
    """What `build_datasets` did to the records, for the log and the run summary."""

    samples: int = 0
    """Records read: the training file, plus the evaluation file when eval_split is a path."""
    kept: int = 0
    """Training samples after skipping empty and dropped ones (before packing)."""
    empty: int = 0
    """Records without text or with an empty answer (skipped)."""
    truncated: int = 0
    """Samples longer than max_seq_len that were cut to it (overlong: truncate)."""
    dropped: int = 0
    """Samples longer than max_seq_len left out (overlong: drop, or no answer token left after the cut)."""
    train_tokens: int = 0
    """Tokens in the training set (padding excluded)."""
    eval_samples: int = 0
    format: str = ""

    def summary(self) -> str:
        """One line for the training log."""
        return (
            f"{self.samples} records ({self.format}): {self.kept} training samples, {self.eval_samples} eval; "
            f"{self.empty} empty skipped, {self.truncated} truncated, {self.dropped} dropped; "
            f"{self.train_tokens} training tokens"
        )


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


# --- tokenizing with answer-only labels ----------------------------------------------------


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the plain fallback one; True when it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def _render(tokenizer: Any, turns: list[Turn], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # jinja raises TemplateError (or anything the template calls) on a bad conversation
        roles = ", ".join(t["role"] for t in turns)
        raise DataError(f"the tokenizer's chat template rejected a conversation with roles [{roles}]: {err}") from None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _answer_span(tokenizer: Any, turns: list[Turn], i: int, full: str) -> Span | None:
    """Characters of answer `i` in `full`: what the template adds after the generation prompt, up to
    where a following user turn would start (so text a template adds only at the very end is not trained)."""
    before = _render(tokenizer, turns[:i], True)
    through = _render(tokenizer, turns[: i + 1], False)
    end = _common_prefix(through, _render(tokenizer, [*turns[: i + 1], PROBE_TURN], False))
    if end <= len(before) or not (through.startswith(before) and full.startswith(through[:end])):
        return None
    answer = through[len(before) : end].rstrip()  # the end-of-turn token is trained; the newline after it is not
    return len(before), len(before) + len(answer)


def _search_span(tokenizer: Any, full: str, content: str, start: int, where: str) -> Span:
    """Fallback for templates whose prefixes differ from the full render: find the answer text."""
    at = full.find(content, start)
    if at < 0:
        raise DataError(f"{where}: cannot find an assistant answer in the chat template's output")
    end = at + len(content)
    eos = getattr(tokenizer, "eos_token", None) or ""
    return at, end + len(eos) if eos and full.startswith(eos, end) else end


def render_with_spans(turns: list[Turn], tokenizer: Any, where: str = "record") -> tuple[str, list[Span]]:
    """The rendered conversation and the character span of every assistant answer in it."""
    full = _render(tokenizer, turns, False)
    spans: list[Span] = []
    for i, turn in enumerate(turns):
        if turn["role"] == "assistant":
            start = spans[-1][1] if spans else 0
            span = _answer_span(tokenizer, turns, i, full)
            spans.append(span or _search_span(tokenizer, full, turn["content"], start, where))
    return full, spans


def _in_spans(start: int, end: int, spans: list[Span]) -> bool:
    """A token is trained when its characters overlap an answer span."""
    return any((start < b and end > a) or (start == end and a <= start < b) for a, b in spans)


def _labels_by_offsets(ids: list[int], offsets: list[tuple[int, int]], spans: list[Span]) -> list[int]:
    return [tid if _in_spans(s, e, spans) else IGNORE_INDEX for tid, (s, e) in zip(ids, offsets, strict=True)]


def _encode_segments(tokenizer: Any, text: str, spans: list[Span]) -> Encoded:
    """For tokenizers without offsets: tokenize prompt and answer pieces separately."""
    cuts = sorted({0, len(text), *(p for span in spans for p in span)})
    ids: list[int] = []
    labels: list[int] = []
    for a, b in pairwise(cuts):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if _in_spans(a, b, spans) else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode_chats(conversations: list[list[Turn]], tokenizer: Any, where: str = "data set") -> list[Encoded]:
    """Token ids and answer-only labels of each conversation (one batched tokenizer call)."""
    rendered = [render_with_spans(turns, tokenizer, where) for turns in conversations]
    if not rendered:
        return []
    if not getattr(tokenizer, "is_fast", False):
        return [_encode_segments(tokenizer, text, spans) for text, spans in rendered]
    enc = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    return [
        (ids, _labels_by_offsets(ids, offsets, spans))
        for ids, offsets, (_, spans) in zip(enc["input_ids"], enc["offset_mapping"], rendered, strict=True)
    ]


def encode_texts(texts: list[str], tokenizer: Any) -> list[Encoded]:
    """Plain texts with the tokenizer's special tokens and a closing EOS; every token is a label."""
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for ids in tokenizer(texts)["input_ids"] if texts else []:
        ids = list(ids) + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])
        out.append((ids, list(ids)))
    return out


# --- building the data sets ----------------------------------------------------------------


def _fit(encoded: list[Encoded], max_len: int, overlong: str, stats: DataStats) -> list[dict]:
    """Rows of at most `max_len` tokens; overlong samples truncated or dropped (and counted)."""
    rows = []
    for ids, labels in encoded:
        if len(ids) > max_len:
            if overlong == "drop" or all(x == IGNORE_INDEX for x in labels[:max_len]):
                stats.dropped += 1
                continue
            stats.truncated += 1
            ids, labels = ids[:max_len], labels[:max_len]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


def pack(rows: list[dict], max_len: int) -> list[dict]:
    """Concatenate samples, in order, into rows of at most `max_len` tokens (no sample is split).

    position_ids restart at 0 for every sample, and the first label of each sample is ignored so
    no token is trained to predict the start of an unrelated sample."""
    chunks: list[dict] = []
    for row in rows:
        n = len(row["input_ids"])
        if not chunks or len(chunks[-1]["input_ids"]) + n > max_len:
            chunks.append({"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []})
        chunk = chunks[-1]
        chunk["input_ids"] += row["input_ids"]
        chunk["attention_mask"] += [1] * n
        chunk["labels"] += [IGNORE_INDEX] + row["labels"][1:]
        chunk["position_ids"] += list(range(n))
    return chunks


def _encode_records(
    records: list[dict], fmt: str, source: str, *, tokenizer: Any, section: DatasetSection, stats: DataStats
) -> list[dict]:
    """Records -> rows (input_ids, attention_mask, labels), counting empty and overlong ones."""
    if fmt != "text":
        ensure_chat_template(tokenizer)
    prepared = [prepare(r, fmt, f"{source}: record {i}") for i, r in enumerate(records, 1)]
    usable = [p for p in prepared if p is not None]
    stats.samples += len(records)
    stats.empty += len(records) - len(usable)
    encoded = encode_texts(usable, tokenizer) if fmt == "text" else encode_chats(usable, tokenizer, source)
    return _fit(encoded, int(section.max_seq_len), section.overlong, stats)


def split_eval(records: list[dict], fraction: float, seed: int, source: str = "data set") -> tuple[list, list]:
    """(train, eval): a deterministic `fraction` of the records (at least one) held out."""
    n_eval = max(1, round(len(records) * fraction))
    if n_eval >= len(records):
        raise DataError(
            f"{source}: eval_split {fraction} of {len(records)} records leaves nothing to train on; "
            "lower dataset.eval_split or give an evaluation file"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def _eval_source(section: DatasetSection, base_dir: Path) -> Union[float, Path]:
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


def _max_len(section: DatasetSection) -> int:
    if isinstance(section.max_seq_len, bool) or not isinstance(section.max_seq_len, int):
        raise DataError(
            f"dataset.max_seq_len is {section.max_seq_len!r}; resolve the recipe first "
            "(or set dataset.max_seq_len to a number of tokens)"
        )
    return section.max_seq_len


def _to_dataset(rows: list[dict]) -> "datasets.Dataset":
    import datasets

    columns = list(rows[0]) if rows else ["input_ids", "attention_mask", "labels"]
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})


def _load_split(path: Path, fmt: str) -> tuple[list[dict], str]:
    records = load_records(path)
    return records, resolve_format(records, fmt, str(path))


def _held_out(
    records: list[dict], fmt: str, path: Path, section: DatasetSection, base_dir: Path, seed: int
) -> tuple[list[dict], tuple[list[dict], str, str] | None]:
    """(training records, (evaluation records, their format, their source) or None)."""
    source = _eval_source(section, base_dir)
    if isinstance(source, Path):
        eval_records, eval_fmt = _load_split(source, section.format)
        return records, (eval_records, eval_fmt, str(source))
    if source <= 0:
        return records, None
    records, eval_records = split_eval(records, source, seed, str(path))
    return records, (eval_records, fmt, str(path))


def _require(rows: list[dict], what: str, source: str, stats: DataStats, max_len: int) -> None:
    if not rows:
        raise DataError(
            f"{source}: no usable {what} samples ({stats.empty} empty, {stats.dropped} longer than "
            f"max_seq_len {max_len} dropped); check the data or raise dataset.max_seq_len"
        )


def build_datasets(
    section: DatasetSection, tokenizer: Any, *, base_dir: Path, seed: int
) -> tuple["datasets.Dataset", "datasets.Dataset | None", DataStats]:
    """Training and evaluation sets (input_ids, attention_mask, labels [, position_ids when packed]).

    A tokenizer without a chat template gets `FALLBACK_CHAT_TEMPLATE` (save it with the model)."""
    max_len, path = _max_len(section), resolve_path(section.path, base_dir)
    records, fmt = _load_split(path, section.format)
    records, held_out = _held_out(records, fmt, path, section, base_dir, seed)
    stats = DataStats(format=fmt)
    train_rows = _encode_records(records, fmt, str(path), tokenizer=tokenizer, section=section, stats=stats)
    _require(train_rows, "training", str(path), stats, max_len)
    eval_rows = _encode_records(*held_out, tokenizer=tokenizer, section=section, stats=stats) if held_out else []
    if held_out:
        _require(eval_rows, "evaluation", held_out[2], stats, max_len)
    stats.kept, stats.eval_samples = len(train_rows), len(eval_rows)
    stats.train_tokens = sum(len(r["input_ids"]) for r in train_rows)
    if section.packing:
        random.Random(seed).shuffle(train_rows)
        train_rows = pack(train_rows, max_len)
    return _to_dataset(train_rows), (_to_dataset(eval_rows) if eval_rows else None), stats


# --- batching ------------------------------------------------------------------------------


def pad_id_of(tokenizer: Any) -> int:
    """The pad token id, else EOS (padding is masked out anyway), else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Callable[[list[dict]], dict]:
    """A Trainer `data_collator`: right-pads every column to the longest row of the batch (torch tensors)."""
    import torch

    fill = {"input_ids": pad_id_of(tokenizer), "attention_mask": 0, "labels": IGNORE_INDEX, "position_ids": 0}

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if pad_to_multiple_of:
            longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        return {
            key: torch.tensor([list(f[key]) + [value] * (longest - len(f[key])) for f in features], dtype=torch.long)
            for key, value in fill.items()
            if key in features[0]
        }

    return collate


# --- dry-run check -------------------------------------------------------------------------


def _approx_tokens(item: Union[str, list[Turn]]) -> int:
    text = item if isinstance(item, str) else "\n".join(t["content"] for t in item)
    return estimate_tokens(text)


def _length_stats(lengths: list[int]) -> dict[str, float]:
    lengths = sorted(lengths) or [0]

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * (len(lengths) - 1) + 0.5))]

    return {"mean": round(sum(lengths) / len(lengths), 1), "p50": pct(0.5), "p95": pct(0.95), "max": lengths[-1]}


def _check_file(path: Path, fmt: str, max_len: Any) -> dict:
    records = load_records(path)
    fmt = resolve_format(records, fmt, str(path))
    prepared = [prepare(r, fmt, f"{path}: record {i}") for i, r in enumerate(records, 1)]
    lengths = [_approx_tokens(p) for p in prepared if p is not None]
    report = {
        "path": str(path),
        "format": fmt,
        "records": len(records),
        "empty": len(records) - len(lengths),
        "approx_tokens": _length_stats(lengths),
    }
    if isinstance(max_len, int) and not isinstance(max_len, bool):
        report["approx_overlong"] = sum(n > max_len for n in lengths)
    return report


def check_dataset(section: DatasetSection, base_dir: Path) -> dict:
    """Cheap validation for `ftui train --dry-run` (no tokenizer): the file loads, its format is
    known, every record converts; record count and approximate token lengths (DataError otherwise)."""
    if not section.path:
        raise DataError("dataset.path is empty; set it to a data file or a saved dataset directory")
    report = _check_file(resolve_path(section.path, base_dir), section.format, section.max_seq_len)
    source = _eval_source(section, base_dir)
    if isinstance(source, Path):
        report["eval"] = _check_file(source, section.format, section.max_seq_len)
    elif source > 0:
        report["eval_records"] = max(1, round(report["records"] * source))
    return report
