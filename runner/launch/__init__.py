"""Starting processes: argv/env/config builders for each launcher, the detached supervisor
(`python -m runner.launch.supervise`), start / resume, and the trace behind `ftui plan --verify`
(`python -m runner.train.trace` in a child). Never imports torch; imported by tui and watch."""
