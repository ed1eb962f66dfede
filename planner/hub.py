"""One model's `config.json` from the Hugging Face Hub, stored in the standard HF cache.

`fetch_config("org/name")` downloads only that file with `huggingface_hub` (imported here, lazily:
importing the planner never loads it), so the next lookup finds it in the cache, and so does
transformers later. It honours HF_ENDPOINT, HF_TOKEN (or the `hf auth login` token), HF_HUB_OFFLINE
and the cache variables (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME), read when it is called.

Every failure is a `HubError` whose message is one line: what went wrong and what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CONFIG = "config.json"
DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO_ID = re.compile(r"\b[\w.-]+\b/\b[\w.-]+\b")
"""huggingface_hub's own rule for a namespaced repo id (plus no `--`/`..`, at most 96 characters)."""
_TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}
"""Where the HTTP clients huggingface_hub has used raise their network errors from."""


class HubError(LookupError):
    """config.json could not be fetched from the Hub; the message says why and what to do, in one line."""


def looks_like_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hub model id, `org/name`."""
    name = name.strip()
    return len(name) <= 96 and "--" not in name and ".." not in name and _REPO_ID.fullmatch(name) is not None


def endpoint() -> str:
    """The Hub the requests go to: HF_ENDPOINT, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """Where huggingface_hub stores downloads, by its own precedence: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    env = os.environ
    path = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not path:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        path = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(path)))


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline(constants) -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now."""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or _is_true(os.environ.get("HF_HUB_OFFLINE"))


def _first_line(err: BaseException) -> str:
    """A short reason: the OS error inside a wrapped network error ("[Errno 111] Connection refused"), else the
    first line of the message."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    errno = re.search(r"\[Errno -?\d+\][^'\"()\n]*", text)
    line = errno.group(0).strip() if errno else text.splitlines()[0].strip()
    return line if len(line) <= 160 else line[:157] + "..."


def _is_network_error(err: BaseException) -> bool:
    return isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.split(".")[0] in _TRANSPORT_MODULES


def _offline_error(repo_id: str, cache: Path) -> HubError:
    # huggingface_hub also goes offline for TRANSFORMERS_OFFLINE alone: name the variable that is set
    flag = "TRANSFORMERS_OFFLINE" if _is_true(os.environ.get("TRANSFORMERS_OFFLINE")) else "HF_HUB_OFFLINE"
    if _is_true(os.environ.get("HF_HUB_OFFLINE")):
        flag = "HF_HUB_OFFLINE"
    return HubError(
        f"{repo_id} is not in the local Hugging Face cache ({cache}) and {flag} is set: unset {flag} "
        "to download its config.json once, or point --model at a local model directory"
    )


def fetch_config(repo_id: str) -> Path:
    """The cached path of `repo_id`'s config.json, downloaded from the Hub if it is not cached yet."""
    repo_id = repo_id.strip()
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise HubError(
            f"fetching {repo_id} from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub"
        ) from None
    where = endpoint()
    cache = hub_cache_dir()
    if _offline(constants):
        cached = huggingface_hub.try_to_load_from_cache(repo_id, CONFIG, cache_dir=str(cache))
        if isinstance(cached, str):
            return Path(cached)
        raise _offline_error(repo_id, cache)
    try:
        # One HEAD first, without huggingface_hub's retries: an unreachable hub fails at once, not after
        # half a minute of backoff, and the error says exactly what the hub answered.
        meta = huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo_id, CONFIG, endpoint=where))
        if not meta.commit_hash or not meta.etag:
            raise HubError(
                f"{where} answered without the X-Repo-Commit/ETag headers of a Hugging Face Hub: check "
                "HF_ENDPOINT (and any proxy), or point --model at a local model directory"
            )
        return Path(huggingface_hub.hf_hub_download(repo_id, CONFIG, cache_dir=str(cache), endpoint=where))
    except HubError:
        raise
    except Exception as err:
        raise hub_error(err, repo_id, CONFIG, "point --model at a local model directory") from None


def hub_error(err: Exception, repo_id: str, what: str, local: str) -> HubError:
    """The one-line HubError for an exception huggingface_hub raised while fetching `what` of `repo_id`
    (`local`: the way round the Hub, e.g. "point --model at a local model directory")."""
    from huggingface_hub import utils as errors

    where = endpoint()
    cache = hub_cache_dir()
    page = f"{where}/{repo_id}"
    login = "set HF_TOKEN (or run `hf auth login`)"
    if isinstance(err, errors.GatedRepoError):
        return HubError(
            f"{repo_id} is a gated model: accept its licence on {page} with your account, then {login} "
            "with a token of that account"
        )
    if isinstance(err, errors.RepositoryNotFoundError):
        return HubError(
            f"no model {repo_id} on {where} (or it is private): check the id; a private repo needs {login} "
            "with access to it; a local directory of that name does not exist either"
        )
    if isinstance(err, errors.RevisionNotFoundError):
        return HubError(f"{repo_id} on {where} has no such revision; {local}")
    if isinstance(err, errors.LocalEntryNotFoundError):  # the hub could not be reached after all
        if isinstance(err.__cause__, errors.OfflineModeIsEnabled):
            return _offline_error(repo_id, cache)
        return HubError(
            f"cannot download {what} of {repo_id} from {where} (the connection failed); check the network, "
            f"set HF_ENDPOINT to a reachable mirror, or {local}"
        )
    if isinstance(err, errors.EntryNotFoundError):
        return HubError(
            f"{repo_id} on {where} has no {what}, so it is not a transformers model (GGUF-only and adapter "
            "repos have none): use the base model's id, or a local model directory with a config.json"
        )
    if isinstance(err, errors.OfflineModeIsEnabled):
        return _offline_error(repo_id, cache)
    if isinstance(err, errors.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            return HubError(
                f"{where} refused the token (401 invalid credentials) for {repo_id}: fix or unset HF_TOKEN, "
                "or run `hf auth login` again"
            )
        if status == 403:
            return HubError(
                f"{where} refused access to {repo_id} (403 forbidden): use a token (HF_TOKEN or `hf auth login`) "
                "that may read this repo"
            )
        if status is not None and (status >= 500 or status in (408, 429)):
            return HubError(
                f"{where} answered HTTP {status} for {repo_id}/{what}: try again later, set HF_ENDPOINT "
                f"to another mirror, or {local}"
            )
        return HubError(
            f"{where} answered HTTP {status} for {repo_id}/{what}, not as a Hugging Face Hub would: check "
            f"HF_ENDPOINT (and any proxy), or {local}"
        )
    if isinstance(err, errors.HFValidationError):
        return HubError(f"{repo_id!r} is not a valid Hugging Face model id (org/name)")
    if _is_network_error(err):
        return HubError(
            f"cannot reach the Hugging Face Hub at {where} ({_first_line(err)}) to fetch {repo_id}/{what}: "
            f"check the network, set HF_ENDPOINT to a reachable mirror, or {local}"
        )
    if isinstance(err, OSError):
        return HubError(
            f"cannot store {what} of {repo_id} in the Hugging Face cache {cache} ({_first_line(err)}): "
            "set HF_HUB_CACHE to a writable directory"
        )
    return HubError(f"fetching {what} of {repo_id} from {where} failed ({type(err).__name__}: {_first_line(err)})")
