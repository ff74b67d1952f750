"""python -m ml.src.inference.forecast_job as a user runs it: flags, exit codes, --json, a broken champion."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ml.src.cli import forecast as forecast_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert forecast_job.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--all",
        "--symbols",
        "--pairs",
        "--timeframes",
        "--as-of",
        "--json",
        "--quiet",
        "--verbose",
    ):
        assert flag in out
    assert "Exit codes" in out and "CLOSED bar" in out
    # what --help promises matches what the job does: an unusable champion fails, it is not skipped
    flat = " ".join(out.split())
    assert "missing, corrupt or wrongly signed fails the pair" in flat
    assert "without a usable champion are skipped" not in flat


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pairs", "GOOG:d2"], "--pairs 'GOOG:d2': invalid timeframe 'd2'"),
        (["--pairs", "GOOG"], "expected SYMBOL:TF"),
        (["--as-of", "yesterday-ish"], "--as-of 'yesterday-ish' is not an ISO-8601 timestamp"),
        (["--symbols", "BRK/B"], "invalid symbol 'BRK/B'"),
    ],
)
def test_bad_usage_is_exit_2_with_one_line(
    ml_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert forecast_job.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_json_run_and_rerun(trained_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert forecast_job.main(["--all", "--timeframes", "d1", "w1", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_pair = {(f["symbol"], f["timeframe"]): f for f in out["forecasts"]}
    assert out["status"] == "succeeded" and out["store"] == "embedded"
    assert by_pair[("IBM", "w1")]["status"] == "unchanged"  # the template already forecast its last bar
    assert (
        by_pair[("GOOG", "d1")]["status"] == "written"
    )  # its last bar: after the month the template forecast
    assert by_pair[("IBM", "d1")]["status"] == "skipped"
    assert "no champion" in by_pair[("IBM", "d1")]["reason"]
    goog = by_pair[("GOOG", "d1")]
    assert goog["bar_ts"] == "2013-03-01T14:30:00+00:00" and goog["target_ts"] == "2013-03-08T14:30:00+00:00"
    assert sum(goog["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert forecast_job.main(["--pairs", "goog:d1", "IBM:w1", "--json", "-q"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [f["status"] for f in again["forecasts"]] == ["unchanged", "unchanged"]
    assert again["counts"] == {"written": 0, "unchanged": 2, "skipped": 0, "failed": 0}


def test_a_champion_whose_file_is_gone_fails_only_its_pair(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = sqlite3.connect(trained_store)
    with conn:
        conn.execute(
            "update model_versions set artifact_path = ? where symbol = 'IBM'",
            ("IBM/w1/gone.joblib",),  # inside ML_MODELS_DIR (relative to it, as the ledger records paths)
        )
    conn.close()
    assert forecast_job.main(["--pairs", "IBM:w1", "GOOG:d1"]) == 1
    out = capsys.readouterr().out
    assert "IBM      w1   failed" in out and "champion unusable: artifact not found" in out
    assert "GOOG     d1   written" in out


def test_an_expired_champion_is_skipped(trained_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(trained_store)
    with conn:
        conn.execute(
            "update model_versions set trained_at = '2020-01-01T00:00:00.000000Z' where symbol = 'IBM'"
        )
    conn.close()
    assert forecast_job.main(["--pairs", "IBM:w1"]) == 0
    assert "older than 45 days (max_model_age_days)" in capsys.readouterr().out


def test_the_forecast_step_never_imports_matplotlib() -> None:
    code = (
        "import sys; import ml.src.inference.forecast_job, ml.src.inference.forecast, ml.src.cli.train, ml.src.cli.forecast, "
        "ml.src.training.run_loop, ml.src.monitoring.report, ml.src.scheduler.service; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_no_selection_flag_forecasts_the_universe(
    trained_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Right after `make run` the flagless step forecasts the loaded pairs (it used to look for SPY QQQ AAPL)."""
    assert forecast_job.main(["--timeframes", "d1", "w1", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_pair = {(f["symbol"], f["timeframe"]): f["status"] for f in out["forecasts"]}
    assert set(by_pair) == {("GOOG", "d1"), ("GOOG", "w1"), ("IBM", "d1"), ("IBM", "w1")}
    assert by_pair[("GOOG", "d1")] == "written" and by_pair[("IBM", "w1")] == "unchanged"
    assert by_pair[("IBM", "d1")] == "skipped"  # a pair of the universe without bars or champion


def test_a_named_pair_without_bars_fails_like_training(
    trained_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert forecast_job.main(["--pairs", "AAPL:d1", "GOOG:d1"]) == 1
    captured = capsys.readouterr()
    assert "AAPL     d1   failed" in captured.out and "AAPL/d1: no bars in the embedded store" in captured.out
    assert "GOOG     d1   written" in captured.out
    assert "error: no bars for AAPL/d1; the embedded store has bars for GOOG (d1), IBM (w1)" in captured.err
    # a named pair WITH bars but no champion yet is still only skipped
    from ml.src.data.local_db import SqliteStore
    from tests.factories import sample_bars

    with SqliteStore(trained_store) as store:
        store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    assert forecast_job.main(["--pairs", "GOOG:w1"]) == 0
    assert "GOOG/w1: no champion model yet" in capsys.readouterr().out


def test_the_label_rule_and_training_shares_are_shown(
    trained_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ml.src.training.registry import load_champion

    assert forecast_job.main(["--pairs", "GOOG:d1", "--json"]) == 0
    captured = capsys.readouterr()
    f = json.loads(captured.out)["forecasts"][0]
    prior = load_champion("GOOG", "d1").metadata["decision"]["prior"]
    assert f["label_rule"] == "prior_ratio"
    assert [f["training_shares"][c] for c in ("BEARISH", "NEUTRAL", "BULLISH")] == pytest.approx(prior)
    ratio = {c: f["probabilities"][c] / f["training_shares"][c] for c in f["probabilities"]}
    assert f["label"] == max(ratio, key=ratio.__getitem__)
    table = captured.err  # with --json the table goes to stderr
    assert "sh_bear sh_neu sh_bul" in table
    assert "label = the class whose probability most exceeds its training share" in table
    row = next(line for line in table.splitlines() if line.startswith("GOOG     d1"))
    shares = " ".join(f"{f['training_shares'][c]:>6.3f}" for c in ("BEARISH", "NEUTRAL", "BULLISH"))
    assert shares in row
