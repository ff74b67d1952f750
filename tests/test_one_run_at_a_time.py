"""Leases, 'no new bars', and interruption, through the job; two real processes on the Supabase stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.data.records import RunRecord
from ml.src.data.supabase_db import SupabaseStore
from ml.src.training import stop
from ml.src.training.ensemble_training_job import main
from ml.src.training.run_loop import run_job
from tests.factories import sample_bars

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def load(store, symbol: str, tf: str, last: int) -> None:
    store.upsert_bars(symbol, tf, sample_bars(symbol, tf, last=last))
    store.upsert_symbols([symbol])


def test_overlapping_run_exits_75_naming_holder_and_expiry(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "GSPC", "d1", 700)
    held = embedded_store.acquire_leases(["train:GSPC:d1"], "other-host:4242:abc", 600, None)
    code = main(["--symbol", "GSPC", "--timeframes", "d1", "h1", "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 75
    line = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "other-host:4242:abc" in line[0] and held.expires_at.isoformat()[:19] in line[0]
    out = json.loads(captured.out)
    assert out["status"] == "skipped" and out["results"] == []
    assert embedded_store.get_run(out["run_id"])["status"] == "skipped"
    # a run whose scope does not overlap goes ahead
    load(embedded_store, "GSPC", "w1", 700)
    assert main(["--symbol", "GSPC", "--timeframes", "w1", "--target-bars", "400", "--quiet"]) == 0


def test_expired_lease_of_a_dead_run_is_taken_over(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "GOOG", "w1", 446)
    t0 = datetime(2026, 11, 20, 22, 30, tzinfo=UTC)
    with freeze_time(t0):
        dead = "11111111-1111-4111-8111-111111111111"
        embedded_store.start_run(RunRecord(run_id=dead, started_at=t0))
        embedded_store.acquire_leases(["train:GOOG:w1"], "crashed-host:1:" + dead, 900, dead)
    with freeze_time(t0 + timedelta(seconds=899), tick=True):
        assert main(["--symbol", "GOOG", "--timeframes", "w1", "--quiet"]) == 75
    with freeze_time(t0 + timedelta(seconds=901), tick=True):
        assert main(["--symbol", "GOOG", "--timeframes", "w1", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["results"][0]["status"] == "succeeded"
    dead_run = embedded_store.get_run(dead)
    assert dead_run["status"] == "abandoned" and out["run_id"] in dead_run["error"]


def test_no_new_bars_is_skipped_and_force_retrains(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "IBM", "d1", 700)
    argv = ["--symbol", "IBM", "--timeframes", "d1", "--target-bars", "400", "--json", "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["status"] == "skipped" and r["error"].startswith("no new bars")
    # re-loading a bar that is already there is not new data
    embedded_store.upsert_bars(
        "IBM", "d1", sample_bars("IBM", "d1", last=699).iloc[-1:]
    )  # same bar: still skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "skipped"
    assert main([*argv, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "succeeded"


def test_stop_request_finishes_the_pair_in_progress(embedded_store: SqliteStore) -> None:
    for tf in ("d1", "w1"):
        load(embedded_store, "IBM", tf, 700)

    def stop_after_first(done: int, total: int, result) -> None:
        stop.request_stop()

    try:
        report = run_job(
            embedded_store,
            Settings(),
            ["IBM"],
            ["d1", "w1"],
            target_bars=400,
            workers=1,
            progress=stop_after_first,
        )
    finally:
        stop.clear_stop()
    assert report.interrupted and report.exit_code() == 130
    assert [r.status for r in report.results] == ["succeeded"]
    run = embedded_store.get_run(report.run_id)
    assert run["status"] == "interrupted" and "1 of 2" in run["error"]
    assert embedded_store.acquire_leases(["train:IBM:w1"], "someone-else", 60, None).acquired  # released


def test_two_processes_at_once_exactly_one_trains(supabase_stack, pg, tmp_path) -> None:
    with SupabaseStore(supabase_stack["SUPABASE_URL"], supabase_stack["SUPABASE_SERVICE_ROLE_KEY"]) as store:
        load(store, "GOOG", "d1", 1440)
    env = {
        **os.environ,
        "SUPABASE_URL": supabase_stack["SUPABASE_URL"],
        "SUPABASE_SERVICE_ROLE_KEY": supabase_stack["SUPABASE_SERVICE_ROLE_KEY"],
        "ML_MODELS_DIR": str(tmp_path / "models"),
        "ML_WORKERS": "1",
    }
    # long enough (walk-forward over 1,200 bars) that the second process asks while the first still works
    argv = [
        sys.executable,
        "-m",
        "ml.src.training.ensemble_training_job",
        "--symbol",
        "GOOG",
        "--timeframes",
        "d1",
        "--target-bars",
        "1200",
        "--walk-forward",
        "4",
        "--force",
        "--json",
        "--quiet",
    ]
    procs = [
        subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 75], [o[1][-2000:] for o in outs]
    loser = outs[[p.returncode for p in procs].index(75)]
    assert "is held by" in loser[1] and "until" in loser[1]
    runs = pg.execute(
        "select status, count(*) from training_runs where scope->'symbols' = '[\"GOOG\"]'::jsonb group by status"
    ).fetchall()
    assert dict(runs) == {"succeeded": 1, "skipped": 1}
    assert pg.execute("select count(*) from job_leases where name = 'train:GOOG:d1'").fetchone()[0] == 0
