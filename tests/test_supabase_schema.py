"""The Supabase schema (supabase/migrations) on the real local stack: migrations, RLS/grants per API role, constraints,
the 1000-row cap, the gateway fault switch, the reporting views and the lease functions.

Each test uses its own tickers/lease names, so tests do not depend on each other or on table contents.
"""

from __future__ import annotations

import random
import re
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from postgrest import APIError
from postgrest.types import CountMethod, ReturnMethod

from tests.plugins.supabase_stack import REPO

pytestmark = pytest.mark.supabase

MIGRATIONS = sorted((REPO / "supabase" / "migrations").glob("*.sql"))
ROLES_SQL = REPO / "scripts" / "supabase_roles.sql"

TABLES = (
    "symbols",
    "ohlc_bars",
    "bar_revisions",
    "feature_chunks",
    "training_runs",
    "training_results",
    "model_versions",
    "job_leases",
    "ml_forecasts",
    "ml_replays",  # before the replay tables that reference it (insert_all's order)
    "ml_replay_pairs",
    "ml_replay_forecasts",
)
SINGLETON_TABLES = ("monitoring_settings",)  # one row, created by its migration
PUBLIC_TABLES = ("symbols", "ohlc_bars")  # the only ones anon may read
ML_TABLES = tuple(t for t in TABLES if t not in PUBLIC_TABLES)
VIEWS = (
    "latest_models",
    "accuracy_history",
    "latest_forecasts",
    "forecast_performance",
    "model_health",
    "replay_performance",
)
SHA = "0123456789abcdef" * 4
TS0 = datetime(2026, 1, 5, tzinfo=UTC)

# Row filters that identify a seeded row, per table (the seeded fixture fills in the values).
KEY_COLUMN = {
    "symbols": "ticker",
    "ohlc_bars": "symbol",
    "bar_revisions": "symbol",
    "feature_chunks": "symbol",
    "training_runs": "run_id",
    "training_results": "symbol",
    "model_versions": "symbol",
    "job_leases": "name",
    "ml_forecasts": "symbol",
    "ml_replays": "replay_id",
    "ml_replay_pairs": "symbol",
    "ml_replay_forecasts": "symbol",
}


def new_ticker() -> str:
    return "T" + uuid.uuid4().hex[:12].upper()


def iso(ts: datetime) -> str:
    return ts.isoformat()


def expect_api_error(fn: Callable[[], Any], *codes: str) -> APIError:
    with pytest.raises(APIError) as info:
        fn()
    assert info.value.code in codes, f"expected SQLSTATE/HTTP code in {codes}, got {info.value!r}"
    return info.value


def metrics(ens: float, bal: float, rf: float, gb: float, base: float, pers: float) -> dict[str, Any]:
    return {
        "ensemble": {"test_accuracy": ens, "test_balanced_accuracy": bal},
        "rf": {"test_accuracy": rf},
        "gb": {"test_accuracy": gb},
        "baseline": {"test_accuracy": base},
        "persistence": {"test_accuracy": pers},
    }


def sample_rows(ticker: str, run_id: str) -> dict[str, dict[str, Any]]:
    """One valid row per table, all tied to `ticker` (training_results/model_versions need an existing run)."""
    replay_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"replay:{ticker}"))
    return {
        "ml_replays": {"replay_id": replay_id, "started_at": iso(TS0), "status": "succeeded"},
        "ml_replay_pairs": {
            "replay_id": replay_id,
            "symbol": ticker,
            "timeframe": "d1",
            "status": "succeeded",
            "retrain_every": 21,
            "horizon_bars": 5,
            "retrains": 1,
            "promotions": 1,
            "n_forecasts": 1,
            "n_realised": 1,
            "record": {"balanced_accuracy": 1.0},
        },
        "ml_replay_forecasts": {
            "replay_id": replay_id,
            "symbol": ticker,
            "timeframe": "d1",
            "bar_ts": iso(TS0),
            "trained_through": iso(TS0),
            "horizon_bars": 5,
            "p_bearish": 0.25,
            "p_neutral": 0.25,
            "p_bullish": 0.5,
            "label": "BULLISH",
            "direction_score": 0.25,
            "realised_return": 0.02,
            "realised_label": "BULLISH",
        },
        "symbols": {"ticker": ticker},
        "ohlc_bars": {
            "symbol": ticker,
            "timeframe": "d1",
            "ts": iso(TS0),
            "open": 10.0,
            "high": 11.0,
            "low": 9.5,
            "close": 10.5,
            "volume": 1000.0,
        },
        # other symbols than the bar's: the bar's insert trigger writes its own bar_revisions row
        "bar_revisions": {"symbol": ticker + "R", "timeframe": "d1", "revision": 3},
        "feature_chunks": {
            "symbol": ticker + "F",
            "timeframe": "d1",
            "feature_version": "v1",
            "chunk_start": iso(TS0),
            "first_ts": iso(TS0),
            "last_ts": iso(TS0),
            "n_rows": 1,
            "columns": ["rsi_14", "ret_1"],
            "ts_data": "\\x" + struct.pack("<q", int(TS0.timestamp() * 1_000_000)).hex(),
            "values_data": "\\x" + struct.pack("<2d", 55.5, 0.01).hex(),
        },
        "training_runs": {
            "run_id": run_id,
            "status": "running",
            "trigger": "api",
            "scope": {"symbols": [ticker]},
        },
        "training_results": {
            "run_id": run_id,
            "symbol": ticker,
            "timeframe": "d1",
            "status": "succeeded",
            "metrics": metrics(0.6, 0.58, 0.55, 0.57, 0.5, 0.52),
            "artifact_path": f"trained_models/{ticker}_d1.joblib",
            "artifact_sha256": SHA,
        },
        "model_versions": {
            "symbol": ticker,
            "timeframe": "d1",
            "run_id": run_id,
            "artifact_path": f"trained_models/{ticker}_d1.joblib",
            "artifact_sha256": SHA,
            "feature_version": "v1",
            "trained_at": iso(TS0),
            "is_champion": True,
        },
        "job_leases": {
            "name": f"lease-{ticker}",
            "holder": "seed",
            "acquired_at": iso(datetime.now(UTC)),
            "expires_at": iso(datetime.now(UTC) + timedelta(hours=1)),
        },
        "ml_forecasts": {
            "symbol": ticker,
            "timeframe": "d1",
            "bar_ts": iso(TS0),
            "horizon_bars": 5,
            "target_ts": iso(TS0 + timedelta(days=7)),
            "p_bearish": 0.25,
            "p_neutral": 0.25,
            "p_bullish": 0.5,
            "label": "BULLISH",
            "direction_score": 0.25,
            "model_version_id": 1,
            "model_trained_at": iso(TS0),
            "model_run_id": run_id,
            "model_sha256": SHA,
            "bar_close": 10.5,
            "threshold_lower": -0.009,
            "threshold_upper": 0.009,
            "persistence_label": "NEUTRAL",
        },
    }


def insert_all(client: Any, rows: dict[str, dict[str, Any]]) -> None:
    # training_runs before the tables that reference it
    for table in ("training_runs", *(t for t in TABLES if t != "training_runs")):
        client.table(table).insert(rows[table]).execute()


@pytest.fixture(scope="module")
def seeded(service_client: Any) -> dict[str, Any]:
    """One row in every table, inserted with the service_role key."""
    ticker = new_ticker()
    run_id = str(uuid.uuid4())
    rows = sample_rows(ticker, run_id)
    insert_all(service_client, rows)
    keys = {t: rows[t][KEY_COLUMN[t]] for t in TABLES}
    return {"ticker": ticker, "run_id": run_id, "rows": rows, "keys": keys}


# ---- migrations ------------------------------------------------------------------------------------------------------


def test_migration_files_follow_supabase_cli_naming() -> None:
    names = [p.name for p in MIGRATIONS]
    assert len(names) >= 4
    for name in names:
        assert re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", name), name
    versions = [n.split("_", 1)[0] for n in names]
    assert len(set(versions)) == len(versions), "duplicate migration versions"
    assert versions == sorted(versions)


FINGERPRINT_SQL = """
select 'column', format('%s.%s %s null=%s default=%s', table_name, column_name, data_type, is_nullable, column_default)
  from information_schema.columns where table_schema = 'public'
union all
select 'constraint', format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
  from pg_constraint where connamespace = 'public'::regnamespace
union all
select 'index', indexdef from pg_indexes where schemaname = 'public'
union all
select 'policy', format('%s %s %s %s %s %s', tablename, policyname, permissive, cmd, roles, qual)
  from pg_policies where schemaname = 'public'
union all
select 'relation', format('%s kind=%s rls=%s acl=%s options=%s', relname, relkind, relrowsecurity,
                          (select array_agg(a::text order by a::text) from unnest(relacl) as a), reloptions)
  from pg_class where relnamespace = 'public'::regnamespace
union all
select 'function', format('%s secdef=%s config=%s acl=%s def=%s', p.oid::regprocedure, prosecdef, proconfig,
                          (select array_agg(a::text order by a::text) from unnest(proacl) as a),
                          md5(pg_get_functiondef(p.oid)))
  from pg_proc p where pronamespace = 'public'::regnamespace
union all
select 'view', format('%s %s', viewname, md5(definition)) from pg_views where schemaname = 'public'
order by 1, 2
"""


def schema_fingerprint(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [(kind, text) for kind, text in conn.execute(FINGERPRINT_SQL).fetchall()]


@pytest.mark.parametrize("with_supabase_roles", [True, False], ids=["supabase-like-db", "bare-db"])
def test_migrations_replay_on_empty_database(
    pg: psycopg.Connection[Any], supabase_stack: dict[str, str], with_supabase_roles: bool
) -> None:
    """All migrations apply, in filename order and each in one transaction, to a fresh empty database.

    Roles are cluster-wide (they exist already); default privileges and event triggers are per database, so the
    Supabase-like case re-applies supabase_roles.sql (idempotent) first. The bare case proves the migrations do not
    depend on Supabase's default privileges. Either way the result must equal the stack's own database.
    """
    dbname = f"replay_{uuid.uuid4().hex[:10]}"
    pg.execute(f'create database "{dbname}"')
    try:
        url = psycopg.conninfo.make_conninfo(supabase_stack["DATABASE_URL"], dbname=dbname)
        with psycopg.connect(url) as conn:
            assert conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone() == (
                0,
            )
            scripts = ([ROLES_SQL] if with_supabase_roles else []) + MIGRATIONS
            for path in scripts:
                try:
                    with conn.transaction():
                        conn.execute(path.read_text())
                except psycopg.Error as exc:
                    pytest.fail(f"{path.name} failed on an empty database: {exc}")
            replayed = schema_fingerprint(conn)
        expected = schema_fingerprint(pg)
        assert replayed == expected
    finally:
        pg.execute(f'drop database if exists "{dbname}" with (force)')


def test_every_table_has_rls_and_views_are_security_invoker(pg: psycopg.Connection[Any]) -> None:
    tables = dict(
        pg.execute(
            "select relname, relrowsecurity from pg_class "
            "where relnamespace = 'public'::regnamespace and relkind in ('r', 'p')"
        ).fetchall()
    )
    assert set(TABLES) <= set(tables), f"missing tables: {set(TABLES) - set(tables)}"
    assert [t for t, rls in tables.items() if not rls] == []
    views = dict(
        pg.execute(
            "select relname, reloptions from pg_class where relnamespace = 'public'::regnamespace and relkind = 'v'"
        ).fetchall()
    )
    assert set(VIEWS) <= set(views)
    for name, options in views.items():
        assert "security_invoker=true" in (options or []), name


def test_no_write_policies_for_api_roles(pg: psycopg.Connection[Any]) -> None:
    rows = pg.execute(
        "select tablename, policyname, cmd, roles from pg_policies where schemaname = 'public'"
    ).fetchall()
    assert rows, "no policies at all"
    assert {cmd for _, _, cmd, _ in rows} == {"SELECT"}
    anon_readable = {t for t, _, _, roles in rows if "anon" in roles}
    assert anon_readable == set(PUBLIC_TABLES)
    authenticated_readable = {t for t, _, _, roles in rows if "authenticated" in roles}
    assert authenticated_readable == set(TABLES) | set(SINGLETON_TABLES)


# ---- anon --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_anon_cannot_insert(anon_client: Any, table: str) -> None:
    row = sample_rows(new_ticker(), str(uuid.uuid4()))[table]
    expect_api_error(lambda: anon_client.table(table).insert(row).execute(), "42501")


@pytest.mark.parametrize("table", PUBLIC_TABLES)
def test_anon_cannot_update_or_delete_market_data(
    anon_client: Any, seeded: dict[str, Any], table: str
) -> None:
    col, key = KEY_COLUMN[table], seeded["keys"][table]
    expect_api_error(
        lambda: (
            anon_client.table(table)
            .update({"ts": iso(TS0)} if table == "ohlc_bars" else {"active": False})
            .eq(col, key)
            .execute()
        ),
        "42501",
    )
    expect_api_error(lambda: anon_client.table(table).delete().eq(col, key).execute(), "42501")


@pytest.mark.parametrize("table", PUBLIC_TABLES)
def test_anon_can_read_market_data(anon_client: Any, seeded: dict[str, Any], table: str) -> None:
    col, key = KEY_COLUMN[table], seeded["keys"][table]
    assert len(anon_client.table(table).select("*").eq(col, key).execute().data) == 1


@pytest.mark.parametrize("relation", ML_TABLES + SINGLETON_TABLES + VIEWS)
def test_anon_cannot_read_ml_tables_or_views(
    anon_client: Any, pg: psycopg.Connection[Any], seeded: dict[str, Any], relation: str
) -> None:
    count = pg.execute(f"select count(*) from public.{relation}").fetchone()
    assert count is not None and count[0] > 0, "the test needs rows to be present"
    try:
        data = anon_client.table(relation).select("*").execute().data
    except APIError as exc:
        assert exc.code == "42501", repr(exc)
    else:
        assert data == []


def test_anon_cannot_call_lease_functions(anon_client: Any) -> None:
    args = {"p_names": [f"anon-{uuid.uuid4()}"], "p_holder": "anon", "p_ttl_seconds": 60}
    expect_api_error(lambda: anon_client.rpc("acquire_leases", args).execute(), "42501")
    expect_api_error(lambda: anon_client.rpc("renew_leases", args).execute(), "42501")
    release_args = {"p_names": args["p_names"], "p_holder": "anon"}
    expect_api_error(lambda: anon_client.rpc("release_leases", release_args).execute(), "42501")


# ---- authenticated -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_authenticated_reads_but_cannot_write(
    authenticated_client: Any, seeded: dict[str, Any], table: str
) -> None:
    col, key = KEY_COLUMN[table], seeded["keys"][table]
    data = authenticated_client.table(table).select("*").eq(col, key).execute().data
    assert len(data) == 1
    row = sample_rows(new_ticker(), str(uuid.uuid4()))[table]
    expect_api_error(lambda: authenticated_client.table(table).insert(row).execute(), "42501")
    expect_api_error(lambda: authenticated_client.table(table).delete().eq(col, key).execute(), "42501")


def test_authenticated_reads_views_but_cannot_take_leases(
    authenticated_client: Any, seeded: dict[str, Any]
) -> None:
    ticker = seeded["ticker"]
    assert (
        len(authenticated_client.table("latest_models").select("*").eq("symbol", ticker).execute().data) == 1
    )
    assert (
        len(authenticated_client.table("accuracy_history").select("*").eq("symbol", ticker).execute().data)
        == 1
    )
    args = {"p_names": [f"auth-{uuid.uuid4()}"], "p_holder": "user", "p_ttl_seconds": 60}
    expect_api_error(lambda: authenticated_client.rpc("acquire_leases", args).execute(), "42501")


def test_authenticated_reads_forecast_views_but_cannot_change_forecasts(
    authenticated_client: Any, service_client: Any, pg: psycopg.Connection[Any], seeded: dict[str, Any]
) -> None:
    ticker = seeded["ticker"]
    latest = authenticated_client.table("latest_forecasts").select("*").eq("symbol", ticker).execute().data
    assert [(r["label"], r["by_current_champion"]) for r in latest] == [("BULLISH", False)]
    perf = authenticated_client.table("forecast_performance").select("*").eq("symbol", ticker).execute().data
    assert [(r["n_forecasts"], r["n_realised"]) for r in perf] == [(1, 0)]
    table = authenticated_client.table("ml_forecasts")
    expect_api_error(lambda: table.update({"label": "BEARISH"}).eq("symbol", ticker).execute(), "42501")
    expect_api_error(
        lambda: table.upsert(sample_rows(ticker, seeded["run_id"])["ml_forecasts"]).execute(), "42501"
    )
    # the service role (the forecast step) may fill the outcome; nobody else changed the row
    service_client.table("ml_forecasts").update({"realised_return": 0.01, "realised_label": "BULLISH"}).eq(
        "symbol", ticker
    ).execute()
    row = pg.execute("select label, realised_label from ml_forecasts where symbol = %s", (ticker,)).fetchone()
    assert row == ("BULLISH", "BULLISH")
    assert pg.execute(
        "select has_sequence_privilege('authenticated', 'ml_forecasts_id_seq', 'usage')"
    ).fetchone() == (False,)


# ---- service_role ---------------------------------------------------------------------------------------------------------


def test_service_role_writes_everything(service_client: Any, pg: psycopg.Connection[Any]) -> None:
    ticker, run_id = new_ticker(), str(uuid.uuid4())
    rows = sample_rows(ticker, run_id)
    insert_all(service_client, rows)
    for table in TABLES:
        col, key = KEY_COLUMN[table], rows[table][KEY_COLUMN[table]]
        assert len(service_client.table(table).select("*").eq(col, key).execute().data) == 1, table
    service_client.table("training_runs").update({"status": "succeeded", "n_pairs": 1}).eq(
        "run_id", run_id
    ).execute()
    service_client.table("symbols").update({"active": False}).eq("ticker", ticker).execute()
    assert pg.execute("select status from training_runs where run_id = %s", (run_id,)).fetchone() == (
        "succeeded",
    )
    # Deleting the run cascades to its results and model versions.
    for table in reversed(TABLES):
        col, key = KEY_COLUMN[table], rows[table][KEY_COLUMN[table]]
        service_client.table(table).delete().eq(col, key).execute()
    for table in TABLES:
        col = KEY_COLUMN[table]
        count = pg.execute(f"select count(*) from public.{table} where {col}::text = %s", (rows[table][col],))
        assert count.fetchone() == (0,), table


def test_run_delete_cascades(service_client: Any, pg: psycopg.Connection[Any]) -> None:
    ticker, run_id = new_ticker(), str(uuid.uuid4())
    rows = sample_rows(ticker, run_id)
    insert_all(service_client, rows)
    service_client.table("training_runs").delete().eq("run_id", run_id).execute()
    for table in ("training_results", "model_versions"):
        count = pg.execute(f"select count(*) from public.{table} where run_id = %s", (run_id,)).fetchone()
        assert count == (0,), table


def test_training_runs_defaults(service_client: Any) -> None:
    row = service_client.table("training_runs").insert({"status": "running"}).execute().data[0]
    assert uuid.UUID(row["run_id"])
    assert row["trigger"] == "manual"
    assert row["started_at"] is not None
    assert (row["n_pairs"], row["n_succeeded"], row["n_failed"], row["n_skipped"]) == (0, 0, 0, 0)


# ---- constraints -----------------------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("symbols", {"ticker": "abc"}),
    ("symbols", {"ticker": ""}),
    ("symbols", {"ticker": "X" * 21}),
    ("ohlc_bars", {"timeframe": "5m"}),
    ("ohlc_bars", {"volume": -1.0}),
    ("feature_chunks", {"timeframe": "1d"}),
    ("feature_chunks", {"n_rows": 2}),
    ("model_versions", {"artifact_signature": "not-a-signature"}),
    ("training_results", {"artifact_signature": SHA.upper()}),
    ("training_runs", {"status": "done"}),
    ("training_runs", {"trigger": "cron"}),
    ("training_results", {"timeframe": "m5"}),
    ("training_results", {"status": "running"}),
    ("training_results", {"artifact_sha256": "ABC"}),
    ("training_results", {"artifact_sha256": SHA.upper()}),
    ("model_versions", {"timeframe": "D1"}),
    ("model_versions", {"artifact_sha256": "not-a-hash"}),
    ("ml_forecasts", {"p_bearish": 0.5}),  # probabilities no longer sum to 1
    ("ml_forecasts", {"p_neutral": -0.25, "p_bullish": 1.0}),
    ("ml_forecasts", {"label": "UP"}),
    ("ml_forecasts", {"direction_score": 1.5}),
    ("ml_forecasts", {"realised_label": "bullish"}),
    ("ml_forecasts", {"timeframe": "1d"}),
]


@pytest.mark.parametrize(
    ("table", "override"), BAD_VALUES, ids=[f"{t}-{next(iter(o))}" for t, o in BAD_VALUES]
)
def test_check_constraints_reject_bad_values(
    service_client: Any, seeded: dict[str, Any], table: str, override: dict[str, Any]
) -> None:
    row = {**sample_rows(new_ticker(), seeded["run_id"])[table], **override}
    if table == "training_runs":
        row.pop("run_id")
    expect_api_error(lambda: service_client.table(table).insert(row).execute(), "23514")


def test_at_most_one_champion_per_pair(service_client: Any, seeded: dict[str, Any]) -> None:
    ticker = new_ticker()
    row = {**sample_rows(ticker, seeded["run_id"])["model_versions"], "is_champion": True}
    service_client.table("model_versions").insert(row).execute()
    service_client.table("model_versions").insert({**row, "is_champion": False}).execute()
    expect_api_error(lambda: service_client.table("model_versions").insert(row).execute(), "23505")
    other_tf = {**row, "timeframe": "h1"}
    service_client.table("model_versions").insert(
        other_tf
    ).execute()  # another pair may have its own champion


def test_duplicate_result_per_run_and_pair_rejected(service_client: Any, seeded: dict[str, Any]) -> None:
    row = sample_rows(new_ticker(), seeded["run_id"])["training_results"]
    service_client.table("training_results").insert(row).execute()
    expect_api_error(lambda: service_client.table("training_results").insert(row).execute(), "23505")


# ---- row cap / gateway -------------------------------------------------------------------------------------------------------


def test_responses_are_capped_at_1000_rows(service_client: Any) -> None:
    ticker = new_ticker()
    bars = [
        {
            "symbol": ticker,
            "timeframe": "h1",
            "ts": iso(TS0 + timedelta(hours=i)),
            "open": 1.0,
            "high": 1.0,
            "low": 1.0,
            "close": 1.0,
            "volume": float(i),
        }
        for i in range(1500)
    ]
    service_client.table("ohlc_bars").insert(bars, returning=ReturnMethod.minimal).execute()
    bars_q = service_client.table("ohlc_bars")
    assert len(bars_q.select("ts").eq("symbol", ticker).execute().data) == 1000
    assert len(bars_q.select("ts").eq("symbol", ticker).limit(5000).execute().data) == 1000
    counted = bars_q.select("ts", count=CountMethod.exact).eq("symbol", ticker).execute()
    assert counted.count == 1500 and len(counted.data) == 1000
    # Paging (range = inclusive offsets) reads the rest.
    page2 = bars_q.select("ts").eq("symbol", ticker).order("ts").range(1000, 1999).execute().data
    assert len(page2) == 500


def test_gateway_503_switch(service_client: Any, anon_client: Any, gateway_fault_503: Any) -> None:
    def read() -> list[Any]:
        return service_client.table("symbols").select("ticker").limit(1).execute().data

    read()
    gateway_fault_503.on()
    expect_api_error(read, "503")
    expect_api_error(lambda: anon_client.table("ohlc_bars").select("ts").limit(1).execute(), "503")
    expect_api_error(
        lambda: service_client.table("symbols").insert({"ticker": new_ticker()}).execute(), "503"
    )
    gateway_fault_503.off()
    read()


def test_fault_route_unavailable(supabase_stack: dict[str, str]) -> None:
    import httpx
    from supabase import ClientOptions, create_client

    with httpx.Client(timeout=10) as http:
        client = create_client(
            supabase_stack["SUPABASE_URL"] + "/__fault/unavailable",
            supabase_stack["SUPABASE_SERVICE_ROLE_KEY"],
            ClientOptions(httpx_client=http, postgrest_client_retry=False),
        )
        expect_api_error(lambda: client.table("symbols").select("ticker").execute(), "503")


def test_gateway_rejects_unknown_api_key(supabase_stack: dict[str, str]) -> None:
    import httpx

    url = supabase_stack["SUPABASE_URL"] + "/rest/v1/symbols"
    with httpx.Client(timeout=10) as http:
        assert http.get(url).status_code == 401
        assert http.get(url, headers={"apikey": "nope"}).status_code == 401
        assert http.get(url, headers={"apikey": supabase_stack["SUPABASE_ANON_KEY"]}).status_code == 200


# ---- views ---------------------------------------------------------------------------------------------------------------


def test_views_return_expected_rows(service_client: Any, authenticated_client: Any) -> None:
    ticker = new_ticker()
    runs = {
        "old": ("2026-01-01T00:00:00+00:00", "succeeded", metrics(0.51, 0.50, 0.49, 0.48, 0.47, 0.46)),
        "new": ("2026-02-01T00:00:00+00:00", "succeeded", metrics(0.61, 0.60, 0.59, 0.58, 0.57, 0.56)),
        "challenger": ("2026-02-15T00:00:00+00:00", "succeeded", metrics(0.41, 0.40, 0.39, 0.38, 0.37, 0.36)),
        "newest_failed": ("2026-03-01T00:00:00+00:00", "failed", None),
    }
    # when each model was trained: NOT its run's start (a run trains its pairs one after another)
    trained_at = {
        "old": "2026-01-01T00:10:00+00:00",
        "new": "2026-02-01T01:23:45+00:00",
        "challenger": "2026-02-15T00:05:00+00:00",
    }
    run_ids = {}
    for label, (started_at, status, m) in runs.items():
        run = service_client.table("training_runs").insert({"status": "succeeded", "started_at": started_at})
        run_id = run.execute().data[0]["run_id"]
        run_ids[label] = run_id
        result = {
            "run_id": run_id,
            "symbol": ticker,
            "timeframe": "h4",
            "status": status,
            "metrics": m,
            "n_train": 400,
            "n_test": 100,
            "weights": {"rf": 0.5, "gb": 0.5},
            "artifact_path": f"{ticker}/h4/{label}.joblib" if status == "succeeded" else None,
            "artifact_sha256": SHA if status == "succeeded" else None,
            "error": None if status == "succeeded" else "boom",
        }
        service_client.table("training_results").insert(result).execute()
        if status == "succeeded":
            service_client.table("model_versions").insert(
                {
                    "symbol": ticker,
                    "timeframe": "h4",
                    "run_id": run_id,
                    "artifact_path": f"{ticker}/h4/{label}.joblib",
                    "artifact_sha256": SHA,
                    "feature_version": "v1",
                    "trained_at": trained_at[label],
                    "weights": {"rf": 0.5, "gb": 0.5},
                    "metrics": m,
                }
            ).execute()
    # "new" beat "old" and is the champion; the later "challenger" did not replace it
    service_client.table("model_versions").update({"is_champion": True}).eq(
        "run_id", run_ids["new"]
    ).execute()

    for client in (service_client, authenticated_client):
        latest = client.table("latest_models").select("*").eq("symbol", ticker).execute().data
        assert len(latest) == 1
        row = latest[0]
        # the champion ("new"), not the newest succeeded result (the challenger) nor the newest run
        assert row["run_id"] == run_ids["new"]
        assert row["timeframe"] == "h4"
        assert datetime.fromisoformat(row["trained_at"]) == datetime.fromisoformat(trained_at["new"])
        assert row["artifact_path"] == f"{ticker}/h4/new.joblib"
        assert row["artifact_sha256"] == SHA
        assert (row["n_train"], row["n_test"]) == (400, 100)
        assert row["weights"] == {"rf": 0.5, "gb": 0.5}
        assert row["ensemble_test_accuracy"] == pytest.approx(0.61)
        assert row["ensemble_test_balanced_accuracy"] == pytest.approx(0.60)
        assert row["majority_test_accuracy"] == pytest.approx(0.57)
        assert row["persistence_test_accuracy"] == pytest.approx(0.56)

        history = (
            client.table("accuracy_history").select("*").eq("symbol", ticker).order("started_at").execute()
        )
        assert [h["run_id"] for h in history.data] == [run_ids["old"], run_ids["new"], run_ids["challenger"]]
        old = history.data[0]
        assert old["n_test"] == 100
        assert datetime.fromisoformat(old["started_at"]) == datetime(2026, 1, 1, tzinfo=UTC)
        assert (old["rf_test_accuracy"], old["gb_test_accuracy"]) == (
            pytest.approx(0.49),
            pytest.approx(0.48),
        )
        assert old["ensemble_test_accuracy"] == pytest.approx(0.51)
        assert old["ensemble_test_balanced_accuracy"] == pytest.approx(0.50)
        assert old["majority_test_accuracy"] == pytest.approx(0.47)
        assert old["persistence_test_accuracy"] == pytest.approx(0.46)


def test_views_read_like_with_like(service_client: Any) -> None:
    """Results written since issue 9: the majority baseline under 'majority', the prior, the verdict; the
    champion's row in latest_models, every result in accuracy_history and model_health."""
    ticker = new_ticker()
    run_id = service_client.table("training_runs").insert({"status": "succeeded"}).execute().data[0]["run_id"]
    m = {
        "ensemble": {
            "test_accuracy": 0.41,
            "test_balanced_accuracy": 0.38,
            "test_log_loss": 1.05,
            "test_ic": 0.04,
            "test_ic_pvalue": 0.2,
        },
        "majority": {"test_accuracy": 0.45, "test_balanced_accuracy": 1 / 3},
        "persistence": {"test_accuracy": 0.33, "test_balanced_accuracy": 0.32},
        "prior": {"test_log_loss": 1.07},
        "verdict": {"verdict": "no-skill", "basis": "walk_forward"},
    }
    trading = {
        "net": {"sharpe": -0.4},
        "confidence": {"net": {"sharpe": 0.1}},
        "buy_and_hold": {"net": {"sharpe": 0.9}},
    }
    result = {
        "run_id": run_id,
        "symbol": ticker,
        "timeframe": "d1",
        "status": "succeeded",
        "metrics": {**m, "trading": trading},
    }
    service_client.table("training_results").insert(result).execute()
    version = {
        "symbol": ticker,
        "timeframe": "d1",
        "run_id": run_id,
        "artifact_path": f"{ticker}/d1/x.joblib",
        "artifact_sha256": SHA,
        "feature_version": "ta-v2",
        "trained_at": iso(TS0),
        "is_champion": True,
        "metrics": m,  # what persist_pair copies: ensemble, majority, persistence, prior, verdict
    }
    service_client.table("model_versions").insert(version).execute()
    row = service_client.table("latest_models").select("*").eq("symbol", ticker).execute().data[0]
    assert row["majority_test_accuracy"] == pytest.approx(0.45)
    assert row["majority_test_balanced_accuracy"] == pytest.approx(1 / 3)
    assert row["persistence_test_balanced_accuracy"] == pytest.approx(0.32)
    assert (row["ensemble_test_log_loss"], row["prior_test_log_loss"]) == (
        pytest.approx(1.05),
        pytest.approx(1.07),
    )
    assert (row["verdict"], row["verdict_basis"]) == ("no-skill", "walk_forward")
    assert (row["net_sharpe"], row["net_sharpe_confident"], row["buy_and_hold_net_sharpe"]) == (
        pytest.approx(-0.4),
        pytest.approx(0.1),
        pytest.approx(0.9),
    )
    hist = service_client.table("accuracy_history").select("*").eq("symbol", ticker).execute().data[0]
    assert hist["majority_test_balanced_accuracy"] == pytest.approx(1 / 3) and hist["verdict"] == "no-skill"
    health = service_client.table("model_health").select("*").eq("symbol", ticker).execute().data[0]
    assert health["latest_verdict"] == "no-skill" and health["runs_below_baselines"] == 0


def test_views_show_the_verdicts_p_and_q_values(service_client: Any) -> None:
    """Since issue 19 a verdict carries its one-sided p-value and the run's Benjamini-Hochberg q-value; the views
    that show the verdict show them too (null for rows written before)."""
    ticker = new_ticker()
    run_id = service_client.table("training_runs").insert({"status": "succeeded"}).execute().data[0]["run_id"]
    verdict = {"verdict": "skill", "basis": "walk_forward", "p_value": 0.0012, "q_value": 0.0144, "fdr": 0.1}
    m = {"ensemble": {"test_balanced_accuracy": 0.45}, "verdict": verdict}
    base = {"run_id": run_id, "symbol": ticker, "timeframe": "d1", "status": "succeeded", "metrics": m}
    service_client.table("training_results").insert(base).execute()
    service_client.table("model_versions").insert(
        {
            "symbol": ticker,
            "timeframe": "d1",
            "run_id": run_id,
            "artifact_path": f"{ticker}/d1/x.joblib",
            "artifact_sha256": SHA,
            "feature_version": "ta-v2",
            "trained_at": iso(TS0),
            "is_champion": True,
            "metrics": m,
        }
    ).execute()
    old = {**base, "timeframe": "w1", "metrics": {"verdict": {"verdict": "no-skill", "basis": "test"}}}
    service_client.table("training_results").insert(old).execute()
    row = service_client.table("latest_models").select("*").eq("symbol", ticker).execute().data[0]
    assert (row["verdict"], row["verdict_p_value"], row["verdict_q_value"]) == ("skill", 0.0012, 0.0144)
    hist = {
        r["timeframe"]: r
        for r in service_client.table("accuracy_history").select("*").eq("symbol", ticker).execute().data
    }
    assert (hist["d1"]["verdict_basis"], hist["d1"]["verdict_p_value"], hist["d1"]["verdict_q_value"]) == (
        "walk_forward",
        0.0012,
        0.0144,
    )
    assert (hist["w1"]["verdict"], hist["w1"]["verdict_q_value"]) == ("no-skill", None)
    health = {
        r["timeframe"]: r
        for r in service_client.table("model_health").select("*").eq("symbol", ticker).execute().data
    }
    assert (health["d1"]["latest_verdict"], health["d1"]["latest_verdict_q_value"]) == ("skill", 0.0144)
    assert health["w1"]["latest_verdict_q_value"] is None


def test_views_handle_missing_metrics(service_client: Any) -> None:
    ticker = new_ticker()
    run_id = service_client.table("training_runs").insert({"status": "running"}).execute().data[0]["run_id"]
    result = {
        "run_id": run_id,
        "symbol": ticker,
        "timeframe": "d1",
        "status": "succeeded",
        "metrics": {"rf": {}},
    }
    service_client.table("training_results").insert(result).execute()
    version = {**sample_rows(ticker, run_id)["model_versions"], "metrics": {"rf": {}}}
    service_client.table("model_versions").insert(version).execute()
    row = service_client.table("latest_models").select("*").eq("symbol", ticker).execute().data[0]
    assert row["ensemble_test_accuracy"] is None and row["persistence_test_accuracy"] is None
    health = service_client.table("model_health").select("*").eq("symbol", ticker).execute().data[0]
    # no score to compare, nothing below baselines; only the champion's age (trained 2026-01-05) can flag it
    assert health["latest_score"] is None and health["runs_below_baselines"] == 0
    assert health["flags"] == (["RETRAIN"] if health["champion_expired"] else [])


# ---- leases ---------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def lease_names() -> Iterator[Callable[[str], str]]:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    yield lambda suffix: f"{prefix}-{suffix}"


def acquire(
    client: Any, names: list[str], holder: str, ttl: int = 60, run_id: str | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {"p_names": names, "p_holder": holder, "p_ttl_seconds": ttl}
    if run_id is not None:
        args["p_run_id"] = run_id
    return service_rpc(client, "acquire_leases", args)


def service_rpc(client: Any, fn: str, args: dict[str, Any]) -> Any:
    return client.rpc(fn, args).execute().data


def lease_rows(pg: psycopg.Connection[Any], names: list[str]) -> dict[str, tuple[Any, ...]]:
    rows = pg.execute(
        "select name, holder, run_id, acquired_at, expires_at, expires_at - now() from job_leases "
        "where name = any(%s)",
        (names,),
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_acquire_is_all_or_nothing(
    service_client: Any, pg: psycopg.Connection[Any], lease_names: Callable[[str], str]
) -> None:
    a, b, c = lease_names("a"), lease_names("b"), lease_names("c")
    got = acquire(service_client, [b, a, a], "h1", ttl=120)
    assert got["acquired"] is True
    assert got["names"] == sorted([a, b]) and got["taken_over"] == []
    rows = lease_rows(pg, [a, b])
    assert {n: r[0] for n, r in rows.items()} == {a: "h1", b: "h1"}
    assert all(timedelta(seconds=115) < r[4] <= timedelta(seconds=120) for r in rows.values())

    conflict = acquire(service_client, [c, b], "h2")
    assert conflict["acquired"] is False
    assert (conflict["name"], conflict["holder"]) == (b, "h1")
    assert datetime.fromisoformat(conflict["expires_at"]) == rows[b][3]
    assert c not in lease_rows(pg, [c]), "a failed acquire must not keep the free leases"


def test_conflict_reports_first_conflicting_lease_in_name_order(
    service_client: Any, lease_names: Callable[[str], str]
) -> None:
    a, b, c = lease_names("a"), lease_names("b"), lease_names("c")
    assert acquire(service_client, [c], "h1")["acquired"]
    assert acquire(service_client, [b], "h3")["acquired"]
    conflict = acquire(service_client, [c, b, a], "h2")
    assert (conflict["acquired"], conflict["name"], conflict["holder"]) == (False, b, "h3")


def test_reacquire_by_same_holder_extends_and_keeps_acquired_at(
    service_client: Any, pg: psycopg.Connection[Any], lease_names: Callable[[str], str]
) -> None:
    a = lease_names("a")
    run_id = str(uuid.uuid4())
    assert acquire(service_client, [a], "h1", ttl=30, run_id=run_id)["acquired"]
    before = lease_rows(pg, [a])[a]
    again = acquire(service_client, [a], "h1", ttl=300)
    assert again["acquired"] is True and again["taken_over"] == []
    after = lease_rows(pg, [a])[a]
    assert after[2] == before[2], "acquired_at is kept"
    assert after[3] > before[3] and after[4] > timedelta(seconds=290)
    assert str(after[1]) == run_id, "run_id is kept when p_run_id is omitted"


def test_renew_and_release(
    service_client: Any, pg: psycopg.Connection[Any], lease_names: Callable[[str], str]
) -> None:
    a, b = lease_names("a"), lease_names("b")
    assert acquire(service_client, [a, b], "h1", ttl=10)["acquired"]
    assert (
        service_rpc(
            service_client, "renew_leases", {"p_names": [a, b], "p_holder": "h1", "p_ttl_seconds": 600}
        )
        == 2
    )
    assert all(r[4] > timedelta(seconds=590) for r in lease_rows(pg, [a, b]).values())
    # Another holder renews/releases nothing.
    assert (
        service_rpc(
            service_client, "renew_leases", {"p_names": [a, b], "p_holder": "h2", "p_ttl_seconds": 600}
        )
        == 0
    )
    assert service_rpc(service_client, "release_leases", {"p_names": [a, b], "p_holder": "h2"}) == 0
    # Only held names count; unknown names are ignored.
    assert (
        service_rpc(service_client, "release_leases", {"p_names": [a, lease_names("x")], "p_holder": "h1"})
        == 1
    )
    assert set(lease_rows(pg, [a, b])) == {b}
    assert acquire(service_client, [a], "h2")["acquired"] is True  # released => free
    assert service_rpc(service_client, "release_leases", {"p_names": [b], "p_holder": "h1"}) == 1


def test_renew_keeps_an_expired_lease_nobody_took_over(
    service_client: Any, pg: psycopg.Connection[Any], lease_names: Callable[[str], str]
) -> None:
    a = lease_names("a")
    assert acquire(service_client, [a], "h1")["acquired"]
    pg.execute("update job_leases set expires_at = now() - interval '5 seconds' where name = %s", (a,))
    assert (
        service_rpc(service_client, "renew_leases", {"p_names": [a], "p_holder": "h1", "p_ttl_seconds": 60})
        == 1
    )
    assert lease_rows(pg, [a])[a][4] > timedelta(seconds=55)


def test_expired_lease_is_taken_over(
    service_client: Any, pg: psycopg.Connection[Any], lease_names: Callable[[str], str]
) -> None:
    a, b = lease_names("a"), lease_names("b")
    old_run = str(uuid.uuid4())
    new_run = str(uuid.uuid4())
    assert acquire(service_client, [a, b], "h1", run_id=old_run)["acquired"]
    # Not expired yet: conflict.
    assert acquire(service_client, [a], "h2")["acquired"] is False
    # Expire only `a` (expires_at <= now() counts as expired).
    pg.execute("update job_leases set expires_at = now() where name = %s", (a,))
    assert acquire(service_client, [a, b], "h2")["acquired"] is False, "b is still valid"
    got = acquire(service_client, [a], "h2", run_id=new_run)
    assert got["acquired"] is True
    assert len(got["taken_over"]) == 1
    taken = got["taken_over"][0]
    assert (taken["name"], taken["holder"], taken["run_id"]) == (a, "h1", old_run)
    row = lease_rows(pg, [a])[a]
    assert (row[0], str(row[1])) == ("h2", new_run)
    # The old holder lost it: renew/release report 0 for it.
    assert (
        service_rpc(
            service_client, "renew_leases", {"p_names": [a, b], "p_holder": "h1", "p_ttl_seconds": 60}
        )
        == 1
    )
    assert service_rpc(service_client, "release_leases", {"p_names": [a], "p_holder": "h1"}) == 0


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("acquire_leases", {"p_names": [], "p_holder": "h", "p_ttl_seconds": 60}),
        ("acquire_leases", {"p_names": ["x"], "p_holder": "", "p_ttl_seconds": 60}),
        ("acquire_leases", {"p_names": ["x"], "p_holder": "h", "p_ttl_seconds": 0}),
        ("acquire_leases", {"p_names": ["x", ""], "p_holder": "h", "p_ttl_seconds": 60}),
        ("renew_leases", {"p_names": ["x"], "p_holder": "h", "p_ttl_seconds": -1}),
        ("renew_leases", {"p_names": [], "p_holder": "h", "p_ttl_seconds": 60}),
        ("release_leases", {"p_names": ["x"], "p_holder": " "}),
    ],
)
def test_lease_functions_reject_bad_arguments(service_client: Any, fn: str, args: dict[str, Any]) -> None:
    expect_api_error(lambda: service_client.rpc(fn, args).execute(), "22023")


def test_concurrent_acquires_have_exactly_one_winner_and_no_deadlock(
    supabase_stack: dict[str, str], lease_names: Callable[[str], str]
) -> None:
    names = [lease_names(s) for s in "abcde"]
    n_workers, rounds = 8, 5
    barrier = threading.Barrier(n_workers)
    results: list[list[tuple[str, bool]]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        holder = f"worker-{i}"
        try:
            with psycopg.connect(supabase_stack["DATABASE_URL"], autocommit=True) as conn:
                for r in range(rounds):
                    mine = rng.sample(names, k=len(names))  # every worker asks in its own order
                    barrier.wait(timeout=30)
                    res = conn.execute("select public.acquire_leases(%s, %s, 60)", (mine, holder)).fetchone()
                    assert res is not None
                    results[r].append((holder, res[0]["acquired"]))
                    barrier.wait(timeout=30)
                    conn.execute("select public.release_leases(%s, %s)", (names, holder))
                    barrier.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for r, res in enumerate(results):
        assert len(res) == n_workers
        assert sum(ok for _, ok in res) == 1, f"round {r}: {res}"
