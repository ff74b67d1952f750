"""Issue 8 on the embedded store, through the command lines: the pair universe, the nightly schedule on the sample
data, corrected bars, bad input, the models directory and the paths in the ledger. Real bars (ml/sample_data)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from config.settings import DEFAULT_HOME, Settings
from ml.src.cli import report as report_cli
from ml.src.cli import schedule as scheduler_cli
from ml.src.cli.train import main
from ml.src.data import load_bars
from ml.src.data.local_db import SqliteStore, format_ts
from ml.src.training import pair_scheduler
from ml.src.training.registry import load_champion
from tests.factories import SAMPLE_DATA, sample_bars, sample_csv

pytestmark = pytest.mark.slow


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main([*argv, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def scheduled_runs(db: Path) -> list[tuple[str, int, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select status, n_succeeded, n_failed, n_skipped from training_runs where trigger = 'scheduled'"
            " order by started_at"
        ).fetchall()


def write_csv(frame, path: Path) -> Path:
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    return path


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)  # NaN-safe exact comparison of nested results


# ---- 1. the pair universe is the data ---------------------------------------------------------------------------------


def test_make_run_then_the_nightly_schedule_exits_0_on_the_sample_data(ml_env: Path, capsys) -> None:
    files = [str(p) for p in sorted(SAMPLE_DATA.glob("*.csv"))]
    assert load_bars.main(["--if-missing", "--quiet", *files]) == 0  # make run, step 1
    code, out = run_json(["--all", "--timeframes", "d1", "w1"], capsys)  # make run, step 2
    assert code == 0 and out["counts"] == {"succeeded": 8, "failed": 0, "skipped": 0}

    assert scheduler_cli.main(["--once"]) == 0  # python -m ml.src.scheduler --once
    capsys.readouterr()
    # train-daily (m15 h1 h4 d1): d1 has no new bars, the sample data has no m15/h1/h4 bars -> 16 skipped;
    # train-weekly (w1): no new bars -> 4 skipped. Nothing failed.
    assert scheduled_runs(ml_env / "store.sqlite3") == [("succeeded", 0, 0, 16), ("succeeded", 0, 0, 4)]

    # Loading one more CSV (a new symbol, h1 only) does not make the next `make run` fail.
    extra = write_csv(sample_bars("GOOG", "w1", last=300), ml_env / "NEWCO_h1.csv")
    assert load_bars.main(["--quiet", str(extra)]) == 0
    code, out = run_json(["--all", "--timeframes", "d1", "w1"], capsys)
    assert code == 0, out
    reasons = {(r["symbol"], r["timeframe"]): r["error"] for r in out["results"]}
    assert reasons[("NEWCO", "d1")] == "no bars in the embedded store"
    assert reasons[("NEWCO", "w1")] == "no bars in the embedded store"
    assert all(
        reasons[(s, tf)].startswith("no new bars")
        for s in ("GOOG", "IBM", "GSPC", "IXIC")
        for tf in ("d1", "w1")
    )


def test_short_history_is_skipped_but_a_named_pair_without_bars_fails(
    embedded_store: SqliteStore, capsys
) -> None:
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=250))  # < warm-up + 3 slices
    embedded_store.upsert_symbols(["IBM"])
    code, out = run_json(["--all", "--timeframes", "w1"], capsys)
    assert code == 0 and out["results"][0]["status"] == "skipped"
    assert "IBM/w1: insufficient history: 250 bars, needs 282" in out["results"][0]["error"]
    # too little history yet is nothing to fix, whoever asked; no bars at all for a named pair is
    code, out = run_json(["--pairs", "IBM:w1"], capsys)
    assert code == 0 and out["results"][0]["status"] == "skipped"
    code, out = run_json(["--pairs", "IBM:d1"], capsys)
    assert code == 1 and out["results"][0]["status"] == "failed" and "no bars" in out["results"][0]["error"]


def insert_legacy_bad_symbol(path: Path) -> None:
    """A symbols row 'BRK/B' as another tool wrote it before the schema checked symbols (schema version 4 refuses
    it now; ignore_check_constraints stands in for the older file)."""
    with sqlite3.connect(path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="symbols_ticker_format"):
            conn.execute("insert into symbols (ticker, active, created_at) values ('BRK/B', 1, '2026-01-01')")
        conn.execute("pragma ignore_check_constraints = on")
        conn.execute("insert into symbols (ticker, active, created_at) values ('BRK/B', 1, '2026-01-01')")


def test_a_bad_symbols_row_fails_only_its_own_pairs(embedded_store: SqliteStore, capsys) -> None:
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=500))
    embedded_store.upsert_symbols(["IBM"])
    insert_legacy_bad_symbol(embedded_store.path)
    code, out = run_json(["--all", "--timeframes", "w1"], capsys)
    assert code == 1  # a row someone must fix, but the others trained
    by = {r["symbol"]: r for r in out["results"]}
    assert by["IBM"]["status"] == "succeeded"
    assert by["BRK/B"]["status"] == "failed" and "invalid symbol 'BRK/B'" in by["BRK/B"]["error"]
    assert "\n" not in by["BRK/B"]["error"]
    # the ledger holds valid identifiers only (both schemas refuse others): the failure is the run's warning
    recorded = {r["symbol"]: r["status"] for r in embedded_store.list_results(out["run_id"])}
    assert recorded == {"IBM": "succeeded"}
    run = embedded_store.get_run(out["run_id"])
    assert run["status"] == "partial" and run["n_failed"] == 1
    assert any(
        "invalid symbol 'BRK/B'" in w and "not recorded in training_results" in w for w in run["warnings"]
    )


def test_the_nightly_schedule_with_a_bad_symbols_row_fails_only_its_pairs(
    embedded_store: SqliteStore, ml_env: Path, capsys
) -> None:
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=500))
    embedded_store.upsert_symbols(["IBM"])
    insert_legacy_bad_symbol(embedded_store.path)
    # exit 1 (the bad row's pairs failed, someone must fix it), not 2: the schedule itself is fine
    assert scheduler_cli.main(["--once"]) == 1
    capsys.readouterr()
    weekly = embedded_store._query(
        "select r.symbol, r.status from training_results r join training_runs t using (run_id)"
        " where t.trigger = 'scheduled' and r.timeframe = 'w1' order by r.symbol"
    )
    assert [tuple(r) for r in weekly] == [("IBM", "succeeded")]  # BRK/B's failure: the run's warning
    warned = embedded_store._query(
        "select warnings from training_runs where trigger = 'scheduled' and warnings like '%BRK/B%'"
    )
    assert warned and "invalid symbol 'BRK/B'" in warned[0][0]
    assert embedded_store.list_forecasts("IBM", "w1")  # the forecast step after training went on too


def test_pairs_trains_exactly_the_named_pairs(embedded_store: SqliteStore, capsys) -> None:
    embedded_store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    embedded_store.upsert_bars("IXIC", "d1", sample_bars("IXIC", "d1", last=700))
    code, out = run_json(["--pairs", "goog:w1", "IXIC:d1", "--target-bars", "300"], capsys)
    assert code == 0
    assert [(r["symbol"], r["timeframe"], r["status"]) for r in out["results"]] == [
        ("GOOG", "w1", "succeeded"),
        ("IXIC", "d1", "succeeded"),
    ]


# ---- 2. features follow the bars ----------------------------------------------------------------------------------------


def test_a_corrected_bar_retrains_to_the_result_of_a_fresh_store(ml_env: Path, monkeypatch, capsys) -> None:
    bars = sample_bars("IBM", "d1", last=800)
    store = SqliteStore(ml_env / "store.sqlite3")
    store.upsert_bars("IBM", "d1", bars)
    store.close()
    argv = ["--pairs", "IBM:d1"]
    code, first = run_json(argv, capsys)
    assert code == 0 and first["results"][0]["status"] == "succeeded"

    # Someone corrects an old bar inside the training window, with plain SQL (not through this package).
    at = bars["ts"].iloc[-120]
    with sqlite3.connect(ml_env / "store.sqlite3") as conn:
        conn.execute(
            "update ohlc_bars set close = high where symbol = 'IBM' and timeframe = 'd1' and ts = ?",
            (format_ts(at),),
        )
    code, corrected = run_json(argv, capsys)  # no --force: the history changed
    assert code == 0
    r2 = corrected["results"][0]
    assert r2["status"] == "succeeded", r2["error"]
    assert r2["split"]["data_revision"] != first["results"][0]["split"]["data_revision"]

    # A fresh store loaded with the corrected file gives exactly the same model.
    fixed = bars.copy()
    fixed.loc[fixed["ts"] == at, "close"] = fixed.loc[fixed["ts"] == at, "high"]
    monkeypatch.setenv("ML_LOCAL_DB", str(ml_env / "fresh.sqlite3"))
    monkeypatch.setenv("ML_MODELS_DIR", str(ml_env / "fresh-models"))
    assert load_bars.main(["--quiet", str(write_csv(fixed, ml_env / "IBM_d1.csv"))]) == 0
    code, fresh = run_json(argv, capsys)
    r3 = fresh["results"][0]
    assert code == 0 and r3["status"] == "succeeded"
    assert canonical(r2["weights"]) == canonical(r3["weights"])
    assert canonical(r2["metrics"]) == canonical(r3["metrics"])
    assert canonical(r2["split"] | {"data_revision": None}) == canonical(
        r3["split"] | {"data_revision": None}
    )

    # and then there is nothing new to train on
    monkeypatch.setenv("ML_LOCAL_DB", str(ml_env / "store.sqlite3"))
    code, again = run_json(argv, capsys)
    assert again["results"][0]["status"] == "skipped" and again["results"][0]["error"].startswith(
        "no new bars"
    )


# ---- 9. bad input, quiet logs, the models directory, paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--symbol", ""], "invalid symbol ''"),
        (["--symbol", "   "], "invalid symbol"),
        (["--symbols", "AAPL", ""], "invalid symbol ''"),
        (["--symbol", "../../../X"], "invalid symbol '../../../X'"),
        (["--lookback", "nan"], "--lookback must be a positive, finite number"),
        (["--lookback", "inf"], "--lookback must be a positive, finite number"),
        (["--pairs", "AAPL"], "expected SYMBOL:TF"),
        (["--pairs", "AAPL:m5"], "invalid timeframe 'm5'"),
        (["--pairs", "../x:d1"], "invalid symbol '../x'"),
        (["--pairs", "AAPL:d1", "--timeframes", "d1"], "do not combine it with --timeframes"),
        (["--pairs", "AAPL:d1", "--symbol", "AAPL"], "not allowed with"),
        (["--as-of", "nan"], "--as-of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, ml_env: Path, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (ml_env / "store.sqlite3").exists()  # nothing opened, nothing recorded


def test_other_entry_points_refuse_bad_symbols_with_exit_2(ml_env: Path, capsys) -> None:
    assert load_bars.main(["--symbol", "", "--timeframe", "d1", str(sample_csv("IBM", "d1"))]) == 2
    assert "invalid symbol ''" in capsys.readouterr().err
    assert load_bars.main(["--symbol", "A/B", "--timeframe", "d1", str(sample_csv("IBM", "d1"))]) == 2
    assert report_cli.main(["--symbol", ""]) == 2
    assert "invalid symbol ''" in capsys.readouterr().err


def test_sub_microsecond_duplicates_in_a_file_are_one_clear_error(
    embedded_store: SqliteStore, tmp_path
) -> None:
    path = tmp_path / "IBM_d1.csv"
    path.write_text(
        "ts,open,high,low,close,volume\n"
        "2024-01-02T14:30:00.0000001Z,10,11,9,10.5,100\n"
        "2024-01-02T14:30:00.0000009Z,10,11,9,10.5,100\n"
    )
    assert load_bars.main([str(path), "--quiet"]) == 1
    assert embedded_store.count_bars("IBM", "d1") == 0


def test_sub_microsecond_duplicate_message(tmp_path, capsys) -> None:
    path = tmp_path / "IBM_d1.csv"
    path.write_text(
        "ts,open,high,low,close,volume\n"
        "2024-01-02T14:30:00.0000001Z,10,11,9,10.5,100\n"
        "2024-01-02T14:30:00.0000009Z,10,11,9,10.5,100\n"
    )
    with pytest.raises(
        load_bars.BarFileError, match=r"line 3: duplicate ts .* \(same as line 2 at microsecond"
    ):
        load_bars.read_bar_file(path)


def test_expected_skips_are_info_and_http_clients_are_quiet(embedded_store: SqliteStore, capsys) -> None:
    embedded_store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    argv = ["--pairs", "GOOG:w1", "--target-bars", "200"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0  # default verbosity (INFO)
    err = capsys.readouterr().err.splitlines()
    assert any(" INFO ml.training: [1/1] GOOG/w1 skipped: no new bars" in line for line in err), err
    assert not [line for line in err if " WARNING " in line or " ERROR " in line]
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_an_unwritable_models_dir_stops_before_anything(ml_env: Path, monkeypatch, capsys) -> None:
    blocker = ml_env / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ML_MODELS_DIR", str(blocker / "models"))
    store = SqliteStore(ml_env / "store.sqlite3")
    store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1"))

    def no_compute(*a, **k):
        raise AssertionError("computed with nowhere to save the model")

    monkeypatch.setattr(pair_scheduler, "prepare_pair", no_compute)
    assert main(["--pairs", "IBM:w1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ML_MODELS_DIR") and "not a writable directory" in err and "\n" not in err
    assert store._query("select count(*) from training_runs")[0][0] == 0
    store.close()


def test_orphan_temp_files_are_swept_and_fresh_ones_kept(
    embedded_store: SqliteStore, ml_env: Path, capsys
) -> None:
    folder = ml_env / "models" / "IBM" / "w1"
    folder.mkdir(parents=True)
    old = folder / ".IBM_w1_20260101T000000Z_deadbeef.joblib.k3j2h1.tmp"
    fresh = folder / ".IBM_w1_20260101T000000Z_cafebabe.joblib.a1b2c3.tmp"
    keep = folder / "notes.txt"
    for p in (old, fresh, keep):
        p.write_bytes(b"half a bundle")
    two_hours_ago = os.path.getmtime(old) - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))  # left by a process killed an hour before the lease TTL
    os.utime(keep, (two_hours_ago, two_hours_ago))
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1"))
    assert main(["--pairs", "IBM:w1", "--quiet"]) == 0
    assert not old.exists() and fresh.exists() and keep.exists()


def test_ledger_paths_are_relative_and_load_champion_works_from_anywhere(
    embedded_store: SqliteStore, ml_env: Path, monkeypatch, capsys
) -> None:
    embedded_store.upsert_bars("GSPC", "w1", sample_bars("GSPC", "w1"))
    code, out = run_json(["--pairs", "GSPC:w1"], capsys)
    assert code == 0
    stored = embedded_store.get_champion("GSPC", "w1")
    assert stored is not None and not Path(stored["artifact_path"]).is_absolute()
    assert stored["artifact_path"].startswith("GSPC/w1/GSPC_w1_")
    elsewhere = ml_env / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_champion("GSPC", "w1", store=embedded_store).metadata["run_id"] == out["run_id"]
    # the models directory moved: point the setting at its new place
    (ml_env / "models").rename(ml_env / "moved")
    monkeypatch.setenv("ML_MODELS_DIR", str(ml_env / "moved"))
    assert load_champion("GSPC", "w1", store=embedded_store).metadata["run_id"] == out["run_id"]


def test_default_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ML_LOCAL_DB", raising=False)
    monkeypatch.delenv("ML_MODELS_DIR", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    first = Settings(_env_file=None)
    monkeypatch.chdir(b)
    second = Settings(_env_file=None)
    assert first.local_db == second.local_db == DEFAULT_HOME / ".local" / "swiftbolt_ml.sqlite3"
    assert first.models_dir == second.models_dir == DEFAULT_HOME / "trained_models"
    assert first.local_db.is_absolute()
    # an explicit relative value means "relative to where I am", made absolute at once
    monkeypatch.setenv("ML_LOCAL_DB", "data/x.sqlite3")
    assert Settings(_env_file=None).local_db == b / "data" / "x.sqlite3"
