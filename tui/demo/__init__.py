"""A recorded run for `ftui --demo` and the app's tests (synthetic: see make_recording.py)."""

from pathlib import Path

RECORDING = Path(__file__).with_name("qwen2.5-7b-lora-8xh100")
