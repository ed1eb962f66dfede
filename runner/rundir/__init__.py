"""A run directory on disk: its files (status, launches, recipe, plan, metrics, log), run ids and
liveness, the stop request, and which checkpoints are complete. Standard library only; imported by
every other wing and by tui."""
