"""Contract tests for ml.src.features.technical_indicators on real bars.

Cases named ``sample/...`` use the bars the project ships (ml/sample_data); ``ML_TEST_DATA/...`` cases need what
only that folder has (intraday bars, AAPL's -51.6 % day, DIS's close-only flat bars) and skip without it (see
tests/factories.py). Features never read ``ts``, so the timeframe of a file matters only through its bars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib

from ml.src.features import technical_indicators as ti
from ml.src.features.technical_indicators import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    VOL_FEATURE_COLUMNS,
    WARMUP_BARS,
    add_technical_features,
    ewma_vol,
    feature_set,
)
from tests.factories import SAMPLE_DATA, ml_test_bars, ml_test_files, require_ml_test_data, sample_bars

SAMPLE_NAMES = sorted(f"sample/{p.stem}" for p in SAMPLE_DATA.glob("*.csv"))


def test_sample_data_is_present() -> None:
    # Shipped with the project: these cases never skip.
    assert len(SAMPLE_NAMES) == 8, f"ml/sample_data is incomplete: {SAMPLE_NAMES}"


# The contract the persistent feature cache relies on.
WINDOW_RTOL, WINDOW_ATOL = 1e-6, 1e-9


def bars(name: str, rows: slice | None = None) -> pd.DataFrame:
    """A fresh copy of (a slice of) ``sample/SYMBOL_TF`` or ``ML_TEST_DATA/SYMBOL_TF``, with a 0..n-1 index."""
    source, _, stem = name.partition("/")
    symbol, timeframe = stem.rsplit("_", 1)
    df = sample_bars(symbol, timeframe) if source == "sample" else ml_test_bars(symbol, timeframe)
    if rows is not None:
        df = df.iloc[rows]
    return df.reset_index(drop=True).copy()


def features(df: pd.DataFrame, vol: bool = False) -> np.ndarray:
    """The feature matrix; with `vol`, ML_VOL_FEATURES' set (FEATURE_COLUMNS + VOL_FEATURE_COLUMNS)."""
    columns = list(feature_set(vol).columns)
    return add_technical_features(df, vol_features=vol).loc[:, columns].to_numpy(dtype=np.float64)


VOL = pytest.mark.parametrize("vol", [False, True], ids=["base", "vol_features"])


def _crash_row(df: pd.DataFrame) -> int:
    """Row of the largest one-bar move (AAPL_d1: the -51.6 % day of 2000-09-29; IXIC_w1: -25.3 %, 2000-04-10)."""
    return int(np.nanargmax(np.abs(np.log(df["close"]).diff().to_numpy())))


# --- API and frame shape ------------------------------------------------------------------------------


def test_public_constants() -> None:
    assert len(FEATURE_COLUMNS) >= 40
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    assert isinstance(FEATURE_SET_VERSION, str) and 0 < len(FEATURE_SET_VERSION) <= 16
    assert isinstance(WARMUP_BARS, int) and 0 < WARMUP_BARS <= 200
    assert sorted(ti.__all__) == sorted(
        [
            "FEATURE_COLUMNS",
            "FEATURE_SET_VERSION",
            "VOL_FEATURE_COLUMNS",
            "WARMUP_BARS",
            "FeatureSet",
            "add_technical_features",
            "ewma_vol",
            "feature_set",
        ]
    )


def test_returns_new_frame_with_same_rows_index_and_appended_features() -> None:
    df = bars("sample/IBM_d1", slice(-1500, None))
    df.index = pd.RangeIndex(10_000, 10_000 + len(df), name="bar")  # a non-default index must survive
    original = df.copy(deep=True)

    out = add_technical_features(df)

    pd.testing.assert_frame_equal(df, original)  # input not mutated
    assert out is not df
    assert out.index.equals(df.index)
    assert list(out.columns) == [*df.columns, *FEATURE_COLUMNS]
    pd.testing.assert_frame_equal(out.loc[:, list(df.columns)], original)
    assert (out.loc[:, list(FEATURE_COLUMNS)].dtypes == np.float64).all()
    # Every feature is defined from WARMUP_BARS on, and the longest ones really need the whole warm-up: it is
    # the features' own memory, not a guess (the job fetches exactly this much history).
    feats = out.loc[:, list(FEATURE_COLUMNS)]
    assert feats.iloc[WARMUP_BARS:].notna().all().all()
    assert feats.iloc[:WARMUP_BARS].isna().any(axis=1).all()


def test_recomputing_on_an_output_frame_replaces_the_features() -> None:
    df = bars("sample/GSPC_d1", slice(-400, None))
    once = add_technical_features(df)
    twice = add_technical_features(once)
    pd.testing.assert_frame_equal(once, twice)


def test_short_inputs_do_not_fail() -> None:
    df = bars("sample/GOOG_w1")
    for n in (0, 1, 2, 30, WARMUP_BARS - 1):
        out = add_technical_features(df.iloc[:n])
        assert len(out) == n
        assert list(out.columns[-len(FEATURE_COLUMNS) :]) == list(FEATURE_COLUMNS)


def test_ts_is_not_used() -> None:
    df = bars("sample/IXIC_d1", slice(-600, None))
    shifted = df.assign(ts=df["ts"] + pd.Timedelta(days=3650, minutes=7))
    np.testing.assert_array_equal(features(df), features(shifted))


def test_rejects_unsorted_or_incomplete_bars() -> None:
    df = bars("sample/GSPC_d1", slice(-300, None))
    with pytest.raises(ValueError, match="sorted"):
        add_technical_features(df.iloc[::-1])
    with pytest.raises(ValueError, match="volume"):
        add_technical_features(df.drop(columns=["volume"]))


def test_hand_made_bars_pin_exact_values() -> None:
    df = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-02 14:30", periods=3, freq="D", tz="UTC"),
            "open": [100.0, 104.0, 110.0],
            "high": [101.0, 112.0, 110.0],
            "low": [99.0, 102.0, 110.0],
            "close": [100.0, 110.0, 110.0],  # bar 2 is flat: O=H=L=C
            "volume": [1_000, 0, 500],
        }
    )
    out = add_technical_features(df)
    assert out.loc[1, "ret_1"] == pytest.approx(np.log(1.1), rel=0, abs=1e-15)
    assert out.loc[1, "gap_1"] == pytest.approx(np.log(1.04), rel=0, abs=1e-15)
    assert out.loc[1, "body_1"] == pytest.approx(np.log(110.0 / 104.0), rel=0, abs=1e-15)
    assert out.loc[1, "clv"] == pytest.approx(0.8, rel=0, abs=1e-15)  # (110 - 102) / (112 - 102)
    assert out.loc[1, "upper_wick"] == pytest.approx(0.2, rel=0, abs=1e-15)
    assert out.loc[1, "hl_range"] == pytest.approx(np.log(112.0 / 102.0), rel=0, abs=1e-15)
    # A flat bar has no range: neutral location, no wicks, no NaN.
    flat = out.loc[2, ["clv", "upper_wick", "lower_wick", "hl_range", "ret_1"]]
    assert flat.tolist() == [0.5, 0.0, 0.0, 0.0, 0.0]
    assert np.isnan(out.loc[0, "ret_1"])


def test_constant_bars_give_exact_neutral_values() -> None:
    """Degenerate input (no price change, no volume) pins the guarded values: finite and neutral, not 0/0."""
    n = WARMUP_BARS + 60
    df = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-02 14:30", periods=n, freq="D", tz="UTC"),
            "open": 50.0,
            "high": 50.0,
            "low": 50.0,
            "close": 50.0,
            "volume": 0,
        }
    )
    feats = add_technical_features(df).loc[WARMUP_BARS:, list(FEATURE_COLUMNS)]
    assert np.isfinite(feats.to_numpy()).all()
    last = feats.iloc[-1]
    for name in ("rsi_14", "stoch_k", "stoch_d", "clv", "bb_pctb_20", "mfi_14", "ultosc"):
        assert last[name] == 0.5, name
    assert last["willr_14"] == -0.5
    assert last["vol_ratio_20"] == pytest.approx(np.log(2.0), rel=1e-15)
    for name in ("adx_14", "natr_14", "rv_20", "obv_slope_20", "cmf_20", "regime_strong_trend"):
        assert last[name] == 0.0, name


def test_vol_features_are_their_own_feature_set_with_their_own_cache_key() -> None:
    base, vol = feature_set(False), feature_set(True)
    assert (base.columns, base.version) == (FEATURE_COLUMNS, FEATURE_SET_VERSION)  # today's set, unchanged
    assert vol.columns == FEATURE_COLUMNS + VOL_FEATURE_COLUMNS and vol.version == "ta-v2+vol1"
    assert len(vol.version) <= 16 and vol.version != base.version
    df = bars("sample/IBM_d1", slice(-400, None))
    out = add_technical_features(df, vol_features=True)
    assert list(out.columns) == [*df.columns, *vol.columns]
    np.testing.assert_array_equal(features(df), features(df, True)[:, : len(FEATURE_COLUMNS)])


def test_hand_made_bars_pin_the_vol_features() -> None:
    # a steady 1 % a bar rise, every bar the same shape: every volatility estimate is a known number
    n = 200
    close = 100.0 * 1.01 ** np.arange(n)
    df = pd.DataFrame(
        {"open": close / 1.005, "high": close * 1.01, "low": close / 1.01, "close": close, "volume": 1000.0}
    )
    last = add_technical_features(df, vol_features=True).iloc[-1]
    r = np.log(1.01)
    for name in ("har_rv_1", "har_rv_5", "har_rv_22", "har_rv_66", "ewma_vol_20"):
        assert last[name] == pytest.approx(r, rel=1e-12), name
    assert last["har_ratio_5_66"] == pytest.approx(1.0, rel=1e-12)
    hl = np.log(1.01 * 1.01)
    assert last["parkinson_5"] == pytest.approx(hl / np.sqrt(4 * np.log(2.0)), rel=1e-12)
    gk = 0.5 * hl**2 - (2 * np.log(2.0) - 1) * np.log(1.005) ** 2
    assert last["garman_klass_5"] == pytest.approx(np.sqrt(gk), rel=1e-12)
    assert last["garman_klass_22"] == pytest.approx(np.sqrt(gk), rel=1e-12)
    assert last["vol_of_vol_22"] == 0.0  # the 5-bar volatility never changes
    assert np.isnan(ewma_vol(close)[99]) and np.isfinite(ewma_vol(close)[100])  # 100 returns, then defined


# --- causality and history-window invariance ------------------------------------------------------------

PREFIX_CASES = [
    ("sample/IBM_d1", slice(-1500, None)),
    ("sample/IXIC_w1", None),  # contains the -25.3 % week
    ("sample/IXIC_d1", slice(-1500, None)),  # zero-volume rows
    ("ML_TEST_DATA/AAPL_d1", slice(0, 1500)),  # contains the -51.6 % crash
    ("ML_TEST_DATA/SPY_h1", slice(-1500, None)),
    ("ML_TEST_DATA/MSFT_m15", slice(-1500, None)),
    ("ML_TEST_DATA/DIS_d1", slice(0, 1500)),  # close-only O=H=L=C bars
]


@VOL
@pytest.mark.parametrize(("name", "rows"), PREFIX_CASES, ids=lambda x: x if isinstance(x, str) else "")
def test_prefix_invariance_is_exact(name: str, rows: slice | None, vol: bool) -> None:
    df = bars(name, rows)
    full = features(df, vol)
    for k in (1, 50, WARMUP_BARS - 1, WARMUP_BARS, WARMUP_BARS + 1, 389, 777, len(df) - 1):
        prefix = features(df.iloc[:k], vol)
        assert np.array_equal(prefix, full[:k], equal_nan=True), f"{name}: first {k} rows differ"


CRASH_FILES = ("ML_TEST_DATA/AAPL_d1", "sample/IXIC_w1")


def _window_starts(df: pd.DataFrame, name: str) -> list[int]:
    n = len(df)
    starts = {1, 2, 37, 199, n // 3, n // 2, n - WARMUP_BARS - 1}
    if name in CRASH_FILES:  # histories that begin just before, at and just after the crash
        crash = _crash_row(df)
        starts |= {crash - WARMUP_BARS, crash - 20, crash - 1, crash, crash + 1, crash + 13}
    return sorted(s for s in starts if 0 < s < n - WARMUP_BARS)


WINDOW_CASES = [
    ("sample/IBM_d1", None),
    ("sample/IXIC_d1", None),  # zero-volume rows
    ("sample/IXIC_w1", None),  # the -25.3 % week
    ("sample/GSPC_w1", None),
    ("ML_TEST_DATA/AAPL_d1", None),  # prices from $0.12, the -51.6 % crash
    ("ML_TEST_DATA/SPY_h1", slice(-3000, None)),
    ("ML_TEST_DATA/MSFT_m15", slice(-3000, None)),
    ("ML_TEST_DATA/DIS_d1", slice(0, 3000)),  # close-only flat bars
]


@VOL
@pytest.mark.parametrize(("name", "rows"), WINDOW_CASES, ids=lambda x: x if isinstance(x, str) else "")
def test_window_invariance(name: str, rows: slice | None, vol: bool) -> None:
    """A row's features do not depend on where the fetched history starts, given WARMUP_BARS of it."""
    df = bars(name, rows)
    full = features(df, vol)
    for s in _window_starts(df, name):
        late = features(df.iloc[s:], vol)
        np.testing.assert_allclose(
            late[WARMUP_BARS:],
            full[s + WARMUP_BARS :],
            rtol=WINDOW_RTOL,
            atol=WINDOW_ATOL,
            err_msg=f"{name}: history starting at row {s}",
        )


@pytest.mark.parametrize("name", CRASH_FILES)
def test_window_residual_is_far_below_tolerance(name: str) -> None:
    """Margin check: the worst residual across starts is orders of magnitude inside the cache tolerance."""
    df = bars(name)
    full = features(df)
    worst = 0.0
    for s in _window_starts(df, name):
        late = features(df.iloc[s:])[WARMUP_BARS:]
        ref = full[s + WARMUP_BARS :]
        worst = max(worst, float(np.max(np.abs(late - ref) / (WINDOW_ATOL + WINDOW_RTOL * np.abs(ref)))))
    assert worst < 1e-2


# --- robustness and scale ------------------------------------------------------------------------------


def _finite_cases() -> list[tuple[str, slice | None]]:
    cases: list[tuple[str, slice | None]] = [(name, None) for name in SAMPLE_NAMES]
    extra = [f"ML_TEST_DATA/{name.removesuffix('.csv')}" for name in ml_test_files()]
    if not extra:
        return [*cases, ("ML_TEST_DATA", None)]  # one case that skips (or fails under CI) naming the folder
    cases += [(name, slice(-3000, None)) for name in extra]
    # Early history with close-only flat bars, and the AAPL crash, which the last 3000 rows miss.
    cases += [(f"ML_TEST_DATA/{s}_d1", slice(0, 3000)) for s in ("AAPL", "DIS", "MSFT", "PG")]
    return cases


@VOL
@pytest.mark.parametrize(("name", "rows"), _finite_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_finite_after_warmup(name: str, rows: slice | None, vol: bool) -> None:
    if name == "ML_TEST_DATA":
        require_ml_test_data()
    df = bars(name, rows)
    feats = features(df, vol)[WARMUP_BARS:]
    bad = ~np.isfinite(feats)
    bad_cols = sorted({feature_set(vol).columns[j] for j in np.nonzero(bad)[1]})
    assert not bad.any(), f"{name}: non-finite values in {bad_cols}"


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("sample/IXIC_d1", None),
        ("sample/IXIC_w1", None),
        ("ML_TEST_DATA/AAPL_d1", None),  # prices from $0.12, crash included
        ("ML_TEST_DATA/DIS_d1", slice(0, 3000)),  # flat bars
        ("ML_TEST_DATA/SPY_h1", slice(-3000, None)),
        ("ML_TEST_DATA/MSFT_m15", slice(-3000, None)),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
@VOL
def test_scale_free(name: str, rows: slice | None, vol: bool) -> None:
    df = bars(name, rows)
    scaled = df.copy()
    scaled[["open", "high", "low", "close"]] = scaled[["open", "high", "low", "close"]] * 7.3
    scaled["volume"] = scaled["volume"] * 11
    np.testing.assert_allclose(features(scaled, vol), features(df, vol), rtol=1e-7, atol=1e-9)


# --- agreement with TA-Lib -----------------------------------------------------------------------------


def test_finite_memory_smoothers_equal_talib_on_the_trailing_window() -> None:
    """RSI/ATR/EMA are TA-Lib's own recursions run over exactly the trailing taps (hence window-invariant)."""
    df = bars("sample/GSPC_d1")
    out = add_technical_features(df)
    h, lo, c = (df[col].to_numpy(dtype=np.float64) for col in ("high", "low", "close"))
    taps = ti._SMOOTH_TAPS
    for i in (WARMUP_BARS, 777, 2000, len(df) - 1):
        w = slice(i - taps, i + 1)
        assert out.loc[i, "rsi_14"] == pytest.approx(talib.RSI(c[w], 14)[-1] / 100.0, rel=1e-12)
        atr = talib.ATR(h[w], lo[w], c[w], 14)[-1]
        assert out.loc[i, "natr_14"] == pytest.approx(atr / c[i], rel=1e-12)
        ema = talib.EMA(c[i - taps + 1 : i + 1], 20)[-1]
        assert out.loc[i, "dist_ema_20"] == pytest.approx(np.log(c[i] / ema), rel=1e-9, abs=1e-15)


def test_close_to_full_history_talib() -> None:
    """Truncating the recursions' memory to fit WARMUP_BARS changes the indicators only negligibly (about 1e-3
    on 0..1 oscillators, against their natural spread of ~0.1)."""
    df = bars("sample/GSPC_d1")
    out = add_technical_features(df).iloc[WARMUP_BARS + 100 :]
    h, lo, c, v = (df[col].to_numpy(dtype=np.float64) for col in ("high", "low", "close", "volume"))
    tail = slice(WARMUP_BARS + 100, None)
    macd, signal, _ = talib.MACD(c, 12, 26, 9)
    stoch_k, stoch_d = talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
    np.testing.assert_allclose(out["rsi_14"], talib.RSI(c, 14)[tail] / 100.0, atol=1e-3)
    np.testing.assert_allclose(out["natr_14"], talib.NATR(h, lo, c, 14)[tail] / 100.0, rtol=2e-3)
    np.testing.assert_allclose(out["macd"], macd[tail] / c[tail], atol=1e-3)
    np.testing.assert_allclose(out["macd_signal"], signal[tail] / c[tail], atol=1e-3)
    np.testing.assert_allclose(out["mfi_14"], talib.MFI(h, lo, c, v, 14)[tail] / 100.0, atol=1e-9)
    np.testing.assert_allclose(out["stoch_k"], stoch_k[tail] / 100.0, atol=1e-9)
    np.testing.assert_allclose(out["stoch_d"], stoch_d[tail] / 100.0, atol=1e-9)
    # ADX also differs where TA-Lib lets float noise break +DM/-DM ties; typically it is very close.
    adx_diff = np.abs(out["adx_14"].to_numpy() - talib.ADX(h, lo, c, 14)[tail] / 100.0)
    assert np.median(adx_diff) < 3e-3 and adx_diff.max() < 0.05
