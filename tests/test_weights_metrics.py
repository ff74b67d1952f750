from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml.src.training.metrics import (
    balanced_accuracy_rows,
    class_counts,
    class_shares,
    decide,
    hit_rate,
    label_metrics,
    majority_class,
    persistence_predictions,
    prior_proba,
    proba_metrics,
)
from ml.src.training.weights import (
    blend,
    brier,
    direction_score,
    equal_weights,
    fit_simplex_ridge,
    one_hot,
    select_alpha,
)


def test_direction_score():
    p = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert direction_score(p).tolist() == pytest.approx([0.3, -0.5])


def _members(n: int = 600, seed: int = 7) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Hand-made probability arrays: one member that knows the label, one that is pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    informed = 0.5 * one_hot(y) + 0.5 * rng.dirichlet([2, 2, 2], n)
    noise = rng.dirichlet([2, 2, 2], n)
    return y, {"rf": informed, "gb": noise}


def test_pure_noise_member_gets_no_weight_without_penalty_and_half_with_a_large_one():
    y, probas = _members()
    free = fit_simplex_ridge(probas, y, alpha=0.0)
    assert free["gb"] == pytest.approx(0.0, abs=0.02) and free["rf"] == pytest.approx(1.0, abs=0.02)
    shrunk = fit_simplex_ridge(probas, y, alpha=1e4)
    assert shrunk["rf"] == pytest.approx(0.5, abs=0.01) and shrunk["gb"] == pytest.approx(0.5, abs=0.01)
    middle = fit_simplex_ridge(probas, y, alpha=1.0)
    assert free["rf"] > middle["rf"] > shrunk["rf"]  # the penalty pulls monotonically toward equal
    assert fit_simplex_ridge(probas, y, alpha=float("inf")) == equal_weights(["rf", "gb"])


def test_weight_fit_is_the_exact_constrained_minimum():
    y, probas = _members(n=300, seed=3)
    probas["gb"] = 0.3 * one_hot(y) + 0.7 * probas["gb"]  # both informative: an interior optimum
    for alpha in (0.0, 0.01, 0.3):
        w = fit_simplex_ridge(probas, y, alpha)
        assert sum(w.values()) == pytest.approx(1.0) and min(w.values()) >= 0

        def objective(t: float, alpha: float = alpha) -> float:
            b = blend(probas, {"rf": t, "gb": 1 - t})
            return brier(b, y) + alpha * 2 * (t - 0.5) ** 2

        grid = np.linspace(0, 1, 10001)
        best = grid[np.argmin([objective(t) for t in grid])]
        assert w["rf"] == pytest.approx(best, abs=2e-4)
        assert objective(w["rf"]) <= min(objective(t) for t in grid) + 1e-12


def test_three_members_stay_on_the_simplex():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 400)
    probas = {
        "a": 0.6 * one_hot(y) + 0.4 * rng.dirichlet([1, 1, 1], 400),
        "b": 0.2 * one_hot(y) + 0.8 * rng.dirichlet([1, 1, 1], 400),
        "c": rng.dirichlet([1, 1, 1], 400),
    }
    w = fit_simplex_ridge(probas, y, alpha=0.0)
    assert sum(w.values()) == pytest.approx(1.0) and min(w.values()) >= 0
    # no simplex point on a coarse grid does better
    f = brier(blend(probas, w), y)
    for a, b in itertools.product(np.linspace(0, 1, 21), repeat=2):
        if a + b <= 1:
            assert f <= brier(blend(probas, {"a": a, "b": b, "c": 1 - a - b}), y) + 1e-12


def test_identical_members_get_equal_weights():
    y, probas = _members(n=200)
    same = {"rf": probas["rf"], "gb": probas["rf"].copy()}
    assert fit_simplex_ridge(same, y, alpha=0.0) == pytest.approx({"rf": 0.5, "gb": 0.5})


def test_select_alpha_scores_later_rows_and_keeps_equal_weights_within_one_standard_error():
    y, probas = _members(n=600)
    fit = {k: v[:400] for k, v in probas.items()}
    later = {k: v[400:] for k, v in probas.items()}
    alpha, scores = select_alpha(fit, y[:400], later, y[400:], [0.0, 0.1, 10.0], block=4)
    assert set(scores) == {"0", "0.1", "10", "inf"}
    # the noise member really hurts the later rows: far more than one s.e., so the weights move; 0 and 0.1
    # give it no weight alike, and the stronger penalty is kept
    assert scores["0"] < scores["inf"] and alpha == 0.1 and scores["0.1"] == scores["0"]
    # two members that differ only a little: the best penalty is not equal weights, but within the noise
    rng = np.random.default_rng(2)
    close = {
        "rf": 0.30 * one_hot(y) + 0.70 * rng.dirichlet([2, 2, 2], 600),
        "gb": 0.28 * one_hot(y) + 0.72 * rng.dirichlet([2, 2, 2], 600),
    }
    args = ({k: v[:400] for k, v in close.items()}, y[:400], {k: v[400:] for k, v in close.items()}, y[400:])
    best, scores = select_alpha(*args, [0.0, 0.01], block=4, se_rule=0.0)
    assert best != float("inf") and scores["inf"] > min(scores.values())
    assert select_alpha(*args, [0.0, 0.01], block=4)[0] == float("inf")
    same = {"rf": probas["rf"], "gb": probas["rf"]}  # every penalty gives the same blend: equal weights
    alpha, _ = select_alpha(
        {k: v[:400] for k, v in same.items()},
        y[:400],
        {k: v[400:] for k, v in same.items()},
        y[400:],
        [0.0, 1.0],
    )
    assert alpha == float("inf")


def test_blend_and_brier_pin_values():
    a = np.array([[1.0, 0.0, 0.0]])
    b = np.array([[0.0, 0.0, 1.0]])
    assert blend({"rf": a, "gb": b}, {"rf": 0.25, "gb": 0.75}).tolist() == [[0.25, 0.0, 0.75]]
    assert brier(np.array([[0.25, 0.0, 0.75]]), np.array([2])) == pytest.approx(0.25**2 + 0.25**2)


def test_label_metrics_small_exact_case():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 2, 0])
    m = label_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    # per-row contributions add up to the balanced accuracy (what paired comparisons rely on)
    assert balanced_accuracy_rows(y_true, y_pred).sum() == pytest.approx(m["balanced_accuracy"])
    assert balanced_accuracy_rows(y_true[:3], y_pred[:3]).sum() == pytest.approx((1 / 2 + 1) / 2)


def test_decide_picks_the_class_most_above_its_training_share():
    prior = np.array([0.2, 0.6, 0.2])
    p = np.array([[0.25, 0.5, 0.25], [0.3, 0.45, 0.25], [0.2, 0.6, 0.2]])
    # argmax would say NEUTRAL three times; relative to the prior: tie BEARISH/BULLISH -> first, BEARISH, prior
    assert p.argmax(axis=1).tolist() == [1, 1, 1]
    assert decide(p, prior).tolist() == [0, 0, 1]  # a forecast equal to the prior is the majority class


def test_hit_rate_counts_directional_calls_on_rows_that_moved():
    y = np.array([0, 2, 2, 1, 0, 2])
    pred = np.array([0, 0, 2, 2, 1, 2])
    # rows 0, 1, 2, 5 are directional calls on moves: right, wrong, right, right
    assert hit_rate(y, pred) == (pytest.approx(3 / 4), 4)
    assert hit_rate(np.array([1, 1]), np.array([0, 2])) == (None, 0)


def test_proba_metrics_log_loss_and_decisions():
    y = np.array([0, 2])
    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    assert proba_metrics(y, p)["log_loss"] == pytest.approx(-np.log(0.5))
    assert proba_metrics(y, p, pred=np.array([1, 1]))["accuracy"] == 0.0


def test_baselines():
    train = np.array([1, 1, 2, 0, 1, 2])
    assert majority_class(train) == 1
    assert prior_proba(train, 2).tolist() == [[1 / 6, 3 / 6, 2 / 6]] * 2
    assert class_counts(train) == {"BEARISH": 1, "NEUTRAL": 3, "BULLISH": 2}
    assert class_shares(train) == pytest.approx({"BEARISH": 1 / 6, "NEUTRAL": 0.5, "BULLISH": 1 / 3})
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
