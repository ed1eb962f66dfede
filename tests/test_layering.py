"""The layering rule of ARCHITECTURE.md: tui -> runner -> planner, and planner stays pure."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "textual", "pynvml", "transformers", "rich")


def _imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in `path`; relative imports are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no python files under {package}/"
    return [
        f"{path.relative_to(REPO)}:{line}: imports {mod}"
        for path in files
        for line, mod in _imported_roots(path)
        if mod in forbidden
    ]


def test_importing_planner_in_a_fresh_interpreter_pulls_in_no_heavy_module():
    code = (
        "import sys, planner, planner.catalog, planner.recommend, planner.plan, planner.dataset_stats\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.strip()
    assert loaded == "", f"importing planner loaded: {loaded}"


def test_planner_imports_neither_runner_tui_nor_heavy_libraries():
    bad = _violations("planner", ("runner", "tui") + HEAVY)
    assert not bad, "planner/ must stay pure:\n" + "\n".join(bad)


def test_runner_does_not_import_tui():
    bad = _violations("runner", ("tui",))
    assert not bad, "runner/ must not import tui/:\n" + "\n".join(bad)


def test_the_import_scanner_reports_file_and_line(tmp_path):
    # The checker itself must be able to fail: a planted import is found with its line number.
    bad = tmp_path / "bad.py"
    bad.write_text('"""doc"""\nimport os\nfrom runner.nvml import NoGpu\ndef f():\n    import torch\n')
    assert sorted(_imported_roots(bad)) == [(2, "os"), (3, "runner"), (5, "torch")]


TRAINING_MODULES = ("train.py", "train_callbacks.py", "train_data.py")
"""The training entry point and what only it imports: the one place torch may be imported."""


def test_only_the_training_entry_point_imports_torch():
    offenders = [
        f"{path.relative_to(REPO)}:{line}: imports {mod}"
        for path in sorted((REPO / "runner").glob("*.py"))
        if path.name not in TRAINING_MODULES
        for line, mod in _imported_roots(path)
        if mod in ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "accelerate")
    ]
    assert not offenders, offenders


def test_launching_a_run_imports_no_torch_in_the_cli_process():
    code = (
        "import sys, runner.lifecycle, runner.runs, runner.launch, runner.resolve, tui.cli\n"
        "print(','.join(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the CLI process imported {proc.stdout.strip()}"
