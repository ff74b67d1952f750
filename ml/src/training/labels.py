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
    k: float | None = None  # vol / ex_ante_vol mode: the multiple of `scale`
    scale: float | None = None  # vol mode: std of the training slice's horizon returns

    @property
    def per_bar(self) -> bool:
        """ex_ante_vol: `lower`/`upper` are multiples of each bar's own ex-ante horizon volatility, not returns."""
        return self.mode == EX_ANTE_MODE

    def to_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {"lower": self.lower, "upper": self.upper, "mode": self.mode}
        if self.k is not None and self.scale is not None:
            out.update(k=self.k, scale=self.scale)
        if self.per_bar and self.k is not None:
            out.update(k=self.k, unit="ex_ante_horizon_vol")
        return out

    def at_bar(self, scale: float) -> Thresholds:
        """The return thresholds of one bar whose ex-ante horizon volatility is `scale` (ex_ante_vol mode)."""
        if not self.per_bar:
            return self
        return Thresholds(
            lower=self.lower * scale, upper=self.upper * scale, mode="ex_ante_vol_bar", k=self.k
        )


EX_ANTE_MODE = "ex_ante_vol"


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


def vol_thresholds(train_returns: np.ndarray, k: float) -> Thresholds:
    """+/- k x the standard deviation of the training slice's horizon returns.

    A "move" then means the same thing on a quiet index and a volatile stock, on m15 and on w1, so class
    shares are comparable across symbols and timeframes; symmetric around 0, so drift shows as more BULLISH.
    """
    r = np.asarray(train_returns, dtype="float64")
    r = r[np.isfinite(r)]
    if r.size < 3:
        raise ValueError("need at least 3 training returns to fit volatility-scaled thresholds")
    scale = float(np.std(r, ddof=1))
    if not scale > 0:
        raise ValueError("training returns have no spread: cannot scale thresholds by volatility")
    return Thresholds(lower=-k * scale, upper=k * scale, mode="vol", k=float(k), scale=scale)


def ex_ante_scale(close: pd.Series | np.ndarray, horizon: int) -> np.ndarray:
    """Each bar's ex-ante volatility of its h-bar forward return: the causal EWMA volatility of the 1-bar log
    returns up to and including that bar (features.ewma_vol), x sqrt(h). Uses no return after the bar."""
    from ml.src.features.technical_indicators import ewma_vol

    if horizon <= 0:
        raise ValueError("horizon must be positive")
    return ewma_vol(np.asarray(close, dtype="float64")) * np.sqrt(horizon)


def ex_ante_thresholds(k: float) -> Thresholds:
    """+/- k x each bar's own ex-ante horizon volatility: class shares stay stable across regimes."""
    return Thresholds(lower=-float(k), upper=float(k), mode=EX_ANTE_MODE, k=float(k))


def thresholds_for(mode: str, train_returns: np.ndarray, threshold: float, k: float = 0.5) -> Thresholds:
    """The labelling thresholds for a training slice: fixed, terciles of that slice's returns, or k x their
    standard deviation; or k x each bar's ex-ante volatility (ex_ante_vol, nothing fitted). Nothing outside
    the training slice is looked at."""
    if mode == EX_ANTE_MODE:
        return ex_ante_thresholds(k)
    if mode == "quantile":
        return quantile_thresholds(train_returns)
    if mode == "vol":
        return vol_thresholds(train_returns, k)
    if mode == "fixed":
        return fixed_thresholds(threshold)
    raise ValueError(f"unknown threshold mode {mode!r}")


def label_codes(returns: np.ndarray, thresholds: Thresholds, scale: np.ndarray | None = None) -> np.ndarray:
    """Class codes (0 BEARISH, 1 NEUTRAL, 2 BULLISH); -1 where the return (or, per bar, its scale) is unknown.

    ex_ante_vol thresholds need `scale`, each row's ex-ante horizon volatility (ex_ante_scale): row i is
    BULLISH when returns[i] > upper x scale[i].
    """
    r = np.asarray(returns, dtype="float64")
    unknown = ~np.isfinite(r)
    if thresholds.per_bar:
        if scale is None:
            raise ValueError("ex_ante_vol thresholds need each row's ex-ante volatility (scale)")
        sc = np.asarray(scale, dtype="float64")
        if sc.shape != r.shape:
            raise ValueError(f"scale has {sc.shape} rows, returns {r.shape}")
        unknown |= ~np.isfinite(sc)
        pos = np.where(np.isfinite(sc) & (sc > 0), sc, 0.0)
        # a zero scale (flat history): any move is a move, no move is NEUTRAL
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(pos > 0, r / np.where(pos > 0, pos, 1.0), np.sign(r) * np.inf)
    codes = np.full(r.shape, CLASS_CODES["NEUTRAL"], dtype=np.int64)
    codes[r > thresholds.upper] = CLASS_CODES["BULLISH"]
    codes[r < thresholds.lower] = CLASS_CODES["BEARISH"]
    codes[unknown] = -1
    return codes


def label_names(codes: np.ndarray) -> list[str | None]:
    return [CLASSES[c] if c >= 0 else None for c in np.asarray(codes)]
