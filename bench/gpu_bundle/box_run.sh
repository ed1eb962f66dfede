#!/usr/bin/env bash
# The one command on a GPU box that has CUDA torch + transformers but not the rest, with the
# packages it lacks already unpacked into .whl/site (a plain directory, put first on PYTHONPATH:
# nothing is installed into the box's own environment). From the repository root:
#
#   bench/gpu_bundle/box_run.sh [gpu_check.py flags...]
#
# Prints the versions the check will run with, then runs bench/gpu_check.py; with OUT set (a
# folder that is copied back) the JSON results and the whole log go there.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT/.whl/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
DEST=${OUT:-$ROOT/bench/results}
mkdir -p "$DEST"
python3 - <<'PY' 2>&1 | tee "$DEST/versions.txt"
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "peft", "accelerate", "datasets", "pyarrow", "fsspec", "bitsandbytes", "pynvml", "yaml", "rich"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as err:  # a missing or broken package is what this list is for
        print(name, "IMPORT FAILED:", type(err).__name__, str(err)[:300])
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available())
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$DEST/versions.txt"
python3 bench/gpu_check.py --out "$DEST" "$@" 2>&1 | tee "$DEST/gpu_check.log"
