"""`python -m runner.train --run-dir DIR [--resume-from CHECKPOINT]`: one process of a training run."""

import sys

from .entry import main

sys.exit(main())
