"""Probability calibration of one member: a temperature toward the training class mix, fitted on valid.

Tree ensembles fitted to noisy labels are over-confident (deep trees) or under-confident (averaged shallow
trees), and a member trained with balanced class weights reports probabilities for a world where every class is
equally common. One parameter fixes both:

    log p'(c) = beta * log(p(c) / w(c)) + (1 - beta) * log prior(c) + const

where w are the class weights the member was trained with (all 1 without weighting; dividing by them undoes
the re-weighting) and prior is the training class mix. beta = 1 keeps the (un-weighted) model, beta = 0 is the
prior itself (a member with no skill on valid collapses to "knowing nothing"), beta > 1 sharpens. beta is fitted
by minimising the log loss on the validation slice. Pure functions.

For any beta > 0, p'(c) / prior(c) ranks the classes exactly as p(c) / (w(c) prior(c)) does, so the class
decision used for balanced accuracy (metrics.decide) does not depend on the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-6  # floor for a probability before its log: a tree that saw no BEARISH row in a leaf still may be wrong
BETA_MAX = 5.0


@dataclass(frozen=True)
class PriorTemperature:
    beta: float
    prior: tuple[float, ...]
    class_weight: tuple[float, ...]

    def apply(self, proba: np.ndarray) -> np.ndarray:
        return shrink_to_prior(proba, self.beta, np.asarray(self.prior), np.asarray(self.class_weight))

    def to_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "prior": list(self.prior), "class_weight": list(self.class_weight)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorTemperature:
        return cls(float(d["beta"]), tuple(d["prior"]), tuple(d["class_weight"]))


def identity(n_classes: int = 3) -> PriorTemperature:
    """No calibration: beta 1 with unit weights returns the member's probabilities (up to the floor)."""
    return PriorTemperature(1.0, (1.0 / n_classes,) * n_classes, (1.0,) * n_classes)


def _logit_parts(
    proba: np.ndarray, prior: np.ndarray, class_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(log prior, log(p / w) - log prior): the logits are a + beta * d."""
    p = np.clip(np.asarray(proba, dtype="float64"), _EPS, 1.0)
    a = np.log(np.clip(prior, _EPS, 1.0))
    d = np.log(p / class_weight) - a
    return np.broadcast_to(a, p.shape), d


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def shrink_to_prior(
    proba: np.ndarray, beta: float, prior: np.ndarray, class_weight: np.ndarray
) -> np.ndarray:
    a, d = _logit_parts(proba, prior, class_weight)
    return _softmax(a + beta * d)


def _log_loss(a: np.ndarray, d: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = a + beta * d
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float((lse - z[np.arange(len(y)), y]).mean())


def fit_prior_temperature(
    proba: np.ndarray, codes: np.ndarray, prior: np.ndarray, class_weight: np.ndarray
) -> PriorTemperature:
    """The beta in [0, BETA_MAX] with the lowest log loss on these rows (convex in beta: one bounded search)."""
    y = np.asarray(codes, dtype=np.int64)
    prior = np.asarray(prior, dtype="float64")
    class_weight = np.asarray(class_weight, dtype="float64")
    if len(y) == 0:
        raise ValueError("no rows to calibrate on")
    a, d = _logit_parts(proba, prior, class_weight)
    from scipy.optimize import minimize_scalar  # on first use: the job's process never needs scipy

    res = minimize_scalar(
        lambda b: _log_loss(a, d, y, b), bounds=(0.0, BETA_MAX), method="bounded", options={"xatol": 1e-4}
    )
    beta = float(res.x)
    # the bounded search never evaluates the ends exactly; "no skill at all" should be exactly the prior
    if _log_loss(a, d, y, 0.0) <= _log_loss(a, d, y, beta):
        beta = 0.0
    return PriorTemperature(beta, tuple(float(v) for v in prior), tuple(float(v) for v in class_weight))
