"""Ensemble weights: Ridge on the models' direction scores, fitted on the validation slice only."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.linear_model import Ridge

from ml.src.training.labels import DIRECTION


def direction_score(proba: np.ndarray) -> np.ndarray:
    """P(BULLISH) - P(BEARISH) for class-ordered probabilities (BEARISH, NEUTRAL, BULLISH)."""
    return proba @ DIRECTION


def equal_weights(names: list[str]) -> dict[str, float]:
    return {n: 1.0 / len(names) for n in names}


def fit_ridge_weights(
    scores: Mapping[str, np.ndarray], target: np.ndarray, alpha: float = 1.0
) -> tuple[dict[str, float], bool]:
    """Non-negative Ridge of target (-1/0/+1) on one direction-score column per model, normalised to sum 1.

    Returns (weights, fallback): equal weights (fallback=True) when Ridge finds no positive weight or the
    inputs are degenerate (a constant target, non-finite scores).
    """
    names = list(scores)
    if not names:
        raise ValueError("no models to weight")
    x = np.column_stack([np.asarray(scores[n], dtype="float64") for n in names])
    y = np.asarray(target, dtype="float64")
    if len(y) < 2 or not np.isfinite(x).all() or np.ptp(y) == 0:
        return equal_weights(names), True
    coef = Ridge(alpha=alpha, positive=True, fit_intercept=True).fit(x, y).coef_
    coef = np.clip(np.asarray(coef, dtype="float64"), 0.0, None)
    total = coef.sum()
    if not np.isfinite(total) or total <= 1e-12:
        return equal_weights(names), True
    return {n: float(w / total) for n, w in zip(names, coef, strict=True)}, False


def blend(probas: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted average of the models' class probabilities (rows still sum to 1)."""
    return sum(weights[n] * np.asarray(probas[n], dtype="float64") for n in weights)  # type: ignore[return-value]
