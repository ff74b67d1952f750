"""The two stores hold the same facts: the embedded SQLite schema against the Postgres migrations, on the stack.

For every table both schemas have: the same columns, the same nullability, and the same enumerated value sets
(`x in (...)` in SQLite, `x = ANY (ARRAY[...])` in Postgres). The value sets also equal the Python lists the code
uses (records.RUN_STATUSES, RESULT_STATUSES, config.timeframes.TIMEFRAMES), so a status or a timeframe is named
once and checked everywhere. Postgres-only objects (views, RPCs, leases as Postgres needs them) are not compared.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from config.timeframes import TIMEFRAMES
from ml.src.data.local_db import SqliteStore
from ml.src.data.records import RESULT_STATUSES, RUN_STATUSES

Enum = tuple[str, frozenset[str]]

_SQLITE_IN = re.compile(r"\b([a-z_]+)\s+in\s*\(([^()]*)\)", re.IGNORECASE | re.DOTALL)
_PG_ANY = re.compile(r"\(?([a-z_]+)\)?(?:::text)?\s*=\s*ANY\s*\(\(?ARRAY\[([^\]]*)\]", re.IGNORECASE)
_PG_IN = re.compile(r"\(?([a-z_]+)\)?(?:::text)?\s+IN\s*\(([^()]*)\)", re.IGNORECASE)
_QUOTED = re.compile(r"'([^']*)'")
_CHECK = re.compile(r"\bcheck\s*\(", re.IGNORECASE)


def sqlite_enums(sql: str) -> set[Enum]:
    return {
        (col.lower(), frozenset(_QUOTED.findall(values)))
        for col, values in _SQLITE_IN.findall(sql)
        if _QUOTED.findall(values)
    }


def postgres_enums(defs: list[str]) -> set[Enum]:
    out: set[Enum] = set()
    for text in defs:
        for pattern in (_PG_ANY, _PG_IN):
            for col, values in pattern.findall(text):
                if _QUOTED.findall(values):
                    out.add((col.lower(), frozenset(_QUOTED.findall(values))))
    return out


def sqlite_schema(path: Path) -> dict[str, dict[str, Any]]:
    SqliteStore(path).close()  # creates every table at the current schema version
    conn = sqlite3.connect(path)
    try:
        tables = conn.execute(
            "select name, sql from sqlite_master where type = 'table' and name not like 'sqlite_%'"
        ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for name, sql in tables:
            columns = {
                row[1]: not row[3] and not row[5]  # nullable: no NOT NULL and not a primary key column
                for row in conn.execute(f"pragma table_info({name})")
            }
            out[name] = {"columns": columns, "enums": sqlite_enums(sql), "checks": len(_CHECK.findall(sql))}
        return out
    finally:
        conn.close()


def postgres_schema(pg: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = pg.execute(
        """select c.table_name, c.column_name, c.is_nullable = 'YES'
             from information_schema.columns c
             join information_schema.tables t using (table_schema, table_name)
            where c.table_schema = 'public' and t.table_type = 'BASE TABLE'"""
    ).fetchall()
    for table, column, nullable in rows:
        out.setdefault(table, {"columns": {}, "enums": set(), "checks": 0})["columns"][column] = nullable
    checks = pg.execute(
        """select cl.relname, pg_get_constraintdef(con.oid)
             from pg_constraint con
             join pg_class cl on cl.oid = con.conrelid
             join pg_namespace n on n.oid = cl.relnamespace
            where n.nspname = 'public' and con.contype = 'c'"""
    ).fetchall()
    for table, definition in checks:
        if table in out:
            out[table]["enums"] |= postgres_enums([definition])
            out[table]["checks"] += 1
    return out


def test_the_enum_extraction_reads_both_dialects() -> None:
    """The parsers themselves can fail: each dialect's spelling of one value set gives the same set."""
    sqlite = "status text not null check (status in\n ('running','succeeded'))"
    postgres = "CHECK ((status = ANY (ARRAY['running'::text, 'succeeded'::text])))"
    assert (
        sqlite_enums(sqlite)
        == postgres_enums([postgres])
        == {("status", frozenset({"running", "succeeded"}))}
    )
    assert postgres_enums(
        ["CHECK (((timeframe)::text = ANY ((ARRAY['d1'::character varying])::text[])))"]
    ) == {("timeframe", frozenset({"d1"}))}


@pytest.mark.supabase
def test_sqlite_and_postgres_have_the_same_tables_columns_and_value_sets(
    tmp_path: Path, pg: psycopg.Connection[Any]
) -> None:
    lite = sqlite_schema(tmp_path / "parity.sqlite3")
    postgres = postgres_schema(pg)
    shared = sorted(set(lite) & set(postgres))
    # Every embedded table is a table of the migrations (SQLite has no table Postgres lacks).
    assert sorted(set(lite) - set(postgres)) == []
    problems: list[str] = []
    for table in shared:
        a, b = lite[table]["columns"], postgres[table]["columns"]
        if set(a) != set(b):
            problems.append(
                f"{table}: columns only in sqlite {sorted(set(a) - set(b))}, only in postgres {sorted(set(b) - set(a))}"
            )
        for column in sorted(set(a) & set(b)):
            if a[column] != b[column]:
                problems.append(f"{table}.{column}: nullable in sqlite={a[column]}, in postgres={b[column]}")
        if lite[table]["enums"] != postgres[table]["enums"]:
            only_lite = sorted((c, sorted(v)) for c, v in lite[table]["enums"] - postgres[table]["enums"])
            only_pg = sorted((c, sorted(v)) for c, v in postgres[table]["enums"] - lite[table]["enums"])
            problems.append(f"{table}: value sets only in sqlite {only_lite}, only in postgres {only_pg}")
        if lite[table]["checks"] != postgres[table]["checks"]:
            problems.append(
                f"{table}: {lite[table]['checks']} checks in sqlite, {postgres[table]['checks']} in postgres"
            )
    assert problems == []


def test_the_value_sets_are_the_codes_own_lists(tmp_path: Path) -> None:
    """One source for statuses and timeframes: each CHECK's list equals the Python list the code uses."""
    lite = sqlite_schema(tmp_path / "lists.sqlite3")
    expected = {
        ("training_runs", "status"): frozenset(RUN_STATUSES),
        ("training_results", "status"): frozenset(RESULT_STATUSES),
    }
    for (table, column), values in expected.items():
        assert (column, values) in lite[table]["enums"], (table, column)
    for table, facts in lite.items():
        for column, values in facts["enums"]:
            if column == "timeframe":
                assert values == frozenset(TIMEFRAMES), table


@pytest.mark.supabase
def test_monitoring_defaults_are_one_set_in_settings_sqlite_and_postgres(
    tmp_path: Path, pg: psycopg.Connection[Any]
) -> None:
    """The thresholds a new store starts with: the settings' defaults, in SQLite's first row and in the
    defaults of the Postgres table (the migration's numbers)."""
    import json

    from config.settings import Settings
    from ml.src.data.records import MonitoringThresholds, thresholds_from_settings

    expected = thresholds_from_settings(Settings.model_construct())
    with SqliteStore(tmp_path / "defaults.sqlite3") as store:
        assert store.read_monitoring_thresholds() == expected
    defaults = dict(
        pg.execute(
            """select column_name, column_default from information_schema.columns
                where table_schema = 'public' and table_name = 'monitoring_settings'"""
        ).fetchall()
    )
    in_postgres = MonitoringThresholds(
        metric=defaults["metric"].split("'")[1],
        retrain_drop=float(defaults["retrain_drop"]),
        disable_runs=int(defaults["disable_runs"]),
        history_runs=int(defaults["history_runs"]),
        max_model_age_days={
            tf: float(v) for tf, v in json.loads(defaults["max_model_age_days"].split("'")[1]).items()
        },
    )
    assert in_postgres == expected
