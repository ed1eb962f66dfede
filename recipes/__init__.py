"""Shipped training recipes (YAML files in this package directory)."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).parent


def shipped() -> list[Path]:
    """The recipe files that ship with ftui, sorted by name."""
    return sorted(RECIPES_DIR.glob("*.yaml"))


def find_recipe(ref: str) -> Path | None:
    """A recipe file by path, or a shipped recipe by name (`tiny-demo` or `tiny-demo.yaml`)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    name = ref if ref.endswith(".yaml") else f"{ref}.yaml"
    shipped_path = RECIPES_DIR / Path(name).name
    return shipped_path if shipped_path.is_file() else None


def header(path: Path) -> list[str]:
    """The leading comment lines of a recipe (its command and what it is for)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return lines
