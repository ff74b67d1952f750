"""The embedded store's schema: sqlite_schema.sql with its identifier checks filled in, and the upgrade of a file
an earlier version wrote (columns added, tables rebuilt with the checks), in one transaction each."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources

from config.settings import Settings
from ml.src.data.records import thresholds_from_settings
from ml.src.data.store import format_ts


def now() -> str:
    return format_ts(datetime.now(UTC))


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


def statements(script: str) -> list[str]:
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


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a file written by an earlier version up to SCHEMA_VERSION (idempotent, one transaction)."""
    if conn.execute("pragma user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with conn:
        for table, column, kind in _ADDED_COLUMNS:
            have = {r[1] for r in conn.execute(f"pragma table_info({table})")}
            if column not in have:
                conn.execute(f"alter table {table} add column {column} {kind}")
        # the old one-JSON-row-per-bar cache (a cache: recomputed on demand)
        conn.execute("drop table if exists feature_cache")
        # pairs that already had bars start at revision 1
        conn.execute(
            "insert or ignore into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)"
            " select symbol, timeframe, 1, min(ts), ? from ohlc_bars group by symbol, timeframe",
            (now(),),
        )
        conn.execute(
            "insert or ignore into monitoring_settings (id, metric, retrain_drop, disable_runs,"
            " history_runs, max_model_age_days, updated_at) values (1, ?, ?, ?, ?, ?, ?)",
            (
                _DEFAULT_THRESHOLDS.metric,
                _DEFAULT_THRESHOLDS.retrain_drop,
                _DEFAULT_THRESHOLDS.disable_runs,
                _DEFAULT_THRESHOLDS.history_runs,
                json.dumps(_DEFAULT_THRESHOLDS.max_model_age_days),
                now(),
            ),
        )
    add_symbol_checks(conn)  # sets user_version in its transaction: a failed rebuild is retried next open


def _tables_without_symbol_checks(conn: sqlite3.Connection) -> list[str]:
    return [
        name
        for name, sql in conn.execute(
            f"select name, sql from sqlite_master where type = 'table' and name in"
            f" ({', '.join('?' * len(CHECKED_TABLES))})",
            CHECKED_TABLES,
        )
        if f"{name}_{'ticker' if name == 'symbols' else 'symbol'}_format" not in sql
    ]


def add_symbol_checks(conn: sqlite3.Connection) -> None:
    """Rebuild the tables of an older file whose symbol column lacks symbol_check (SQLite cannot add a CHECK to
    a table): create the new table, copy the rows, drop the old one, rename, recreate its indexes and triggers;
    one transaction, which also sets user_version. Rows an earlier tool wrote with an invalid symbol are kept
    (like Postgres' NOT VALID); the readers check every identifier they read back before it names a file."""
    script = statements(SCHEMA)
    conn.execute("pragma foreign_keys = off")  # a no-op inside a transaction: set before it
    conn.execute("pragma ignore_check_constraints = on")
    try:
        conn.execute("begin immediate")
        try:
            old = _tables_without_symbol_checks(conn)  # under the lock: another process may have done it
            for name in old:
                create = next(t for t in script if t.startswith(f"create table if not exists {name} ("))
                conn.execute(
                    create.replace(f"create table if not exists {name} (", f"create table {name}__v4 (", 1)
                )
                cols = ", ".join(r[1] for r in conn.execute(f"pragma table_info({name}__v4)"))
                conn.execute(f"insert into {name}__v4 ({cols}) select {cols} from {name}")
                conn.execute(f"drop table {name}")
                conn.execute(f"alter table {name}__v4 rename to {name}")
            if old:
                for sql in script:  # the dropped tables' indexes and triggers (the rest exist: no-ops)
                    if not sql.startswith("create table"):
                        conn.execute(sql)
                problems = conn.execute("pragma foreign_key_check").fetchall()
                if problems:
                    raise sqlite3.IntegrityError(f"foreign keys broken by the rebuild: {problems[:3]}")
            conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        conn.execute("pragma ignore_check_constraints = off")
        conn.execute("pragma foreign_keys = on")
