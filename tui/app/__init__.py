"""The `ftui` terminal app (Textual): GPUs, planner, runs, and a live monitor per run."""
