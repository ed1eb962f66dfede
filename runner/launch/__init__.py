"""Starting runs: argv/env/config builders for each launcher, the detached supervisor
(`python -m runner.launch.supervise`), and start / resume. Never imports torch; imported by tui and watch."""
