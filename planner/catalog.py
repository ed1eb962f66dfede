"""The model catalog: names users type -> an `Architecture`.

Each shipped model is one JSON file in `planner/models/` holding its Hugging Face config.json
verbatim plus names and aliases. `resolve_model` also accepts size aliases (`7b`), a local model
directory or config.json, ids found in the local Hugging Face cache, and any other Hub id `org/name`,
whose config.json alone is then fetched into that cache (`planner.hub`). `load_config` gives the raw
config.json of any of these, whatever its model_type.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .hub import HubError, fetch_config, hub_cache_dir, looks_like_repo_id
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
    """No catalog entry, path, cached or Hub config matches; the message (one line) says why and what to do."""


class UnreadableModel(UnknownModel):
    """The config.json was found, but the planner has no reader for its model_type (`config` holds it)."""

    def __init__(self, message: str, config: dict) -> None:
        super().__init__(message)
        self.config = config


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hf_id: str
    aliases: tuple[str, ...]
    family: str
    config: dict
    published_params: int | None = None
    source: str = "catalog"
    """`catalog`, `size alias NAME`, `path FILE`, `local HF cache (ID)` or `Hugging Face Hub (ID)`."""

    @property
    def arch(self) -> Architecture:
        return _arch_of(self.name, json.dumps(self.config, sort_keys=True))


@lru_cache(maxsize=None)
def _arch_of(_name: str, config_json: str) -> Architecture:
    return architecture_from_config(json.loads(config_json))


def _read_entry(path: Path) -> ModelEntry:
    data = json.loads(path.read_text())
    return ModelEntry(
        data["name"],
        data.get("hf_id", ""),
        tuple(data.get("aliases", ())),
        data.get("family", data["config"].get("model_type", "")),
        data["config"],
        data.get("published_params"),
    )


@lru_cache(maxsize=1)
def entries() -> tuple[ModelEntry, ...]:
    """Every shipped model, sorted by name."""
    return tuple(_read_entry(path) for path in sorted(MODELS_DIR.glob("*.json")))


@lru_cache(maxsize=None)
def _named(name: str) -> ModelEntry:
    """One shipped model by its canonical name (its file is planner/models/<name>.json), read alone:
    a size alias needs no index of the whole catalog."""
    return _read_entry(MODELS_DIR / f"{name}.json")


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


def resolve_model(name: str, *, fetch: bool = True) -> ModelEntry:
    """The model a user means by `name` (catalog name, alias, size, HF id, path, cached or Hub id).
    `fetch=False`: never ask the Hub (the app's planner, re-planning on every keystroke)."""
    found = _locate(name, fetch)
    if found.entry is not None:
        return found.entry
    try:
        architecture_from_config(found.config)
    except ConfigError as err:
        raise UnreadableModel(f"{found.where}: {err}", found.config) from None
    return ModelEntry(
        found.label,
        found.hf_id or found.config.get("_name_or_path", ""),
        (),
        found.config.get("model_type", ""),
        found.config,
        source=found.source,
    )


def load_config(name: str) -> tuple[dict, str]:
    """The raw config.json of the model `name` means, and where it came from ("catalog (llama-2-7b)",
    "path /abs/config.json", "local HF cache (org/name)", "Hugging Face Hub (org/name)"), for any
    model_type, including those the planner has no reader for. Raises UnknownModel like `resolve_model`."""
    found = _locate(name)
    if found.entry is not None:
        return copy.deepcopy(found.entry.config), found.describe
    return found.config, found.source


@dataclass(frozen=True)
class _Found:
    """Where a name led: a ready catalog entry, or a config.json read from a file."""

    config: dict
    source: str
    label: str = ""
    hf_id: str = ""
    where: str = ""
    """What an error about this config names: its file, or the Hub id."""
    entry: ModelEntry | None = None
    describe: str = ""
    """For catalog entries: the source `load_config` reports."""


def _locate(name: str, fetch: bool = True) -> _Found:
    key = _norm(name)
    if key in SIZE_ALIASES:  # never a name, id or alias in the catalog (tests/test_catalog.py): checked first
        entry = _named(SIZE_ALIASES[key])
        alias = ModelEntry(
            entry.name,
            entry.hf_id,
            entry.aliases,
            entry.family,
            entry.config,
            entry.published_params,
            source=f"size alias {name}",
        )
        return _Found(entry.config, alias.source, entry=alias, describe=f"size alias {name} ({entry.name})")
    if key in _index():
        entry = _index()[key]
        return _Found(entry.config, entry.source, entry=entry, describe=f"catalog ({entry.name})")
    path = Path(os.path.expanduser(name))
    if path.exists():
        return _from_path(path)
    cached = _hf_cache_config(name)
    if cached is not None:
        found = _from_path(cached, source=f"local HF cache ({name})", label=name)
        return replace(found, where=f"{name.strip()} (local HF cache, {cached})")
    if "/" not in name:
        raise UnknownModel(_unknown_message(name))
    repo_id = name.strip()
    if not looks_like_repo_id(repo_id):
        raise UnknownModel(
            f"{name!r} is neither an existing path nor a Hugging Face model id (org/name): check the path, "
            "or use a catalog name (ftui plan --list-models)"
        )
    if not fetch:
        raise UnknownModel(
            f"{repo_id} is not in the catalog or the local HF cache; press enter to fetch its config.json"
        )
    try:
        config_path = fetch_config(repo_id)
    except HubError as err:
        raise UnknownModel(str(err)) from None
    source = f"Hugging Face Hub ({repo_id})"
    config = _read_config(config_path, f"config.json of {repo_id} from the Hugging Face Hub ({config_path})")
    return _Found(config, source, label=repo_id, hf_id=repo_id, where=f"{repo_id} (Hugging Face Hub)")


def _from_path(path: Path, source: str = "path", label: str | None = None) -> _Found:
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise UnknownModel(f"{path} has no config.json; point --model at a model directory or its config.json")
    config = _read_config(config_path, str(config_path))
    label = label or (path.name if path.is_dir() else path.parent.name)
    source = source if source != "path" else f"path {config_path.resolve()}"
    return _Found(config, source, label=label, where=str(config_path))


def _read_config(config_path: Path, what: str) -> dict:
    """The JSON object in `config_path`; `what` names the file in errors."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UnknownModel(f"cannot read {what}: {err}") from None
    except json.JSONDecodeError as err:
        raise UnknownModel(f"cannot read {what}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UnknownModel(
            f"{what} is not a JSON object (it holds a {type(config).__name__}); a model's config.json maps "
            "keys like model_type and hidden_size to values"
        )
    return config


def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub cache lives: where huggingface_hub writes (`hub.hub_cache_dir`), then
    HF_HUB_CACHE, HF_HOME/hub and ~/.cache/huggingface/hub."""
    dirs = [hub_cache_dir()]
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return list(dict.fromkeys(dirs))


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
    import difflib  # only for a name that is not found

    close = difflib.get_close_matches(_norm(name), keys, n=5, cutoff=0.5)
    if not close:
        close = [k for k in keys if _norm(name).split("-")[0] in k][:5]
    hint = f" Closest: {', '.join(close)}." if close else ""
    return (
        f"unknown model {name!r}.{hint} Use a catalog name (ftui plan --list-models), a size like 7b, "
        "a local model directory or config.json, or a Hugging Face id already in the local cache."
    )
