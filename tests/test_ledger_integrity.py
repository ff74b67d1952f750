"""A ledger that never lies (issue 8, cases 6, 7 and 8) on the embedded store: a lost reply is read back before
anything is deleted, retention problems never stop a run, and every way out of a run records how it ended."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from config.settings import Settings
from ml.src.cli import train as job_cli
from ml.src.cli.train import main
from ml.src.common import stop
from ml.src.data.local_db import SqliteStore
from ml.src.data.records import RunRecord
from ml.src.data.store import StoreUnavailable
from ml.src.training import run_session
from ml.src.training.registry import load_champion
from ml.src.training.run_loop import run_job
from tests.factories import sample_bars

pytestmark = pytest.mark.slow

LOST = "record result GOOG/w1 failed after 5 attempts: ReadTimeout: the read operation timed out"


class LosesReply(SqliteStore):
    """The real embedded store; its first write of a trained pair behaves like a request whose reply never came."""

    def __init__(self, path: Path, *, commits: bool, read_back_fails: bool = False) -> None:
        super().__init__(path)
        self.commits, self.read_back_fails, self.lost = commits, read_back_fails, 0

    def record_result(self, result: Any, model_version: Any = None) -> None:
        if model_version is not None and self.lost == 0:
            self.lost += 1
            if self.commits:
                super().record_result(result, model_version)  # the database did it ...
            raise StoreUnavailable(LOST)  # ... but we never heard
        super().record_result(result, model_version)

    def find_result(self, run_id: str, symbol: str, timeframe: str) -> dict | None:
        if self.read_back_fails:
            raise StoreUnavailable("read back result GOOG/w1 failed after 5 attempts: ConnectError")
        return super().find_result(run_id, symbol, timeframe)


def files(models: Path) -> list[Path]:
    return sorted(models.rglob("*.joblib"))


# ---- 6. a champion pointing at nothing --------------------------------------------------------------------------------


def test_a_reply_lost_after_commit_keeps_the_artifact_the_champion_points_at(ml_env: Path) -> None:
    store = LosesReply(ml_env / "store.sqlite3", commits=True)
    store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    report = run_job(store, Settings(), ["GOOG"], ["w1"], workers=1)
    r = report.results[0]
    assert r.status == "succeeded" and store.lost == 1
    assert [w for w in report.warnings if "had been committed (read back)" in w]
    assert store.get_run(report.run_id)["warnings"] == report.warnings
    assert files(ml_env / "models") == [Path(r.artifact_file or "")]
    assert load_champion("GOOG", "w1", store=store).metadata["run_id"] == report.run_id
    # and the next night knows it was trained
    again = run_job(store, Settings(), ["GOOG"], ["w1"], workers=1)
    assert again.results[0].status == "skipped" and (again.results[0].error or "").startswith("no new bars")
    store.close()


def test_a_write_that_never_landed_removes_its_artifact(ml_env: Path) -> None:
    store = LosesReply(ml_env / "store.sqlite3", commits=False)
    store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    report = run_job(store, Settings(), ["GOOG"], ["w1"], workers=1)
    assert report.results[0].status == "failed" and LOST in (report.results[0].error or "")
    assert files(ml_env / "models") == [] and store.get_champion("GOOG", "w1") is None
    store.close()


def test_an_unknown_outcome_keeps_the_artifact(ml_env: Path) -> None:
    store = LosesReply(ml_env / "store.sqlite3", commits=True, read_back_fails=True)
    store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    report = run_job(store, Settings(), ["GOOG"], ["w1"], workers=1)
    r = report.results[0]
    assert (
        r.status == "failed"
        and "outcome unknown" in (r.error or "")
        and "artifact kept at GOOG/w1/" in (r.error or "")
    )
    store.read_back_fails = False
    assert load_champion("GOOG", "w1", store=store).metadata["run_id"] == report.run_id  # it had landed
    store.close()


# ---- 7. retention ----------------------------------------------------------------------------------------------------------


def test_a_retention_failure_is_recorded_and_the_run_goes_on(
    embedded_store: SqliteStore, ml_env: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("ML_KEEP_VERSIONS", "1")
    embedded_store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=500))
    assert main(["--pairs", "GOOG:w1", "--quiet"]) == 0  # v1, the champion
    assert main(["--pairs", "GOOG:w1", "--force", "--quiet"]) == 0  # v2, a challenger, kept (newest)
    capsys.readouterr()
    v2 = embedded_store.list_model_versions("GOOG", "w1")[0]
    stuck = ml_env / "models" / v2["artifact_path"]
    stuck.unlink()
    stuck.mkdir()  # a file retention cannot delete (as root, permissions would not stop it)
    (stuck / "x").write_text("x")

    code = main(["--pairs", "GOOG:w1", "IBM:w1", "--force", "--json", "--quiet"])  # v3 prunes v2
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["status"] for r in out["results"]] == ["succeeded", "succeeded"]  # the next pair trained too
    run = embedded_store.get_run(out["run_id"])
    assert run["status"] == "succeeded"
    assert run["warnings"] and "retention could not delete GOOG/w1/" in run["warnings"][0]
    assert out["warnings"] == run["warnings"]
    assert len(embedded_store.list_model_versions("GOOG", "w1")) == 2  # champion + newest: the row went first


# ---- 8. runs stuck in `running` --------------------------------------------------------------------------------------------


def test_a_second_interrupt_still_records_the_run(embedded_store: SqliteStore) -> None:
    for tf in ("d1", "w1"):
        embedded_store.upsert_bars("IBM", tf, sample_bars("IBM", tf, last=500))
    runs_before = embedded_store._query("select run_id from training_runs")

    def second_ctrl_c(done: int, total: int, result: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(embedded_store, Settings(), ["IBM"], ["d1", "w1"], workers=1, progress=second_ctrl_c)
    (run_id,) = {r[0] for r in embedded_store._query("select run_id from training_runs")} - {
        r[0] for r in runs_before
    }
    run = embedded_store.get_run(run_id)
    assert run["status"] == "interrupted" and run["finished_at"]
    assert run["error"] == "aborted by a second interrupt after 1 of 2 pair(s)" and run["n_succeeded"] == 1
    assert embedded_store.acquire_leases(["train:IBM:w1"], "someone-else", 60, None).acquired  # released


def test_a_second_ctrl_c_on_the_command_line_exits_130(
    embedded_store: SqliteStore, monkeypatch, capsys
) -> None:
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=500))

    def second_ctrl_c(*a: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(job_cli, "_progress_line", second_ctrl_c)
    assert main(["--pairs", "IBM:w1"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: aborted by a second interrupt")
    (status,) = embedded_store._query("select status from training_runs")[0]
    assert status == "interrupted"
    stop.clear_stop()


def test_an_exception_escaping_the_pair_loop_is_recorded(
    embedded_store: SqliteStore, monkeypatch, capsys
) -> None:
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=500))

    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(run_session, "train_pairs", broken)
    assert main(["--pairs", "IBM:w1", "--quiet"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == ["error: run failed: RuntimeError: boom"]
    run = dict(
        zip(
            ("status", "error", "finished_at"),
            embedded_store._query("select status, error, finished_at from training_runs")[0],
            strict=True,
        )
    )
    assert (
        run["status"] == "failed" and run["error"] == "run failed: RuntimeError: boom" and run["finished_at"]
    )
    assert embedded_store.acquire_leases(["train:IBM:w1"], "someone-else", 60, None).acquired


def test_a_run_left_running_without_leases_is_abandoned_by_the_next_run(embedded_store: SqliteStore) -> None:
    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=500))
    t0 = datetime.now(UTC) - timedelta(hours=3)
    dead = "99999999-9999-4999-8999-999999999999"
    with freeze_time(t0):  # died after releasing its leases (e.g. killed while recording its end)
        embedded_store.start_run(RunRecord(run_id=dead, started_at=t0))
        embedded_store.heartbeat(dead)
    report = run_job(embedded_store, Settings(), ["IBM"], ["w1"], workers=1)
    run = embedded_store.get_run(dead)
    assert run["status"] == "abandoned" and report.run_id in run["error"] and "no heartbeat" in run["error"]
    assert embedded_store.get_run(report.run_id)["status"] == "succeeded"


# ---- issue 21 case 10: a bundle renamed into place whose row never landed is collected ----------------------------
def test_the_start_sweep_removes_old_bundles_no_row_names_and_says_how_many(
    embedded_store: SqliteStore, ml_env: Path, caplog
) -> None:
    import logging
    import os

    embedded_store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1", last=600))
    settings = Settings()
    first = run_job(embedded_store, settings, ["IBM"], ["w1"], target_bars=400, workers=1)
    kept = Path(first.results[0].artifact_file)
    folder = kept.parent
    # what a kill between the rename and the ledger commit leaves: a complete bundle that no row names
    old_orphan = folder / "IBM_w1_20260101T000000Z_deadbeef.joblib"
    young_orphan = folder / "IBM_w1_20260102T000000Z_cafef00d.joblib"
    other_file = folder / "notes.joblib"  # not named the way the job names bundles: never touched
    for path in (old_orphan, young_orphan, other_file):
        path.write_bytes(kept.read_bytes())
    long_ago = datetime.now(UTC).timestamp() - settings.lease_ttl_s - 60
    for path in (old_orphan, other_file, kept):  # the named bundle is as old: a row names it, it stays
        os.utime(path, (long_ago, long_ago))
    with caplog.at_level(logging.WARNING, logger="ml.training"):
        run_job(embedded_store, settings, ["IBM"], ["w1"], target_bars=400, workers=1, force=True)
    assert not old_orphan.exists()
    assert kept.exists() and young_orphan.exists() and other_file.exists()
    lines = [r.getMessage() for r in caplog.records if "orphan bundle" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("removed 1 orphan bundle(s) under ")
