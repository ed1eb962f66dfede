"""Token-length statistics of a data set file, without a tokenizer.

The planner cannot load a tokenizer (no torch/transformers here), so lengths are estimated from
the text: about 4 characters per token for Latin-script text and 1.5 per token for CJK and
other non-ASCII text, which is how BPE vocabularies of current LLMs split them on average.
Good enough to choose a sequence length and an epoch time; the runner counts exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ASCII_CHARS_PER_TOKEN = 4.0
OTHER_CHARS_PER_TOKEN = 1.5


class DatasetError(ValueError):
    """The file cannot be read as a data set; the message names the file and the problem."""


@dataclass(frozen=True)
class DatasetStats:
    path: str
    samples: int
    total_tokens: int
    mean: float
    p50: int
    p95: int
    p99: int
    max: int

    def suggested_seq_len(self, cap: int) -> int:
        """p99 rounded up to a multiple of 256, at most `cap`."""
        return max(256, min(cap, int(math.ceil(self.p99 / 256) * 256)))


def estimate_tokens(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    other = len(text) - ascii_chars
    return int(math.ceil(ascii_chars / ASCII_CHARS_PER_TOKEN + other / OTHER_CHARS_PER_TOKEN))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _records(path: Path) -> Iterator[Any]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DatasetError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise DatasetError(
                f"{path}: expected a JSON list of records (or an object holding one), found {type(data).__name__}"
            )
        yield from data
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            import csv  # only for a CSV/TSV dataset

            yield from csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".txt":
        with path.open(encoding="utf-8") as fh:
            yield from (line for line in fh if line.strip())
    else:
        raise DatasetError(
            f"{path}: cannot read {suffix or 'files without an extension'} for statistics; "
            "use .jsonl, .json, .csv, .tsv or .txt"
        )


def dataset_stats(path: str | Path) -> DatasetStats:
    """Approximate token lengths of every sample in `path`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    try:
        lengths = sorted(estimate_tokens("\n".join(_strings(rec))) for rec in _records(p))
    except UnicodeDecodeError as err:
        raise DatasetError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lengths = [n for n in lengths if n > 0]
    if not lengths:
        raise DatasetError(f"{p}: no samples with text found")

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * (len(lengths) - 1) + 0.5))]

    total = sum(lengths)
    return DatasetStats(str(p), len(lengths), total, total / len(lengths), pct(0.5), pct(0.95), pct(0.99), lengths[-1])
