"""Embedded store on SQLite (standard library): the default when no Supabase is configured.

Same tables and columns as the Postgres schema in supabase/migrations. Timestamps are stored as fixed-width
ISO-8601 UTC text (`2024-01-02T14:30:00.000000Z`), which sorts like the instant it names; JSON as text.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from config.settings import Settings
from ml.src.data.feature_chunks import (
    FeatureChunk,
    chunks_to_frame,
    merge_chunks,
    text_to_us,
    timestamps_to_us,
)
from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    LeaseGrant,
    ModelVersionRecord,
    MonitoringThresholds,
    ReplayPairRows,
    ResultRecord,
    RunOutcome,
    RunRecord,
    thresholds_from_settings,
)
from ml.src.data.store import (
    BAR_COLUMNS,
    TS_FORMAT,
    StoreError,
    TrainingStore,
    checked_symbol,
    empty_bars,
    format_ts,
)


def symbol_check(table: str, column: str = "symbol") -> str:
    """The column constraint of ml.src.data.identifiers.SYMBOL_PATTERN in SQLite (no regexp there): 1-20 ASCII
    characters of A-Z 0-9 . = ^ -, the first a letter or digit (the byte length rules out a hidden NUL)."""
    c = column
    return (
        f"constraint {table}_{c}_format check (length({c}) between 1 and 20 and length(cast({c} as blob)) ="
        f" length({c}) and {c} glob '[A-Z0-9]*' and {c} not glob '*[^A-Z0-9.=^-]*')"
    )


def fill_schema(template: str, check: Callable[[str, str], str] = symbol_check) -> str:
    """The DDL with each `@table.column` marker replaced by that column's constraint (tests pass another check
    to build a file as an earlier version wrote it)."""
    return re.sub(r"@(\w+)\.(\w+)", lambda m: check(m.group(1), m.group(2)), template)


# The schema itself is SQL of its own (sqlite_schema.sql, beside this module).
SCHEMA_TEMPLATE = (resources.files("ml.src.data") / "sqlite_schema.sql").read_text(encoding="utf-8")
SCHEMA = fill_schema(SCHEMA_TEMPLATE)
# the tables whose symbol column carries symbol_check (rebuilt when a file from before schema version 4 opens)
CHECKED_TABLES = (
    "symbols",
    "ohlc_bars",
    "bar_revisions",
    "feature_chunks",
    "training_results",
    "model_versions",
    "ml_forecasts",
    "ml_replay_pairs",
    "ml_replay_forecasts",
)


def _statements(script: str) -> list[str]:
    """The script's statements, whole (a trigger's BEGIN ... END with its inner `;` stays one statement)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        if not buf.strip() and line.lstrip().startswith("--"):
            continue  # a comment before a statement: not part of it
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    return out


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
# 4: the symbol columns carry the identifier check (the tables are rebuilt, issue 21 case 4).
SCHEMA_VERSION = 4
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("training_runs", "warnings", "text"),
    ("training_results", "artifact_signature", "text"),
    ("model_versions", "artifact_signature", "text"),
    ("ml_forecasts", "realised_revision", "integer"),
)
# The thresholds a new file starts with: the settings' defaults (not the environment), the same values the
# monitoring_settings migration writes (tests/test_schema_parity.py compares them).
_DEFAULT_THRESHOLDS = thresholds_from_settings(Settings.model_construct())

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
        self._add_symbol_checks()  # sets user_version in its transaction: a failed rebuild is retried next open

    def _tables_without_symbol_checks(self) -> list[str]:
        return [
            name
            for name, sql in self._conn.execute(
                f"select name, sql from sqlite_master where type = 'table' and name in"
                f" ({', '.join('?' * len(CHECKED_TABLES))})",
                CHECKED_TABLES,
            )
            if f"{name}_{'ticker' if name == 'symbols' else 'symbol'}_format" not in sql
        ]

    def _add_symbol_checks(self) -> None:
        """Rebuild the tables of an older file whose symbol column lacks symbol_check (SQLite cannot add a CHECK to
        a table): create the new table, copy the rows, drop the old one, rename, recreate its indexes and triggers;
        one transaction, which also sets user_version. Rows an earlier tool wrote with an invalid symbol are kept
        (like Postgres' NOT VALID); the readers check every identifier they read back before it names a file."""
        statements = _statements(SCHEMA)
        self._conn.execute("pragma foreign_keys = off")  # a no-op inside a transaction: set before it
        self._conn.execute("pragma ignore_check_constraints = on")
        try:
            self._conn.execute("begin immediate")
            try:
                old = self._tables_without_symbol_checks()  # under the lock: another process may have done it
                for name in old:
                    create = next(
                        t for t in statements if t.startswith(f"create table if not exists {name} (")
                    )
                    self._conn.execute(
                        create.replace(
                            f"create table if not exists {name} (", f"create table {name}__v4 (", 1
                        )
                    )
                    cols = ", ".join(r[1] for r in self._conn.execute(f"pragma table_info({name}__v4)"))
                    self._conn.execute(f"insert into {name}__v4 ({cols}) select {cols} from {name}")
                    self._conn.execute(f"drop table {name}")
                    self._conn.execute(f"alter table {name}__v4 rename to {name}")
                if old:
                    for (
                        sql
                    ) in statements:  # the dropped tables' indexes and triggers (the rest exist: no-ops)
                        if not sql.startswith("create table"):
                            self._conn.execute(sql)
                    problems = self._conn.execute("pragma foreign_key_check").fetchall()
                    if problems:
                        raise sqlite3.IntegrityError(f"foreign keys broken by the rebuild: {problems[:3]}")
                self._conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
        finally:
            self._conn.execute("pragma ignore_check_constraints = off")
            self._conn.execute("pragma foreign_keys = on")

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

    def _write_bars(self, symbol: str, timeframe: str, frame: pd.DataFrame) -> int:
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

    def _write_feature_chunks(
        self, symbol: str, timeframe: str, version: str, chunks: list[FeatureChunk], revision: int | None
    ) -> int:
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
        return sum(c.n_rows for c in chunks)

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

    def _write_result(self, result: ResultRecord, model_version: ModelVersionRecord | None) -> None:
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

    def record_verdicts(self, run_id: str, verdicts: Mapping[tuple[str, str], dict[str, Any]]) -> int:
        if not verdicts:
            return 0
        changed = 0
        with self._lock:
            try:
                with self._conn:  # one transaction: every pair's verdict or none
                    for (symbol, timeframe), verdict in verdicts.items():
                        for table, extra in (
                            ("training_results", " and status = 'succeeded'"),
                            ("model_versions", ""),
                        ):
                            rows = self._conn.execute(
                                f"select id, metrics from {table}"
                                f" where run_id = ? and symbol = ? and timeframe = ?{extra}",
                                (run_id, symbol, timeframe),
                            ).fetchall()
                            for row_id, raw in rows:
                                metrics = json.loads(raw) if raw else {}
                                metrics["verdict"] = verdict
                                self._conn.execute(
                                    f"update {table} set metrics = ? where id = ?",
                                    (_to_db("metrics", metrics), row_id),
                                )
                                changed += table == "training_results"
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record the verdicts of run {run_id}: {exc}") from exc
        return changed

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

    def results_history(self, symbol=None, timeframe=None, *, include_failed=False) -> list[dict]:
        statuses = "('succeeded','failed')" if include_failed else "('succeeded')"
        sql = (
            "select r.*, t.started_at from training_results r join training_runs t on t.run_id = r.run_id"
            f" where r.status in {statuses}"
        )
        params: list[Any] = []
        if symbol is not None:
            sql += " and r.symbol = ?"
            params.append(symbol)
        if timeframe is not None:
            sql += " and r.timeframe = ?"
            params.append(timeframe)
        return [_from_db(r) for r in self._query(sql + " order by t.started_at, r.id", tuple(params))]

    def _last_training_row(self, symbol: str, timeframe: str) -> tuple[Any, Any] | None:
        rows = self._query(
            "select json_extract(split, '$.data_end'), json_extract(split, '$.data_revision')"
            " from training_results where symbol = ? and timeframe = ? and status = 'succeeded'"
            " order by id desc limit 1",
            (symbol, timeframe),
        )
        return (rows[0][0], rows[0][1]) if rows else None

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

    def _write_replay_pair(self, replay_id: str, pair: ReplayPairRows) -> None:
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

    def record_replay_verdicts(self, replay_id, verdicts) -> int:
        if not verdicts:
            return 0
        changed = 0
        with self._lock:
            try:
                with self._conn:  # one transaction: every pair's verdict or none
                    for (symbol, timeframe), verdict in verdicts.items():
                        where = "where replay_id = ? and symbol = ? and timeframe = ? and record is not null"
                        key = (replay_id, symbol, timeframe)
                        for row_id, raw in self._conn.execute(
                            f"select id, record from ml_replay_pairs {where}", key
                        ).fetchall():
                            record = {**json.loads(raw), "verdict": verdict}
                            self._conn.execute(
                                "update ml_replay_pairs set record = ? where id = ?",
                                (_replay_value("record", record), row_id),
                            )
                            changed += 1
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record the verdicts of replay {replay_id}: {exc}") from exc
        return changed

    def _latest_replay_id(self, symbol, timeframe, through) -> str | None:
        rows = self._query(
            "select p.replay_id from ml_replay_pairs p join ml_replays r on r.replay_id = p.replay_id"
            " where p.symbol = ? and p.timeframe = ? and p.status = 'succeeded'"
            " and r.finished_at is not null and r.status in ('succeeded', 'failed')"
            " and (? is null or p.last_bar_ts <= ?)"
            " order by r.started_at desc, r.finished_at desc limit 1",
            (symbol, timeframe, through, through),
        )
        return str(rows[0]["replay_id"]) if rows else None

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
