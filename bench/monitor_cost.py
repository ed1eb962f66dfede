"""What does watching a run cost, and how fresh is what the monitor shows?

A writer process appends a metrics line every 100 ms to a run directory (as a training run's rank 0
does, one JSON object per line) and a line to its train.log (as the trainer prints). The real
`ftui monitor RUN` runs in a tmux terminal (as over SSH) and watches it. Measured over the
window, side by side in one run:

- CPU of the app process (user + system from /proc, all its threads) as a share of one core;
- write -> on-screen latency: the terminal is captured every 20 ms; for each line written, the
  first time the monitor's header showed that step or a newer one, minus the time it was written.

Targets: <= 3 % of one core, <= 1 s.

    python bench/monitor_cost.py [--seconds 60] [--interval 0.1] [--nvml 1xa100]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes import find_recipe  # noqa: E402
from runner.rundir.runs import new_run_dir  # noqa: E402

WRITER = r"""
import json, sys, time
path, logpath, interval, total = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
start = time.time()
with open(path, "a") as out, open(logpath, "a") as trainlog, open(path + ".written", "w") as log:
    for step in range(1, total + 1):
        due = start + step * interval
        time.sleep(max(0.0, due - time.time()))
        now = time.time()
        record = {"step": step, "total_steps": total, "epoch": step / total, "loss": 2.0 / (1 + step / 200),
                  "eval_loss": None, "lr": 1e-4, "grad_norm": 0.5, "tokens": step * 4096,
                  "tokens_per_s": 40960.0, "samples_per_s": 20.0, "elapsed_s": now - start,
                  "eta_s": (total - step) * interval, "time": now,
                  "mem": {"0": {"allocated_gib": 10.0, "reserved_gib": 12.0}}}
        out.write(json.dumps(record) + "\n")
        out.flush()
        trainlog.write(str({"loss": round(record["loss"], 4), "grad_norm": 0.5, "learning_rate": 1e-4,
                            "epoch": round(record["epoch"], 4)}) + "\n")
        trainlog.flush()
        log.write(f"{step} {now}\n")
        log.flush()
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window (default 60)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between metrics lines (default 0.1)")
    parser.add_argument("--nvml", default="1xa100", help="fake NVML scenario for the GPU pane (default 1xa100)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    args = parser.parse_args()

    tmux = shutil.which("tmux")
    if tmux is None:
        print("monitor_cost: needs tmux (the app runs in a real terminal)", file=sys.stderr)
        return 2
    ftui = Path(sys.executable).parent / "ftui"
    app_argv = [str(ftui)] if ftui.exists() else [sys.executable, "-c", "'from tui.cli import main; main()'"]

    with tempfile.TemporaryDirectory(prefix="ftui-monitor-cost-") as tmp:
        root = Path(tmp) / "runs"
        run = new_run_dir(root, "bench")
        run.recipe.write_text(find_recipe("tiny-demo").read_text())  # what the run says it trains
        run.set_status("running")
        metrics = run.path / "metrics.jsonl"
        metrics.touch()
        total = int((args.warmup + args.seconds + 10) / args.interval)

        socket = f"ftui-bench-{os.getpid()}"
        base = [tmux, "-L", socket, "-f", os.devnull]
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        app_env = f"TERM=xterm-256color FTUI_FAKE_NVML={args.nvml} FTUI_RUNS_DIR={root}"
        command = f"{app_env} exec {' '.join(app_argv)} monitor {run.id} --runs-dir {root}"
        subprocess.run([*base, "new-session", "-d", "-s", "b", "-x", "120", "-y", "36", command], check=True, env=env)
        writer = None
        try:
            pid = int(
                subprocess.run(
                    [*base, "display", "-p", "-t", "b", "#{pane_pid}"],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                ).stdout
            )
            deadline = time.time() + 30
            while "bench" not in capture(base, env):
                if time.time() > deadline:
                    print("monitor_cost: the app did not start; screen:\n" + capture(base, env), file=sys.stderr)
                    return 1
                time.sleep(0.1)

            writer = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WRITER,
                    str(metrics),
                    str(run.path / "train.log"),
                    str(args.interval),
                    str(total),
                ]
            )
            seen: dict[int, float] = {}
            t_end_warm = time.time() + args.warmup
            cpu0 = t0 = None
            while True:
                now = time.time()
                if cpu0 is None and now >= t_end_warm:
                    cpu0, t0, threads0 = cpu_seconds(pid), time.monotonic(), thread_cpu(pid)
                if t0 is not None and time.monotonic() - t0 >= args.seconds:
                    cpu1, t1, threads1 = cpu_seconds(pid), time.monotonic(), thread_cpu(pid)
                    break
                found = re.search(r"step (\d+)/\d+", capture(base, env))
                if found:
                    seen.setdefault(int(found.group(1)), time.time())
                time.sleep(0.02)
        finally:
            if writer is not None:
                writer.kill()
            subprocess.run([*base, "kill-server"], check=False, env=env)

        written = {}
        for line in Path(str(metrics) + ".written").read_text().splitlines():
            step, at = line.split()
            written[int(step)] = float(at)
        # For every line written while the screen was watched: the first time a step at least as
        # new was on screen. (The monitor shows the newest step, so older lines never show alone.)
        shown = sorted(seen.items())
        lat = []
        for step, at in sorted(written.items()):
            later = [t for s, t in shown if s >= step and t >= at]
            if later and at >= min(seen.values()):
                lat.append(min(later) - at)
        lat.sort()
        cpu_share = (cpu1 - cpu0) / (t1 - t0)

    print(
        f"monitor_cost: {args.seconds:.0f} s window, a metrics line every {args.interval * 1000:.0f} ms, "
        f"GPU pane on fake NVML '{args.nvml}'"
    )
    print(
        f"  app CPU: {cpu_share * 100:.2f} % of one core ({cpu1 - cpu0:.2f} s CPU in {t1 - t0:.1f} s)   target <= 3 %"
    )
    main_thread = threads1.get(pid, 0.0) - threads0.get(pid, 0.0)
    others = sum(threads1.values()) - sum(threads0.values()) - main_thread
    print(
        f"           main thread (event loop, rendering) {main_thread:.2f} s, "
        f"other threads (readers, terminal writer) {others:.2f} s"
    )
    if lat:
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(
            f"  write -> screen: median {statistics.median(lat) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
            f"max {lat[-1] * 1000:.0f} ms over {len(lat)} lines ({len(seen)} screen updates)   target <= 1000 ms"
        )
    else:
        print("  write -> screen: no step was seen on screen")
        return 1
    ok = cpu_share <= 0.03 and lat[-1] <= 1.0
    print("  within targets" if ok else "  OUTSIDE targets")
    return 0


def capture(base: list[str], env: dict[str, str]) -> str:
    return subprocess.run([*base, "capture-pane", "-p", "-t", "b"], capture_output=True, text=True, env=env).stdout


if __name__ == "__main__":
    raise SystemExit(main())
