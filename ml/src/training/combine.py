"""How the members' probabilities become the ensemble's: calibrate each member, then blend with Ridge weights.

Everything here is fitted on the validation slice only (the members never saw it), in time order:

1. the penalty: calibrate and fit weights for each candidate alpha on the first part of valid, score the blend's
   Brier on the later part (h rows purged between them), keep the strongest penalty within one standard error
   of the best (equal weights unless unequal ones are better by more than the noise);
2. the final calibration (one temperature per member) and weights are refitted on all of valid with that alpha.

A validation slice too short to hold both parts gets equal weights. The valid-slice scores of the ensemble are
therefore in-sample for these few parameters: judge it on test or walk-forward folds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.src.training.calibration import PriorTemperature, fit_prior_temperature
from ml.src.training.stats import block_length
from ml.src.training.weights import (
    balanced_row_weights,
    blend,
    brier,
    equal_weights,
    fit_simplex_ridge,
    select_alpha,
)

# share of the validation rows the penalty's weights are fitted on (the rest, after a purge, scores them)
ALPHA_FIT_SHARE = 0.6


@dataclass(frozen=True)
class Combination:
    calibrators: dict[str, PriorTemperature]
    weights: dict[str, float]
    alpha: float  # inf = equal weights
    alpha_scores: dict[str, float] = field(default_factory=dict)  # later-part Brier per candidate penalty
    valid_brier: float | None = None  # the final blend on all of valid (in-sample)
    equal_valid_brier: float | None = None  # equal weights of the same calibrated members
    note: str | None = None

    def calibrated(self, probas: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: self.calibrators[n].apply(p) for n, p in probas.items()}

    def ensemble(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        return blend(self.calibrated(probas), self.weights)

    def equal_weight(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        return blend(self.calibrated(probas), equal_weights(list(self.weights)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "alpha": None if math.isinf(self.alpha) else self.alpha,
            "equal_weights": math.isinf(self.alpha),
            "alpha_scores": self.alpha_scores,
            "valid_brier": self.valid_brier,
            "equal_valid_brier": self.equal_valid_brier,
            "calibration": {n: c.to_dict() for n, c in self.calibrators.items()},
            "note": self.note,
        }


def _calibrate(
    probas: Mapping[str, np.ndarray],
    codes: np.ndarray,
    prior: np.ndarray,
    class_weights: Mapping[str, np.ndarray],
    enabled: bool,
) -> dict[str, PriorTemperature]:
    if not enabled:  # no temperature, but still undo the class weighting (beta = 1)
        return {
            n: PriorTemperature(1.0, tuple(map(float, prior)), tuple(map(float, class_weights[n])))
            for n in probas
        }
    return {n: fit_prior_temperature(p, codes, prior, class_weights[n]) for n, p in probas.items()}


def fit_combination(
    valid_probas: Mapping[str, np.ndarray],
    valid_codes: np.ndarray,
    *,
    prior: np.ndarray,
    class_weights: Mapping[str, np.ndarray],
    purge: int,
    alphas: Sequence[float],
    calibrate: bool,
    min_rows: int,
    se_rule: float = 1.0,
    balanced: bool = False,
) -> Combination:
    """Calibrators and weights from the members' validation-slice probabilities (rows in time order)."""
    y = np.asarray(valid_codes, dtype=np.int64)
    n = len(y)
    n_fit = int(n * ALPHA_FIT_SHARE)
    late = slice(n_fit + purge, n)
    scores: dict[str, float] = {}
    note = None
    if n_fit < min_rows or n - late.start < min_rows:
        alpha = math.inf
        note = f"{n} validation rows are too few to choose the penalty in time order: equal weights"
    else:
        early = {k: p[:n_fit] for k, p in valid_probas.items()}
        cal = _calibrate(early, y[:n_fit], prior, class_weights, calibrate)
        fit_p = {k: cal[k].apply(p) for k, p in early.items()}
        score_p = {k: cal[k].apply(p[late]) for k, p in valid_probas.items()}
        alpha, scores = select_alpha(
            fit_p,
            y[:n_fit],
            score_p,
            y[late],
            alphas,
            block=block_length(purge),
            se_rule=se_rule,
            balanced=balanced,
        )
    calibrators = _calibrate(valid_probas, y, prior, class_weights, calibrate)
    cal_valid = {k: calibrators[k].apply(p) for k, p in valid_probas.items()}
    weights = fit_simplex_ridge(cal_valid, y, alpha, balanced_row_weights(y) if balanced else None)
    return Combination(
        calibrators=calibrators,
        weights=weights,
        alpha=alpha,
        alpha_scores=scores,
        valid_brier=brier(blend(cal_valid, weights), y),
        equal_valid_brier=brier(blend(cal_valid, equal_weights(list(weights))), y),
        note=note,
    )
