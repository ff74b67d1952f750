"""The entry points' argument parser: a usage error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2


def timeframe_arg(text: str) -> str:
    """argparse `type=` for a timeframe flag: `D1` and ` d1` are d1, as in `--pairs IBM:D1` (identifiers.parse_pair);
    used with `choices=TIMEFRAMES`, which then judges the lower-cased text."""
    return text.strip().lower()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ... (see --help)`), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")

    def parse_or_exit_code(self, argv: list[str] | None) -> argparse.Namespace | int:
        """The parsed flags, or the exit code argparse wanted (0 after --help, 2 on bad usage): entry points
        are `main(argv) -> int` and return it instead of raising SystemExit."""
        try:
            return self.parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0)
