"""Re-plan the runs of a `bench/gpu_check.py` results file with the planner as it is now.

A GPU check measures real runs once; the planner changes after. This sets each measured case
beside what the current planner says for the same settings (the `setup` the run was planned with,
the catalog model, the GPU the check ran on), so a change to the memory or speed model can be
checked against the GPU measurements with no GPU at hand. No torch needed.

    python bench/gpu_replan.py                                   # every bench/results/gpu_check-*.json
    python bench/gpu_replan.py bench/results/gpu_check-2026-12-04-015919-nvidia-h200.json

Columns: measured peak allocated against the planned one; measured NVML used memory of the
training process against `required` (what the fit decision uses: allocated, unavoidable slack,
CUDA context); tokens/s. Error = (planned - measured) / measured.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.catalog import load_config  # noqa: E402
from planner.gpus import gpu_spec, match_nvml_name  # noqa: E402
from planner.hfconfig import architecture_from_config  # noqa: E402
from planner.memory import estimate  # noqa: E402
from planner.setup import Cluster, Setup  # noqa: E402
from planner.throughput import estimate_throughput  # noqa: E402

GIB = 2**30


def err(planned: float | None, measured: float | None) -> str:
    if not planned or not measured:
        return "-"
    return f"{100 * (planned - measured) / measured:+.1f}%"


def replan(case: dict, gpu_name: str | None, memory_mib: int | None) -> dict | None:
    setup_in = (case.get("planned") or {}).get("setup") or (case.get("planned_cli") or {}).get("setup")
    if not setup_in:
        return None
    fields = {f.name for f in dataclasses.fields(Setup)}
    setup = Setup(**{k: v for k, v in setup_in.items() if k in fields})
    config, _ = load_config(case["model"])
    arch = architecture_from_config(config)
    spec = match_nvml_name(gpu_name, memory_mib) if gpu_name else gpu_spec("h200")
    cluster = Cluster(spec, 1, 1)
    mem = estimate(arch, setup, cluster)
    tput = estimate_throughput(arch, setup, cluster, global_batch=setup.micro_batch * (setup.grad_accum or 1))
    return {
        "allocated": mem.peak_allocated / GIB,
        "required": mem.required / GIB,
        "tokens_per_s": tput.tokens_per_s,
    }


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((ROOT / "bench" / "results").glob("gpu_check-*.json"))
    files = [f for f in files if "dry-run" not in f.name]
    if not files:
        print("no gpu_check results files", file=sys.stderr)
        return 2
    print(
        f"{'case':16} {'alloc meas':>10} {'plan':>7} {'err':>7}  {'nvml meas':>9} {'required':>8} {'err':>7}  "
        f"{'tok/s meas':>10} {'plan':>7} {'err':>7}"
    )
    errors: dict[str, list[float]] = {"allocated": [], "required": [], "tokens_per_s": []}
    for f in files:
        report = json.loads(f.read_text())
        gpu = report.get("gpu") or {}
        mib = int(gpu["memory_total_gib"] * 1024) if gpu.get("memory_total_gib") else None
        print(f"# {f.name}: {gpu.get('name')}")
        for case in report.get("cases", []):
            m = case.get("measured") or {}
            if case.get("state") not in ("finished", "stopped") or not m.get("peak_allocated_gib"):
                continue
            p = replan(case, gpu.get("name"), mib)
            if p is None:
                continue
            pairs = (
                ("allocated", p["allocated"], m.get("peak_allocated_gib")),
                ("required", p["required"], m.get("nvml_used_gib")),
                ("tokens_per_s", p["tokens_per_s"], m.get("tokens_per_s")),
            )
            for key, planned, measured in pairs:
                if planned and measured:
                    errors[key].append(100 * (planned - measured) / measured)
            print(
                f"{case['case']:16} {m['peak_allocated_gib']:10.2f} {p['allocated']:7.2f} "
                f"{err(p['allocated'], m['peak_allocated_gib']):>7}  {m.get('nvml_used_gib') or 0:9.2f} "
                f"{p['required']:8.2f} {err(p['required'], m.get('nvml_used_gib')):>7}  "
                f"{m.get('tokens_per_s') or 0:10.0f} {p['tokens_per_s']:7.0f} "
                f"{err(p['tokens_per_s'], m.get('tokens_per_s')):>7}"
            )
    for key, vals in errors.items():
        if vals:
            mae = sum(abs(v) for v in vals) / len(vals)
            print(f"{key}: mean |error| {mae:.1f}% over {len(vals)} runs (from {min(vals):+.1f}% to {max(vals):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
