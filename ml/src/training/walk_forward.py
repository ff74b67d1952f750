"""Walk-forward evaluation: K expanding-window folds in time order, the whole pipeline refit per fold.

For fold k with test rows [s, e): everything before s - h is the fold's history (h rows purged so no
history label looks into the test block); the history is split into fit | h purged | valid, the label
thresholds (quantile / vol modes) and the members are fitted on fit, the calibration and Ridge weights on
valid. Nothing of the fold's test rows or later is seen. One split says little about a direction model; K of
them say more. Each fold is scored by scoring.score_slice, like the pair's test slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from config.settings import FitSettings
from ml.src.training.labels import label_codes, thresholds_for
from ml.src.training.metrics import class_shares, empty_classes
from ml.src.training.models import fit_ensemble
from ml.src.training.scoring import MODELS, NAMES, SlicePredictions, score_slice, slice_predictions

FOLD_KEYS = ("balanced_accuracy", "accuracy", "log_loss", "hit_rate", "ic")


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


def _stats(values: list[Any]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    arr = np.asarray(vals)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """walk_forward.summary.<name>: mean/std of the fold scores for every model and baseline."""
    ok = [f for f in folds if "error" not in f]
    summary: dict[str, Any] = {"n_folds": len(folds), "n_folds_ok": len(ok)}
    for name in NAMES:
        scores = [f["metrics"][name] for f in ok]
        entry: dict[str, Any] = {}
        for key in ("balanced_accuracy", "accuracy", "log_loss", "hit_rate"):
            mean, std = _stats([s.get(key) for s in scores])
            entry[f"{key}_mean"] = mean
            if key == "balanced_accuracy":
                entry["balanced_accuracy_std"] = std
        if name in MODELS:
            entry["ic_mean"], entry["ic_std"] = _stats([s.get("ic") for s in scores])
        summary[name] = entry
    return summary


@dataclass
class WalkForward:
    """The JSON report (folds + summary) and the pooled out-of-sample predictions of the ok folds."""

    report: dict[str, Any]
    pooled: list[SlicePredictions] = field(default_factory=list)


def run_fold(
    x: np.ndarray,
    returns: np.ndarray,
    start: int,
    stop: int,
    *,
    horizon: int,
    threshold: float,
    settings: FitSettings,
    n_threads: int = 1,
    scale: np.ndarray | None = None,
) -> tuple[dict[str, Any], SlicePredictions]:
    history = start - horizon
    n_fit = int((history - horizon) * 0.75)
    fit, valid, test = slice(0, n_fit), slice(n_fit + horizon, history), slice(start, stop)
    if min(n_fit, history - n_fit - horizon) < settings.min_rows_per_split:
        raise ValueError(f"fold history of {history} rows is too short for fit and valid slices")
    thresholds = thresholds_for(settings.threshold_mode, returns[fit], threshold, settings.threshold_k)
    codes = label_codes(returns, thresholds, scale)
    missing = empty_classes(codes[fit])
    if missing:
        raise ValueError(f"class {', '.join(missing)} has no samples in the fold's training rows")

    result = fit_ensemble(x, codes, fit, valid, {"test": test}, settings, purge=horizon, n_threads=n_threads)
    sp = slice_predictions(result, "test", test, codes, returns, horizon)
    fold = {
        "n_fit": n_fit,
        "n_valid": history - n_fit - horizon,
        "n_test": stop - start,
        "weights": result.weights,
        "alpha": None if math.isinf(result.combination.alpha) else result.combination.alpha,
        "thresholds": thresholds.to_dict(),
        "class_shares": {
            "fit": class_shares(codes[fit]),
            "valid": class_shares(codes[valid]),
            "test": class_shares(codes[test]),
        },
        "metrics": {
            name: {k: m.get(k) for k in FOLD_KEYS if k in m}
            for name, m in score_slice(sp, horizon=horizon).items()
        },
    }
    return fold, sp


def walk_forward(
    x: np.ndarray,
    returns: np.ndarray,
    ts: Any,
    *,
    folds: int,
    horizon: int,
    threshold: float,
    settings: FitSettings,
    n_threads: int = 1,
    scale: np.ndarray | None = None,
) -> WalkForward:
    """Per-fold scores and their mean/std; a fold that cannot be fitted is reported with its reason.

    `scale`: each row's ex-ante horizon volatility, needed by the ex_ante_vol threshold mode."""
    bounds = fold_bounds(len(returns), folds, horizon, settings.min_rows_per_split)
    out_folds: list[dict[str, Any]] = []
    pooled: list[SlicePredictions] = []
    for k, (start, stop) in enumerate(bounds):
        fold: dict[str, Any] = {
            "fold": k,
            "history_end": ts.iloc[start - horizon - 1].isoformat(),  # last row the fold learns from
            "test_start": ts.iloc[start].isoformat(),
            "test_end": ts.iloc[stop - 1].isoformat(),
        }
        try:
            scores, sp = run_fold(
                x,
                returns,
                start,
                stop,
                horizon=horizon,
                threshold=threshold,
                settings=settings,
                n_threads=n_threads,
                scale=scale,
            )
        except ValueError as exc:
            fold["error"] = str(exc)
        else:
            fold.update(scores)
            pooled.append(sp)
        out_folds.append(fold)
    return WalkForward({"folds": out_folds, "summary": summarise(out_folds)}, pooled)
