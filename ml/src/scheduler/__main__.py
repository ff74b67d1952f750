"""python -m ml.src.scheduler: see ml.src.scheduler (the command line is ml.src.cli.schedule)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from ml.src.cli.schedule import main

    sys.exit(main())
