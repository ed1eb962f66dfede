"""The training data pipeline inside the training process: tokenize the records that runner.data
reads, with loss on the answers only, handle overlong samples, pack, split off an evaluation set,
and batch them for HF Trainer.

Label masking renders the conversation with the tokenizer's chat template, finds the characters of
each assistant answer (the text the template adds between the prompt with its generation marker and
the conversation through that answer, end-of-turn token included, up to where a following user turn
would begin) and trains exactly the tokens that cover those characters, using the tokenizer's
offsets (templates whose partial renderings are not prefixes of the whole fall back to finding the
answer text). Every assistant turn of a multi-turn
conversation is trained; system and user turns and the template's markers are not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runner.data.records import DataError, Turn, eval_source, load_records, prepare, resolve_format, resolve_path
from runner.recipe.schema import DatasetSection

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100
"""Label of a token that is not trained (HF / PyTorch cross-entropy ignore index)."""
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Assistant:\\n' + message['content'] + (eos_token or '') + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)
"""Installed on tokenizers that have no chat template (base models), so the saved tokenizer
generates with the format the model was trained on."""

Span = tuple[int, int]
Encoded = tuple[list[int], list[int]]
"""(input_ids, labels)"""
PROBE_TURN: Turn = {"role": "user", "content": "?"}
"""Appended after an answer to see where the template ends the assistant turn."""


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
    source = eval_source(section, base_dir)
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
