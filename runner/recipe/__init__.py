"""Recipes: the typed YAML schema, the resolution of `auto` values from the planner and the machine,
and the recipe written from a plan. Pure Python (no torch); imported by launch, train, data and tui."""
