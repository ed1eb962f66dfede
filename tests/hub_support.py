"""A stand-in Hugging Face Hub on 127.0.0.1 for the tests (never the network) and a private HF home.

It answers what huggingface_hub asks the real hub: file metadata and content at
/{repo}/resolve/{revision}/{filename}, and for snapshot downloads the repo info
(/api/models/{repo}/revision/{revision}) and file tree (/api/models/{repo}/tree/{revision}), with the
hub's error codes (GatedRepo, RepoNotFound, RevisionNotFound, EntryNotFound) and its 401/403 rules."""

import hashlib
import http.server
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest


constants = pytest.importorskip("huggingface_hub.constants")
hf_utils = pytest.importorskip("huggingface_hub.utils")
file_download = pytest.importorskip("huggingface_hub.file_download")

COMMIT = "3c9a1e4d2b7f60e8a5d4c3b2a1f0e9d8c7b6a5f4"
GOOD_TOKEN = "hf_granted_token"
OTHER_TOKEN = "hf_valid_but_not_granted"
VALID_TOKENS = {GOOD_TOKEN, OTHER_TOKEN}
QWEN_CFG = json.loads((Path(__file__).parent.parent / "planner" / "models" / "qwen2.5-0.5b.json").read_text())["config"]
QWEN_PARAMS = 494_032_768
MAMBA_CFG = {
    "architectures": ["MambaForCausalLM"],
    "model_type": "mamba",
    "hidden_size": 768,
    "num_hidden_layers": 24,
    "state_size": 16,
    "vocab_size": 50280,
}
RESOLVE = re.compile(r"/(?:datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)")
API = re.compile(
    r"/api/(?:models|datasets)/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<revision>[^/]+)(?P<rest>/.*)?"
)
"""Models and data sets share one namespace here (the real hub keeps them apart; the tests never need both)."""


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    gated: bool = False
    """Answers GatedRepo (401 without a token, 403 with one) unless the token is granted."""
    private: bool = False
    """Answers like a missing repo (RepoNotFound) unless the token is granted."""
    granted: frozenset[str] = frozenset({GOOD_TOKEN})
    moved_to: str | None = None
    """A renamed repo: the hub redirects (307, relative Location) to the new id."""
    status: int | None = None
    """Answer every request with this bare status (a hub that is down, or a server that is no hub)."""
    bare: bool = False
    """Serve files without the X-Repo-Commit and ETag headers, as a plain web server would."""
    cut_after: int | None = None
    """The first download of a file larger than this stops after this many bytes (the connection drops)."""
    cut_done: bool = False
    hang_after: int | None = None
    """The first download of a file larger than this sends this many bytes, then waits (a slow link)
    until `released` is set; the client is expected to be killed meanwhile."""
    hung: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class StandInHub:
    """What huggingface_hub needs from /{repo}/resolve/{revision}/{filename}, the way huggingface.co answers it
    (see huggingface_hub.utils._http.hf_raise_for_status and file_download.get_hf_file_metadata)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802
                hub._answer(self, with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._answer(self, with_body=True)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # shutdown() waits for the loop to notice; a short poll makes that quick
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self.running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "StandInHub":
        self._thread.start()  # the socket already listens: no need to wait for the loop
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.shutdown()  # returns once serve_forever has left its loop
            self._server.server_close()
            self._thread.join()

    def add(self, repo_id: str, config: dict | bytes | None = None, **kw) -> Repo:
        repo = Repo(**kw)
        if config is not None:
            repo.files["config.json"] = config if isinstance(config, bytes) else json.dumps(config, indent=2).encode()
        self.repos[repo_id] = repo
        return repo

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)

    def _answer(self, req: http.server.BaseHTTPRequestHandler, with_body: bool) -> None:
        path = urlsplit(req.path).path
        with self._lock:
            self.requests.append(Seen(req.command, path, {k.lower(): v for k, v in req.headers.items()}))
        auth = req.headers.get("Authorization")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        match = RESOLVE.fullmatch(path) or API.fullmatch(path)
        if token is not None and token not in VALID_TOKENS:
            return self._error(req, 401, None, "Invalid credentials in Authorization header", with_body)
        if match is None:
            return self._error(req, 404, None, "Not found", with_body)
        api = match.re is API
        repo = self.repos.get(match["repo"])
        if repo is None or (repo.private and token not in repo.granted):
            # huggingface.co: 401 for anonymous callers, 404 for authenticated ones
            return self._error(req, 401 if token is None else 404, "RepoNotFound", "Repository not found", with_body)
        if repo.status:
            return self._send(req, repo.status, {"Content-Type": "text/html"}, b"<html>nope</html>", with_body)
        if repo.moved_to:
            rest = path.split("/resolve/", 1)[1]
            return self._send(req, 307, {"Location": f"/{repo.moved_to}/resolve/{rest}"}, b"", with_body)
        if repo.gated and token not in repo.granted:
            message = f"Access to model {match['repo']} is restricted. You must have access to it and be authenticated."
            return self._error(req, 401 if token is None else 403, "GatedRepo", message, with_body)
        if match["revision"] not in ("main", COMMIT):
            return self._error(req, 404, "RevisionNotFound", "Invalid rev id", with_body)
        if api:
            return self._api(req, match, repo, with_body)
        body = repo.files.get(match["filename"])
        big = body is not None and with_body and repo.hang_after is not None and len(body) > repo.hang_after
        if big and not repo.hung.is_set():
            return self._hang(req, body, repo)
        if (
            body is not None
            and repo.cut_after is not None
            and with_body
            and not repo.cut_done
            and len(body) > repo.cut_after
        ):
            repo.cut_done = True  # a connection that drops part way through a download
            return self._cut(req, body, repo.cut_after)
        start = 0
        ranged = req.headers.get("Range", "")
        if body is not None and ranged.startswith("bytes=") and with_body:
            start = int(ranged.removeprefix("bytes=").split("-")[0] or 0)
        if body is None:
            return self._error(req, 404, "EntryNotFound", "Entry not found", with_body, {"X-Repo-Commit": COMMIT})
        blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()  # a git blob id, as the hub's ETag is
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{blob}"', "Content-Type": "application/json"}
        if repo.bare:
            headers = {"Content-Type": "application/json"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return self._send(req, 206, headers, body[start:], with_body)
        self._send(req, 200, headers, body, with_body)

    def _api(self, req, match, repo: "Repo", with_body: bool) -> None:
        """The repo info and the file tree, as snapshot_download reads them (HfApi.repo_info, list_repo_tree)."""
        if match["kind"] == "revision":
            info = {"id": match["repo"], "sha": COMMIT, "siblings": [{"rfilename": name} for name in repo.files]}
            return self._send(req, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), with_body)
        tree = [
            {
                "type": "file",
                "path": name,
                "size": len(body),
                "oid": hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest(),
            }
            for name, body in repo.files.items()
        ]
        self._send(req, 200, {"Content-Type": "application/json"}, json.dumps(tree).encode(), with_body)

    def _hang(self, req, body: bytes, repo: "Repo") -> None:
        blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
        req.send_response(200)
        for key, value in {"X-Repo-Commit": COMMIT, "ETag": f'"{blob}"', "Content-Length": str(len(body))}.items():
            req.send_header(key, value)
        req.end_headers()
        req.wfile.write(body[: repo.hang_after])
        req.wfile.flush()
        repo.hung.set()
        repo.released.wait(60)
        req.close_connection = True

    def _cut(self, req, body: bytes, after: int) -> None:
        blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
        req.send_response(200)
        for key, value in {"X-Repo-Commit": COMMIT, "ETag": f'"{blob}"', "Content-Length": str(len(body))}.items():
            req.send_header(key, value)
        req.end_headers()
        req.wfile.write(body[:after])
        req.wfile.flush()
        req.close_connection = True
        raise ConnectionResetError("cut")

    def _error(self, req, status, code, message, with_body, extra=None) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json", **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(req, status, headers, json.dumps({"error": message}).encode(), with_body)

    def _send(self, req, status, headers, body, with_body) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if with_body:
            req.wfile.write(body)


def _reset_hf_sessions() -> None:
    # huggingface_hub keeps one HTTP client (per thread in 0.x): start each test with a fresh one.
    reset = getattr(hf_utils, "close_session", None) or getattr(hf_utils, "reset_sessions", None)
    if reset is not None:
        reset()


def closed_port_url() -> str:
    with socket.socket() as sock:  # bound, never listening, closed: nothing answers there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
