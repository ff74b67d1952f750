"""The series a run records for the report agree with the numbers it reports (same schedule, same costs)."""

from __future__ import annotations

import numpy as np
import pytest

from config.settings import Settings
from ml.src.features.technical_indicators import FEATURE_COLUMNS
from ml.src.training.labels import fixed_thresholds, forward_returns, label_codes
from ml.src.training.report_data import equity_curves, feature_importance, reliability
from ml.src.training.trading_metrics import trading_metrics
from tests.factories import fit_sample_pair, sample_bars


@pytest.mark.parametrize("allow_short", [True, False])
@pytest.mark.parametrize(("symbol", "tf", "h"), [("GSPC", "d1", 5), ("IBM", "w1", 4)])
def test_equity_curve_ends_at_the_trading_reads_net_returns(
    symbol: str, tf: str, h: int, allow_short: bool
) -> None:
    bars = sample_bars(symbol, tf, last=400)
    returns = forward_returns(bars["close"], h)
    # calls from the real bars themselves: the label of the last fully known h-bar return (persistence)
    known = label_codes(np.concatenate([np.full(h, np.nan), returns[:-h]]), fixed_thresholds(0.01))
    calls = np.where(known < 0, 1, known)
    curve = equity_curves(
        calls, returns, bars["ts"], horizon=h, fee_bps=5, slippage_bps=5, allow_short=allow_short
    )
    read = trading_metrics(
        calls, returns, horizon=h, bars_per_year=252, fee_bps=5, slippage_bps=5, allow_short=allow_short
    )
    assert len(curve["ts"]) == read.net.n_periods
    assert curve["strategy_net"][-1] - 1 == pytest.approx(read.net.total_return, abs=2e-6)
    assert curve["buy_and_hold_net"][-1] - 1 == pytest.approx(read.buy_and_hold.net.total_return, abs=2e-6)


def test_reliability_bins_count_every_row_once_per_class() -> None:
    bars = sample_bars("GOOG", "d1", last=300)
    returns = forward_returns(bars["close"], 5)[:-5]
    codes = label_codes(returns, fixed_thresholds(0.009))
    # probabilities from the real returns' recent class mix (a causal frequency forecast)
    onehot = np.eye(3)[codes]
    proba = np.array([onehot[max(0, i - 20) : i + 1].mean(axis=0) for i in range(len(codes))])
    rel = reliability(proba, codes)
    for k, name in enumerate(("BEARISH", "NEUTRAL", "BULLISH")):
        assert sum(rel[name]["count"]) == len(codes)
        observed = np.average(rel[name]["observed"], weights=rel[name]["count"])
        assert observed == pytest.approx((codes == k).mean(), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("member", "backend"), [("rf", "lightgbm"), ("gb", "sklearn_gb")])
def test_member_importance_is_scikit_learns_own(embedded_store, member: str, backend: str) -> None:
    # the report reads the forest's trees directly (cheaper than its property); the numbers must not move,
    # and scikit-learn's gradient boosting (ML_GB_BACKEND=sklearn_gb) keeps its own property
    _, fit = fit_sample_pair(embedded_store, "GOOG", "d1", Settings(_env_file=None, gb_backend=backend))
    model = fit.models[member]
    got = feature_importance({member: model}, {member: 1.0}, FEATURE_COLUMNS, top=len(FEATURE_COLUMNS))
    expected = np.asarray(model.feature_importances_)
    assert [name for name, _ in got["top"]] == [FEATURE_COLUMNS[i] for i in np.argsort(-expected)]
    assert [v for _, v in got["top"]] == pytest.approx(sorted(expected, reverse=True), abs=1e-6)
