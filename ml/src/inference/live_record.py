"""The live record of a pair's forecasts: hit rate, balanced accuracy and IC of the realised ones.

Exactly the numbers of the `forecast_performance` view (supabase/migrations/20261202003100_forecasts.sql), for the
embedded store, the monitoring report and the HTML report: one forecast per bar (the most recently trained
model's), scored on the rows whose outcome is known, beside two baselines on the same rows: chance (what the
majority-class baseline scores in balanced accuracy: 1 / the number of realised classes) and persistence (the
label of the h bars up to the forecast's bar).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LiveRecord:
    n_forecasts: int
    n_realised: int
    n_directional: int
    hit_rate: float | None
    accuracy: float | None
    balanced_accuracy: float | None
    ic: float | None
    persistence_accuracy: float | None
    persistence_balanced_accuracy: float | None
    chance_balanced_accuracy: float | None

    @property
    def best_baseline(self) -> float | None:
        values = [
            v for v in (self.chance_balanced_accuracy, self.persistence_balanced_accuracy) if v is not None
        ]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def one_per_bar(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """For each (symbol, timeframe, bar_ts) the forecast of the most recently trained model (then the newest row)."""
    best: dict[tuple[str, str, pd.Timestamp], Mapping[str, Any]] = {}
    for r in rows:
        key = (r["symbol"], r["timeframe"], pd.Timestamp(r["bar_ts"]))
        rank = (pd.Timestamp(r["model_trained_at"]), int(r["id"]))
        cur = best.get(key)
        if cur is None or rank > (pd.Timestamp(cur["model_trained_at"]), int(cur["id"])):
            best[key] = r
    return [best[k] for k in sorted(best)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    value = float(np.corrcoef(ra, rb)[0, 1])
    return value if np.isfinite(value) else None


def _mean(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def summarise(rows: Iterable[Mapping[str, Any]]) -> LiveRecord:
    """The live record of one pair's forecast rows (as the store returns them)."""
    forecasts = one_per_bar(rows)
    done = [
        r for r in forecasts if r.get("realised_return") is not None and r.get("realised_label") is not None
    ]
    label = np.array([r["label"] for r in done], dtype=object)
    truth = np.array([r["realised_label"] for r in done], dtype=object)
    persist = np.array([r.get("persistence_label") for r in done], dtype=object)
    right = label == truth
    persist_right = persist == truth
    directional = (label != "NEUTRAL") & (truth != "NEUTRAL")
    classes = sorted(set(truth.tolist()))
    recalls = [float(right[truth == c].mean()) for c in classes]
    p_recalls = [float(persist_right[truth == c].mean()) for c in classes]
    return LiveRecord(
        n_forecasts=len(forecasts),
        n_realised=len(done),
        n_directional=int(directional.sum()),
        hit_rate=_mean(right[directional]),
        accuracy=_mean(right),
        balanced_accuracy=float(np.mean(recalls)) if recalls else None,
        ic=_spearman(
            np.array([float(r["direction_score"]) for r in done]),
            np.array([float(r["realised_return"]) for r in done]),
        ),
        persistence_accuracy=_mean(persist_right),
        persistence_balanced_accuracy=float(np.mean(p_recalls)) if p_recalls else None,
        chance_balanced_accuracy=1.0 / len(classes) if classes else None,
    )
