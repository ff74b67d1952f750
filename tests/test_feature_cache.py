"""The read-through feature cache: compute only what is missing; same features from cache or not."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
from postgrest.exceptions import APIError

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.data.store import TrainingStore
from ml.src.features.feature_cache import features_for_window, fetch_or_build_features
from ml.src.features.technical_indicators import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    WARMUP_BARS,
    add_technical_features,
)
from ml.src.training.pipeline import warmup_bars
from tests.factories import sample_bars


def test_cache_fills_once_then_serves(embedded_store: SqliteStore) -> None:
    embedded_store.upsert_bars("IBM", "d1", sample_bars("IBM", "d1", last=1000))
    first = fetch_or_build_features(embedded_store, "IBM", ["d1"], {"d1": 500})["d1"]
    assert (first.n_cached, first.n_computed) == (0, 500)
    second = fetch_or_build_features(embedded_store, "IBM", ["d1"], {"d1": 500})["d1"]
    assert (second.n_cached, second.n_computed) == (500, 0)
    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert list(first.frame.columns) == ["ts", "close", *FEATURE_COLUMNS]


def test_only_missing_rows_are_computed_and_values_match_a_fresh_computation(embedded_store) -> None:
    bars = sample_bars("GSPC", "d1", last=900)
    embedded_store.upsert_bars("GSPC", "d1", bars)
    # an earlier night cached a window that started 150 bars earlier
    old = embedded_store.read_bars("GSPC", "d1", end=bars["ts"].iloc[-151], limit=500 + WARMUP_BARS)
    features_for_window(embedded_store, "GSPC", "d1", old)
    now = embedded_store.read_bars("GSPC", "d1", limit=500 + WARMUP_BARS)
    got = features_for_window(embedded_store, "GSPC", "d1", now)
    assert (got.n_cached, got.n_computed) == (350, 150)
    fresh = add_technical_features(now).iloc[WARMUP_BARS:].reset_index(drop=True)
    # finite-window features: the cached rows equal a fresh computation from another start (to 1e-9)
    np.testing.assert_allclose(
        got.frame[list(FEATURE_COLUMNS)].to_numpy(),
        fresh[list(FEATURE_COLUMNS)].to_numpy(),
        rtol=1e-6,
        atol=1e-9,
    )
    # the cache holds both nights' window rows; the first night's warm-up rows were never cached
    cached = embedded_store.read_feature_cache(
        "GSPC", "d1", FEATURE_SET_VERSION, bars["ts"].iloc[0], bars["ts"].iloc[-1]
    )
    assert len(cached) == 650 and cached["ts"].iloc[0] == old["ts"].iloc[WARMUP_BARS]


def test_the_cache_is_on_by_default_on_both_stores(monkeypatch) -> None:
    from config.settings import Settings
    from ml.src.features.feature_cache import cache_in_use

    monkeypatch.delenv("ML_FEATURE_CACHE", raising=False)
    assert Settings(_env_file=None).feature_cache == "on"
    assert cache_in_use(Settings(_env_file=None).feature_cache, 1) is True  # whichever the store
    assert (
        cache_in_use("auto", 1) is True
    )  # the old default, kept for existing .env files: now the same as on
    assert cache_in_use("off", 1) is False
    # bars without a tracked revision (a view named ohlc_bars: no triggers to drop features of corrected bars)
    assert cache_in_use("on", None) is False


def test_a_night_computes_only_the_new_rows_over_their_own_warm_up(embedded_store, monkeypatch) -> None:
    import ml.src.features.feature_cache as fc

    bars = sample_bars("IBM", "d1", last=2000 + WARMUP_BARS + 1)
    features_for_window(embedded_store, "IBM", "d1", bars.iloc[:-1])  # last night: its whole window
    seen: list[int] = []

    def spy(frame: pd.DataFrame) -> pd.DataFrame:
        seen.append(len(frame))
        return add_technical_features(frame)

    monkeypatch.setattr(fc, "add_technical_features", spy)
    got = features_for_window(embedded_store, "IBM", "d1", bars)  # tonight: one new bar
    assert (got.n_cached, got.n_computed) == (2000, 1)
    assert seen == [WARMUP_BARS + 1]  # the new bar and its look-back, not the 2,121 fetched bars
    fresh = add_technical_features(bars).iloc[WARMUP_BARS:].reset_index(drop=True)
    np.testing.assert_allclose(
        got.frame[list(FEATURE_COLUMNS)].to_numpy(),
        fresh[list(FEATURE_COLUMNS)].to_numpy(),
        rtol=1e-9,
        atol=1e-11,
    )
    cached = embedded_store.read_feature_cache(
        "IBM", "d1", FEATURE_SET_VERSION, bars["ts"].iloc[-1], bars["ts"].iloc[-1]
    )
    np.testing.assert_array_equal(  # what the cache holds is what the night used
        cached[list(FEATURE_COLUMNS)].to_numpy(), got.frame[list(FEATURE_COLUMNS)].iloc[[-1]].to_numpy()
    )


def test_without_the_cache_nothing_is_read_or_written(embedded_store: SqliteStore) -> None:
    bars = sample_bars("IBM", "d1", last=500 + WARMUP_BARS)
    got = features_for_window(embedded_store, "IBM", "d1", bars, use_cache=False)
    assert (got.n_cached, got.n_computed) == (0, 500)
    rows = embedded_store._query("select count(*) from feature_chunks")[0][0]
    assert rows == 0


# ---- the Supabase cache of a default run, readable with SQL; the forecast reads the same cache --------------------------


def _ticker() -> str:
    return "F" + uuid.uuid4().hex[:9].upper()


def _window_features(store: TrainingStore, symbol: str, timeframe: str, target: int) -> pd.DataFrame:
    """The features a run computes for the pair: its own window and code path, cache left alone."""
    warmup = warmup_bars(Settings().timeframes[timeframe])
    bars = store.read_bars(symbol, timeframe, limit=target + warmup)
    return features_for_window(store, symbol, timeframe, bars, warmup, use_cache=False).frame


@pytest.mark.slow
def test_a_default_supabase_run_caches_its_features_and_sql_returns_them(
    supabase_env, authenticated_client, anon_client, monkeypatch, capsys
) -> None:
    from ml.src.cli.train import main
    from ml.src.data.supabase_db import SupabaseStore

    monkeypatch.delenv("ML_FEATURE_CACHE", raising=False)  # the default
    symbol = _ticker()
    with SupabaseStore(supabase_env["SUPABASE_URL"], supabase_env["SUPABASE_SERVICE_ROLE_KEY"]) as store:
        store.upsert_bars(symbol, "d1", sample_bars("GSPC", "d1", last=1400))
        # 1,200 rows: more than PostgREST's 1000-row cap on one call
        assert main(["--symbol", symbol, "--timeframes", "d1", "--target-bars", "1200", "--json", "-q"]) == 0
        result = json.loads(capsys.readouterr().out)["results"][0]
        assert result["status"] == "succeeded"
        expected = _window_features(store, symbol, "d1", 1200)

    # the rows a signed-in user reads with SQL (PostgREST caps a call at 1000 rows: page on ts)
    rows: list[dict] = []
    while True:
        query = authenticated_client.rpc("feature_rows", {"p_symbol": symbol, "p_timeframe": "d1"})
        if rows:
            query = query.gt("ts", rows[-1]["ts"])
        page = query.order("ts").limit(1000).execute().data
        if not page:
            break
        rows.extend(page)
    assert len(rows) == len(expected) == 1200  # the run's window, without its warm-up rows
    assert {(r["symbol"], r["timeframe"], r["feature_version"]) for r in rows} == {
        (symbol, "d1", FEATURE_SET_VERSION)
    }
    assert [pd.Timestamp(r["ts"]) for r in rows] == list(expected["ts"])
    assert pd.Timestamp(rows[-1]["ts"]) == pd.Timestamp(result["split"]["data_end"])
    assert set(rows[0]["features"]) == set(FEATURE_COLUMNS)
    got = np.array([[r["features"][c] for c in FEATURE_COLUMNS] for r in rows])
    np.testing.assert_array_equal(got, expected[list(FEATURE_COLUMNS)].to_numpy())  # bit for bit
    # anon reads nothing of the cache, as of every other ML table
    with pytest.raises(APIError) as denied:
        anon_client.rpc("feature_rows", {"p_symbol": symbol, "p_timeframe": "d1"}).execute()
    assert denied.value.code == "42501"


@pytest.fixture(params=["embedded", "supabase"])
def any_store(request: pytest.FixtureRequest, ml_env, monkeypatch) -> Iterator[TrainingStore]:
    from ml.src.data.store_factory import open_store

    if request.param == "supabase":
        stack = request.getfixturevalue("supabase_env")
        monkeypatch.setenv("SUPABASE_URL", stack["SUPABASE_URL"])
    else:
        monkeypatch.setenv("SUPABASE_URL", "")
    monkeypatch.delenv("ML_FEATURE_CACHE", raising=False)  # the default
    with open_store(Settings()) as store:
        yield store


@pytest.mark.slow
def test_the_forecast_reads_the_features_training_cached(any_store: TrainingStore) -> None:
    from ml.src.inference.forecast import forecast_pair
    from ml.src.training.registry import load_champion
    from ml.src.training.run_loop import run_job

    symbol, settings = _ticker(), Settings()
    any_store.upsert_bars(symbol, "d1", sample_bars("IBM", "d1", last=700))
    assert run_job(any_store, settings, [symbol], ["d1"], workers=1).results[0].status == "succeeded"
    last_ts = any_store.read_bars(symbol, "d1", limit=1)["ts"].iloc[0]
    cached = any_store.read_feature_cache(symbol, "d1", FEATURE_SET_VERSION, last_ts, last_ts)
    assert len(cached) == 1  # training cached the newest bar's features
    # Put a different (finite) row in the cache for that bar: a forecast that reads the cache must use it.
    altered = cached.copy()
    altered[list(FEATURE_COLUMNS)] = cached[list(FEATURE_COLUMNS)].to_numpy() * 0.5 + 0.25
    any_store.upsert_feature_cache(symbol, "d1", FEATURE_SET_VERSION, altered)

    model = load_champion(symbol, "d1", settings=settings, store=any_store)
    got = forecast_pair(any_store, settings, symbol, "d1")
    assert got.status == "written", got.reason
    assert pd.Timestamp(got.bar_ts) == last_ts
    want = model.predict_proba(altered)[0]
    computed = model.predict_proba(add_technical_features(any_store.read_bars(symbol, "d1")).iloc[[-1]])[0]
    assert not np.allclose(want, computed)  # the two sources give different forecasts, so the test can tell
    np.testing.assert_allclose([got.probabilities[c] for c in model.classes], want, rtol=0, atol=1e-12)


class CountingTransport(httpx.BaseTransport):
    """The real HTTP transport, counting the requests that reach PostgREST."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path.rsplit("/", 1)[-1])
        return self.inner.handle_request(request)


@pytest.mark.slow
def test_a_cached_night_on_supabase_is_one_read_and_one_append(supabase_env) -> None:
    from ml.src.data.supabase_db import SupabaseStore

    transport = CountingTransport()
    symbol = _ticker()
    bars = sample_bars("GSPC", "d1", last=2000 + WARMUP_BARS + 1)
    with SupabaseStore(
        supabase_env["SUPABASE_URL"],
        supabase_env["SUPABASE_SERVICE_ROLE_KEY"],
        http_client=httpx.Client(transport=transport, timeout=30),
    ) as store:
        store.upsert_bars(symbol, "d1", bars)
        features_for_window(
            store, symbol, "d1", bars.iloc[:-1]
        )  # last night: 2,000 rows (> the 1000-row cap)
        transport.paths.clear()
        tonight = features_for_window(store, symbol, "d1", bars)
        assert transport.paths == ["feature_chunks_read", "feature_chunks_put"]
        assert (tonight.n_cached, tonight.n_computed) == (2000, 1)
        transport.paths.clear()
        again = features_for_window(store, symbol, "d1", bars)  # e.g. the forecast after the run
        assert transport.paths == ["feature_chunks_read"] and again.n_cached == 2001
        pd.testing.assert_frame_equal(again.frame, tonight.frame)


def test_the_vol_feature_set_is_cached_under_its_own_version(embedded_store: SqliteStore) -> None:
    from ml.src.features.technical_indicators import feature_set

    bars = sample_bars("IBM", "d1", last=500 + WARMUP_BARS)
    embedded_store.upsert_bars("IBM", "d1", bars)
    base, vol = feature_set(False), feature_set(True)
    plain = features_for_window(embedded_store, "IBM", "d1", bars)
    first = features_for_window(embedded_store, "IBM", "d1", bars, fset=vol)
    # the base rows already cached are not the vol set's: every row computed once, under "ta-v2+vol1"
    assert (plain.n_computed, first.n_cached, first.n_computed) == (500, 0, 500)
    assert list(first.frame.columns) == ["ts", "close", *vol.columns]
    again = features_for_window(embedded_store, "IBM", "d1", bars, fset=vol)
    assert (again.n_cached, again.n_computed) == (500, 0)
    fresh = add_technical_features(bars, vol_features=True).iloc[WARMUP_BARS:].reset_index(drop=True)
    np.testing.assert_array_equal(
        again.frame[list(vol.columns)].to_numpy(), fresh[list(vol.columns)].to_numpy()
    )
    start, end = bars["ts"].iloc[0], bars["ts"].iloc[-1]
    for fs in (base, vol):
        cached = embedded_store.read_feature_cache("IBM", "d1", fs.version, start, end)
        assert len(cached) == 500 and set(fs.columns) <= set(cached.columns)
    # the base set is what it was: the same values as before the vol set was cached beside it
    pd.testing.assert_frame_equal(features_for_window(embedded_store, "IBM", "d1", bars).frame, plain.frame)
