"""The real bars shipped in ml/sample_data (see its README): daily and weekly GOOG, IBM, GSPC, IXIC."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "ml" / "sample_data"


@cache
def _read(symbol: str, timeframe: str) -> pd.DataFrame:
    frame = pd.read_csv(SAMPLE_DATA / f"{symbol}_{timeframe}.csv")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def sample_bars(symbol: str, timeframe: str, first: int | None = None) -> pd.DataFrame:
    """The file's bars, or its first `first` rows (a history that later bars extend)."""
    frame = _read(symbol, timeframe)
    if first is not None:
        frame = frame.iloc[:first]
    return frame.reset_index(drop=True).copy()
