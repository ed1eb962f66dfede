"""`ftui plan --verify`: run the trace of ftui's own training step (runner.train.trace) in a child
process, so the CLI and the app never import torch, and read its JSON answer.

The child builds the model at full width under fake tensors on the CPU: no GPU, no download (the
config travels in the request), a few seconds per setup.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

from .build import PACKAGE_ROOT

TRACE_MODULE = "runner.train.trace"
TRAINING_STACK = ("torch", "transformers", "peft", "accelerate")
TIMEOUT_S = 600.0


class VerifyError(RuntimeError):
    """The trace could not run; the message says why and what to do."""


def missing_training_stack() -> list[str]:
    """The training packages the trace needs that are not installed here (found without importing)."""
    return [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]


def trace(config: dict[str, Any], setup, *, timeout: float = TIMEOUT_S, python: str = sys.executable) -> dict:
    """The trace's answer for `setup` (a planner Setup): {"traceable": True, "peak_allocated_gib", "phases",
    "parts", "layers_traced", "layers", "seconds"} or {"traceable": False, "reason"}."""
    missing = missing_training_stack()
    if missing:
        raise VerifyError(
            f"--verify traces the training step with the training stack, which is not installed here "
            f"(missing: {', '.join(missing)}); pip install 'ftui[train]'"
        )
    request = json.dumps({"config": config, "setup": dataclasses.asdict(setup)})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false"
    )
    env.pop("FTUI_FAKE_NVML", None)
    try:
        proc = subprocess.run(
            [python, "-m", TRACE_MODULE],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=PACKAGE_ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise VerifyError(f"the trace took longer than {timeout:.0f} s and was stopped") from None
    except OSError as err:
        raise VerifyError(f"cannot start the trace ({python}): {err}") from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])
        raise VerifyError(f"the trace failed (exit {proc.returncode}): {tail or 'no output'}")
    return answer
