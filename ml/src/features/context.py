"""Market-context features (ML_CONTEXT_SYMBOLS): another symbol's bars joined as of each bar's close.

For a pair bar that closes at T, the context value is the one of the context symbol's latest bar that closed at
or before T, never a later bar. A bar's close is taken as its timestamp plus its timeframe's length (a
conservative bound: a d1 bar stamped at the session open counts as closed a day later), so an intraday bar is
joined to the previous session's daily context bar, and a daily bar to the context's bar of the same day.

Per context symbol SYM (columns ``ctx_SYM_*``): its log returns over 1, 5 and 20 of its own bars and its 20-bar
volatility (all as of the joined bar); over the pair's last 60 bars the correlation and beta of the pair's
1-bar log return with the context's move between the same bars; and the relative strength, the pair's 20-bar
log return minus the context's over the same bars. Finite memory: row i depends on pair rows i - 60 .. i and on
context bars closed by row i's close (up to 20 + 1 of them back), so later bars never change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ml.src.features.technical_indicators import _div, _rolling_std, _rolling_sum, _shift

if TYPE_CHECKING:
    from ml.src.data.store import TrainingStore

BAR_LENGTH: dict[str, timedelta] = {
    "m15": timedelta(minutes=15),
    "h1": timedelta(hours=1),
    "h4": timedelta(hours=4),
    "d1": timedelta(days=1),
    "w1": timedelta(days=7),
}
CONTEXT_SPANS = (1, 5, 20)
CORR_WINDOW = 60
RS_SPAN = 20
# Context bars read before the window's first bar (calendar days): enough for the 20-bar spans of a daily or
# weekly context (the window's first rows are the features' warm-up anyway).
HISTORY_DAYS = {"m15": 5, "h1": 10, "h4": 20, "d1": 60, "w1": 400}


def context_columns(symbol: str) -> tuple[str, ...]:
    p = f"ctx_{symbol}_"
    return (
        *(f"{p}ret_{k}" for k in CONTEXT_SPANS),
        f"{p}rv_20",
        f"{p}corr_{CORR_WINDOW}",
        f"{p}beta_{CORR_WINDOW}",
        f"{p}rel_strength_{RS_SPAN}",
    )


def joined_index(pair_ts: pd.Series, pair_tf: str, ctx_ts: pd.Series, ctx_tf: str) -> np.ndarray:
    """For each pair bar, the index of the latest context bar closed at or before the pair bar's close; -1 if
    none."""
    pair_close = timestamps_ns(pair_ts) + _ns(BAR_LENGTH[pair_tf])
    ctx_close = timestamps_ns(ctx_ts) + _ns(BAR_LENGTH[ctx_tf])
    return np.searchsorted(ctx_close, pair_close, side="right") - 1


def timestamps_ns(ts: pd.Series) -> np.ndarray:
    """UTC nanoseconds whatever the series' own unit (CSV bars come back in us, a store's may be ns)."""
    return pd.to_datetime(ts, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


def context_features(
    bars: pd.DataFrame, pair_tf: str, ctx_bars: pd.DataFrame, ctx_tf: str, symbol: str
) -> pd.DataFrame:
    """The context columns of `symbol` for every row of `bars` (ts, close; ascending), same index."""
    c = np.log(bars["close"].to_numpy(dtype=np.float64))
    cc = np.log(ctx_bars["close"].to_numpy(dtype=np.float64))
    idx = joined_index(bars["ts"], pair_tf, ctx_bars["ts"], ctx_tf)
    ok = idx >= 0

    def at(values: np.ndarray) -> np.ndarray:
        return np.where(ok, values[np.maximum(idx, 0)], np.nan)

    own: dict[str, np.ndarray] = {f"ret_{k}": cc - _shift(cc, k) for k in CONTEXT_SPANS}
    own["rv_20"] = _rolling_std(cc - _shift(cc, 1), 20)
    cols = context_columns(symbol)
    out: dict[str, np.ndarray] = {}
    for name, values in own.items():
        out[f"ctx_{symbol}_{name}"] = at(values) if len(values) else np.full(len(bars), np.nan)
    lc = at(cc) if len(cc) else np.full(len(bars), np.nan)
    dm = lc - _shift(lc, 1)  # the context's move between consecutive pair bars
    r = c - _shift(c, 1)
    n = CORR_WINDOW
    sx, sy = _rolling_sum(r, n), _rolling_sum(dm, n)
    cov = _rolling_sum(r * dm, n) - sx * sy / n
    vx = np.maximum(_rolling_sum(r * r, n) - sx * sx / n, 0.0)
    vy = np.maximum(_rolling_sum(dm * dm, n) - sy * sy / n, 0.0)
    out[f"ctx_{symbol}_corr_{n}"] = _div(cov, np.sqrt(vx * vy), 0.0)
    out[f"ctx_{symbol}_beta_{n}"] = _div(cov, vy, 0.0)
    out[f"ctx_{symbol}_rel_strength_{RS_SPAN}"] = (c - _shift(c, RS_SPAN)) - (lc - _shift(lc, RS_SPAN))
    return pd.DataFrame({k: out[k] for k in cols}, index=bars.index)


@dataclass(frozen=True)
class ContextResult:
    """Context columns for the rows of a window, and a line per context symbol that could not be used."""

    frame: pd.DataFrame  # one column per used context feature, the window's rows
    used: tuple[str, ...]
    notes: tuple[str, ...]


def stale_rows(
    bars: pd.DataFrame, pair_tf: str, ctx_bars: pd.DataFrame, ctx_tf: str, max_age: timedelta
) -> int:
    """Rows of `bars` whose joined context bar is missing or closed more than `max_age` before them."""
    idx = joined_index(bars["ts"], pair_tf, ctx_bars["ts"], ctx_tf)
    if not len(ctx_bars):
        return len(bars)
    pair_ns = timestamps_ns(bars["ts"])
    ctx_ns = timestamps_ns(ctx_bars["ts"])[np.maximum(idx, 0)]
    age = pair_ns - ctx_ns
    return int(((idx < 0) | (age > _ns(max_age))).sum())


def _ns(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1) * 1000


def context_timeframes(pair_tf: str) -> tuple[str, ...]:
    """The context's timeframe: the pair's own, or for an intraday pair the daily bars if it has no intraday."""
    return (pair_tf,) if pair_tf in ("d1", "w1") else (pair_tf, "d1")


def load_context(
    store: TrainingStore,
    symbol: str,
    timeframe: str,
    bars: pd.DataFrame,
    context_symbols: list[str] | tuple[str, ...],
    max_gap_days: dict[str, float],
) -> ContextResult:
    """Context columns for every row of `bars` (the pair's bars, warm-up included) from each usable context symbol.

    A context symbol is used when it has bars in a context timeframe and every row of `bars` after the features'
    warm-up has a joined bar no older than that timeframe's max gap plus two bars; otherwise the pair trains
    without it and `notes` says why in one line.
    """
    from ml.src.features.technical_indicators import WARMUP_BARS

    label = f"{symbol}/{timeframe}"
    frames: list[pd.DataFrame] = []
    used: list[str] = []
    notes: list[str] = []
    if bars.empty:
        return ContextResult(pd.DataFrame(index=bars.index), (), ())
    first, last = bars["ts"].iloc[0], bars["ts"].iloc[-1]
    checked = bars.iloc[
        min(WARMUP_BARS, len(bars) - 1) :
    ]  # rows a model sees (the warm-up only feeds windows)
    for ctx in context_symbols:
        if ctx == symbol:
            notes.append(f"{label}: context {ctx} is the pair's own symbol: trained without it")
            continue
        reason = (
            f"{label}: context {ctx} has no {'/'.join(context_timeframes(timeframe))} bars between "
            f"{first.date().isoformat()} and {last.date().isoformat()}"
        )
        for ctx_tf in context_timeframes(timeframe):
            start = first - timedelta(days=HISTORY_DAYS[ctx_tf])
            ctx_bars = store.read_bars(ctx, ctx_tf, start=start.to_pydatetime(), end=last.to_pydatetime())
            if ctx_bars.empty:
                continue
            max_age = timedelta(days=max_gap_days.get(ctx_tf, 7.0)) + 2 * BAR_LENGTH[ctx_tf]
            stale = stale_rows(checked, timeframe, ctx_bars, ctx_tf, max_age)
            if stale:
                reason = (
                    f"{label}: context {ctx}/{ctx_tf} lacks bars for {stale} of {len(checked)} rows "
                    f"(bars {ctx_bars['ts'].iloc[0].isoformat()} .. {ctx_bars['ts'].iloc[-1].isoformat()})"
                )
                continue
            frames.append(context_features(bars, timeframe, ctx_bars.reset_index(drop=True), ctx_tf, ctx))
            used.append(ctx)
            break
        else:
            notes.append(f"{reason}: trained without it")
    frame = pd.concat(frames, axis=1) if frames else pd.DataFrame(index=bars.index)
    return ContextResult(frame, tuple(used), tuple(notes))
