"""`python -m runner.train --run-dir DIR [--resume-from CHECKPOINT]`: one process of a training run."""

import logging
import os
import sys
from pathlib import Path

from .guard import guard

if "--run-dir" in sys.argv[:-1]:
    guard(Path(sys.argv[sys.argv.index("--run-dir") + 1]))  # before torch: an orphan never gets far

from .entry import main, world  # noqa: E402

code = main()
if world() > 1:
    # Several processes: leave without interpreter finalisation. The process group is torn down by
    # then, but gloo's worker threads can still hold tensors whose release at finalisation takes the
    # GIL of a dying interpreter and aborts the process (SIGABRT), turning a finished run into a
    # failed launcher. Everything the run wrote is closed; flush what is buffered and go.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
