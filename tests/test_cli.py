"""`ftui plan` and `ftui gpus`, run in-process through tui.cli.main (and once as a fresh process)."""

import json
import subprocess
import sys
import time

import pytest

from runner.machine.fake_nvml import FakeNvml
from runner.machine.nvml import NoGpu, NvmlReader
from conftest import ftui

PER_GPU_KEYS = {
    "weights_gib",
    "gradients_gib",
    "optimizer_gib",
    "activations_gib",
    "logits_gib",
    "overhead_gib",
    "peak_allocated_gib",
    "peak_reserved_gib",
    "nvml_used_gib",
}
ESTIMATE_KEYS = {"fits", "per_gpu", "cpu_ram_gib", "max_micro_batch", "max_seq_len", "tokens_per_s"}


def ftui_json(capsys, *argv: str):
    code, out, err = ftui(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)  # exactly one JSON document: json.loads rejects trailing data


def check_estimate(est: dict) -> None:
    assert ESTIMATE_KEYS <= set(est)
    assert set(est["per_gpu"]) == PER_GPU_KEYS
    assert isinstance(est["fits"], bool)
    per = est["per_gpu"]
    assert per["peak_allocated_gib"] <= per["peak_reserved_gib"] <= per["nvml_used_gib"]
    parts = sum(
        per[k]
        for k in ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "logits_gib", "overhead_gib")
    )
    assert parts == pytest.approx(per["nvml_used_gib"], abs=0.01)
    assert est["tokens_per_s"] > 0


# --- plan --json -------------------------------------------------------------------------


def test_plan_json_recommendation_contract(capsys):
    doc = ftui_json(capsys, "plan", "--model", "7b", "--gpus", "8", "--gpu", "a100-80g")
    assert {"model", "cluster", "recommendation", "alternatives"} <= set(doc)
    assert "estimate" not in doc
    assert doc["model"]["name"] == "llama-2-7b"
    assert doc["model"]["params"] == 6_738_415_616
    assert doc["cluster"]["gpu"] == "a100-80g" and doc["cluster"]["world"] == 8
    rec = doc["recommendation"]
    assert {"setup", "estimate", "reasons"} <= set(rec)
    assert rec["setup"]["tuner"] == "full"
    assert rec["reasons"] and all(isinstance(r, str) and r for r in rec["reasons"])
    check_estimate(rec["estimate"])
    assert rec["estimate"]["fits"] is True
    alts = doc["alternatives"]
    assert len(alts) == 25
    assert {(a["tuner"], a["engine"]) for a in alts} == {
        (t, z) for t in ("full", "freeze", "lora", "qlora", "lisa") for z in ("0", "1", "2", "3", "fsdp")
    }
    assert all(a["reason"] for a in alts)


def test_plan_json_with_a_tuner_gives_a_top_level_estimate(capsys):
    doc = ftui_json(
        capsys,
        "plan",
        "--model",
        "qwen2.5-7b",
        "--gpu",
        "rtx4090",
        "--tuner",
        "lora",
        "--lora-rank",
        "16",
        "--lora-targets",
        "q_proj,v_proj",
        "--seq-len",
        "1024",
        "--micro-batch",
        "2",
        "--no-grad-ckpt",
        "--attn",
        "sdpa",
    )
    assert "recommendation" not in doc and "alternatives" not in doc
    est = doc["estimate"]
    check_estimate(est)
    setup = est["setup"]
    assert (setup["tuner"], setup["lora_rank"], setup["lora_targets"]) == ("lora", 16, "q_proj,v_proj")
    assert (setup["seq_len"], setup["micro_batch"], setup["grad_ckpt"], setup["attn"]) == (1024, 2, False, "sdpa")


def test_impossible_combination_still_plans_but_does_not_fit(capsys):
    doc = ftui_json(
        capsys, "plan", "--model", "7b", "--gpus", "8", "--gpu", "a100-80g", "--tuner", "qlora", "--zero", "3"
    )
    est = doc["estimate"]
    assert est["fits"] is False
    rules = {r["rule"] for r in est["refusals"]}
    assert "qlora-zero3" in rules


def test_gpu_mem_plans_for_an_unknown_gpu(capsys):
    doc = ftui_json(capsys, "plan", "--model", "7b", "--gpu-mem", "48", "--tuner", "lora")
    assert doc["cluster"]["source"] == "--gpu-mem"
    assert doc["cluster"]["gpu_memory_gib"] == pytest.approx(48)
    check_estimate(doc["estimate"])


def test_dataset_sets_the_sequence_length(capsys, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"instruction": "x" * 1000, "output": "y" * 1000}] * 20 + [{"text": "z" * 4000}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = ftui_json(capsys, "plan", "--model", "7b", "--gpu", "a100-80g", "--tuner", "lora", "--dataset", str(data))
    ds = doc["dataset"]
    assert ds["samples"] == 21
    assert ds["max"] == 1000
    # p99 of ~500-1000 tokens rounds up to a multiple of 256.
    assert doc["estimate"]["setup"]["seq_len"] == 1024
    assert doc["estimate"]["epoch_s"] > 0


def test_explicit_seq_len_wins_over_the_dataset(capsys, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "a" * 4000}) + "\n")
    doc = ftui_json(
        capsys,
        "plan",
        "--model",
        "7b",
        "--gpu",
        "a100-80g",
        "--tuner",
        "lora",
        "--dataset",
        str(data),
        "--seq-len",
        "512",
    )
    assert doc["estimate"]["setup"]["seq_len"] == 512
    assert "dataset" in doc


def test_list_models_json(capsys):
    models = ftui_json(capsys, "plan", "--list-models")
    assert isinstance(models, list) and len(models) >= 57
    names = {m["name"] for m in models}
    assert {"llama-2-7b", "qwen3-30b-a3b", "chatglm3-6b"} <= names
    assert all(m["params"] > 0 for m in models)


# --- plain output ------------------------------------------------------------------------


def test_human_output_has_memory_table_and_alternatives(capsys):
    code, out, err = ftui(capsys, "plan", "--model", "7b", "--gpus", "8", "--gpu", "a100-80g")
    assert code == 0, err
    assert "Per-GPU memory" in out
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "overhead", "NVML used"):
        assert part in out
    assert "Alternatives" in out
    assert "Recommended" in out


def test_the_tables_fit_the_console_and_wrap_only_the_last_column():
    from tui.plan_view import Grid

    t = Grid("Alternatives", [("tuner", "left"), ("GiB/GPU", "right"), ("why not", "left")])
    t.add_row("full", "66.3", "does not fit: needs 66.3 GiB per GPU even with ZeRO-3 and offload; 24.0 GiB available")
    t.add_row("lora", "9.1", "chosen")
    lines = [text for text, _ in t.lines(40)]
    assert lines[0] == "Alternatives" and lines[1] == "tuner  GiB/GPU  why not"
    assert all(len(line) <= 40 for line in lines)
    assert lines[2].startswith("full      66.3  does not fit:")  # numbers right-aligned under their header
    continued = lines[3:-1]
    assert continued and all(line.startswith(" " * 16) and line[16] != " " for line in continued)
    assert lines[-1] == "lora       9.1  chosen"
    assert " ".join(line.strip() for line in [lines[2][16:], *continued]) == t.rows[0][-1]  # no word lost


def test_human_output_for_a_given_setup(capsys):
    code, out, err = ftui(
        capsys,
        "plan",
        "--model",
        "7b",
        "--gpu",
        "t4",
        "--tuner",
        "qlora",
        "--precision",
        "fp16-mixed",
        "--attn",
        "sdpa",
    )
    assert code == 0, err
    assert "Per-GPU memory" in out and "fits" in out
    assert "Alternatives" not in out


# --- errors: exit 2, a message, no traceback ---------------------------------------------

ERROR_CASES = {
    "unknown-model": (["--model", "llama-2-7", "--gpu", "a100-80g"], "llama-2-7b"),
    "bad-gpu": (["--model", "7b", "--gpu", "a100-90g"], "unknown GPU type"),
    "micro-batch-0": (["--model", "7b", "--gpu", "t4", "--micro-batch", "0"], "--micro-batch"),
    "seq-len-abc": (["--model", "7b", "--gpu", "t4", "--seq-len", "abc"], "--seq-len"),
    "zero-5": (["--model", "7b", "--gpu", "t4", "--zero", "5"], "--zero"),
    "tuner-bogus": (["--model", "7b", "--gpu", "t4", "--tuner", "bogus"], "--tuner"),
    "lora-targets": (["--model", "7b", "--gpu", "t4", "--tuner", "lora", "--lora-targets", "nonsense"], "q_proj"),
    "missing-model": (["--gpu", "t4"], "--model"),
    "gpu-mem-inf": (["--model", "7b", "--gpu-mem", "1e309"], "--gpu-mem"),
    "gpu-mem-huge": (["--model", "7b", "--gpu-mem", "1e12"], "plausible"),
    "missing-dataset": (
        ["--model", "7b", "--gpu", "t4", "--dataset", "/nonexistent/train.jsonl"],
        "/nonexistent/train.jsonl",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_bad_input_exits_2_with_a_message_and_no_traceback(case, as_json, capsys):
    argv, needle = ERROR_CASES[case]
    code, out, err = ftui(capsys, "plan", *argv, *(["--json"] if as_json else []))
    assert code == 2
    assert needle in err
    assert "Traceback" not in err + out
    assert "internal error" not in err
    assert out == ""


def test_unknown_gpu_message_suggests_close_types(capsys):
    code, _, err = ftui(capsys, "plan", "--model", "7b", "--gpu", "a100-90g")
    assert code == 2
    assert "a100-80g" in err


# --- GPUs from NVML (fake scenarios) -----------------------------------------------------


def test_plan_without_gpu_or_nvml_says_so_and_plans_for_an_example_gpu(capsys, fake_nvml):
    fake_nvml("none")
    code, out, err = ftui(capsys, "plan", "--model", "7b", "--gpus", "8", "--json")
    assert code == 0
    assert "no NVIDIA GPU found" in err and "--gpu TYPE" in err and "example" in err
    assert "Traceback" not in err
    doc = json.loads(out)  # stdout stays pure JSON: the note went to stderr
    assert doc["cluster"]["gpu"] == "a100-80g" and doc["cluster"]["world"] == 8
    assert doc["cluster"]["source"].startswith("assumed")
    assert doc["recommendation"]["estimate"]["fits"]


def test_plan_without_gpu_flags_uses_the_gpus_nvml_sees(capsys, fake_nvml):
    fake_nvml("8xh100")
    doc = ftui_json(capsys, "plan", "--model", "7b", "--tuner", "lora")
    cluster = doc["cluster"]
    assert cluster["source"] == "nvml"
    assert cluster["gpu"] == "h100-80g"
    assert cluster["gpus_per_node"] == 8


def test_plan_gpus_flag_overrides_the_nvml_count(capsys, fake_nvml):
    fake_nvml("8xh100")
    doc = ftui_json(capsys, "plan", "--model", "7b", "--tuner", "lora", "--gpus", "2")
    assert doc["cluster"]["gpus_per_node"] == 2 and doc["cluster"]["gpu"] == "h100-80g"


def test_gpus_json_without_a_gpu(capsys, fake_nvml):
    fake_nvml("none")
    code, out, err = ftui(capsys, "gpus", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["gpus"] == []
    assert "no NVIDIA GPU found" in doc["error"]
    assert "Traceback" not in err


def test_gpus_plain_without_a_gpu(capsys, fake_nvml):
    fake_nvml("none")
    code, out, err = ftui(capsys, "gpus")
    assert code == 1
    assert "no NVIDIA GPU found" in err and "libnvidia-ml" in err


def test_gpus_json_one_a100(capsys, fake_nvml):
    fake_nvml("1xa100")
    doc = ftui_json(capsys, "gpus")
    assert len(doc["gpus"]) == 1
    gpu = doc["gpus"][0]
    assert gpu["name"] == "NVIDIA A100-SXM4-80GB"
    assert gpu["memory_total"] == 81920 * 2**20
    assert gpu["memory_used"] == 4 * 2**20
    assert gpu["processes"] == []


def test_gpus_json_eight_busy_h100s(capsys, fake_nvml):
    fake_nvml("8xh100")
    doc = ftui_json(capsys, "gpus")
    gpus = doc["gpus"]
    assert len(gpus) == 8
    assert [g["index"] for g in gpus] == list(range(8))
    assert all(g["name"] == "NVIDIA H100 80GB HBM3" for g in gpus)
    assert all(len(g["processes"]) == 1 for g in gpus)
    assert gpus[0]["processes"][0] == {"pid": 4100, "used_bytes": 60_500 * 2**20}
    assert gpus[0]["power_w"] == 610.0 and gpus[0]["power_limit_w"] == 700.0


def test_gpus_plain_table(capsys, fake_nvml, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich wraps at 80 columns when not on a terminal
    fake_nvml("8xh100")
    code, out, err = ftui(capsys, "gpus")
    assert code == 0, err
    assert out.count("NVIDIA H100 80GB HBM3") == 8
    assert "4107" in out  # the last GPU's process


def test_gpus_json_vanishing_scenario_first_call(capsys, fake_nvml):
    fake_nvml("vanishing")
    doc = ftui_json(capsys, "gpus")
    assert len(doc["gpus"]) == 2


def test_reader_drops_a_gpu_that_is_lost_between_snapshots():
    reader = NvmlReader(FakeNvml("vanishing"))
    first = reader.snapshot()
    second = reader.snapshot()
    assert [g.index for g in first] == [0, 1]
    assert [g.index for g in second] == [0]
    assert second[0].uuid == first[0].uuid
    reader.close()


def test_reader_turns_missing_driver_into_no_gpu():
    with pytest.raises(NoGpu, match="no NVIDIA GPU found"):
        NvmlReader(FakeNvml("none")).snapshot()


def test_help_lists_every_command_and_the_app_options(capsys):
    code, out, _ = ftui(capsys, "--help")
    assert code == 0
    for word in ("plan", "gpus", "train", "runs", "monitor", "logs", "stop", "resume", "--demo", "--watch"):
        assert word in out


# --- a fresh process ---------------------------------------------------------------------


def test_console_script_runs_fast_in_a_fresh_process(repo_root):
    argv = [sys.executable, "-m", "tui.cli", "plan", "--model", "7b", "--gpus", "8", "--gpu", "a100-80g", "--json"]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=repo_root, capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recommendation"]["setup"]["tuner"] == "full"
    assert elapsed < 2.0, f"ftui plan took {elapsed:.2f} s"


def test_plan_does_not_import_the_training_stack(repo_root):
    code = (
        "import sys, contextlib, io\n"
        "from tui.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['plan', '--model', '7b', '--gpus', '8', '--gpu', 'a100-80g', '--json'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'textual') if m in sys.modules]\n"
        "print(rc, ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0"], f"exit code and heavy modules imported: {proc.stdout!r}"


NOT_FOR_PLAN = ("textual", "tui.app", "runner.launch", "runner.watch", "runner.recipe", "runner.data", "runner.rundir")
NOT_FOR_PLAN += ("yaml", "torch", "transformers", "rich", "tui.train_cmd", "tui.runs_cmd", "tui.resume_cmd")
"""Modules `ftui plan --json` never needs: the app, the runner's launch side, YAML recipes, the training stack,
rich (only the tables use it), the other subcommands."""


@pytest.mark.parametrize(
    ("flags", "needed", "not_needed"),
    [
        # --gpu names the GPU: nothing of the runner at all (no NVML, no host RAM)
        (["--gpu", "a100-80g"], ("planner", "tui.plan_cmd"), (*NOT_FOR_PLAN, "runner")),
        # no --gpu: NVML (the fake `none` scenario here) and host RAM through runner.machine, nothing more
        ([], ("planner", "tui.plan_cmd", "runner.machine.nvml"), NOT_FOR_PLAN),
    ],
    ids=["gpu-given", "gpus-from-nvml"],
)
def test_plan_imports_only_what_it_needs(repo_root, flags, needed, not_needed):
    code = (
        "import sys, contextlib, io\n"
        "from tui.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    rc = main(['plan', '--model', '7b', '--gpus', '8', *{flags!r}, '--json'])\n"
        "loaded = lambda name: any(m == name or m.startswith(name + '.') for m in sys.modules)\n"
        f"print(rc, ','.join(n for n in {needed!r} if not loaded(n)) or '-', "
        f"','.join(n for n in {not_needed!r} if loaded(n)) or '-')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rc, missing, extra = proc.stdout.split()
    assert (rc, missing) == ("0", "-"), f"exit code {rc}; the check did not see {missing} imported"
    assert extra == "-", f"ftui plan imported modules it does not need: {extra}"


def test_help_lines_listed_without_importing_a_command_are_the_commands_own(capsys):
    from tui.cli import ALL, COMMANDS, build_parser

    own = {}
    for action in build_parser(ALL)._subparsers._group_actions:  # every subcommand built for real
        own.update({choice.dest: choice.help for choice in action._choices_actions})
    assert own == {name: help_line for name, (_, help_line) in COMMANDS.items()}
    code, out, _ = ftui(capsys, "--help")
    assert code == 0
    words = " ".join(out.split())  # argparse wraps long help lines at the terminal width
    for name, (_, help_line) in COMMANDS.items():
        assert f" {name} {help_line} " in words, f"--help does not list {name} with its help line"


def test_dataset_json_scalar_is_a_user_error(capsys, tmp_path):
    data = tmp_path / "scalar.json"
    data.write_text("42\n")
    code, _, err = ftui(capsys, "plan", "--model", "7b", "--gpu", "t4", "--tuner", "lora", "--dataset", str(data))
    assert code == 2, err
    assert "internal error" not in err


# --- spellings other tools use, and host RAM ---------------------------------------------


@pytest.mark.parametrize(
    ("flag", "typed", "key", "expected"),
    [
        ("--gpu", "a10g-24g", None, None),
        ("--gpu", "L40S-48G", None, None),
        ("--optim", "paged_adamw", "optim", "paged-adamw"),
        ("--optim", "adamw_torch", "optim", "adamw"),
        ("--quant", "nf4-dq", "quant", "nf4"),
        ("--attn", "SDPA", "attn", "sdpa"),
    ],
)
def test_plan_accepts_the_spellings_other_tools_use(capsys, flag, typed, key, expected):
    argv = ["plan", "--model", "7b", "--tuner", "qlora", flag, typed]
    if flag != "--gpu":
        argv += ["--gpu", "a100-80g"]
    est = ftui_json(capsys, *argv)["estimate"]
    if key:
        assert est["setup"][key] == expected


def test_tuner_dora_is_lora_with_weight_decomposition(capsys):
    dora = ftui_json(capsys, "plan", "--model", "7b", "--gpu", "a100-80g", "--tuner", "dora")["estimate"]
    lora = ftui_json(capsys, "plan", "--model", "7b", "--gpu", "a100-80g", "--tuner", "lora")["estimate"]
    assert dora["setup"]["tuner"] == "lora" and dora["setup"]["dora"] is True
    assert dora["per_gpu"]["activations_gib"] > lora["per_gpu"]["activations_gib"]


def test_host_ram_limit_turns_an_offloaded_setup_into_a_misfit(capsys):
    argv = (
        "plan",
        "--model",
        "13b",
        "--gpu",
        "rtx4090",
        "--tuner",
        "full",
        "--zero",
        "3",
        "--offload",
        "optimizer+params",
        "--precision",
        "bf16-mixed",
    )
    roomy = ftui_json(capsys, *argv, "--host-ram", "2048")
    tight = ftui_json(capsys, *argv, "--host-ram", "32")
    assert roomy["cluster"]["host_ram_gib"] == 2048
    assert roomy["estimate"]["host_ram_fits"] and not tight["estimate"]["host_ram_fits"]
    assert not tight["estimate"]["fits"]
    assert any("host RAM" in w for w in tight["estimate"]["warnings"])


def test_recommendation_explains_a_host_ram_limit(capsys):
    doc = ftui_json(capsys, "plan", "--model", "70b", "--gpu", "a100-40g", "--host-ram", "64")
    reasons = [a["reason"] for a in doc["alternatives"] if not a["fits"]]
    assert any("host RAM" in r and "64.0 GiB there" in r for r in reasons)
