"""Classification metrics and baselines for a 3-class direction model. Pure functions."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss

from ml.src.training.labels import CLASSES

LABELS = list(range(len(CLASSES)))
_EPS = 1e-15


def class_counts(codes: np.ndarray) -> dict[str, int]:
    c = np.asarray(codes)
    return {name: int((c == i).sum()) for i, name in enumerate(CLASSES)}


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over classes present in y_true), macro F1, confusion matrix."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # a class absent from a slice is reported by class_counts, not a warning
        return {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)),
            "confusion": confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
        }


def proba_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """label_metrics of the argmax class, plus the log loss of the probabilities."""
    proba = np.clip(np.asarray(proba, dtype="float64"), _EPS, 1.0)
    proba = proba / proba.sum(axis=1, keepdims=True)
    out = label_metrics(y_true, proba.argmax(axis=1))
    out["log_loss"] = float(log_loss(y_true, proba, labels=LABELS))
    return out


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def majority_class(train_codes: np.ndarray) -> int:
    """The most frequent training class; ties go to the lower code (deterministic)."""
    counts = np.bincount(np.asarray(train_codes), minlength=len(CLASSES))
    return int(counts.argmax())


def prior_proba(train_codes: np.ndarray, n: int) -> np.ndarray:
    """The training class frequencies repeated n times: the no-skill probabilistic forecast."""
    counts = np.bincount(np.asarray(train_codes), minlength=len(CLASSES)).astype("float64")
    return np.tile(counts / counts.sum(), (n, 1))


def persistence_predictions(codes: np.ndarray, rows: slice, horizon: int) -> np.ndarray:
    """For each row t in `rows`, the label of row t - h: the most recent label fully known at t's close."""
    idx = np.arange(rows.start, rows.stop) - horizon
    if idx.min(initial=0) < 0:
        raise ValueError("persistence needs h rows of labelled history before the slice")
    return np.asarray(codes)[idx]
