"""One pair's forecast: its champion, the features of its latest closed bar (via the feature cache, as in training), one
row in `ml_forecasts`.

Statuses: `written` (a new row), `unchanged` (this model already forecast this bar: nothing written), `skipped`
(no usable champion: none, expired, built for another feature set; no closed bar yet; the bar is inside the
champion's own training data) and `failed` (the champion's file is missing, altered or built with another major
library version; too little history for the features; bad bars; the store failing). Realised outcomes of the
pair's earlier forecasts are recorded first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from config.settings import Settings
from ml.src.data.records import ForecastRecord
from ml.src.data.store import StoreError, TrainingStore
from ml.src.features.feature_cache import FeatureError, cache_in_use, features_for_window
from ml.src.features.technical_indicators import VOL_FEATURE_SUFFIX, WARMUP_BARS, feature_set
from ml.src.inference.bar_clock import SessionGrid, latest_closed_index, target_ts
from ml.src.training.artifacts import ArtifactError
from ml.src.training.ensemble import EnsembleModel, MissingFeaturesError
from ml.src.training.labels import EX_ANTE_MODE, ex_ante_scale
from ml.src.training.outcomes import fill_outcomes, realised_label
from ml.src.training.pipeline import PairFailure, check_bars, context_for_window
from ml.src.training.registry import ChampionError, load_champion, model_context


@dataclass
class ForecastResult:
    symbol: str
    timeframe: str
    status: str
    reason: str | None = None
    bar_ts: str | None = None
    target_ts: str | None = None
    horizon_bars: int | None = None
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    # How `label` was chosen from `probabilities`: "prior_ratio" = the class whose probability most exceeds its
    # training share (`training_shares`), which is not always the most probable class; "argmax" for bundles
    # written before that rule.
    label_rule: str | None = None
    training_shares: dict[str, float] | None = None
    direction_score: float | None = None
    model_version_id: int | None = None
    model_trained_at: str | None = None
    outcomes_realised: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["duration_s"] = round(self.duration_s, 3)
        return out


def _warmup(model: EnsembleModel, settings: Settings, timeframe: str) -> int:
    recorded = (model.metadata.get("timeframe_settings") or {}).get("warmup_bars")
    return max(int(recorded or 0), settings.timeframes[timeframe].warmup_bars or 0, WARMUP_BARS)


def decision_rule(model: EnsembleModel) -> tuple[str, dict[str, float] | None]:
    """The bundle's rule from probabilities to a label, and the training shares it divides by."""
    decision = model.metadata.get("decision") or {}
    if decision.get("rule") == "prior_ratio":
        shares = {c: float(v) for c, v in zip(model.classes, decision["prior"], strict=True)}
        return "prior_ratio", shares
    return "argmax", None


class _Stop(Exception):
    """A step ended the pair's forecast: its status and one-line reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _champion(
    store: TrainingStore, settings: Settings, symbol: str, timeframe: str, now: datetime, explicit: bool
) -> tuple[dict[str, Any], EnsembleModel]:
    """The pair's champion row and its loaded, verified model."""
    label = f"{symbol}/{timeframe}"
    row = store.get_champion(symbol, timeframe)
    if row is None:
        if explicit and not store.pairs_with_bars([symbol], [timeframe]):
            raise _Stop("failed", f"{label}: no bars in the {store.name} store")
        raise _Stop("skipped", f"{label}: no champion model yet (train the pair first)")
    try:
        model = load_champion(symbol, timeframe, settings=settings, store=store, now=now)
    except ChampionError as exc:
        raise _Stop("skipped", str(exc)) from None
    except (ArtifactError, OSError) as exc:
        raise _Stop("failed", f"{label}: champion unusable: {exc}") from None
    if model.metadata.get("run_id") != row.get("run_id"):
        raise _Stop("failed", f"{label}: the champion changed while forecasting; run again")
    return row, model


def _closed_window(
    store: TrainingStore,
    settings: Settings,
    model: EnsembleModel,
    symbol: str,
    timeframe: str,
    clock: datetime,
) -> tuple[pd.DataFrame, SessionGrid, int, int | None]:
    """The bars up to the latest closed one (its warm-up before it), the session grid, the warm-up, the revision."""
    label = f"{symbol}/{timeframe}"
    spec = settings.timeframes[timeframe]
    warmup = _warmup(model, settings, timeframe)
    revision = store.bar_revision(symbol, timeframe)  # before the bars, as in training (see feature_cache)
    bars = store.read_bars(symbol, timeframe, end=clock, limit=warmup + 2)
    if bars.empty:
        raise _Stop("failed", f"{label}: no bars up to {clock.isoformat()}")
    grid = SessionGrid.from_history(bars["ts"])
    last = latest_closed_index(bars["ts"], timeframe, clock, grid)
    if last is None:
        raise _Stop("skipped", f"{label}: no closed bar at {clock.isoformat()} yet")
    window = bars.iloc[max(0, last - warmup) : last + 1].reset_index(drop=True)
    bar_ts = window["ts"].iloc[-1]
    data_end = (model.metadata.get("split") or {}).get("data_end")
    if data_end is not None and bar_ts < pd.Timestamp(data_end):
        raise _Stop(
            "skipped",
            f"{label}: bar {bar_ts.isoformat()} is inside the champion's training data (up to "
            f"{pd.Timestamp(data_end).isoformat()}): not a forecast",
        )
    try:
        check_bars(window, label, spec)
    except PairFailure as exc:
        raise _Stop("failed", str(exc)) from None
    return window, grid, warmup, revision


def _features_at(
    store: TrainingStore,
    settings: Settings,
    model: EnsembleModel,
    symbol: str,
    timeframe: str,
    window: pd.DataFrame,
    warmup: int,
    revision: int | None,
) -> pd.DataFrame:
    """The model's input row at the window's last bar, from the same cache (and context) as training."""
    at = f"{symbol}/{timeframe}: at bar {window['ts'].iloc[-1].isoformat()}"
    fset = feature_set(str(model.metadata.get("feature_version", "")).endswith(VOL_FEATURE_SUFFIX))
    try:
        feats = features_for_window(
            store,
            symbol,
            timeframe,
            window,
            warmup,
            revision=revision,
            use_cache=cache_in_use(settings.feature_cache, revision),
            fset=fset,
        )
    except FeatureError as exc:
        raise _Stop("failed", f"{at}: {exc}") from None
    frame = feats.frame
    context = model_context(model)
    if context:  # the champion's context symbols, joined as of this bar's close as in training
        ctx = context_for_window(store, symbol, timeframe, window, warmup, context, settings)
        if ctx.notes:
            raise _Stop("failed", f"{at}: {ctx.notes[0]}")
        frame = pd.concat([frame, ctx.frame], axis=1)
    return frame.loc[:, list(model.feature_names)].iloc[[-1]]


def _thresholds_at(
    model: EnsembleModel, close: np.ndarray, h: int, at: str
) -> tuple[float | None, float | None, float | None, float | None]:
    """This bar's return thresholds and those of the bar h earlier (the persistence label's)."""
    thresholds = model.metadata.get("thresholds") or {}
    lower, upper = thresholds.get("lower"), thresholds.get("upper")
    if thresholds.get("mode") != EX_ANTE_MODE:
        return lower, upper, lower, upper
    # multiples of each bar's own ex-ante volatility: this bar's return thresholds (and, for the persistence
    # label, those of the bar h earlier)
    scale = ex_ante_scale(close, h)
    lower, upper = float(thresholds["lower"] * scale[-1]), float(thresholds["upper"] * scale[-1])
    past = float(scale[-1 - h]) if len(close) > h else float("nan")
    if not (np.isfinite(lower) and np.isfinite(past)):
        raise _Stop("failed", f"{at}: too little history for the ex-ante volatility of the thresholds")
    return lower, upper, thresholds["lower"] * past, thresholds["upper"] * past


def forecast_pair(
    store: TrainingStore,
    settings: Settings,
    symbol: str,
    timeframe: str,
    *,
    as_of: datetime | None = None,
    now: datetime | None = None,
    explicit: bool = False,
) -> ForecastResult:
    """Forecast one pair at its latest bar closed by `as_of` (default: now) and write it; never raises for a
    pair-level problem (the result says what happened). An `explicit` pair (named by the user) without any bars
    fails, as the training job fails it; a pair of the universe without a champion is only skipped."""
    t0 = time.perf_counter()
    now = now or datetime.now(UTC)
    clock = min(as_of, now) if as_of else now  # a bar after now has not closed: never forecast at it
    result = ForecastResult(symbol=symbol, timeframe=timeframe, status="failed")

    def done(status: str, reason: str | None = None) -> ForecastResult:
        result.status, result.reason = status, reason
        result.duration_s = time.perf_counter() - t0
        return result

    try:
        result.outcomes_realised = fill_outcomes(store, symbol, timeframe)
        row, model = _champion(store, settings, symbol, timeframe, now, explicit)
        window, grid, warmup, revision = _closed_window(store, settings, model, symbol, timeframe, clock)
        bar_ts = window["ts"].iloc[-1]
        at = f"{symbol}/{timeframe}: at bar {bar_ts.isoformat()}"
        features = _features_at(store, settings, model, symbol, timeframe, window, warmup, revision)
        try:
            proba = model.predict_proba(features)[0]
        except MissingFeaturesError as exc:
            raise _Stop("failed", f"{at}: {exc}") from None
        h = settings.timeframes[timeframe].horizon_bars
        close = window["close"].to_numpy(dtype="float64")
        lower, upper, past_lower, past_upper = _thresholds_at(model, close, h, at)
        p = {name: float(v) for name, v in zip(model.classes, proba, strict=True)}
        persistence = (
            realised_label(float(close[-1] / close[-1 - h] - 1.0), past_lower, past_upper)
            if len(close) > h
            else None
        )
        target = target_ts(bar_ts.to_pydatetime(), timeframe, h, grid)
        record = ForecastRecord(
            symbol=symbol,
            timeframe=timeframe,
            bar_ts=bar_ts.to_pydatetime(),
            horizon_bars=h,
            target_ts=target,
            p_bearish=p["BEARISH"],
            p_neutral=p["NEUTRAL"],
            p_bullish=p["BULLISH"],
            label=model.classes[int(model.decide(proba[None, :])[0])],  # the bundle's decision rule
            direction_score=p["BULLISH"] - p["BEARISH"],
            model_version_id=int(row["id"]),
            model_trained_at=pd.Timestamp(row["trained_at"]).to_pydatetime(),
            model_run_id=str(row["run_id"]),
            model_sha256=row.get("artifact_sha256"),
            bar_close=float(close[-1]),
            threshold_lower=lower,
            threshold_upper=upper,
            persistence_label=persistence,
        )
        written = store.insert_forecast(record)
    except _Stop as stop:
        return done(stop.status, stop.reason)
    except StoreError as exc:
        return done("failed", f"{symbol}/{timeframe}: {exc}")

    result.bar_ts = bar_ts.isoformat()
    result.target_ts = target.isoformat()
    result.horizon_bars = h
    result.label = record.label
    result.probabilities = p
    result.label_rule, result.training_shares = decision_rule(model)
    result.direction_score = record.direction_score
    result.model_version_id = record.model_version_id
    result.model_trained_at = record.model_trained_at.isoformat()
    return done("written" if written else "unchanged")
