"""Many real pairs from few files: distinct, non-overlapping windows of the shared CSVs, each its own pair.

The throughput benchmark needs 1, 10, 40 and 100 pairs of 500 target bars; the shared data has 44 files. A
window is `bars` consecutive rows of one file, copied unchanged (real timestamps, real prices, real volume)
into the store under a derived symbol `SYMBOL.K` (K = 0 for the most recent window of the file, 1 for the
one before it, ...), with the file's own timeframe. Windows of one file never overlap, so no two pairs share
a bar. Nothing is resampled, shifted, scaled or generated.

Order: round-robin over the files (grouped by timeframe so the first pairs mix m15, h1, h4, d1 and w1), the
most recent window of every file first, then each file's next older window, and so on. A window whose bars
the job would reject (a hole longer than the timeframe's max_gap_days) is passed over, so every planned pair
is trainable by the product's own checks. The first N windows of the plan are "N pairs": the 10-pair set is
a prefix of the 40-pair set, which is a prefix of the 100-pair set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

TIMEFRAME_ORDER: tuple[str, ...] = ("m15", "h1", "h4", "d1", "w1")


@dataclass(frozen=True)
class Window:
    """Rows [start, stop) of `path`, loaded as pair `symbol`/`timeframe`."""

    path: Path
    source_symbol: str
    timeframe: str
    index: int  # 0 = the most recent window of the file
    start: int
    stop: int

    @property
    def symbol(self) -> str:
        return f"{self.source_symbol}.{self.index}"

    @property
    def pair(self) -> str:
        return f"{self.symbol}/{self.timeframe}"

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "file": self.path.name,
            "rows": [self.start, self.stop],
            "first_ts": frame["ts"].iloc[self.start].isoformat(),
            "last_ts": frame["ts"].iloc[self.stop - 1].isoformat(),
        }


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["ts"])


def _max_gap_ok(frame: pd.DataFrame, max_gap_days: float) -> bool:
    gaps = frame["ts"].diff().dt.total_seconds().to_numpy()[1:] / 86400.0
    return not gaps.size or float(gaps.max()) <= max_gap_days


def plan_windows(files: Sequence[Path], n_pairs: int, bars: int) -> list[Window]:
    """The first `n_pairs` windows of `bars` rows each, in the order described in the module docstring."""
    from config.settings import DEFAULT_TIMEFRAMES
    from ml.src.data.load_bars import parse_file_name

    by_file: dict[Path, tuple[str, str, pd.DataFrame]] = {}
    for path in files:
        symbol, tf = parse_file_name(path)
        by_file[path] = (symbol, tf, _read(path))
    order = sorted(by_file, key=lambda p: (TIMEFRAME_ORDER.index(by_file[p][1]), by_file[p][0]))
    # round-robin over timeframes first, so the first few pairs are not all m15
    tf_lists = {tf: [p for p in order if by_file[p][1] == tf] for tf in TIMEFRAME_ORDER}
    interleaved: list[Path] = []
    while any(tf_lists.values()):
        for tf in TIMEFRAME_ORDER:
            if tf_lists[tf]:
                interleaved.append(tf_lists[tf].pop(0))

    next_stop = {p: len(by_file[p][2]) for p in interleaved}
    next_index = dict.fromkeys(interleaved, 0)
    out: list[Window] = []
    while len(out) < n_pairs:
        progressed = False
        for path in interleaved:
            if len(out) >= n_pairs:
                break
            symbol, tf, frame = by_file[path]
            max_gap = DEFAULT_TIMEFRAMES[tf].max_gap_days
            while next_stop[path] - bars >= 0:
                stop = next_stop[path]
                start = stop - bars
                next_stop[path] = start
                if _max_gap_ok(frame.iloc[start:stop], max_gap):
                    out.append(Window(path, symbol, tf, next_index[path], start, stop))
                    next_index[path] += 1
                    progressed = True
                    break
        if not progressed:
            raise ValueError(f"the files hold only {len(out)} windows of {bars} bars; {n_pairs} requested")
    return out


def load_windows(store: Any, windows: Sequence[Window]) -> list[dict[str, Any]]:
    """Upsert every window's rows, unchanged, as its own pair; register the derived symbols as active."""
    from ml.src.data.load_bars import read_bar_file

    frames: dict[Path, pd.DataFrame] = {}
    described = []
    for w in windows:
        if w.path not in frames:
            frames[w.path] = read_bar_file(w.path)  # the product's own validation of the file
        frame = frames[w.path]
        store.upsert_bars(w.symbol, w.timeframe, frame.iloc[w.start : w.stop].reset_index(drop=True))
        described.append(w.describe(frame))
    store.upsert_symbols(sorted({w.symbol for w in windows}), active=True)
    return described
