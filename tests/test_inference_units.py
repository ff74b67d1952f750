"""The forecast step's parts on real bars: closed bars, target_ts in trading time, the live record's arithmetic,
predict_proba refusing warm-up rows, and bundles refusing other library versions."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from ml.src.features.technical_indicators import WARMUP_BARS, add_technical_features
from ml.src.inference.bar_clock import SessionGrid, bar_close_time, latest_closed_index, target_ts
from ml.src.inference.live_record import summarise
from ml.src.training import artifacts
from ml.src.training.artifacts import ArtifactError, LibraryVersionWarning, load_ensemble, running_version
from ml.src.training.ensemble import MissingFeaturesError
from tests.factories import ml_test_bars, sample_bars


def utc(text: str) -> datetime:
    return pd.Timestamp(text).tz_convert("UTC").to_pydatetime()


# ---- closed bars ---------------------------------------------------------------------------------------------------


def test_a_daily_bar_closes_at_the_new_york_close_winter_and_summer() -> None:
    ts = sample_bars("GOOG", "d1")["ts"]
    grid = SessionGrid.from_history(ts.iloc[-300:])
    assert grid.slots == (datetime(2000, 1, 1, 9, 30).time(),) and grid.exchange_days
    winter = ts.iloc[-1]  # 2013-03-01 14:30Z, a Friday: 09:30 EST
    assert bar_close_time(winter, "d1", grid) == utc("2013-03-01T21:00:00Z")
    summer = ts[ts == pd.Timestamp("2012-07-02T13:30:00Z")].iloc[0]  # 09:30 EDT
    assert bar_close_time(summer, "d1", grid) == utc("2012-07-02T20:00:00Z")
    window = ts.iloc[-300:].reset_index(drop=True)
    assert latest_closed_index(window, "d1", utc("2013-03-01T20:59:59Z")) == len(window) - 2
    assert latest_closed_index(window, "d1", utc("2013-03-01T21:00:00Z")) == len(window) - 1


def test_a_weekly_bar_closes_on_its_weeks_last_trading_day() -> None:
    ts = sample_bars("IBM", "w1")["ts"]
    grid = SessionGrid.from_history(ts.iloc[-200:])
    last = ts.iloc[-1]  # week of Mon 2013-02-25
    assert bar_close_time(last, "w1", grid) == utc("2013-03-01T21:00:00Z")
    good_friday = pd.Timestamp("2012-04-02T13:30:00Z")  # the week of Good Friday 2012-04-06: closes Thursday
    assert bar_close_time(pd.Timestamp("2012-04-02T13:30:00Z"), "w1", grid) == utc("2012-04-05T20:00:00Z")
    assert good_friday in set(ts)


def test_intraday_bars_close_at_the_next_slot_or_the_session_close() -> None:
    ts = pd.to_datetime(ml_test_bars("AAPL", "h1", last=400)["ts"], utc=True)
    grid = SessionGrid.from_history(ts)
    nine_thirty = ts[ts.dt.tz_convert("America/New_York").dt.strftime("%H:%M") == "09:30"].iloc[-1]
    assert bar_close_time(nine_thirty, "h1", grid) == nine_thirty + pd.Timedelta(minutes=30)
    three_pm = ts[ts.dt.tz_convert("America/New_York").dt.strftime("%H:%M") == "15:00"].iloc[-1]
    assert bar_close_time(three_pm, "h1", grid) == three_pm + pd.Timedelta(hours=1)  # 16:00, not the next day


@pytest.mark.parametrize(
    ("symbol", "tf", "h"), [("GOOG", "d1", 5), ("IBM", "d1", 5), ("IBM", "w1", 4), ("GSPC", "w1", 4)]
)
def test_target_ts_is_the_real_bar_h_bars_later(symbol: str, tf: str, h: int) -> None:
    ts = sample_bars(symbol, tf)["ts"]
    for i in range(WARMUP_BARS, len(ts) - h, 7):
        grid = SessionGrid.from_history(ts.iloc[i - WARMUP_BARS : i + 1])
        assert target_ts(ts.iloc[i], tf, h, grid) == ts.iloc[i + h], ts.iloc[i]


@pytest.mark.parametrize(("tf", "h"), [("m15", 5), ("h1", 5), ("h4", 3)])
def test_intraday_target_ts_matches_real_bars_except_early_closes(tf: str, h: int) -> None:
    ts = pd.to_datetime(ml_test_bars("SPY", tf, last=2000)["ts"], utc=True)
    checked = missed = 0
    for i in range(WARMUP_BARS, len(ts) - h, 3):
        grid = SessionGrid.from_history(ts.iloc[i - WARMUP_BARS : i + 1])
        checked += 1
        missed += target_ts(ts.iloc[i], tf, h, grid) != ts.iloc[i + h]
    assert missed / checked < 0.02  # the documented approximation: 13:00 early closes are not modelled


# ---- the live record's arithmetic (a hand-made set pins the definitions) -------------------------------------------


def test_live_record_definitions() -> None:
    def row(i: int, label: str, truth: str | None, score: float, ret: float | None, persist: str) -> dict:
        return {
            "id": i,
            "symbol": "X",
            "timeframe": "d1",
            "bar_ts": f"2024-01-0{i}T14:30:00Z",
            "model_trained_at": "2024-01-01T00:00:00Z",
            "label": label,
            "realised_label": truth,
            "direction_score": score,
            "realised_return": ret,
            "persistence_label": persist,
        }

    rows = [
        row(1, "BULLISH", "BULLISH", 0.5, 0.02, "BEARISH"),
        row(2, "BEARISH", "BULLISH", -0.4, 0.03, "BULLISH"),
        row(3, "NEUTRAL", "NEUTRAL", 0.1, 0.001, "NEUTRAL"),
        row(4, "BEARISH", "BEARISH", -0.4, -0.02, "NEUTRAL"),
        row(5, "BULLISH", None, 0.3, None, "NEUTRAL"),  # waiting for its horizon
        {
            **row(4, "BULLISH", "BEARISH", 0.9, -0.02, "NEUTRAL"),
            "id": 9,
            "model_trained_at": "2023-12-01T00:00:00Z",
        },
    ]
    live = summarise(rows)
    assert (live.n_forecasts, live.n_realised, live.n_directional) == (5, 4, 3)  # bar 4: the newer model's
    assert live.hit_rate == pytest.approx(2 / 3)
    assert live.accuracy == pytest.approx(3 / 4)
    assert live.balanced_accuracy == pytest.approx(
        (1 / 2 + 1 + 1) / 3
    )  # recall BULLISH 1/2, NEUTRAL 1, BEARISH 1
    assert live.persistence_balanced_accuracy == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert live.chance_balanced_accuracy == pytest.approx(1 / 3)
    # Spearman with average ranks: scores (.5, -.4, .1, -.4) -> ranks (4, 1.5, 3, 1.5); returns -> (3, 4, 2, 1)
    a, b = np.array([4, 1.5, 3, 1.5]), np.array([3, 4, 2, 1])
    assert live.ic == pytest.approx(np.corrcoef(a, b)[0, 1])


# ---- safe inputs -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real GOOG d1 champion, trained by the real job on the shipped bars."""
    from config.settings import Settings
    from ml.src.data.local_db import SqliteStore
    from ml.src.training.run_loop import run_job

    root = tmp_path_factory.mktemp("bundle")
    settings = Settings(
        _env_file=None, supabase_url=None, local_db=root / "s.sqlite3", models_dir=root / "models"
    )
    with SqliteStore(settings.local_db) as store:
        store.upsert_bars("GOOG", "d1", sample_bars("GOOG", "d1", first=900))
        report = run_job(store, settings, ["GOOG"], ["d1"], workers=1)
    [result] = report.results
    assert result.artifact_file and result.artifact_sha256  # artifact_path is relative to ML_MODELS_DIR
    return Path(result.artifact_file), result.artifact_sha256


@pytest.mark.slow
def test_predict_proba_refuses_rows_inside_the_warm_up(trained_bundle: tuple[Path, str]) -> None:
    model = load_ensemble(*trained_bundle)
    feats = add_technical_features(sample_bars("GOOG", "d1", first=1000))
    cold = feats.iloc[100:102]  # rows 100, 101: still inside the 120-bar warm-up
    with pytest.raises(MissingFeaturesError) as info:
        model.predict_proba(cold)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("2 of 2 row(s) have missing (NaN)")
    assert f"{WARMUP_BARS} bars of history" in message
    warm = model.predict_proba(feats.iloc[[WARMUP_BARS, 999]])
    np.testing.assert_allclose(warm.sum(axis=1), 1.0, atol=1e-12)
    with pytest.raises(MissingFeaturesError, match="1 of 3 row"):
        model.predict_proba(feats.iloc[[WARMUP_BARS - 1, 500, 999]])


def _rewrite(source: Path, dest: Path, versions: dict[str, str]) -> str:
    bundle = joblib.load(source)
    bundle.pop("format")
    bundle["library_versions"] = {**bundle["library_versions"], **versions}
    return artifacts.save_bundle(bundle, dest)


@pytest.mark.slow
def test_bundles_refuse_another_major_library_version(
    trained_bundle: tuple[Path, str], tmp_path: Path
) -> None:
    source, _ = trained_bundle
    sklearn, lgbm = running_version("scikit-learn"), running_version("lightgbm")
    assert sklearn and lgbm
    major, minor = sklearn.split(".")[:2]

    path = tmp_path / "other_major.joblib"
    sha = _rewrite(source, path, {"scikit-learn": f"{int(major) + 1}.0.0"})
    with pytest.raises(ArtifactError, match=r"different major version; refusing to load") as info:
        load_ensemble(path, expected_sha256=sha)
    assert "\n" not in str(info.value) and "scikit-learn" in str(info.value)

    path = tmp_path / "other_lightgbm_major.joblib"
    sha = _rewrite(source, path, {"lightgbm": f"{int(lgbm.split('.')[0]) - 1}.9.0"})
    with pytest.raises(ArtifactError, match="lightgbm"):
        load_ensemble(path, expected_sha256=sha)

    path = tmp_path / "other_minor.joblib"
    sha = _rewrite(source, path, {"scikit-learn": f"{major}.{int(minor) + 1}.0"})
    with pytest.warns(LibraryVersionWarning, match="predictions may differ"):
        model = load_ensemble(path, expected_sha256=sha)
    assert model.classes == ("BEARISH", "NEUTRAL", "BULLISH")

    with warnings.catch_warnings():
        warnings.simplefilter("error", LibraryVersionWarning)
        load_ensemble(*trained_bundle)  # the versions it was saved with: no warning


def test_closed_bar_clock_is_now_by_default(tmp_path: Path) -> None:
    """Without --as-of the clock is the wall clock (frozen here): a bar still open is not forecast."""
    from freezegun import freeze_time

    ts = sample_bars("GOOG", "d1")["ts"].iloc[:1200].reset_index(drop=True)
    with freeze_time("2008-11-20T20:00:00Z"):  # 15:00 EST on a trading day
        now = datetime.now(UTC)
    day = ts[ts.dt.strftime("%Y-%m-%d") == "2008-11-20"].index[0]
    window = ts.iloc[: day + 1]
    assert latest_closed_index(window, "d1", now) == day - 1
    with freeze_time("2008-11-20T21:00:00Z"):
        assert latest_closed_index(window, "d1", datetime.now(UTC)) == day


def test_a_weekly_bar_stamped_at_midnight_utc_belongs_to_the_coming_week() -> None:
    """Some vendors stamp weekly bars 00:00 UTC Monday (Sunday evening in New York): it closes that Friday."""
    ts = sample_bars("IBM", "w1")["ts"].iloc[-100:]
    midnight = ts.dt.normalize()  # the same weeks, stamped 00:00 UTC on their first trading day
    grid = SessionGrid.from_history(midnight)
    assert bar_close_time(pd.Timestamp("2013-02-25T00:00:00Z"), "w1", grid) == utc("2013-03-01T21:00:00Z")
    assert latest_closed_index(midnight.reset_index(drop=True), "w1", utc("2013-02-27T12:00:00Z")) == 98


def test_a_daily_bar_stamped_at_midnight_utc_closes_at_its_sessions_close() -> None:
    ts = sample_bars("GOOG", "d1")["ts"].iloc[-300:].dt.normalize().reset_index(drop=True)
    grid = SessionGrid.from_history(ts)
    assert grid.exchange_days
    # 2013-03-01 00:00Z is Thursday 19:00 EST: Friday's session, which closes 21:00Z
    assert bar_close_time(pd.Timestamp("2013-03-01T00:00:00Z"), "d1", grid) == utc("2013-03-01T21:00:00Z")
    assert latest_closed_index(ts, "d1", utc("2013-03-01T20:00:00Z")) == len(ts) - 2
