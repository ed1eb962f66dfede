"""The layering rules of ARCHITECTURE.md: tui -> runner -> planner, planner stays pure, only runner/train/
imports the training stack, and no import circle anywhere (between modules, or between runner's wings)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "textual", "pynvml", "transformers", "rich")
TRAINING_STACK = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "accelerate")
PROJECT = ("planner", "runner", "tui", "recipes")
"""The shipped packages: every import between their modules is checked for circles."""
WINGS = ("recipe", "data", "launch", "train", "rundir", "watch", "machine")
"""runner's sub-packages, as the README's Layout shows them."""


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


# --- the module graph ----------------------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted name -> file of every module under `packages` (below `root`)."""
    return {_module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def _targets(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The project modules one import statement loads (function-level and TYPE_CHECKING imports count)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = [base] if base in known else []  # `from pkg import x` runs pkg/__init__.py first, whatever x is
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:  # `from pkg import module`
            out.append(sub)
    return out


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    known = _modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(group: list[str], graph: dict[str, dict[str, int]], files: dict[str, Path] | None = None) -> str:
    members = set(group)
    lines = []
    for a in group:
        for b, line in sorted(graph[a].items()):
            if b in members:
                where = f"{files[a].relative_to(REPO)}:{line}" if files else a
                lines.append(f"  {where}: {a} -> {b}")
    return "circle between " + ", ".join(group) + "\n" + "\n".join(lines)


def _wing(module: str) -> str:
    """runner.watch.sources -> runner.watch; planner.memory -> planner; tui.app.app -> tui."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "runner" and len(parts) > 1 else parts[0]


def wing_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for a, edges in graph.items():
        for b in edges:
            if _wing(a) != _wing(b):
                out.setdefault(_wing(a), {})[_wing(b)] = 0
        out.setdefault(_wing(a), {})
    return out


# --- tests ---------------------------------------------------------------------------------


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
    bad.write_text('"""doc"""\nimport os\nfrom runner.machine.nvml import NoGpu\ndef f():\n    import torch\n')
    assert sorted(_imported_roots(bad)) == [(2, "os"), (3, "runner"), (5, "torch")]


def test_only_runner_train_imports_the_training_stack():
    offenders = [
        f"{path.relative_to(REPO)}:{line}: imports {mod}"
        for path in sorted((REPO / "runner").rglob("*.py"))
        if (REPO / "runner" / "train") not in path.parents
        for line, mod in _imported_roots(path)
        if mod in TRAINING_STACK
    ]
    assert not offenders, "only runner/train/ may import the training stack:\n" + "\n".join(offenders)


def test_no_shipped_module_imports_the_training_process():
    # runner/train/ runs inside the trainer: launchers name it by module (`-m runner.train`), nobody imports it.
    graph = import_graph(REPO, PROJECT)
    offenders = [
        f"{a} imports {b}"
        for a, edges in graph.items()
        if not a.startswith("runner.train")
        for b in edges
        if b == "runner.train" or b.startswith("runner.train.")
    ]
    assert not offenders, offenders


def test_runner_has_exactly_the_wings_the_readme_shows():
    wings = sorted(p.name for p in (REPO / "runner").iterdir() if (p / "__init__.py").exists())
    assert wings == sorted(WINGS)
    assert not [p.name for p in (REPO / "runner").glob("*.py") if p.name != "__init__.py"], "modules outside a wing"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :].split("\n## ")[0]
    for wing in WINGS:
        assert re.search(rf"^  {wing}/ ", layout, re.M), f"README Layout does not show runner/{wing}/"
        doc = ast.get_docstring(ast.parse((REPO / "runner" / wing / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), (
            f"runner/{wing}/__init__.py must say what lives there and who imports it"
        )


def test_the_wheel_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    found = sorted(_module_name(p, REPO) for package in PROJECT for p in (REPO / package).rglob("__init__.py"))
    assert sorted(listed) == found


def test_no_import_circle_between_the_projects_modules():
    graph = import_graph(REPO, PROJECT)
    assert "runner.watch.foreign" in graph["runner.watch.sources"]  # the scanner sees `from . import foreign`
    files = _modules(REPO, PROJECT)
    found = cycles(graph)
    assert not found, "\n".join(_describe(group, graph, files) for group in found)


def test_no_circle_between_runners_wings():
    graph = wing_graph(import_graph(REPO, PROJECT))
    assert {"runner.rundir", "runner.recipe"} <= set(graph["runner.launch"])  # the graph is not empty
    found = cycles(graph)
    assert not found, "\n".join(_describe(group, graph) for group in found)


def test_the_circle_finder_finds_a_planted_circle(tmp_path):
    # A lazy import inside a function still makes a circle, as runner.sources <-> runner.foreign once did.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from pkg.sub import c\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (pkg / "d.py").write_text("import pkg.sub.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.a"] == {"pkg.sub.b": 1}
    assert graph["pkg.d"] == {"pkg.sub.a": 1}
    assert cycles(graph) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.c"]]
    (pkg / "sub" / "c.py").write_text("")
    assert cycles(import_graph(tmp_path, ("pkg",))) == []
    # `from . import b` goes through the package: an __init__ that re-exports a module importing b closes a circle
    (pkg / "sub" / "__init__.py").write_text("from .a import thing\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.sub", "pkg.sub.a", "pkg.sub.b"]]


def test_launching_a_run_imports_no_torch_in_the_cli_process():
    code = (
        "import sys, runner.launch.lifecycle, runner.rundir.runs, runner.launch.build, runner.recipe.resolve,"
        " runner.data.check, runner.watch.sources, tui.cli\n"
        "print(','.join(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the CLI process imported {proc.stdout.strip()}"
