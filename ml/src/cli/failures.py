"""What every command does with a problem the user can act on: one line, and the exit code its kind means."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from config.timeframes import TIMEFRAMES
from ml.src.common.exit_codes import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:
    from ml.src.data.store import TrainingStore


class UsageError(ValueError):
    """Bad flags: exit code 2."""


def one_line_failure(exc: Exception) -> int:
    """Print the one line an error the user can act on deserves and return the exit code its kind means:
    the store (down, slow, refusing) is a failed run (1); flags, settings and the models directory are
    usage (2). Shared by the entry points so the same cause always ends the same way."""
    from pydantic import ValidationError

    from ml.src.data.store import StoreError

    if isinstance(exc, ValidationError):
        from config.settings import settings_error_line

        print(settings_error_line(exc), file=sys.stderr)
        return EXIT_USAGE
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_FAILED if isinstance(exc, StoreError) else EXIT_USAGE


def parse_as_of(text: str) -> datetime:
    import pandas as pd

    try:
        ts = pd.Timestamp(text)
    except ValueError as exc:
        raise UsageError(f"--as-of {text!r} is not an ISO-8601 timestamp") from exc
    if ts is pd.NaT:
        raise UsageError(f"--as-of {text!r} is not an ISO-8601 timestamp")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def missing_bars_note(store: TrainingStore, results: Sequence[Any]) -> str | None:
    """One line when named pairs failed for want of bars: which they are and what the store does have.
    `results`: training PairResults (`error`) or forecast results (`reason`)."""
    from ml.src.data.store import StoreError
    from ml.src.training.universe import loaded_pairs_line

    failed = [
        f"{r.symbol}/{r.timeframe}"
        for r in results
        if r.status == "failed" and _no_bars(getattr(r, "error", None) or getattr(r, "reason", None))
    ]
    if not failed:
        return None
    shown = " ".join(failed[:6]) + (f" (+{len(failed) - 6} more)" if len(failed) > 6 else "")
    try:
        loaded = loaded_pairs_line(store, TIMEFRAMES)
    except StoreError as exc:
        loaded = f"cannot list the loaded symbols: {exc}"
    return f"error: no bars for {shown}; {loaded}"


def _no_bars(error: str | None) -> bool:
    return bool(error) and ": no bars " in str(error)
