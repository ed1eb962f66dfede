"""runner.launch.build: pure argv/env/config builders (asserted on the lists) and one real detached spawn."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from runner.launch.build import (
    ENTRY_MODULE,
    PACKAGE_ROOT,
    LaunchPlan,
    accelerate_config,
    build_launch,
    deepspeed_config,
    spawn_detached,
)
from runner.recipe.schema import Recipe, parse_recipe
from runner.rundir.runs import RunDir
from runner.recipe.resolve import Machine, RunSettings, resolve

PY = "/opt/venv/bin/python"
RUN = Path("/srv/runs/demo-001")
ENV = {"HOME": "/home/u", "PATH": "/usr/bin:/bin"}


def make(**changes) -> RunSettings:
    """RunSettings with every field concrete (launch reads no planner output)."""
    values = dict(
        recipe=Recipe(),
        model=None,
        device="cpu",
        launcher="torchrun",
        gpus_per_node=2,
        nodes=1,
        node_rank=0,
        master_addr="10.0.0.1",
        master_port=29500,
        zero=0,
        offload="none",
        precision="fp32",
        attn="sdpa",
        micro_batch=2,
        grad_accum=4,
        lr=1e-4,
        grad_ckpt=False,
        max_seq_len=512,
        plan=None,
    )
    values.update(changes)
    return RunSettings(**values)


def plan_for(settings: RunSettings, *, environ=None, cpu_count=8, **kwargs) -> LaunchPlan:
    return build_launch(
        settings, RUN, python=PY, environ=ENV if environ is None else environ, cpu_count=cpu_count, **kwargs
    )


def entry_tail(run_dir: Path = RUN) -> list[str]:
    return ["-m", ENTRY_MODULE, "--run-dir", str(run_dir)]


# --- the whole matrix: invariants every plan keeps -----------------------------------------

ZERO_OFFLOAD = [
    (0, "none"),
    (1, "none"),
    (2, "none"),
    (2, "optimizer"),
    (3, "none"),
    (3, "optimizer"),
    (3, "optimizer+params"),
]
MATRIX = [
    (launcher, nodes, device, zero, offload)
    for launcher, nodes, device, (zero, offload) in itertools.product(
        ("python", "torchrun", "accelerate", "deepspeed"), (1, 2), ("cpu", "cuda"), ZERO_OFFLOAD
    )
    if not (launcher == "python" and nodes > 1)
]


@pytest.mark.parametrize("launcher,nodes,device,zero,offload", MATRIX)
def test_every_plan_is_a_list_of_plain_arguments_ending_in_the_entry_point(launcher, nodes, device, zero, offload):
    gpus = 1 if launcher == "python" else 2
    settings = make(
        launcher=launcher,
        nodes=nodes,
        node_rank=nodes - 1,
        device=device,
        zero=zero,
        offload=offload,
        gpus_per_node=gpus,
        precision="bf16-mixed" if device == "cuda" else "fp32",
    )
    plan = plan_for(settings)
    assert plan.launcher == launcher
    assert plan.argv[0] == PY and all(isinstance(a, str) and a for a in plan.argv)
    assert not [a for a in plan.argv if " " in a], "an argument holds a space-joined command"
    module_flag = "--module" if launcher == "deepspeed" else "-m"
    assert list(plan.argv[-4:]) == [module_flag, *entry_tail()[1:]]
    assert ("ds_config.json" in plan.files) == (zero > 0)
    assert ("accelerate.yaml" in plan.files) == (launcher == "accelerate")
    assert ("hostfile" in plan.files) == (launcher == "deepspeed")
    assert plan.env["PYTHONUNBUFFERED"] == "1" and plan.env["HF_HUB_OFFLINE"] == "1"
    assert plan.env["TOKENIZERS_PARALLELISM"] == "false"
    assert int(plan.env["OMP_NUM_THREADS"]) >= 1
    assert ("TORCH_EXTENSIONS_DIR" in plan.env) == (zero > 0)
    assert ("PYTORCH_CUDA_ALLOC_CONF" in plan.env) == (device == "cuda")
    assert (plan.env.get("DS_ACCELERATOR") == "cpu") == (device == "cpu" and zero > 0)
    assert "HOME" not in plan.env, "env holds only what the run adds, not a copy of os.environ"
    if zero:
        config = json.loads(plan.files["ds_config.json"])
        assert config["zero_optimization"]["stage"] == zero
        assert ("offload_optimizer" in config["zero_optimization"]) == (offload != "none")
        assert ("offload_param" in config["zero_optimization"]) == (offload == "optimizer+params")


# --- python and torchrun -------------------------------------------------------------------


def test_python_launcher_runs_the_entry_module_directly():
    plan = plan_for(make(launcher="python", gpus_per_node=1))
    assert list(plan.argv) == [PY, *entry_tail()]
    assert "RANK" not in plan.env  # a plain single process needs no rendezvous


def test_python_launcher_refuses_several_processes():
    with pytest.raises(ValueError, match="use torchrun"):
        plan_for(make(launcher="python", gpus_per_node=2))


def test_unknown_launcher_is_named():
    with pytest.raises(ValueError, match="'mpirun'"):
        plan_for(make(launcher="mpirun"))


def test_single_process_deepspeed_gets_the_rendezvous_variables_no_launcher_sets():
    # Without them DeepSpeed falls back to MPI discovery and dies on `import mpi4py`.
    plan = plan_for(make(launcher="python", gpus_per_node=1, zero=2, master_port=29611))
    assert {k: plan.env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")} == {
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29611",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    assert "RANK" not in plan_for(make(launcher="torchrun", zero=2)).env


def test_torchrun_single_node_is_standalone():
    plan = plan_for(make(launcher="torchrun", gpus_per_node=2))
    assert list(plan.argv) == [
        PY,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        *entry_tail(),
    ]


def test_torchrun_multi_node_names_the_rank_and_the_master():
    plan = plan_for(make(launcher="torchrun", gpus_per_node=8, nodes=4, node_rank=3, master_port=29555))
    assert list(plan.argv) == [
        PY,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "8",
        "--nnodes",
        "4",
        "--node_rank",
        "3",
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29555",
        *entry_tail(),
    ]
    assert "--standalone" not in plan.argv


# --- accelerate ----------------------------------------------------------------------------


def test_accelerate_argv_points_at_the_generated_config():
    plan = plan_for(make(launcher="accelerate"))
    assert list(plan.argv) == [
        PY,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(RUN / "accelerate.yaml"),
        *entry_tail(),
    ]


def test_accelerate_on_cpu_uses_the_type_that_really_starts_n_processes():
    # MULTI_CPU (like `accelerate launch --cpu`) goes to the simple launcher: ONE process.
    config = yaml.safe_load(plan_for(make(launcher="accelerate", device="cpu")).files["accelerate.yaml"])
    assert config["distributed_type"] == "MULTI_GPU"
    assert config["num_processes"] == 2 and config["use_cpu"] is True
    assert config["mixed_precision"] == "no"


def test_accelerate_single_process_is_not_distributed():
    config = accelerate_config(make(launcher="accelerate", gpus_per_node=1))
    assert config["distributed_type"] == "NO" and config["num_processes"] == 1


def test_accelerate_multi_node_config_counts_every_process():
    settings = make(
        launcher="accelerate",
        device="cuda",
        gpus_per_node=4,
        nodes=2,
        node_rank=1,
        precision="bf16-mixed",
        master_port=29600,
    )
    config = accelerate_config(settings)
    assert {
        k: config[k]
        for k in (
            "num_processes",
            "num_machines",
            "machine_rank",
            "main_process_ip",
            "main_process_port",
            "mixed_precision",
            "use_cpu",
        )
    } == {
        "num_processes": 8,
        "num_machines": 2,
        "machine_rank": 1,
        "main_process_ip": "10.0.0.1",
        "main_process_port": 29600,
        "mixed_precision": "bf16",
        "use_cpu": False,
    }


def test_accelerate_multi_node_machine_rank_survives_a_shared_run_directory():
    # Regression: two nodes sharing one run dir overwrote accelerate.yaml, both read machine_rank 1
    # and waited for rank 0 forever. The flag on each node's command line wins over the file.
    plan = plan_for(make(launcher="accelerate", nodes=2, node_rank=0))
    i = plan.argv.index("--machine_rank")
    assert plan.argv[i + 1] == "0" and i < plan.argv.index("-m", 3)
    assert "--machine_rank" not in plan_for(make(launcher="accelerate")).argv


@pytest.mark.parametrize(
    "precision,mixed", [("bf16-mixed", "bf16"), ("fp16-mixed", "fp16"), ("bf16-true", "no"), ("fp32", "no")]
)
def test_accelerate_mixed_precision_follows_the_precision(precision, mixed):
    assert accelerate_config(make(launcher="accelerate", precision=precision))["mixed_precision"] == mixed


# --- deepspeed launcher --------------------------------------------------------------------


def test_deepspeed_single_node_argv():
    plan = plan_for(make(launcher="deepspeed", zero=2, master_port=29501))
    assert list(plan.argv) == [
        PY,
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        str(RUN / "hostfile"),
        "--no_ssh",
        "--node_rank",
        "0",
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29501",
        "--num_nodes",
        "1",
        "--num_gpus",
        "2",
        "--no_local_rank",
        "--module",
        ENTRY_MODULE,
        "--run-dir",
        str(RUN),
    ]
    assert plan.files["hostfile"].splitlines()[1:] == ["node-0 slots=2"]


def test_deepspeed_multi_node_writes_one_hostfile_line_per_node():
    plan = plan_for(
        make(launcher="deepspeed", zero=3, gpus_per_node=8, nodes=3, node_rank=2, device="cuda", precision="bf16-mixed")
    )
    argv = list(plan.argv)
    assert argv[argv.index("--node_rank") + 1] == "2"
    assert argv[argv.index("--num_nodes") + 1] == "3" and argv[argv.index("--num_gpus") + 1] == "8"
    lines = [line for line in plan.files["hostfile"].splitlines() if not line.startswith("#")]
    assert lines == ["node-0 slots=8", "node-1 slots=8", "node-2 slots=8"]


def test_deepspeed_uses_the_recipes_hostfile_relative_to_the_recipe(tmp_path):
    recipe = parse_recipe("distributed: {hostfile: hosts.txt}\n", source=str(tmp_path / "r.yaml"))
    plan = plan_for(make(launcher="deepspeed", zero=2, nodes=2, recipe=recipe))
    argv = list(plan.argv)
    assert argv[argv.index("--hostfile") + 1] == str(tmp_path / "hosts.txt")
    assert "hostfile" not in plan.files


def test_deepspeed_keeps_cuda_visible_devices_that_num_gpus_would_override():
    settings = make(launcher="deepspeed", zero=2, device="cuda", precision="bf16-mixed", nodes=2)
    plan = plan_for(settings, environ={**ENV, "CUDA_VISIBLE_DEVICES": "2,5"})
    argv = list(plan.argv)
    assert argv[argv.index("--include") + 1] == "node-0:2,5@node-1:2,5"
    assert "--num_gpus" not in argv and "--num_nodes" not in argv
    assert "node-1 slots=6" in plan.files["hostfile"]  # every included id must exist as a slot


def test_deepspeed_on_cpu_ignores_cuda_visible_devices():
    plan = plan_for(make(launcher="deepspeed", zero=2), environ={**ENV, "CUDA_VISIBLE_DEVICES": "3"})
    assert "--include" not in plan.argv and "--num_gpus" in plan.argv


# --- ds_config.json ------------------------------------------------------------------------


def ds(**changes) -> dict:
    config = deepspeed_config(make(launcher="deepspeed", **changes))
    json.dumps(config)  # it is written as JSON
    return config


def test_ds_config_refuses_stage_0():
    with pytest.raises(ValueError, match="stage 1, 2 or 3"):
        ds(zero=0)


def test_ds_config_batch_and_clipping_match_the_settings():
    recipe = Recipe().set("train.max_grad_norm", 0.5)
    config = ds(zero=2, micro_batch=3, grad_accum=7, recipe=recipe)
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 7
    assert config["gradient_clipping"] == 0.5


def test_ds_config_leaves_train_batch_size_to_deepspeed():
    # Regression: a written train_batch_size (8 for 2x2x2) stopped ZeRO-3 on CPU, because
    # zero.Init parses the config before DeepSpeed's comm is up and sees world size 1.
    assert "train_batch_size" not in ds(zero=3)


@pytest.mark.parametrize(
    "precision,bf16,fp16",
    [("bf16-mixed", True, False), ("bf16-true", True, False), ("fp16-mixed", False, True), ("fp32", False, False)],
)
def test_ds_config_precision_blocks(precision, bf16, fp16):
    config = ds(zero=2, precision=precision)
    assert config["bf16"]["enabled"] is bf16 and config["fp16"]["enabled"] is fp16
    if fp16:
        assert config["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_ds_config_stage_2_with_optimizer_offload():
    config = ds(zero=2, offload="optimizer", device="cuda")
    zero = config["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in zero and "stage3_prefetch_bucket_size" not in zero
    assert config["optimizer"]["type"] == "AdamW"
    assert set(config["optimizer"]["params"].values()) == {"auto"}  # HF fills them from TrainingArguments
    assert "scheduler" not in config  # HF's scheduler drives DeepSpeed's optimizer


def test_ds_config_stage_3_with_parameter_offload():
    zero = ds(zero=3, offload="optimizer+params")["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}  # no pinning without CUDA
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["stage3_prefetch_bucket_size"] == "auto" and zero["stage3_param_persistence_threshold"] == "auto"


def test_ds_config_without_offload_keeps_the_trainers_optimizer():
    config = ds(zero=3)
    assert "optimizer" not in config and "offload_optimizer" not in config["zero_optimization"]
    assert config["zero_allow_untested_optimizer"] is True
    assert config["zero_optimization"]["reduce_bucket_size"] == "auto"


def test_ds_config_offload_with_a_non_adam_optimizer_keeps_it():
    config = ds(zero=2, offload="optimizer", recipe=Recipe().set("train.optim", "adafactor"))
    assert "optimizer" not in config and config["zero_force_ds_cpu_optimizer"] is False


def test_ds_config_overlaps_communication_only_on_gpu():
    assert ds(zero=2, device="cuda")["zero_optimization"]["overlap_comm"] is True
    assert ds(zero=2, device="cpu")["zero_optimization"]["overlap_comm"] is False


# --- environment ---------------------------------------------------------------------------


def test_cpu_threads_are_split_between_the_processes_of_a_node():
    assert plan_for(make(gpus_per_node=2, nodes=4), cpu_count=16).env["OMP_NUM_THREADS"] == "8"
    assert plan_for(make(gpus_per_node=4), cpu_count=2).env["OMP_NUM_THREADS"] == "1"
    assert plan_for(make(gpus_per_node=2, device="cuda"), cpu_count=32).env["OMP_NUM_THREADS"] == "16"


def test_deepspeed_on_cpu_runs_one_thread_per_rank_on_the_cpu_accelerator():
    env = plan_for(make(launcher="deepspeed", zero=2), cpu_count=64).env
    assert env["OMP_NUM_THREADS"] == "1" and env["DS_ACCELERATOR"] == "cpu"


def test_extensions_dir_is_shared_and_overridable():
    settings = make(launcher="deepspeed", zero=2)
    assert plan_for(settings).env["TORCH_EXTENSIONS_DIR"] == "/home/u/.cache/ftui/torch_extensions"
    assert (
        plan_for(settings, environ={**ENV, "XDG_CACHE_HOME": "/c"}).env["TORCH_EXTENSIONS_DIR"]
        == "/c/ftui/torch_extensions"
    )
    assert plan_for(settings, environ={**ENV, "TORCH_EXTENSIONS_DIR": "/x/ext"}).env["TORCH_EXTENSIONS_DIR"] == "/x/ext"


def test_gpu_allocator_setting_respects_the_users_own():
    settings = make(device="cuda", precision="bf16-mixed")
    assert plan_for(settings).env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    for key in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        assert "PYTORCH_CUDA_ALLOC_CONF" not in plan_for(settings, environ={**ENV, key: "max_split_size_mb:128"}).env


def test_child_finds_the_runner_package_and_the_venvs_tools():
    env = plan_for(make(), environ={**ENV, "PYTHONPATH": "/extra"}).env
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PACKAGE_ROOT), "/extra"]
    assert env["PATH"].split(os.pathsep) == ["/opt/venv/bin", "/usr/bin", "/bin"]  # ninja for JIT builds


# --- run dir and resume --------------------------------------------------------------------


def test_resume_adds_the_checkpoint_after_the_run_dir():
    plan = plan_for(make(launcher="deepspeed", zero=2), resume_from="/srv/runs/demo-001/checkpoints/checkpoint-200")
    assert list(plan.argv[-5:]) == [*entry_tail()[1:], "--resume-from", "/srv/runs/demo-001/checkpoints/checkpoint-200"]
    assert "--resume-from" not in plan_for(make()).argv


def test_relative_paths_become_absolute_because_the_child_runs_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = build_launch(
        make(launcher="python", gpus_per_node=1),
        Path("runs/r1"),
        python=PY,
        environ=ENV,
        cpu_count=2,
        resume_from="runs/r1/checkpoints/checkpoint-5",
    )
    assert list(plan.argv[-4:]) == [
        "--run-dir",
        str(tmp_path / "runs/r1"),
        "--resume-from",
        str(tmp_path / "runs/r1/checkpoints/checkpoint-5"),
    ]


def test_a_hostile_run_dir_stays_one_argument():
    weird = Path("/tmp/a b; rm -rf ~ $(x)")
    plan = build_launch(make(), weird, python=PY, environ=ENV, cpu_count=2)
    assert plan.argv[plan.argv.index("--run-dir") + 1] == str(weird)


def test_plan_from_a_resolved_recipe():
    recipe = parse_recipe(
        textwrap.dedent("""\
        model: {path: llama-3.2-1b}
        dataset: {path: data.jsonl}
        tuner: full
        distributed: {gpus: 2, zero: 3, offload: optimizer+params}
        """)
    )
    settings = resolve(recipe, Machine())
    plan = build_launch(settings, RUN, python=PY, environ=ENV, cpu_count=4)
    assert plan.launcher == "deepspeed" and "--num_gpus" in plan.argv
    config = json.loads(plan.files["ds_config.json"])
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config["gradient_accumulation_steps"] == settings.grad_accum


def test_importing_launch_loads_no_training_library():
    code = (
        "import sys, runner.launch.build; print(','.join(m for m in ('torch', 'deepspeed', 'accelerate', "
        "'transformers') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# --- the real spawn ------------------------------------------------------------------------


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _stop(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass


CHILD = textwrap.dedent("""\
    import os, sys, time
    print("stdin", repr(sys.stdin.read()), "cwd", os.getcwd(), "mark", os.environ.get("FTUI_TEST_MARK"), flush=True)
    print("path0", os.environ["PYTHONPATH"].split(os.pathsep)[0], flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1], "w").write("done")
    """)


def test_spawn_detached_starts_its_own_session_and_logs_to_train_log(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("earlier line\n")
    marker = tmp_path / "marker"
    plan = LaunchPlan(
        argv=(sys.executable, "-c", CHILD, str(marker), "1"),
        env={"FTUI_TEST_MARK": "hello"},
        files={"ds_config.json": "{}\n"},
        launcher="python",
    )
    pid, pgid = spawn_detached(plan, run_dir)
    try:
        assert pgid == pid and os.getpgid(pid) == pid and os.getsid(pid) == pid
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # not our child: it never lingers as our zombie
        assert (run_dir / "ds_config.json").read_text() == "{}\n"
        assert _wait_for(marker.exists), "the detached program never finished"
        log = (run_dir / "train.log").read_text()
        assert log.startswith("earlier line\n")  # appended, not truncated
        assert f"stdin '' cwd {PACKAGE_ROOT} mark hello" in log
        assert f"path0 {PACKAGE_ROOT}" in log and "to stderr" in log
    finally:
        _stop(pgid)


def test_spawned_run_outlives_the_process_that_started_it(tmp_path):
    marker = tmp_path / "marker"
    starter = textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        from runner.launch.build import LaunchPlan, spawn_detached
        plan = LaunchPlan(argv=(sys.executable, "-c", {CHILD!r}, {str(marker)!r}, "1.5"), launcher="python")
        pid, pgid = spawn_detached(plan, Path({str(tmp_path / "run")!r}))
        print(pid, pgid)
        """)
    proc = subprocess.run([sys.executable, "-c", starter], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pid, pgid = map(int, proc.stdout.split())
    try:
        assert not marker.exists()
        os.kill(pid, 0)  # still running after its starter exited
        assert _wait_for(marker.exists), "the run died with its starter"
    finally:
        _stop(pgid)


def test_spawn_failure_says_where_to_look(tmp_path):
    plan = LaunchPlan(argv=(str(tmp_path / "no-such-python"), "-c", "pass"), launcher="python")
    with pytest.raises(OSError, match="train.log"):
        spawn_detached(plan, tmp_path / "run")
    assert "no-such-python" in (tmp_path / "run" / "train.log").read_text()


# --- entry modules ---------------------------------------------------------------------------

PRE_WING_LAUNCH = {
    "launches": [
        {
            "argv": ["/usr/bin/python3", "-m", "runner.train", "--run-dir", "/runs/tiny-demo-1"],
            "env": {"PYTHONUNBUFFERED": "1"},
            "launcher": "python",
            "resume_from": None,
            "host": "node-1",
            "created": 1764000000.0,
            "pid": 4242,
            "pgid": 4242,
            "start_time": 123,
        }
    ]
}
"""launch.json as ftui wrote it before runner/ was split into wings (runner/train.py was a module)."""


@pytest.mark.parametrize(
    ("module", "prog"), [(ENTRY_MODULE, "python -m runner.train"), ("runner.launch.supervise", "supervise")]
)
def test_every_python_m_entry_runs_under_its_path_from_any_directory(tmp_path, module, prog):
    # The launchers start these by module name, from the run's cwd with PACKAGE_ROOT on PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert prog in proc.stdout and "--run-dir" in proc.stdout
    assert "torch" not in proc.stderr


def test_a_launch_record_from_before_the_wings_names_a_module_that_still_runs(tmp_path):
    # Resume rebuilds the argv from the recipe; the old record's module must still be the entry point
    # (the supervisor's module was never recorded), so `ftui resume` of an old run directory needs nothing.
    run = tmp_path / "tiny-demo-1"
    run.mkdir()
    (run / "launch.json").write_text(json.dumps(PRE_WING_LAUNCH))
    argv = RunDir(run).launches()[-1]["argv"]
    module = argv[argv.index("-m") + 1]
    assert module == ENTRY_MODULE
    for launcher in ("python", "torchrun", "accelerate"):
        settings = make(launcher=launcher, gpus_per_node=1 if launcher == "python" else 2)
        new = plan_for(settings, resume_from=str(run / "checkpoints" / "checkpoint-6"))
        assert list(new.argv[-6:-2]) == ["-m", module, "--run-dir", str(RUN)]
