"""Shared test setup: nothing downloads, and NVML is always the fake unless a test picks a scenario."""

import os

# Before anything imports huggingface_hub / transformers: never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Subprocesses started by tests inherit this: no test reaches the real NVML by default.
os.environ["FTUI_FAKE_NVML"] = "none"
# The test workers run several trainings side by side on few cores; OpenMP threads that spin while
# they wait starve the other runs' threads (the demo run beside another test's runs: 64.6 s spinning,
# 9.2 s with passive waiting, on two cores). Read by libgomp when torch loads, here and in subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE_NVML_ENV = "FTUI_FAKE_NVML"


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker per core, at most 4. Most time goes to real
    multi-process training runs, so more workers than cores only slow each other down. Each test file
    stays on one worker (--dist loadfile): the Slurm tests share one cluster, and module fixtures train
    their runs once. (Per-test distribution, --dist loadgroup, measured slower here: 880 s against
    764-794 s for the whole suite on two cores.)"""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


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


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """FTUI_RUNS_DIR for the test; every run left under it is killed afterwards."""
    monkeypatch.setenv("FTUI_RUNS_DIR", str(tmp_path / "runs"))
    yield tmp_path / "runs"
    kill_runs(tmp_path / "runs")


def await_run_processes(run, timeout: float = 240) -> list[int]:
    """Wait until the supervisor and every training process of the run's latest launch have exited."""
    from runner.rundir.runs import await_exit

    pids = [int(launch["pid"]) for launch in run.launches()[-1:] if launch.get("pid")]
    pids += [entry["pid"] for entry in run.rank_processes()]
    return await_exit(pids, timeout)


# --- a stand-in Hugging Face Hub (tests/hub_support.py) ------------------------------------------


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    from hub_support import _reset_hf_sessions, closed_port_url, constants, file_download

    """A private HF home (cache and token file) and online mode, whatever conftest and the shell set.

    huggingface_hub reads HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE, HF_TOKEN_PATH, HF_ENDPOINT (ENDPOINT and the
    resolve-URL template), HF_HUB_DISABLE_IMPLICIT_TOKEN and HF_HUB_DISABLE_TELEMETRY into `huggingface_hub.constants`
    when first imported (conftest has set HF_HUB_OFFLINE=1 by then), so those attributes are patched too; HF_TOKEN
    it reads at each call. The import-time ENDPOINT and HF_HUB_CACHE are pointed at places that must stay unused
    (planner.hub passes the endpoint and the cache itself): nothing can reach huggingface.co, and a request that
    ignored HF_ENDPOINT would fail. Telemetry is off: recent huggingface_hub (2.4) otherwise fetches
    {ENDPOINT}/api/agent-harnesses once a day for its user agent."""
    home = tmp_path / "hf"
    dead = closed_port_url()
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    template = dead + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    for name, value in (("ENDPOINT", dead), ("HUGGINGFACE_CO_URL_TEMPLATE", template)):
        if hasattr(file_download, name):  # 0.x reads its own copies
            monkeypatch.setattr(file_download, name, value)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True, raising=False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"), raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")  # huggingface_hub counts it as HF_HUB_OFFLINE too
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "wrong-cache"))
    monkeypatch.chdir(tmp_path)  # "org/name" must not exist as a relative path
    _reset_hf_sessions()
    yield home / "hub"
    _reset_hf_sessions()


@pytest.fixture
def hub(hf_home, monkeypatch):
    from hub_support import StandInHub

    server = StandInHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


def ftui(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `ftui ARGV` (argparse errors exit through SystemExit)."""
    from tui.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
