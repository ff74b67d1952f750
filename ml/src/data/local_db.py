"""Embedded store on SQLite (standard library): the default when no Supabase is configured.

Same tables and columns as the Postgres schema in supabase/migrations. Timestamps are stored as fixed-width
ISO-8601 UTC text (`2024-01-02T14:30:00.000000Z`), which sorts like the instant it names; JSON as text.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ml.src.data.feature_chunks import (
    FeatureChunk,
    chunks_to_frame,
    feature_matrix,
    merge_chunks,
    split_into_chunks,
    text_to_us,
    timestamps_to_us,
)
from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    LeaseGrant,
    ModelVersionRecord,
    MonitoringThresholds,
    ResultRecord,
    RunOutcome,
    RunRecord,
    TrainedData,
)
from ml.src.data.store import (
    BAR_COLUMNS,
    StoreError,
    TrainingStore,
    checked_pair,
    checked_symbol,
    empty_bars,
    normalise_bars,
)

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

SCHEMA = """
create table if not exists symbols (
    ticker text primary key check (ticker = upper(ticker) and length(ticker) between 1 and 20),
    active integer not null default 1,
    created_at text not null
);
create table if not exists ohlc_bars (
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    ts text not null,
    open real not null, high real not null, low real not null, close real not null,
    volume real not null check (volume >= 0),
    primary key (symbol, timeframe, ts)
) without rowid;
create table if not exists bar_revisions (
    symbol text not null,
    timeframe text not null,
    revision integer not null default 1,
    changed_from text,
    changed_at text not null,
    primary key (symbol, timeframe)
) without rowid;
create table if not exists feature_chunks (
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    feature_version text not null,
    chunk_start text not null,
    first_ts text not null,
    last_ts text not null,
    n_rows integer not null check (n_rows > 0),
    columns text not null,
    ts_data blob not null,
    values_data blob not null,
    computed_at text not null,
    primary key (symbol, timeframe, feature_version, chunk_start)
) without rowid;
create table if not exists training_runs (
    run_id text primary key,
    status text not null check (status in
        ('running','succeeded','partial','failed','interrupted','skipped','abandoned')),
    trigger text not null default 'manual' check (trigger in ('manual','scheduled','api')),
    started_at text not null,
    finished_at text,
    heartbeat_at text,
    host text, pid integer, git_sha text,
    package_versions text, config text, config_hash text, scope text,
    n_pairs integer not null default 0,
    n_succeeded integer not null default 0,
    n_failed integer not null default 0,
    n_skipped integer not null default 0,
    error text,
    warnings text
);
create table if not exists training_results (
    id integer primary key autoincrement,
    run_id text not null references training_runs(run_id) on delete cascade,
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    status text not null check (status in ('succeeded','failed','skipped')),
    error text,
    horizon_bars integer, n_train integer, n_valid integer, n_test integer,
    split text, weights text, metrics text,
    artifact_path text,
    artifact_sha256 text check (artifact_sha256 is null
        or (length(artifact_sha256) = 64 and artifact_sha256 not glob '*[^0-9a-f]*')),
    artifact_signature text check (artifact_signature is null
        or (length(artifact_signature) = 64 and artifact_signature not glob '*[^0-9a-f]*')),
    duration_s real,
    walk_forward text,
    promotion text,
    created_at text not null,
    unique (run_id, symbol, timeframe)
);
create index if not exists training_results_pair on training_results (symbol, timeframe, created_at);
create table if not exists model_versions (
    id integer primary key autoincrement,
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    run_id text not null references training_runs(run_id) on delete cascade,
    artifact_path text not null,
    artifact_sha256 text not null check (length(artifact_sha256) = 64 and artifact_sha256 not glob '*[^0-9a-f]*'),
    feature_version text not null,
    artifact_signature text check (artifact_signature is null
        or (length(artifact_signature) = 64 and artifact_signature not glob '*[^0-9a-f]*')),
    weights text, metrics text,
    trained_at text not null,
    is_champion integer not null default 0,
    promoted_at text,
    created_at text not null
);
create table if not exists job_leases (
    name text primary key,
    holder text not null,
    run_id text,
    acquired_at text not null,
    expires_at text not null
);
create unique index if not exists model_versions_one_champion on model_versions (symbol, timeframe)
    where is_champion = 1;
create table if not exists monitoring_settings (
    id integer primary key check (id = 1),
    metric text not null,
    retrain_drop real not null,
    disable_runs integer not null,
    history_runs integer not null,
    max_model_age_days text not null,
    updated_at text not null,
    updated_by text
);

-- Features follow the bars, whoever writes them (the same rule as the Postgres triggers in
-- supabase/migrations/20261202001000_bar_revisions_feature_chunks.sql): a bar inserted, changed or deleted bumps
-- the pair's revision and drops every cached chunk holding a bar at or after it. Re-writing identical values is
-- not a change. The revision is bumped first, then the chunks go.
create trigger if not exists ohlc_bars_track_inserts after insert on ohlc_bars
begin
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (new.symbol, new.timeframe, 1, new.ts, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    delete from feature_chunks where symbol = new.symbol and timeframe = new.timeframe and last_ts >= new.ts;
end;
create trigger if not exists ohlc_bars_track_updates after update on ohlc_bars
when old.symbol is not new.symbol or old.timeframe is not new.timeframe or old.ts is not new.ts
    or old.open is not new.open or old.high is not new.high or old.low is not new.low
    or old.close is not new.close or old.volume is not new.volume
begin
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (old.symbol, old.timeframe, 1, old.ts, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (new.symbol, new.timeframe, 1, min(old.ts, new.ts), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    delete from feature_chunks where symbol = old.symbol and timeframe = old.timeframe and last_ts >= old.ts;
    delete from feature_chunks where symbol = new.symbol and timeframe = new.timeframe
        and last_ts >= min(old.ts, new.ts);
end;
create trigger if not exists ohlc_bars_track_deletes after delete on ohlc_bars
begin
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (old.symbol, old.timeframe, 1, old.ts, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    delete from feature_chunks where symbol = old.symbol and timeframe = old.timeframe and last_ts >= old.ts;
end;
"""

# The champions' forecasts (same columns as supabase/migrations/20261202003100_forecasts.sql). No foreign key to
# model_versions: retention deletes old versions, and their forecasts are the live record that must stay.
FORECAST_SCHEMA = """
create table if not exists ml_forecasts (
    id integer primary key autoincrement,
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    bar_ts text not null,
    horizon_bars integer not null check (horizon_bars > 0),
    target_ts text not null,
    p_bearish real not null check (p_bearish between 0 and 1),
    p_neutral real not null check (p_neutral between 0 and 1),
    p_bullish real not null check (p_bullish between 0 and 1),
    label text not null check (label in ('BEARISH','NEUTRAL','BULLISH')),
    direction_score real not null check (direction_score between -1 and 1),
    model_version_id integer not null,
    model_trained_at text not null,
    model_run_id text,
    model_sha256 text,
    bar_close real,
    threshold_lower real,
    threshold_upper real,
    persistence_label text check (persistence_label in ('BEARISH','NEUTRAL','BULLISH')),
    created_at text not null,
    realised_bar_ts text,
    realised_close real,
    realised_return real,
    realised_label text check (realised_label in ('BEARISH','NEUTRAL','BULLISH')),
    realised_at text,
    realised_revision integer,
    check (abs(p_bearish + p_neutral + p_bullish - 1) < 1e-6),
    unique (symbol, timeframe, bar_ts, model_version_id)
);
create index if not exists ml_forecasts_unrealised on ml_forecasts (symbol, timeframe, bar_ts)
    where realised_return is null;
"""

# Replays (python -m ml.src.training.replay): same tables as supabase/migrations/20261216001900_replay_record.sql,
# apart from the live record (ml_forecasts) and the registry (model_versions), which a replay never touches.
REPLAY_SCHEMA = """
create table if not exists ml_replays (
    replay_id text primary key,
    started_at text not null,
    finished_at text,
    status text not null default 'running'
        check (status in ('running','succeeded','failed','interrupted')),
    error text,
    config text not null default '{}',
    scope text not null default '{}'
);
create table if not exists ml_replay_pairs (
    id integer primary key autoincrement,
    replay_id text not null references ml_replays (replay_id) on delete cascade,
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    status text not null check (status in ('succeeded','skipped','failed')),
    error text,
    retrain_every integer,
    horizon_bars integer,
    retrains integer not null default 0,
    promotions integer not null default 0,
    failed_retrains integer not null default 0,
    n_forecasts integer not null default 0,
    n_realised integer not null default 0,
    first_bar_ts text,
    last_bar_ts text,
    record text,
    steps text not null default '[]',
    duration_s real,
    created_at text not null,
    unique (replay_id, symbol, timeframe)
);
create table if not exists ml_replay_forecasts (
    id integer primary key autoincrement,
    replay_id text not null references ml_replays (replay_id) on delete cascade,
    symbol text not null,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    bar_ts text not null,
    trained_through text not null,
    horizon_bars integer not null,
    p_bearish real not null check (p_bearish between 0 and 1),
    p_neutral real not null check (p_neutral between 0 and 1),
    p_bullish real not null check (p_bullish between 0 and 1),
    label text not null check (label in ('BEARISH','NEUTRAL','BULLISH')),
    direction_score real not null,
    bar_close real,
    threshold_lower real,
    threshold_upper real,
    persistence_label text check (persistence_label in ('BEARISH','NEUTRAL','BULLISH')),
    realised_return real,
    realised_label text check (realised_label in ('BEARISH','NEUTRAL','BULLISH')),
    check (trained_through <= bar_ts),
    check (abs(p_bearish + p_neutral + p_bullish - 1) < 1e-6),
    unique (replay_id, symbol, timeframe, bar_ts)
);
"""
_REPLAY_TS_COLUMNS = frozenset(
    {"started_at", "finished_at", "first_bar_ts", "last_bar_ts", "created_at", "bar_ts", "trained_through"}
)
_REPLAY_JSON_COLUMNS = frozenset({"config", "scope", "record", "steps"})


def _replay_row(r: sqlite3.Row) -> dict[str, Any]:
    row = dict(zip(r.keys(), tuple(r), strict=True))
    for key, value in row.items():
        if value is None:
            continue
        if key in _REPLAY_TS_COLUMNS:
            row[key] = pd.Timestamp(value).isoformat()
        elif key in _REPLAY_JSON_COLUMNS:
            row[key] = json.loads(value)
    return row


def _replay_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _REPLAY_JSON_COLUMNS:
        return json.dumps(value, allow_nan=False, default=str)
    if isinstance(value, datetime):
        return format_ts(value)
    return value


_FORECAST_TS_COLUMNS = frozenset(
    {"bar_ts", "target_ts", "model_trained_at", "created_at", "realised_bar_ts", "realised_at"}
)

# Files created by earlier versions: what `create table if not exists` cannot add.
SCHEMA_VERSION = 3
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("training_runs", "warnings", "text"),
    ("training_results", "artifact_signature", "text"),
    ("model_versions", "artifact_signature", "text"),
    ("ml_forecasts", "realised_revision", "integer"),
)
_DEFAULT_THRESHOLDS = MonitoringThresholds(
    metric="test_balanced_accuracy",
    retrain_drop=0.05,
    disable_runs=3,
    history_runs=5,
    max_model_age_days={"m15": 3.0, "h1": 7.0, "h4": 10.0, "d1": 14.0, "w1": 45.0},
)

_JSON_COLUMNS = frozenset(
    {
        "package_versions",
        "config",
        "scope",
        "split",
        "weights",
        "metrics",
        "walk_forward",
        "promotion",
        "warnings",
        "max_model_age_days",
    }
)
_BOOL_COLUMNS = frozenset({"active", "is_champion"})


def format_ts(value: datetime | pd.Timestamp) -> str:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise StoreError(f"naive timestamp {value!r}: timestamps must be tz-aware UTC")
    return ts.tz_convert("UTC").strftime(TS_FORMAT)


def parse_ts(value: str | None) -> datetime | None:
    return None if value is None else pd.Timestamp(value).to_pydatetime()


def _lease_ts(value: str) -> datetime:
    return pd.Timestamp(value).to_pydatetime()


def _now() -> str:
    return format_ts(datetime.now(UTC))


def _to_db(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _JSON_COLUMNS:
        return json.dumps(value, allow_nan=False, default=str)
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _from_db(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in row.keys():  # noqa: SIM118 - sqlite3.Row is not a mapping
        value = row[key]
        if value is not None and key in _JSON_COLUMNS:
            value = json.loads(value)
        elif value is not None and key in _BOOL_COLUMNS:
            value = bool(value)
        out[key] = value
    return out


class _TimedLock:
    """The store's lock, also adding the time each holder spends inside to the store's io_seconds."""

    def __init__(self, store: SqliteStore) -> None:
        self._lock = threading.Lock()
        self._store = store
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._lock.acquire()
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._store.io_seconds += time.perf_counter() - self._t0
        self._lock.release()


class SqliteStore(TrainingStore):
    name = "embedded"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _TimedLock(self)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("pragma journal_mode=wal")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a power cut may lose the last
            # commits but never corrupts the file, and an application crash loses nothing.
            self._conn.execute("pragma synchronous=normal")
            self._conn.execute("pragma foreign_keys=on")
            self._conn.executescript(SCHEMA)
            self._conn.executescript(FORECAST_SCHEMA)
            self._conn.executescript(REPLAY_SCHEMA)
            self._upgrade()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open embedded store {self.path}: {exc}") from exc

    def _upgrade(self) -> None:
        """Bring a file written by an earlier version up to SCHEMA_VERSION (idempotent, one transaction)."""
        if self._conn.execute("pragma user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._conn:
            for table, column, kind in _ADDED_COLUMNS:
                have = {r[1] for r in self._conn.execute(f"pragma table_info({table})")}
                if column not in have:
                    self._conn.execute(f"alter table {table} add column {column} {kind}")
            # the old one-JSON-row-per-bar cache (a cache: recomputed on demand)
            self._conn.execute("drop table if exists feature_cache")
            # pairs that already had bars start at revision 1
            self._conn.execute(
                "insert or ignore into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)"
                " select symbol, timeframe, 1, min(ts), ? from ohlc_bars group by symbol, timeframe",
                (_now(),),
            )
            self._conn.execute(
                "insert or ignore into monitoring_settings (id, metric, retrain_drop, disable_runs,"
                " history_runs, max_model_age_days, updated_at) values (1, ?, ?, ?, ?, ?, ?)",
                (
                    _DEFAULT_THRESHOLDS.metric,
                    _DEFAULT_THRESHOLDS.retrain_drop,
                    _DEFAULT_THRESHOLDS.disable_runs,
                    _DEFAULT_THRESHOLDS.history_runs,
                    json.dumps(_DEFAULT_THRESHOLDS.max_model_age_days),
                    _now(),
                ),
            )
            self._conn.execute(f"pragma user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def _write(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> int:
        with self._lock:
            try:
                with self._conn:
                    if isinstance(rows, tuple):
                        cur = self._conn.execute(sql, rows)
                    else:
                        cur = self._conn.executemany(sql, rows)
                    return cur.rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"embedded store write failed: {exc}") from exc

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"embedded store read failed: {exc}") from exc

    # --- market data ------------------------------------------------------------------------------
    def read_bars(self, symbol, timeframe, *, end=None, start=None, limit=None) -> pd.DataFrame:
        sql = "select ts, open, high, low, close, volume from ohlc_bars where symbol = ? and timeframe = ?"
        params: list[Any] = [symbol, timeframe]
        if end is not None:
            sql += " and ts <= ?"
            params.append(format_ts(end))
        if start is not None:
            sql += " and ts >= ?"
            params.append(format_ts(start))
        sql += " order by ts desc"
        if limit is not None:
            sql += " limit ?"
            params.append(int(limit))
        rows = self._query(sql, tuple(params))
        if not rows:
            return empty_bars()
        frame = pd.DataFrame([tuple(r) for r in reversed(rows)], columns=list(BAR_COLUMNS))
        frame["ts"] = pd.to_datetime(frame["ts"], format=TS_FORMAT, utc=True)
        return frame

    def upsert_bars(self, symbol, timeframe, bars) -> int:
        symbol, timeframe = checked_pair(symbol, timeframe)
        frame = normalise_bars(bars)
        ts_text = frame["ts"].dt.strftime(TS_FORMAT)
        rows = [
            (symbol, timeframe, t, float(o), float(h), float(lo), float(c), float(v))
            for t, o, h, lo, c, v in zip(
                ts_text,
                frame["open"],
                frame["high"],
                frame["low"],
                frame["close"],
                frame["volume"],
                strict=True,
            )
        ]
        self._write(
            "insert into ohlc_bars (symbol, timeframe, ts, open, high, low, close, volume) values (?,?,?,?,?,?,?,?)"
            " on conflict (symbol, timeframe, ts) do update set open=excluded.open, high=excluded.high,"
            " low=excluded.low, close=excluded.close, volume=excluded.volume",
            rows,
        )
        return len(rows)

    def count_bars(self, symbol, timeframe) -> int:
        rows = self._query(
            "select count(*) from ohlc_bars where symbol = ? and timeframe = ?", (symbol, timeframe)
        )
        return int(rows[0][0])

    def upsert_symbols(self, tickers, active=True) -> None:
        now = _now()
        rows = [(checked_symbol(t), int(active), now) for t in tickers]
        self._write(
            "insert into symbols (ticker, active, created_at) values (?,?,?)"
            " on conflict (ticker) do update set active = excluded.active",
            rows,
        )

    def list_active_symbols(self) -> list[str]:
        return [r[0] for r in self._query("select ticker from symbols where active = 1 order by ticker")]

    def bar_revision(self, symbol, timeframe) -> int | None:
        rows = self._query(
            "select revision from bar_revisions where symbol = ? and timeframe = ?", (symbol, timeframe)
        )
        return int(rows[0][0]) if rows else None

    def pairs_with_bars(self, symbols, timeframes) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for symbol in dict.fromkeys(symbols):
            for timeframe in dict.fromkeys(timeframes):
                rows = self._query(
                    "select 1 from ohlc_bars where symbol = ? and timeframe = ? limit 1", (symbol, timeframe)
                )
                if rows:
                    out.add((symbol, timeframe))
        return out

    # --- feature cache ----------------------------------------------------------------------------
    def _chunks(self, conn: sqlite3.Connection, sql: str, params: tuple) -> list[FeatureChunk]:
        out = []
        for r in conn.execute(sql, params).fetchall():
            start_us = text_to_us(r["chunk_start"])
            out.append(
                FeatureChunk.from_bytes(start_us, json.loads(r["columns"]), r["ts_data"], r["values_data"])
            )
        return out

    def read_feature_cache(self, symbol, timeframe, version, start, end) -> pd.DataFrame:
        with self._lock:
            try:
                chunks = self._chunks(
                    self._conn,
                    "select chunk_start, columns, ts_data, values_data from feature_chunks"
                    " where symbol = ? and timeframe = ? and feature_version = ? and chunk_start <= ?"
                    " and last_ts >= ? order by chunk_start",
                    (symbol, timeframe, version, format_ts(end), format_ts(start)),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"embedded store read failed: {exc}") from exc
        bounds = timestamps_to_us([pd.Timestamp(start), pd.Timestamp(end)])
        return chunks_to_frame(chunks, int(bounds[0]), int(bounds[1]))

    def upsert_feature_cache(self, symbol, timeframe, version, features, revision=None) -> int:
        symbol, timeframe = checked_pair(symbol, timeframe)
        if features.empty:
            return 0
        ts, cols, values = feature_matrix(f"{symbol}/{timeframe}", features)
        chunks = split_into_chunks(timeframe, ts, cols, values)
        now = _now()
        with self._immediate(durable=False) as conn:
            if revision is not None:
                row = conn.execute(
                    "select revision from bar_revisions where symbol = ? and timeframe = ?",
                    (symbol, timeframe),
                ).fetchone()
                if row is None or int(row[0]) != int(revision):
                    return 0  # the bars changed since these features were computed
            starts = [format_ts(c.chunk_start) for c in chunks]
            marks = ",".join("?" for _ in starts)
            stored = {
                c.chunk_start_us: c
                for c in self._chunks(
                    conn,
                    "select chunk_start, columns, ts_data, values_data from feature_chunks where symbol = ?"
                    f" and timeframe = ? and feature_version = ? and chunk_start in ({marks})",
                    (symbol, timeframe, version, *starts),
                )
            }
            for new in chunks:
                merged = merge_chunks(stored.get(new.chunk_start_us), new)
                conn.execute(
                    "insert or replace into feature_chunks (symbol, timeframe, feature_version, chunk_start,"
                    " first_ts, last_ts, n_rows, columns, ts_data, values_data, computed_at)"
                    " values (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        symbol,
                        timeframe,
                        version,
                        format_ts(merged.chunk_start),
                        format_ts(merged.first_ts),
                        format_ts(merged.last_ts),
                        merged.n_rows,
                        json.dumps(list(merged.columns)),
                        merged.ts_bytes(),
                        merged.values_bytes(),
                        now,
                    ),
                )
        return len(ts)

    # --- run ledger and registry ------------------------------------------------------------------
    def _insert(self, table: str, row: dict[str, Any], conn: sqlite3.Connection) -> None:
        keys = list(row)
        conn.execute(
            f"insert into {table} ({', '.join(keys)}) values ({', '.join('?' for _ in keys)})",
            tuple(_to_db(k, row[k]) for k in keys),
        )

    def start_run(self, run: RunRecord) -> None:
        with self._lock:
            try:
                with self._conn:
                    self._insert("training_runs", run.to_row(), self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record run {run.run_id}: {exc}") from exc

    def finish_run(self, run_id, outcome: RunOutcome) -> None:
        row = outcome.to_row()
        sets = ", ".join(f"{k} = ?" for k in row)
        self._write(
            f"update training_runs set {sets} where run_id = ?",
            (*(_to_db(k, v) for k, v in row.items()), run_id),
        )

    def record_result(self, result: ResultRecord, model_version: ModelVersionRecord | None = None) -> None:
        if result.status == "succeeded" or model_version is not None:
            checked_pair(result.symbol, result.timeframe)
        if model_version is not None:
            checked_pair(model_version.symbol, model_version.timeframe)
        with self._lock:
            try:
                with self._conn:  # one transaction: both rows or neither
                    self._insert("training_results", {**result.to_row(), "created_at": _now()}, self._conn)
                    if model_version is not None:
                        row = {**model_version.to_row(), "created_at": _now()}
                        if model_version.is_champion:  # move the pointer in the same transaction
                            self._conn.execute(
                                "update model_versions set is_champion = 0"
                                " where symbol = ? and timeframe = ? and is_champion = 1",
                                (model_version.symbol, model_version.timeframe),
                            )
                            row["promoted_at"] = row["created_at"]
                        self._insert("model_versions", row, self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record result {result.symbol}/{result.timeframe}: {exc}") from exc

    def get_run(self, run_id) -> dict | None:
        rows = self._query("select * from training_runs where run_id = ?", (run_id,))
        return _from_db(rows[0]) if rows else None

    def find_result(self, run_id, symbol, timeframe) -> dict | None:
        rows = self._query(
            "select * from training_results where run_id = ? and symbol = ? and timeframe = ?",
            (run_id, symbol, timeframe),
        )
        return _from_db(rows[0]) if rows else None

    def list_results(self, run_id) -> list[dict]:
        rows = self._query("select * from training_results where run_id = ? order by id", (run_id,))
        return [_from_db(r) for r in rows]

    def list_model_versions(self, symbol, timeframe) -> list[dict]:
        rows = self._query(
            "select * from model_versions where symbol = ? and timeframe = ? order by id desc",
            (symbol, timeframe),
        )
        return [_from_db(r) for r in rows]

    def get_champion(self, symbol, timeframe) -> dict | None:
        rows = self._query(
            "select * from model_versions where symbol = ? and timeframe = ? and is_champion = 1",
            (symbol, timeframe),
        )
        return _from_db(rows[0]) if rows else None

    def prune_model_versions(self, symbol, timeframe, keep) -> list[dict]:
        where = (
            "where symbol = ? and timeframe = ? and is_champion = 0 and id not in"
            " (select id from model_versions where symbol = ? and timeframe = ? order by id desc limit ?)"
        )
        params = (symbol, timeframe, symbol, timeframe, max(keep, 0))
        with self._lock:
            try:
                # read first: most pairs have nothing to prune, and then no write transaction is opened
                if not self._conn.execute(f"select 1 from model_versions {where} limit 1", params).fetchall():
                    return []
                with self._conn:
                    rows = [
                        _from_db(r)
                        for r in self._conn.execute(f"select * from model_versions {where}", params)
                    ]
                    self._conn.execute(f"delete from model_versions {where}", params)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot prune model versions {symbol}/{timeframe}: {exc}") from exc
        return rows

    def artifact_paths(self) -> set[str]:
        rows = self._query(
            "select artifact_path from model_versions where artifact_path is not null"
            " union select artifact_path from training_results where artifact_path is not null"
        )
        return {str(r["artifact_path"]) for r in rows}

    def results_history(self, symbol=None, timeframe=None) -> list[dict]:
        sql = (
            "select r.*, t.started_at from training_results r join training_runs t on t.run_id = r.run_id"
            " where r.status = 'succeeded'"
        )
        params: list[Any] = []
        if symbol is not None:
            sql += " and r.symbol = ?"
            params.append(symbol)
        if timeframe is not None:
            sql += " and r.timeframe = ?"
            params.append(timeframe)
        return [_from_db(r) for r in self._query(sql + " order by t.started_at, r.id", tuple(params))]

    def last_training(self, symbol, timeframe) -> TrainedData | None:
        rows = self._query(
            "select json_extract(split, '$.data_end'), json_extract(split, '$.data_revision')"
            " from training_results where symbol = ? and timeframe = ? and status = 'succeeded'"
            " order by id desc limit 1",
            (symbol, timeframe),
        )
        if not rows:
            return None
        end, revision = rows[0][0], rows[0][1]
        return TrainedData(
            data_end=pd.Timestamp(end).to_pydatetime() if end else None,
            revision=int(revision) if revision is not None else None,
        )

    def heartbeat(self, run_id: str) -> None:
        self._write("update training_runs set heartbeat_at = ? where run_id = ?", (_now(), run_id))

    def mark_runs_abandoned(self, run_ids: Sequence[str], reason: str) -> int:
        if not run_ids:
            return 0
        marks = ",".join("?" for _ in run_ids)
        return self._write(
            f"update training_runs set status = 'abandoned', error = ?, finished_at = ?"
            f" where status = 'running' and run_id in ({marks})",
            (reason, _now(), *run_ids),
        )

    # --- forecasts ---------------------------------------------------------------------------------------
    def insert_forecast(self, forecast: ForecastRecord) -> bool:
        row = {**forecast.to_row(), "created_at": _now()}
        keys = list(row)
        sql = (
            f"insert into ml_forecasts ({', '.join(keys)}) values ({', '.join('?' for _ in keys)})"
            " on conflict (symbol, timeframe, bar_ts, model_version_id) do nothing"
        )
        return self._write(sql, tuple(_to_db(k, row[k]) for k in keys)) == 1

    def list_forecasts(self, symbol=None, timeframe=None, *, unrealised_only=False) -> list[dict]:
        sql, params = "select * from ml_forecasts where 1 = 1", []
        if symbol is not None:
            sql += " and symbol = ?"
            params.append(symbol)
        if timeframe is not None:
            sql += " and timeframe = ?"
            params.append(timeframe)
        if unrealised_only:
            sql += " and realised_return is null"
        rows = self._query(sql + " order by symbol, timeframe, bar_ts, id", tuple(params))
        return [self._forecast_row(r) for r in rows]

    def list_outcome_candidates(self, symbol, timeframe, revision) -> list[dict]:
        rows = self._query(
            "select * from ml_forecasts where symbol = ? and timeframe = ?"
            " and (realised_return is null or (? is not null and realised_revision is not ?))"
            " order by bar_ts, id",
            (symbol, timeframe, revision, revision),
        )
        return [self._forecast_row(r) for r in rows]

    @staticmethod
    def _forecast_row(r: sqlite3.Row) -> dict[str, Any]:
        row = dict(zip(r.keys(), tuple(r), strict=True))
        for key in _FORECAST_TS_COLUMNS:
            if row[key] is not None:
                row[key] = pd.Timestamp(row[key]).isoformat()
        return row

    def record_forecast_outcomes(self, outcomes: Sequence[ForecastOutcome]) -> int:
        if not outcomes:
            return 0
        now = _now()
        changed = 0
        with self._lock:
            try:
                with self._conn:
                    for o in outcomes:
                        cur = self._conn.execute(
                            "update ml_forecasts set realised_bar_ts = ?, realised_close = ?, realised_return = ?,"
                            " realised_label = ?, realised_at = ?, realised_revision = ? where id = ?"
                            " and (realised_return is null"
                            "      or (? is not null and (realised_revision is null or realised_revision < ?)))",
                            (
                                None if o.realised_bar_ts is None else format_ts(o.realised_bar_ts),
                                o.realised_close,
                                o.realised_return,
                                o.realised_label,
                                None if o.realised_return is None else now,
                                o.realised_revision,
                                o.forecast_id,
                                o.realised_revision,
                                o.realised_revision,
                            ),
                        )
                        changed += cur.rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record forecast outcomes: {exc}") from exc
        return changed

    def stamp_outcome_revision(self, forecast_ids, revision) -> int:
        ids = [int(i) for i in forecast_ids]
        if not ids:
            return 0
        marks = ",".join("?" for _ in ids)
        return self._write(
            f"update ml_forecasts set realised_revision = ? where id in ({marks})"
            " and realised_return is not null and (realised_revision is null or realised_revision < ?)",
            (int(revision), *ids, int(revision)),
        )

    # --- replays ------------------------------------------------------------------------------------------
    def start_replay(self, replay_id, started_at, config, scope) -> None:
        self._write(
            "insert into ml_replays (replay_id, started_at, status, config, scope) values (?, ?, 'running', ?, ?)",
            (
                replay_id,
                format_ts(started_at),
                _replay_value("config", config),
                _replay_value("scope", scope),
            ),
        )

    def record_replay_pair(self, replay_id, pair) -> None:
        checked_pair(pair.symbol, pair.timeframe)
        row = {**pair.to_row(replay_id), "created_at": _now()}
        keys = list(row)
        forecasts = pair.forecast_rows()
        fkeys = ["replay_id", "symbol", "timeframe", *(forecasts[0] if forecasts else [])]
        key = (replay_id, pair.symbol, pair.timeframe)
        with self._lock:
            try:
                with self._conn:  # one transaction: the pair's row and all its forecasts, or nothing
                    where = "where replay_id = ? and symbol = ? and timeframe = ?"
                    self._conn.execute(f"delete from ml_replay_forecasts {where}", key)
                    self._conn.execute(f"delete from ml_replay_pairs {where}", key)
                    self._conn.execute(
                        f"insert into ml_replay_pairs ({', '.join(keys)})"
                        f" values ({', '.join('?' for _ in keys)})",
                        tuple(_replay_value(k, row[k]) for k in keys),
                    )
                    if forecasts:
                        self._conn.executemany(
                            f"insert into ml_replay_forecasts ({', '.join(fkeys)})"
                            f" values ({', '.join('?' for _ in fkeys)})",
                            [(*key, *(_replay_value(k, f[k]) for k in fkeys[3:])) for f in forecasts],
                        )
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot record the replay of {pair.symbol}/{pair.timeframe}: {exc}"
                ) from exc

    def finish_replay(self, replay_id, status, finished_at, error=None) -> None:
        self._write(
            "update ml_replays set status = ?, finished_at = ?, error = ? where replay_id = ?",
            (status, format_ts(finished_at), error, replay_id),
        )

    def get_replay(self, replay_id) -> dict | None:
        rows = self._query("select * from ml_replays where replay_id = ?", (replay_id,))
        return _replay_row(rows[0]) if rows else None

    def list_replay_pairs(self, replay_id) -> list[dict]:
        rows = self._query(
            "select * from ml_replay_pairs where replay_id = ? order by symbol, timeframe", (replay_id,)
        )
        return [_replay_row(r) for r in rows]

    def list_replay_forecasts(self, replay_id, symbol, timeframe) -> list[dict]:
        rows = self._query(
            "select * from ml_replay_forecasts where replay_id = ? and symbol = ? and timeframe = ?"
            " order by bar_ts",
            (replay_id, symbol, timeframe),
        )
        return [_replay_row(r) for r in rows]

    def abandon_stale_runs(self, ttl_s: int, reason: str, exclude: str | None = None) -> list[str]:
        cutoff = format_ts(datetime.now(UTC) - timedelta(seconds=ttl_s))
        where = "status = 'running' and coalesce(heartbeat_at, started_at) < ? and run_id is not ?"
        with self._lock:
            try:
                with self._conn:
                    ids = [
                        r[0]
                        for r in self._conn.execute(
                            f"select run_id from training_runs where {where} order by run_id",
                            (cutoff, exclude),
                        )
                    ]
                    self._conn.execute(
                        f"update training_runs set status = 'abandoned', error = ?, finished_at = ? where {where}",
                        (reason, _now(), cutoff, exclude),
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot sweep stale runs: {exc}") from exc
        return ids

    # --- monitoring thresholds ---------------------------------------------------------------------------
    def read_monitoring_thresholds(self) -> MonitoringThresholds | None:
        rows = self._query("select * from monitoring_settings where id = 1")
        return MonitoringThresholds.from_row(_from_db(rows[0])) if rows else None

    def publish_monitoring_thresholds(self, thresholds: MonitoringThresholds, by: str | None = None) -> None:
        t = thresholds
        self._write(
            "insert or replace into monitoring_settings (id, metric, retrain_drop, disable_runs, history_runs,"
            " max_model_age_days, updated_at, updated_by) values (1, ?, ?, ?, ?, ?, ?, ?)",
            (
                t.metric,
                t.retrain_drop,
                t.disable_runs,
                t.history_runs,
                json.dumps(t.max_model_age_days),
                _now(),
                by,
            ),
        )

    # --- leases: one writer at a time via BEGIN IMMEDIATE; times from this process's clock -----------
    @contextmanager
    def _immediate(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: one writer at a time), under the store's lock.

        durable=False commits without waiting for the disk (synchronous=NORMAL for this transaction only; the
        connection's own setting is restored): for the feature cache, which a crash may lose but never corrupt
        (WAL), and which is recomputed on demand.
        """
        with self._lock:
            previous = None
            try:
                if not durable:
                    previous = self._conn.execute("pragma synchronous").fetchone()[0]
                    self._conn.execute("pragma synchronous = normal")
                self._conn.execute("begin immediate")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("rollback")
                    raise
                self._conn.execute("commit")
            except sqlite3.Error as exc:
                raise StoreError(f"embedded store write failed: {exc}") from exc
            finally:
                if previous is not None:
                    self._conn.execute(f"pragma synchronous = {int(previous)}")

    def acquire_leases(self, names, holder, ttl_s, run_id=None, reclaim=()) -> LeaseGrant:
        wanted = sorted(set(names))
        gone = set(reclaim)
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=ttl_s)
        taken_over: list[dict[str, Any]] = []
        with self._immediate() as conn:
            rows = {
                r["name"]: r
                for r in conn.execute(
                    f"select * from job_leases where name in ({','.join('?' for _ in wanted)})", wanted
                ).fetchall()
            }
            reasons: dict[str, str] = {}
            for name in wanted:
                row = rows.get(name)
                if row is None or row["holder"] == holder:
                    continue
                if _lease_ts(row["expires_at"]) <= now:
                    reasons[name] = "expired"
                elif self._run_is_final(conn, row["run_id"]):
                    reasons[name] = "finished"  # the run ended but its release never landed
                elif row["holder"] in gone:
                    reasons[name] = "holder gone"
                else:
                    return LeaseGrant(
                        acquired=False,
                        name=name,
                        holder=row["holder"],
                        expires_at=_lease_ts(row["expires_at"]),
                    )
            for name in wanted:
                row = rows.get(name)
                if row is not None and name in reasons:
                    taken_over.append(
                        {
                            "name": name,
                            "holder": row["holder"],
                            "run_id": row["run_id"],
                            "reason": reasons[name],
                        }
                    )
                keep_acquired = (
                    row is not None and row["holder"] == holder and _lease_ts(row["expires_at"]) > now
                )
                conn.execute(
                    "insert or replace into job_leases (name, holder, run_id, acquired_at, expires_at)"
                    " values (?,?,?,?,?)",
                    (
                        name,
                        holder,
                        run_id,
                        row["acquired_at"] if row is not None and keep_acquired else format_ts(now),
                        format_ts(expires),
                    ),
                )
        return LeaseGrant(
            acquired=True,
            names=tuple(wanted),
            holder=holder,
            expires_at=expires,
            taken_over=tuple(taken_over),
        )

    @staticmethod
    def _run_is_final(conn: sqlite3.Connection, run_id: str | None) -> bool:
        if not run_id:
            return False
        row = conn.execute("select status from training_runs where run_id = ?", (run_id,)).fetchone()
        return row is not None and row["status"] != "running"

    def renew_leases(self, names, holder, ttl_s) -> int:
        wanted = sorted(set(names))
        expires = format_ts(datetime.now(UTC) + timedelta(seconds=ttl_s))
        marks = ",".join("?" for _ in wanted)
        return self._write(
            f"update job_leases set expires_at = ? where holder = ? and name in ({marks})",
            (expires, holder, *wanted),
        )

    def release_leases(self, names, holder) -> int:
        wanted = sorted(set(names))
        marks = ",".join("?" for _ in wanted)
        return self._write(
            f"delete from job_leases where holder = ? and name in ({marks})", (holder, *wanted)
        )
