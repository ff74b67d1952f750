"""The forecast step against both stores (embedded SQLite, and Supabase through the local stack), on real bars.

Champions are trained by the real run loop on the shipped sample bars; forecasts are written by the real forecast
step; outcomes appear once later bars are loaded, through the next forecast or the next training run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from config.settings import Settings
from ml.src.data.store import TrainingStore
from ml.src.inference.forecast_job import run_forecasts
from ml.src.inference.live_record import summarise
from ml.src.monitoring.report import build_report
from ml.src.training.labels import CLASSES
from ml.src.training.outcomes import fill_outcomes
from ml.src.training.registry import load_recorded
from ml.src.training.run_loop import run_job
from tests.factories import sample_bars

pytestmark = pytest.mark.slow


def load(store: TrainingStore, ticker: str, tf: str, bars: pd.DataFrame) -> None:
    store.upsert_bars(ticker, tf, bars)
    store.upsert_symbols([ticker])


def train(store: TrainingStore, settings: Settings, ticker: str, tf: str, **kwargs: Any) -> None:
    report = run_job(store, settings, [ticker], [tf], workers=1, **kwargs)
    assert [r.status for r in report.results] == ["succeeded"], report.results[0].error


def by_bar(rows: list[dict[str, Any]]) -> dict[pd.Timestamp, dict[str, Any]]:
    return {pd.Timestamp(r["bar_ts"]): r for r in rows}


def test_forecasts_for_every_champion_once_and_their_outcomes(env: dict[str, Any]) -> None:
    store, settings, tag = env["store"], env["settings"], env["tag"]
    goog, ibm, gspc = f"G{tag}", f"I{tag}", f"S{tag}"
    goog_bars, ibm_bars = sample_bars("GOOG", "d1"), sample_bars("IBM", "w1")
    load(store, goog, "d1", goog_bars.iloc[:1200])
    load(store, ibm, "w1", ibm_bars.iloc[:600])
    load(store, gspc, "d1", sample_bars("GSPC", "d1", first=400))  # bars, but never trained
    train(store, settings, goog, "d1")
    train(store, settings, ibm, "w1")
    pairs = [(goog, "d1"), (ibm, "w1"), (gspc, "d1")]

    first = run_forecasts(store, settings, pairs)
    assert [r.status for r in first.results] == ["written", "written", "skipped"]
    assert "no champion" in (first.results[2].reason or "")
    assert first.exit_code() == 0

    for ticker, tf, bars, h in ((goog, "d1", goog_bars, 5), (ibm, "w1", ibm_bars, 4)):
        [row] = store.list_forecasts(ticker, tf)
        champion = store.get_champion(ticker, tf)
        assert champion is not None
        p = np.array([row["p_bearish"], row["p_neutral"], row["p_bullish"]])
        assert abs(p.sum() - 1.0) < 1e-9 and (p >= 0).all()
        # the label is the bundle's decision (the class most above its training share), not a raw argmax
        model = load_recorded(champion, settings)
        assert row["label"] == CLASSES[int(model.decide(p[None, :])[0])]
        assert row["direction_score"] == pytest.approx(p[2] - p[0], abs=1e-12)
        n = 1200 if tf == "d1" else 600
        assert pd.Timestamp(row["bar_ts"]) == bars["ts"].iloc[n - 1]  # the latest bar: closed long ago
        # h bars later in trading time is exactly the real bar h rows further on in the file
        assert pd.Timestamp(row["target_ts"]) == bars["ts"].iloc[n - 1 + h]
        assert row["horizon_bars"] == h
        assert row["model_version_id"] == champion["id"]
        assert pd.Timestamp(row["model_trained_at"]) == pd.Timestamp(champion["trained_at"])
        assert row["realised_return"] is None and row["realised_label"] is None
    assert store.list_forecasts(gspc, "d1") == []

    before = {t: store.list_forecasts(t) for t in (goog, ibm)}
    again = run_forecasts(store, settings, pairs)
    assert [r.status for r in again.results] == ["unchanged", "unchanged", "skipped"]
    assert {t: store.list_forecasts(t) for t in (goog, ibm)} == before  # nothing new, not even created_at

    # Six more real days: the first forecast's horizon (5 bars) has passed; the next forecast records it.
    load(store, goog, "d1", goog_bars.iloc[1200:1206])
    later = run_forecasts(store, settings, [(goog, "d1")])
    assert [(r.status, r.outcomes_realised) for r in later.results] == [("written", 1)]
    rows = by_bar(store.list_forecasts(goog, "d1"))
    old, new = rows[goog_bars["ts"].iloc[1199]], rows[goog_bars["ts"].iloc[1205]]
    close = goog_bars["close"].to_numpy()
    assert old["realised_return"] == pytest.approx(close[1204] / close[1199] - 1.0, rel=1e-12)
    assert pd.Timestamp(old["realised_bar_ts"]) == goog_bars["ts"].iloc[1204]
    ret = old["realised_return"]
    expected = (
        "BULLISH"
        if ret > old["threshold_upper"]
        else "BEARISH"
        if ret < old["threshold_lower"]
        else "NEUTRAL"
    )
    assert old["realised_label"] == expected
    assert new["realised_return"] is None  # its horizon has not passed

    # The next training run realises outcomes too: IBM w1 gets five more weeks, then trains.
    load(store, ibm, "w1", ibm_bars.iloc[600:605])
    train(store, settings, ibm, "w1")
    [old_ibm] = store.list_forecasts(ibm, "w1")
    ibm_close = ibm_bars["close"].to_numpy()
    assert old_ibm["realised_return"] == pytest.approx(ibm_close[603] / ibm_close[599] - 1.0, rel=1e-12)
    assert pd.Timestamp(old_ibm["realised_bar_ts"]) == ibm_bars["ts"].iloc[603]


def test_live_record_over_a_month_of_daily_forecasts(
    env: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """A champion trained as of bar 1199 forecasts each of the next 30 real days; the live record adds up."""
    store, settings, tag = env["store"], env["settings"], env["tag"]
    ticker = f"L{tag}"
    bars = sample_bars("GOOG", "d1")
    load(store, ticker, "d1", bars)
    train(store, settings, ticker, "d1", as_of=bars["ts"].iloc[1199].to_pydatetime())
    for k in range(1199, 1229):
        # 8 hours after the bar opened: after the 16:00 New York close, winter or summer
        run = run_forecasts(
            store, settings, [(ticker, "d1")], as_of=(bars["ts"].iloc[k] + pd.Timedelta(hours=8))
        )
        assert [(r.status, pd.Timestamp(r.bar_ts)) for r in run.results] == [("written", bars["ts"].iloc[k])]
    fill_outcomes(store, ticker, "d1")
    rows = store.list_forecasts(ticker, "d1")
    assert len(rows) == 30 and all(r["realised_label"] is not None for r in rows)
    live = summarise(rows)
    assert (live.n_forecasts, live.n_realised) == (30, 30)
    right = sum(r["label"] == r["realised_label"] for r in rows)
    assert live.accuracy == pytest.approx(right / 30)
    assert live.balanced_accuracy is not None and live.chance_balanced_accuracy is not None

    health = {(h.symbol, h.timeframe): h for h in build_report(store, settings, symbol=ticker)}[
        (ticker, "d1")
    ]
    assert health.live == live.to_dict()
    below = live.balanced_accuracy <= max(
        live.chance_balanced_accuracy, live.persistence_balanced_accuracy or 0
    )
    assert ("LIVE" in health.flags) == below  # 30 realised >= monitor_live_min_forecasts (20)

    if env["kind"] == "supabase":  # the SQL view gives the same numbers as the Python summary
        client = request.getfixturevalue("service_client")
        [view] = client.table("forecast_performance").select("*").eq("symbol", ticker).execute().data
        for key, value in live.to_dict().items():
            if value is None:
                assert view[key] is None, key
            else:
                assert view[key] == pytest.approx(value, abs=1e-12), key
        champion = store.get_champion(ticker, "d1")
        assert view["champion_version_id"] == champion["id"]
        [latest] = client.table("latest_forecasts").select("*").eq("symbol", ticker).execute().data
        assert (
            pd.Timestamp(latest["bar_ts"]) == bars["ts"].iloc[1228] and latest["by_current_champion"] is True
        )
        assert view["champion_valid_balanced_accuracy"] == pytest.approx(
            champion["metrics"]["ensemble"]["valid_balanced_accuracy"]
        )
