"""Real bars for tests, from ../shared/data beside the repo (see its README). Never synthetic."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@cache
def _read(symbol: str, timeframe: str) -> pd.DataFrame:
    path = SHARED_DATA / f"{symbol}_{timeframe}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"shared data file missing: {path} (CI clones ../shared beside the repo)")
    return pd.read_csv(path, parse_dates=["ts"])


def real_bars(symbol: str, timeframe: str, last: int | None = None, first: int | None = None) -> pd.DataFrame:
    """The shared file's bars: the `last` N rows, or the `first` N rows, or all."""
    frame = _read(symbol, timeframe)
    if last is not None:
        frame = frame.iloc[-last:]
    if first is not None:
        frame = frame.iloc[:first]
    return frame.reset_index(drop=True).copy()


def shared_csv(symbol: str, timeframe: str) -> Path:
    return SHARED_DATA / f"{symbol}_{timeframe}.csv"
