"""Shipped training recipes (YAML files in this package directory)."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).parent


def shipped() -> list[Path]:
    """The recipe files that ship with ftui, sorted by name."""
    return sorted(RECIPES_DIR.glob("*.yaml"))
