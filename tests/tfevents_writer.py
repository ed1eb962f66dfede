"""A TensorBoard event-file writer for tests, written from the format's description (TFRecord framing with
masked CRC-32C, Event / Summary / TensorProto messages) and independent of runner.watch.tfevents.

`HfTensorBoard` writes what the HF Trainer's TensorBoardCallback writes through torch.utils.tensorboard: a
file_version event when the writer opens, the `args` text at train begin, then one scalar event per logged key
(tags rewritten train/<key>, eval/<key without eval_>), all at the log's global step.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def crc32c(data: bytes) -> int:
    """Bit by bit (the reader uses a table): CRC-32C, reflected polynomial 0x82F63B78."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def scalar_value(tag: str, value: float) -> bytes:
    return delimited(1, tag.encode()) + key(2, 5) + struct.pack("<f", value)


def tensor_scalar_value(tag: str, value: float) -> bytes:
    """A scalar as the new-style writers store it: a DT_FLOAT tensor of one float_val (packed)."""
    tensor = key(1, 0) + varint(1) + delimited(5, struct.pack("<f", value))
    return delimited(1, tag.encode()) + delimited(8, tensor)


def text_value(tag: str, text: str) -> bytes:
    plugin = delimited(1, delimited(1, b"text"))
    shape = delimited(2, delimited(2, key(1, 0) + varint(1)))
    tensor = key(1, 0) + varint(7) + shape + delimited(8, text.encode())
    return delimited(1, f"{tag}/text_summary".encode()) + delimited(9, plugin) + delimited(8, tensor)


def event(wall: float, step: int = 0, *, values: list[bytes] = (), file_version: str | None = None) -> bytes:
    out = key(1, 1) + struct.pack("<d", wall)
    if step:
        out += key(2, 0) + varint(step)
    if file_version is not None:
        out += delimited(3, file_version.encode())
    if values:
        out += delimited(5, b"".join(delimited(1, v) for v in values))
    return out


def record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked(header)) + payload + struct.pack("<I", masked(payload))


def rewrite(logs: dict) -> dict:
    """transformers' rewrite_logs: eval_x -> eval/x, test_x -> test/x, anything else train/x."""
    out = {}
    for k, v in logs.items():
        if k.startswith("eval_"):
            out["eval/" + k[5:]] = v
        elif k.startswith("test_"):
            out["test/" + k[5:]] = v
        else:
            out["train/" + k] = v
    return out


class HfTensorBoard:
    """One writer session in output_dir/runs/<date>_<host>/, as TensorBoardCallback opens it on train begin."""

    def __init__(self, output_dir: Path, wall: float, args: dict | None = None, name: str = "Jan01_00-00-00_host"):
        self.dir = output_dir / "runs" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"events.out.tfevents.{int(wall)}.host.1234.0"
        self.write(event(wall, file_version="brain.Event:2"))
        if args is not None:
            self.write(event(wall, values=[text_value("args", json.dumps(args, indent=2))]))

    def write(self, payload: bytes) -> None:
        with open(self.path, "ab") as fh:
            fh.write(record(payload))

    def log(self, step: int, logs: dict, wall: float, new_style: bool = False) -> None:
        """One on_log: each number as its own event at `step`, then a flush (the file is written at once)."""
        make = tensor_scalar_value if new_style else scalar_value
        with open(self.path, "ab") as fh:
            for tag, value in rewrite(logs).items():
                fh.write(record(event(wall, step, values=[make(tag, value)])))


def hf_step_logs(step: int, max_steps: int, tokens: bool = False, runtime: float = 0.0) -> dict:
    """The logs of one HF logging step (what _maybe_log_save_evaluate and Trainer.log put together)."""
    logs = {"loss": 3.0 - step / 100, "grad_norm": 0.5, "learning_rate": 1e-4 - step * 1e-7, "epoch": step / max_steps}
    if tokens:  # include_num_input_tokens_seen: the tokens, and speed_metrics("train", start_time, num_tokens=...)
        logs |= {"num_input_tokens_seen": step * 1000, "train_runtime": runtime}
        logs["train_tokens_per_second"] = round(step * 1000 / runtime, 3) if runtime else 0.0
    return logs


def hf_final_metrics(step: int, max_steps: int, runtime: float) -> dict:
    """The final metrics (_finalize_training: speed_metrics with samples and steps, total_flos, train_loss)."""
    return {
        "train_runtime": runtime,
        "train_samples_per_second": round(step * 8 / runtime, 3),
        "train_steps_per_second": round(step / runtime, 3),
        "total_flos": 1.2e12,
        "train_loss": 2.5,
        "epoch": step / max_steps,
    }
