from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.src.training.labels import (
    CLASS_CODES,
    ex_ante_scale,
    fixed_thresholds,
    forward_returns,
    label_codes,
    label_names,
    quantile_thresholds,
    thresholds_for,
    vol_thresholds,
)
from ml.src.training.splits import SplitError, min_usable_rows, purged_split
from tests.factories import ml_test_bars


def test_forward_returns_pin_values_and_unknown_tail():
    r = forward_returns(pd.Series([100.0, 101.0, 99.0, 102.0]), horizon=2)
    assert r[0] == pytest.approx(99.0 / 100.0 - 1)
    assert r[1] == pytest.approx(102.0 / 101.0 - 1)
    assert np.isnan(r[2:]).all()


def test_labels_at_the_threshold_are_neutral():
    thr = fixed_thresholds(0.01)
    codes = label_codes(np.array([0.0100001, 0.01, -0.01, -0.0100001, 0.0, np.nan]), thr)
    assert label_names(codes) == ["BULLISH", "NEUTRAL", "NEUTRAL", "BEARISH", "NEUTRAL", None]


def test_quantile_thresholds_use_only_the_given_returns():
    train = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, np.nan])
    thr = quantile_thresholds(train)
    assert thr.mode == "quantile"
    assert thr.lower == pytest.approx(np.quantile(train[:-1], 1 / 3))
    assert thr.upper == pytest.approx(np.quantile(train[:-1], 2 / 3))
    codes = label_codes(train[:-1], thr)
    assert np.bincount(codes, minlength=3).tolist() == [2, 3, 2]  # at a threshold is NEUTRAL
    assert CLASS_CODES == {"BEARISH": 0, "NEUTRAL": 1, "BULLISH": 2}


def test_purged_split_boundaries():
    s = purged_split(110, purge=5, train_fraction=0.6, valid_fraction=0.2)
    # 100 usable rows -> 60 / 20 / 20, with 5 rows dropped at each boundary
    assert (s.train, s.valid, s.test) == (slice(0, 60), slice(65, 85), slice(90, 110))
    assert s.valid.start - s.train.stop == 5 and s.test.start - s.valid.stop == 5
    assert (s.n_train, s.n_valid, s.n_test) == (60, 20, 20)


def test_purge_keeps_every_train_label_out_of_valid():
    h = 3
    s = purged_split(200, purge=h)
    # the label of the last train row t looks at closes up to t + h: all before the first valid row
    assert (s.train.stop - 1) + h < s.valid.start
    assert (s.valid.stop - 1) + h < s.test.start


def test_split_boundaries_are_timestamps():
    ts = pd.Series(pd.date_range("2024-01-01", periods=110, freq="D", tz="UTC"))
    b = purged_split(110, purge=5).boundaries(ts)
    assert b["train_start"] == "2024-01-01T00:00:00+00:00"
    assert b["train_end"] == ts.iloc[59].isoformat()
    assert b["valid_start"] == ts.iloc[65].isoformat()
    assert b["test_end"] == ts.iloc[109].isoformat()
    assert b["purge_bars"] == 5


def test_split_with_too_few_rows_is_a_clear_error():
    with pytest.raises(SplitError, match="need at least 30 rows per split"):
        purged_split(60, purge=5, min_rows=30)


def test_vol_thresholds_are_k_standard_deviations_of_the_training_returns():
    train = np.array([-0.02, -0.01, 0.0, 0.01, 0.02, np.nan])
    thr = vol_thresholds(train, k=0.5)
    sd = np.std([-0.02, -0.01, 0.0, 0.01, 0.02], ddof=1)  # 0.0158...
    assert (thr.lower, thr.upper, thr.mode) == (pytest.approx(-0.5 * sd), pytest.approx(0.5 * sd), "vol")
    assert thr.to_dict() == {"lower": -0.5 * sd, "upper": 0.5 * sd, "mode": "vol", "k": 0.5, "scale": sd}
    assert label_names(label_codes(np.array([-0.01, -0.005, 0.0079, 0.0080]), thr)) == [
        "BEARISH",
        "NEUTRAL",
        "NEUTRAL",
        "BULLISH",
    ]
    with pytest.raises(ValueError, match="no spread"):
        vol_thresholds(np.zeros(10), k=0.5)


def test_threshold_modes_dispatch_and_look_only_at_the_training_returns():
    train = np.array([-0.03, -0.01, 0.0, 0.005, 0.02, 0.04])
    assert thresholds_for("fixed", train, 0.009).to_dict() == {
        "lower": -0.009,
        "upper": 0.009,
        "mode": "fixed",
    }
    assert thresholds_for("quantile", train, 0.009) == quantile_thresholds(train)
    assert thresholds_for("vol", train, 0.009, k=0.7) == vol_thresholds(train, 0.7)
    with pytest.raises(ValueError, match="unknown threshold mode"):
        thresholds_for("median", train, 0.009)


def test_vol_labels_make_class_shares_comparable_across_symbols_and_timeframes():
    """Fixed thresholds give a quiet index and a volatile stock, m15 and w1, very different NEUTRAL shares;
    k x sigma gives them similar ones (real bars)."""
    from config.settings import DEFAULT_TIMEFRAMES

    fixed_shares, vol_shares = [], []
    for symbol, tf in (("SPY", "m15"), ("TSLA", "h1"), ("GSPC", "d1"), ("NVDA", "w1")):
        h = DEFAULT_TIMEFRAMES[tf].horizon_bars
        r = forward_returns(ml_test_bars(symbol, tf, last=800)["close"], h)[:-h]
        train = r[:480]
        for thr, out in (
            (fixed_thresholds(DEFAULT_TIMEFRAMES[tf].threshold), fixed_shares),
            (vol_thresholds(train, 0.5), vol_shares),
        ):
            out.append(float((label_codes(train, thr) == CLASS_CODES["NEUTRAL"]).mean()))
    assert max(fixed_shares) - min(fixed_shares) > 0.3
    assert max(vol_shares) - min(vol_shares) < 0.15


def test_min_usable_rows_is_the_smallest_split_with_min_rows_everywhere():
    assert min_usable_rows(0.6, 0.2, 30) == 150
    u = min_usable_rows(0.7, 0.15, 30)
    assert purged_split(u, purge=0, train_fraction=0.7, valid_fraction=0.15, min_rows=30)
    with pytest.raises(SplitError):
        purged_split(u - 1, purge=0, train_fraction=0.7, valid_fraction=0.15, min_rows=30)


# --- ex_ante_vol (issue 20): thresholds at each bar from that bar's own past volatility ---------------------


def _ewma_by_hand(close: np.ndarray, i: int) -> float:
    """An independent reading of the estimate at bar i: the weighted mean square of the 100 returns up to bar i."""
    r = np.diff(np.log(close[: i + 1]))[-100:][::-1]  # lag 0 first
    w = (1 - 2 / 21) ** np.arange(100)
    return float(np.sqrt(np.sum(w * r * r) / w.sum()))


def test_ex_ante_scale_at_a_bar_is_its_past_returns_ewma_times_sqrt_h() -> None:
    close = ml_test_bars("SPY", "d1", last=600)["close"].to_numpy()
    scale = ex_ante_scale(close, 5)
    for i in (100, 101, 333, 599):
        assert scale[i] == pytest.approx(_ewma_by_hand(close, i) * np.sqrt(5), rel=1e-12)
    assert np.isnan(scale[:100]).all()  # fewer than 100 past returns: unknown, so unlabelled
    with pytest.raises(ValueError, match="horizon"):
        ex_ante_scale(close, 0)


def test_ex_ante_thresholds_use_only_past_returns_and_labels_are_prefix_invariant() -> None:
    bars = ml_test_bars("AAPL", "d1", first=1500)  # contains the -51.6 % day of 2000-09-29
    close = bars["close"].to_numpy()
    h = 5
    full_scale = ex_ante_scale(close, h)
    thr = thresholds_for("ex_ante_vol", forward_returns(close, h), 0.005, k=0.5)
    assert thr.to_dict() == {
        "lower": -0.5,
        "upper": 0.5,
        "mode": "ex_ante_vol",
        "k": 0.5,
        "unit": "ex_ante_horizon_vol",
    }
    full_codes = label_codes(forward_returns(close, h), thr, full_scale)
    crash = int(np.nanargmax(np.abs(np.diff(np.log(close))))) + 1
    for k in (101, 400, crash - 1, crash, crash + 1, 1499):
        # the scale of bar k-1 is the same whether or not later bars exist...
        assert np.array_equal(ex_ante_scale(close[:k], h), full_scale[:k], equal_nan=True)
        # ... and however those later bars move (the crash itself replaced by a flat day)
        moved = close.copy()
        moved[k:] = moved[k - 1]
        assert np.array_equal(ex_ante_scale(moved, h)[:k], full_scale[:k], equal_nan=True)
        # labels whose h-bar future lies inside the prefix never change when more bars arrive
        pre = label_codes(forward_returns(close[:k], h), thr, ex_ante_scale(close[:k], h))
        assert np.array_equal(pre[: k - h], full_codes[: k - h])
        assert (pre[k - h :] == -1).all()
    # the bar before the crash was labelled with the calm volatility known then, not the crash's
    assert full_scale[crash - 1] < full_scale[crash] / 2


def test_ex_ante_labels_pin_the_rule_on_a_hand_made_row() -> None:
    thr = thresholds_for("ex_ante_vol", np.array([]), 0.005, k=0.5)
    r = np.array([0.0101, 0.0099, -0.0101, 0.0, 0.02, 0.0, np.nan, 0.01])
    scale = np.array([0.02, 0.02, 0.02, 0.0, 0.0, np.nan, 0.02, 0.02])
    assert label_names(label_codes(r, thr, scale)) == [
        "BULLISH",
        "NEUTRAL",
        "BEARISH",
        "NEUTRAL",
        "BULLISH",
        None,
        None,
        "NEUTRAL",
    ]
    assert thr.at_bar(0.02).lower == pytest.approx(-0.01) and thr.at_bar(0.02).upper == pytest.approx(0.01)
    with pytest.raises(ValueError, match="scale"):
        label_codes(r, thr)


def test_ex_ante_labels_keep_class_shares_stable_across_volatility_regimes() -> None:
    # SPY d1 2004..2013: the calm years, 2008's crisis, the calm again. Share of moves (BULLISH + BEARISH) per year
    bars = ml_test_bars("SPY", "d1")
    close, ts = bars["close"].to_numpy(), bars["ts"]
    h = 5
    r = forward_returns(close, h)
    years = ts.dt.year.to_numpy()
    train = (years >= 2004) & (years <= 2006)
    vol = label_codes(r, thresholds_for("vol", r[train], 0.005, k=0.5))
    ex = label_codes(r, thresholds_for("ex_ante_vol", r[train], 0.005, k=0.5), ex_ante_scale(close, h))

    def move_share(codes: np.ndarray) -> np.ndarray:
        return np.array([np.mean(codes[(years == y) & (codes >= 0)] != 1) for y in range(2004, 2014)])

    vol_shares, ex_shares = move_share(vol), move_share(ex)
    # training-slice thresholds: 60-65 % of the calm years' rows are moves, 77-78 % in 2008-09 (the labels
    # follow the regime); each bar's own ex-ante volatility keeps every year between 50 and 65 %
    assert vol_shares[:3].max() < 0.66 and vol_shares[4:6].min() > 0.77
    assert ex_shares.min() >= 0.5 and ex_shares.max() < 0.65
    assert ex_shares.std() == pytest.approx(0.037, abs=0.001) and vol_shares.std() == pytest.approx(
        0.062, abs=0.001
    )
