"""Slurm runs. The first part needs no cluster (the batch script, the job's states, the straggler
flag, per-node GPUs); the second runs against a real two-node Slurm (`slurm` fixture: SLURM_CONF
when one is up, else `.ci/slurm-up`, which needs root and Debian's slurm-wlm and munge)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO as ROOT
from conftest import ftui
from test_hub_train import REPO, recipe, tiny_repo_files  # noqa: F401 (fixtures)
from runner.launch.slurm import SlurmRequest, batch_script, sbatch_argv, sbatch_options
from runner.machine import slurm
from runner.machine.slurm import JobState, SlurmError, time_limit_s
from runner.rundir.runs import RunDir, list_runs
from runner.watch.health import skew, straggler_flags

# --- no cluster needed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 5400), ("10:30", 630), ("1:30:00", 5400), ("2-00:00:00", 172800), ("2-3", 183600), ("1-2:30", 95400)],
)
def test_time_limits_read_as_sbatch_reads_them(text, seconds):
    assert time_limit_s(text) == seconds


@pytest.mark.parametrize(
    "request_, words",
    [
        (SlurmRequest(nodes=0), "--nodes 0"),
        (SlurmRequest(gpus_per_node=0), "--gpus-per-node 0"),
        (SlurmRequest(time="tomorrow"), "not a Slurm time limit"),
        (SlurmRequest(sbatch_args=("qos=high",)), "one sbatch option per flag"),
    ],
)
def test_a_bad_job_request_says_what_to_give(request_, words):
    with pytest.raises(SlurmError, match=words):
        request_.check()


def test_the_batch_script_asks_for_the_signal_requeue_and_one_task_per_node(tmp_path):
    request = SlurmRequest(partition="gpu", nodes=4, time="24:00:00", account="lab", sbatch_args=("--qos=high",))
    run_dir = tmp_path / "my run; rm -rf ~"
    options = sbatch_options(request, "r1", 8, cuda=True)
    script = batch_script(run_dir, options, "/venv/bin/python", {"PYTHONPATH": "/src"})
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=24:00:00",
        "#SBATCH --account=lab",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --qos=high",
    ):
        assert line in script.splitlines()
    assert f"--run-dir '{run_dir}'" in script  # quoted: an odd directory name stays one argument
    argv = sbatch_argv(run_dir / "slurm.sbatch", run_dir)
    assert f"--output={run_dir / 'train.log'}" in argv and argv[:2] == ["sbatch", "--parsable"]


def test_a_short_job_is_warned_within_its_first_half():
    assert SlurmRequest(time="4:00").warn_before_end_s() == 120
    assert SlurmRequest(time="1").warn_before_end_s() == 30
    assert SlurmRequest().warn_before_end_s() == 300


def test_cpu_jobs_ask_for_no_gpus():
    assert not any(o.startswith("--gpus") for o in sbatch_options(SlurmRequest(nodes=2), "r", 1, cuda=False))


@pytest.mark.parametrize(
    "state, reason, label",
    [
        ("PENDING", "Resources", "pending (Resources)"),
        ("PENDING", "None", "pending"),
        ("RUNNING", "None", "running"),
        ("TIMEOUT", "", "timed out"),
        ("CANCELLED", "", "cancelled"),
        ("OUT_OF_MEMORY", "", "out of memory"),
    ],
)
def test_job_states_read_as_words(state, reason, label):
    assert JobState(state, reason).label() == label


def test_a_missing_slurm_says_where_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm._CACHE.clear()
    with pytest.raises(SlurmError, match="sbatch not found.*login node"):
        slurm.submit(["sbatch", "--parsable", "x"])


def test_slurm_options_without_slurm_are_refused(capsys):
    code, _, err = ftui(capsys, "train", "tiny-demo", "--nodes", "2", "--dry-run")
    assert code == 2 and "--nodes only apply to Slurm jobs: add --slurm" in err


def test_a_job_that_ended_long_ago_is_read_from_its_status_not_asked_about(tmp_path, monkeypatch):
    from runner.rundir.runs import new_run_dir, write_json_atomic

    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    slurm._CACHE.clear()
    run = new_run_dir(tmp_path / "runs", "old")
    run.record_launch({"slurm": {"job_id": "77"}, "host": "login1"})
    write_json_atomic(run.status_file, {"state": "finished", "updated": time.time() - 3600})
    job_id, job = run.job()
    assert job_id == "77" and job.state == "COMPLETED" and job.source == "status.json"
    write_json_atomic(run.status_file, {"state": "running", "updated": time.time()})
    job_id, job = run.job()  # an active run is asked about, and here nothing answers
    assert job.state == "UNKNOWN" and "not found" in job.reason
    assert run.explain()[0] == "running"  # no Slurm from here: status.json as written


def _ranks(*forward_ms):
    return {str(r): {"node": f"n{r // 2 + 1}", "forward_s": ms / 1000} for r, ms in enumerate(forward_ms)}


def test_the_straggler_is_named_with_its_node():
    records = [{"step": s, "ranks": _ranks(100, 102, 99, 160)} for s in (5, 10, 15)]
    (flag,) = straggler_flags(records)
    assert flag.kind == "straggler" and "rank 3 on node n2" in flag.text and "1.6x" in flag.text
    assert skew(records) == pytest.approx(160 / 99)


def test_even_ranks_raise_no_straggler_flag():
    records = [{"step": s, "ranks": _ranks(100, 104, 97, 110)} for s in (5, 10, 15)]
    assert straggler_flags(records) == []
    assert straggler_flags([{"step": 5}]) == []


def test_fake_nvml_takes_a_scenario_per_node(monkeypatch):
    from runner.machine.nvml import fake_scenario

    monkeypatch.setenv("FTUI_FAKE_NVML", "n1=1xa100,n2=8xh100")
    monkeypatch.setenv("SLURMD_NODENAME", "n2")
    assert fake_scenario() == "8xh100"
    monkeypatch.setenv("SLURMD_NODENAME", "n9")
    assert fake_scenario() == "none"
    monkeypatch.setenv("FTUI_FAKE_NVML", "n1=1xa100,*=vanishing")
    assert fake_scenario() == "vanishing"


def test_the_monitor_shows_every_nodes_gpus(tmp_path):
    from rich.console import Console

    from tui.app.monitor import nodes_text, read_node_samples

    gib = 2**30
    folder = tmp_path / "nodes"
    folder.mkdir()
    for node, used in (("n1", 10), ("n2", 70)):
        gpus = [
            {"index": i, "memory_used": used * gib, "memory_total": 80 * gib, "utilization": 90, "power_w": 500.0}
            for i in range(2)
        ]
        (folder / f"{node}.json").write_text(json.dumps({"node": node, "gpus": gpus}))
    (folder / "broken.json").write_text("{")
    records = [{"step": 5, "ranks": _ranks(100, 100, 100, 150)}]
    console = Console(width=80, record=True)
    console.print(nodes_text(read_node_samples(folder), records))
    text = console.export_text()
    assert "n1  ranks 0,1" in text and "n2  ranks 2,3" in text
    assert text.count("/80 GiB") == 4 and "70.0/80 GiB 90% 500 W" in text
    assert "forward skew 1.50x" in text


# --- a real two-node Slurm -----------------------------------------------------------------

CLUSTER_DIR = Path("/tmp/ftui-slurm-tests")
WAIT_S = 240


def _sinfo_ok(env: dict[str, str]) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, env=env, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.count("idle") + out.stdout.count("mix") + out.stdout.count("alloc") >= 2


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a two-node cluster: the one in the environment (CI starts it with .ci/slurm-up), or
    one this session starts with .ci/slurm-up (root only) and stops at the end."""
    env = dict(os.environ)
    if env.get("SLURM_CONF") and _sinfo_ok(env):
        yield env["SLURM_CONF"]
        return
    if os.geteuid() != 0:
        pytest.skip("no Slurm cluster is up (SLURM_CONF) and .ci/slurm-up needs root to start one")
    up = subprocess.run([str(ROOT / ".ci" / "slurm-up"), str(CLUSTER_DIR)], capture_output=True, text=True)
    conf = next((ln.split("=", 1)[1] for ln in up.stdout.splitlines() if ln.startswith("SLURM_CONF=")), None)
    if up.returncode != 0 or conf is None:
        pytest.skip(f"could not start a Slurm cluster (.ci/slurm-up: {(up.stderr or up.stdout).strip()[-300:]})")
    env["SLURM_CONF"] = conf
    if not _sinfo_ok(env):
        pytest.skip("Slurm started but its two nodes never became idle")
    yield conf
    subprocess.run([str(ROOT / ".ci" / "slurm-up"), str(CLUSTER_DIR), "down"], capture_output=True)


@pytest.fixture
def cluster(slurm_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    slurm._CACHE.clear()
    runs = tmp_path / "runs"
    yield runs
    for run in list_runs(runs) if runs.exists() else []:
        job = (run.launches()[-1].get("slurm") or {}).get("job_id") if run.launches() else None
        if job:
            subprocess.run(["scancel", str(job)], capture_output=True)


def _submit(capsys, runs: Path, *extra: str) -> RunDir:
    args = ["train", "tiny-demo", "--slurm", "--runs-dir", str(runs), "--set", "train.logging_steps=2"]
    code, out, err = ftui(capsys, *args, *extra)
    assert code == 0, err
    assert "submitted" in out and "Slurm job" in out
    (run,) = list_runs(runs)
    return run


def _wait(what, predicate, timeout: float = WAIT_S, every: float = 0.5):
    """Poll a Slurm job (the controller sends no events to a bystander) until `predicate()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slurm._CACHE.clear()
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _summary(capsys, runs: Path) -> dict:
    code, out, _ = ftui(capsys, "runs", "--runs-dir", str(runs), "--json")
    assert code == 0
    (row,) = json.loads(out)["runs"]
    return row


def _job(run: RunDir) -> str:
    return str(run.launches()[-1]["slurm"]["job_id"])


def _step(run: RunDir) -> int:
    return int(run.status().get("step") or 0)


def _log(run: RunDir) -> str:
    return run.log.read_text(errors="replace")


def test_a_two_node_run_checkpoints_on_the_time_limit_signal_requeues_resumes_stops_and_finishes(
    capsys, cluster, monkeypatch
):
    monkeypatch.setenv("FTUI_FAKE_NVML", "n1=1xa100,n2=8xh100")
    run = _submit(capsys, cluster, "--nodes", "2", "--set", "train.max_steps=40", "--set", "train.save_steps=4")
    job = _job(run)
    _wait("the first steps", lambda: _step(run) >= 4)
    row = _summary(capsys, cluster)
    assert row["state"] == "running" and row["slurm"]["state"] == "RUNNING"
    # What Slurm sends --signal=B:USR1@N seconds before the time limit, sent now.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    _wait("the requeue", lambda: "requeueing Slurm job" in _log(run))
    saved = _step(run)
    held = _wait("the requeued job to wait", lambda: (slurm.job_state(job, fresh=True) or JobState("?")).pending)
    assert held and _summary(capsys, cluster)["state"] == "queued"
    # Slurm holds a requeued job for the credential lifetime (AuthInfo cred_expire: 10 s on the test cluster).
    _wait("the second start", lambda: "(start 2 of the job)" in _log(run))
    assert f"training from checkpoint-{saved}" in _log(run)
    _wait("steps after the resume", lambda: _step(run) >= saved + 4)
    # Every node's GPUs are beside the metrics, as each node's NVML sees them.
    nodes = {p.stem: json.loads(p.read_text()) for p in (run.path / "nodes").glob("*.json")}
    assert sorted(nodes) == ["n1", "n2"]
    assert len(nodes["n1"]["gpus"]) == 1 and len(nodes["n2"]["gpus"]) == 8
    assert "H100" in nodes["n2"]["gpus"][0]["name"]
    ranks = [json.loads(line).get("ranks") for line in run.metrics.read_text().splitlines()]
    assert {"0", "1"} <= set(next(r for r in reversed(ranks) if r)), "both ranks report their forward time"
    assert sorted(p.name for p in (run.path / "ranks").glob("*.json"))[-2:] == [
        f"{os.uname().nodename}-rank0.json",
        f"{os.uname().nodename}-rank1.json",
    ]
    # ftui stop: the trainer saves and the job ends; the run is stopped, not cancelled.
    code, out, _ = ftui(capsys, "stop", run.id, "--runs-dir", str(cluster))
    assert code == 0 and f"Slurm job {job}" in out
    _wait("the stop", lambda: run.status().get("state") == "stopped")
    stopped_at = _step(run)
    newest = max(int(p.name.split("-")[1]) for p in run.checkpoints.glob("checkpoint-*"))
    assert newest == stopped_at > saved  # the stop saved where it stopped, after the requeue's checkpoint
    _wait("the job to end", lambda: not (slurm.job_state(job, fresh=True) or JobState("COMPLETED")).running)
    assert _summary(capsys, cluster)["state"] == "stopped"
    # ftui resume resubmits: a new job, from the newest complete checkpoint, to the end.
    code, out, err = ftui(capsys, "resume", run.id, "--runs-dir", str(cluster))
    assert code == 0, err
    assert "resubmitted" in out and _job(run) != job
    resumed = f"Slurm job {_job(run)} on n1, n2: training from checkpoint-{newest}"
    _wait("the resumed job", lambda: resumed in _log(run))
    _wait("the end", lambda: run.status().get("state") in ("finished", "failed"))
    row = _wait("the job's end", lambda: (r := _summary(capsys, cluster))["slurm"]["state"] == "COMPLETED" and r)
    assert row["state"] == "finished" and row["step"] == 40 and row["slurm"]["label"] == "completed"
    assert (run.path / "final").is_dir()


def test_a_job_asking_for_more_nodes_than_exist_shows_pending_with_its_reason(capsys, cluster):
    run = _submit(capsys, cluster, "--nodes", "3")
    row = _wait("Slurm's reason", lambda: (r := _summary(capsys, cluster))["slurm"]["reason"] and r)
    assert row["state"] == "queued" and row["slurm"]["state"] == "PENDING"
    assert row["slurm"]["label"] == f"pending ({row['slurm']['reason']})"
    assert "Node" in row["slurm"]["reason"] or "Partition" in row["slurm"]["reason"]
    code, out, _ = ftui(capsys, "stop", run.id, "--runs-dir", str(cluster))
    assert code == 0 and "before it started" in out
    assert _summary(capsys, cluster)["state"] == "stopped"


def test_a_job_cancelled_from_outside_shows_cancelled(capsys, cluster):
    run = _submit(capsys, cluster, "--set", "train.max_steps=400")
    _wait("the first steps", lambda: _step(run) >= 2)
    subprocess.run(["scancel", _job(run)], check=True)
    row = _wait("the cancel", lambda: (r := _summary(capsys, cluster))["slurm"]["state"] == "CANCELLED" and r)
    assert row["state"] == "cancelled" and row["slurm"]["label"] == "cancelled"
    code, _, err = ftui(capsys, "stop", run.id, "--runs-dir", str(cluster))
    assert code == 2 and "cancelled; nothing to stop" in err


def test_a_dry_run_prints_the_batch_script_and_submits_nothing(capsys, cluster):
    code, out, err = ftui(
        capsys,
        "train",
        "tiny-demo",
        "--slurm",
        "--nodes",
        "2",
        "--time",
        "1:00:00",
        "--runs-dir",
        str(cluster),
        "--dry-run",
    )
    assert code == 0, err
    assert "#SBATCH --nodes=2" in out and "#SBATCH --time=1:00:00" in out and "#SBATCH --signal=B:USR1@300" in out
    assert "runner.launch.slurm_job" in out
    assert not cluster.exists() or not list_runs(cluster)


def test_an_unknown_partition_is_refused_with_the_known_ones(capsys, cluster):
    code, _, err = ftui(capsys, "train", "tiny-demo", "--slurm", "--partition", "nope", "--runs-dir", str(cluster))
    assert code == 2 and "no partition 'nope'" in err and "debug" in err


def test_a_hub_model_is_fetched_on_the_login_node_before_the_job_is_submitted(
    capsys,
    cluster,
    hub,
    hf_home,
    tiny_repo_files,  # noqa: F811 (the fixture of test_hub_train)
    recipe,  # noqa: F811
):
    """Compute nodes are often offline: the download happens where `ftui train --slurm` runs, into the
    cache the nodes share, and the job trains from it (its ranks never go online)."""
    hub.add(REPO, files=dict(tiny_repo_files))
    code, out, err = ftui(
        capsys,
        "train",
        str(recipe),
        "--slurm",
        "--runs-dir",
        str(cluster),
        "--set",
        "train.max_steps=4",
        "--set",
        "train.save_steps=4",
        "--set",
        "train.logging_steps=2",
    )
    assert code == 0, err
    assert f"downloading {REPO}" in err and "submitted" in out
    (run,) = list_runs(cluster)
    assert run.launches()[-1]["download"] is None  # nothing left for the job to fetch
    weights = [s for s in hub.seen() if s.method == "GET" and s.path.endswith("/model.safetensors")]
    assert len(weights) == 1
    _wait("the end", lambda: run.status().get("state") in ("finished", "failed"))
    assert run.status()["state"] == "finished", _log(run)[-2000:]


def test_a_run_that_does_not_stop_within_its_grace_is_ended_by_its_job(capsys, cluster):
    """`ftui stop` asks for a checkpoint; a trainer that hangs (here: SIGSTOP) is ended by the job's
    supervisor --stop-grace seconds later, and the run reads stopped, with why."""
    import signal

    run = _submit(capsys, cluster, "--set", "train.max_steps=400", "--stop-grace", "3")
    _wait("the first steps", lambda: _step(run) >= 2)
    ranks = [json.loads(p.read_text())["pid"] for p in (run.path / "ranks").glob("*.json")]
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    code, out, _ = ftui(capsys, "stop", run.id, "--runs-dir", str(cluster))
    assert code == 0 and "ends 3 s after the request" in out
    _wait("the forced end", lambda: run.status().get("state") == "stopped", timeout=120)
    assert "did not stop within 3 s" in run.status()["last_error"]
    _wait("the job's end", lambda: not (slurm.job_state(_job(run), fresh=True) or JobState("COMPLETED")).running)
    assert all(
        not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2] for pid in ranks
    )
