from __future__ import annotations

import numpy as np
import pytest

from ml.src.training.metrics import (
    class_counts,
    label_metrics,
    majority_class,
    persistence_predictions,
    prior_proba,
    proba_metrics,
)
from ml.src.training.weights import blend, direction_score, equal_weights, fit_ridge_weights


def test_direction_score():
    p = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert direction_score(p).tolist() == pytest.approx([0.3, -0.5])


def test_ridge_weights_one_per_model_non_negative_sum_one():
    y = np.array([-1, 0, 1, 1, -1, 0, 1, -1], dtype=float)
    good = y * 0.8
    noise = np.array([0.1, -0.2, 0.05, -0.1, 0.2, 0.0, -0.3, 0.1])
    w, fallback = fit_ridge_weights({"rf": good, "gb": noise}, y, alpha=1.0)
    assert set(w) == {"rf", "gb"} and not fallback
    assert sum(w.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in w.values())
    assert w["rf"] > w["gb"]


def test_ridge_weights_fall_back_to_equal_when_nothing_is_positive():
    y = np.array([-1, 0, 1, 1, -1, 0], dtype=float)
    w, fallback = fit_ridge_weights({"rf": -y, "gb": -y * 0.5}, y)
    assert fallback and w == equal_weights(["rf", "gb"])
    w, fallback = fit_ridge_weights({"rf": y, "gb": y}, np.zeros(6))
    assert fallback and w == {"rf": 0.5, "gb": 0.5}


def test_blend_is_the_weighted_average():
    a = np.array([[1.0, 0.0, 0.0]])
    b = np.array([[0.0, 0.0, 1.0]])
    assert blend({"rf": a, "gb": b}, {"rf": 0.25, "gb": 0.75}).tolist() == [[0.25, 0.0, 0.75]]


def test_label_metrics_small_exact_case():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 2, 0])
    m = label_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_proba_metrics_log_loss():
    y = np.array([0, 2])
    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    assert proba_metrics(y, p)["log_loss"] == pytest.approx(-np.log(0.5))


def test_baselines():
    train = np.array([1, 1, 2, 0, 1, 2])
    assert majority_class(train) == 1
    assert prior_proba(train, 2).tolist() == [[1 / 6, 3 / 6, 2 / 6]] * 2
    assert class_counts(train) == {"BEARISH": 1, "NEUTRAL": 3, "BULLISH": 2}
    codes = np.array([0, 1, 2, 0, 1, 2, 2])
    # row t predicts the label of t - h, the last one whose horizon has fully elapsed
    assert persistence_predictions(codes, slice(4, 7), horizon=2).tolist() == [2, 0, 1]
    with pytest.raises(ValueError):
        persistence_predictions(codes, slice(1, 3), horizon=2)


def test_numpy_metrics_agree_with_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    rng = np.random.default_rng(3)  # random labels only exercise the formula, not the model
    for n_classes_present in (3, 2):
        y = rng.integers(0, n_classes_present, 200)
        p = rng.dirichlet([1, 1, 1], 200)
        m = proba_metrics(y, p)
        pred = p.argmax(axis=1)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        with pytest.warns(UserWarning) if n_classes_present == 2 and (pred == 2).any() else _nullcontext():
            assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["macro_f1"] == pytest.approx(
            f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
        )
        assert m["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-9)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
