"""Scale-free, strictly causal technical features for the direction classifiers.

Contract (relied on by the persistent feature cache, which is keyed by FEATURE_SET_VERSION):

* causal: row i depends only on rows <= i, so features on ``df.iloc[:k]`` equal the first k rows exactly;
* finite memory: row i depends only on rows ``i - WARMUP_BARS .. i``, so any fetch that starts at least
  WARMUP_BARS rows before i reproduces the cached value (to floating-point rounding);
* scale-free: nothing depends on the price level or the share count, so a model trained on one symbol or
  period applies to another;
* finite from row WARMUP_BARS on for any valid bars (zero volume, flat O=H=L=C bars and crashes included).
  Earlier rows may be NaN; nothing is back- or forward-filled.

TA-Lib's recursive smoothers (Wilder RSI/ATR/ADX, the EMAs behind MACD) remember their start point forever,
which would make a feature depend on where the fetched history happens to begin. They are therefore applied
as finite impulse responses: a value equals TA-Lib's own recursion (same SMA seed, same smoothing constant)
run over exactly the trailing ``taps`` inputs, evaluated for every row at once with ``np.convolve``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import talib

__all__ = [
    "FEATURE_COLUMNS",
    "FEATURE_SET_VERSION",
    "VOL_FEATURE_COLUMNS",
    "WARMUP_BARS",
    "FeatureSet",
    "add_technical_features",
    "ewma_vol",
    "feature_set",
]

# Bump on ANY change to a feature's definition, window, order or the tap counts below: it keys the cache.
FEATURE_SET_VERSION = "ta-v2"

# Longest look-back of any feature (rows i - WARMUP_BARS .. i). It is set by the longest plain window,
# rv_rank_100 (a 100-bar rank of a 20-bar volatility of 1-bar returns: 100 + 20 rows back); the recursive
# smoothers below are truncated to fit inside it (ta-v1 gave them 200 bars, which short histories paid for).
WARMUP_BARS = 120

# Tap budget: feature memory = taps (+1 for bar-to-bar differences) + any later shift or second smoothing,
# and every feature must fit in WARMUP_BARS (test_features checks the first fully defined row). The seed's
# weight in the result is (1 - alpha)**(taps - seed): ~6e-4 for RSI/ATR(14) at 115 taps, ~5e-3 for EMA(26) at
# 85, so these stay within ~1e-3 of TA-Lib's unbounded recursions on real bars, and are exactly finite-memory.
_SMOOTH_TAPS = 115  # RSI(14), ATR(14), EMA(20); their 5-bar changes reach back 120 rows
_MACD_TAPS = 85  # EMA(12) and EMA(26) of the MACD line
_MACD_SIGNAL_TAPS = 30  # EMA(9) of the MACD line -> signal reaches back 113 rows, +3 for its change
_ADX_DM_TAPS = 60  # Wilder smoothing of +DM, -DM and TR
_ADX_TAPS = 60  # Wilder smoothing of DX -> ADX reaches back 120 rows
_RANK_WINDOW = 100
# Relative size below which two price moves count as equal (real ticks are >= ~1e-9 of the price; float
# noise is ~1e-16 of it).
_TIE_RTOL = 1e-10
# Rank inputs in log units are rounded to this many decimals so that values equal in exact arithmetic tie,
# instead of being ordered by float noise (which differs between rescaled copies of the same bars).
_RANK_DECIMALS = 10

FEATURE_COLUMNS: tuple[str, ...] = (
    # returns (log)
    "ret_1",
    "ret_2",
    "ret_5",
    "ret_10",
    "ret_20",
    "ret_60",
    "gap_1",
    "body_1",
    # bar shape
    "clv",
    "upper_wick",
    "lower_wick",
    # trend
    "dist_sma_10",
    "dist_sma_20",
    "dist_sma_50",
    "dist_sma_100",
    "dist_ema_20",
    "sma_20_50",
    "sma_50_100",
    "slope_sma_20",
    "slope_sma_50",
    "linreg_slope_20",
    "dist_sma_20_atr",
    "adx_14",
    "di_spread_14",
    "aroon_osc_25",
    # momentum
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "stoch_k",
    "stoch_d",
    "willr_14",
    "cci_20",
    "rocp_10",
    "ultosc",
    # volatility
    "natr_14",
    "rv_5",
    "rv_20",
    "rv_60",
    "parkinson_20",
    "hl_range",
    "range_atr",
    "bb_pctb_20",
    "bb_width_20",
    # volume
    "vol_ratio_20",
    "vol_ratio_5_20",
    "mfi_14",
    "obv_slope_20",
    "cmf_20",
    # rolling percentile ranks
    "close_rank_100",
    "ret_rank_100",
    "volume_rank_100",
    "rv_rank_100",
    "range_rank_100",
    # second-order changes
    "rsi_chg_5",
    "macd_hist_chg_3",
    "natr_chg_5",
    "rv_ratio_5_20",
    "ret_accel_5",
    # regime flags (0/1)
    "regime_above_sma_100",
    "regime_trend_up",
    "regime_high_vol",
    "regime_strong_trend",
)

# ML_VOL_FEATURES: volatility forecasts as features in their own right (issue 20). Off by default; when on, the
# feature set's version (the cache key) becomes FEATURE_SET_VERSION + VOL_FEATURE_SUFFIX.
VOL_FEATURE_COLUMNS: tuple[str, ...] = (
    # HAR-style realised volatility (root mean squared 1-bar log return) over a bar, a "week", a "month", a "quarter"
    "har_rv_1",
    "har_rv_5",
    "har_rv_22",
    "har_rv_66",
    "har_ratio_5_66",
    # range estimators
    "parkinson_5",
    "garman_klass_5",
    "garman_klass_22",
    # the causal EWMA volatility the ex_ante_vol labels are scaled by, and the volatility of volatility
    "ewma_vol_20",
    "vol_of_vol_22",
)
VOL_FEATURE_SUFFIX = "+vol1"
# EWMA(span 20) of squared 1-bar log returns, truncated to EWMA_TAPS bars (weight of the cut tail ~5e-5) so that
# it has finite memory like every other feature: a bar's value never depends on where the history begins.
EWMA_SPAN = 20
EWMA_TAPS = 100


@dataclass(frozen=True)
class FeatureSet:
    """The columns a model is fed and the version that keys the cache for them."""

    columns: tuple[str, ...]
    version: str
    vol_features: bool


def feature_set(vol_features: bool = False) -> FeatureSet:
    if vol_features:
        return FeatureSet(
            FEATURE_COLUMNS + VOL_FEATURE_COLUMNS, FEATURE_SET_VERSION + VOL_FEATURE_SUFFIX, True
        )
    return FeatureSet(FEATURE_COLUMNS, FEATURE_SET_VERSION, False)


_REQUIRED = ("open", "high", "low", "close", "volume")


def _smoothing_weights(alpha: float, seed: int, taps: int) -> np.ndarray:
    """Lag-ordered weights (lag 0 first) of TA-Lib's SMA-seeded recursion y = (1-alpha)*y + alpha*x run
    over exactly `taps` inputs: the recursion's output is this linear combination of its inputs."""
    n_updates = taps - seed
    w = np.empty(taps)
    w[:n_updates] = alpha * (1.0 - alpha) ** np.arange(n_updates)
    w[n_updates:] = (1.0 - alpha) ** n_updates / seed
    return w


def _wilder_weights(period: int, taps: int) -> np.ndarray:
    return _smoothing_weights(1.0 / period, period, taps)


def _ema_weights(period: int, taps: int) -> np.ndarray:
    return _smoothing_weights(2.0 / (period + 1), period, taps)


def _trailing(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """y[i] = sum_k weights[k] * x[i - k]; NaN until len(weights) inputs exist (NaN inputs propagate).

    Each output is one dot product over the same inputs in the same order wherever the series starts,
    so it is bit-identical across prefixes and history windows.
    """
    out = np.full(len(x), np.nan)
    m = len(weights)
    if len(x) >= m:
        out[m - 1 :] = np.convolve(x, weights, mode="valid")
    return out


def _rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    return _trailing(x, np.ones(window))


def _rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    # Sum-based (not an add/remove running update) so the value depends only on the window's contents;
    # fine for returns, whose mean is small next to their spread.
    s1 = _rolling_sum(x, window)
    s2 = _rolling_sum(x * x, window)
    var = (s2 - s1 * s1 / window) / (window - 1)
    return np.sqrt(np.maximum(var, 0.0))


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) > k:
        out[k:] = x[:-k]
    return out


def _div(num: np.ndarray, den: np.ndarray, default: float) -> np.ndarray:
    """num / den, with `default` where den == 0 (flat ranges, zero volume, zero variance); NaN stays NaN."""
    ok = den != 0
    out = np.where(ok, num / np.where(ok, den, 1.0), default)
    return np.where(np.isnan(num) | np.isnan(den), np.nan, out)


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(a / b) for positive a, b; 0 where either is 0 (e.g. ATR of a completely flat stretch)."""
    ok = (a > 0) & (b > 0)
    out = np.where(ok, np.log(np.where(ok, a, 1.0) / np.where(ok, b, 1.0)), 0.0)
    return np.where(np.isnan(a) | np.isnan(b), np.nan, out)


def _flag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1.0 where a > b by more than rounding noise (so near-ties such as flat stretches read 0 however the
    history was fetched), else 0.0; NaN while either input is undefined."""
    above = (a - b) > 1e-9 * (np.abs(a) + np.abs(b))
    return np.where(np.isnan(a) | np.isnan(b), np.nan, above.astype(np.float64))


def _rank(x: np.ndarray, window: int) -> np.ndarray:
    # Percentile of the current value within the trailing window (ties averaged), in (0, 1]; causal, and
    # exact because each window's ranks depend only on its contents.
    return pd.Series(x).rolling(window).rank(pct=True).to_numpy(dtype=np.float64)


def ewma_vol(close: np.ndarray | pd.Series) -> np.ndarray:
    """Causal per-bar volatility of 1-bar log returns: sqrt of an EWMA (span EWMA_SPAN) of squared returns over
    the last EWMA_TAPS returns up to and including bar i (known at bar i's close). NaN for the first EWMA_TAPS
    rows; finite memory, so a bar's value is the same whatever history precedes its window or follows it."""
    lc = np.log(np.ascontiguousarray(np.asarray(close, dtype=np.float64)))
    r = lc - _shift(lc, 1)
    alpha = 2.0 / (EWMA_SPAN + 1)
    w = (1.0 - alpha) ** np.arange(EWMA_TAPS)
    return np.sqrt(_trailing(r * r, w / w.sum()))


def _vol_features(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, r1: np.ndarray
) -> dict[str, np.ndarray]:
    f: dict[str, np.ndarray] = {}
    r2 = r1 * r1
    har = {n: np.sqrt(_rolling_sum(r2, n) / n) for n in (1, 5, 22, 66)}
    for n, v in har.items():
        f[f"har_rv_{n}"] = v
    f["har_ratio_5_66"] = _div(har[5], har[66], 1.0)
    hl = np.log(h / lo)
    f["parkinson_5"] = np.sqrt(_rolling_sum(hl * hl, 5) / (5 * 4.0 * np.log(2.0)))
    co = np.log(c / o)
    gk = 0.5 * hl * hl - (2.0 * np.log(2.0) - 1.0) * co * co
    for n in (5, 22):
        f[f"garman_klass_{n}"] = np.sqrt(np.maximum(_rolling_sum(gk, n) / n, 0.0))
    f["ewma_vol_20"] = ewma_vol(c)
    # coefficient of variation of the 5-bar volatility over 22 bars: scale-free, 0 for a flat stretch
    rv5 = _rolling_std(r1, 5)
    s1, s2 = _rolling_sum(rv5, 22), _rolling_sum(rv5 * rv5, 22)
    sd = np.sqrt(np.maximum((s2 - s1 * s1 / 22) / 21, 0.0))
    f["vol_of_vol_22"] = _div(sd, s1 / 22, 0.0)
    return f


# The families of FEATURE_COLUMNS, each adding its columns to `f`; what a later family reuses is returned.
def _returns_and_shape(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, f: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    # --- returns -------------------------------------------------------------------------------------
    lc = np.log(c)
    for k in (1, 2, 5, 10, 20, 60):
        f[f"ret_{k}"] = lc - _shift(lc, k)
    f["gap_1"] = np.log(o) - _shift(lc, 1)
    f["body_1"] = lc - np.log(o)

    # --- bar shape (fractions of the bar's range; a flat bar is neutral) -----------------------------
    rng = h - lo
    f["clv"] = _div(c - lo, rng, 0.5)
    f["upper_wick"] = _div(h - np.maximum(o, c), rng, 0.0)
    f["lower_wick"] = _div(np.minimum(o, c) - lo, rng, 0.0)

    return lc, rng


def _trend(
    h: np.ndarray, lo: np.ndarray, c: np.ndarray, lc: np.ndarray, f: dict[str, np.ndarray]
) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    # --- trend ---------------------------------------------------------------------------------------
    sma = {n: talib.SMA(c, timeperiod=n) for n in (10, 20, 50, 100)}
    for n, s in sma.items():
        f[f"dist_sma_{n}"] = np.log(c / s)
    ema20 = _trailing(c, _ema_weights(20, _SMOOTH_TAPS))
    f["dist_ema_20"] = np.log(c / ema20)
    f["sma_20_50"] = np.log(sma[20] / sma[50])
    f["sma_50_100"] = np.log(sma[50] / sma[100])
    f["slope_sma_20"] = np.log(sma[20] / _shift(sma[20], 5))
    f["slope_sma_50"] = np.log(sma[50] / _shift(sma[50], 10))
    # On log prices: slope is a per-bar growth rate, independent of the price level.
    f["linreg_slope_20"] = talib.LINEARREG_SLOPE(lc, timeperiod=20)

    tr = talib.TRANGE(h, lo, c)
    atr = _trailing(tr, _wilder_weights(14, _SMOOTH_TAPS))
    f["dist_sma_20_atr"] = _div(c - sma[20], atr, 0.0)

    # ADX: Wilder-smoothed DM and TR, then Wilder-smoothed DX; both stages finite (TA-Lib's ADX never forgets).
    # +DM/-DM as TA-Lib defines them (the larger move wins, a tie gives neither), but a tie is judged with a
    # price-relative tolerance: equal moves such as 0.05 vs 0.05 differ by float noise, and TA-Lib's exact
    # comparison would let that noise (which changes when prices are rescaled) pick a side.
    up = h - _shift(h, 1)
    down = _shift(lo, 1) - lo
    tie = _TIE_RTOL * h
    plus_dm = np.where(np.isnan(up), np.nan, np.where((up > 0) & (up - down > tie), up, 0.0))
    minus_dm = np.where(np.isnan(up), np.nan, np.where((down > 0) & (down - up > tie), down, 0.0))
    dm_w = _wilder_weights(14, _ADX_DM_TAPS)
    s_tr = _trailing(tr, dm_w)
    di_plus = _div(_trailing(plus_dm, dm_w), s_tr, 0.0)
    di_minus = _div(_trailing(minus_dm, dm_w), s_tr, 0.0)
    dx = _div(np.abs(di_plus - di_minus), di_plus + di_minus, 0.0)
    adx = _trailing(dx, _wilder_weights(14, _ADX_TAPS))
    f["adx_14"] = adx
    f["di_spread_14"] = di_plus - di_minus
    f["aroon_osc_25"] = talib.AROONOSC(h, lo, timeperiod=25) / 100.0

    return sma, tr, atr, adx


def _momentum(
    h: np.ndarray, lo: np.ndarray, c: np.ndarray, tr: np.ndarray, f: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    # --- momentum (oscillators rescaled from 0..100 to 0..1) ------------------------------------------
    dc = np.diff(c, prepend=np.nan)
    rsi_w = _wilder_weights(14, _SMOOTH_TAPS)
    dc_up = np.where(np.isnan(dc), np.nan, np.maximum(dc, 0.0))
    gain = _trailing(dc_up, rsi_w)
    loss = _trailing(dc_up - dc, rsi_w)  # = max(-dc, 0)
    rsi = _div(gain, gain + loss, 0.5)  # no movement at all: neutral (TA-Lib would say 0)
    f["rsi_14"] = rsi

    macd_line = _trailing(c, _ema_weights(12, _MACD_TAPS)) - _trailing(c, _ema_weights(26, _MACD_TAPS))
    signal = _trailing(macd_line, _ema_weights(9, _MACD_SIGNAL_TAPS))
    f["macd"] = macd_line / c
    f["macd_signal"] = signal / c
    f["macd_hist"] = (macd_line - signal) / c

    hh, ll = talib.MAX(h, timeperiod=14), talib.MIN(lo, timeperiod=14)
    # TA-Lib reports %R = 0 (top of range) for a window with no range at all; call that the middle.
    willr = np.where(hh - ll > 0, talib.WILLR(h, lo, c, timeperiod=14) / 100.0, -0.5)
    willr = np.where(np.isnan(hh), np.nan, willr)
    f["willr_14"] = willr
    fast_k = np.ascontiguousarray(willr + 1.0)  # %K(14) = 1 + %R(14)
    stoch_k = talib.SMA(fast_k, timeperiod=3)  # = TA-Lib STOCH(14, 3 SMA, 3 SMA), flat-safe
    f["stoch_k"] = stoch_k
    f["stoch_d"] = talib.SMA(stoch_k, timeperiod=3)
    f["cci_20"] = talib.CCI(h, lo, c, timeperiod=20) / 100.0
    f["rocp_10"] = talib.ROCP(c, timeperiod=10)
    ultosc = talib.ULTOSC(h, lo, c, timeperiod1=7, timeperiod2=14, timeperiod3=28) / 100.0
    f["ultosc"] = np.where(_rolling_sum(tr, 28) == 0, 0.5, ultosc)  # TA-Lib says 0 with no range at all

    return rsi, dc


def _volatility(
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    lc: np.ndarray,
    rng: np.ndarray,
    atr: np.ndarray,
    f: dict[str, np.ndarray],
) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    # --- volatility ----------------------------------------------------------------------------------
    natr = atr / c
    f["natr_14"] = natr
    r1 = f["ret_1"]
    rv = {n: _rolling_std(r1, n) for n in (5, 20, 60)}
    for n, s in rv.items():
        f[f"rv_{n}"] = s
    hl = np.log(h / lo)
    f["parkinson_20"] = np.sqrt(_rolling_sum(hl * hl, 20) / (20 * 4.0 * np.log(2.0)))
    f["hl_range"] = hl
    f["range_atr"] = _div(rng, atr, 0.0)
    # Bollinger on log close: scale-free by construction, and TA-Lib's "variance < 1e-8 is zero" cut-off
    # becomes a relative one instead of depending on the price level.
    upper, _, lower = talib.BBANDS(lc, timeperiod=20, nbdevup=2.0, nbdevdn=2.0, matype=talib.MA_Type.SMA)
    width = upper - lower
    f["bb_pctb_20"] = _div(lc - lower, width, 0.5)
    f["bb_width_20"] = width

    return r1, rv, hl


def _volume(
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    rng: np.ndarray,
    dc: np.ndarray,
    f: dict[str, np.ndarray],
) -> None:
    # --- volume (ratios only; never raw counts or a cumulative OBV) ---------------------------------
    vsum20 = _rolling_sum(v, 20)
    vmean20 = vsum20 / 20.0
    f["vol_ratio_20"] = np.log1p(_div(v, vmean20, 1.0))  # log1p: zero volume -> 0, all-zero window -> log 2
    f["vol_ratio_5_20"] = np.log1p(_div(_rolling_sum(v, 5) / 5.0, vmean20, 1.0))
    # MFI(14) = TA-Lib's formula, with the same tie tolerance as DM on the typical-price comparison (about
    # 1 bar in 1,500 has a float-noise "tie" that would otherwise flip a whole bar's money flow to one side).
    tp = (h + lo + c) / 3.0
    dtp = tp - _shift(tp, 1)
    flow = np.where(np.isnan(dtp), np.nan, tp * v)
    pos = _rolling_sum(np.where(dtp > _TIE_RTOL * tp, flow, 0.0), 14)
    neg = _rolling_sum(np.where(dtp < -_TIE_RTOL * tp, flow, 0.0), 14)
    f["mfi_14"] = _div(pos, pos + neg, 0.5)  # no money flow at all: neutral (TA-Lib would say 0)
    # OBV slope: the 20-bar change in OBV as a fraction of the volume traded over those bars, in [-1, 1].
    f["obv_slope_20"] = _div(_rolling_sum(np.sign(dc) * v, 20), vsum20, 0.0)
    mf_mult = _div((c - lo) - (h - c), rng, 0.0)
    f["cmf_20"] = _div(_rolling_sum(mf_mult * v, 20), vsum20, 0.0)


def _ranks_changes_regimes(
    c: np.ndarray,
    v: np.ndarray,
    r1: np.ndarray,
    rv: dict[int, np.ndarray],
    hl: np.ndarray,
    rsi: np.ndarray,
    atr: np.ndarray,
    sma: dict[int, np.ndarray],
    adx: np.ndarray,
    f: dict[str, np.ndarray],
) -> None:
    # --- rolling percentile ranks (close and volume rank as given: rescaling cannot reorder them) ------
    f["close_rank_100"] = _rank(c, _RANK_WINDOW)
    f["ret_rank_100"] = _rank(np.round(r1, _RANK_DECIMALS), _RANK_WINDOW)
    f["volume_rank_100"] = _rank(v, _RANK_WINDOW)
    f["rv_rank_100"] = _rank(np.round(rv[20], _RANK_DECIMALS), _RANK_WINDOW)
    f["range_rank_100"] = _rank(np.round(hl, _RANK_DECIMALS), _RANK_WINDOW)

    # --- second-order changes ------------------------------------------------------------------------
    f["rsi_chg_5"] = rsi - _shift(rsi, 5)
    f["macd_hist_chg_3"] = f["macd_hist"] - _shift(f["macd_hist"], 3)
    f["natr_chg_5"] = _log_ratio(atr, _shift(atr, 5))
    f["rv_ratio_5_20"] = _div(rv[5], rv[20], 1.0)
    f["ret_accel_5"] = f["ret_5"] - _shift(f["ret_5"], 5)

    # --- regime flags ---------------------------------------------------------------------------------
    f["regime_above_sma_100"] = _flag(c, sma[100])
    f["regime_trend_up"] = _flag(sma[20], sma[50])
    f["regime_high_vol"] = _flag(rv[20], rv[60])
    f["regime_strong_trend"] = _flag(adx, np.full(len(adx), 0.25))


def add_technical_features(df: pd.DataFrame, vol_features: bool = False) -> pd.DataFrame:
    """Return a copy of `df` (bars ascending in time) with the FEATURE_COLUMNS appended (and, with
    `vol_features`, the VOL_FEATURE_COLUMNS after them: feature_set(True).columns).

    Only open/high/low/close/volume are read; `ts` is never used. Same rows and index as `df`.
    """
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"add_technical_features: missing columns {missing}")
    if "ts" in df.columns and not df["ts"].is_monotonic_increasing:
        raise ValueError("add_technical_features: bars must be sorted by ts ascending")

    o, h, lo, c, v = (np.ascontiguousarray(df[col].to_numpy(dtype=np.float64)) for col in _REQUIRED)
    f: dict[str, np.ndarray] = {}
    lc, rng = _returns_and_shape(o, h, lo, c, f)
    sma, tr, atr, adx = _trend(h, lo, c, lc, f)
    rsi, dc = _momentum(h, lo, c, tr, f)
    r1, rv, hl = _volatility(h, lo, c, lc, rng, atr, f)
    _volume(h, lo, c, v, rng, dc, f)
    _ranks_changes_regimes(c, v, r1, rv, hl, rsi, atr, sma, adx, f)

    if set(f) != set(FEATURE_COLUMNS) or len(f) != len(FEATURE_COLUMNS):
        raise AssertionError("computed features drifted from FEATURE_COLUMNS")
    columns = feature_set(vol_features).columns
    if vol_features:
        f.update(_vol_features(o, h, lo, c, r1))
    feats = pd.DataFrame({name: f[name] for name in columns}, index=df.index)
    base = df.drop(columns=[col for col in columns if col in df.columns])
    return pd.concat([base, feats], axis=1)
