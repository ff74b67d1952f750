"""Realised outcomes: once the bar h bars after a forecast's bar is in the store, record what happened.

The realised return is close[t + h] / close[t] - 1 over the store's bars (trading time, as the training labels),
labelled with the thresholds the forecasting model was trained with. Called by the forecast step and by the
training run for each pair, so outcomes appear with whichever comes next. A bar the training checks refuse
realises nothing, and an outcome remembers the pair's bar revision it was computed from: after a bar is
inserted, corrected or deleted, the next fill recomputes it (rewrites it if the bars now say otherwise, clears it
when they no longer determine one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from ml.src.data.bar_checks import bar_problems
from ml.src.data.records import ForecastOutcome
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training.labels import CLASSES, Thresholds, label_codes

log = logging.getLogger("ml.inference")


def realised_label(ret: float, lower: float | None, upper: float | None) -> str:
    code = label_codes(np.array([ret]), Thresholds(lower=lower or 0.0, upper=upper or 0.0, mode="stored"))[0]
    return CLASSES[int(code)]


def _same(row: dict, outcome: ForecastOutcome) -> bool:
    """Whether a realised row already holds this outcome (the values as stored)."""
    if row.get("realised_return") is None:
        return False
    stored_ts = row.get("realised_bar_ts")
    return (
        stored_ts is not None
        and outcome.realised_bar_ts is not None
        and pd.Timestamp(stored_ts) == pd.Timestamp(outcome.realised_bar_ts)
        and row.get("realised_close") == outcome.realised_close
        and row.get("realised_return") == outcome.realised_return
        and row.get("realised_label") == outcome.realised_label
    )


@dataclass(frozen=True)
class OutcomePlan:
    """What the bars say about a pair's candidate forecasts: outcomes to write (new, changed or cleared) and the
    realised rows found unchanged, which are only stamped with the revision."""

    revision: int | None
    outcomes: list[ForecastOutcome] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)


def plan_outcomes(store: TrainingStore, symbol: str, timeframe: str) -> OutcomePlan:
    """Outcomes the store's bars now determine for the pair's unrealised forecasts, and recomputed ones for
    forecasts realised from an older bar revision (a corrected bar). A bar the training checks refuse
    (ml.src.data.bar_checks) determines no outcome; bars dated after now are not closed and are not read."""
    # the revision BEFORE the bars: a correction after this read leaves the outcome stale, so it is recomputed
    revision = store.bar_revision(symbol, timeframe)
    plan = OutcomePlan(revision=revision)
    candidates = store.list_outcome_candidates(symbol, timeframe, revision)
    if not candidates:
        return plan
    first = min(pd.Timestamp(r["bar_ts"]) for r in candidates).to_pydatetime()
    now = datetime.now(UTC)
    bars = store.read_bars(symbol, timeframe, start=first, end=now)
    # the bar before the first one, so the first bar's step from its predecessor is checked too
    before = store.read_bars(symbol, timeframe, end=first - timedelta(microseconds=1), limit=1)
    if not before.empty:
        bars = pd.concat([before, bars], ignore_index=True)
    position = {ts: i for i, ts in enumerate(bars["ts"])}
    refused = [p is not None for p in bar_problems(bars)]
    close = bars["close"].to_numpy(dtype="float64")
    for r in candidates:
        realised = r.get("realised_return") is not None
        i = position.get(pd.Timestamp(r["bar_ts"]))
        h = int(r["horizon_bars"])
        outcome: ForecastOutcome | None = None
        if i is not None and i + h < len(bars) and not refused[i] and not refused[i + h]:
            ret = float(close[i + h] / close[i] - 1.0)
            outcome = ForecastOutcome(
                forecast_id=int(r["id"]),
                realised_bar_ts=bars["ts"].iloc[i + h].to_pydatetime(),
                realised_close=float(close[i + h]),
                realised_return=ret,
                realised_label=realised_label(ret, r.get("threshold_lower"), r.get("threshold_upper")),
                realised_revision=revision,
            )
        # else: the bar is gone (corrected history), its horizon has not passed, or a bar is refused
        if outcome is not None and realised and _same(r, outcome):
            if revision is not None:
                plan.unchanged.append(int(r["id"]))
        elif outcome is not None:
            plan.outcomes.append(outcome)
        elif realised:  # realised from bars that no longer determine an outcome: cleared until they do
            plan.outcomes.append(
                ForecastOutcome(int(r["id"]), None, None, None, None, realised_revision=revision)
            )
    return plan


def pending_outcomes(store: TrainingStore, symbol: str, timeframe: str) -> list[ForecastOutcome]:
    """The outcomes the store's bars now determine (new, recomputed or cleared): see plan_outcomes."""
    return plan_outcomes(store, symbol, timeframe).outcomes


def fill_outcomes(store: TrainingStore, symbol: str, timeframe: str) -> int:
    """Record every outcome the bars now determine (and recompute those realised from an older bar revision);
    returns how many forecasts were realised or changed."""
    plan = plan_outcomes(store, symbol, timeframe)
    written = store.record_forecast_outcomes(plan.outcomes) if plan.outcomes else 0
    if plan.unchanged and plan.revision is not None:
        store.stamp_outcome_revision(plan.unchanged, plan.revision)
    return written


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
