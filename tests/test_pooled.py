"""Pooled cross-symbol models (issue 20, item 3; measured in scripts/bench_quality.py --skill --pooled): for an
evaluated pair's walk-forward fold, the pooled fit learns from no row of any pair whose label was not yet known
when the evaluated pair's last fit label was, so nothing of its valid or test period is seen."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.training import models
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import prepare_pair
from ml.src.training.pooled import PoolMember, known_rows, pooled_walk_forward
from ml.src.training.walk_forward import fold_bounds
from tests.factories import sample_bars


def _member(store: SqliteStore, symbol: str, settings: Settings) -> PoolMember:
    store.upsert_bars(symbol, "d1", sample_bars(symbol, "d1"))
    p = prepare_pair(store, PairRequest(symbol, "d1", target_bars=1200), settings)
    return PoolMember(f"{symbol}/d1", p.x, p.returns, p.ts, p.spec.horizon_bars, p.spec.threshold, p.scale)


def test_known_rows_are_those_whose_label_closed_by_the_cutoff(embedded_store: SqliteStore) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    m = _member(embedded_store, "GSPC", settings)
    cutoff = m.ts.iloc[600]
    rows = known_rows(m, cutoff)
    # row i's label ends at bar i + 5: rows 0..595 end by bar 600
    assert rows.tolist() == list(range(596))


def test_a_pooled_fit_never_sees_any_pairs_rows_from_the_evaluated_pairs_valid_or_test_period(
    embedded_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    ibm, goog, gspc = (_member(embedded_store, s, settings) for s in ("IBM", "GOOG", "GSPC"))
    others = [goog, gspc]
    # every feature row of the other pairs, keyed by its bytes -> the time its label became known
    label_end: dict[bytes, pd.Timestamp] = {}
    for m in (*others, ibm):
        for i in range(len(m.returns) - m.horizon):
            label_end[m.x[i].tobytes()] = m.ts.iloc[i + m.horizon]
    fits: list[dict[str, Any]] = []
    real = models.fit_ensemble

    def spy(
        x: np.ndarray, codes: np.ndarray, fit: slice, valid: slice, parts: dict, *a: Any, **k: Any
    ) -> Any:
        fits.append({"fit": x[fit].copy(), "valid": x[valid].copy(), "test": x[parts["test"]].copy()})
        return real(x, codes, fit, valid, parts, *a, **k)

    monkeypatch.setattr(models, "fit_ensemble", spy)
    pooled, info = pooled_walk_forward(ibm, others, 4, settings)
    bounds = fold_bounds(len(ibm.returns), 4, ibm.horizon, settings.min_rows_per_split)
    assert len(pooled) == len(fits) == 4
    for (start, stop), fit, meta, sp in zip(bounds, fits, info, pooled, strict=True):
        h = ibm.horizon
        n_fit = int((start - 2 * h) * 0.75)
        valid_start = ibm.ts.iloc[n_fit + h]
        ends = [label_end[row.tobytes()] for row in fit["fit"]]
        # every fit row, whichever pair it came from, had its label closed before the valid rows begin
        assert max(ends) <= ibm.ts.iloc[n_fit - 1 + h] < valid_start < ibm.ts.iloc[start]
        assert meta["n_fit_own"] == n_fit and len(ends) == n_fit + meta["n_fit_other"]
        # calibration and weights on the evaluated pair's own valid rows; its own test rows scored
        np.testing.assert_array_equal(fit["valid"], ibm.x[n_fit + h : start - h])
        np.testing.assert_array_equal(fit["test"], ibm.x[start:stop])
        assert sp.rows.tolist() == list(range(start, stop))
    # the later folds learn from more of the other pairs' (earlier) rows
    assert info[0]["n_fit_other"] > 0 and info[-1]["n_fit_other"] >= info[0]["n_fit_other"]
