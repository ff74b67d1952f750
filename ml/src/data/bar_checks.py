"""The one set of per-bar checks: what the loader, the training checks, the forecast step and the outcome filler
all refuse, so a bar one of them rejects can never be learnt from, forecast at, or realise an outcome elsewhere.

A bar is refused when a value is NaN or inf, a price is zero or negative, high/low do not bound open and close, the
volume is negative, or a value is implausible: a price above MAX_PRICE or a value that is not finite as float32
(the learners' dtype; today such a bar fails the fit with the library's float32 message), or a close more than
MAX_STEP_RATIO times (or less than 1/MAX_STEP_RATIO of) the previous bar's close.

The bounds are deliberately loose (real data has splits, crashes and penny stocks): the largest close-to-close
move in the shipped and shared bars is about 2x; a 1000x step in one bar is a unit or data-entry error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
VALUE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")
MAX_PRICE = 1e12
MAX_STEP_RATIO = 1000.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class BadBar:
    """The first refused bar of a frame: its row position and the problem as a noun phrase (`high < max(open,
    close)`), which reads after "line N:" (the loader) and after "bar at TS has" (training, forecasts)."""

    index: int
    problem: str


def bar_problems(bars: pd.DataFrame) -> list[str | None]:
    """Per row of `bars` (ascending ts, VALUE_COLUMNS), the first problem that refuses it, or None."""
    values = bars[list(VALUE_COLUMNS)].to_numpy(dtype="float64")
    n = len(values)
    problems: list[str | None] = [None] * n
    if n == 0:
        return problems
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        o, h, lo, c, v = (values[:, k] for k in range(5))
        finite = np.isfinite(values).all(axis=1)
        prices = values[:, :4]
        step = np.full(n, 1.0)
        step[1:] = c[1:] / c[:-1]
        # the first applicable problem wins: checked in this order
        checks: list[tuple[np.ndarray, str | None]] = [
            (~finite, "NaN or inf values"),
            ((prices <= 0).any(axis=1), "a price <= 0"),
            (v < 0, "negative volume"),
            ((prices > MAX_PRICE).any(axis=1), None),
            ((np.abs(values) > _FLOAT32_MAX).any(axis=1), None),
            (h < np.maximum(o, c), "high < max(open, close)"),
            (lo > np.minimum(o, c), "low > min(open, close)"),
            ((step > MAX_STEP_RATIO) | (step < 1.0 / MAX_STEP_RATIO), None),
        ]
        refused = np.logical_or.reduce([mask for mask, _ in checks])
        for row in np.flatnonzero(refused).tolist():  # only the refused rows are looked at one by one
            for mask, problem in checks:
                if mask[row]:
                    problems[row] = problem or _value_problem(values, step, row)
                    break
    return problems


def _value_problem(values: np.ndarray, step: np.ndarray, row: int) -> str:
    prices = values[row, :4]
    if (prices > MAX_PRICE).any():
        col = PRICE_COLUMNS[int(np.argmax(prices > MAX_PRICE))]
        return f"an implausible {col} {values[row, PRICE_COLUMNS.index(col)]:g} (above {MAX_PRICE:g})"
    big = np.abs(values[row]) > _FLOAT32_MAX
    if big.any():
        col = VALUE_COLUMNS[int(np.argmax(big))]
        return f"an implausible {col} {values[row, VALUE_COLUMNS.index(col)]:g} (not finite as float32)"
    return (
        f"an implausible close {values[row, 3]:g}: {step[row]:.4g} x the previous bar's close "
        f"{values[row - 1, 3]:g} (allowed 1/{MAX_STEP_RATIO:g} .. {MAX_STEP_RATIO:g})"
    )


def first_bad_bar(bars: pd.DataFrame) -> BadBar | None:
    """The first refused bar of `bars`, or None when every bar passes."""
    for i, problem in enumerate(bar_problems(bars)):
        if problem is not None:
            return BadBar(i, problem)
    return None


def first_future_bar(ts: pd.Series, now: datetime) -> int | None:
    """Row position of the first bar opening after `now` (a bar that cannot have happened yet), or None."""
    later = (pd.to_datetime(ts, utc=True) > pd.Timestamp(now)).to_numpy()
    return int(np.argmax(later)) if later.any() else None
