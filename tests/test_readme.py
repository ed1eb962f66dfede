"""The README's first two commands are the contract with a new user; CI runs the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a ```bash block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_install_and_run_then_install_and_test():
    first, second = _readme_commands()[:2]
    assert first.startswith("pip install '.[train]'") and "ftui train recipes/tiny-demo.yaml" in first
    assert (ROOT / "recipes" / "tiny-demo.yaml").is_file()  # the embedded default it runs
    assert second.startswith("pip install") and "pytest" in second


def test_ci_runs_the_readme_test_command_after_pinning_torch():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _readme_commands()[1]
    assert test_command in ci
    assert ci.index("torch==2.13.0") < ci.index(test_command)
