"""Embedded store on SQLite (standard library): the default when no Supabase is configured.

Same tables and columns as the Postgres schema in supabase/migrations. Timestamps are stored as fixed-width
ISO-8601 UTC text (`2024-01-02T14:30:00.000000Z`), which sorts like the instant it names; JSON as text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ml.src.data.feature_chunks import (
    FeatureChunk,
    chunks_to_frame,
    merge_chunks,
    text_to_us,
    timestamps_to_us,
)
from ml.src.data.records import (
    LeaseGrant,
    ModelVersionRecord,
    MonitoringThresholds,
    ResultRecord,
    RunOutcome,
    RunRecord,
)
from ml.src.data.sqlite_base import (
    from_db,
    lease_ts,
    to_db,
)
from ml.src.data.sqlite_live import SqliteLiveRecord
from ml.src.data.sqlite_schema import now as now_text
from ml.src.data.store import (
    BAR_COLUMNS,
    TS_FORMAT,
    StoreError,
    checked_symbol,
    empty_bars,
    format_ts,
)


class SqliteStore(SqliteLiveRecord):
    """The embedded store: market data, the feature cache, the run ledger and registry, monitoring thresholds,
    leases (forecasts and replays: SqliteLiveRecord; connection and rows: SqliteBase)."""

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
        now = now_text()
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
        now = now_text()
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
            tuple(to_db(k, row[k]) for k in keys),
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
            (*(to_db(k, v) for k, v in row.items()), run_id),
        )

    def _write_result(self, result: ResultRecord, model_version: ModelVersionRecord | None) -> None:
        with self._lock:
            try:
                with self._conn:  # one transaction: both rows or neither
                    self._insert(
                        "training_results", {**result.to_row(), "created_at": now_text()}, self._conn
                    )
                    if model_version is not None:
                        row = {**model_version.to_row(), "created_at": now_text()}
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
                                    (to_db("metrics", metrics), row_id),
                                )
                                changed += table == "training_results"
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record the verdicts of run {run_id}: {exc}") from exc
        return changed

    def get_run(self, run_id) -> dict | None:
        rows = self._query("select * from training_runs where run_id = ?", (run_id,))
        return from_db(rows[0]) if rows else None

    def find_result(self, run_id, symbol, timeframe) -> dict | None:
        rows = self._query(
            "select * from training_results where run_id = ? and symbol = ? and timeframe = ?",
            (run_id, symbol, timeframe),
        )
        return from_db(rows[0]) if rows else None

    def list_results(self, run_id) -> list[dict]:
        rows = self._query("select * from training_results where run_id = ? order by id", (run_id,))
        return [from_db(r) for r in rows]

    def list_model_versions(self, symbol, timeframe) -> list[dict]:
        rows = self._query(
            "select * from model_versions where symbol = ? and timeframe = ? order by id desc",
            (symbol, timeframe),
        )
        return [from_db(r) for r in rows]

    def get_champion(self, symbol, timeframe) -> dict | None:
        rows = self._query(
            "select * from model_versions where symbol = ? and timeframe = ? and is_champion = 1",
            (symbol, timeframe),
        )
        return from_db(rows[0]) if rows else None

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
                        from_db(r)
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
        return [from_db(r) for r in self._query(sql + " order by t.started_at, r.id", tuple(params))]

    def _last_training_row(self, symbol: str, timeframe: str) -> tuple[Any, Any] | None:
        rows = self._query(
            "select json_extract(split, '$.data_end'), json_extract(split, '$.data_revision')"
            " from training_results where symbol = ? and timeframe = ? and status = 'succeeded'"
            " order by id desc limit 1",
            (symbol, timeframe),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def heartbeat(self, run_id: str) -> None:
        self._write("update training_runs set heartbeat_at = ? where run_id = ?", (now_text(), run_id))

    def mark_runs_abandoned(self, run_ids: Sequence[str], reason: str) -> int:
        if not run_ids:
            return 0
        marks = ",".join("?" for _ in run_ids)
        return self._write(
            f"update training_runs set status = 'abandoned', error = ?, finished_at = ?"
            f" where status = 'running' and run_id in ({marks})",
            (reason, now_text(), *run_ids),
        )

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
                        (reason, now_text(), cutoff, exclude),
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot sweep stale runs: {exc}") from exc
        return ids

    # --- monitoring thresholds ---------------------------------------------------------------------------
    def read_monitoring_thresholds(self) -> MonitoringThresholds | None:
        rows = self._query("select * from monitoring_settings where id = 1")
        return MonitoringThresholds.from_row(from_db(rows[0])) if rows else None

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
                now_text(),
                by,
            ),
        )

    # --- leases: one writer at a time via BEGIN IMMEDIATE; times from this process's clock -----------
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
                if lease_ts(row["expires_at"]) <= now:
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
                        expires_at=lease_ts(row["expires_at"]),
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
                    row is not None and row["holder"] == holder and lease_ts(row["expires_at"]) > now
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
