"""Models that learn across symbols (issue 20, item 3), measured by walk-forward: one fit per timeframe on the
pooled training rows of every pair, evaluated per pair on that pair's own out-of-sample rows.

For an evaluated pair's fold the pooled fit rows are the pair's own fit rows plus every other pair's rows whose
label was fully known (its h-bar future closed) by the time the evaluated pair's last fit label was: nothing of
the evaluated pair's valid or test period, from any pair, is learnt from. Calibration and weights use the
evaluated pair's own valid rows; its test rows are labelled as the local walk-forward labels them (its own
thresholds), so pooled and local are scored on the same rows and labels, pair by pair.

Features are scale-free per symbol already (returns, ratios, ranks, the symbol's own volatility among them);
the symbol's identity is not a feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from config.settings import FitSettings
from ml.src.training.labels import CLASSES, label_codes, thresholds_for
from ml.src.training.metrics import decide, empty_classes
from ml.src.training.scoring import SlicePredictions, slice_predictions


@dataclass(frozen=True)
class PoolMember:
    """One pair's labelled rows: features, forward returns, bar times, horizon (and ex-ante scale if any)."""

    label: str
    x: np.ndarray
    returns: np.ndarray
    ts: pd.Series
    horizon: int
    threshold: float
    scale: np.ndarray | None = None


def known_rows(member: PoolMember, cutoff: pd.Timestamp) -> np.ndarray:
    """Indices of the member's rows whose label's last close (row + h) is at or before `cutoff`."""
    h = member.horizon
    ts = member.ts.reset_index(drop=True)
    n = len(member.returns)
    # the label of row i ends at bar i + h (beyond the labelled rows for the last h: never known here)
    end = pd.Series(pd.NaT, index=range(n), dtype=ts.dtype)
    if n > h:
        end.iloc[: n - h] = ts.iloc[h:].to_numpy()
    ok = end.notna().to_numpy() & (end <= cutoff).fillna(False).to_numpy()
    return np.flatnonzero(ok)


def _codes(member: PoolMember, rows: np.ndarray, settings: FitSettings) -> np.ndarray:
    """Labels of the member with thresholds fitted on `rows` of it (its own scale in ex_ante_vol mode)."""
    thr = thresholds_for(
        settings.threshold_mode, member.returns[rows], member.threshold, settings.threshold_k
    )
    return label_codes(member.returns, thr, member.scale)


def pooled_training_rows(
    others: list[PoolMember], cutoff: pd.Timestamp, settings: FitSettings
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """The other pairs' rows whose label was fully known by `cutoff`, stacked: (x, codes, what each gave).

    Each member's labels use thresholds fitted on those known rows only; a member with fewer than
    min_rows_per_split known rows gives none."""
    xs, ys, used = [], [], {}
    for m in others:
        rows = known_rows(m, cutoff)
        if rows.size < settings.min_rows_per_split:
            continue
        c = _codes(m, rows, settings)[rows]
        keep = c >= 0
        xs.append(m.x[rows[keep]])
        ys.append(c[keep])
        used[m.label] = {"rows": int(keep.sum()), "last_label_end": cutoff.isoformat()}
    width = others[0].x.shape[1] if others else 0
    x = np.vstack(xs) if xs else np.empty((0, width))
    codes = np.concatenate(ys) if ys else np.empty(0, dtype=np.int64)
    return x, codes, used


def own_baselines(sp: SlicePredictions, offset: int, own_fit_codes: np.ndarray) -> SlicePredictions:
    """A pooled fit's predictions in the target's own row numbers (minus `offset`), with the prior and majority
    baselines of the target's own fit rows: the baselines its local fit is read beside, on the same rows."""
    prior = np.bincount(np.asarray(own_fit_codes, dtype=np.int64), minlength=len(CLASSES)).astype("float64")
    prior /= prior.sum()
    sp.rows = sp.rows - offset
    sp.probas["prior"] = np.tile(prior, (sp.rows.size, 1))
    sp.preds["prior"] = sp.preds["majority"] = decide(sp.probas["prior"], prior)
    return sp


def pooled_fold(
    target: PoolMember,
    others: list[PoolMember],
    start: int,
    stop: int,
    settings: FitSettings,
) -> tuple[SlicePredictions, dict[str, Any]]:
    """One walk-forward fold of `target` (test rows [start, stop)) fitted on the pooled rows."""
    from ml.src.training.models import fit_ensemble

    h = target.horizon
    history = start - h
    n_fit = int((history - h) * 0.75)
    if min(n_fit, history - n_fit - h) < settings.min_rows_per_split:
        raise ValueError(f"fold history of {history} rows is too short for fit and valid slices")
    fit_rows = np.arange(n_fit)
    codes_t = _codes(target, fit_rows, settings)  # the local walk-forward's labels of the target
    cutoff = pd.Timestamp(target.ts.iloc[n_fit - 1 + h])  # when the target's last fit label became known
    x_other, codes_other, used = pooled_training_rows(others, cutoff, settings)
    n_other = len(codes_other)
    x = np.vstack([x_other, target.x])
    codes = np.concatenate([codes_other, codes_t])
    returns = np.concatenate([np.full(n_other, np.nan), target.returns])
    missing = empty_classes(codes[: n_other + n_fit])
    if missing:
        raise ValueError(f"class {', '.join(missing)} has no samples in the pooled fit rows")
    fit = slice(0, n_other + n_fit)
    valid = slice(n_other + n_fit + h, n_other + history)
    test = slice(n_other + start, n_other + stop)
    result = fit_ensemble(x, codes, fit, valid, {"test": test}, settings, purge=h)
    sp = slice_predictions(result, "test", test, codes, returns, h)
    # the target's own row numbers, and the baselines of its own fit mix, as in its local walk-forward
    sp = own_baselines(sp, n_other, codes_t[:n_fit])
    return sp, {"n_fit_own": n_fit, "n_fit_other": n_other, "others": used, "cutoff": cutoff.isoformat()}


def pooled_walk_forward(
    target: PoolMember, others: list[PoolMember], folds: int, settings: FitSettings
) -> tuple[list[SlicePredictions], list[dict[str, Any]]]:
    """The target's walk-forward folds (the same blocks as walk_forward's) with pooled fits."""
    from ml.src.training.walk_forward import fold_bounds  # imports the learners: only where a fit runs

    bounds = fold_bounds(len(target.returns), folds, target.horizon, settings.min_rows_per_split)
    pooled, info = [], []
    for start, stop in bounds:
        try:
            sp, meta = pooled_fold(target, others, start, stop, settings)
        except ValueError as exc:
            info.append({"error": str(exc)})
            continue
        pooled.append(sp)
        info.append(meta)
    return pooled, info
