"""Leases, 'no new bars', and interruption, through the job; two real processes on the Supabase stack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from config.settings import Settings
from ml.src.cli.train import main
from ml.src.common import stop
from ml.src.data.local_db import SqliteStore
from ml.src.data.records import RunRecord
from ml.src.data.store import StoreUnavailable
from ml.src.data.supabase_db import SupabaseStore
from ml.src.training.leases import holder_name
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


# ---- issue 21: leases that outlive their run (case 5, and a crash on this host), on both stores ----------------------
@pytest.fixture(params=["embedded", "supabase"])
def any_store(request: pytest.FixtureRequest, ml_env: Path):
    if request.param == "embedded":
        s = SqliteStore(ml_env / "both.sqlite3")
    else:
        stack = request.getfixturevalue("supabase_stack")
        s = SupabaseStore(
            stack["SUPABASE_URL"], stack["SUPABASE_SERVICE_ROLE_KEY"], max_retries=1, backoff_s=0.01
        )
    yield s
    s.close()


def unique_pair(store) -> str:
    # the Supabase stack is shared by the session: a symbol of its own, with a shipped pair's real bars
    symbol = "L" + uuid.uuid4().hex[:7].upper()
    store.upsert_bars(symbol, "w1", sample_bars("IBM", "w1", last=679))
    return symbol


def release_fails(store, times: int) -> dict[str, int]:
    """Fault injection: the store's next `times` lease releases fail as a database that is down would."""
    calls = {"n": 0}
    base = type(store)

    class DownAtRelease(base):  # type: ignore[misc, valid-type]
        def release_leases(self, names, holder):
            calls["n"] += 1
            if calls["n"] <= times:
                raise StoreUnavailable("release leases failed after 2 attempts: 503 (database down)")
            return super().release_leases(names, holder)

    store.__class__ = DownAtRelease
    return calls


def train(store, symbol: str, **kw):
    return run_job(store, Settings(), [symbol], ["w1"], target_bars=400, workers=1, force=True, **kw)


def test_a_failed_release_is_retried_once_the_final_status_is_written(any_store) -> None:
    symbol = unique_pair(any_store)
    calls = release_fails(any_store, 1)
    report = train(any_store, symbol)
    assert [r.status for r in report.results] == ["succeeded"] and calls["n"] == 2
    run = any_store.get_run(report.run_id)
    assert run["status"] == "succeeded"
    assert any("could not release the run's leases" in w for w in run["warnings"])
    # released on the second try: the holder has nothing left to renew
    assert any_store.renew_leases([f"train:{symbol}:w1"], holder_name(report.run_id), 60) == 0


def test_a_release_that_never_lands_does_not_block_the_next_run(any_store) -> None:
    symbol = unique_pair(any_store)
    release_fails(any_store, 10)
    first = train(any_store, symbol)
    assert any_store.renew_leases([f"train:{symbol}:w1"], holder_name(first.run_id), 900) == 1  # still held
    any_store.__class__ = type(any_store).__mro__[1]  # the database is back
    second = train(any_store, symbol)
    assert second.locked_by is None and second.exit_code() == 0, second.error
    assert [r.status for r in second.results] == ["succeeded"]
    assert any_store.get_run(first.run_id)["status"] == "succeeded"  # the finished run keeps its status


def dead_pid() -> int:
    """A pid on this host whose process has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_crashed_run_on_this_host_is_taken_over_at_once(any_store) -> None:
    symbol = unique_pair(any_store)
    crashed = str(uuid.uuid4())
    any_store.start_run(RunRecord(run_id=crashed, started_at=datetime.now(UTC)))
    name = f"train:{symbol}:w1"
    any_store.acquire_leases([name], f"{socket.gethostname()}:{dead_pid()}:{crashed}", 900, crashed)
    report = train(any_store, symbol)
    assert report.locked_by is None and [r.status for r in report.results] == ["succeeded"]
    run = any_store.get_run(crashed)
    assert (
        run["status"] == "abandoned" and "process is gone" in run["error"] and report.run_id in run["error"]
    )


def test_a_live_holder_on_this_host_still_holds(any_store) -> None:
    symbol = unique_pair(any_store)
    live = str(uuid.uuid4())
    any_store.start_run(RunRecord(run_id=live, started_at=datetime.now(UTC)))
    holder = f"{socket.gethostname()}:{os.getppid()}:{live}"  # pytest's parent: alive
    any_store.acquire_leases([f"train:{symbol}:w1"], holder, 900, live)
    report = train(any_store, symbol)
    assert report.locked_by is not None and holder in report.locked_by and report.exit_code() == 75
    assert any_store.get_run(live)["status"] == "running"
