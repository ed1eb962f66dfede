"""What the app and `ftui runs` read: run sources (ftui's run directories, a replayed recording),
other tools' runs (HF Trainer, LLaMA-Factory, ms-swift), metrics and log tails, health flags.
Never imports torch; imported only by tui."""
