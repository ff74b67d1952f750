"""Exit codes shared by the training job, the scheduler and the other entry points."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a pair or the run failed
EXIT_USAGE = 2  # bad flags or settings (one line on stderr)
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds an overlapping lease; try again later
EXIT_INTERRUPTED = 130  # SIGTERM / Ctrl-C
