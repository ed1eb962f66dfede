"""ftui runner: everything between a plan and a running job, one sub-package (wing) per concern.

    recipe/   the recipe schema, `auto` values resolved from the planner and the machine, plan -> recipe
    data/     data set files: loading, formats, records as chat turns, the check before launch
    launch/   argv/env/config builders, the detached supervisor, start / resume, the --verify trace in a child
    train/    the training process and its trace (entry point, callbacks, data, trace): the only torch importer
    rundir/   a run directory on disk: status, launches, metrics file, checkpoints, liveness
    watch/    what the app and `ftui runs` read: live and replayed run sources, other tools' runs, health flags
    machine/  this machine: GPUs through NVML (and named fake scenarios), host RAM

Imports between wings: watch -> launch -> recipe, data -> machine, rundir (and planner);
train -> recipe, data, rundir. No circle between wings or modules (tests/test_layering.py).
"""
