"""The temperature toward the training class mix: exact values by hand, fitted values on hand-made probability
arrays with a known answer, and its guarantee on real bars (never worse than the prior on the slice it is fitted
on)."""

from __future__ import annotations

import numpy as np
import pytest

from config.settings import Settings
from ml.src.training.calibration import PriorTemperature, fit_prior_temperature, identity, shrink_to_prior
from ml.src.training.metrics import decide, log_loss_rows
from ml.src.training.models import class_weight_vector
from tests.factories import fit_sample_pair

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
PRIOR = np.array([0.25, 0.5, 0.25])
ONES = np.ones(3)


def test_beta_one_keeps_the_model_and_beta_zero_is_the_prior():
    np.testing.assert_allclose(shrink_to_prior(P, 1.0, PRIOR, ONES), P, rtol=1e-12)
    np.testing.assert_allclose(shrink_to_prior(P, 0.0, PRIOR, ONES), np.tile(PRIOR, (2, 1)), rtol=1e-12)
    np.testing.assert_allclose(identity().apply(P), P, rtol=1e-12)


def test_geometric_mix_pins_exact_values():
    beta = 0.5
    expected = np.sqrt(P) * np.sqrt(PRIOR)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shrink_to_prior(P, beta, PRIOR, ONES), expected, rtol=1e-12)


def test_balanced_class_weights_are_undone():
    w = np.array([2.0, 0.5, 2.0])  # a member trained with these weights over-states BEARISH and BULLISH by 4x
    expected = P / w
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shrink_to_prior(P, 1.0, PRIOR, w), expected, rtol=1e-12)


def test_class_decisions_do_not_depend_on_the_calibration():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], 500)
    ref = decide(shrink_to_prior(p, 1.0, PRIOR, ONES), PRIOR)
    for beta in (0.05, 0.3, 2.0):
        assert (decide(shrink_to_prior(p, beta, PRIOR, ONES), PRIOR) == ref).all()


def _sample(q: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.random(len(q))[:, None]
    return (u > q.cumsum(axis=1)).sum(axis=1)


def test_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    q = rng.dirichlet([2, 4, 2], 20000)  # the true probabilities; labels are drawn from them
    y = _sample(q, 2)
    prior = np.bincount(y, minlength=3) / len(y)
    # a member that is over-confident by a factor 2.5 in its log-odds against the prior
    over = shrink_to_prior(q, 2.5, prior, ONES)
    fitted = fit_prior_temperature(over, y, prior, ONES)
    assert fitted.beta == pytest.approx(1 / 2.5, rel=0.1)
    assert log_loss_rows(y, fitted.apply(over)).mean() < log_loss_rows(y, over).mean() - 0.05
    # an under-confident one is sharpened
    under = shrink_to_prior(q, 0.5, prior, ONES)
    assert fit_prior_temperature(under, y, prior, ONES).beta == pytest.approx(2.0, rel=0.1)


def test_pure_noise_collapses_to_the_prior():
    rng = np.random.default_rng(4)
    y = rng.choice(3, size=3000, p=[0.3, 0.4, 0.3])
    noise = rng.dirichlet([1, 1, 1], 3000)
    prior = np.array([0.3, 0.4, 0.3])
    fitted = fit_prior_temperature(noise, y, prior, ONES)
    assert fitted.beta < 0.05
    assert PriorTemperature.from_dict(fitted.to_dict()) == fitted


@pytest.mark.slow
def test_calibrated_members_never_lose_to_the_prior_where_they_are_fitted(embedded_store) -> None:
    settings = Settings(_env_file=None)
    prep, fit = fit_sample_pair(embedded_store, "IBM", "d1", settings)
    s = prep.split
    y = prep.codes[s.valid]
    prior_ll = log_loss_rows(y, np.tile(fit.prior, (len(y), 1))).mean()
    raw = fit.probas["valid"]
    for name, cal in fit.combination.calibrators.items():
        assert cal.class_weight == tuple(class_weight_vector(prep.codes[s.train], settings.class_weight))
        assert log_loss_rows(y, cal.apply(raw[name])).mean() <= prior_ll + 1e-9, name
