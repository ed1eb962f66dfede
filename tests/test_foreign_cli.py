"""The CLI with other tools' runs: `runs --watch`, options before the subcommand, and logs / stop / monitor / resume
given another tool's output directory, its listed id, or a directory of runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_foreign import LF_LINES, hf_state, write_jsonl, write_state

from runner.rundir.runs import new_run_dir
from tui import app_cmd
from conftest import ftui
from tui.cli import parse
from tui.runs_cmd import number


@pytest.fixture
def place(tmp_path, monkeypatch):
    """runs/ with one finished ftui run, saves/llama3 (LLaMA-Factory, with its text log) and output/hf-out (HF)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FTUI_RUNS_DIR", raising=False)
    mine = new_run_dir(tmp_path / "runs", "mine")
    mine.recipe.write_text("tuner: lora\n")
    mine.set_status("finished")
    write_jsonl(tmp_path / "saves" / "llama3" / "trainer_log.jsonl", LF_LINES)
    (tmp_path / "saves" / "llama3" / "running_log.txt").write_text("[INFO] training started\n[INFO] step 10\n")
    write_state(tmp_path / "output" / "hf-out" / "checkpoint-20" / "trainer_state.json", hf_state([10, 20], 50))
    return tmp_path, mine


# --- ftui runs ------------------------------------------------------------------------------------------------------


def test_runs_watch_lists_other_tools_runs_and_json_gives_their_tool(capsys, place):
    root, mine = place
    code, out, err = ftui(capsys, "runs", "--watch", "saves", "--watch", "output", "--json")
    assert code == 0, err
    doc = json.loads(out)
    rows = {r["id"]: r for r in doc["runs"]}
    assert set(rows) == {mine.id, "llamafactory:llama3", "hf:hf-out"}
    assert {r["tool"] for r in rows.values()} == {"ftui", "llamafactory", "hf"}
    lf = rows["llamafactory:llama3"]
    assert (lf["step"], lf["total_steps"], lf["loss"], lf["eval_loss"], lf["lr"]) == (20, 100, 1.5, 1.61, 4.0e-05)
    assert doc["watch"] == [str(root / "saves"), str(root / "output")]
    code, out, _ = ftui(capsys, "runs", "--watch", "saves")
    assert code == 0 and "llamafactory:llama3" in out and "llamafactory" in out.split("llamafactory:llama3")[1]


def test_watch_given_before_the_subcommand_is_kept(capsys, place):
    root, mine = place
    code, out, err = ftui(capsys, "--watch", "saves", "runs", "--json")
    assert code == 0, err
    assert {r["id"] for r in json.loads(out)["runs"]} == {mine.id, "llamafactory:llama3"}
    args = parse(["--watch", "saves", "runs", "--watch", "output"])
    assert [str(p) for p in args.watch] == ["saves", "output"]
    args = parse(["--runs-dir", "elsewhere", "runs"])
    assert str(args.runs_dir) == "elsewhere"
    assert parse(["runs", "--runs-dir", "there"]).runs_dir.name == "there"
    assert str(parse(["--runs-dir", "a", "logs", "x"]).runs_dir) == "a"


def test_a_missing_watch_dir_is_a_clear_error(capsys, place):
    code, out, err = ftui(capsys, "runs", "--watch", "nowhere")
    assert code == 2 and out == ""
    assert "--watch nowhere: does not exist" in err and "Traceback" not in err
    code, _, err = ftui(capsys, "--watch", "runs/mine-x", "runs")
    assert code == 2 and "does not exist" in err


# --- ftui logs ------------------------------------------------------------------------------------------------------


def test_logs_of_another_tools_run_dir_prints_its_text_log(capsys, place):
    code, out, err = ftui(capsys, "logs", "saves/llama3")
    assert code == 0, err
    assert out == "[INFO] training started\n[INFO] step 10\n"
    assert "pass the run directory" not in err.lower()


def test_logs_of_an_hf_run_without_a_text_log_prints_its_records(capsys, place):
    code, out, err = ftui(capsys, "logs", "output/hf-out")
    assert code == 0, err
    assert out.splitlines() == [
        "step 10/50  loss 2.9000  lr 9.90e-05  grad_norm 0.500  epoch 0.20",
        "step 20/50  loss 2.8000  lr 9.80e-05  grad_norm 0.500  epoch 0.40",
    ]
    assert "writes no text log" in err


def test_logs_finds_another_tools_run_by_the_id_the_list_shows(capsys, place):
    code, out, err = ftui(capsys, "logs", "llamafactory:llama3", "--watch", "saves")
    assert code == 0, err
    assert "[INFO] step 10" in out
    code, out, err = ftui(capsys, "--watch", "output", "logs", "hf:hf-out")
    assert code == 0 and out.startswith("step 10/50"), err
    code, out, err = ftui(capsys, "logs", "hf:hf-out")  # no --watch: the id's dir is not here
    assert code == 2 and "--watch DIR" in err


def test_logs_follow_of_a_finished_foreign_run_prints_and_returns(capsys, place):
    root, _ = place
    write_jsonl(root / "saves" / "llama3" / "trainer_log.jsonl", [{"current_steps": 100, "total_steps": 100}], "a")
    code, out, err = ftui(capsys, "logs", "saves/llama3", "-f")
    assert code == 0 and "[INFO] step 10" in out and "is finished" in err


# --- a directory of runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["logs", "stop", "monitor"])
def test_a_parent_directory_lists_its_runs_instead_of_saying_pass_the_run_directory(
    capsys, place, monkeypatch, command
):
    opened = []
    monkeypatch.setattr(app_cmd, "run_app", lambda *a, **k: opened.append(k) or 0)
    root, _ = place
    write_jsonl(root / "saves" / "qwen" / "logging.jsonl", [{"global_step/max_steps": "1/10", "loss": 1.0}])
    code, out, err = ftui(capsys, command, "saves")
    assert code == 2 and opened == []  # monitor opens none of them (not the alphabetically first)
    assert "holds 2 runs" in err and "llamafactory:llama3" in err and "swift:qwen" in err
    assert str(root / "saves" / "qwen") in err
    assert "Pass the run directory" not in err


def test_ftuis_runs_directory_lists_its_runs(capsys, place):
    _, mine = place
    code, _, err = ftui(capsys, "logs", "runs")
    assert code == 2 and "it holds 1 run:" in err and mine.id in err


def test_a_directory_with_no_run_says_what_a_run_directory_has(capsys, place):
    root, _ = place
    (root / "empty").mkdir()
    code, _, err = ftui(capsys, "logs", "empty")
    assert code == 2 and "not a run directory" in err and "trainer_log.jsonl" in err


# --- ftui stop / resume ---------------------------------------------------------------------------------------------


@pytest.fixture
def holder(place):
    """A process that keeps a file open in saves/llama3, as a training process keeps its logs open."""
    root, _ = place
    code = "import sys; f = open(sys.argv[1], 'a'); print('ready', flush=True); sys.stdin.read()"
    target = root / "saves" / "llama3" / "running_log.txt"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_stop_of_another_tools_run_says_ftui_cannot_and_names_its_process(capsys, holder):
    code, out, err = ftui(capsys, "stop", "saves/llama3")
    assert code == 2 and out == ""
    assert "ftui cannot stop llamafactory:llama3" in err and "did not launch" in err
    assert f"kill {holder.pid}" in err and "Ctrl-C" in err
    assert holder.poll() is None  # nothing was signalled


def test_stop_of_another_tools_run_with_no_visible_process_says_so(capsys, place):
    code, _, err = ftui(capsys, "--watch", "output", "stop", "hf:hf-out")
    assert code == 2 and "ftui cannot stop hf:hf-out" in err and "No process of yours" in err


def test_resume_of_another_tools_run_says_ftui_cannot(capsys, place):
    code, _, err = ftui(capsys, "resume", "saves/llama3")
    assert code == 2 and "ftui cannot resume llamafactory:llama3" in err


# --- ftui monitor ---------------------------------------------------------------------------------------------------


@pytest.fixture
def opened(monkeypatch):
    """What `ftui monitor` would open the app on (the app itself needs a terminal)."""
    calls = []

    def fake_run_app(args, open_run=None, extra_watch=None):
        calls.append((open_run, [p.name for p in extra_watch or []], args.runs_dir))
        return 0

    monkeypatch.setattr(app_cmd, "run_app", fake_run_app)
    return calls


def test_monitor_opens_the_ids_the_runs_list_shows(capsys, place, opened):
    root, mine = place
    assert ftui(capsys, "monitor", "llamafactory:llama3", "--watch", "saves")[0] == 0
    assert ftui(capsys, "--watch", "output", "monitor", "hf:hf-out")[0] == 0
    assert ftui(capsys, "monitor", "llama3", "--watch", "saves")[0] == 0  # the id's name part is enough
    assert ftui(capsys, "monitor", mine.id)[0] == 0
    assert [o[:2] for o in opened] == [
        ("llamafactory:llama3", []),
        ("hf:hf-out", []),
        ("llamafactory:llama3", []),
        (mine.id, []),
    ]
    assert opened[-1][2] == mine.path.parent


def test_monitor_of_another_tools_output_dir_opens_it_under_its_listed_id(capsys, place, opened):
    assert ftui(capsys, "monitor", "saves/llama3")[0] == 0
    assert ftui(capsys, "monitor", "output/hf-out", "--watch", "output")[0] == 0
    assert opened[0][:2] == ("llamafactory:llama3", ["llama3"])
    assert opened[1][:2] == ("hf:hf-out", [])  # already under a watched dir: the id the list gives it


def test_monitor_of_an_unknown_id_says_what_to_pass(capsys, place, opened):
    code, _, err = ftui(capsys, "monitor", "swift:nothing", "--watch", "saves")
    assert code == 2 and opened == [] and "no swift run 'swift:nothing'" in err


def test_numbers_never_print_negative_zero():
    assert number(-0.0, "{:.1f}") == "0.0"
    assert number(-0.004, "{:.1f}") == "0.0"
    assert number(-0.5, "{:.1f}") == "-0.5"
    assert number(float("nan"), "{:.1f}") == "-" and number(None, "{:.1f}") == "-"


def test_monitor_of_a_run_deeper_than_the_watch_scan_still_opens(capsys, place, opened):
    root, _ = place
    deep = root / "saves" / "a" / "b" / "c" / "d" / "e"
    write_jsonl(deep / "trainer_log.jsonl", LF_LINES)
    assert ftui(capsys, "monitor", str(deep), "--watch", "saves")[0] == 0
    assert opened[0][:2] == ("llamafactory:e", ["e"])
