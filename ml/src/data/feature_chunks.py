"""The feature cache's storage format, shared by both stores: chunks of binary arrays on a time grid.

A chunk holds the cached features of one (symbol, timeframe, feature version) for one span of time (a grid cell
per timeframe, anchored on Monday 1970-01-05 UTC): `ts` as int64 microseconds since the Unix epoch and `values`
as float64, both little-endian, values row-major (n_rows x n_columns). 8 bytes a value instead of ~35 in JSON,
and one row per few hundred bars, so reading and writing the cache costs less than computing the features.
A night's new bar extends the last chunk (appended in place by the store), and a corrected bar invalidates the
chunks from the one holding it on (database triggers on ohlc_bars).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from ml.src.data.errors import StoreError

# Span of one chunk per timeframe: at most 672 bars even for a market open around the clock.
CHUNK_SPAN: dict[str, timedelta] = {
    "m15": timedelta(days=7),
    "h1": timedelta(days=28),
    "h4": timedelta(days=112),
    "d1": timedelta(days=364),
    "w1": timedelta(days=7 * 364),
}
GRID_ORIGIN_US = 4 * 86_400 * 1_000_000  # 1970-01-05T00:00Z, a Monday, in microseconds since the epoch


@dataclass(frozen=True)
class FeatureChunk:
    chunk_start_us: int
    columns: tuple[str, ...]
    ts_us: np.ndarray  # int64, ascending, unique
    values: np.ndarray  # float64, shape (len(ts_us), len(columns))

    @property
    def n_rows(self) -> int:
        return len(self.ts_us)

    @property
    def chunk_start(self) -> pd.Timestamp:
        return us_to_timestamp(self.chunk_start_us)

    @property
    def first_ts(self) -> pd.Timestamp:
        return us_to_timestamp(int(self.ts_us[0]))

    @property
    def last_ts(self) -> pd.Timestamp:
        return us_to_timestamp(int(self.ts_us[-1]))

    def ts_bytes(self) -> bytes:
        return np.ascontiguousarray(self.ts_us, dtype="<i8").tobytes()

    def values_bytes(self) -> bytes:
        return np.ascontiguousarray(self.values, dtype="<f8").tobytes()

    @classmethod
    def from_bytes(
        cls, chunk_start_us: int, columns: Sequence[str], ts_data: bytes, values_data: bytes
    ) -> FeatureChunk:
        cols = tuple(columns)
        ts = np.frombuffer(ts_data, dtype="<i8").astype(np.int64)
        values = np.frombuffer(values_data, dtype="<f8").astype(np.float64)
        if values.size != ts.size * len(cols):
            raise StoreError(
                f"feature chunk at {us_to_timestamp(chunk_start_us).isoformat()} is malformed: "
                f"{ts.size} rows x {len(cols)} columns but {values.size} values"
            )
        return cls(chunk_start_us, cols, ts, values.reshape(ts.size, len(cols)))


def us_to_timestamp(us: int) -> pd.Timestamp:
    return pd.Timestamp(int(us), unit="us", tz="UTC")


def timestamps_to_us(ts: pd.Series | pd.DatetimeIndex | Sequence[pd.Timestamp]) -> np.ndarray:
    """UTC timestamps as int64 microseconds since the epoch (sub-microsecond parts are floored, as stored)."""
    if isinstance(ts, pd.Series) and isinstance(
        ts.dtype, pd.DatetimeTZDtype
    ):  # the common case, without copies
        raw = np.asarray(ts.array.asi8, dtype=np.int64)
        unit = ts.dtype.unit
        if unit in ("s", "ms"):
            return raw * (1_000_000 if unit == "s" else 1_000)
        return np.floor_divide(raw, 1_000 if unit == "ns" else 1)
    index = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).floor("us")
    return np.asarray(index.as_unit("us").asi8, dtype=np.int64)


def chunk_start_us(ts_us: np.ndarray | int, timeframe: str) -> np.ndarray:
    span = int(CHUNK_SPAN[timeframe] / timedelta(microseconds=1))
    offset = np.asarray(ts_us, dtype=np.int64) - GRID_ORIGIN_US
    return np.floor_divide(offset, span) * span + GRID_ORIGIN_US


def feature_matrix(label: str, features: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """(ts in microseconds, feature columns, float64 values) of a `ts` + features frame, sorted by ts.

    Refuses non-finite values (a cache must never serve a NaN as a feature) and duplicate timestamps.
    """
    rest = features.drop(columns="ts")
    cols = tuple(str(c) for c in rest.columns)
    values = rest.to_numpy(dtype="float64")
    if not np.isfinite(values).all():
        raise StoreError(f"{label}: refusing to cache non-finite feature values")
    ts = timestamps_to_us(features["ts"])
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order]
    if ts.size > 1 and (np.diff(ts) == 0).any():
        raise StoreError(f"{label}: refusing to cache two feature rows for the same timestamp")
    return ts, cols, values


def split_into_chunks(
    timeframe: str, ts_us: np.ndarray, columns: tuple[str, ...], values: np.ndarray
) -> list[FeatureChunk]:
    """Rows (sorted by ts) grouped into the chunks of the timeframe's grid."""
    if ts_us.size == 0:
        return []
    starts = chunk_start_us(ts_us, timeframe)
    bounds = np.flatnonzero(np.diff(starts)) + 1
    out: list[FeatureChunk] = []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, ts_us.size], strict=True):
        out.append(FeatureChunk(int(starts[lo]), columns, ts_us[lo:hi].copy(), values[lo:hi].copy()))
    return out


def merge_chunks(old: FeatureChunk | None, new: FeatureChunk) -> FeatureChunk:
    """The stored chunk updated with new rows: the new row wins for a timestamp in both; other columns -> new."""
    if old is None or old.columns != new.columns:
        return new
    keep = ~np.isin(old.ts_us, new.ts_us)
    ts = np.concatenate([old.ts_us[keep], new.ts_us])
    values = np.concatenate([old.values[keep], new.values])
    order = np.argsort(ts, kind="stable")
    return FeatureChunk(new.chunk_start_us, new.columns, ts[order], values[order])


def chunks_to_frame(chunks: Sequence[FeatureChunk], start_us: int, end_us: int) -> pd.DataFrame:
    """The rows with start <= ts <= end: a `ts` column plus one column per feature, ascending.

    `chunks` come ordered by chunk_start (as the stores return them), so their rows are already in time order.
    """
    if not chunks:
        return pd.DataFrame({"ts": pd.Series(dtype="datetime64[ns, UTC]")})
    columns = chunks[0].columns
    if any(c.columns != columns for c in chunks):  # a feature set changed within a version: keep the newest's
        columns = chunks[-1].columns
        chunks = [c for c in chunks if c.columns == columns]
    ts = np.concatenate([c.ts_us for c in chunks])
    values = np.concatenate([c.values for c in chunks]) if len(chunks) > 1 else chunks[0].values
    rows = (ts >= start_us) & (ts <= end_us)
    frame = pd.DataFrame(values[rows], columns=list(columns))
    frame.insert(0, "ts", pd.to_datetime(ts[rows], unit="us", utc=True).as_unit("ns"))
    if frame["ts"].is_monotonic_increasing:
        return frame
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def text_to_us(text: str) -> int:
    """`2024-01-02T14:30:00.000000Z` (the embedded store's timestamp text) as microseconds since the epoch."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
