"""Bars that cannot be real (issue 21): dated after now, implausible prices, high/low not bounding the bar. The
loader refuses them naming the line, the training checks and the forecast step refuse them naming the bar, and
bars after now are never read as closed. Clock-dependent tests freeze the clock with freezegun."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from freezegun import freeze_time

from config.settings import Settings
from ml.src.data import load_bars
from ml.src.data.local_db import SqliteStore, format_ts
from ml.src.inference.forecast import forecast_pair
from ml.src.training.pipeline import PairFailure, check_bars
from tests.factories import sample_bars

SPEC = Settings(_env_file=None).timeframes["d1"]


def write(tmp_path: Path, name: str, frame: pd.DataFrame) -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    return path


def test_a_bar_after_now_is_refused_at_load_naming_it(
    embedded_store: SqliteStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = sample_bars("IBM", "d1", last=40).reset_index(drop=True)
    path = write(tmp_path, "IBM_d1.csv", bars)
    # the clock between bar 29 and bar 30: bars 30.. have not happened yet (file line 32 holds row 30)
    with freeze_time(bars["ts"].iloc[29] + pd.Timedelta(hours=20)):
        assert load_bars.main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    ts = bars["ts"].iloc[30].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert err.startswith(f"load_bars: {path}: line 32: ts {ts} is in the future") and "\n" not in err
    assert embedded_store.count_bars("IBM", "d1") == 0
    with freeze_time(bars["ts"].iloc[39] + pd.Timedelta(hours=20)):  # all of them closed: loads
        assert load_bars.main([str(path), "-q"]) == 0
    assert embedded_store.count_bars("IBM", "d1") == 40


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("1e300", "line 11: an implausible high 1e+300 (above 1e+12)"),
        ("step", "line 11: an implausible close"),
        ("volume", "line 11: an implausible volume 1e+39 (not finite as float32)"),
    ],
)
def test_implausible_prices_are_refused_at_load_naming_the_line(
    kind: str, message: str, embedded_store: SqliteStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = sample_bars("IBM", "d1", last=40).reset_index(drop=True)
    bars["volume"] = bars["volume"].astype("float64")
    if kind == "1e300":
        bars.loc[9, ["high", "close"]] = 1e300
    elif kind == "step":  # 2000 x the previous close in one bar: a unit error, not a market move
        bars.loc[9, ["open", "high", "low", "close"]] = bars.loc[8, "close"] * 2000
    else:
        bars.loc[9, "volume"] = 1e39
    path = write(tmp_path, "IBM_d1.csv", bars)
    assert load_bars.main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert f"(bar {bars['ts'].iloc[9].strftime('%Y-%m-%dT%H:%M:%SZ')})" in err
    assert embedded_store.count_bars("IBM", "d1") == 0


def test_the_training_checks_refuse_implausible_and_inconsistent_bars_naming_them() -> None:
    bars = sample_bars("GOOG", "d1", first=300).reset_index(drop=True)
    at = bars["ts"].iloc[50].isoformat()
    huge = bars.copy()
    huge.loc[50, ["high", "close"]] = (
        1e300  # before: loaded, then the fit failed with sklearn's float32 message
    )
    with pytest.raises(PairFailure) as exc:
        check_bars(huge, "GOOG/d1", SPEC)
    assert str(exc.value) == f"GOOG/d1: bar at {at} has an implausible high 1e+300 (above 1e+12)"
    step = bars.copy()
    step.loc[50, ["open", "high", "low", "close"]] = bars.loc[49, "close"] / 5000
    with pytest.raises(PairFailure) as exc:
        check_bars(step, "GOOG/d1", SPEC)
    prev = bars.loc[49, "close"]
    assert str(exc.value) == (
        f"GOOG/d1: bar at {at} has an implausible close {prev / 5000:g}: 0.0002 x the previous bar's close "
        f"{prev:g} (allowed 1/1000 .. 1000)"
    )
    low_high = bars.copy()
    low_high.loc[50, "high"] = bars.loc[50, "close"] * 0.99
    with pytest.raises(PairFailure) as exc:
        check_bars(low_high, "GOOG/d1", SPEC)
    assert str(exc.value) == f"GOOG/d1: bar at {at} has high < max(open, close)"
    check_bars(bars, "GOOG/d1", SPEC)  # the real bars pass (largest close-to-close step ~2x)


def test_the_forecast_step_runs_the_same_bar_checks(trained_store: Path) -> None:
    """GOOG/d1's champion forecasts bar 1230; that bar's high written below its close by another tool."""
    goog = sample_bars("GOOG", "d1")
    bar = goog.iloc[1230]
    conn = sqlite3.connect(trained_store)
    with conn:
        conn.execute(
            "update ohlc_bars set high = ? where symbol = 'GOOG' and timeframe = 'd1' and ts = ?",
            (float(bar["close"]) * 0.99, format_ts(bar["ts"])),
        )
    conn.close()
    settings = Settings()
    with SqliteStore(trained_store) as store:
        result = forecast_pair(store, settings, "GOOG", "d1", as_of=bar["ts"] + pd.Timedelta(hours=8))
        assert (result.status, result.reason) == (
            "failed",
            f"GOOG/d1: bar at {bar['ts'].isoformat()} has high < max(open, close)",
        )
        assert pd.Timestamp(bar["ts"]) not in {
            pd.Timestamp(r["bar_ts"]) for r in store.list_forecasts("GOOG")
        }
        # the bar corrected (its real values upserted): the same forecast is written
        store.upsert_bars("GOOG", "d1", goog.iloc[1230:1231])
        ok = forecast_pair(store, settings, "GOOG", "d1", as_of=bar["ts"] + pd.Timedelta(hours=8))
    assert ok.status == "written" and ok.bar_ts == bar["ts"].isoformat()
    assert np.isclose(sum(ok.probabilities.values()), 1.0)
