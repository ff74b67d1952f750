"""The ensemble's member models: a RandomForest and a gradient-boosting learner (backend is a setting)."""

from __future__ import annotations

from typing import Any

from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)

from config.settings import Settings

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
