"""Real bars from ml/sample_data (in the repo; see its README): d1 and w1 of GOOG, IBM, GSPC and IXIC."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "ml" / "sample_data"


@cache
def _read(symbol: str, timeframe: str) -> pd.DataFrame:
    frame = pd.read_csv(SAMPLE_DATA / f"{symbol}_{timeframe}.csv")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    return frame


def sample_bars(symbol: str, timeframe: str, last: int | None = None) -> pd.DataFrame:
    frame = _read(symbol, timeframe)
    if last is not None:
        frame = frame.iloc[-last:]
    return frame.reset_index(drop=True).copy()


def sample_csv(symbol: str, timeframe: str) -> Path:
    return SAMPLE_DATA / f"{symbol}_{timeframe}.csv"


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    return path
