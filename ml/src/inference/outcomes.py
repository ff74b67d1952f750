"""Realised outcomes: once the bar h bars after a forecast's bar is in the store, record what happened.

The realised return is close[t + h] / close[t] - 1 over the store's bars (trading time, as the training labels),
labelled with the thresholds the forecasting model was trained with. Called by the forecast step and by the
training run for each pair, so outcomes appear with whichever comes next.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ml.src.data.records import ForecastOutcome
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training.labels import CLASSES, Thresholds, label_codes

log = logging.getLogger("ml.inference")


def realised_label(ret: float, lower: float | None, upper: float | None) -> str:
    code = label_codes(np.array([ret]), Thresholds(lower=lower or 0.0, upper=upper or 0.0, mode="stored"))[0]
    return CLASSES[int(code)]


def pending_outcomes(store: TrainingStore, symbol: str, timeframe: str) -> list[ForecastOutcome]:
    """Outcomes that the store's bars now determine for the pair's unrealised forecasts."""
    pending = store.list_forecasts(symbol, timeframe, unrealised_only=True)
    if not pending:
        return []
    first = min(pd.Timestamp(r["bar_ts"]) for r in pending)
    bars = store.read_bars(symbol, timeframe, start=first.to_pydatetime())
    if bars.empty:
        return []
    position = {ts: i for i, ts in enumerate(bars["ts"])}
    close = bars["close"].to_numpy(dtype="float64")
    out: list[ForecastOutcome] = []
    for r in pending:
        i = position.get(pd.Timestamp(r["bar_ts"]))
        h = int(r["horizon_bars"])
        if i is None or i + h >= len(bars):
            continue  # the bar is gone (corrected history) or its horizon has not passed yet
        ret = float(close[i + h] / close[i] - 1.0)
        out.append(
            ForecastOutcome(
                forecast_id=int(r["id"]),
                realised_bar_ts=bars["ts"].iloc[i + h].to_pydatetime(),
                realised_close=float(close[i + h]),
                realised_return=ret,
                realised_label=realised_label(ret, r.get("threshold_lower"), r.get("threshold_upper")),
            )
        )
    return out


def fill_outcomes(store: TrainingStore, symbol: str, timeframe: str) -> int:
    """Record every outcome the bars now determine; returns how many forecasts were realised."""
    outcomes = pending_outcomes(store, symbol, timeframe)
    return store.record_forecast_outcomes(outcomes) if outcomes else 0


def fill_outcomes_quietly(store: TrainingStore, symbol: str, timeframe: str) -> int:
    """fill_outcomes for the training run: a store failure here is logged and never fails the pair."""
    try:
        n = fill_outcomes(store, symbol, timeframe)
    except StoreError as exc:
        log.warning("%s/%s: forecast outcomes not recorded: %s", symbol, timeframe, exc)
        return 0
    if n:
        log.info("%s/%s: %d forecast outcome(s) realised", symbol, timeframe, n)
    return n
