"""The job against the real local Supabase stack: official client -> nginx gateway -> PostgREST -> PostgreSQL."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest

from config.settings import Settings
from ml.src.cli.train import main
from ml.src.data import load_bars
from ml.src.data.store import StoreUnavailable
from ml.src.data.supabase_db import SupabaseStore
from ml.src.training.artifacts import sha256_file
from ml.src.training.run_loop import run_job
from tests.factories import sample_bars, sample_csv

pytestmark = pytest.mark.slow


def test_big_pair_trains_end_to_end_and_every_row_arrives(
    supabase_env, pg, capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(
        "ML_FEATURE_CACHE", "on"
    )  # the cache through PostgREST (off by default there: measured)
    # IXIC d1 as shipped (2,500 bars, past the 1,000-row cap), loaded through the CLI into Postgres via PostgREST
    src = sample_csv("IXIC", "d1")
    pg.execute("delete from ohlc_bars where symbol = 'IXIC' and timeframe = 'd1'")
    pg.execute("delete from feature_chunks where symbol = 'IXIC' and timeframe = 'd1'")
    assert load_bars.main([str(src), "--quiet"]) == 0
    assert (
        pg.execute("select count(*) from ohlc_bars where symbol='IXIC' and timeframe='d1'").fetchone()[0]
        == 2500
    )

    code = main(["--symbol", "IXIC", "--timeframes", "d1", "--target-bars", "2200", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["store"] == "supabase"
    r = out["results"][0]
    assert r["status"] == "succeeded"
    assert r["n_train"] + r["n_valid"] + r["n_test"] + 2 * 5 + 5 == 2200
    # every feature row of the 2,200-bar window is in Postgres, computed once
    n_cache, n_chunks = pg.execute(
        "select sum(n_rows), count(*) from feature_chunks where symbol='IXIC' and timeframe='d1'"
    ).fetchone()
    assert n_cache == 2200 and n_chunks < 12  # a year of bars per row, not one row per bar

    run = pg.execute(
        "select status, n_succeeded, config_hash, host from training_runs where run_id = %s", (out["run_id"],)
    ).fetchone()
    assert run[0] == "succeeded" and run[1] == 1 and run[2] and run[3]
    res = pg.execute(
        "select status, artifact_sha256, metrics->'ensemble'->>'test_balanced_accuracy', n_test "
        "from training_results where run_id = %s",
        (out["run_id"],),
    ).fetchone()
    assert res[0] == "succeeded" and res[1] == r["artifact_sha256"] == sha256_file(r["artifact_file"])
    assert float(res[2]) == pytest.approx(r["metrics"]["ensemble"]["test_balanced_accuracy"])
    mv = pg.execute(
        "select artifact_sha256, artifact_path from model_versions where run_id = %s", (out["run_id"],)
    ).fetchone()
    assert mv == (r["artifact_sha256"], r["artifact_path"])
    latest = pg.execute(
        "select run_id::text from latest_models where symbol='IXIC' and timeframe='d1'"
    ).fetchone()
    assert latest[0] == out["run_id"]

    # A second run reads the whole window from the cache: nothing recomputed, identical features.
    code = main(
        ["--symbol", "IXIC", "--timeframes", "d1", "--target-bars", "2200", "--json", "--quiet", "--force"]
    )
    again = json.loads(capsys.readouterr().out)
    assert code == 0
    assert again["results"][0]["metrics"]["ensemble"] == r["metrics"]["ensemble"]
    assert (
        pg.execute(
            "select sum(n_rows) from feature_chunks where symbol='IXIC' and timeframe='d1'"
        ).fetchone()[0]
        == 2200
    )


class FaultyReads(SupabaseStore):
    """Real gateway 503s (nginx's file switch) while reading one symbol's bars."""

    def __init__(self, *args: Any, fault: Any, faulty_symbol: str, clear_after: int | None = None, **kw: Any):
        self.fault, self.faulty_symbol, self.clear_after, self.sleeps = fault, faulty_symbol, clear_after, 0
        super().__init__(*args, sleep=self._sleep_hook, **kw)

    def _sleep_hook(self, seconds: float) -> None:
        self.sleeps += 1
        if self.clear_after is not None and self.sleeps >= self.clear_after:
            self.fault.off()

    def read_bars(self, symbol, timeframe, **kw):
        if symbol != self.faulty_symbol:
            return super().read_bars(symbol, timeframe, **kw)
        self.fault.on()
        try:
            return super().read_bars(symbol, timeframe, **kw)
        finally:
            self.fault.off()


def _seed_two_symbols(stack: dict[str, str]) -> None:
    with SupabaseStore(stack["SUPABASE_URL"], stack["SUPABASE_SERVICE_ROLE_KEY"]) as s:
        for sym in ("IBM", "GSPC"):
            s.upsert_bars(sym, "d1", sample_bars(sym, "d1", last=700))


def test_persistent_503_fails_that_pair_and_the_run_goes_on(
    supabase_env, gateway_fault_503, pg, caplog
) -> None:
    _seed_two_symbols(supabase_env)
    key = supabase_env["SUPABASE_SERVICE_ROLE_KEY"]
    store = FaultyReads(
        supabase_env["SUPABASE_URL"],
        key,
        fault=gateway_fault_503,
        faulty_symbol="IBM",
        max_retries=2,
        backoff_s=0.01,
    )
    with caplog.at_level(logging.WARNING), store:
        report = run_job(store, Settings(), ["IBM", "GSPC"], ["d1"], target_bars=400, workers=1)
    by = {r.symbol: r for r in report.results}
    assert by["IBM"].status == "failed"
    assert "503" in by["IBM"].error and "after 3 attempts" in by["IBM"].error and "\n" not in by["IBM"].error
    assert by["GSPC"].status == "succeeded"
    assert store.sleeps == 2  # bounded: two retries, then give up
    row = pg.execute(
        "select status, n_failed, n_succeeded from training_runs where run_id = %s", (report.run_id,)
    ).fetchone()
    assert row == ("partial", 1, 1)
    errors = pg.execute(
        "select symbol, status, error from training_results where run_id = %s order by symbol",
        (report.run_id,),
    ).fetchall()
    assert [(e[0], e[1]) for e in errors] == [("GSPC", "succeeded"), ("IBM", "failed")]
    assert key not in caplog.text and key not in (by["IBM"].error or "")


def test_transient_503_is_retried(supabase_env, gateway_fault_503, caplog) -> None:
    _seed_two_symbols(supabase_env)
    store = FaultyReads(
        supabase_env["SUPABASE_URL"],
        supabase_env["SUPABASE_SERVICE_ROLE_KEY"],
        fault=gateway_fault_503,
        faulty_symbol="IBM",
        clear_after=1,
        max_retries=3,
        backoff_s=0.01,
    )
    with caplog.at_level(logging.WARNING), store:
        bars = store.read_bars("IBM", "d1", limit=10)
    assert len(bars) == 10 and store.sleeps == 1
    assert "transient failure" in caplog.text and "503" in caplog.text


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_down_is_one_clear_line(tmp_path, monkeypatch, capsys) -> None:
    key = "sb_secret_do_not_print_me_0123456789"
    monkeypatch.setenv("SUPABASE_URL", f"http://127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", key)
    monkeypatch.setenv("ML_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ML_DB_MAX_RETRIES", "1")
    monkeypatch.setenv("ML_DB_BACKOFF_S", "0.01")
    assert main(["--symbol", "SPY", "--timeframes", "d1"]) == 1
    captured = capsys.readouterr()
    err_lines = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "ConnectError" in err_lines[0] and "after 2 attempts" in err_lines[0]
    assert key not in captured.err and key not in captured.out
    assert not (tmp_path / "models").exists()


def test_store_unavailable_is_typed(tmp_path) -> None:
    store = SupabaseStore(f"http://127.0.0.1:{_dead_port()}", "k" * 40, max_retries=0)
    with store, pytest.raises(StoreUnavailable, match="read bars AAPL/d1 failed"):
        store.read_bars("AAPL", "d1", limit=5)


def test_load_bars_cli_rejects_bad_file_and_writes_nothing(supabase_env, pg, tmp_path, capsys) -> None:
    good = sample_bars("GOOG", "d1", last=50)
    bad = good.copy()
    bad.loc[30, "low"] = bad.loc[30, "close"] * 1.5
    path = tmp_path / "ZZBAD_d1.csv"
    bad.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    assert load_bars.main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    bar = good["ts"].iloc[30].strftime("%Y-%m-%dT%H:%M:%SZ")  # the line and the bar it holds
    assert err == f"load_bars: {path}: line 32: low > min(open, close) (bar {bar})"
    assert pg.execute("select count(*) from ohlc_bars where symbol='ZZBAD'").fetchone()[0] == 0
    assert load_bars.main([str(sample_csv("GOOG", "w1")), "--quiet"]) == 0
    assert pg.execute("select active from symbols where ticker='GOOG'").fetchone()[0] is True


def test_slow_database_times_out_with_bounded_retries(supabase_env, supabase_stack) -> None:
    import psycopg

    # A real stall: another session holds an exclusive lock, so PostgREST's read waits on Postgres.
    with psycopg.connect(supabase_stack["DATABASE_URL"]) as locker:
        locker.execute("lock table public.ohlc_bars in access exclusive mode")
        store = SupabaseStore(
            supabase_env["SUPABASE_URL"],
            supabase_env["SUPABASE_SERVICE_ROLE_KEY"],
            timeout_s=0.5,
            max_retries=1,
            backoff_s=0.01,
        )
        with (
            store,
            pytest.raises(StoreUnavailable, match=r"read bars SPY/d1 failed after 2 attempts: ReadTimeout"),
        ):
            store.read_bars("SPY", "d1", limit=5)
        locker.rollback()


# ---- issue 21 case 9: a request in flight when its database connection dies is retried, with a reason ----------------
@pytest.mark.parametrize(
    ("code", "message", "transient", "reason"),
    [
        ("", "", True, "PostgREST answered an error without a code (its database connection was lost?)"),
        ("57P01", "terminating connection due to administrator command", True, "SQLSTATE 57P01: terminating"),
        ("57P02", "terminating connection due to crash of another server process", True, "SQLSTATE 57P02: "),
        ("57P03", "the database system is starting up", True, "SQLSTATE 57P03: the database"),
        ("23505", "duplicate key", False, "SQLSTATE 23505: duplicate key"),
        ("22023", "", False, "SQLSTATE 22023 (no message)"),
    ],
)
def test_postgrest_errors_are_classified_and_always_carry_a_reason(code, message, transient, reason) -> None:
    from ml.src.data.supabase_db import classify_api_error

    got_transient, got_reason = classify_api_error(code, message)
    assert got_transient is transient and got_reason.startswith(reason) and got_reason.strip()
