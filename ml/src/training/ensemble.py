"""A trained ensemble: member models, their weights, and the feature order they expect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml.src.training.calibration import PriorTemperature
from ml.src.training.labels import CLASSES
from ml.src.training.metrics import decide
from ml.src.training.weights import blend, direction_score


class MissingFeaturesError(ValueError):
    """Rows with missing (NaN) or infinite features: a model must not guess inside the feature warm-up."""


@dataclass(frozen=True)
class EnsembleModel:
    """Members, weights and feature order; `metadata` (the bundle's other keys) may carry `calibration`
    (per member, calibration.PriorTemperature as a dict) and `decision` ({"rule": "prior_ratio", "prior"}).
    Bundles written before those existed blend raw probabilities and decide by argmax."""

    models: Mapping[str, Any]
    weights: Mapping[str, float]
    feature_names: tuple[str, ...]
    classes: tuple[str, ...] = CLASSES
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def warmup_bars(self) -> int:
        """Bars of history each row's features need (recorded with the model; the feature set's by default)."""
        recorded = (self.metadata.get("timeframe_settings") or {}).get("warmup_bars")
        if recorded:
            return int(recorded)
        from ml.src.features.technical_indicators import WARMUP_BARS

        return WARMUP_BARS

    def _matrix(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(features, pd.DataFrame):
            missing = [c for c in self.feature_names if c not in features.columns]
            if missing:
                raise ValueError(
                    f"features missing {len(missing)} column(s) the model needs, e.g. {missing[:5]}"
                )
            x = features.loc[:, list(self.feature_names)].to_numpy(dtype="float64")
        else:
            x = np.asarray(features, dtype="float64")
            if x.ndim != 2 or x.shape[1] != len(self.feature_names):
                raise ValueError(
                    f"expected a 2-D array with {len(self.feature_names)} columns, got shape {x.shape}"
                )
        self._refuse_missing(x)
        return x

    def _refuse_missing(self, x: np.ndarray) -> None:
        bad = ~np.isfinite(x)
        if not bad.any():
            return
        rows = bad.any(axis=1)
        cols = [self.feature_names[j] for j in np.flatnonzero(bad.any(axis=0))[:3]]
        raise MissingFeaturesError(
            f"{int(rows.sum())} of {len(x)} row(s) have missing (NaN) or infinite features ({int(bad.sum())} "
            f"cell(s), e.g. {', '.join(cols)}): each row needs {self.warmup_bars} bars of history before it "
            f"(the feature warm-up); compute features on at least {self.warmup_bars + 1} bars and predict "
            "only rows past the warm-up"
        )

    def model_probas(self, features: pd.DataFrame | np.ndarray) -> dict[str, np.ndarray]:
        """Each member's calibrated class probabilities."""
        x = self._matrix(features)
        calibration = self.metadata.get("calibration") or {}
        out = {}
        for name, m in self.models.items():
            p = np.asarray(m.predict_proba(x), dtype="float64")
            out[name] = PriorTemperature.from_dict(calibration[name]).apply(p) if name in calibration else p
        return out

    def predict_proba(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Class probabilities in `classes` order: the weighted average of the calibrated members'."""
        return blend(self.model_probas(features), self.weights)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class codes for these probabilities under the bundle's decision rule."""
        decision = self.metadata.get("decision") or {}
        if decision.get("rule") == "prior_ratio":
            return decide(proba, np.asarray(decision["prior"], dtype="float64"))
        return np.asarray(proba).argmax(axis=1)

    def predict(self, features: pd.DataFrame | np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.decide(self.predict_proba(features))]

    def direction_score(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """P(BULLISH) - P(BEARISH), in [-1, 1]."""
        return direction_score(self.predict_proba(features))
