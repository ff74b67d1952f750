"""The ensemble's member models: a RandomForest and a gradient-boosting learner (backend is a setting)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from threadpoolctl import threadpool_limits

from config.settings import Settings
from ml.src.training.labels import DIRECTION
from ml.src.training.weights import direction_score, fit_ridge_weights

MODEL_NAMES: tuple[str, ...] = ("rf", "gb")


def build_random_forest(settings: Settings, n_threads: int = 1) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=settings.rf_n_estimators,
        max_depth=settings.rf_max_depth,
        min_samples_split=settings.rf_min_samples_split,
        min_samples_leaf=settings.rf_min_samples_leaf,
        class_weight="balanced",
        random_state=settings.random_state,
        n_jobs=n_threads,
    )


def build_gradient_boosting(settings: Settings, n_threads: int = 1) -> Any:
    """Same hyper-parameters whatever the backend, mapped to each library's names."""
    if settings.gb_backend == "sklearn_gb":
        return GradientBoostingClassifier(
            n_estimators=settings.gb_n_estimators,
            learning_rate=settings.gb_learning_rate,
            max_depth=settings.gb_max_depth,
            min_samples_split=10,
            min_samples_leaf=settings.gb_min_samples_leaf,
            random_state=settings.random_state,
        )
    if settings.gb_backend == "hist_gb":
        # Threads are capped by the caller with threadpoolctl (HistGradientBoosting has no n_jobs).
        return HistGradientBoostingClassifier(
            max_iter=settings.gb_n_estimators,
            learning_rate=settings.gb_learning_rate,
            max_depth=settings.gb_max_depth,
            min_samples_leaf=settings.gb_min_samples_leaf,
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
        random_state=settings.random_state,
        n_jobs=n_threads,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )


def build_models(settings: Settings, n_threads: int = 1) -> dict[str, Any]:
    return {
        "rf": build_random_forest(settings, n_threads),
        "gb": build_gradient_boosting(settings, n_threads),
    }


@dataclass
class EnsembleFit:
    models: dict[str, Any]
    probas: dict[str, dict[str, np.ndarray]]  # part -> model -> class probabilities of that part's rows
    weights: dict[str, float]
    weights_fallback: bool
    timings: dict[str, float]


def fit_ensemble(
    x: np.ndarray,
    codes: np.ndarray,
    fit_rows: slice,
    valid_rows: slice,
    predict_rows: dict[str, slice],
    settings: Settings,
    n_threads: int = 1,
) -> EnsembleFit:
    """Fit the members on fit_rows, predict every part (which must include "valid"), and fit the Ridge
    weights on the valid part only."""
    models = build_models(settings, n_threads)
    probas: dict[str, dict[str, np.ndarray]] = {part: {} for part in predict_rows}
    timings: dict[str, float] = {}
    with threadpool_limits(limits=n_threads):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.fit(x[fit_rows], codes[fit_rows])
            timings[f"fit_{name}"] = time.perf_counter() - t0
            for part, rows in predict_rows.items():
                probas[part][name] = np.asarray(model.predict_proba(x[rows]), dtype="float64")
    t0 = time.perf_counter()
    weights, fallback = fit_ridge_weights(
        {n: direction_score(probas["valid"][n]) for n in MODEL_NAMES},
        DIRECTION[codes[valid_rows]],
        settings.ridge_alpha,
    )
    timings["weights"] = time.perf_counter() - t0
    return EnsembleFit(models, probas, weights, fallback, timings)
