"""The embedded store's live record and replays: forecasts, their realised outcomes, and replayed pairs (kept
apart from the live record)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    ReplayPairRows,
)
from ml.src.data.sqlite_base import (
    FORECAST_TS_COLUMNS,
    SqliteBase,
    replay_row,
    replay_value,
    to_db,
)
from ml.src.data.sqlite_schema import now as now_text
from ml.src.data.store import (
    StoreError,
    format_ts,
)


class SqliteLiveRecord(SqliteBase):
    """Forecasts, outcomes and replays on the embedded store."""

    # --- forecasts ---------------------------------------------------------------------------------------
    def insert_forecast(self, forecast: ForecastRecord) -> bool:
        row = {**forecast.to_row(), "created_at": now_text()}
        keys = list(row)
        sql = (
            f"insert into ml_forecasts ({', '.join(keys)}) values ({', '.join('?' for _ in keys)})"
            " on conflict (symbol, timeframe, bar_ts, model_version_id) do nothing"
        )
        return self._write(sql, tuple(to_db(k, row[k]) for k in keys)) == 1

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
        for key in FORECAST_TS_COLUMNS:
            if row[key] is not None:
                row[key] = pd.Timestamp(row[key]).isoformat()
        return row

    def record_forecast_outcomes(self, outcomes: Sequence[ForecastOutcome]) -> int:
        if not outcomes:
            return 0
        now = now_text()
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
                replay_value("config", config),
                replay_value("scope", scope),
            ),
        )

    def _write_replay_pair(self, replay_id: str, pair: ReplayPairRows) -> None:
        row = {**pair.to_row(replay_id), "created_at": now_text()}
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
                        tuple(replay_value(k, row[k]) for k in keys),
                    )
                    if forecasts:
                        self._conn.executemany(
                            f"insert into ml_replay_forecasts ({', '.join(fkeys)})"
                            f" values ({', '.join('?' for _ in fkeys)})",
                            [(*key, *(replay_value(k, f[k]) for k in fkeys[3:])) for f in forecasts],
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
        return replay_row(rows[0]) if rows else None

    def list_replay_pairs(self, replay_id) -> list[dict]:
        rows = self._query(
            "select * from ml_replay_pairs where replay_id = ? order by symbol, timeframe", (replay_id,)
        )
        return [replay_row(r) for r in rows]

    def list_replay_forecasts(self, replay_id, symbol, timeframe) -> list[dict]:
        rows = self._query(
            "select * from ml_replay_forecasts where replay_id = ? and symbol = ? and timeframe = ?"
            " order by bar_ts",
            (replay_id, symbol, timeframe),
        )
        return [replay_row(r) for r in rows]

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
                                (replay_value("record", record), row_id),
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
