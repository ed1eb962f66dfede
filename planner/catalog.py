"""The model catalog: names users type -> an `Architecture`.

Each shipped model is one JSON file in `planner/models/` holding its Hugging Face config.json
verbatim plus names and aliases. `resolve_model` also accepts size aliases (`7b`), a local model
directory or config.json, and ids found in the local Hugging Face cache (never the network).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .arch import Architecture
from .hfconfig import ConfigError, architecture_from_config

MODELS_DIR = Path(__file__).with_name("models")

SIZE_ALIASES = {
    "0.5b": "qwen2.5-0.5b",
    "0.6b": "qwen3-0.6b",
    "1b": "llama-3.2-1b",
    "1.1b": "tinyllama-1.1b",
    "1.5b": "qwen2.5-1.5b",
    "1.7b": "qwen3-1.7b",
    "1.8b": "qwen-1.8b",
    "2b": "gemma-2b",
    "3b": "llama-3.2-3b",
    "4b": "qwen3-4b",
    "6b": "yi-6b",
    "7b": "llama-2-7b",
    "8b": "llama-3.1-8b",
    "9b": "gemma-2-9b",
    "13b": "llama-2-13b",
    "14b": "qwen2.5-14b",
    "20b": "internlm2-20b",
    "27b": "gemma-2-27b",
    "32b": "qwen2.5-32b",
    "34b": "yi-34b",
    "40b": "falcon-40b",
    "70b": "llama-3.1-70b",
    "72b": "qwen2.5-72b",
    "405b": "llama-3.1-405b",
    "8x7b": "mixtral-8x7b",
    "30b-a3b": "qwen3-30b-a3b",
}
"""A bare size picks the best-known model of that size (the Llama line where one exists)."""


class UnknownModel(LookupError):
    """No catalog entry, path or cached config matches; the message lists close names."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hf_id: str
    aliases: tuple[str, ...]
    family: str
    config: dict
    published_params: int | None = None
    source: str = "catalog"
    """`catalog`, `size alias`, `path` or `hf cache`."""

    @property
    def arch(self) -> Architecture:
        return _arch_of(self.name, json.dumps(self.config, sort_keys=True))


@lru_cache(maxsize=None)
def _arch_of(_name: str, config_json: str) -> Architecture:
    return architecture_from_config(json.loads(config_json))


@lru_cache(maxsize=1)
def entries() -> tuple[ModelEntry, ...]:
    """Every shipped model, sorted by name."""
    out = []
    for path in sorted(MODELS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        out.append(
            ModelEntry(
                data["name"],
                data.get("hf_id", ""),
                tuple(data.get("aliases", ())),
                data.get("family", data["config"].get("model_type", "")),
                data["config"],
                data.get("published_params"),
            )
        )
    return tuple(out)


@lru_cache(maxsize=1)
def _index() -> dict[str, ModelEntry]:
    index: dict[str, ModelEntry] = {}
    for entry in entries():
        for key in (entry.name, entry.hf_id, *entry.aliases):
            if key:
                index.setdefault(_norm(key), entry)
                index.setdefault(_norm(key.split("/")[-1]), entry)
    return index


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def names() -> list[str]:
    """Canonical names, for completion and listings."""
    return [e.name for e in entries()]


def resolve_model(name: str) -> ModelEntry:
    """The model a user means by `name` (catalog name, alias, size, HF id, path or cached id)."""
    key = _norm(name)
    if key in _index():
        return _index()[key]
    if key in SIZE_ALIASES:
        entry = _index()[SIZE_ALIASES[key]]
        return ModelEntry(
            entry.name,
            entry.hf_id,
            entry.aliases,
            entry.family,
            entry.config,
            entry.published_params,
            source=f"size alias {name}",
        )
    path = Path(os.path.expanduser(name))
    if path.exists():
        return _from_path(path)
    cached = _hf_cache_config(name)
    if cached is not None:
        return _from_path(cached, source=f"local HF cache ({name})", label=name)
    raise UnknownModel(_unknown_message(name))


def _from_path(path: Path, source: str = "path", label: str | None = None) -> ModelEntry:
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise UnknownModel(f"{path} has no config.json; point --model at a model directory or its config.json")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UnknownModel(f"cannot read {config_path}: {err}") from None
    if not isinstance(config, dict):
        raise UnknownModel(f"{config_path} is not a JSON object")
    try:
        architecture_from_config(config)
    except ConfigError as err:
        raise UnknownModel(f"{config_path}: {err}") from None
    label = label or (path.name if path.is_dir() else path.parent.name)
    return ModelEntry(
        label,
        config.get("_name_or_path", ""),
        (),
        config.get("model_type", ""),
        config,
        source=source if source != "path" else f"path {config_path.resolve()}",
    )


def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub cache lives (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _hf_cache_config(repo_id: str) -> Path | None:
    if "/" not in repo_id:
        return None
    folder = "models--" + repo_id.strip().replace("/", "--")
    for root in hf_cache_dirs():
        snapshots = root / folder / "snapshots"
        if snapshots.is_dir():
            for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
                if (snap / "config.json").is_file():
                    return snap / "config.json"
    return None


def _unknown_message(name: str) -> str:
    keys = sorted({e.name for e in entries()} | set(SIZE_ALIASES))
    close = difflib.get_close_matches(_norm(name), keys, n=5, cutoff=0.5)
    if not close:
        close = [k for k in keys if _norm(name).split("-")[0] in k][:5]
    hint = f" Closest: {', '.join(close)}." if close else ""
    return (
        f"unknown model {name!r}.{hint} Use a catalog name (ftui plan --list-models), a size like 7b, "
        "a local model directory or config.json, or a Hugging Face id already in the local cache."
    )
