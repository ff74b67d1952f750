"""Read-through feature cache keyed by (symbol, timeframe, feature-set version, ts).

Features are computed on the fetched bars (warm-up history included) only when some rows of the training
window are missing from the cache; only the missing rows are written back. The returned frame is the same
set of columns, in the same order, whether the rows came from the cache or were computed now.

Missing rows are computed from the first missing row's own warm-up on (the features have finite memory and are
bit-identical whatever the series' start), so a window whose cache was invalidated from a corrected bar on gets
exactly the features a fresh store would compute, and a night with one new bar computes ~WARMUP_BARS rows. The write
carries the bar revision read before the bars: if another writer changed the pair's bars meanwhile (and the
store's triggers invalidated the cache), the features of the replaced bars are not written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from ml.src.data.feature_chunks import timestamps_to_us
from ml.src.data.store import TrainingStore
from ml.src.features.technical_indicators import (
    FEATURE_COLUMNS,
    WARMUP_BARS,
    FeatureSet,
    add_technical_features,
    feature_set,
)

BASE_SET = feature_set(False)


class FeatureError(ValueError):
    """Features could not be built for a window (e.g. not enough history for the warm-up)."""


@dataclass(frozen=True)
class FeatureFrame:
    """Features for the training window: `frame` has ts, close and FEATURE_COLUMNS, ascending by ts."""

    frame: pd.DataFrame
    n_cached: int
    n_computed: int


def _finite_rows(frame: pd.DataFrame, columns: tuple[str, ...] = FEATURE_COLUMNS) -> np.ndarray:
    return np.isfinite(frame.loc[:, list(columns)].to_numpy(dtype="float64")).all(axis=1)


def _compute_missing(
    bars: pd.DataFrame, warmup_bars: int, missing: np.ndarray, fset: FeatureSet = BASE_SET
) -> pd.DataFrame:
    """`ts` + features of the window rows flagged in `missing` (window = bars[warmup_bars:]).

    Computed over the bars from the first missing row's own look-back on, not the whole history: a feature of row
    i depends only on rows i - WARMUP_BARS .. i, as the same dot products in the same order wherever the series
    starts, so the values are bit-identical (test_feature_cache) and a cached night costs a few hundred rows of
    computing instead of the whole window.
    """
    first = int(np.argmax(missing))  # window row of the first missing feature row
    start = warmup_bars + first - WARMUP_BARS  # >= 0: warmup_bars >= WARMUP_BARS
    part = bars.iloc[start:]
    tail = (
        add_technical_features(part, vol_features=True) if fset.vol_features else add_technical_features(part)
    )
    tail = tail.iloc[WARMUP_BARS:].reset_index(drop=True)
    return tail.loc[missing[first:], ["ts", *fset.columns]]


def features_for_window(
    store: TrainingStore,
    symbol: str,
    timeframe: str,
    bars: pd.DataFrame,
    warmup_bars: int = WARMUP_BARS,
    revision: int | None = None,
    use_cache: bool = True,
    fset: FeatureSet = BASE_SET,
) -> FeatureFrame:
    """Features for bars[warmup_bars:], from the cache where present and computed (and cached) otherwise.

    `bars` must carry at least `warmup_bars` rows of history before the window. With use_cache=False the store
    is not touched: every row is computed (see `cache_in_use` for when that is the cheaper way). `fset` picks
    the columns (ML_VOL_FEATURES adds some); its version keys the cache, so two sets never share rows.
    """
    columns = list(fset.columns)
    warmup_bars = max(warmup_bars, WARMUP_BARS)
    if len(bars) <= warmup_bars:
        raise FeatureError(
            f"{symbol}/{timeframe}: {len(bars)} bars leave nothing after {warmup_bars} warm-up bars"
        )
    window = bars.iloc[warmup_bars:].reset_index(drop=True)
    start, end = window["ts"].iloc[0], window["ts"].iloc[-1]
    # Cached rows are matched to the window on int64 microseconds with numpy (pandas' isin/concat/sort of two
    # frames cost about as much as the new row's features)
    values = np.full((len(window), len(columns)), np.nan)
    have = np.zeros(len(window), dtype=bool)
    if use_cache:
        cached = store.read_feature_cache(symbol, timeframe, fset.version, start, end)
        if not cached.empty and set(columns).issubset(cached.columns):
            if not cached["ts"].is_monotonic_increasing:
                cached = cached.sort_values("ts", kind="stable")
            cached_us = timestamps_to_us(cached["ts"])
            window_us = timestamps_to_us(window["ts"])
            at = np.minimum(np.searchsorted(cached_us, window_us), len(cached_us) - 1)
            rows = np.flatnonzero(cached_us[at] == window_us)
            found = cached.loc[:, columns].to_numpy(dtype="float64")[at[rows]]
            usable = np.isfinite(found).all(axis=1)
            values[rows[usable]] = found[usable]
            have[rows[usable]] = True
    missing = ~have

    n_computed = int(missing.sum())
    if n_computed:
        computed = _compute_missing(bars, warmup_bars, missing, fset)
        bad = ~_finite_rows(computed, fset.columns)
        if bad.any():
            first = computed.loc[bad, "ts"].iloc[0]
            raise FeatureError(
                f"{symbol}/{timeframe}: non-finite features at {first.isoformat()} after warm-up"
            )
        if use_cache:
            store.upsert_feature_cache(symbol, timeframe, fset.version, computed, revision=revision)
        values[missing] = computed.loc[:, columns].to_numpy(dtype="float64")
    # One float block built at once: assigning 63 columns one by one cost more than computing the features.
    frame = pd.DataFrame(values, columns=columns)
    # the same rows as the window; the bars' own ts dtype whichever part they came from
    frame.insert(0, "ts", window["ts"].array)
    frame.insert(1, "close", window["close"].to_numpy())
    return FeatureFrame(frame=frame, n_cached=len(window) - n_computed, n_computed=n_computed)


def cache_in_use(setting: str, revision: int | None) -> bool:
    """Whether to use the cache: ML_FEATURE_CACHE is not `off` (`auto`, the old default, means `on`), on either
    store, and the store tracks the pair's bar revision (`revision` is not None). Bars exposed through a view named
    ohlc_bars have no triggers, so a corrected bar would leave stale features in the cache: computed instead.

    Measured in docs/benchmarks.md (scripts/bench_cache.py --night): with only the missing rows computed (over their
    own warm-up, not the whole history) a cached night costs less than computing every row.
    """
    return setting != "off" and revision is not None


def fetch_or_build_features(
    store: TrainingStore,
    symbol: str,
    timeframes: Iterable[str],
    limits: Mapping[str, int],
    as_of: datetime | None = None,
    fset: FeatureSet = BASE_SET,
) -> dict[str, FeatureFrame]:
    """Features for the latest `limits[tf]` bars of each timeframe (as of `as_of`), via the cache."""
    out: dict[str, FeatureFrame] = {}
    for tf in timeframes:
        revision = store.bar_revision(symbol, tf)  # before the bars: a later change makes the write a no-op
        bars = store.read_bars(symbol, tf, end=as_of, limit=limits[tf] + WARMUP_BARS)
        out[tf] = features_for_window(store, symbol, tf, bars, revision=revision, fset=fset)
    return out
