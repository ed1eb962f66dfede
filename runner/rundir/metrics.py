"""Reading metrics.jsonl: the last record, and new records as they are appended."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def last_record(path: Path, chunk: int = 65536) -> dict[str, Any] | None:
    """The last complete JSON line of `path` (reads only the file's end)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chunk))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


class MetricsTail:
    """Incremental reader: each `read()` returns the records appended since the last one.

    A partly written last line is kept for the next call, so a record is never read half-done.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.pending + data
        *complete, self.pending = data.split(b"\n")
        out = []
        for line in complete:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out
