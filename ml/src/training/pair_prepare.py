"""Phase 1 of a pair: read its bars (checked), compute or read the features, label the window and split it
(store I/O, in the job's process). Any expected problem raises PairFailure with a one-line reason."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from config.settings import Settings, TimeframeSpec
from ml.src.data.bar_checks import first_bad_bar
from ml.src.data.store import TrainingStore
from ml.src.features.context import ContextResult, load_context
from ml.src.features.feature_cache import FeatureError, cache_in_use, features_for_window
from ml.src.features.technical_indicators import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    WARMUP_BARS,
    feature_set,
)
from ml.src.training.labels import (
    EX_ANTE_MODE,
    ex_ante_scale,
    forward_returns,
    label_codes,
    thresholds_for,
)
from ml.src.training.metrics import class_counts, empty_classes
from ml.src.training.pair_result import PairRequest
from ml.src.training.pair_state import PreparedPair
from ml.src.training.splits import SplitError, min_usable_rows, purged_split

if TYPE_CHECKING:
    pass


class PairFailure(RuntimeError):
    """A pair that cannot be trained; str() is the one-line reason recorded with the result."""


class NotEnoughHistory(PairFailure):
    """No bars at all: a failure for a pair the user named, a skip for a pair of the universe (--all / the
    scheduler)."""


class PairSkipped(RuntimeError):
    """Some bars, but fewer than the computed minimum history: skipped (not failed) whoever asked, with
    'insufficient history: N bars, needs M'. Nothing is wrong; the pair trains once it has the bars."""


# --------------------------------------------------------------------------------------------------- prepare
def read_end(as_of: datetime | None) -> datetime:
    """The last bar instant a read for training may return: --as-of, but never after now. A bar dated after now
    (written by another tool, or a vendor's clock) has not closed: it is never trained on."""
    now = datetime.now(UTC)
    return now if as_of is None or as_of > now else as_of


def _read_window(store: TrainingStore, req: PairRequest, target: int, warmup: int) -> pd.DataFrame:
    end = read_end(req.as_of)
    if req.lookback_days is None:
        return store.read_bars(req.symbol, req.timeframe, end=end, limit=target + warmup)
    latest = store.read_bars(req.symbol, req.timeframe, end=end, limit=1)
    if latest.empty:
        return latest
    anchor = latest["ts"].iloc[-1]
    start = anchor - timedelta(days=req.lookback_days)
    window = store.read_bars(req.symbol, req.timeframe, end=anchor, start=start, limit=target)
    if window.empty:
        return window
    history = store.read_bars(
        req.symbol, req.timeframe, end=window["ts"].iloc[0] - timedelta(microseconds=1), limit=warmup
    )
    return pd.concat([history, window], ignore_index=True)


def check_bars(bars: pd.DataFrame, label: str, spec: TimeframeSpec) -> None:
    """Reject bars a model must not learn from or forecast at: every per-bar check the loader runs
    (ml.src.data.bar_checks: NaN/inf, prices <= 0, high/low not bounding open/close, implausible values), and
    holes in the series."""
    bad = first_bad_bar(bars)
    if bad is not None:
        raise PairFailure(f"{label}: bar at {bars['ts'].iloc[bad.index].isoformat()} has {bad.problem}")
    gaps = bars["ts"].diff().dt.total_seconds().to_numpy()[1:] / 86400.0
    if gaps.size and np.nanmax(gaps) > spec.max_gap_days:
        i = int(np.nanargmax(gaps))
        raise PairFailure(
            f"{label}: gap of {gaps[i]:.1f} days between bars {bars['ts'].iloc[i].isoformat()} and "
            f"{bars['ts'].iloc[i + 1].isoformat()} (max_gap_days={spec.max_gap_days:g})"
        )


def required_bars(spec: TimeframeSpec, settings: Settings) -> tuple[int, str]:
    """The fewest bars a pair can train on, and how that number is made up.

    warm-up (the features' look-back) + h unlabelled rows at the end + 2 purges of h + the fewest rows the
    split fractions turn into min_rows_per_split rows per slice.
    """
    h = spec.horizon_bars
    warmup = warmup_bars(spec)
    usable = min_usable_rows(settings.train_fraction, settings.valid_fraction, settings.min_rows_per_split)
    need = warmup + 3 * h + usable
    how = (
        f"{warmup} warm-up + {h} unlabelled + 2 x {h} purged + {usable} rows for "
        f"{settings.min_rows_per_split}+ per train/valid/test slice"
    )
    return need, how


def warmup_bars(spec: TimeframeSpec) -> int:
    """History fetched before the window: the features' own look-back, or more if the timeframe asks."""
    return max(spec.warmup_bars or 0, WARMUP_BARS)


def prepare_pair(store: TrainingStore, req: PairRequest, settings: Settings) -> PreparedPair:
    label = f"{req.symbol}/{req.timeframe}"
    spec = settings.timeframes[req.timeframe]
    h = spec.horizon_bars
    target = req.target_bars or spec.target_bars
    warmup = warmup_bars(spec)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    # the revision BEFORE the bars: a change after this read makes the next run retrain, never the reverse
    revision = store.bar_revision(req.symbol, req.timeframe)
    bars = _read_window(store, req, target, warmup)
    timings["load"] = time.perf_counter() - t0
    if bars.empty:
        where = f" up to {req.as_of.isoformat()}" if req.as_of else ""
        raise NotEnoughHistory(f"{label}: no bars in the {store.name} store{where}")
    check_bars(bars, label, spec)
    need, how = required_bars(spec, settings)
    if len(bars) < need:
        raise PairSkipped(f"{label}: insufficient history: {len(bars)} bars, needs {need} ({how})")

    t0 = time.perf_counter()
    fset = feature_set(settings.vol_features)
    try:
        feats = features_for_window(
            store,
            req.symbol,
            req.timeframe,
            bars,
            warmup,
            revision=revision,
            use_cache=cache_in_use(settings.feature_cache, revision),
            fset=fset,
        )
    except FeatureError as exc:
        raise PairFailure(str(exc)) from exc
    columns = list(fset.columns)
    frame = feats.frame
    context: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    if settings.context_symbols:
        ctx = context_for_window(
            store, req.symbol, req.timeframe, bars, warmup, settings.context_symbols, settings
        )
        frame = pd.concat([frame, ctx.frame], axis=1)
        columns += list(ctx.frame.columns)
        context, notes = ctx.used, ctx.notes  # the run's warnings (run_loop) say which were left out
    timings["features"] = time.perf_counter() - t0

    scale = None
    if settings.threshold_mode == EX_ANTE_MODE:
        # each row's volatility as of its own bar, from the bars before the window on (the warm-up covers it)
        scale = ex_ante_scale(bars["close"], h)[len(bars) - len(frame) :]
    prep = label_window(
        req,
        spec,
        frame,
        settings,
        data_end=bars["ts"].iloc[-1],
        revision=revision,
        columns=tuple(columns),
        scale=scale,
        feature_version=fset.version,
    )
    prep.n_bars, prep.n_cached, prep.n_computed = len(bars), feats.n_cached, feats.n_computed
    prep.timings, prep.context, prep.notes = timings, context, notes
    return prep


def label_window(
    req: PairRequest,
    spec: TimeframeSpec,
    frame: pd.DataFrame,
    settings: Settings,
    *,
    data_end: pd.Timestamp,
    revision: int | None,
    columns: tuple[str, ...] = FEATURE_COLUMNS,
    scale: np.ndarray | None = None,
    feature_version: str = FEATURE_SET_VERSION,
) -> PreparedPair:
    """Labels, split and thresholds of a training window whose features are computed (`frame`: ts, close and
    the `columns` of the window's bars, warm-up excluded; `scale`: ex_ante_vol's per-row volatility): what the
    job trains on. Shared by prepare_pair and the replay (ml.src.training.replay_loop), which computes a pair's
    features once and cuts windows from them."""
    label = f"{req.symbol}/{req.timeframe}"
    h = spec.horizon_bars
    frame = frame.reset_index(drop=True)
    returns_all = forward_returns(frame["close"], h)
    n_labelled = len(frame) - h  # the last h rows have no known future
    try:
        split = purged_split(
            n_labelled, h, settings.train_fraction, settings.valid_fraction, settings.min_rows_per_split
        )
    except SplitError as exc:
        raise PairFailure(f"{label}: {exc}") from exc
    returns = returns_all[:n_labelled]
    thresholds = thresholds_for(
        settings.threshold_mode, returns[split.train], spec.threshold, settings.threshold_k
    )
    row_scale = scale[:n_labelled] if scale is not None else None
    codes = label_codes(returns, thresholds, row_scale)
    empty = empty_classes(codes[split.train])
    if empty:
        raise PairFailure(
            f"{label}: class {', '.join(empty)} has no samples in train (counts {class_counts(codes[split.train])}, "
            f"thresholds {thresholds.lower:+.4f}/{thresholds.upper:+.4f})"
        )
    ts = frame["ts"].iloc[:n_labelled].reset_index(drop=True)
    return PreparedPair(
        request=req,
        spec=spec,
        ts=ts,
        x=frame.loc[: n_labelled - 1, list(columns)].to_numpy(dtype="float64"),
        codes=codes,
        returns=returns,
        thresholds=thresholds,
        split=split,
        split_info={
            **split.boundaries(ts),
            "data_end": pd.Timestamp(data_end).isoformat(),
            "data_revision": revision,
        },
        n_bars=len(frame),
        n_cached=0,
        n_computed=len(frame),
        feature_names=tuple(columns),
        feature_version=feature_version,
        scale=row_scale,
    )


def context_for_window(
    store: TrainingStore,
    symbol: str,
    timeframe: str,
    bars: pd.DataFrame,
    warmup: int,
    symbols: list[str] | tuple[str, ...],
    settings: Settings,
) -> ContextResult:
    """The ML_CONTEXT_SYMBOLS columns for the window rows (bars[warmup:], index from 0), and the notes of the
    context symbols left out (no bars, bars missing for some rows, or undefined values in the window)."""
    gaps = {tf: spec.max_gap_days for tf, spec in settings.timeframes.items()}
    ctx = load_context(store, symbol, timeframe, bars, symbols, gaps)
    window = ctx.frame.iloc[warmup:].reset_index(drop=True)
    used, notes = list(ctx.used), list(ctx.notes)
    for name in ctx.used:
        cols = [c for c in window.columns if c.startswith(f"ctx_{name}_")]
        block = window[cols].to_numpy(dtype="float64")
        if not np.isfinite(block).all():
            first = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            at = bars["ts"].iloc[warmup + first].isoformat()
            notes.append(f"{symbol}/{timeframe}: context {name} undefined at {at}: trained without it")
            window = window.drop(columns=cols)
            used.remove(name)
    return ContextResult(window, tuple(used), tuple(notes))


def no_new_bars_reason(store: TrainingStore, req: PairRequest) -> str | None:
    """Why this pair needs no training now, or None.

    Skipped when the pair's latest successful training used the same data revision (no bar inserted, changed
    or deleted since; whoever wrote them) and its latest bar (up to --as-of) is no newer than the bar that
    training ended on. Without revisions (bars exposed through a view), only the latest timestamp is compared.
    """
    if req.force:
        return None
    last = store.last_training(req.symbol, req.timeframe)
    if last is None or last.data_end is None:
        return None
    revision = store.bar_revision(req.symbol, req.timeframe)
    if revision is not None and revision != last.revision:
        return None  # bars were inserted, corrected or deleted since that training
    latest = store.read_bars(req.symbol, req.timeframe, end=read_end(req.as_of), limit=1)
    if latest.empty or latest["ts"].iloc[-1] > pd.Timestamp(last.data_end):
        return None
    bar = latest["ts"].iloc[-1].isoformat()
    trained_to = pd.Timestamp(last.data_end).isoformat()
    if req.as_of is not None and latest["ts"].iloc[-1] < pd.Timestamp(last.data_end):
        # --as-of in the past, after a later training: say that this is why, and how to train as of it anyway
        return (
            f"no new bars up to --as-of {req.as_of.isoformat()} (latest {bar}): the pair's latest model was "
            f"trained on bars up to {trained_to}; --force to train as of {req.as_of.isoformat()} anyway"
        )
    return f"no new bars (latest {bar} already trained on; --force to retrain)"
