"""Per-pair cost cuts that must not change the models: the forest's fit without per-tree re-validation, and
the per-tree sample cap that keeps the forest's cost from growing with the window."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.training.models import build_random_forest, fit_ensemble
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import prepare_pair
from tests.factories import sample_bars

pytestmark = pytest.mark.slow


@pytest.fixture()
def prep(embedded_store: SqliteStore, ml_env):
    embedded_store.upsert_bars("IXIC", "d1", sample_bars("IXIC", "d1", last=700))
    return prepare_pair(embedded_store, PairRequest("IXIC", "d1", target_bars=500), Settings())


def fit(prep, settings: Settings):
    s = prep.split
    h = prep.spec.horizon_bars
    return fit_ensemble(prep.x, prep.codes, s.train, s.valid, {"test": s.test}, settings, purge=h)


def test_the_fast_forest_is_the_plain_forest(prep) -> None:
    settings = Settings()
    s = prep.split
    plain: RandomForestClassifier = build_random_forest(settings).fit(prep.x[s.train], prep.codes[s.train])
    assert settings.class_weight == "none" and not settings.refit_on_valid  # the plain fit is the member's
    np.testing.assert_array_equal(
        fit(prep, settings).probas["test"]["rf"], plain.predict_proba(prep.x[s.test])
    )


def test_the_sample_cap_applies_only_above_it(prep) -> None:
    n_train = prep.split.n_train
    assert fit(prep, Settings(rf_sample_cap=n_train)).models["rf"].max_samples is None
    assert fit(prep, Settings(rf_sample_cap=0)).models["rf"].max_samples is None
    capped = fit(prep, Settings(rf_sample_cap=n_train // 2)).models["rf"]
    assert capped.max_samples == n_train // 2
    assert Settings().rf_sample_cap > 3 * 500  # the default never touches a default-sized window
