"""Classification metrics and baselines for a 3-class direction model. Pure functions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.src.training.labels import CLASSES

_EPS = 1e-15


def class_counts(codes: np.ndarray) -> dict[str, int]:
    c = np.asarray(codes)
    return {name: int((c == i).sum()) for i, name in enumerate(CLASSES)}


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """3x3 counts, rows = true class, columns = predicted (CLASSES order)."""
    k = len(CLASSES)
    idx = np.asarray(y_true, dtype=np.int64) * k + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def empty_classes(codes: np.ndarray) -> list[str]:
    """Classes with no sample in `codes`: a model cannot learn them."""
    return [name for name, n in class_counts(codes).items() if n == 0]


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over classes present in y_true), macro F1, confusion matrix.

    Computed from the confusion matrix with numpy (same definitions as scikit-learn's accuracy_score,
    balanced_accuracy_score and f1_score(average="macro", zero_division=0)); sklearn's per-call input
    validation cost more than the fits' bookkeeping on small slices.
    """
    c = confusion(y_true, y_pred)
    n = c.sum()
    tp = np.diag(c).astype("float64")
    support = c.sum(axis=1)
    predicted = c.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    f1_den = support + predicted
    f1 = np.divide(2 * tp, f1_den, out=np.zeros_like(tp), where=f1_den > 0)
    return {
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1.mean()),
        "confusion": c.tolist(),
    }


def proba_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """label_metrics of the argmax class, plus the log loss of the (clipped, renormalised) probabilities."""
    proba = np.clip(np.asarray(proba, dtype="float64"), _EPS, 1.0)
    proba = proba / proba.sum(axis=1, keepdims=True)
    y = np.asarray(y_true, dtype=np.int64)
    out = label_metrics(y, proba.argmax(axis=1))
    out["log_loss"] = float(-np.log(proba[np.arange(len(y)), y]).mean()) if len(y) else float("nan")
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
