"""Shared test setup: nothing downloads, and NVML is always the fake unless a test picks a scenario."""

import os

# Before anything imports huggingface_hub / transformers: never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Subprocesses started by tests inherit this: no test reaches the real NVML by default.
os.environ["FTUI_FAKE_NVML"] = "none"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE_NVML_ENV = "FTUI_FAKE_NVML"


@pytest.fixture(autouse=True)
def _no_real_nvml(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts on the `none` fake scenario (no GPU), whatever the shell has set;
    only tests marked `gpu` see the real NVML."""
    if request.node.get_closest_marker("gpu"):
        monkeypatch.delenv(FAKE_NVML_ENV, raising=False)
    else:
        monkeypatch.setenv(FAKE_NVML_ENV, "none")


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    """Factory: `fake_nvml("8xh100")` makes runner.machine.nvml see that runner.machine.fake_nvml scenario."""

    def use(scenario: str) -> str:
        from runner.machine.fake_nvml import FakeNvml

        FakeNvml(scenario)  # unknown scenario names fail here, not deep inside the code under test
        monkeypatch.setenv(FAKE_NVML_ENV, scenario)
        return scenario

    return use


@pytest.fixture
def repo_root() -> Path:
    return REPO


def kill_runs(root: Path) -> None:
    """Kill the process group of every run under `root`: a test leaves no training behind."""
    import signal

    from runner.rundir.runs import list_runs

    for run in list_runs(root):
        for launch in run.launches():
            if launch.get("pgid"):
                try:
                    os.killpg(launch["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in run.live_rank_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def await_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait (on pidfds, no polling) until every pid has exited; returns those still alive at `timeout`."""
    import select
    import time

    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        while fds:
            left = deadline - time.monotonic()
            ready, _, _ = select.select(list(fds), [], [], max(left, 0))
            if not ready:
                break
            for fd in ready:
                os.close(fd)
                del fds[fd]
    finally:
        alive = list(fds.values())
        for fd in fds:
            os.close(fd)
    return alive


def await_run_processes(run, timeout: float = 240) -> list[int]:
    """Wait until the supervisor and every training process of the run's latest launch have exited."""
    pids = [int(launch["pid"]) for launch in run.launches()[-1:] if launch.get("pid")]
    pids += [entry["pid"] for entry in run.rank_processes()]
    return await_exit(pids, timeout)
