"""bench/gpu_check.py on the CPU: its --dry-run runs the whole pipeline (catalog config -> model dir
with the tiny tokenizer -> recipe -> real detached `ftui train --attach` -> plan and measurements ->
table and JSON) on 2-layer versions of the configs; the parts only a GPU run reaches (NVML sampling,
CUDA peaks, the run's plan.json) are checked on stand-ins."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest

from conftest import REPO, kill_runs

SCRIPT = REPO / "bench" / "gpu_check.py"
CASES = ("full-1.5b", "lora-8b-2k")
"""The two cheapest cases: full fine-tuning of a tied-embedding qwen2, LoRA on a llama."""


def load_bench():
    """bench/gpu_check.py as a module (bench/ is not a package); loaded once."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def test_dry_run_runs_every_chosen_case_and_writes_the_report(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    work, out = tmp_path / "work", tmp_path / "out"
    argv = [sys.executable, str(SCRIPT), "--dry-run", "--cases", ",".join(reversed(CASES))]
    try:
        proc = subprocess.run(
            [*argv, "--out", str(out), "--work", str(work)], cwd=REPO, capture_output=True, text=True, timeout=240
        )
    finally:
        for case in CASES:
            kill_runs(work / case / "runs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cpu dry run: no CUDA peaks" in proc.stdout
    assert "plan alloc" in proc.stdout and "tok/s plan" in proc.stdout  # the table

    files = list(out.glob("gpu_check-*-cpu-dry-run.json"))
    assert len(files) == 1, files
    report = json.loads(files[0].read_text())
    assert {"date", "dry_run", "init", "steps", "budget_s", "elapsed_s", "gpu", "versions", "env", "cases"} <= set(
        report
    )
    assert report["dry_run"] is True and report["steps"] == 3
    assert {"torch", "transformers", "peft", "bitsandbytes", "python", "torch_cuda"} <= set(report["versions"])
    assert report["versions"]["torch"] and report["versions"]["transformers"]
    assert {"name", "driver"} <= set(report["gpu"])

    assert [c["case"] for c in report["cases"]] == list(CASES)  # cheapest first, whatever order was asked
    for case in report["cases"]:
        where = f"{case['case']}: {case.get('reason')}\n{case.get('log_tail', '')}"
        assert case["state"] == "finished", where
        assert case["settings"]["device"] == "cpu" and case["settings"]["seq_len"] == 128
        planned, measured = case["planned"], case["measured"]
        assert planned["source"] == "ftui's resolve on h200" and planned["fits"] is True
        for key in ("peak_allocated_gib", "peak_reserved_gib", "nvml_used_gib", "tokens_per_s"):
            assert planned[key] > 0, (case["case"], key)
            assert case["planned_cli"][key] > 0, (case["case"], key)
        assert planned["peak_allocated_gib"] <= planned["peak_reserved_gib"] <= planned["nvml_used_gib"]
        assert measured["peak_allocated_gib"] is None and measured["peak_reserved_gib"] is None  # no CUDA here
        assert measured["nvml_used_gib"] is None
        assert case["note"] == "cpu dry run: no CUDA peaks"
        assert measured["steps"] == 3 and measured["tokens_per_s"] > 0 and measured["final_loss"] > 0
        assert set(case["error_pct"]) == {"allocated", "reserved", "nvml", "tokens_per_s"}
        assert all(v is None for v in case["error_pct"].values())
        # the real vocabulary survives the shrink: the embedding alone is vocab x 64
        vocab = load_bench().catalog_config(case["model"])["vocab_size"]
        assert measured["total_params"] > vocab * 64
        assert case["build"]["params"] > vocab * 64  # each model's weights were built once, before its first case
    lora = report["cases"][1]
    assert 0 < lora["measured"]["trainable_params"] < lora["measured"]["total_params"]
    # every sequence was filled to the target length (no padding), and nothing heavy was left behind
    run_dir = work / "lora-8b-2k" / "runs"
    (run,) = run_dir.iterdir()
    assert "7 truncated" in (run / "train.log").read_text()
    assert not (run / "final").exists()


def test_the_cases_are_cheapest_first_and_unknown_names_are_refused(capsys):
    bench = load_bench()
    assert [c.name for c in bench.CASES if not c.extra] == [
        "full-1.5b",
        "lora-8b-2k",
        "lora-8b-8k",
        "qlora-8b",
        "lisa-8b",
    ]
    assert [c.name for c in bench.parse_args([]).selected] == [c.name for c in bench.CASES if not c.extra]
    assert [c.name for c in bench.parse_args(["--cases", "lora-qwen7b-8k,qlora-8b"]).selected] == [
        "qlora-8b",
        "lora-qwen7b-8k",
    ]
    args = bench.parse_args(["--cases", "lisa-8b,full-1.5b", "--dry-run"])
    assert [c.name for c in args.selected] == ["full-1.5b", "lisa-8b"] and args.steps == 3
    assert bench.parse_args([]).steps == 30
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "lora-70b"])
    assert "unknown case(s) lora-70b" in capsys.readouterr().err


def test_tiny_versions_keep_the_family_vocabulary_and_head_ratios():
    bench = load_bench()
    for name in ("llama-3.1-8b", "qwen2.5-1.5b"):
        config = bench.catalog_config(name)
        tiny = bench.tiny_version(config)
        assert tiny["hidden_size"] == 64 and tiny["num_hidden_layers"] == 2
        assert tiny["vocab_size"] == config["vocab_size"] and tiny["model_type"] == config["model_type"]
        assert tiny["num_attention_heads"] % tiny["num_key_value_heads"] == 0
        assert tiny["tie_word_embeddings"] == config["tie_word_embeddings"]


def test_nvml_sampler_counts_the_runs_processes_above_the_baseline():
    from runner.machine.fake_nvml import MIB, FakeNvml
    from runner.machine.nvml import NvmlReader

    bench = load_bench()
    nvml = FakeNvml("1xa100")
    gpu = nvml.gpus[0]
    gpu.processes = [(111, 500)]  # someone else's process, there before the run
    gpu.used_mib = 1000
    sampler = bench.NvmlSampler(NvmlReader(nvml), period_s=0.01)
    sampler.start()
    gpu.processes = [(111, 500), (222, 20 * 1024)]  # the run: 20 GiB
    gpu.used_mib = 1000 + 20 * 1024
    deadline = time.monotonic() + 5
    while sampler.peak_procs < 20 * 1024 * MIB and time.monotonic() < deadline:
        time.sleep(0.01)
    gpu.processes, gpu.used_mib = [(111, 500)], 1000
    result = sampler.finish()
    assert result["nvml_used_gib"] == 20.0 and result["nvml_source"] == "processes"
    assert result["nvml_device_delta_gib"] == 20.0 and result["nvml_samples"] > 0


def test_cuda_peaks_and_tokens_per_s_from_what_the_runner_writes():
    bench = load_bench()
    records = [
        {"step": s, "tokens": 4096 * s, "time": 100.0 + s, "mem": {"0": {"allocated_gib": 20.0 + s}}}
        for s in range(1, 31)
    ]
    records[0]["time"] = 90.0  # the first step includes the warm-up
    status = {"measured_peak": {"0": {"allocated_gib": 55.5, "reserved_gib": 60.0}}}
    assert bench.cuda_peaks(status, records) == {"peak_allocated_gib": 55.5, "peak_reserved_gib": 60.0}
    assert bench.cuda_peaks({}, records)["peak_allocated_gib"] == 50.0  # no final status: the newest record
    assert bench.cuda_peaks({}, [{"step": 1, "mem": {}}]) == {"peak_allocated_gib": None, "peak_reserved_gib": None}
    assert bench.steady_tokens_per_s(records) == 4096.0  # steps 6..30, the warm-up left out
    assert bench.error_pct(11.0, 10.0) == 10.0 and bench.error_pct(None, 10.0) is None
    assert bench.error_pct(1.0, None) is None


def test_the_table_shows_missing_figures_as_dashes_and_the_notes():
    bench = load_bench()
    rows = [
        {
            "case": "lora-8b-2k",
            "state": "finished",
            "planned": {"peak_allocated_gib": 22.19, "peak_reserved_gib": 35.56, "nvml_used_gib": 36.11},
            "measured": {"peak_allocated_gib": 21.0, "peak_reserved_gib": 24.0, "nvml_used_gib": 25.0},
            "error_pct": {"allocated": 5.7, "reserved": 48.2, "nvml": 44.4, "tokens_per_s": -10.0},
        },
        {"case": "lisa-8b", "state": "skipped", "reason": "budget: 470 s used, ~75 s needed"},
        {"case": "qlora-8b", "state": "finished", "note": "cpu dry run: no CUDA peaks"},
    ]
    text = bench.table(rows)
    lines = text.splitlines()
    assert "22.19" in lines[2] and "+6%" in lines[2] and "+48%" in lines[2]
    assert lines[3].split()[:3] == ["lisa-8b", "skipped", "-"]
    assert "note: cpu dry run: no CUDA peaks" in text and "lisa-8b: budget" in text
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns
