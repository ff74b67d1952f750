"""The ensemble's member models: a RandomForest and a gradient-boosting learner (backend is a setting).

Both are regularised for a few hundred to a few thousand noisy rows (shallow trees, many rows per leaf) and
trained with the same class weighting, so their probabilities mean the same thing before calibration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from threadpoolctl import threadpool_limits

from config.settings import FitSettings
from ml.src.training.combine import Combination, fit_combination
from ml.src.training.labels import CLASSES

MODEL_NAMES: tuple[str, ...] = ("rf", "gb")


def build_random_forest(settings: FitSettings, n_threads: int = 1) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=settings.rf_n_estimators,
        max_depth=settings.rf_max_depth,
        min_samples_split=max(settings.rf_min_samples_split, 2 * settings.rf_min_samples_leaf),
        min_samples_leaf=settings.rf_min_samples_leaf,
        max_features=settings.rf_max_features,
        max_samples=settings.rf_max_samples,
        random_state=settings.random_state,
        n_jobs=n_threads,
    )


def build_gradient_boosting(settings: FitSettings, n_threads: int = 1) -> Any:
    """Same hyper-parameters whatever the backend, mapped to each library's names."""
    if settings.gb_backend == "sklearn_gb":
        return GradientBoostingClassifier(
            n_estimators=settings.gb_n_estimators,
            learning_rate=settings.gb_learning_rate,
            max_depth=settings.gb_max_depth,
            min_samples_split=max(10, 2 * settings.gb_min_samples_leaf),
            min_samples_leaf=settings.gb_min_samples_leaf,
            subsample=settings.gb_subsample,
            max_features=settings.gb_colsample if settings.gb_colsample < 1 else None,
            random_state=settings.random_state,
        )
    if settings.gb_backend == "hist_gb":
        # Threads are capped by the caller with threadpoolctl (HistGradientBoosting has no n_jobs).
        return HistGradientBoostingClassifier(
            max_iter=settings.gb_n_estimators,
            learning_rate=settings.gb_learning_rate,
            max_depth=settings.gb_max_depth,
            max_leaf_nodes=max(2, 2**settings.gb_max_depth),
            min_samples_leaf=settings.gb_min_samples_leaf,
            max_features=settings.gb_colsample,
            early_stopping=False,
            random_state=settings.random_state,
        )
    from lightgbm import LGBMClassifier

    return LGBMClassifier(
        n_estimators=settings.gb_n_estimators,
        learning_rate=settings.gb_learning_rate,
        max_depth=settings.gb_max_depth,
        num_leaves=min(2**settings.gb_max_depth, 131072),
        min_child_samples=settings.gb_min_samples_leaf,
        subsample=settings.gb_subsample,
        subsample_freq=1 if settings.gb_subsample < 1 else 0,
        colsample_bytree=settings.gb_colsample,
        random_state=settings.random_state,
        n_jobs=n_threads,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )


def build_models(settings: FitSettings, n_threads: int = 1) -> dict[str, Any]:
    return {
        "rf": build_random_forest(settings, n_threads),
        "gb": build_gradient_boosting(settings, n_threads),
    }


def class_weight_vector(codes: np.ndarray, mode: str) -> np.ndarray:
    """Per-class weights: 1 each, or "balanced" = n / (classes x count), scikit-learn's formula."""
    k = len(CLASSES)
    if mode == "none":
        return np.ones(k)
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=k).astype("float64")
    present = counts > 0
    w = np.ones(k)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def class_prior(codes: np.ndarray) -> np.ndarray:
    """The class mix of the rows (the `prior` baseline's forecast)."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(CLASSES)).astype("float64")
    return counts / counts.sum()


def _fit_members(
    x: np.ndarray,
    codes: np.ndarray,
    rows: slice,
    settings: FitSettings,
    n_threads: int,
    w: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    models = build_models(settings, n_threads)
    y = codes[rows]
    per_tree = len(y) if settings.rf_max_samples is None else max(round(settings.rf_max_samples * len(y)), 1)
    if 0 < settings.rf_sample_cap < per_tree:
        # each tree grows on a bootstrap of at most rf_sample_cap rows: the forest's cost stops growing with
        # the window (measured: 5,000 -> 20,000 bars 2.0x the CPU instead of 4.6x, no loss of test accuracy)
        models["rf"].set_params(max_samples=settings.rf_sample_cap)
    if w is None:
        w = class_weight_vector(y, settings.class_weight)
    timings: dict[str, float] = {}
    # Inputs are checked once upstream (finite features, Settings-validated parameters), so scikit-learn's
    # per-tree re-validation is skipped: ~20% of a 100-tree forest's fit at 300 rows, identical trees.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for name, model in models.items():
            t0 = time.perf_counter()
            # class weighting as sample weights: one mechanism for every backend, identical in both members
            model.fit(x[rows], y, sample_weight=w[y] if settings.class_weight != "none" else None)
            timings[name] = time.perf_counter() - t0
    return models, w, timings


def _predict(models: dict[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(m.predict_proba(x), dtype="float64") for name, m in models.items()}


@dataclass
class EnsembleFit:
    models: dict[str, Any]  # the members that score test (refitted on train + valid if settings say so)
    probas: dict[str, dict[str, np.ndarray]]  # part -> member -> raw class probabilities of that part's rows
    combination: Combination
    prior: np.ndarray  # class mix of the fit rows: calibration target, prior baseline, decision reference
    refit: bool
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def weights(self) -> dict[str, float]:
        return self.combination.weights

    def ensemble(self, part: str) -> np.ndarray:
        return self.combination.ensemble(self.probas[part])

    def equal_weight(self, part: str) -> np.ndarray:
        return self.combination.equal_weight(self.probas[part])

    def calibrated(self, part: str) -> dict[str, np.ndarray]:
        return self.combination.calibrated(self.probas[part])


def fit_ensemble(
    x: np.ndarray,
    codes: np.ndarray,
    fit_rows: slice,
    valid_rows: slice,
    predict_rows: dict[str, slice],
    settings: FitSettings,
    *,
    purge: int,
    n_threads: int = 1,
) -> EnsembleFit:
    """Fit the members on fit_rows, calibrate and weight them on valid_rows (combine.py), and predict every
    part in predict_rows (with "valid" always included).

    With settings.refit_on_valid the members are fitted again on fit + valid rows (the purge between them
    included) and those refitted members predict the other parts, with the calibration and weights found on
    valid: more recent data for the saved model, the weights still out-of-sample.
    """
    timings: dict[str, float] = {}
    with threadpool_limits(limits=n_threads):
        models, w, t = _fit_members(x, codes, fit_rows, settings, n_threads)
        timings.update({f"fit_{k}": v for k, v in t.items()})
        t0 = time.perf_counter()
        probas = {"valid": _predict(models, x[valid_rows])}
        timings["predict"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prior = class_prior(codes[fit_rows])
        combination = fit_combination(
            probas["valid"],
            codes[valid_rows],
            prior=prior,
            class_weights={n: w for n in models},
            purge=purge,
            alphas=settings.ridge_alphas,
            calibrate=settings.calibrate,
            min_rows=settings.min_rows_per_split,
            se_rule=settings.ridge_se_rule,
            balanced=settings.ridge_balanced,
        )
        timings["weights"] = time.perf_counter() - t0
        if settings.refit_on_valid:
            # the same class weights as the calibrated members, so the calibration still applies
            models, _, t = _fit_members(
                x, codes, slice(fit_rows.start, valid_rows.stop), settings, n_threads, w
            )
            timings.update({f"refit_{k}": v for k, v in t.items()})
        t0 = time.perf_counter()
        for part, rows in predict_rows.items():
            if part != "valid":
                probas[part] = _predict(models, x[rows])
        timings["predict"] += time.perf_counter() - t0
    return EnsembleFit(models, probas, combination, prior, settings.refit_on_valid, timings)
