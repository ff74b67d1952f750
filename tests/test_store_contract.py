"""One contract, two stores: every test here runs against the embedded SQLite store and the Supabase store
(official client -> PostgREST -> PostgreSQL, started by scripts/local_supabase.sh)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.src.data import feature_chunks
from ml.src.data.local_db import SqliteStore, format_ts
from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    ModelVersionRecord,
    MonitoringThresholds,
    ResultRecord,
    RunOutcome,
    RunRecord,
)
from ml.src.data.store import StoreError, TrainingStore
from ml.src.data.supabase_db import SupabaseStore
from ml.src.features.technical_indicators import FEATURE_COLUMNS, WARMUP_BARS, add_technical_features
from tests.factories import sample_bars

SHA = "ab" * 32


@pytest.fixture(params=["embedded", "supabase"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrainingStore]:
    if request.param == "embedded":
        s: TrainingStore = SqliteStore(tmp_path / "contract.sqlite3")
    else:
        stack = request.getfixturevalue("supabase_stack")
        s = SupabaseStore(
            stack["SUPABASE_URL"], stack["SUPABASE_SERVICE_ROLE_KEY"], max_retries=1, backoff_s=0.01
        )
    yield s
    s.close()


@pytest.fixture()
def symbol() -> str:
    # Unique per test: the Supabase stack is shared by the whole session.
    return "T" + uuid.uuid4().hex[:8].upper()


def new_run(store: TrainingStore) -> str:
    run_id = str(uuid.uuid4())
    store.start_run(
        RunRecord(run_id=run_id, started_at=datetime.now(UTC), config={"x": 1}, scope={"s": ["A"]})
    )
    return run_id


def test_bars_round_trip_exactly(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("GOOG", "d1", last=300)
    assert store.upsert_bars(symbol, "d1", bars) == 300
    got = store.read_bars(symbol, "d1")
    assert list(got.columns) == ["ts", "open", "high", "low", "close", "volume"]
    assert str(got["ts"].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(got, bars, check_dtype=False)
    np.testing.assert_array_equal(got["close"].to_numpy(), bars["close"].to_numpy())


def test_read_bars_limit_end_start(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("GSPC", "d1", last=200)
    store.upsert_bars(symbol, "d1", bars)
    last50 = store.read_bars(symbol, "d1", limit=50)
    assert last50["ts"].tolist() == bars["ts"].iloc[-50:].tolist()
    end = bars["ts"].iloc[99]
    upto = store.read_bars(symbol, "d1", end=end, limit=10)
    assert upto["ts"].tolist() == bars["ts"].iloc[90:100].tolist()
    window = store.read_bars(symbol, "d1", start=bars["ts"].iloc[10], end=bars["ts"].iloc[19])
    assert window["ts"].tolist() == bars["ts"].iloc[10:20].tolist()
    assert store.read_bars(symbol, "m15").empty
    assert store.read_bars("NOPE" + symbol, "d1").empty


def test_reads_page_past_the_row_cap(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("IXIC", "d1")  # 2,500 bars: two full 1,000-row pages and a partial one
    store.upsert_bars(symbol, "d1", bars)
    assert store.count_bars(symbol, "d1") == 2500
    got = store.read_bars(symbol, "d1")
    assert len(got) == 2500 and got["ts"].is_monotonic_increasing
    assert got["ts"].tolist() == bars["ts"].tolist()
    assert len(store.read_bars(symbol, "d1", limit=2100)) == 2100


def test_upsert_is_idempotent_and_replaces_values(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("IBM", "w1", last=40)
    store.upsert_bars(symbol, "w1", bars)
    store.upsert_bars(symbol, "w1", bars)
    assert store.count_bars(symbol, "w1") == 40
    corrected = bars.iloc[-1:].copy()
    corrected["volume"] = corrected["volume"] + 1
    store.upsert_bars(symbol, "w1", corrected)
    assert store.read_bars(symbol, "w1", limit=1)["volume"].iloc[0] == corrected["volume"].iloc[0]
    assert store.count_bars(symbol, "w1") == 40


def test_bad_timeframe_is_rejected(store: TrainingStore, symbol: str) -> None:
    with pytest.raises(StoreError):
        store.upsert_bars(symbol, "m5", sample_bars("IBM", "w1", last=3))


def test_symbols(store: TrainingStore, symbol: str) -> None:
    other = symbol + "X"
    store.upsert_symbols([symbol, other])
    assert {symbol, other} <= set(store.list_active_symbols())
    store.upsert_symbols([other], active=False)
    active = store.list_active_symbols()
    assert symbol in active and other not in active


def test_feature_cache_round_trip(store: TrainingStore, symbol: str) -> None:
    ts = sample_bars("GSPC", "d1", last=1200)["ts"]
    rng = np.random.default_rng(7)  # cache payload only: arbitrary floats must survive the trip bit for bit
    frame = pd.DataFrame({"ts": ts, "f_a": rng.normal(size=len(ts)), "f_b": rng.normal(size=len(ts)) * 1e-9})
    assert store.upsert_feature_cache(symbol, "d1", "v-test", frame) == 1200
    got = store.read_feature_cache(symbol, "d1", "v-test", ts.iloc[0], ts.iloc[-1])
    assert got["ts"].tolist() == ts.tolist()
    np.testing.assert_array_equal(got["f_a"].to_numpy(), frame["f_a"].to_numpy())
    np.testing.assert_array_equal(got["f_b"].to_numpy(), frame["f_b"].to_numpy())
    part = store.read_feature_cache(symbol, "d1", "v-test", ts.iloc[10], ts.iloc[19])
    assert len(part) == 10
    assert store.read_feature_cache(symbol, "d1", "v-other", ts.iloc[0], ts.iloc[-1]).empty
    bad = frame.iloc[:2].copy()
    bad.loc[0, "f_a"] = np.nan
    with pytest.raises(StoreError, match="non-finite"):
        store.upsert_feature_cache(symbol, "d1", "v-test", bad)


def test_run_ledger_and_results(store: TrainingStore, symbol: str) -> None:
    run_id = new_run(store)
    assert store.get_run(run_id)["status"] == "running"
    assert store.get_run(run_id)["heartbeat_at"] is None
    store.heartbeat(run_id)
    assert store.get_run(run_id)["heartbeat_at"] is not None
    trained = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = ResultRecord(
        run_id=run_id,
        symbol=symbol,
        timeframe="d1",
        status="succeeded",
        horizon_bars=5,
        n_train=10,
        n_valid=5,
        n_test=5,
        split={"purge_bars": 5},
        weights={"rf": 0.4, "gb": 0.6},
        metrics={"ensemble": {"test_accuracy": 0.5}},
        artifact_path="x.joblib",
        artifact_sha256=SHA,
        duration_s=1.5,
    )
    version = ModelVersionRecord(
        symbol=symbol,
        timeframe="d1",
        run_id=run_id,
        artifact_path="x.joblib",
        artifact_sha256=SHA,
        feature_version="ta-v1",
        trained_at=trained,
        weights={"rf": 0.4, "gb": 0.6},
    )
    store.record_result(result, version)
    store.record_result(
        ResultRecord(run_id=run_id, symbol=symbol, timeframe="h1", status="failed", error="no bars")
    )
    store.finish_run(
        run_id,
        RunOutcome(
            status="partial", finished_at=trained + timedelta(minutes=1), n_pairs=2, n_succeeded=1, n_failed=1
        ),
    )
    run = store.get_run(run_id)
    assert run["status"] == "partial" and run["n_failed"] == 1 and run["config"] == {"x": 1}
    rows = store.list_results(run_id)
    assert [(r["timeframe"], r["status"]) for r in rows] == [("d1", "succeeded"), ("h1", "failed")]
    assert rows[0]["metrics"] == {"ensemble": {"test_accuracy": 0.5}} and rows[0]["artifact_sha256"] == SHA
    versions = store.list_model_versions(symbol, "d1")
    assert (
        len(versions) == 1 and versions[0]["artifact_sha256"] == SHA and versions[0]["is_champion"] is False
    )
    assert pd.Timestamp(versions[0]["trained_at"]) == pd.Timestamp(trained)


def test_result_and_model_version_are_written_together(store: TrainingStore, symbol: str) -> None:
    run_id = new_run(store)
    result = ResultRecord(
        run_id=run_id, symbol=symbol, timeframe="w1", status="succeeded", artifact_sha256=SHA
    )
    broken = ModelVersionRecord(
        symbol=symbol,
        timeframe="w1",
        run_id=run_id,
        artifact_path="y",
        artifact_sha256="nothex",
        feature_version="ta-v1",
        trained_at=datetime.now(UTC),
    )
    with pytest.raises(StoreError):
        store.record_result(result, broken)
    assert store.list_results(run_id) == []
    assert store.list_model_versions(symbol, "w1") == []


def test_bad_status_is_rejected(store: TrainingStore, symbol: str) -> None:
    run_id = new_run(store)
    with pytest.raises(StoreError):
        store.record_result(ResultRecord(run_id=run_id, symbol=symbol, timeframe="d1", status="great"))


def _expire(store: TrainingStore, request: pytest.FixtureRequest, name: str) -> None:
    """Move a lease's expiry into the past, as if its holder died long ago."""
    if isinstance(store, SqliteStore):
        store._write(
            "update job_leases set expires_at = ? where name = ?", ("2000-01-01T00:00:00.000000Z", name)
        )
    else:
        pg = request.getfixturevalue("pg")
        pg.execute("update job_leases set expires_at = now() - interval '1 hour' where name = %s", (name,))


def test_leases_all_or_none(store: TrainingStore, symbol: str) -> None:
    x, y, z = (f"train:{symbol}:{tf}" for tf in ("d1", "h1", "w1"))
    a = store.acquire_leases([x, y], "host-a:1:run-a", 600, None)
    assert a.acquired and set(a.names) == {x, y} and a.expires_at is not None
    b = store.acquire_leases([z, y], "host-b:2:run-b", 600, None)
    assert not b.acquired and b.name == y and b.holder == "host-a:1:run-a" and b.expires_at is not None
    # nothing of b's request was taken: z is still free
    c = store.acquire_leases([z], "host-c:3:run-c", 600, None)
    assert c.acquired
    assert store.acquire_leases([x], "host-a:1:run-a", 600, None).acquired  # re-entrant for its holder
    assert store.renew_leases([x, y], "host-a:1:run-a", 600) == 2
    assert store.renew_leases([x, z], "host-a:1:run-a", 600) == 1  # z is not ours: the caller lost it
    assert store.release_leases([x, y], "host-b:2:run-b") == 0
    assert store.release_leases([x, y], "host-a:1:run-a") == 2
    assert store.acquire_leases([x, y], "host-b:2:run-b", 600, None).acquired
    store.release_leases([x, y], "host-b:2:run-b")
    store.release_leases([z], "host-c:3:run-c")


def test_expired_lease_is_taken_over_and_its_run_abandoned(
    store: TrainingStore, symbol: str, request: pytest.FixtureRequest
) -> None:
    name = f"train:{symbol}:d1"
    dead_run = new_run(store)
    assert store.acquire_leases([name], "host-a:1:dead", 600, dead_run).acquired
    assert not store.acquire_leases([name], "host-b:2:live", 600, None).acquired
    _expire(store, request, name)
    grant = store.acquire_leases([name], "host-b:2:live", 600, None)
    assert grant.acquired
    assert [(t["holder"], t["run_id"]) for t in grant.taken_over] == [("host-a:1:dead", dead_run)]
    assert store.mark_runs_abandoned([dead_run], "abandoned: holder died") == 1
    assert store.get_run(dead_run)["status"] == "abandoned"
    assert store.mark_runs_abandoned([dead_run], "again") == 0  # only runs still marked running
    assert store.renew_leases([name], "host-a:1:dead", 600) == 0  # the dead holder lost it
    store.release_leases([name], "host-b:2:live")


def test_a_lease_whose_run_has_a_final_status_is_taken_over(store: TrainingStore, symbol: str) -> None:
    """Issue 21 case 5: the run ended (recorded `failed`) but its release never landed: nobody will renew the
    lease, so the next run must not wait out its TTL."""
    name = f"train:{symbol}:d1"
    run = new_run(store)
    assert store.acquire_leases([name], "host-a:1:" + run, 900, run).acquired
    assert not store.acquire_leases([name], "host-b:2:next", 900, None).acquired  # still running: held
    store.finish_run(run, RunOutcome(status="failed", finished_at=datetime.now(UTC), error="db down"))
    grant = store.acquire_leases([name], "host-b:2:next", 900, None)
    assert grant.acquired
    assert [(t["holder"], t["run_id"], t["reason"]) for t in grant.taken_over] == [
        ("host-a:1:" + run, run, "finished")
    ]
    assert store.get_run(run)["status"] == "failed"  # its final status stands
    assert store.renew_leases([name], "host-a:1:" + run, 900) == 0
    store.release_leases([name], "host-b:2:next")


def test_a_lease_of_a_holder_proved_gone_is_reclaimed_and_only_that_one(
    store: TrainingStore, symbol: str
) -> None:
    x, y = f"train:{symbol}:d1", f"train:{symbol}:w1"
    run = new_run(store)
    dead = "host-a:1:" + run
    assert store.acquire_leases([x], dead, 900, run).acquired
    assert store.acquire_leases([y], "host-c:3:live", 900, None).acquired
    # naming a dead holder frees only its lease: a live holder still refuses the whole set, and nothing moves
    refused = store.acquire_leases([x, y], "host-b:2:next", 900, None, reclaim=[dead])
    assert not refused.acquired and refused.name == y and refused.holder == "host-c:3:live"
    assert store.renew_leases([x], dead, 900) == 1
    grant = store.acquire_leases([x], "host-b:2:next", 900, None, reclaim=[dead])
    assert grant.acquired
    assert [(t["run_id"], t["reason"]) for t in grant.taken_over] == [(run, "holder gone")]
    assert store.renew_leases([x], dead, 900) == 0
    store.release_leases([x], "host-b:2:next")
    store.release_leases([y], "host-c:3:live")


def test_artifact_paths_are_every_path_the_ledger_names(store: TrainingStore, symbol: str) -> None:
    run = new_run(store)
    path = f"{symbol}/d1/{symbol}_d1_20260102T030405Z_{run[:8]}.joblib"
    version = ModelVersionRecord(
        symbol=symbol,
        timeframe="d1",
        run_id=run,
        artifact_path=path,
        artifact_sha256=SHA,
        feature_version="ta-v1",
        trained_at=datetime.now(UTC),
        weights={"rf": 1.0},
    )
    result = ResultRecord(
        run_id=run, symbol=symbol, timeframe="d1", status="succeeded", artifact_path=path, artifact_sha256=SHA
    )
    store.record_result(result, version)
    store.record_result(ResultRecord(run_id=run, symbol=symbol, timeframe="w1", status="failed", error="x"))
    paths = store.artifact_paths()
    assert path in paths and None not in paths and "" not in paths


# ---- forecasts -----------------------------------------------------------------------------------------------------


def forecast(symbol: str, bar_ts: datetime, version: int = 1, **override: object) -> ForecastRecord:
    values: dict = {
        "symbol": symbol,
        "timeframe": "d1",
        "bar_ts": bar_ts,
        "horizon_bars": 5,
        "target_ts": bar_ts + timedelta(days=7),
        "p_bearish": 0.2,
        "p_neutral": 0.3,
        "p_bullish": 0.5,
        "label": "BULLISH",
        "direction_score": 0.3,
        "model_version_id": version,
        "model_trained_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "model_run_id": str(uuid.uuid4()),
        "model_sha256": SHA,
        "bar_close": 100.0,
        "threshold_lower": -0.009,
        "threshold_upper": 0.009,
        "persistence_label": "NEUTRAL",
    }
    values.update(override)
    return ForecastRecord(**values)


def test_forecasts_are_written_once_per_bar_and_model_version(store: TrainingStore, symbol: str) -> None:
    ts = sample_bars("IBM", "d1").iloc[-3:]["ts"]
    t0, t1 = ts.iloc[0].to_pydatetime(), ts.iloc[1].to_pydatetime()
    assert store.insert_forecast(forecast(symbol, t1)) is True
    assert store.insert_forecast(forecast(symbol, t0)) is True
    assert store.insert_forecast(forecast(symbol, t1, p_bullish=0.4, p_neutral=0.4)) is False  # exists: kept
    assert store.insert_forecast(forecast(symbol, t1, version=2)) is True  # another model, same bar
    rows = store.list_forecasts(symbol, "d1")
    assert [(pd.Timestamp(r["bar_ts"]), r["model_version_id"]) for r in rows] == [
        (pd.Timestamp(t0), 1),
        (pd.Timestamp(t1), 1),
        (pd.Timestamp(t1), 2),
    ]
    assert rows[1]["p_bullish"] == 0.5 and rows[1]["created_at"] is not None
    assert pd.Timestamp(rows[0]["target_ts"]) == pd.Timestamp(t0 + timedelta(days=7))
    assert store.list_forecasts(symbol, "h1") == [] and store.list_forecasts("NOPE" + symbol) == []


def test_forecast_outcomes_are_recorded_once(store: TrainingStore, symbol: str) -> None:
    ts = sample_bars("IBM", "d1").iloc[-10:].reset_index(drop=True)["ts"]
    store.insert_forecast(forecast(symbol, ts.iloc[0].to_pydatetime()))
    store.insert_forecast(forecast(symbol, ts.iloc[1].to_pydatetime()))
    first, second = store.list_forecasts(symbol, "d1", unrealised_only=True)
    outcome = ForecastOutcome(
        forecast_id=int(first["id"]),
        realised_bar_ts=ts.iloc[5].to_pydatetime(),
        realised_close=101.5,
        realised_return=0.015,
        realised_label="BULLISH",
    )
    assert store.record_forecast_outcomes([outcome]) == 1
    assert store.record_forecast_outcomes([outcome]) == 0  # already realised: never overwritten
    assert [r["id"] for r in store.list_forecasts(symbol, "d1", unrealised_only=True)] == [second["id"]]
    done = store.list_forecasts(symbol, "d1")[0]
    assert (done["realised_return"], done["realised_label"], done["realised_close"]) == (
        0.015,
        "BULLISH",
        101.5,
    )
    assert pd.Timestamp(done["realised_bar_ts"]) == ts.iloc[5] and done["realised_at"] is not None


@pytest.mark.parametrize(
    "override",
    [{"p_bearish": 0.5}, {"label": "UP"}, {"timeframe": "m5"}, {"direction_score": 2.0}],
    ids=["probabilities-not-summing-to-1", "label", "timeframe", "direction"],
)
def test_bad_forecasts_are_rejected(store: TrainingStore, symbol: str, override: dict) -> None:
    with pytest.raises(StoreError):
        store.insert_forecast(forecast(symbol, datetime(2024, 1, 2, 14, 30, tzinfo=UTC), **override))
    assert store.list_forecasts(symbol) == []


# ---- issue 8: the universe, revisions, the feature cache, identifiers, the ledger -----------------------------------


def other_writer(store: TrainingStore, request: pytest.FixtureRequest, sql: str, *params: Any) -> None:
    """Plain SQL from another connection, as any other writer of the database would run it ("?" placeholders)."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        try:
            with conn:
                conn.execute(sql, tuple(format_ts(p) if isinstance(p, datetime) else p for p in params))
        finally:
            conn.close()
    else:
        request.getfixturevalue("pg").execute(sql.replace("?", "%s"), params)


def real_features(symbol: str, timeframe: str, n: int) -> pd.DataFrame:
    bars = sample_bars(symbol, timeframe, last=n + WARMUP_BARS)
    feats = add_technical_features(bars).iloc[WARMUP_BARS:].reset_index(drop=True)
    return feats[["ts", *FEATURE_COLUMNS]]


def test_pairs_with_bars_is_the_universe(store: TrainingStore, symbol: str) -> None:
    other = symbol + "B"
    store.upsert_bars(symbol, "d1", sample_bars("IBM", "d1", last=5))
    store.upsert_bars(other, "w1", sample_bars("IBM", "w1", last=5))
    got = store.pairs_with_bars([symbol, other, "NOPE" + symbol], ["d1", "w1", "h1"])
    assert got == {(symbol, "d1"), (other, "w1")}
    assert store.pairs_with_bars([], ["d1"]) == set()


def test_revision_moves_only_when_bars_change(
    store: TrainingStore, symbol: str, request: pytest.FixtureRequest
) -> None:
    bars = sample_bars("GSPC", "d1", last=60)
    assert store.bar_revision(symbol, "d1") is None
    store.upsert_bars(symbol, "d1", bars.iloc[:50])
    r1 = store.bar_revision(symbol, "d1")
    assert r1 is not None
    store.upsert_bars(symbol, "d1", bars.iloc[:50])  # the same bars again: not a change
    assert store.bar_revision(symbol, "d1") == r1
    fixed = bars.iloc[[10]].copy()
    fixed["close"] = fixed["high"]
    store.upsert_bars(symbol, "d1", fixed)
    r2 = store.bar_revision(symbol, "d1")
    assert r2 is not None and r2 > r1
    other_writer(
        store,
        request,
        "delete from ohlc_bars where symbol = ? and timeframe = ? and ts = ?",
        symbol,
        "d1",
        bars["ts"].iloc[20].to_pydatetime(),
    )
    r3 = store.bar_revision(symbol, "d1")
    assert r3 is not None and r3 > r2
    store.upsert_bars(symbol, "d1", bars.iloc[50:])  # newer bars: a change too
    r4 = store.bar_revision(symbol, "d1")
    assert r4 is not None and r4 > r3
    assert store.bar_revision(symbol, "w1") is None


@pytest.mark.parametrize("change", ["update", "insert", "delete"])
def test_a_bar_changed_by_any_writer_invalidates_the_cache_from_that_bar_on(
    store: TrainingStore, symbol: str, request: pytest.FixtureRequest, change: str
) -> None:
    feats = real_features("IBM", "d1", 600)  # about 2.4 years: several yearly chunks
    bars = sample_bars("IBM", "d1", last=600)
    store.upsert_bars(symbol, "d1", bars)
    assert store.upsert_feature_cache(
        symbol, "d1", "v-test", feats, revision=store.bar_revision(symbol, "d1")
    )
    first, last = feats["ts"].iloc[0], feats["ts"].iloc[-1]
    assert len(store.read_feature_cache(symbol, "d1", "v-test", first, last)) == 600

    at = bars["ts"].iloc[400].to_pydatetime()
    if change == "update":
        other_writer(
            store,
            request,
            "update ohlc_bars set close = high where symbol = ? and timeframe = ? and ts = ?",
            symbol,
            "d1",
            at,
        )
    elif change == "insert":  # a bar that was missing, between two cached ones
        at = (bars["ts"].iloc[399] + (bars["ts"].iloc[400] - bars["ts"].iloc[399]) / 2).to_pydatetime()
        other_writer(
            store,
            request,
            "insert into ohlc_bars (symbol, timeframe, ts, open, high, low, close, volume)"
            " values (?, ?, ?, 10, 11, 9, 10.5, 100)",
            symbol,
            "d1",
            at,
        )
    else:
        other_writer(
            store,
            request,
            "delete from ohlc_bars where symbol = ? and timeframe = ? and ts = ?",
            symbol,
            "d1",
            at,
        )

    left = store.read_feature_cache(symbol, "d1", "v-test", first, last)
    assert not (left["ts"] >= pd.Timestamp(at)).any(), "features at or after the changed bar must go"
    # rows before the chunk holding the change stay (the chunk itself may go whole: recomputed next time)
    chunk_start = feature_chunks.chunk_start_us(feature_chunks.timestamps_to_us([pd.Timestamp(at)]), "d1")[0]
    before = feats[feature_chunks.timestamps_to_us(feats["ts"]) < chunk_start]
    assert len(before) > 100 and set(before["ts"]) <= set(left["ts"])
    kept = left.set_index("ts").loc[before["ts"]]
    np.testing.assert_array_equal(kept.to_numpy(), before.set_index("ts").to_numpy())


def test_newer_bars_keep_the_cache(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("GOOG", "d1", last=WARMUP_BARS + 310)
    known = bars.iloc[: WARMUP_BARS + 300]
    feats = add_technical_features(known).iloc[WARMUP_BARS:][["ts", *FEATURE_COLUMNS]]
    store.upsert_bars(symbol, "d1", known)
    store.upsert_feature_cache(symbol, "d1", "v-test", feats)
    store.upsert_bars(symbol, "d1", bars.iloc[WARMUP_BARS + 300 :])  # the nights' new bars, after the cache
    got = store.read_feature_cache(symbol, "d1", "v-test", feats["ts"].iloc[0], feats["ts"].iloc[-1])
    assert len(got) == 300


def test_a_stale_cache_write_is_dropped(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("IXIC", "d1", last=250)
    feats = real_features("IXIC", "d1", 50)
    store.upsert_bars(symbol, "d1", bars)
    read_at = store.bar_revision(symbol, "d1")  # the job reads the revision, then the bars ...
    fixed = bars.iloc[[-10]].copy()
    fixed["close"] = fixed["low"]
    store.upsert_bars(symbol, "d1", fixed)  # ... another writer corrects a bar meanwhile ...
    assert store.upsert_feature_cache(symbol, "d1", "v-test", feats, revision=read_at) == 0  # ... dropped
    assert store.read_feature_cache(symbol, "d1", "v-test", feats["ts"].iloc[0], feats["ts"].iloc[-1]).empty
    now = store.bar_revision(symbol, "d1")
    assert store.upsert_feature_cache(symbol, "d1", "v-test", feats, revision=now) == 50


def cache_storage(store: TrainingStore, request: pytest.FixtureRequest, symbol: str) -> tuple[int, int, int]:
    """(rows, cached bars, bytes of feature values) of a symbol in the store's cache table."""
    sql = (
        "select count(*), coalesce(sum(n_rows), 0), coalesce(sum(length(values_data)), 0)"
        " from feature_chunks where symbol = ?"
    )
    if isinstance(store, SqliteStore):
        row = store._query(sql, (symbol,))[0]
    else:
        row = (
            request.getfixturevalue("pg")
            .execute(sql.replace("?", "%s").replace("length(", "octet_length("), (symbol,))
            .fetchone()
        )
    return int(row[0]), int(row[1]), int(row[2])


def test_feature_cache_is_compact(store: TrainingStore, symbol: str, request: pytest.FixtureRequest) -> None:
    feats = real_features("IBM", "d1", 1200)  # 1,200 bars x 63 features
    assert store.upsert_feature_cache(symbol, "d1", "v-test", feats) == 1200
    rows, cached, value_bytes = cache_storage(store, request, symbol)
    assert cached == 1200
    assert rows <= 6, "one row per chunk of bars (a year of d1), not one per bar"
    assert value_bytes == 8 * 1200 * len(FEATURE_COLUMNS), "8 bytes a value"
    got = store.read_feature_cache(symbol, "d1", "v-test", feats["ts"].iloc[0], feats["ts"].iloc[-1])
    np.testing.assert_array_equal(
        got[list(FEATURE_COLUMNS)].to_numpy(), feats[list(FEATURE_COLUMNS)].to_numpy()
    )


def test_feature_cache_appends_and_merges(
    store: TrainingStore, symbol: str, request: pytest.FixtureRequest
) -> None:
    feats = real_features("GSPC", "d1", 400)
    store.upsert_feature_cache(symbol, "d1", "v-test", feats.iloc[:399])
    rows_before = cache_storage(store, request, symbol)[0]
    store.upsert_feature_cache(symbol, "d1", "v-test", feats.iloc[399:])  # a night's one new row
    rows, cached, _ = cache_storage(store, request, symbol)
    assert cached == 400 and rows in (rows_before, rows_before + 1)  # appended to its chunk (or a new one)
    # overlapping rows: the new values win, the others stay
    changed = feats.iloc[100:300].copy()
    changed["ret_1"] = changed["ret_1"] + 1.0
    store.upsert_feature_cache(symbol, "d1", "v-test", changed)
    got = store.read_feature_cache(symbol, "d1", "v-test", feats["ts"].iloc[0], feats["ts"].iloc[-1])
    assert got["ts"].tolist() == feats["ts"].tolist()
    expected = feats["ret_1"].to_numpy().copy()
    expected[100:300] += 1.0
    np.testing.assert_array_equal(got["ret_1"].to_numpy(), expected)


def test_sub_microsecond_duplicates_are_refused(store: TrainingStore, symbol: str) -> None:
    bars = sample_bars("IBM", "d1", last=3)
    bars["ts"] = bars["ts"].astype("datetime64[ns, UTC]")
    bars.loc[1, "ts"] = bars.loc[0, "ts"] + pd.Timedelta(nanoseconds=500)  # the same microsecond
    with pytest.raises(StoreError, match="share ts"):
        store.upsert_bars(symbol, "d1", bars)
    assert store.count_bars(symbol, "d1") == 0
    one = sample_bars("IBM", "d1", last=1)
    one["ts"] = one["ts"].astype("datetime64[ns, UTC]")
    one.loc[0, "ts"] = one.loc[0, "ts"] + pd.Timedelta(nanoseconds=999)
    store.upsert_bars(symbol, "d1", one)  # a single bar: stored at its microsecond, as both stores keep it
    assert store.read_bars(symbol, "d1")["ts"].iloc[0] == sample_bars("IBM", "d1", last=1)["ts"].iloc[0]


@pytest.mark.parametrize("bad", ["../../X", "BRK/B", "a b", "", ".HIDDEN", "X" * 21, "aapl"])
def test_stores_refuse_invalid_identifiers(store: TrainingStore, bad: str) -> None:
    bars = sample_bars("IBM", "d1", last=3)
    with pytest.raises(StoreError, match="invalid symbol"):
        store.upsert_bars(bad, "d1", bars)
    with pytest.raises(StoreError, match="invalid timeframe"):
        store.upsert_bars("IBM", "d2", bars)
    with pytest.raises(StoreError, match="invalid symbol"):
        store.upsert_symbols([bad])
    with pytest.raises(StoreError, match="invalid symbol"):
        store.upsert_feature_cache(bad, "d1", "v", real_features("IBM", "d1", 2))
    run_id = new_run(store)
    ok = ResultRecord(run_id=run_id, symbol=bad, timeframe="d1", status="succeeded", artifact_sha256=SHA)
    with pytest.raises(StoreError, match="invalid symbol"):
        store.record_result(ok)
    assert store.list_results(run_id) == []
    assert bad not in store.list_active_symbols()


def test_find_result_reads_back(store: TrainingStore, symbol: str) -> None:
    run_id = new_run(store)
    assert store.find_result(run_id, symbol, "d1") is None
    store.record_result(
        ResultRecord(run_id=run_id, symbol=symbol, timeframe="d1", status="skipped", error="x")
    )
    row = store.find_result(run_id, symbol, "d1")
    assert row is not None and row["status"] == "skipped" and row["error"] == "x"
    assert store.find_result(run_id, symbol, "w1") is None


def test_last_training_reports_data_end_and_revision(store: TrainingStore, symbol: str) -> None:
    assert store.last_training(symbol, "d1") is None
    run_id = new_run(store)
    split = {"data_end": "2024-05-06T13:30:00+00:00", "data_revision": 7}
    store.record_result(
        ResultRecord(run_id=run_id, symbol=symbol, timeframe="d1", status="succeeded", split=split)
    )
    last = store.last_training(symbol, "d1")
    assert last is not None and last.revision == 7
    assert pd.Timestamp(last.data_end) == pd.Timestamp("2024-05-06T13:30:00Z")


def test_start_sweep_abandons_runs_without_a_heartbeat(
    store: TrainingStore, request: pytest.FixtureRequest
) -> None:
    dead, quiet_but_alive, mine = new_run(store), new_run(store), new_run(store)
    store.heartbeat(dead)
    store.heartbeat(quiet_but_alive)
    old = datetime.now(UTC) - timedelta(hours=2)
    other_writer(
        store,
        request,
        "update training_runs set heartbeat_at = ?, started_at = ? where run_id = ?",
        old,
        old,
        dead,
    )
    other_writer(store, request, "update training_runs set started_at = ? where run_id = ?", old, mine)
    swept = store.abandon_stale_runs(900, "abandoned: no heartbeat", exclude=mine)
    assert dead in swept and quiet_but_alive not in swept and mine not in swept
    assert store.get_run(dead)["status"] == "abandoned" and store.get_run(dead)["finished_at"]
    assert store.get_run(quiet_but_alive)["status"] == "running"
    assert store.get_run(mine)["status"] == "running"
    assert dead not in store.abandon_stale_runs(900, "again")  # only runs still running


def test_monitoring_thresholds_round_trip(store: TrainingStore) -> None:
    current = store.read_monitoring_thresholds()
    assert current is not None  # the defaults, before any run published its own
    mine = MonitoringThresholds(
        metric="test_accuracy",
        retrain_drop=0.07,
        disable_runs=4,
        history_runs=6,
        max_model_age_days={"m15": 2.0, "h1": 7.0, "h4": 10.0, "d1": 14.5, "w1": 45.0},
    )
    try:
        store.publish_monitoring_thresholds(mine, by="test")
        assert store.read_monitoring_thresholds() == mine
    finally:
        store.publish_monitoring_thresholds(current)  # the Supabase stack is shared by the session


# ---- issue 21: outcomes only from valid bars, recomputed when the bars change ------------------------------------


def realised(store: TrainingStore, symbol: str) -> dict:
    [row] = store.list_forecasts(symbol, "d1")
    return row


def test_outcomes_come_only_from_valid_bars_and_follow_corrections(
    store: TrainingStore, symbol: str, request: pytest.FixtureRequest
) -> None:
    from ml.src.training.outcomes import fill_outcomes

    bars = sample_bars("IBM", "d1", last=30).reset_index(drop=True)
    ts, close = bars["ts"], bars["close"].to_numpy(dtype="float64")
    store.upsert_bars(symbol, "d1", bars.iloc[:20])
    store.insert_forecast(forecast(symbol, ts.iloc[10].to_pydatetime()))  # h = 5: realised by bar 15
    set_bar = "update ohlc_bars set close = ?, high = ? where symbol = ? and timeframe = 'd1' and ts = ?"

    # Another tool writes a non-finite close at t + h: no outcome (before: realised_return = inf, BULLISH).
    other_writer(store, request, set_bar, float("inf"), float("inf"), symbol, ts.iloc[15].to_pydatetime())
    assert fill_outcomes(store, symbol, "d1") == 0
    assert realised(store, symbol)["realised_return"] is None

    # The bar corrected: the next fill realises the forecast from it, at the pair's current revision.
    store.upsert_bars(symbol, "d1", bars.iloc[15:16])
    assert fill_outcomes(store, symbol, "d1") == 1
    row = realised(store, symbol)
    assert row["realised_return"] == close[15] / close[10] - 1.0 and row["realised_close"] == close[15]
    assert row["realised_revision"] == store.bar_revision(symbol, "d1")
    assert fill_outcomes(store, symbol, "d1") == 0

    # A new bar changes the revision, not this outcome: re-stamped, not rewritten.
    store.upsert_bars(symbol, "d1", bars.iloc[20:21])
    assert fill_outcomes(store, symbol, "d1") == 0
    again = realised(store, symbol)
    assert again["realised_revision"] == store.bar_revision(symbol, "d1") != row["realised_revision"]
    assert again["realised_at"] == row["realised_at"] and again["realised_return"] == row["realised_return"]

    # The realised bar corrected (+5 % on every price): recomputed on the next fill.
    fixed = bars.iloc[15:16].copy()
    fixed[["open", "high", "low", "close"]] *= 1.05
    store.upsert_bars(symbol, "d1", fixed)
    assert fill_outcomes(store, symbol, "d1") == 1
    row = realised(store, symbol)
    assert row["realised_return"] == float(fixed["close"].iloc[0]) / close[10] - 1.0

    # Corrected into an implausible close (1e300, a million times the previous one): the outcome is withdrawn.
    other_writer(store, request, set_bar, 1e300, 1e300, symbol, ts.iloc[15].to_pydatetime())
    assert fill_outcomes(store, symbol, "d1") == 1
    row = realised(store, symbol)
    assert (row["realised_return"], row["realised_label"], row["realised_close"]) == (None, None, None)


def test_a_bar_after_now_is_refused_on_write_and_never_trained_on(store: TrainingStore, symbol: str) -> None:
    from freezegun import freeze_time

    from config.settings import Settings
    from ml.src.training.pair_result import PairRequest
    from ml.src.training.pipeline import prepare_pair

    bars = sample_bars("GOOG", "d1").reset_index(drop=True)
    now = bars["ts"].iloc[1499] + pd.Timedelta(hours=20)  # bar 1499 has closed, bar 1500 not yet opened
    with freeze_time(now):
        with pytest.raises(StoreError) as exc:
            store.upsert_bars(symbol, "d1", bars.iloc[1400:1501])
        assert str(exc.value) == (
            f"bar at {bars['ts'].iloc[1500].isoformat()} is in the future (now {now.isoformat()}): not written"
        )
        assert store.count_bars(symbol, "d1") == 0  # the whole write refused
    store.upsert_bars(symbol, "d1", bars)  # the real clock: all 2500 bars are history

    # The clock back at bar 1499 (as when another tool had written later bars): training reads up to now only.
    with freeze_time(now):
        prep = prepare_pair(store, PairRequest(symbol, "d1"), Settings(_env_file=None))
    assert (
        prep.split_info["data_end"] == bars["ts"].iloc[1499].isoformat()
    )  # before: bar 2499's, in the future


# ---- verdicts written back once the run's q-values are known (issue 19) ---------------------------------------------
def _judged(run_id: str, symbol: str, timeframe: str, p: float) -> tuple[ResultRecord, ModelVersionRecord]:
    metrics = {
        "ensemble": {"test_balanced_accuracy": 0.41},
        "verdict": {
            "verdict": "no-skill",
            "basis": "walk_forward",
            "p_value": p,
            "q_value": None,
            "fdr": 0.1,
        },
    }
    result = ResultRecord(
        run_id=run_id,
        symbol=symbol,
        timeframe=timeframe,
        status="succeeded",
        metrics=metrics,
        artifact_path=f"{timeframe}.joblib",
        artifact_sha256=SHA,
    )
    version = ModelVersionRecord(
        symbol=symbol,
        timeframe=timeframe,
        run_id=run_id,
        artifact_path=f"{timeframe}.joblib",
        artifact_sha256=SHA,
        feature_version="ta-v1",
        trained_at=datetime.now(UTC),
        metrics=metrics,
    )
    return result, version


def test_record_verdicts_rewrites_the_runs_verdicts(store: TrainingStore, symbol: str) -> None:
    from ml.src.training.stats import benjamini_hochberg

    run_id, other = new_run(store), new_run(store)
    ps = {"d1": 0.004, "w1": 0.03, "h1": 0.5}
    for tf, p in ps.items():
        store.record_result(*_judged(run_id, symbol, tf, p))
    store.record_result(*_judged(other, symbol, "h4", 0.004))  # another run's row: never touched
    store.record_result(
        ResultRecord(run_id=run_id, symbol=symbol, timeframe="m15", status="failed", error="x")
    )
    qs = dict(zip(ps, benjamini_hochberg(list(ps.values())), strict=True))
    assert qs == pytest.approx({"d1": 0.012, "w1": 0.045, "h1": 0.5})
    verdicts = {
        (symbol, tf): {
            "verdict": "skill" if qs[tf] <= 0.1 else "no-skill",
            "basis": "walk_forward",
            "p_value": p,
            "q_value": qs[tf],
            "fdr": 0.1,
        }
        for tf, p in ps.items()
    }
    failed_key = {
        (symbol, "m15"): {"verdict": "skill", "q_value": 0.0}
    }  # a failed pair has no verdict to change
    assert store.record_verdicts(run_id, {**verdicts, **failed_key}) == 3
    rows = {r["timeframe"]: r for r in store.list_results(run_id)}
    for tf in ps:
        assert rows[tf]["metrics"]["verdict"] == verdicts[(symbol, tf)]  # exact floats, whole dict replaced
        assert rows[tf]["metrics"]["ensemble"] == {"test_balanced_accuracy": 0.41}  # the rest kept
        (version,) = store.list_model_versions(symbol, tf)
        assert version["metrics"]["verdict"] == verdicts[(symbol, tf)]
    assert rows["m15"]["metrics"] is None
    (untouched,) = store.list_results(other)
    assert untouched["metrics"]["verdict"]["q_value"] is None
    assert store.list_model_versions(symbol, "h4")[0]["metrics"]["verdict"]["q_value"] is None
    assert store.record_verdicts(run_id, {}) == 0


def test_record_verdicts_is_all_pairs_or_none(
    store: TrainingStore, symbol: str, request: pytest.FixtureRequest
) -> None:
    run_id = new_run(store)
    for tf in ("d1", "w1"):
        store.record_result(*_judged(run_id, symbol, tf, 0.2))
    # another writer's rule refuses any change to the w1 row: the d1 row's change must roll back with it
    if isinstance(store, SqliteStore):
        other_writer(
            store,
            request,
            f"create trigger refuse_{symbol} before update on training_results"
            f" when new.symbol = '{symbol}' and new.timeframe = 'w1' begin select raise(abort, 'refused'); end",
        )
    else:
        pg = request.getfixturevalue("pg")
        pg.execute(
            f"create function public.refuse_{symbol.lower()}() returns trigger language plpgsql as "
            "$$ begin raise exception 'refused'; end $$"
        )
        pg.execute(
            f"create trigger refuse_{symbol.lower()} before update on public.training_results for each row "
            f"when (new.symbol = '{symbol}' and new.timeframe = 'w1') "
            f"execute function public.refuse_{symbol.lower()}()"
        )
        request.addfinalizer(
            lambda: pg.execute(
                f"drop trigger refuse_{symbol.lower()} on public.training_results;"
                f" drop function public.refuse_{symbol.lower()}()"
            )
        )
    new = {"verdict": "no-skill", "basis": "walk_forward", "p_value": 0.2, "q_value": 0.2, "fdr": 0.1}
    with pytest.raises(StoreError):
        store.record_verdicts(run_id, {(symbol, "d1"): new, (symbol, "w1"): new})
    for r in store.list_results(run_id):
        assert r["metrics"]["verdict"]["q_value"] is None, r["timeframe"]
    assert store.list_model_versions(symbol, "d1")[0]["metrics"]["verdict"]["q_value"] is None


# ---- issue 21 case 4: the schemas refuse invalid identifiers, whoever writes ------------------------------------------


HOSTILE_SYMBOLS = ["../../x", "../../X", "A/B", "abc", "A B", "^GSPC", ".HIDDEN", "X" * 21]


@pytest.mark.parametrize("bad", HOSTILE_SYMBOLS)
def test_schemas_refuse_an_invalid_symbol_from_another_writer(
    store: TrainingStore, request: pytest.FixtureRequest, symbol: str, bad: str
) -> None:
    # Plain SQL, past the store's own check: the CHECK constraints of both schemas hold on their own.
    ts = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    run_id = new_run(store)
    writes = {
        "symbols": ("insert into symbols (ticker, active, created_at) values (?, true, ?)", (ts,)),
        "ohlc_bars": (
            "insert into ohlc_bars (symbol, timeframe, ts, open, high, low, close, volume)"
            " values (?, 'd1', ?, 1, 1, 1, 1, 1)",
            (ts,),
        ),
        "bar_revisions": (
            "insert into bar_revisions (symbol, timeframe, revision, changed_at) values (?, 'w1', 7, ?)",
            (ts,),
        ),
        "training_results": (
            "insert into training_results (symbol, run_id, timeframe, status, created_at)"
            " values (?, ?, 'd1', 'failed', ?)",
            (run_id, ts),
        ),
    }
    if isinstance(store, SqliteStore):  # the embedded store keeps booleans as integers
        writes["symbols"] = (writes["symbols"][0].replace("true", "1"), writes["symbols"][1])
    for table, (sql, rest) in writes.items():
        other_writer(store, request, sql, symbol, *rest)  # the same statement with a valid symbol is written
        with pytest.raises(Exception, match=f"{table}_(symbol|ticker)_format") as exc:
            other_writer(store, request, sql, bad, *rest)
        assert type(exc.value).__name__ in ("IntegrityError", "CheckViolation"), (table, exc.value)
    assert store.find_result(run_id, symbol, "d1") is not None
    assert symbol in store.list_active_symbols() and bad not in store.list_active_symbols()


def test_a_symbol_with_a_caret_inside_is_valid_in_both_schemas(
    store: TrainingStore, request: pytest.FixtureRequest, symbol: str
) -> None:
    inner = symbol[:4] + "^=.-" + symbol[4:8]  # every allowed punctuation, inside
    other_writer(
        store,
        request,
        "insert into ohlc_bars (symbol, timeframe, ts, open, high, low, close, volume) values (?, 'd1', ?, 1, 1, 1, 1, 1)",
        inner,
        datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
    )
    assert store.count_bars(inner, "d1") == 1


def test_an_embedded_file_from_schema_3_gets_the_checks_and_keeps_its_rows(tmp_path: Path) -> None:
    """A file written before schema version 4: its tables are rebuilt with the checks, every row kept (an invalid
    one too, as Postgres' NOT VALID keeps it), the bar triggers still fire, and new invalid rows are refused."""
    from ml.src.data import sqlite_schema

    path = tmp_path / "v3.sqlite3"
    old_ticker = "check (ticker = upper(ticker) and length(ticker) between 1 and 20)"
    conn = sqlite3.connect(path)
    conn.executescript(
        sqlite_schema.fill_schema(
            sqlite_schema.SCHEMA_TEMPLATE, lambda t, c: old_ticker if t == "symbols" else ""
        )
    )
    bars = sample_bars("IBM", "w1", last=30)
    now = format_ts(datetime.now(UTC))
    with conn:
        conn.executemany(
            "insert into ohlc_bars values ('IBM', 'w1', ?, ?, ?, ?, ?, ?)",
            [(format_ts(r.ts), r.open, r.high, r.low, r.close, r.volume) for r in bars.itertuples()],
        )
        conn.execute(
            "insert into training_runs (run_id, status, started_at) values ('r1', 'failed', ?)", (now,)
        )
        conn.execute(
            "insert into training_results (run_id, symbol, timeframe, status, created_at)"
            " values ('r1', '../../x', 'd1', 'failed', ?)",
            (now,),
        )
        conn.execute("pragma user_version = 3")
    conn.close()

    with SqliteStore(path) as store:
        assert store.read_bars("IBM", "w1")["close"].tolist() == bars["close"].tolist()
        assert [r["symbol"] for r in store.list_results("r1")] == ["../../x"]  # kept; readers check it
        revision = store.bar_revision("IBM", "w1")
        store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=31).iloc[:1])  # an older bar: a change
        assert store.bar_revision("IBM", "w1") == (revision or 0) + 1  # the rebuilt table's trigger fired
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("pragma user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION == 4
        for table in sqlite_schema.CHECKED_TABLES:
            sql = conn.execute("select sql from sqlite_master where name = ?", (table,)).fetchone()[0]
            assert f"{table}_{'ticker' if table == 'symbols' else 'symbol'}_format" in sql, table
        with pytest.raises(sqlite3.IntegrityError, match="ohlc_bars_symbol_format"):
            conn.execute("insert into ohlc_bars values ('../../y', 'w1', ?, 1, 1, 1, 1, 1)", (now,))
        assert conn.execute("pragma foreign_key_check").fetchall() == []
        names = {
            r[0] for r in conn.execute("select name from sqlite_master where type in ('index', 'trigger')")
        }
        assert {"ohlc_bars_track_inserts", "training_results_pair", "ml_forecasts_unrealised"} <= names
    finally:
        conn.close()
    SqliteStore(path).close()  # opening again is a no-op


def legacy_row(
    store: TrainingStore, request: pytest.FixtureRequest, table: str, sql: str, *params: Any
) -> None:
    """A row with an invalid symbol as another tool wrote it before the checks existed (both schemas keep such
    rows: SQLite's rebuild copies them, Postgres' constraints are NOT VALID)."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        try:
            with conn:
                conn.execute("pragma ignore_check_constraints = on")
                conn.execute(sql, tuple(format_ts(p) if isinstance(p, datetime) else p for p in params))
        finally:
            conn.close()
        return
    pg = request.getfixturevalue("pg")
    name = f"{table}_symbol_format"
    (definition,) = pg.execute(
        "select pg_get_constraintdef(oid) from pg_constraint where conname = %s", (name,)
    ).fetchone()
    with pg.transaction():
        pg.execute(f"alter table {table} drop constraint {name}")
        pg.execute(sql.replace("?", "%s"), params)
        pg.execute(f"alter table {table} add constraint {name} {definition}")


def test_a_legacy_row_with_a_hostile_symbol_never_reaches_a_report_path(
    store: TrainingStore, request: pytest.FixtureRequest, symbol: str
) -> None:
    from config.settings import Settings
    from ml.src.monitoring.html_report import collect
    from ml.src.monitoring.report import build_report

    run_id = new_run(store)
    hostile = f"../../{symbol}"
    legacy_row(
        store,
        request,
        "training_results",
        "insert into training_results (symbol, run_id, timeframe, status, metrics, created_at)"
        " values (?, ?, 'd1', 'succeeded', ?, ?)",
        hostile,
        run_id,
        '{"ensemble": {"test_balanced_accuracy": 0.5}}',
        datetime.now(UTC),
    )
    assert [r["symbol"] for r in store.list_results(run_id)] == [hostile]  # the row is there
    refused: list[str] = []
    health = build_report(store, Settings(_env_file=None), refused=refused)
    assert all(h.symbol != hostile for h in health)
    got = collect(store, Settings(_env_file=None), health)
    assert all(p.symbol != hostile for p in got.pairs)
    for lines in (refused, got.refused):
        assert any(f"invalid symbol '{hostile}'" in line for line in lines), lines


def _replay_pair(symbol: str, bars: pd.DataFrame, *, bad: bool = False) -> Any:
    """A replayed pair of three forecasts at real bars (hand-made numbers: the store must keep them exactly)."""
    from ml.src.training.replay_record import PairReplay, ReplayForecast, ReplayScores, RetrainStep

    ts = [t.to_pydatetime() for t in bars["ts"].iloc[:3]]
    close = bars["close"].to_numpy()
    forecasts = [
        ReplayForecast(
            ts[0], ts[0], 0.2, 0.3, 0.5, "BULLISH", float(close[0]), -0.01, 0.01, "NEUTRAL", 0.0123, "BULLISH"
        ),
        ReplayForecast(
            ts[1],
            ts[0],
            0.1 + 1e-17,
            0.6,
            0.3,
            "NEUTRAL",
            float(close[1]),
            -0.01,
            0.01,
            None,
            -0.02,
            "BEARISH",
        ),
        # bad: trained through a bar after its own (the causal check refuses it)
        ReplayForecast(
            ts[2],
            ts[2] + timedelta(days=1) if bad else ts[1],
            1 / 3,
            1 / 3,
            1 / 3,
            "BEARISH",
            float(close[2]),
            -0.01,
            0.01,
            "BEARISH",
        ),
    ]
    record = ReplayScores(2, 0.5, 2, 0.5, 0.9, 1.0, None, None, 0.25, 1 / 3, None, 1.5)
    return PairReplay(
        symbol,
        "d1",
        "succeeded",
        retrain_every=1,
        horizon_bars=5,
        retrains=2,
        promotions=1,
        n_forecasts=3,
        n_realised=2,
        first_bar_ts=ts[0],
        last_bar_ts=ts[2],
        record=record,
        steps=[RetrainStep(ts[0], "promoted", "first version of the pair"), RetrainStep(ts[1], "kept", "x")],
        forecasts=forecasts,
    )


def test_a_replay_pair_is_stored_whole_exactly_and_apart_from_the_live_record(
    store: TrainingStore, symbol: str
) -> None:
    bars = sample_bars("GOOG", "d1", last=10)
    rid = str(uuid.uuid4())
    started = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    store.start_replay(rid, started, {"last": 3}, {"pairs": [f"{symbol}:d1"]})
    assert store.get_replay(rid)["status"] == "running"
    pair = _replay_pair(symbol, bars)
    store.record_replay_pair(rid, pair)
    store.record_replay_pair(rid, pair)  # a retry after a lost reply replaces, never duplicates
    (row,) = store.list_replay_pairs(rid)
    assert (row["symbol"], row["timeframe"], row["retrains"], row["promotions"], row["n_forecasts"]) == (
        symbol,
        "d1",
        2,
        1,
        3,
    )
    assert row["record"]["balanced_accuracy"] == 0.5 and row["record"]["ic"] is None
    assert row["record"]["majority_balanced_accuracy"] == 1 / 3
    assert [s["status"] for s in row["steps"]] == ["promoted", "kept"]
    got = store.list_replay_forecasts(rid, symbol, "d1")
    assert [pd.Timestamp(r["bar_ts"]) for r in got] == list(bars["ts"].iloc[:3])
    assert [r["p_bearish"] for r in got] == [0.2, 0.1 + 1e-17, 1 / 3]  # doubles kept to the bit
    assert [r["realised_return"] for r in got] == [0.0123, -0.02, None]
    assert [r["persistence_label"] for r in got] == ["NEUTRAL", None, "BEARISH"]
    assert pd.Timestamp(got[1]["trained_through"]) == bars["ts"].iloc[0]
    assert got[0]["direction_score"] == 0.5 - 0.2

    # all or nothing: a pair whose forecast breaks the causal check leaves neither row nor forecasts
    other = symbol + "B"
    with pytest.raises(StoreError):
        store.record_replay_pair(rid, _replay_pair(other, bars, bad=True))
    assert [r["symbol"] for r in store.list_replay_pairs(rid)] == [symbol]
    assert store.list_replay_forecasts(rid, other, "d1") == []

    store.finish_replay(rid, "succeeded", started + timedelta(minutes=1))
    done = store.get_replay(rid)
    assert done["status"] == "succeeded" and pd.Timestamp(done["finished_at"]) == started + timedelta(
        minutes=1
    )
    assert done["scope"] == {"pairs": [f"{symbol}:d1"]}
    # nothing of the live record or the registry
    assert store.list_forecasts(symbol, "d1") == [] and store.get_champion(symbol, "d1") is None


def test_latest_replay_is_the_pairs_latest_finished_one_ending_by_through_with_its_verdicts(
    store: TrainingStore, symbol: str
) -> None:
    bars = sample_bars("GOOG", "d1", last=10)
    t0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    early, late, running = (str(uuid.uuid4()) for _ in range(3))
    assert store.latest_replay(symbol, "d1") is None
    # early: bars 0-2, finished; late: bars 3-5, finished after it; running: the newest, not finished
    for i, (rid, offset) in enumerate(((early, 0), (late, 3), (running, 3))):
        store.start_replay(rid, t0 + timedelta(minutes=i), {}, {})
        store.record_replay_pair(rid, _replay_pair(symbol, bars.iloc[offset:].reset_index(drop=True)))
    store.finish_replay(early, "succeeded", t0 + timedelta(minutes=5))
    store.finish_replay(late, "failed", t0 + timedelta(minutes=6), "another pair failed")

    latest = store.latest_replay(symbol, "d1")
    assert latest is not None and latest["replay_id"] == late
    assert [pd.Timestamp(f["bar_ts"]) for f in latest["forecasts"]] == list(bars["ts"].iloc[3:6])
    assert [s["status"] for s in latest["steps"]] == ["promoted", "kept"]
    # nothing from after `through`: a run whose data ends at bar 4 gets the replay that ends at bar 2
    got = store.latest_replay(symbol, "d1", through=bars["ts"].iloc[4])
    assert got is not None and got["replay_id"] == early
    assert store.latest_replay(symbol, "d1", through=bars["ts"].iloc[2])["replay_id"] == early
    assert store.latest_replay(symbol, "d1", through=bars["ts"].iloc[1]) is None
    assert store.latest_replay(symbol, "w1") is None

    verdict = {"verdict": "no-skill", "basis": "replay", "p_value": 0.25, "q_value": 0.5, "fdr": 0.1}
    assert store.record_replay_verdicts(late, {(symbol, "d1"): verdict}) == 1
    (row,) = store.list_replay_pairs(late)
    assert row["record"]["verdict"] == verdict
    assert row["record"]["balanced_accuracy"] == 0.5  # the rest of the record untouched
    assert "verdict" not in store.list_replay_pairs(early)[0]["record"]
