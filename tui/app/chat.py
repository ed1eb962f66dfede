"""Chat with a finished run inside the app: the model runs in its own process (runner.train.serve chat
--jsonl, started by module name; the app imports no torch), one JSON line per message each way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, RichLog, Static

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ChatScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, run_path: Path, run_id: str, max_new_tokens: int = 128) -> None:
        super().__init__()
        self.run_path = Path(run_path)
        self.run_id = run_id
        self.max_new_tokens = max_new_tokens
        self.proc: subprocess.Popen | None = None
        self.history: list[dict] = []
        self.ready = False

    def compose(self) -> ComposeResult:
        yield Static(f" chat with {self.run_id}: loading the model…", id="chat-header")
        yield RichLog(id="chat-log", wrap=True, markup=False)
        yield Input(placeholder="a message, enter to send (esc: back)", id="chat-input", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._start, thread=True, exclusive=True, group="chat")

    def _start(self) -> None:
        argv = [sys.executable, "-m", "runner.train.serve", "chat", "--run-dir", str(self.run_path), "--jsonl"]
        argv += ["--max-new-tokens", str(self.max_new_tokens)]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PACKAGE_ROOT
        )
        line = self.proc.stdout.readline()
        if not line:
            err = (self.proc.stderr.read() or "").strip().splitlines()
            reason = next(
                (ln.removeprefix("ftui: error: ") for ln in reversed(err) if ln.startswith("ftui: error: ")), None
            )
            self.app.call_from_thread(self._failed, reason or (err[-1] if err else "the model process ended"))
            return
        self.app.call_from_thread(self._loaded)

    def _loaded(self) -> None:
        self.ready = True
        self.query_one("#chat-header", Static).update(f" chat with {self.run_id} (the tuned model; esc: back)")
        box = self.query_one("#chat-input", Input)
        box.disabled = False
        box.focus()

    def _failed(self, reason: str) -> None:
        self.query_one("#chat-header", Static).update(f" chat with {self.run_id}: {reason}")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text or not self.ready:
            return
        event.input.value = ""
        event.input.disabled = True
        self.query_one("#chat-log", RichLog).write(f"you: {text}")
        self.history.append({"role": "user", "content": text})
        self.run_worker(self._ask, thread=True, exclusive=True, group="chat")

    def _ask(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"messages": self.history}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline() or '{"error": "the model process ended"}')
        self.app.call_from_thread(self._answered, reply)

    def _answered(self, reply: dict) -> None:
        log = self.query_one("#chat-log", RichLog)
        if "answer" in reply:
            self.history.append({"role": "assistant", "content": reply["answer"]})
            log.write(f"model: {reply['answer']}")
        else:
            log.write(f"error: {reply.get('error')}")
        box = self.query_one("#chat-input", Input)
        box.disabled = False
        box.focus()

    def on_unmount(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
