"""Launch plans: the argv, environment and generated config files that start a training run, and
one thin function that starts them detached from the terminal.

Everything here except `spawn_detached` is a pure builder over `RunSettings` (tests assert on the
lists). Every argv item is its own list element and nothing goes through a shell, so a run
directory called `a b; rm -rf ~` stays one harmless argument.

The training entry point is `python -m runner.train --run-dir RUN_DIR [--resume-from CKPT]`. It
reads RUN_DIR/recipe.yaml and, when ZeRO is on, hands RUN_DIR/ds_config.json to HF
`TrainingArguments(deepspeed=...)`; HF then starts DeepSpeed whichever launcher started the
processes, so every launcher below can run a ZeRO recipe.

Launchers as built here (world = gpus_per_node x nodes):

  python      PY -m runner.train --run-dir RUN_DIR
  torchrun    PY -m torch.distributed.run --nproc_per_node N --standalone -m runner.train ...
              (multi-node: --nnodes K --node_rank R --master_addr A --master_port P instead of
              --standalone; single-node --standalone picks a free port, so two runs on one host
              never collide on 29500)
  accelerate  PY -m accelerate.commands.launch --config_file RUN_DIR/accelerate.yaml -m runner.train ...
              (distributed_type MULTI_GPU even on CPU: MULTI_CPU, like `--cpu`, goes to
              accelerate's simple launcher and silently starts ONE process; MULTI_GPU starts
              torchrun, and HF picks gloo when there is no CUDA)
  deepspeed   PY -m deepspeed.launcher.runner --hostfile RUN_DIR/hostfile --no_ssh --node_rank R
              --master_addr A --master_port P --num_nodes K --num_gpus N --no_local_rank
              --module runner.train ...
              (always with a hostfile and --no_ssh: each node runs its own launcher, as with
              torchrun, with no pdsh/ssh fan-out; an explicit hostfile also stops DeepSpeed from
              picking up a stray /job/hostfile. --no_local_rank: the rank is in LOCAL_RANK, so
              runner.train need not parse --local_rank. When CUDA_VISIBLE_DEVICES is set, it is
              turned into --include, because --num_gpus makes DeepSpeed ignore it.)

Verified on a 2-core CPU machine (torch 2.13 CPU, transformers 5.23, accelerate 1.15,
deepspeed 0.19.8) with a stand-in runner.train that trains a tiny random Llama through HF Trainer
for 4 steps and saves a checkpoint (use_cpu=True; ddp_backend="gloo" when WORLD_SIZE > 1;
deepspeed=RUN_DIR/ds_config.json when present), run from the argv and env of `build_launch`.
Every run reached step 4 on all ranks with world=2 and backend gloo. Env added on CPU:
PYTHONUNBUFFERED=1 PYTHONPATH=<repo> PATH=<venv>/bin:$PATH TOKENIZERS_PARALLELISM=false
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=cores//procs, and with ZeRO: OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
TORCH_EXTENSIONS_DIR=~/.cache/ftui/torch_extensions. Wall time of the whole launch:

  python, 1 process                                                       8.8 s
  torchrun --nproc_per_node 2 --standalone                               16.5 s
  torchrun x2 "nodes" on loopback (--nnodes 2 --node_rank 0|1, 1 proc    22.7 s
    each, --master_addr 127.0.0.1 --master_port 29521; both nodes share
    2 cores with OMP_NUM_THREADS=2 each, hence slower)
  accelerate, MULTI_GPU yaml, num_processes 2                             9.4 s
  accelerate x2 "nodes" on loopback (num_machines 2, --machine_rank 0|1) 12.8 s
  deepspeed ZeRO-2, --num_gpus 2                     first 43.9 s, cached 14.3 s
  deepspeed ZeRO-3                                                 cached 18.8 s
  deepspeed ZeRO-3 + offload optimizer+params        first 71.9 s, cached 23.7 s
    (resumed from checkpoint-4 with --resume-from to step 6: 24.4 s)
  deepspeed ZeRO-2 + offload optimizer                             cached 23.1 s
  deepspeed ZeRO-2 x2 "nodes" on loopback (hostfile node-0/node-1       19.8 s
    slots=1, --no_ssh --node_rank 0|1, --num_nodes 2 --num_gpus 1)
  accelerate + ZeRO-2 (HF deepspeed=, MULTI_GPU yaml)                    17.1 s
  torchrun + ZeRO-3                                                      17.1 s
  python + ZeRO-2 (1 process; MASTER_ADDR/PORT, RANK, LOCAL_RANK,         7.0 s
    WORLD_SIZE from launch_env; without them: "No module named mpi4py")

DeepSpeed JIT-builds its ops with ninja on first use, into TORCH_EXTENSIONS_DIR: on CPU every
ZeRO run needs deepspeed_shm_comm (30-70 s here), offload adds cpu_adam (50-105 s). ZeRO-3 +
offload from an empty directory: 196 s; the next run with the same directory: 25 s. The cache
is only reused when the same ninja binary runs it (a system ninja 1.11 after the venv's 1.13
rebuilt the op): PATH puts the venv's bin first for that reason.

What runner.train must do on CPU (found while verifying): pass use_cpu=True also under DeepSpeed
(with use_cpu=False HF reported world_size 1 while DeepSpeed ran 2 ranks); set ddp_backend="gloo"
only when WORLD_SIZE > 1 (in a single process it makes accelerate query a process group that
does not exist).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from runner.recipe.schema import DEFAULT_MASTER_PORT

if TYPE_CHECKING:
    from runner.recipe.resolve import RunSettings

ENTRY_MODULE = "runner.train"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the `runner` package: the child's cwd and the head of its PYTHONPATH."""
LAUNCHERS = ("python", "torchrun", "accelerate", "deepspeed")


@dataclass(frozen=True)
class LaunchPlan:
    """How to start one run on this node."""

    argv: tuple[str, ...]
    """The command, one element per argument (never a shell string)."""
    env: dict[str, str] = field(default_factory=dict)
    """Only the variables added to or overriding os.environ."""
    files: dict[str, str] = field(default_factory=dict)
    """File name -> text, written into the run directory before the start."""
    launcher: str = "python"


# --- generated configs ---------------------------------------------------------------------


def deepspeed_config(settings: RunSettings) -> dict[str, Any]:
    """The ds_config.json for a ZeRO-1/2/3 run.

    Micro-batch, accumulation, clipping and precision are concrete: HF's integration checks them against
    TrainingArguments and refuses a mismatch, which catches a trainer that drifted from the plan.
    Bucket sizes are HF's `auto` (filled from the model's hidden size). No `scheduler` block: HF's
    own scheduler drives DeepSpeed's optimizer.
    """
    if settings.zero not in (1, 2, 3):
        raise ValueError(f"deepspeed_config needs ZeRO stage 1, 2 or 3, not {settings.zero}")
    gpu = settings.device == "cuda"
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": settings.micro_batch,
        "gradient_accumulation_steps": settings.grad_accum,
        # No train_batch_size: DeepSpeed derives it. Written out, it is checked against the world
        # size each component sees, and on CPU ZeRO-3's zero.Init parses the config before
        # DeepSpeed's comm is up (world 1), so 8 != 2 * 2 * 1 stops the run (seen with 0.19.8).
        "gradient_clipping": settings.recipe.train.max_grad_norm,
        "zero_optimization": _zero_section(settings, gpu),
        "bf16": {"enabled": settings.precision in ("bf16-mixed", "bf16-true")},
        "fp16": _fp16_section(settings.precision == "fp16-mixed"),
        # HF passes its own torch/bnb optimizer unless an `optimizer` block is given.
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if settings.offload != "none":
        if settings.recipe.train.optim == "adamw":
            # ZeRO-Offload refuses a torch optimizer; DeepSpeedCPUAdam (a JIT-built op) steps on the CPU.
            config["optimizer"] = {
                "type": "AdamW",
                "params": {k: "auto" for k in ("lr", "betas", "eps", "weight_decay")},
            }
        else:
            config["zero_force_ds_cpu_optimizer"] = False  # keep the recipe's optimizer, slower on the CPU
    return config


def _zero_section(settings: RunSettings, gpu: bool) -> dict[str, Any]:
    offload = {"device": "cpu", "pin_memory": gpu}  # pinning needs CUDA; the CPU accelerator ignores it
    zero: dict[str, Any] = {
        "stage": settings.zero,
        "overlap_comm": gpu,  # overlaps on CUDA streams; nothing to overlap with on the CPU
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",  # HF: hidden_size**2
    }
    if settings.offload in ("optimizer", "optimizer+params"):
        zero["offload_optimizer"] = dict(offload)
    if settings.zero == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",  # HF: 0.9 * hidden_size**2
                "stage3_param_persistence_threshold": "auto",  # HF: 10 * hidden_size
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "sub_group_size": 1_000_000_000,
                # Checkpoints and the final save hold whole weights, not empty ZeRO-3 shards.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        if settings.offload == "optimizer+params":
            zero["offload_param"] = dict(offload)
    return zero


def _fp16_section(enabled: bool) -> dict[str, Any]:
    if not enabled:
        return {"enabled": False}
    # Dynamic loss scaling (loss_scale 0), DeepSpeed's documented defaults.
    return {
        "enabled": True,
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }


def accelerate_config(settings: RunSettings) -> dict[str, Any]:
    """accelerate.yaml for `accelerate launch --config_file`.

    MULTI_GPU for several processes, on CPU too: it is the type that starts N processes (through
    torchrun); HF then runs gloo when CUDA is absent. MULTI_CPU is only for mpirun-started jobs.
    ZeRO is not configured here: HF Trainer reads ds_config.json itself.
    """
    mixed = {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(settings.precision, "no")
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if settings.world > 1 else "NO",
        "num_processes": settings.world,  # all machines together
        "num_machines": settings.nodes,
        "machine_rank": settings.node_rank,
        "main_process_ip": settings.master_addr,
        "main_process_port": settings.master_port,
        "same_network": True,  # plain --master_addr/--master_port, like torchrun's multi-node form
        "rdzv_backend": "static",
        "gpu_ids": "all",
        "mixed_precision": mixed,
        "use_cpu": settings.device == "cpu",
        "downcast_bf16": "no",
        "debug": False,
    }


def deepspeed_hostfile(settings: RunSettings, slots: int | None = None, names: list[str] | None = None) -> str:
    """A DeepSpeed hostfile naming one host per node: placeholders, or `names` (a Slurm job's nodes,
    from SLURM_JOB_NODELIST).

    With --no_ssh nothing connects to these names: each node's launcher only uses its own line
    (picked by --node_rank) and the slot counts of the others to number the ranks.
    """
    slots = slots or settings.gpus_per_node
    names = names or [f"node-{i}" for i in range(settings.nodes)]
    lines = ["# generated by ftui: one line per node; with --no_ssh the names are labels only"]
    lines += [f"{name} slots={slots}" for name in names[: settings.nodes]]
    return "\n".join(lines) + "\n"


# --- argv ----------------------------------------------------------------------------------


def _entry_args(run_dir: Path, resume_from: str | None) -> list[str]:
    args = ["--run-dir", str(run_dir)]
    if resume_from:
        args += ["--resume-from", os.path.abspath(resume_from)]
    return args


def _torchrun_argv(settings: RunSettings, python: str, entry: list[str]) -> list[str]:
    argv = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(settings.gpus_per_node)]
    if settings.nodes == 1:
        argv += ["--standalone"]
    elif settings.rendezvous_id:
        # c10d: the nodes meet at the first node's store in whatever order they start; the store's host
        # is found by address (and on a loopback test cluster the second "host" falls back to client).
        endpoint = f"{settings.master_addr}:{settings.master_port}"
        argv += ["--nnodes", str(settings.nodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint]
        argv += ["--rdzv_id", settings.rendezvous_id]
    else:
        argv += ["--nnodes", str(settings.nodes), *_rendezvous(settings)]
    return argv + ["-m", ENTRY_MODULE, *entry]


def _rendezvous(settings: RunSettings) -> list[str]:
    """Where this node joins the job: its rank and the master's address and port."""
    return [
        "--node_rank",
        str(settings.node_rank),
        "--master_addr",
        settings.master_addr,
        "--master_port",
        str(settings.master_port),
    ]


def _deepspeed_argv(
    settings: RunSettings, python: str, run_dir: Path, entry: list[str], visible: list[str] | None
) -> tuple[list[str], dict[str, str]]:
    """The deepspeed launcher's argv and the hostfile it needs (none when the recipe names one)."""
    user_hostfile = settings.recipe.distributed.hostfile
    hostfile = settings.recipe.path_of(user_hostfile) if user_hostfile else run_dir / "hostfile"
    argv = [
        python,
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        str(hostfile),
        "--no_ssh",
        *_rendezvous(settings),
    ]
    files: dict[str, str] = {}
    if visible and not user_hostfile:
        # --num_gpus always means ids 0..N-1 and overrides CUDA_VISIBLE_DEVICES; --include keeps them.
        ids = visible[: settings.gpus_per_node]
        files["hostfile"] = deepspeed_hostfile(settings, slots=max(int(i) for i in ids) + 1)
        argv += ["--include", "@".join(f"node-{n}:{','.join(ids)}" for n in range(settings.nodes))]
    else:
        if not user_hostfile:
            files["hostfile"] = deepspeed_hostfile(settings)
        argv += ["--num_nodes", str(settings.nodes), "--num_gpus", str(settings.gpus_per_node)]
    return argv + ["--no_local_rank", "--module", ENTRY_MODULE, *entry], files


def _visible_gpus(settings: RunSettings, environ: Mapping[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as integer ids, when it is set to enough of them (GPU runs only)."""
    raw = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [i.strip() for i in raw.split(",") if i.strip()]
    if settings.device != "cuda" or not ids or not all(i.isdigit() for i in ids):
        return None  # unset, or UUIDs: leave DeepSpeed's numbering alone
    return ids if len(ids) >= settings.gpus_per_node else None


# --- environment ---------------------------------------------------------------------------


def default_extensions_dir(environ: Mapping[str, str]) -> str:
    """Where DeepSpeed's JIT-built ops are cached, shared by every run (the first build takes minutes)."""
    if environ.get("TORCH_EXTENSIONS_DIR"):
        return environ["TORCH_EXTENSIONS_DIR"]
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ftui", "torch_extensions")


def _prepend_path(first: str, rest: str | None) -> str:
    parts = [first] + [p for p in (rest or "").split(os.pathsep) if p and p != first]
    return os.pathsep.join(parts)


def launch_env(settings: RunSettings, python: str, environ: Mapping[str, str], cpu_count: int) -> dict[str, str]:
    """The variables a run adds on top of `environ`."""
    env = {
        "PYTHONUNBUFFERED": "1",  # train.log fills as the run goes, not in 8 KiB blocks
        "PYTHONPATH": _prepend_path(str(PACKAGE_ROOT), environ.get("PYTHONPATH")),
        # The venv's bin first: `ninja` for DeepSpeed's JIT builds may live only there.
        "PATH": _prepend_path(os.path.dirname(os.path.abspath(python)), environ.get("PATH")),
        "TOKENIZERS_PARALLELISM": "false",  # no fork warnings from the tokenizers' thread pool
        "HF_HUB_OFFLINE": "1",  # models and data are local; never block on the network mid-run
    }
    per_process = max(1, cpu_count // max(1, settings.gpus_per_node))
    if settings.device == "cpu":
        # DeepSpeed on CPU: one OpenMP thread per rank, as ARCHITECTURE.md's CPU notes prescribe
        # (not re-measured: on the 2-core verification machine cores // 2 ranks was 1 anyway).
        env["OMP_NUM_THREADS"] = "1" if settings.deepspeed else str(per_process)
    else:
        env["OMP_NUM_THREADS"] = str(per_process)  # CPU Adam under offload uses these threads
        if not (environ.get("PYTORCH_CUDA_ALLOC_CONF") or environ.get("PYTORCH_ALLOC_CONF")):
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"  # less fragmentation at peak
    # CUDA_DEVICE_MAX_CONNECTIONS=1 is a Megatron tensor-parallel knob; for DDP/ZeRO it only
    # serialises communication behind compute, so it is left alone.
    if settings.deepspeed:
        env["TORCH_EXTENSIONS_DIR"] = default_extensions_dir(environ)
        if settings.device == "cpu":
            env["DS_ACCELERATOR"] = "cpu"
    if settings.deepspeed and settings.world == 1 and settings.launcher in ("python", "accelerate"):
        # No launcher sets the rendezvous variables for a single process; DeepSpeed needs them.
        env.update(
            {
                "MASTER_ADDR": settings.master_addr,
                "MASTER_PORT": str(settings.master_port),
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
            }
        )
    return env


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- the plan ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def own_port(settings: RunSettings) -> RunSettings:
    """A one-node run on the default rendezvous port gets a free port of its own, so two runs on
    one machine (two 4-GPU jobs on an 8-GPU node) never meet on 29500; torchrun's --standalone
    does the same. A port the recipe names, and every multi-node port, is kept."""
    if settings.nodes == 1 and settings.master_port == DEFAULT_MASTER_PORT:
        return dataclasses.replace(settings, master_port=free_port())
    return settings


def build_launch(
    settings: RunSettings,
    run_dir: Path,
    python: str = sys.executable,
    resume_from: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cpu_count: int | None = None,
) -> LaunchPlan:
    """The plan that starts `settings` on this node (`environ`, `cpu_count`: injected in tests)."""
    if settings.launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {settings.launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if settings.launcher == "python" and settings.world > 1:
        raise ValueError(f"the python launcher runs one process, {settings.world} asked for; use torchrun")
    environ = os.environ if environ is None else environ
    run_dir = Path(os.path.abspath(run_dir))  # the child runs in PACKAGE_ROOT, not here
    entry = _entry_args(run_dir, resume_from)
    files: dict[str, str] = {}
    if settings.deepspeed:
        files["ds_config.json"] = json.dumps(deepspeed_config(settings), indent=2) + "\n"
    if settings.launcher == "python":
        argv = [python, "-m", ENTRY_MODULE, *entry]
    elif settings.launcher == "torchrun":
        argv = _torchrun_argv(settings, python, entry)
    elif settings.launcher == "accelerate":
        files["accelerate.yaml"] = yaml.safe_dump(accelerate_config(settings), sort_keys=False)
        argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / "accelerate.yaml")]
        if settings.nodes > 1:
            # The flag beats the file: nodes sharing one run directory (a shared filesystem) all
            # write accelerate.yaml, and the last writer's machine_rank must not win for everyone.
            argv += ["--machine_rank", str(settings.node_rank)]
        argv += ["-m", ENTRY_MODULE, *entry]
    else:
        argv, hostfile = _deepspeed_argv(settings, python, run_dir, entry, _visible_gpus(settings, environ))
        files.update(hostfile)
    env = launch_env(settings, python, environ, cpu_count or _usable_cpus())
    return LaunchPlan(tuple(argv), env, files, settings.launcher)


# --- the one process wrapper ---------------------------------------------------------------

# Runs as a short-lived middle process: starts the real command in a new session and exits at
# once, so the command is re-parented to init and never lingers as our zombie (a long-lived TUI
# that launched a run would otherwise keep a dead run looking alive to os.kill(pid, 0)).
_DETACH = (
    "import os, subprocess, sys\n"
    "fd = int(sys.argv[1])\n"
    "keep = tuple(int(x) for x in sys.argv[2].split(',') if x)\n"
    "child = subprocess.Popen(sys.argv[3:], start_new_session=True, close_fds=True, pass_fds=keep)\n"
    "os.write(fd, str(child.pid).encode())\n"
    "os._exit(0)\n"
)


def spawn_detached(plan: LaunchPlan, run_dir: Path, keep_fds: tuple[int, ...] = ()) -> tuple[int, int]:
    """Write plan.files into run_dir and start plan.argv in its own session; returns (pid, pgid).

    stdin is /dev/null, stdout and stderr append to run_dir/train.log, the environment is
    os.environ + plan.env, the working directory is the package root; `keep_fds` stay open, with
    the same numbers, in the command (the run lock). Does not wait for the run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in plan.files.items():
        (run_dir / name).write_text(text, encoding="utf-8")
    env = {**os.environ, **plan.env}
    env["PYTHONPATH"] = _prepend_path(str(PACKAGE_ROOT), env.get("PYTHONPATH"))
    read_end, write_end = os.pipe()
    try:
        with open(os.devnull, "rb") as stdin, open(run_dir / "train.log", "ab") as log:
            middle = subprocess.Popen(
                [sys.executable, "-c", _DETACH, str(write_end), ",".join(map(str, keep_fds)), *plan.argv],
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=PACKAGE_ROOT,
                close_fds=True,
                pass_fds=(write_end, *keep_fds),
            )
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            pid_text = pipe.read().decode()
        middle.wait()  # exits right after starting the command
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    if not pid_text.strip():
        raise OSError(f"could not start {plan.argv[0]} (exit {middle.returncode}); see {run_dir / 'train.log'}")
    pid = int(pid_text)
    try:
        return pid, os.getpgid(pid)
    except ProcessLookupError:  # already gone; start_new_session made it its own group leader
        return pid, pid
