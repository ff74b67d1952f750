"""python -m ml.src.scheduler: see ml.src.scheduler."""

from __future__ import annotations

import sys

from ml.src.scheduler.cli import main

if __name__ == "__main__":
    sys.exit(main())
