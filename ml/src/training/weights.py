"""Ensemble weights: Ridge on all three class-probability columns, shrunk toward equal weights. Pure functions.

The blend sum_m w_m p_m is scored against the one-hot labels by the Brier score (squared error over the three
columns), which is a Ridge regression without intercept whose coefficients are the weights. The weights are
constrained to be non-negative and to sum to 1 (so the blend is a probability), and the penalty
alpha * ||w - 1/M||^2 pulls them toward equal weights: alpha = 0 is the unpenalised fit, alpha -> inf is the
equal-weight ensemble. The constrained quadratic is solved exactly (every support is tried; M is tiny).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ml.src.training.labels import DIRECTION


def direction_score(proba: np.ndarray) -> np.ndarray:
    """P(BULLISH) - P(BEARISH) for class-ordered probabilities (BEARISH, NEUTRAL, BULLISH)."""
    return np.asarray(proba) @ DIRECTION


def equal_weights(names: Sequence[str]) -> dict[str, float]:
    return {n: 1.0 / len(names) for n in names}


def blend(probas: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted average of the models' class probabilities (rows still sum to 1)."""
    return sum(weights[n] * np.asarray(probas[n], dtype="float64") for n in weights)  # type: ignore[return-value]


def one_hot(codes: np.ndarray, n_classes: int = 3) -> np.ndarray:
    return np.eye(n_classes)[np.asarray(codes, dtype=np.int64)]


def brier(proba: np.ndarray, codes: np.ndarray) -> float:
    """Mean over rows of the squared error summed over the class columns (0 perfect, 2 worst)."""
    return float(
        ((np.asarray(proba, dtype="float64") - one_hot(codes, proba.shape[1])) ** 2).sum(axis=1).mean()
    )


def balanced_row_weights(codes: np.ndarray) -> np.ndarray:
    """Per-row weights (mean 1) under which every class present counts equally, as in balanced accuracy."""
    y = np.asarray(codes, dtype=np.int64)
    counts = np.bincount(y, minlength=3).astype("float64")
    k = float((counts > 0).sum())
    return len(y) / (k * counts[y]) if len(y) else np.zeros(0)


def fit_simplex_ridge(
    probas: Mapping[str, np.ndarray],
    codes: np.ndarray,
    alpha: float,
    row_weights: np.ndarray | None = None,
) -> dict[str, float]:
    """argmin_w  mean_i r_i ||sum_m w_m p_m,i - onehot_i||^2 + alpha ||w - 1/M||^2,  w >= 0, sum w = 1.

    r are optional row weights (mean 1; default all 1, the plain Brier score). alpha = inf gives equal
    weights. Exact: the KKT system is solved on every support and the best feasible solution kept.
    """
    names = list(probas)
    m = len(names)
    if m == 0:
        raise ValueError("no models to weight")
    if math.isinf(alpha) or m == 1:
        return equal_weights(names)
    y = one_hot(codes).ravel()
    n = len(codes)
    x = np.column_stack([np.asarray(probas[k], dtype="float64").ravel() for k in names])
    if n == 0 or not np.isfinite(x).all():
        return equal_weights(names)
    e = np.full(m, 1.0 / m)
    r = np.ones(n) if row_weights is None else np.asarray(row_weights, dtype="float64")
    rx = x * np.repeat(r, one_hot(codes).shape[1])[:, None]
    gram = rx.T @ x / n + alpha * np.eye(m)
    lin = rx.T @ y / n + alpha * e

    def objective(w: np.ndarray) -> float:
        return float(w @ gram @ w - 2 * lin @ w)

    best: tuple[float, float, np.ndarray] | None = None
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gram[np.ix_(s, s)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.concatenate([lin[s], [1.0]])
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]  # min-norm when members are identical
            w = np.zeros(m)
            w[s] = sol[:size]
            if (w < -1e-12).any() or abs(w.sum() - 1.0) > 1e-9:
                continue
            w = np.clip(w, 0.0, None)
            w /= w.sum()
            f, dist = objective(w), float(((w - e) ** 2).sum())
            # equally good weightings (e.g. identical members): the one closest to equal weights
            if best is None or f < best[0] - 1e-12 or (f <= best[0] + 1e-12 and dist < best[1]):
                best = (f, dist, w)
    assert best is not None  # every single-member support is feasible
    return {k: float(v) for k, v in zip(names, best[2], strict=True)}


def brier_rows(proba: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return ((np.asarray(proba, dtype="float64") - one_hot(codes, proba.shape[1])) ** 2).sum(axis=1)


def select_alpha(
    fit_probas: Mapping[str, np.ndarray],
    fit_codes: np.ndarray,
    score_probas: Mapping[str, np.ndarray],
    score_codes: np.ndarray,
    alphas: Sequence[float],
    *,
    block: int = 1,
    se_rule: float = 1.0,
    balanced: bool = False,
) -> tuple[float, dict[str, float]]:
    """The penalty for the weights: fitted on the earlier rows, scored by the Brier score on the later rows.

    Equal weights (alpha = inf) are always a candidate. The strongest penalty whose later-row Brier is within
    `se_rule` standard errors of the best one's is chosen (the "one-standard-error rule"; the s.e. is that of
    the paired per-row difference, over blocks of `block` rows): unequal weights have to earn their deviation
    from equal weights by more than the noise of the comparison. Returns (alpha, Brier per candidate).
    """
    from ml.src.training.stats import block_se  # here: weights stays importable without scipy

    candidates = sorted({float(a) for a in alphas} | {math.inf}, reverse=True)  # strongest penalty first
    fit_r = balanced_row_weights(fit_codes) if balanced else None
    score_r = balanced_row_weights(score_codes) if balanced else np.ones(len(score_codes))
    rows = {}
    for a in candidates:
        w = fit_simplex_ridge(fit_probas, fit_codes, a, fit_r)
        rows[a] = score_r * brier_rows(blend(score_probas, w), score_codes)
    n = max(len(score_codes), 1)
    best = min(candidates, key=lambda a: (float(rows[a].mean()), -a))
    chosen = best
    for a in candidates:  # strongest first: the first one within the band wins
        d = (rows[a] - rows[best]) / n
        se = block_se(d, block) or 0.0
        if float(d.sum()) <= se_rule * se + 1e-12:
            chosen = a
            break
    scores = {("inf" if math.isinf(a) else f"{a:g}"): float(r.mean()) for a, r in rows.items()}
    return chosen, scores
