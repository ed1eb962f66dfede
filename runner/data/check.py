"""The check `ftui train` runs on a data set before launching (and `--dry-run` reports): the file
loads, its format is known, every record converts; record counts and approximate token lengths.
No tokenizer is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from planner.dataset_stats import estimate_tokens
from runner.recipe.schema import DatasetSection

from .records import DataError, Turn, eval_source, load_records, prepare, resolve_format, resolve_path


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
    source = eval_source(section, base_dir)
    if isinstance(source, Path):
        report["eval"] = _check_file(source, section.format, section.max_seq_len)
    elif source > 0:
        report["eval_records"] = max(1, round(report["records"] * source))
    return report
