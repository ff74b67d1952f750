"""The small series a run records for the report's pictures (`metrics.charts`), a few kB per pair.

* `equity`: the test-slice strategy net of costs and buy-and-hold, compounded period by period on the trading
  read's schedule (rows 0, h, 2h ...; see trading_metrics); the last values equal its net total returns + 1.
* `reliability`: per class, the test rows binned by predicted probability: mean prediction, observed frequency.
* `feature_importance`: the members' own importances (RandomForest impurity, LightGBM gain), each normalised to
  sum 1, blended with the ensemble weights; the top features only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml.src.training.labels import CLASS_CODES, CLASSES, DIRECTION

RELIABILITY_BINS = 10
TOP_FEATURES = 20


def _r(x: float) -> float:
    return round(float(x), 6)


def equity_curves(
    pred_codes: np.ndarray,
    realised_returns: np.ndarray,
    ts: Sequence[Any],
    *,
    horizon: int,
    fee_bps: float,
    slippage_bps: float,
    allow_short: bool,
) -> dict[str, Any]:
    """Equity (starting at 1) after each non-overlapping period: the model's net of costs and buy-and-hold's."""
    codes = np.asarray(pred_codes).ravel()
    r = np.asarray(realised_returns, dtype="float64").ravel()
    rows = np.arange(0, r.size, horizon)
    rows = rows[np.isfinite(r[rows])]
    period = r[rows]
    direction = DIRECTION[codes[rows].astype(np.int64)]
    if not allow_short:
        direction = np.where(codes[rows] == CLASS_CODES["BEARISH"], 0.0, direction)
    one_way = (fee_bps + slippage_bps) / 1e4

    def net(d: np.ndarray) -> np.ndarray:
        prev = np.concatenate(([0.0], d[:-1]))
        nxt = np.concatenate((d[1:], [0.0]))
        cost = one_way * (np.where(d != prev, np.abs(d), 0.0) + np.where(d != nxt, np.abs(d), 0.0))
        return np.cumprod(1.0 + d * period - cost)

    stamps = pd.to_datetime(pd.Series(list(ts)), utc=True)
    return {
        "ts": [stamps.iloc[i].isoformat() for i in rows],
        "strategy_net": [_r(v) for v in net(direction)],
        "buy_and_hold_net": [_r(v) for v in net(np.ones_like(period))],
        "horizon": int(horizon),
        "cost_bps_one_way": float(fee_bps + slippage_bps),
    }


def reliability(proba: np.ndarray, codes: np.ndarray, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Per class: the rows binned by predicted probability of that class (equal-width bins, empty ones left out)."""
    p = np.asarray(proba, dtype="float64")
    y = np.asarray(codes)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, Any] = {"bins": bins}
    for k, name in enumerate(CLASSES):
        which = np.clip(np.digitize(p[:, k], edges[1:-1]), 0, bins - 1)
        mean_pred, observed, count = [], [], []
        for b in range(bins):
            sel = which == b
            if sel.any():
                mean_pred.append(_r(p[sel, k].mean()))
                observed.append(_r((y[sel] == k).mean()))
                count.append(int(sel.sum()))
        out[name] = {"mean_predicted": mean_pred, "observed": observed, "count": count}
    return out


def _is_random_forest(model: Any) -> bool:
    # by class, not by `estimators_`: scikit-learn's GradientBoostingClassifier has one too (a 2-D array)
    from sklearn.ensemble import RandomForestClassifier  # loaded already: the model is one of its objects

    return isinstance(model, RandomForestClassifier)


def _forest_importance(forest: Any) -> np.ndarray:
    """The forest's `feature_importances_`, without the joblib dispatch its property pays per tree.

    Same arithmetic as scikit-learn: each split tree's normalised impurity decrease, averaged (stumps
    left out); the caller normalises the mean.
    """
    trees = [t.tree_ for t in forest.estimators_ if t.tree_.node_count > 1]
    if not trees:
        return np.zeros(forest.n_features_in_, dtype="float64")
    return np.asarray(np.mean([t.compute_feature_importances() for t in trees], axis=0, dtype=np.float64))


def _member_importance(model: Any) -> np.ndarray | None:
    booster = getattr(model, "booster_", None)
    if booster is not None:  # LightGBM: total gain, not split counts
        values = np.asarray(booster.feature_importance(importance_type="gain"), dtype="float64")
    elif _is_random_forest(model):
        values = _forest_importance(model)
    else:
        importances = getattr(model, "feature_importances_", None)
        if importances is None:
            return None
        values = np.asarray(importances, dtype="float64")
    total = values.sum()
    return values / total if total > 0 else None


def feature_importance(
    models: Mapping[str, Any],
    weights: Mapping[str, float],
    feature_names: Sequence[str],
    top: int = TOP_FEATURES,
) -> dict[str, Any]:
    parts = {n: _member_importance(m) for n, m in models.items()}
    used = {n: v for n, v in parts.items() if v is not None and len(v) == len(feature_names)}
    if not used:
        return {"method": "none available", "top": []}
    w = np.array([max(float(weights.get(n, 0.0)), 0.0) for n in used])
    w = w / w.sum() if w.sum() > 0 else np.full(len(used), 1.0 / len(used))
    blended = sum(wi * v for wi, v in zip(w, used.values(), strict=True))
    order = np.argsort(-np.asarray(blended))[:top]
    return {
        "method": "RandomForest impurity and LightGBM gain, each normalised, blended with the ensemble weights",
        "members": sorted(used),
        "top": [[feature_names[i], _r(blended[i])] for i in order],
    }


REPLAY_WINDOW = 50  # realised forecasts in the replay chart's rolling hit rate and IC


def replay_series(
    forecasts: Sequence[Mapping[str, Any]],
    *,
    horizon: int,
    fee_bps: float,
    slippage_bps: float,
    allow_short: bool,
    window: int = REPLAY_WINDOW,
) -> dict[str, Any]:
    """What the report draws of a replay, from its forecast rows (the --json `forecasts` or the store's), over
    the realised ones in time order:

    * `equity`: equity_curves of the calls and of buy-and-hold on the trading schedule of the replay's record
      (its last values are the record's net_total_return + 1 and buy_and_hold_net_total_return + 1);
    * `rolling`: at each realised forecast from the `window`-th on, over the trailing `window` of them: the hit
      rate of the calls (metrics.hit_rate) beside persistence's (the label of the h bars up to the bar), and the
      Spearman IC of P(bull) - P(bear) with the realised return beside its no-information baseline 0.
    """
    from scipy.stats import spearmanr

    from ml.src.training.metrics import hit_rate

    done = [
        f for f in forecasts if f.get("realised_label") is not None and f.get("realised_return") is not None
    ]
    done.sort(key=lambda f: pd.Timestamp(f["bar_ts"]))
    pred = np.array([CLASS_CODES[f["label"]] for f in done], dtype=np.int64)
    y = np.array([CLASS_CODES[f["realised_label"]] for f in done], dtype=np.int64)
    pers = np.array([CLASS_CODES.get(f.get("persistence_label") or "", -1) for f in done], dtype=np.int64)
    ret = np.array([f["realised_return"] for f in done], dtype="float64")
    score = np.array([f["p_bullish"] - f["p_bearish"] for f in done], dtype="float64")
    ts = [f["bar_ts"] for f in done]
    equity = equity_curves(
        pred, ret, ts, horizon=horizon, fee_bps=fee_bps, slippage_bps=slippage_bps, allow_short=allow_short
    )
    stamps = pd.to_datetime(pd.Series(ts, dtype="object"), utc=True)
    w = max(2, int(window))
    rolling: dict[str, Any] = {"window": w, "ts": [], "hit_rate": [], "persistence_hit_rate": [], "ic": []}
    for end in range(w, len(done) + 1):
        sl = slice(end - w, end)
        hr, _ = hit_rate(y[sl], pred[sl])
        ok = pers[sl] >= 0
        phr, _ = hit_rate(y[sl][ok], pers[sl][ok]) if ok.any() else (None, 0)
        s, r = score[sl], ret[sl]
        ic = float(spearmanr(s, r).statistic) if np.ptp(s) > 0 and np.ptp(r) > 0 else None
        rolling["ts"].append(stamps.iloc[end - 1].isoformat())
        rolling["hit_rate"].append(hr)  # full precision: drawn, never recorded
        rolling["persistence_hit_rate"].append(phr)
        rolling["ic"].append(ic)
    return {"equity": equity, "rolling": rolling, "n_realised": len(done)}
