"""A recipe's Hub model, fetched once before training: what it needs, whether it can come, and the download.

`model.path: ORG/NAME` (with `model.revision`) that is not a local directory names a Hugging Face Hub
repo. Before launch, `plan_download` asks the Hub which files the run needs and which of them the
local cache already has (huggingface_hub's `snapshot_download(dry_run=True)`: the repo's file list
and sizes, no file content), so a gated repo, a missing one, no network, offline mode or too little
disk fails at `ftui train`, with what to do, and `--dry-run` can list what would come. The download
itself runs in the run's supervisor (`fetch`), so it survives the SSH session; the training processes
then load from the cache with local_files_only and never download (one download, not one per rank).

Only what a run loads: safetensors weights and their index (the `.bin` duplicates only where there
are no safetensors), config, generation config, tokenizer and chat template files, and `*.py` when
the recipe trusts remote code; never `original/` checkpoints, GGUF, ONNX or other frameworks'
weights. A transfer that drops part way is fetched again by huggingface_hub and lands whole (the
cache never holds a cut file under its name); a download killed with its supervisor is started again
by `ftui resume`: the files already in the cache are kept, the one that was cut starts over
(huggingface_hub 2.4 downloads each file into a temp file of its own process, so it cannot continue
another process's bytes).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from planner.hub import HubError, endpoint, hub_cache_dir, hub_error, looks_like_repo_id
from runner.recipe.modelfiles import CONFIG_FILES, PYTORCH_BIN, SAFETENSORS, TOKENIZER_FILES

NEVER = ["original/*", "*.gguf", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.ot", "*.tflite", "*.mlmodel"]
LOCAL_FIX = "or set model.path to a local model directory"


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    cached: bool


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str
    commit: str
    files: tuple[HubFile, ...] = field(default_factory=tuple)
    patterns: tuple[str, ...] = field(default_factory=tuple)
    """allow_patterns for the download: exactly the files above."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached)

    @property
    def complete(self) -> bool:
        return all(f.cached for f in self.files)

    def as_json(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "files": [f.name for f in self.files],
            "total_bytes": self.total_bytes,
            "missing_bytes": self.missing_bytes,
        }


def hub_repo(path: str, base: Path | None = None) -> str | None:
    """The Hub repo id `path` names, or None when it is a local path (or not an id at all)."""
    local = Path(path).expanduser()
    if not local.is_absolute() and base is not None:
        local = base / local
    if local.exists() or path.startswith((".", "/", "~")):
        return None
    return path if looks_like_repo_id(path) else None


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or any(
        (v or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in flags
    )


def _dry_run(repo_id: str, revision: str, allow: list[str], local_only: bool):
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=str(hub_cache_dir()),
        endpoint=endpoint(),
        allow_patterns=allow,
        ignore_patterns=NEVER,
        local_files_only=local_only,
        dry_run=True,
    )


def plan_download(repo_id: str, revision: str = "main", trust_remote_code: bool = False) -> DownloadPlan:
    """What the run needs from `repo_id` and what the cache lacks; HubError (one line) when it cannot come."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise HubError(f"downloading {repo_id} needs huggingface_hub: pip install huggingface_hub") from None
    offline = _offline()
    extra = ["*.py"] if trust_remote_code else []
    found = None
    for weights in (SAFETENSORS, PYTORCH_BIN):
        try:
            infos = _dry_run(repo_id, revision, [*CONFIG_FILES, *TOKENIZER_FILES, *weights, *extra], offline)
        except Exception as err:
            if offline:
                raise _offline_error(repo_id) from None
            raise hub_error(err, repo_id, "its file list", LOCAL_FIX) from None
        if any(_is_weight(i.filename) for i in infos):
            found = infos
            break
        found = found or infos
    files = tuple(HubFile(i.filename, int(i.file_size or 0), bool(i.is_cached)) for i in found or [])
    if not any(f.name == "config.json" for f in files):
        raise HubError(f"{repo_id} has no config.json, so it is not a transformers model: use the base model's id")
    if not any(_is_weight(f.name) for f in files):
        raise HubError(
            f"{repo_id} has no safetensors or PyTorch weights (GGUF-only and adapter repos have none): "
            "use the base model's id, or set model.init: random to train from its config"
        )
    commit = found[0].commit_hash if found else ""
    if offline and not all(f.cached for f in files):
        raise _offline_error(repo_id)
    return DownloadPlan(repo_id, revision, commit, files, tuple(f.name for f in files))


def _is_weight(name: str) -> bool:
    return name.endswith(".safetensors") or (name.startswith("pytorch_model") and name.endswith(".bin"))


def _offline_error(repo_id: str) -> HubError:
    return HubError(
        f"{repo_id} is not (completely) in the local Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE "
        f"is set: unset it to download the model once before training, {LOCAL_FIX}"
    )


def check_disk(plan: DownloadPlan, cache: Path | None = None) -> None:
    """Room in the HF cache for what is missing (plus 5 %); HubError saying how much to free."""
    cache = cache or hub_cache_dir()
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = int(plan.missing_bytes * 1.05)
    if need > free:
        raise HubError(
            f"{plan.repo_id} needs {need / 1e9:.1f} GB more in the Hugging Face cache {cache}, which has "
            f"{free / 1e9:.1f} GB free: free {(need - free) / 1e9:.1f} GB, or set HF_HUB_CACHE to a larger disk"
        )


def describe(plan: DownloadPlan) -> str:
    """Lines for --dry-run: what comes from the Hub, and how much."""
    if plan.complete:
        return f"model {plan.repo_id}@{plan.revision}: in the local cache ({plan.total_bytes / 1e9:.2f} GB)"
    lines = [
        f"model {plan.repo_id}@{plan.revision} ({plan.commit[:10]}) from {endpoint()}: "
        f"{plan.missing_bytes / 1e9:.2f} GB to download of {plan.total_bytes / 1e9:.2f} GB"
    ]
    for f in plan.files:
        lines.append(f"  {'cached  ' if f.cached else 'download'}  {f.size / 1e6:10.1f} MB  {f.name}")
    return "\n".join(lines)


def _repo_cache(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def cached_bytes(repo_id: str) -> int:
    """Bytes of the repo's blobs in the cache, finished or not (what a download has written so far)."""
    blobs = _repo_cache(repo_id) / "blobs"
    total = 0
    if blobs.is_dir():
        for entry in os.scandir(blobs):
            try:
                total += entry.stat().st_size
            except OSError:
                pass
    return total


def fetch(plan: DownloadPlan, progress: Callable[[int, int, float], None] | None = None, every: float = 1.0) -> str:
    """Download what `plan` lacks into the HF cache (resuming what an earlier try left); returns the
    snapshot directory. `progress(done_bytes, total_bytes, bytes_per_s)` is called every `every` s."""
    from huggingface_hub import snapshot_download

    start = cached_bytes(plan.repo_id)
    base = start - (plan.total_bytes - plan.missing_bytes)  # what partial blobs already hold
    stop = threading.Event()
    began = time.monotonic()

    def report() -> None:
        while not stop.wait(every):
            now = cached_bytes(plan.repo_id)
            done = min(plan.total_bytes, plan.total_bytes - plan.missing_bytes + max(now - start + base, 0))
            rate = max(now - start, 0) / max(time.monotonic() - began, 1e-6)
            progress(done, plan.total_bytes, rate)

    watcher = threading.Thread(target=report, daemon=True) if progress else None
    if watcher:
        watcher.start()
    try:
        path = snapshot_download(
            plan.repo_id,
            revision=plan.commit or plan.revision,
            cache_dir=str(hub_cache_dir()),
            endpoint=endpoint(),
            allow_patterns=list(plan.patterns),
        )
    except Exception as err:
        raise hub_error(err, plan.repo_id, "its files", LOCAL_FIX) from None
    finally:
        stop.set()
    if progress:
        progress(plan.total_bytes, plan.total_bytes, 0.0)
    return path
