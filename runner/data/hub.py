"""A data set from the Hugging Face Hub: `dataset.path: ORG/NAME` (with `dataset.subset`, `dataset.split`).

Fetched before launch, by the command that starts the run, with huggingface_hub (no `datasets`
download machinery): only the data files of the chosen split, from the layouts Hub data set repos
use (`data/train-00000-of-00002.parquet`, `train.jsonl`, `SUBSET/train-*.parquet`, ...), into the
HF cache. Several shards are joined into one JSONL file beside it (HF_HOME/ftui-datasets), and the
resolved recipe names that local file, so every training process reads the same file offline.
A repo whose files do not show the split says which files it has.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from planner.hub import HubError, endpoint, hub_cache_dir, hub_error, looks_like_repo_id

from .records import DataError, load_records

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


def hub_dataset_id(value: str, base_dir: Path) -> str | None:
    """The Hub repo `value` names, or None for a local path."""
    local = Path(value).expanduser()
    if not local.is_absolute():
        local = Path(base_dir) / local
    if local.exists() or value.startswith((".", "/", "~")):
        return None
    return value if looks_like_repo_id(value) else None


def _split_files(names: list[str], subset: str, split: str) -> list[str]:
    data = [n for n in names if n.endswith(DATA_SUFFIXES) and not n.startswith(".")]
    if subset:
        data = [n for n in data if n.split("/")[0] == subset or f"/{subset}/" in f"/{n}"]
    patterns = (f"*{split}-*", f"*{split}.*", f"*/{split}/*", f"{split}/*", f"*_{split}.*", f"*-{split}.*")
    chosen = sorted({n for n in data for p in patterns if fnmatch.fnmatch(n, p)})
    if not chosen and split == "train" and len(data) == 1:
        chosen = data  # one file and no split names: that file is the training data
    return chosen


def _cache_file(repo: str, subset: str, split: str, commit: str) -> Path:
    home = hub_cache_dir().parent / "ftui-datasets"  # beside the HF hub cache (HF_HOME/ftui-datasets)
    name = f"{repo.replace('/', '--')}--{subset or 'default'}--{split}--{commit[:12]}.jsonl"
    return home / name


def fetch_dataset(repo: str, *, subset: str = "", split: str = "train", revision: str = "main") -> Path:
    """A local file with the split's records (downloaded once; offline: from the cache); HubError or
    DataError saying what is wrong."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(f"the data set {repo} is on the Hub: downloading it needs huggingface_hub") from None
    common = dict(repo_type="dataset", revision=revision, cache_dir=str(hub_cache_dir()), endpoint=endpoint())
    fix = "or set dataset.path to a local file"
    try:
        listing = snapshot_download(repo, dry_run=True, **common)
    except Exception as err:
        raise hub_error(err, repo, "its file list", fix) from None
    names = [i.filename for i in listing]
    files = _split_files(names, subset, split)
    if not files:
        shown = ", ".join(n for n in names if n.endswith(DATA_SUFFIXES))[:300] or "no data files"
        raise DataError(
            f"{repo}: no files for split {split!r}"
            + (f" of subset {subset!r}" if subset else "")
            + f" (the repo has: {shown}); set dataset.split / dataset.subset to one it has"
        )
    commit = listing[0].commit_hash if listing else revision
    try:
        root = Path(snapshot_download(repo, allow_patterns=files, **common))
    except Exception as err:
        raise hub_error(err, repo, "its data files", fix) from None
    if len(files) == 1:
        return root / files[0]
    out = _cache_file(repo, subset, split, commit)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for name in files:
                for record in load_records(root / name):
                    fh.write(json.dumps(record, default=str) + "\n")
        os.replace(tmp, out)
    return out
