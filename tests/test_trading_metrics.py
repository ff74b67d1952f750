from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ml.src.training.labels import CLASS_CODES, forward_returns
from ml.src.training.stats import information_coefficient
from ml.src.training.trading_metrics import (
    annualised_sharpe,
    fit_confidence_threshold,
    max_drawdown,
    trading_metrics,
)
from tests.factories import sample_csv

BEAR, NEUT, BULL = CLASS_CODES["BEARISH"], CLASS_CODES["NEUTRAL"], CLASS_CODES["BULLISH"]
GSPC_D1 = sample_csv("GSPC", "d1")  # shipped real bars (ml/sample_data)


# --- information coefficient -------------------------------------------------------------------------------


def test_ic_monotonic_reversed_and_constant():
    s = np.array([-0.5, -0.1, 0.2, 0.4, 0.9])
    r = np.array([-0.03, 0.0, 0.001, 0.01, 0.2])  # monotonic but not linear: rank correlation is exactly 1
    assert information_coefficient(s, r) == pytest.approx(1.0)
    assert information_coefficient(s, r[::-1]) == pytest.approx(-1.0)
    assert information_coefficient(np.full(5, 0.3), r) is None
    assert information_coefficient(s, np.zeros(5)) is None


def test_ic_drops_non_finite_pairs_and_needs_three():
    s = np.array([1.0, np.nan, 2.0, 3.0, 4.0])
    r = np.array([0.1, 0.5, 0.2, np.inf, 0.3])
    assert information_coefficient(s, r) == pytest.approx(1.0)  # pairs (1,.1), (2,.2), (4,.3) remain
    assert information_coefficient(s[:3], r[:3]) is None  # only 2 finite pairs
    assert information_coefficient(np.array([]), np.array([])) is None


def test_ic_matches_scipy_spearman_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(-3, 4, 50).astype(float)
    r = s * 0.01 + rng.normal(0, 0.02, 50)
    assert information_coefficient(s, r) == pytest.approx(spearmanr(s, r).statistic, abs=1e-12)


# --- trading metrics ---------------------------------------------------------------------------------------


def test_non_overlapping_schedule_gross_net_and_win_rate():
    # h=2: only rows 0, 2, 4 are decisions; the odd rows carry absurd returns that must never be counted.
    preds = np.array([BULL, BEAR, NEUT, BULL, BEAR, BULL])
    r = np.array([0.02, 9.0, 0.5, 9.0, -0.01, 9.0])
    rep = trading_metrics(preds, r, horizon=2, bars_per_year=252)  # 5 + 5 bps a side -> 0.002 round trip
    assert rep.gross.total_return == pytest.approx(1.02 * 1.01 - 1, abs=1e-15)
    assert rep.net.total_return == pytest.approx((1.02 - 0.002) * (1.01 - 0.002) - 1, abs=1e-15)
    for v in (rep.gross, rep.net):
        assert v.n_periods == 3 and v.n_trades == 2
        assert v.win_rate == 1.0
        assert v.exposure == pytest.approx(2 / 3)
        assert v.max_drawdown == 0.0
    assert rep.n_skipped == 0
    # Buy-and-hold on the same rows: +2%, +50%, -1%, paying the round trip every period when net.
    assert rep.buy_and_hold.gross.total_return == pytest.approx(1.02 * 1.5 * 0.99 - 1, abs=1e-15)
    # buy-and-hold opens once and closes once: one way (0.001) in the first period, one way in the last
    assert rep.buy_and_hold.net.total_return == pytest.approx(
        (1.02 - 0.001) * 1.5 * (0.99 - 0.001) - 1, abs=1e-15
    )
    assert rep.buy_and_hold.gross.n_trades == 3 and rep.buy_and_hold.gross.exposure == 1.0
    assert rep.buy_and_hold.gross.win_rate == pytest.approx(2 / 3)


def test_costs_turn_a_small_winner_into_a_loser():
    rep = trading_metrics(np.array([BULL]), np.array([0.001]), horizon=1, bars_per_year=252)
    assert rep.gross.win_rate == 1.0 and rep.net.win_rate == 0.0
    assert rep.net.total_return == pytest.approx(0.001 - 0.002)
    zero_cost = trading_metrics(
        np.array([BULL]), np.array([0.001]), horizon=1, bars_per_year=252, fee_bps=0, slippage_bps=0
    )
    assert zero_cost.net == zero_cost.gross


def test_allow_short_false_makes_shorts_flat():
    preds = np.array([BEAR, BEAR, BULL])
    r = np.array([-0.05, 0.03, 0.01])
    short = trading_metrics(preds, r, horizon=1, bars_per_year=252)
    assert short.gross.total_return == pytest.approx(1.05 * 0.97 * 1.01 - 1)
    assert short.gross.n_trades == 3 and short.gross.win_rate == pytest.approx(2 / 3)
    long_only = trading_metrics(preds, r, horizon=1, bars_per_year=252, allow_short=False)
    assert long_only.gross.total_return == pytest.approx(0.01)
    assert long_only.net.total_return == pytest.approx(0.01 - 0.002)
    assert long_only.gross.n_trades == 1 and long_only.gross.exposure == pytest.approx(1 / 3)
    assert long_only.allow_short is False


def test_max_drawdown_on_known_equity_path():
    # Equity 1 -> 1.1 -> 0.88 -> 0.924 -> 0.462 -> 0.924: worst fall is from the 1.1 peak to 0.462.
    r = np.array([0.1, -0.2, 0.05, -0.5, 1.0])
    assert max_drawdown(r) == pytest.approx(1 - 0.462 / 1.1)
    rep = trading_metrics(np.full(5, BULL), r, horizon=1, bars_per_year=252, fee_bps=0, slippage_bps=0)
    assert rep.gross.max_drawdown == pytest.approx(1 - 0.462 / 1.1)
    assert max_drawdown(np.array([0.01, 0.02, 0.0])) == 0.0
    assert max_drawdown(np.array([-0.1])) == pytest.approx(0.1)  # a fall from the starting 1.0 counts
    assert max_drawdown(np.array([])) == 0.0


def test_sharpe_annualisation_uses_periods_per_year():
    # h=5 rows per period: period rows 0, 5, 10, 15 carry these returns; flat periods count as zeros.
    per = np.array([0.01, -0.02, 0.03, 0.0])
    r = np.full(20, 0.5)
    r[::5] = per
    preds = np.full(20, BULL)
    preds[15] = NEUT
    rep = trading_metrics(preds, r, horizon=5, bars_per_year=252, fee_bps=0, slippage_bps=0)
    expected = per.mean() / per.std(ddof=1) * math.sqrt(252 / 5)
    assert rep.gross.sharpe == pytest.approx(expected, rel=1e-12)
    assert rep.gross.n_periods == 4 and rep.gross.n_trades == 3
    assert annualised_sharpe(per, 1.0) == pytest.approx(per.mean() / per.std(ddof=1), rel=1e-12)
    assert annualised_sharpe(np.array([0.01]), 252) is None  # fewer than 2 periods
    assert annualised_sharpe(np.full(4, 0.1), 252) is None  # zero std


def test_non_finite_returns_are_skipped_as_decisions():
    preds = np.full(5, BULL)
    r = np.array([0.01, np.nan, 0.02, np.inf, np.nan])
    rep = trading_metrics(preds, r, horizon=1, bars_per_year=252)
    assert rep.gross.n_periods == 2 and rep.n_skipped == 3
    assert rep.gross.total_return == pytest.approx(1.01 * 1.02 - 1)
    # h=2: rows 0, 2, 4 scheduled; row 4 is unknown, the grid is not shifted onto row 3.
    rep2 = trading_metrics(preds, r, horizon=2, bars_per_year=252)
    assert rep2.gross.n_periods == 2 and rep2.n_skipped == 1


def test_all_flat_and_empty_are_json_safe():
    rep = trading_metrics(np.full(4, NEUT), np.array([0.01, -0.01, 0.02, 0.0]), horizon=1, bars_per_year=252)
    assert rep.gross.n_trades == 0 and rep.gross.win_rate is None and rep.gross.sharpe is None
    assert rep.gross.total_return == 0.0 and rep.net.total_return == 0.0 and rep.gross.exposure == 0.0
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d) == {
        "gross",
        "net",
        "buy_and_hold",
        "fee_bps",
        "slippage_bps",
        "allow_short",
        "horizon",
        "bars_per_year",
        "n_skipped",
    }
    assert set(d["buy_and_hold"]) == {"gross", "net"}
    assert d["gross"]["win_rate"] is None and d["fee_bps"] == 5.0 and d["horizon"] == 1

    empty = trading_metrics(np.array([], dtype=int), np.array([]), horizon=3, bars_per_year=252)
    assert empty.gross.n_periods == 0 and empty.gross.exposure is None
    json.dumps(empty.to_dict(), allow_nan=False)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="lengths"):
        trading_metrics(np.array([BULL]), np.array([0.1, 0.2]), horizon=1, bars_per_year=252)
    with pytest.raises(ValueError, match="class codes"):
        trading_metrics(np.array([-1]), np.array([0.1]), horizon=1, bars_per_year=252)
    with pytest.raises(ValueError, match="horizon"):
        trading_metrics(np.array([BULL]), np.array([0.1]), horizon=0, bars_per_year=252)
    with pytest.raises(ValueError, match="bars_per_year"):
        trading_metrics(np.array([BULL]), np.array([0.1]), horizon=1, bars_per_year=0)


def test_always_bullish_on_real_index_bars_equals_buy_and_hold_and_chained_closes():
    assert GSPC_D1.is_file(), f"missing real data file {GSPC_D1}"
    close = pd.read_csv(GSPC_D1)["close"].to_numpy(dtype="float64")
    h = 5
    assert close.size > 1000 and np.isfinite(close).all()
    r = forward_returns(close, h)
    rep = trading_metrics(np.full(close.size, BULL), r, horizon=h, bars_per_year=252)

    assert rep.gross.total_return == rep.buy_and_hold.gross.total_return
    assert rep.net.total_return == rep.buy_and_hold.net.total_return

    starts = np.arange(0, close.size - h, h)  # t = 0, 5, 10, ... while close[t + 5] exists
    chained = float(np.prod(close[starts + h] / close[starts]) - 1.0)
    assert rep.gross.n_periods == starts.size and rep.gross.n_trades == starts.size
    # Grid rows in the unknown last-h tail are skipped, not scored.
    assert rep.n_skipped == len(range(0, close.size, h)) - starts.size
    assert rep.gross.total_return == pytest.approx(chained, rel=1e-9)
    # The chain telescopes: it is the last scheduled exit close over the first close.
    assert chained == pytest.approx(close[starts[-1] + h] / close[0] - 1.0, rel=1e-9)
    assert rep.net.total_return < rep.gross.total_return
    assert rep.gross.exposure == 1.0 and 0.0 < rep.gross.max_drawdown < 1.0


def test_costs_follow_turnover_not_periods() -> None:
    # long, long, short (h=1): one entry, one flip (exit + entry), one final exit = 4 one-way costs in all
    rep = trading_metrics(np.array([2, 2, 0]), np.array([0.01, 0.01, -0.01]), horizon=1, bars_per_year=252)
    one_way = 0.001
    expected = (1.01 - one_way) * (1.01 - one_way) * (1.01 - 2 * one_way) - 1
    assert rep.net.total_return == pytest.approx(expected, abs=1e-15)
    assert rep.gross.total_return == pytest.approx(1.01**3 - 1, abs=1e-15)


# --- confidence threshold ------------------------------------------------------------------------------------


def test_threshold_flattens_rows_below_it():
    codes = np.array([BULL, BEAR, BULL, BEAR])
    r = np.array([0.01, 0.02, -0.01, -0.03])
    score = np.array([0.5, -0.1, 0.05, -0.4])
    t = trading_metrics(
        codes, r, horizon=1, bars_per_year=252, fee_bps=0, slippage_bps=0, score=score, threshold=0.3
    )
    # rows 1 and 2 are below the threshold: flat; rows 0 and 3 trade long +1% and short +3%
    assert t.gross.n_trades == 2 and t.gross.total_return == pytest.approx(1.01 * 1.03 - 1)
    plain = trading_metrics(codes, r, horizon=1, bars_per_year=252, fee_bps=0, slippage_bps=0)
    assert plain.gross.n_trades == 4


def test_threshold_is_fitted_on_its_rows_and_can_say_never():
    # hand-made: only confident calls are right; small ones lose
    score = np.array([0.9, 0.1, -0.8, -0.1, 0.7, 0.05, -0.9, -0.2] * 5)
    codes = np.where(score > 0, BULL, BEAR)
    r = np.where(np.abs(score) > 0.5, np.sign(score) * 0.02, -np.sign(score) * 0.02)
    tau, q = fit_confidence_threshold(codes, score, r, horizon=1, fee_bps=0, slippage_bps=0)
    assert tau == pytest.approx(np.quantile(np.abs(score), q)) and 0.2 < tau <= 0.7
    # every call right: trade everything (ties of mean return go to the higher threshold, so compare strictly)
    r_all = np.sign(score) * 0.02 * (1 + np.abs(score))
    assert fit_confidence_threshold(codes, score, r_all, horizon=1, fee_bps=0, slippage_bps=0) == (0.0, 0.0)
    # no call pays its costs: never trade
    tau, q = fit_confidence_threshold(codes, score, -r_all * 0.01, horizon=1, fee_bps=5, slippage_bps=5)
    assert math.isinf(tau) and q is None
