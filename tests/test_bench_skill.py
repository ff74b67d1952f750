"""The numbers docs/benchmarks.md section 6 reports (scripts/bench_quality.py --skill), pinned on a hand-made
slice: the hit rate of directional calls against the realised sign, the log-loss gain over the prior, and the
paired differences over pairs with their standard errors and wins."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from ml.src.training.scoring import SlicePredictions
from tests.factories import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_quality as bq


def _slice() -> SlicePredictions:
    # 6 rows: calls BULL, BULL, NEUTRAL, BEAR, BEAR, BULL; realised returns +, -, +, -, 0, +
    returns = np.array([0.02, -0.01, 0.03, -0.02, 0.0, 0.01])
    codes = np.array([2, 0, 2, 0, 1, 1])
    p = np.array(
        [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]
    )
    prior = np.tile([1 / 3, 1 / 3, 1 / 3], (6, 1))
    probas = {n: p for n in ("ensemble", "equal_weight", "rf", "gb")} | {"prior": prior}
    calls = np.array([2, 2, 1, 0, 0, 2])
    preds = {n: calls for n in ("ensemble", "equal_weight", "rf", "gb")} | {
        "prior": np.ones(6, dtype=int),
        "majority": np.ones(6, dtype=int),
        "persistence": np.ones(6, dtype=int),
    }
    return SlicePredictions(np.arange(6), codes, returns, probas, preds)


def test_label_free_reading_of_a_slice() -> None:
    out = bq.label_free(_slice(), horizon=1)
    e = out["ensemble"]
    # directional calls on rows that moved: rows 0, 1, 3, 5 (row 4's return is 0) -> right on 0, 3, 5
    assert (e["n_calls"], e["hit_sign"]) == (4, 0.75)
    ll = -np.mean(np.log([0.5, 0.2, 0.3, 0.5, 0.3, 0.3]))
    assert e["log_loss"] == pytest.approx(ll, rel=1e-12)
    assert e["ll_gain"] == pytest.approx(math.log(3) - ll, rel=1e-12)
    assert out["prior"]["log_loss"] == pytest.approx(math.log(3), rel=1e-12)


def test_skill_aggregate_pairs_variants_pair_by_pair() -> None:
    def pair(ic: float, hit: float, gain: float, eq_ic: float) -> dict:
        cell = {"ic": ic, "hit_sign": hit, "ll_gain": gain}
        return {
            "ok": True,
            "pooled": {"ensemble": cell, "equal_weight": {**cell, "ic": eq_ic}},
            "share_drift": 0.1,
        }

    results = {
        "baseline": {"pairs": {"A/d1": pair(0.02, 0.50, 0.01, 0.02), "B/d1": pair(0.04, 0.52, 0.02, 0.03)}},
        "variant": {"pairs": {"A/d1": pair(0.03, 0.50, 0.00, 0.03), "B/d1": pair(0.07, 0.51, 0.02, 0.07)}},
    }
    skill = bq.aggregate_skill(results, "baseline")
    assert skill["baseline"]["ensemble.ic"]["mean"] == pytest.approx(0.03)
    assert skill["baseline"]["ensemble.ic"]["se"] == pytest.approx(0.01)  # std 0.0141 / sqrt 2
    d = skill["variant"]["minus_baseline.ic"]
    assert (d["mean"], d["se"], d["n"], d["wins"]) == (pytest.approx(0.02), pytest.approx(0.01), 2, 2)
    assert skill["variant"]["minus_baseline.hit_sign"]["wins"] == 0
    assert skill["baseline"]["ens_minus_equal.ic"]["mean"] == pytest.approx(0.005)
    table = bq.skill_markdown(skill)
    assert "| variant | 2 | +0.0500 ± 0.0200 |" in table and "+0.0200 ± 0.0100 (2/2)" in table


def _fold(codes: np.ndarray, pred: np.ndarray, start: int) -> SlicePredictions:
    n = len(codes)
    onehot = np.full((n, 3), 0.1)
    onehot[np.arange(n), pred] = 0.8
    neutral = np.ones(n, dtype=int)
    return SlicePredictions(
        np.arange(start, start + n),
        codes,
        np.where(codes == 2, 0.01, np.where(codes == 0, -0.01, 0.0)),
        {"ensemble": onehot, "prior": np.tile([1 / 3, 1 / 3, 1 / 3], (n, 1))},
        {"ensemble": pred, "majority": neutral, "persistence": neutral, "prior": neutral},
    )


def test_nested_selection_chooses_each_fold_on_the_earlier_folds_only() -> None:
    import bench_pooled_selection as bps

    from config.settings import Settings

    codes = np.tile([0, 1, 2], 20)  # 60 rows per fold, every class
    right, wrong = codes, (codes + 1) % 3
    # fold 0: pooled right, local wrong; fold 1: the reverse; fold 2: both right
    local = [_fold(codes, wrong, 0), _fold(codes, right, 60), _fold(codes, right, 120)]
    pooled = [_fold(codes, right, 0), _fold(codes, wrong, 60), _fold(codes, right, 120)]
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    sel = bps.nested_selection(local, pooled, horizon=1, settings=settings)
    # fold 1 is chosen on fold 0 alone (pooled much better there), though pooled is wrong on fold 1 itself;
    # fold 2 on folds 0 and 1, where the two are level: local, the incumbent
    assert sel.folds == [1, 2] and sel.chosen_pooled == [True, False]
    assert sel.selected[0] is pooled[1] and sel.selected[1] is local[2]
    # a fold that could not be fitted is neither chosen for nor evidence
    sel = bps.nested_selection([local[0], None, local[2]], [pooled[0], pooled[1], pooled[2]], 1, settings)
    assert sel.folds == [2] and sel.chosen_pooled == [True]
