"""Walk-forward evaluation: K expanding-window folds in time order, the whole pipeline refit per fold.

For fold k with test rows [s, e): everything before s - h is the fold's history (h rows purged so no
history label looks into the test block); the history is split into fit | h purged | valid, the models are
fitted on fit, the Ridge weights on valid (and, in quantile mode, the label thresholds on fit). Nothing of
the fold's test rows or later is seen. One split says little about a direction model; K of them say more.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from config.settings import Settings
from ml.src.training.labels import label_codes, thresholds_for
from ml.src.training.metrics import (
    class_counts,
    empty_classes,
    label_metrics,
    majority_class,
    persistence_predictions,
)
from ml.src.training.models import fit_ensemble
from ml.src.training.trading_metrics import information_coefficient
from ml.src.training.weights import blend, direction_score

SUMMARY_KEYS = (
    "test_accuracy",
    "test_balanced_accuracy",
    "majority_test_accuracy",
    "persistence_test_accuracy",
    "test_ic",
)


def fold_bounds(n_rows: int, folds: int, horizon: int, min_rows: int) -> list[tuple[int, int]]:
    """Contiguous test blocks over the second half of the rows: [(start, stop), ...], oldest first."""
    if folds < 1:
        raise ValueError("folds must be >= 1")
    first = max(n_rows // 2, 4 * min_rows + 3 * horizon)
    block = (n_rows - first) // folds
    if block < min_rows:
        raise ValueError(
            f"{n_rows} rows leave {max(block, 0)} rows per fold for {folds} folds; need at least {min_rows}"
        )
    starts = [n_rows - (folds - k) * block for k in range(folds)]
    return [(s, s + block) for s in starts]


def _summary(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None}
    arr = np.asarray(vals)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def run_fold(
    x: np.ndarray,
    returns: np.ndarray,
    start: int,
    stop: int,
    *,
    horizon: int,
    threshold: float,
    settings: Settings,
    n_threads: int = 1,
) -> dict[str, Any]:
    history = start - horizon
    n_fit = int((history - horizon) * 0.75)
    fit, valid, test = slice(0, n_fit), slice(n_fit + horizon, history), slice(start, stop)
    if min(n_fit, history - n_fit - horizon) < settings.min_rows_per_split:
        raise ValueError(f"fold history of {history} rows is too short for fit and valid slices")
    thresholds = thresholds_for(settings.threshold_mode, returns[fit], threshold)
    codes = label_codes(returns, thresholds)
    missing = empty_classes(codes[fit])
    if missing:
        raise ValueError(f"class {', '.join(missing)} has no samples in the fold's training rows")

    result = fit_ensemble(x, codes, fit, valid, {"valid": valid, "test": test}, settings, n_threads)
    weights = result.weights
    ens = blend(result.probas["test"], weights)
    y = codes[test]
    m = label_metrics(y, ens.argmax(axis=1))
    major = majority_class(codes[fit])
    return {
        "n_fit": n_fit,
        "n_valid": history - n_fit - horizon,
        "n_test": stop - start,
        "weights": weights,
        "test_accuracy": m["accuracy"],
        "test_balanced_accuracy": m["balanced_accuracy"],
        "test_macro_f1": m["macro_f1"],
        "majority_test_accuracy": label_metrics(y, np.full(len(y), major))["accuracy"],
        "persistence_test_accuracy": label_metrics(y, persistence_predictions(codes, test, horizon))[
            "accuracy"
        ],
        "test_ic": information_coefficient(direction_score(ens), returns[test]),
        "test_class_counts": class_counts(y),
    }


def walk_forward(
    x: np.ndarray,
    returns: np.ndarray,
    ts: Any,
    *,
    folds: int,
    horizon: int,
    threshold: float,
    settings: Settings,
    n_threads: int = 1,
) -> dict[str, Any]:
    """Per-fold metrics and their mean/std; a fold that cannot be fitted is reported with its reason."""
    bounds = fold_bounds(len(returns), folds, horizon, settings.min_rows_per_split)
    out_folds: list[dict[str, Any]] = []
    for k, (start, stop) in enumerate(bounds):
        fold: dict[str, Any] = {
            "fold": k,
            "history_end": ts.iloc[start - horizon - 1].isoformat(),  # last row the fold learns from
            "test_start": ts.iloc[start].isoformat(),
            "test_end": ts.iloc[stop - 1].isoformat(),
        }
        try:
            fold.update(
                run_fold(
                    x,
                    returns,
                    start,
                    stop,
                    horizon=horizon,
                    threshold=threshold,
                    settings=settings,
                    n_threads=n_threads,
                )
            )
        except ValueError as exc:
            fold["error"] = str(exc)
        out_folds.append(fold)
    ok = [f for f in out_folds if "error" not in f]
    summary: dict[str, Any] = {key: _summary([f[key] for f in ok]) for key in SUMMARY_KEYS}
    summary["n_folds"] = len(out_folds)
    summary["n_folds_ok"] = len(ok)
    return {"folds": out_folds, "summary": summary}
