"""The embedded store's foundation: its connection, lock and transactions, and how rows go in and come out
(timestamps as fixed-width UTC text, JSON as text). local_db.SqliteStore builds on it."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ml.src.data.sqlite_schema import SCHEMA, upgrade
from ml.src.data.store import (
    StoreError,
    TrainingStore,
    format_ts,
)

REPLAY_TS_COLUMNS = frozenset(
    {"started_at", "finished_at", "first_bar_ts", "last_bar_ts", "created_at", "bar_ts", "trained_through"}
)
REPLAY_JSON_COLUMNS = frozenset({"config", "scope", "record", "steps"})


def replay_row(r: sqlite3.Row) -> dict[str, Any]:
    row = dict(zip(r.keys(), tuple(r), strict=True))
    for key, value in row.items():
        if value is None:
            continue
        if key in REPLAY_TS_COLUMNS:
            row[key] = pd.Timestamp(value).isoformat()
        elif key in REPLAY_JSON_COLUMNS:
            row[key] = json.loads(value)
    return row


def replay_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in REPLAY_JSON_COLUMNS:
        return json.dumps(value, allow_nan=False, default=str)
    if isinstance(value, datetime):
        return format_ts(value)
    return value


FORECAST_TS_COLUMNS = frozenset(
    {"bar_ts", "target_ts", "model_trained_at", "created_at", "realised_bar_ts", "realised_at"}
)

JSON_COLUMNS = frozenset(
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
BOOL_COLUMNS = frozenset({"active", "is_champion"})


def lease_ts(value: str) -> datetime:
    return pd.Timestamp(value).to_pydatetime()


def to_db(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in JSON_COLUMNS:
        return json.dumps(value, allow_nan=False, default=str)
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, bool):
        return int(value)
    return value


def from_db(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in row.keys():  # noqa: SIM118 - sqlite3.Row is not a mapping
        value = row[key]
        if value is not None and key in JSON_COLUMNS:
            value = json.loads(value)
        elif value is not None and key in BOOL_COLUMNS:
            value = bool(value)
        out[key] = value
    return out


class TimedLock:
    """The store's lock, also adding the time each holder spends inside to the store's io_seconds."""

    def __init__(self, store: SqliteBase) -> None:
        self._lock = threading.Lock()
        self._store = store
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._lock.acquire()
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._store.io_seconds += time.perf_counter() - self._t0
        self._lock.release()


class SqliteBase(TrainingStore):
    """Connection, lock and transactions of the embedded store (the domains are in its subclasses)."""

    name = "embedded"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = TimedLock(self)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("pragma journal_mode=wal")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a power cut may lose the last
            # commits but never corrupts the file, and an application crash loses nothing.
            self._conn.execute("pragma synchronous=normal")
            self._conn.execute("pragma foreign_keys=on")
            self._conn.executescript(SCHEMA)
            upgrade(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open embedded store {self.path}: {exc}") from exc

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
