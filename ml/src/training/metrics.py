"""Classification metrics and baselines for a 3-class direction model. Pure functions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.src.training.labels import CLASSES

_EPS = 1e-15


def class_counts(codes: np.ndarray) -> dict[str, int]:
    c = np.asarray(codes)
    return {name: int((c == i).sum()) for i, name in enumerate(CLASSES)}


def class_shares(codes: np.ndarray) -> dict[str, float | None]:
    """Fraction of rows in each class (None for an empty slice): label balance, comparable across pairs."""
    c = np.asarray(codes)
    return {name: (float((c == i).mean()) if c.size else None) for i, name in enumerate(CLASSES)}


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


def proba_metrics(y_true: np.ndarray, proba: np.ndarray, pred: np.ndarray | None = None) -> dict[str, Any]:
    """label_metrics of the class decisions (`pred`; argmax when not given), plus the log loss of the (clipped,
    renormalised) probabilities."""
    y = np.asarray(y_true, dtype=np.int64)
    out = label_metrics(y, np.asarray(proba).argmax(axis=1) if pred is None else pred)
    out["log_loss"] = float(log_loss_rows(y, proba).mean()) if len(y) else float("nan")
    return out


def decide(proba: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Class decisions for balanced accuracy: the class whose probability most exceeds its training share.

    argmax p(c) / prior(c) is the decision that maximises expected balanced accuracy (mean recall), whatever
    the class mix; plain argmax p maximises accuracy and mostly predicts the majority class. Exact ties (a
    forecast equal to the prior) go to the more common training class, i.e. the majority baseline.
    """
    prior = np.clip(np.asarray(prior, dtype="float64"), 1e-12, None)
    ratio = np.asarray(proba, dtype="float64") / prior
    return (ratio + 1e-12 * prior).argmax(axis=1)


def hit_rate(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float | None, int]:
    """Share of directional calls (BULLISH/BEARISH) that got the direction right, on rows that really moved.

    Rows whose true label or call is NEUTRAL are left out: this reads "when it calls a direction and the price
    moves by more than the threshold, how often is the direction right" (0.5 is a coin). Returns (rate, rows).
    """
    y, p = np.asarray(y_true), np.asarray(y_pred)
    neutral = CLASSES.index("NEUTRAL")
    rows = (y != neutral) & (p != neutral)
    n = int(rows.sum())
    return (float((y[rows] == p[rows]).mean()) if n else None), n


def balanced_accuracy_rows(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-row contributions that sum to the balanced accuracy: correct / (classes present x class count).

    Balanced accuracy is a weighted mean of per-row hits, so two predictors can be compared row by row.
    """
    y = np.asarray(y_true, dtype=np.int64)
    counts = np.bincount(y, minlength=len(CLASSES)).astype("float64")
    k = float((counts > 0).sum())
    if k == 0:
        return np.zeros(0)
    hits = (y == np.asarray(y_pred)).astype("float64")
    return hits / (k * counts[y])


def log_loss_rows(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """-log p(true class) per row, probabilities clipped and renormalised as in proba_metrics."""
    p = np.clip(np.asarray(proba, dtype="float64"), _EPS, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    y = np.asarray(y_true, dtype=np.int64)
    return -np.log(p[np.arange(len(y)), y])


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
