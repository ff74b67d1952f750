"""BULLISH / NEUTRAL / BEARISH labels from the forward return over a horizon of h bars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CLASSES: tuple[str, ...] = ("BEARISH", "NEUTRAL", "BULLISH")
CLASS_CODES: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
DIRECTION: np.ndarray = np.array([-1.0, 0.0, 1.0])  # class code -> direction, aligned with CLASSES


@dataclass(frozen=True)
class Thresholds:
    """A return above `upper` is BULLISH, below `lower` BEARISH, otherwise NEUTRAL."""

    lower: float
    upper: float
    mode: str

    def to_dict(self) -> dict[str, float | str]:
        return {"lower": self.lower, "upper": self.upper, "mode": self.mode}


def forward_returns(close: pd.Series | np.ndarray, horizon: int) -> np.ndarray:
    """close[t + h] / close[t] - 1; NaN for the last h rows, whose future is unknown."""
    if horizon <= 0:
        raise ValueError("horizon must be positive")
    c = np.asarray(close, dtype="float64")
    out = np.full(c.shape, np.nan)
    if len(c) > horizon:
        out[:-horizon] = c[horizon:] / c[:-horizon] - 1.0
    return out


def fixed_thresholds(threshold: float) -> Thresholds:
    return Thresholds(lower=-threshold, upper=threshold, mode="fixed")


def quantile_thresholds(train_returns: np.ndarray) -> Thresholds:
    """Terciles of the training slice's horizon returns: balanced classes, no look at valid or test."""
    r = np.asarray(train_returns, dtype="float64")
    r = r[np.isfinite(r)]
    if r.size < 3:
        raise ValueError("need at least 3 training returns to fit quantile thresholds")
    lower, upper = np.quantile(r, [1 / 3, 2 / 3])
    return Thresholds(lower=float(lower), upper=float(upper), mode="quantile")


def thresholds_for(mode: str, train_returns: np.ndarray, threshold: float) -> Thresholds:
    """The labelling thresholds for a training slice: fixed, or terciles of that slice's returns only."""
    return quantile_thresholds(train_returns) if mode == "quantile" else fixed_thresholds(threshold)


def label_codes(returns: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Class codes (0 BEARISH, 1 NEUTRAL, 2 BULLISH); -1 where the return is unknown."""
    r = np.asarray(returns, dtype="float64")
    codes = np.full(r.shape, CLASS_CODES["NEUTRAL"], dtype=np.int64)
    codes[r > thresholds.upper] = CLASS_CODES["BULLISH"]
    codes[r < thresholds.lower] = CLASS_CODES["BEARISH"]
    codes[~np.isfinite(r)] = -1
    return codes


def label_names(codes: np.ndarray) -> list[str | None]:
    return [CLASSES[c] if c >= 0 else None for c in np.asarray(codes)]
