"""TensorBoard event files (events.out.tfevents.*) read without tensorboard or protobuf installed.

The HF Trainer's TensorBoardCallback writes one of these (through torch.utils.tensorboard or tensorboardX) and
flushes it at every log, so it is the one file of an HF run that grows between checkpoints. The format is small:

    a TFRecord stream:  uint64 length | uint32 masked CRC-32C of the length | length bytes | uint32 masked CRC-32C
    each record:        an Event message: wall_time (1, double), step (2, int64), file_version (3, string),
                        summary (5, a Summary: repeated Value (1))
    a Value:            tag (1, string), simple_value (2, float), tensor (8, a TensorProto: dtype (1),
                        tensor_content (4), float_val (5), double_val (6), string_val (8))

Only scalars (simple_value, or a one-element float/double tensor) and text (a string tensor, as add_text writes)
are kept; everything else in an event is skipped. A record whose length check fails ends the read: the file is being
written there, or is damaged from there on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "events.out.tfevents."
MAX_RECORD = 64 << 20
"""A length above this is no event this reader wants (a damaged header, or a huge graph)."""


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, masked as TFRecord stores it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format ------------------------------------------------------------------------------------------


class _Malformed(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of a message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Malformed(f"wire type {wire}")
        if pos > len(buf):
            raise _Malformed("truncated field")
        yield number, wire, value


DT_FLOAT, DT_DOUBLE, DT_STRING = 1, 2, 7


def _tensor(buf: bytes) -> float | str | None:
    """A one-value float/double tensor as a float, a string tensor as its first string; None otherwise."""
    dtype, floats, strings, content = 0, [], [], b""
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dtype = value
        elif number == 4 and wire == 2:
            content = value
        elif number == 5:  # float_val, packed or not
            floats += struct.unpack(f"<{len(value) // 4}f", value[: len(value) // 4 * 4])
        elif number == 6:  # double_val
            floats += struct.unpack(f"<{len(value) // 8}d", value[: len(value) // 8 * 8])
        elif number == 8 and wire == 2:
            strings.append(value)
    if dtype == DT_STRING:
        return strings[0].decode("utf-8", errors="replace") if strings else None
    if not floats and content and dtype in (DT_FLOAT, DT_DOUBLE):
        size = 4 if dtype == DT_FLOAT else 8
        floats = list(struct.unpack(f"<{len(content) // size}{'f' if size == 4 else 'd'}", content))
    return float(floats[0]) if len(floats) == 1 else None


@dataclass
class Event:
    """One event: its time and step, and the scalars and texts of its summary by tag."""

    wall_time: float = 0.0
    step: int = 0
    file_version: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


def _value(buf: bytes, event: Event) -> None:
    tag, value = None, None
    for number, wire, raw in _fields(buf):
        if number == 1 and wire == 2:
            tag = raw.decode("utf-8", errors="replace")
        elif number == 2 and wire == 5:
            value = struct.unpack("<f", raw)[0]
        elif number == 8 and wire == 2:
            value = _tensor(raw)
    if tag is None or value is None:
        return
    if isinstance(value, str):
        event.texts[tag] = value
    else:
        event.scalars[tag] = float(value)


def parse_event(buf: bytes) -> Event:
    """An Event message; raises ValueError when it is not one."""
    event = Event()
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 1:
            event.wall_time = struct.unpack("<d", value)[0]
        elif number == 2 and wire == 0:
            event.step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 3 and wire == 2:
            event.file_version = value.decode("utf-8", errors="replace")
        elif number == 5 and wire == 2:
            for sub, sub_wire, raw in _fields(value):
                if sub == 1 and sub_wire == 2:
                    _value(raw, event)
    return event


# --- files ---------------------------------------------------------------------------------------------------------


class EventFile:
    """The events appended to one file since the last read (a record still being written waits for the rest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.broken = False
        """A record failed its length check: nothing after it is read."""

    def read(self) -> list[Event]:
        if self.broken:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        events, used = self._parse(data)
        self.offset += used
        return events

    def _parse(self, data: bytes) -> tuple[list[Event], int]:
        events, pos = [], 0
        while len(data) - pos >= 12:
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            if struct.unpack("<I", data[pos + 8 : pos + 12])[0] != masked_crc32c(header) or length > MAX_RECORD:
                self.broken = True
                break
            end = pos + 12 + length + 4
            if end > len(data):
                break  # the rest of the record is not written yet
            try:
                events.append(parse_event(data[pos + 12 : pos + 12 + length]))
            except (ValueError, struct.error):
                pass  # an event of a kind this reader does not understand
            pos = end
        return events, pos


def file_time(path: Path) -> tuple[int, str]:
    """Sort key of an event file: the creation time in its name (events.out.tfevents.<time>.<host>...), then name."""
    stamp = path.name[len(PREFIX) :].partition(".")[0]
    return (int(stamp) if stamp.isdigit() else 0, path.name)


def event_files(run: Path) -> list[Path]:
    """The event files of an output directory, oldest first: in it, in runs/ and in runs/<one level>/ (the HF
    Trainer's default logging_dir, output_dir/runs/<date>_<host>)."""
    pattern = f"{PREFIX}*"
    found = [*run.glob(pattern), *run.glob(f"runs/{pattern}"), *run.glob(f"runs/*/{pattern}")]
    return sorted((p for p in found if p.is_file()), key=file_time)
