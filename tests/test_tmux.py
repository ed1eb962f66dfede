"""The installed `ftui` binary in a real terminal, as a user over SSH drives it: tmux runs
`ftui --demo`, keys go in with send-keys, the screen comes back with capture-pane.

Each wait polls the captured screen for what should appear (with a deadline), the way a user
watches the terminal; there is no fixed sleep."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


def ftui_binary() -> list[str]:
    script = Path(sys.executable).parent / "ftui"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from tui.cli import main; main()"]


class Terminal:
    """One tmux session on a private server socket."""

    def __init__(self, socket: str, size: tuple[int, int]) -> None:
        self.base = [TMUX, "-L", socket, "-f", os.devnull]
        self.size = size

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # The server passes its environment on to the app: without COLUMNS/LINES (which a test
        # runner may set), so the app sizes itself from the terminal as it would over SSH.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=check, timeout=30, env=env)

    def start(self, argv: list[str], env: dict[str, str], status_file: Path) -> None:
        """Run `argv` in the terminal; its exit status lands in `status_file` (the shell writes it)."""
        self.status_file = status_file
        assignments = " ".join(f"{k}={v}" for k, v in env.items())
        command = f"{assignments} {' '.join(argv)}; echo $? > {status_file}; sleep 600"
        width, height = self.size
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t").stdout

    def keys(self, *keys: str) -> None:
        for key in keys:  # one at a time: tmux would read ESC followed by a key as alt+key
            self.tmux("send-keys", "-t", "t", key)

    def text(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def wait_for(self, *needles: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(n in screen for n in needles):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {needles!r}; the screen:\n{screen}")
            time.sleep(0.1)  # polling the terminal is the only way to watch it

    def press_for(self, key: str, *needles: str, tries: int = 3, timeout: float = 30.0) -> str:
        """Press `key` until the needles show. On a loaded two-core machine a key pressed just after a
        screen switch is now and then not seen by the app (reproduced 1 in 5 with four busy loops
        beside the test, never on an idle machine); a user presses it again, and so does this. A key
        that never works still fails."""
        for _ in range(tries - 1):
            self.keys(key)
            try:
                return self.wait_for(*needles, timeout=timeout / tries)
            except AssertionError:
                pass
        self.keys(key)
        return self.wait_for(*needles, timeout=timeout / tries)

    def wait_until(self, condition, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not condition(screen := self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}; the screen:\n{screen}")
            time.sleep(0.1)
        return screen

    def exited(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while not (self.status_file.exists() and self.status_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise AssertionError(f"ftui did not exit; the screen:\n{self.screen()}")
            time.sleep(0.1)
        return int(self.status_file.read_text())

    def close(self) -> None:
        self.tmux("kill-server", check=False)


def step_of(screen: str) -> int:
    found = re.search(r"step (\d+)/\d+", screen)
    return int(found.group(1)) if found else -1


@pytest.fixture
def terminal(tmp_path):
    term = Terminal(f"ftui-test-{os.getpid()}", (100, 30))
    yield term
    term.close()


def test_the_demo_in_tmux_monitor_tabs_planner_and_quit(terminal, tmp_path):
    env = {"TERM": "xterm-256color", "HOME": str(tmp_path), "FTUI_RUNS_DIR": str(tmp_path / "runs"), "LANG": "C.UTF-8"}
    terminal.start(ftui_binary() + ["--demo"], env, tmp_path / "exit-status")

    # The demo opens on the monitor of the recorded run, and its points keep coming.
    screen = terminal.wait_for("qwen2.5-7b-lora-8xh100", "running", "loss", "VRAM", "r7", "tok/s")
    first = step_of(screen)
    terminal.wait_until(lambda s: step_of(s) > first, "a later step")

    # esc goes back to the tabs: the runs list, then the GPUs with the run's processes by rank.
    terminal.keys("Escape")
    terminal.wait_for("Runs (r)", "qwen2.5-7b-lora-8xh100", "ftui")
    terminal.press_for("g", "H100 80GB HBM3", "r0 qwen2.5-7b-lora-8xh100")

    # The planner plans for the GPUs it sees.
    terminal.press_for("p", "model", "here: 8")
    terminal.text("qwen2.5-7b")
    terminal.wait_for("FITS", "recommended", "tokens/s")
    terminal.keys("Escape")  # leave the field, so the next keys are commands again
    terminal.wait_for("plan this one")  # the alternatives table has focus: its key is in the footer
    terminal.press_for("r", "qwen2.5-7b-lora-8xh100", "started")

    # q quits the app and only the app.
    terminal.keys("q")
    assert terminal.exited() == 0
