"""Start and resume runs: resolve the recipe, check the plan, write the run directory, launch the
detached supervisor. The CLI and the TUI call these; neither spawns anything itself."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from planner.report import estimate_json
from runner.data.check import check_dataset
from runner.data.records import DataError
from runner.recipe.modelfiles import PYTORCH_BIN, SAFETENSORS, TOKENIZER_VOCAB
from runner.recipe.resolve import Machine, RunSettings, detect_machine, resolve, verdict
from runner.recipe.schema import AUTO, Recipe, RecipeError, apply_overrides, dump_recipe, load_recipe, validate
from runner.rundir.checkpoints import MARKER, checkpoint_bytes, newest_complete
from runner.rundir.lock import LockBusy, acquire_launch
from runner.rundir.runs import (
    ACTIVE,
    RunDir,
    RunError,
    default_runs_dir,
    new_run_dir,
    process_alive,
    process_start_time,
)

from planner.hub import HubError
from runner.data.hub import fetch_dataset, hub_dataset_id

from runner.machine import slurm as slurm_cmd

from .build import LaunchPlan, build_launch, own_port, spawn_detached
from .download import DownloadPlan, check_disk, hub_repo, plan_download
from .slurm import SCRIPT, SlurmRequest, job_machine, job_script, recorded_request, request_json
from .supervise import disk_full_message, free_interrupted_save


class PlanRefused(RuntimeError):
    """The planner says the run will not fit; the message says why and what would."""


@dataclass(frozen=True)
class Started:
    run: RunDir
    settings: RunSettings
    launch: LaunchPlan
    pid: int
    job_id: str | None = None
    """The Slurm job, for a run submitted with --slurm (pid is then 0)."""


def absolute_paths(recipe: Recipe) -> Recipe:
    """Recipe paths made absolute (the resolved recipe is read from the run directory later); a Hub
    data set is fetched here and named by its local file (runner.data.hub)."""
    model_path = recipe.path_of(recipe.model.path)
    model = recipe.model if not model_path.exists() else dataclasses.replace(recipe.model, path=str(model_path))
    d = recipe.dataset
    repo = hub_dataset_id(d.path, recipe.base_dir())
    if repo is not None:
        try:
            local = fetch_dataset(repo, subset=d.subset, split=d.split)
        except (HubError, DataError) as err:
            raise RecipeError(f"{recipe.source or 'recipe'} dataset.path", str(err)) from None
        print(f"ftui: data set {repo} ({d.split}) from the Hub: {local}", file=sys.stderr)
        data = dataclasses.replace(d, path=str(local))
    else:
        data = dataclasses.replace(d, path=str(recipe.path_of(d.path)))
    if isinstance(data.eval_split, str) and data.eval_split != AUTO:
        data = dataclasses.replace(data, eval_split=str(recipe.path_of(data.eval_split)))
    return recipe.but(model=model, dataset=data)


def prepare(
    recipe_path: Path,
    overrides: list[str],
    machine: Machine | None = None,
    *,
    slurm: SlurmRequest | None = None,
    gpu: str | None = None,
) -> RunSettings:
    """Read, override, check and resolve a recipe (nothing is written). With `slurm`, for the nodes
    and GPUs the job asks for on its partition (runner.launch.slurm.job_machine), not this machine."""
    if slurm is not None:
        machine, gpu, extra = job_machine(slurm, gpu)
        overrides = [*extra, *overrides]
    recipe = validate(apply_overrides(load_recipe(recipe_path), overrides))  # before paths: "" is not the recipe's dir
    return resolve(absolute_paths(recipe), machine or detect_machine(), gpu=gpu)


def check_data(settings: RunSettings) -> dict:
    """Load the data set once here, so a bad file fails at launch rather than in the log."""
    recipe = settings.recipe
    try:
        return check_dataset(settings.resolved_recipe().dataset, recipe.base_dir())
    except DataError as err:
        raise RecipeError(f"{recipe.source or 'recipe'} dataset", str(err)) from None


def check_model_files(settings: RunSettings) -> None:
    """A local model directory has what the run loads: a tokenizer, and weights unless the run starts
    from a random initialisation. RecipeError naming what is missing, before anything starts."""
    recipe = settings.recipe
    path = Path(recipe.model.path)
    if not path.is_dir():
        return  # a Hub id: its files are planned by model_download
    where = f"{recipe.source or 'recipe'} model.path"
    if not any((path / name).is_file() for name in TOKENIZER_VOCAB):
        raise RecipeError(
            where,
            f"{path} has no tokenizer ({', '.join(TOKENIZER_VOCAB[:3])}, ...): copy the base model's tokenizer "
            "files next to its config.json",
        )
    if recipe.model.init != "random" and not any(any(path.glob(g)) for g in (*SAFETENSORS, *PYTORCH_BIN)):
        raise RecipeError(
            where,
            f"{path} has no weights (*.safetensors or pytorch_model*.bin): point model.path at the full model, "
            "or set model.init: random to train from its config alone",
        )


def model_download(settings: RunSettings) -> DownloadPlan | None:
    """What the run must fetch from the Hub before training (None: a local model, or random init);
    RecipeError when it cannot come (gated, missing, offline, no room), before anything starts."""
    recipe = settings.recipe
    model = recipe.model
    repo = hub_repo(model.path, recipe.base_dir())
    if repo is None or model.init == "random":
        return None
    try:
        plan = plan_download(repo, model.revision, model.trust_remote_code)
        check_disk(plan)
    except HubError as err:
        raise RecipeError(f"{recipe.source or 'recipe'} model.path", str(err)) from None
    return plan


def checkpoint_bytes_estimate(settings: RunSettings) -> int:
    """Bytes of the weights and optimizer files of one checkpoint of this run: what HF Trainer saves
    (the full model, or the adapter alone) plus the optimizer's states (two AdamW moments per trainable
    parameter; DeepSpeed adds its fp32 master copy), from the planner's parameter count. The tokenizer,
    scheduler, RNG and trainer-state files come on top (a few MB)."""
    from planner.memory import params, widths

    arch = settings.model.arch
    setup = settings.plan.setup if settings.plan is not None else settings.planner_setup()
    pr, w = params(arch, setup), widths(setup)
    saved = pr.adapter * 4 if pr.adapter else pr.total * (4 if settings.precision == "fp32" else 2)
    moments = {"adamw": 2, "sgd": 1}.get(setup.optim, 2)
    optimizer = pr.trainable_base * (moments * w.moment + w.master) + pr.adapter * moments * 4
    # Per tensor the files add a header entry (safetensors) and, for each optimizer state, a pickled
    # record (torch.save: ~300 B with its step counter); they matter only for tiny models.
    base_tensors = pr.tensors if pr.trainable_base else 0
    adapter_tensors = (pr.tensors - params(arch, setup.but(tuner="full")).tensors) if pr.adapter else 0
    trained = base_tensors + adapter_tensors
    return int(saved + optimizer + trained * (100 + (moments + 1) * 300))  # + a few MB of tokenizer and state


def check_checkpoint_room(settings: RunSettings, where: Path) -> None:
    """Room under `where` for the checkpoints the run keeps (save_total_limit of them, plus the one
    being written before the oldest is rotated out); RecipeError saying what to change."""
    keep = settings.recipe.train.save_total_limit + 1
    need = checkpoint_bytes_estimate(settings) * keep
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        one = need / keep
        raise RecipeError(
            f"{settings.recipe.source or 'recipe'} train.save_total_limit",
            f"the checkpoints need about {need / 1e9:.1f} GB ({keep} x {one / 1e9:.1f} GB: save_total_limit "
            f"{keep - 1} plus the one being written) and {probe} has {free / 1e9:.1f} GB free: free "
            f"{(need - free) / 1e9:.1f} GB, lower train.save_total_limit, or choose --runs-dir on a larger disk",
        )


def refusal_message(settings: RunSettings, problems: list[str]) -> str:
    lines = ["the planner says this run will not fit:"] + [f"  - {p}" for p in problems]
    plan = settings.plan
    if plan is not None and plan.max_micro_batch == 0:
        lines.append(
            "  try: ftui plan --model " + settings.model.name + " to see what fits, "
            "or set train.micro_batch/dataset.max_seq_len lower, distributed.zero higher, or tuner qlora"
        )
    elif plan is not None:
        lines.append(f"  try: --set train.micro_batch={plan.max_micro_batch}")
    lines.append("  (or --force to launch anyway)")
    return "\n".join(lines)


def start_run(
    recipe_path: Path,
    overrides: list[str],
    *,
    runs_dir: Path | None = None,
    force: bool = False,
    machine: Machine | None = None,
    python: str = sys.executable,
    slurm: SlurmRequest | None = None,
    gpu: str | None = None,
) -> Started:
    """Create the run directory and launch the run detached (with `slurm`: submit it as a job)."""
    settings = prepare(recipe_path, overrides, machine, slurm=slurm, gpu=gpu)
    check_data(settings)
    ok, problems = verdict(settings)
    if not ok and not force:
        raise PlanRefused(refusal_message(settings, problems))
    check_model_files(settings)
    download = model_download(settings)
    recipe = settings.recipe
    default = recipe.output.dir == "runs"
    root = runs_dir or (default_runs_dir() if default else Path(recipe.output.dir).expanduser())
    check_checkpoint_room(settings, root.expanduser().resolve())
    run = new_run_dir(root, recipe.output.name or Path(recipe_path).stem)
    with run_lock(run) as lock:
        header = f"# resolved by ftui from {recipe_path} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        try:
            run.recipe.write_text(dump_recipe(settings.resolved_recipe(), header))
            if settings.plan is not None:
                run.plan.write_text(json.dumps(estimate_json(settings.plan), indent=2) + "\n")
        except OSError as err:
            raise RunError(_write_failed(run, err)) from None
        if slurm is not None:
            return submit_job(run, settings, slurm, python, download)
        return _launch(run, settings, None, python, lock, download)


@contextmanager
def run_lock(run: RunDir) -> Iterator[int]:
    """Hold the run's launch lock (runner.rundir.lock) for the body; RunError when the run is being
    launched or still has a live process."""
    try:
        fd = acquire_launch(run.path)
    except LockBusy:
        pids = run.live_rank_pids()
        sup = run.supervisor()
        if sup is not None and process_alive(*sup):
            pids = [sup[0], *pids]
        who = f" (pids {', '.join(map(str, pids))})" if pids else " (a launch in progress)"
        raise RunError(
            f"run {run.id} is already running{who}; one run directory takes one launch at a time. "
            f"See it with `ftui runs`, or stop it first: ftui stop {run.id}"
        ) from None
    except OSError as err:
        raise RunError(_write_failed(run, err)) from None
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _no_hangup() -> Iterator[None]:
    """Ignore SIGHUP while a launch is half written (an SSH drop then cannot leave it behind)."""
    try:
        old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    except ValueError:  # not the main thread (the app launches from a worker): nothing to guard
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, old)


def _write_failed(run: RunDir, err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return f"cannot write to {run.path}: the disk is full; {disk_full_message(run).split(': ', 1)[-1]}"
    return f"cannot write to {run.path}: {err.strerror or err}"


def _launch(
    run: RunDir,
    settings: RunSettings,
    resume_from: str | None,
    python: str,
    lock: int,
    download: DownloadPlan | None = None,
) -> Started:
    settings = own_port(settings)
    plan = build_launch(settings, run.path, python=python, resume_from=resume_from)
    with _no_hangup():
        try:
            for tmp in run.path.glob(".*.tmp"):  # what a writer killed mid-write left
                tmp.unlink(missing_ok=True)
            run.record_launch(
                {
                    "argv": list(plan.argv),
                    "env": plan.env,
                    "launcher": plan.launcher,
                    "resume_from": resume_from,
                    "host": socket.gethostname(),
                    "created": time.time(),
                    "markers": True,
                    "download": _download_record(settings, download),
                }
            )
            run.begin_launch_status(len(run.launches()))
            supervisor = LaunchPlan(
                argv=(python, "-m", "runner.launch.supervise", "--run-dir", str(run.path), "--lock-fd", str(lock)),
                env=plan.env,
                files=plan.files,
                launcher=plan.launcher,
            )
            pid, pgid = spawn_detached(supervisor, run.path, keep_fds=(lock,))
            run.update_last_launch(pid=pid, pgid=pgid, start_time=process_start_time(pid))
        except OSError as err:
            raise RunError(_write_failed(run, err)) from None
    return Started(run, settings, plan, pid)


def _download_record(settings: RunSettings, download: DownloadPlan | None) -> dict | None:
    """What the supervisor fetches before training (runner.launch.download), if anything."""
    if download is None or download.complete:
        return None
    return {**download.as_json(), "trust_remote_code": settings.recipe.model.trust_remote_code}


def submit_job(
    run: RunDir,
    settings: RunSettings,
    request: SlurmRequest,
    python: str,
    download: DownloadPlan | None,
    resume_from: str | None = None,
) -> Started:
    """Write RUN_DIR/slurm.sbatch and submit it (runner.launch.slurm); the run is `queued` with the
    job id in launch.json. A refused submission leaves the run `failed` with sbatch's words."""
    if download is not None and not download.complete:
        _fetch_here(run, download)  # compute nodes are often offline, and GPU hours should not wait on it
        download = None
    job = job_script(run.path, settings, request, python)
    script, argv, env = run.path / SCRIPT, job.argv, job.env
    with _no_hangup():
        try:
            script.write_text(job.text, encoding="utf-8")
            record = {
                "request": request_json(request),
                "job_id": None,
                "gpu": settings.plan.cluster.gpu.key if settings.plan is not None else None,
            }
            run.record_launch(
                {
                    "argv": argv,
                    "env": env,
                    "launcher": settings.launcher,
                    # what is newest now; the job itself takes the newest complete one each time it starts
                    "resume_from": resume_from,
                    "host": socket.gethostname(),
                    "created": time.time(),
                    "markers": True,
                    "download": _download_record(settings, download),
                    "slurm": record,
                }
            )
            run.begin_launch_status(len(run.launches()))
        except OSError as err:
            raise RunError(_write_failed(run, err)) from None
        try:
            job = slurm_cmd.submit(argv)
        except slurm_cmd.SlurmError as err:
            run.set_status("failed", phase="done", last_error=str(err), ended=time.time())
            raise RunError(f"{err} (the run directory {run.path} keeps the script)") from None
        run.update_last_launch(slurm={**record, "job_id": job})
        run.set_status("queued", job_id=job)
    return Started(run, settings, LaunchPlan(tuple(argv), env, {}, "slurm"), 0, job)


def _fetch_here(run: RunDir, download: DownloadPlan) -> None:
    """Download a Slurm run's Hub model on this (login) node before submitting, with progress on
    stderr; the cache must be on the filesystem the nodes share, as the run directory is."""
    from .download import fetch

    print(
        f"ftui: downloading {download.repo_id} ({download.missing_bytes / 1e9:.2f} GB) before submitting",
        file=sys.stderr,
    )
    shown = [0.0]

    def progress(done: int, total: int, rate: float) -> None:
        if time.monotonic() - shown[0] >= 5:
            shown[0] = time.monotonic()
            print(f"ftui:   {done / 1e9:.2f}/{total / 1e9:.2f} GB  {rate / 1e6:.0f} MB/s", file=sys.stderr)

    try:
        fetch(download, progress)
    except HubError as err:
        run.set_status("failed", phase="done", last_error=str(err), ended=time.time())
        raise RunError(f"{err} (nothing was submitted)") from None


def resume_run(run: RunDir, *, machine: Machine | None = None, python: str = sys.executable) -> Started:
    """Relaunch `run` from its newest complete checkpoint (same world size)."""
    with run_lock(run) as lock:
        state = run.effective_state(holding_lock=True)  # no other process of the run lives now
        if state in ACTIVE:
            raise RunError(f"run {run.id} is {state}; stop it first (ftui stop {run.id})")
        if state == "finished":
            raise RunError(
                f"run {run.id} finished: it trained all its steps, so there is nothing to resume. "
                f"To train longer, start a new run from {run.recipe} with a larger train.max_steps or train.epochs"
            )
        launches = run.launches()
        request = recorded_request(launches)
        try:
            if request is not None:
                machine, gpu, _ = job_machine(request, launches[-1]["slurm"].get("gpu"))
                settings = resolve(load_recipe(run.recipe), machine, gpu=gpu)
            else:
                settings = resolve(load_recipe(run.recipe), machine or detect_machine())
        except RecipeError as err:
            raise RunError(f"cannot read {run.recipe}: {err}") from None
        except slurm_cmd.SlurmError as err:
            raise RunError(str(err)) from None
        marked = any(entry.get("markers") for entry in launches)
        best, skipped = newest_complete(run.checkpoints, settings.world, require_marker=marked)
        saved = [r for r in skipped if (r.path / MARKER).exists() or not marked]
        if best is None and saved:
            raise RunError(_no_checkpoint(run, settings.world, saved))
        removed = free_interrupted_save(run)
        gone = [name for name in removed if name.startswith("checkpoint-")]
        if gone:
            print(f"ftui: removed what interrupted saves left: {', '.join(gone)}", file=sys.stderr)
        kept = [r for r in skipped if r.path.exists()]
        if kept:
            notes = "; ".join(f"{r.path.name} lacks {', '.join(r.missing)}" for r in kept)
            print(f"ftui: skipping incomplete checkpoints: {notes}", file=sys.stderr)
        need = checkpoint_bytes(run.checkpoints)
        free = shutil.disk_usage(run.path).free
        if need and free < need + need // 10:
            raise RunError(
                f"not enough disk to save the next checkpoint of {run.id}: {free / 1e9:.1f} GB free, "
                f"a checkpoint is {need / 1e9:.1f} GB; free at least {(need + need // 10 - free) / 1e9:.1f} GB "
                "or lower train.save_total_limit, then resume again"
            )
        try:
            download = model_download(settings)
        except RecipeError as err:
            raise RunError(str(err)) from None
        run.stop_request.unlink(missing_ok=True)
        if best is None:  # it ended before its first save finished: nothing to lose by starting over
            print(f"ftui: {run.id} has no finished checkpoint yet; it starts again from step 0", file=sys.stderr)
        if request is not None:
            return submit_job(run, settings, request, python, download, str(best.path) if best else None)
        return _launch(run, settings, str(best.path) if best else None, python, lock, download)


def _no_checkpoint(run: RunDir, world: int, skipped) -> str:
    details = "; ".join(f"{r.path.name} lacks {', '.join(r.missing)}" for r in skipped)
    return f"run {run.id} has no complete checkpoint for {world} process(es): {details}"
