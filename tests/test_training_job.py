"""The job end to end on the embedded store, through main(argv), with real bars (shipped daily/weekly; intraday
from ML_TEST_DATA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from freezegun import freeze_time

from config.settings import Settings
from ml.src.cli.train import main
from ml.src.data.local_db import SqliteStore
from ml.src.training import run_loop, worker
from ml.src.training.artifacts import ArtifactError, load_ensemble, sha256_file
from ml.src.training.ensemble_training_job import train_ensemble_for_symbol_timeframe
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import (
    PairFailure,
    check_bars,
    fit_pair,
    persist_pair,
    prepare_pair,
)
from ml.src.training.weights import blend
from ml.src.training.worker import pack_fit
from tests.factories import ml_test_bars, sample_bars

pytestmark = pytest.mark.slow

TARGET = "400"  # a few hundred real bars keep each fit around a second


def load(store: SqliteStore, symbol: str, tf: str, last: int) -> None:
    store.upsert_bars(symbol, tf, sample_bars(symbol, tf, last=last))
    store.upsert_symbols([symbol])


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main([*argv, "--json", "--quiet"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_json_run_records_everything(embedded_store: SqliteStore, capsys: pytest.CaptureFixture[str]) -> None:
    load(embedded_store, "GOOG", "d1", 900)
    load(embedded_store, "GSPC", "w1", 900)
    code, out = run_json(
        ["--symbols", "GOOG", "GSPC", "--timeframes", "d1", "w1", "--target-bars", TARGET], capsys
    )
    assert code == 1  # GOOG/w1 and GSPC/d1 have no bars: failed pairs, the others go on
    by_pair = {(r["symbol"], r["timeframe"]): r for r in out["results"]}
    assert set(by_pair) == {("GOOG", "d1"), ("GOOG", "w1"), ("GSPC", "d1"), ("GSPC", "w1")}
    assert out["status"] == "partial"
    for key in (("GOOG", "w1"), ("GSPC", "d1")):
        assert by_pair[key]["status"] == "failed"
        assert "no bars" in by_pair[key]["error"] and "\n" not in by_pair[key]["error"]

    r = by_pair[("GOOG", "d1")]
    assert r["status"] == "succeeded" and r["error"] is None
    assert r["horizon_bars"] == 5
    assert r["n_train"] + r["n_valid"] + r["n_test"] + 2 * 5 == 400 - 5
    split = r["split"]
    assert split["purge_bars"] == 5
    assert (
        split["train_end"]
        < split["valid_start"]
        < split["valid_end"]
        < split["test_start"]
        <= split["test_end"]
    )
    assert set(r["weights"]) == {"rf", "gb"} and sum(r["weights"].values()) == pytest.approx(1.0)
    m = r["metrics"]
    # one reading: every model beside every baseline, on the same scores
    for name in ("rf", "gb", "ensemble", "equal_weight", "majority", "persistence", "prior"):
        for key in (
            "test_accuracy",
            "test_balanced_accuracy",
            "valid_accuracy",
            "test_confusion",
            "test_hit_rate",
        ):
            assert key in m[name], (name, key)
        assert (m[name]["test_log_loss"] is None) == (name in ("majority", "persistence"))
    assert m["verdict"]["verdict"] in ("skill", "no-skill", "worse") and m["verdict"]["basis"] == "test"
    comb = m["combination"]
    assert comb["weights"] == r["weights"] and set(comb["calibration"]) == {"rf", "gb"}
    assert comb["equal_weights"] or comb["alpha"] >= 0
    assert comb["valid_brier"] is not None and comb["equal_valid_brier"] is not None
    assert m["thresholds"]["mode"] == "vol" and m["thresholds"]["scale"] > 0
    assert sum(m["class_counts"]["test"].values()) == r["n_test"]
    assert sum(m["class_shares"]["train"].values()) == pytest.approx(1.0)
    conf = m["trading"]["confidence"]
    assert conf["fitted_on"] == "valid" and "net" in conf and "sharpe" in m["trading"]["net"]
    # the ledger's path is relative to ML_MODELS_DIR; artifact_file is where it is on this host
    assert r["artifact_path"] == "GOOG/d1/" + Path(r["artifact_file"]).name
    assert Path(r["artifact_file"]) == Path(embedded_store.path).parent / "models" / r["artifact_path"]
    assert sha256_file(r["artifact_file"]) == r["artifact_sha256"]

    run = embedded_store.get_run(out["run_id"])
    assert run["status"] == "partial" and run["n_succeeded"] == 2 and run["n_failed"] == 2
    assert run["config_hash"] and run["package_versions"]["scikit-learn"]
    assert run["heartbeat_at"] is not None and run["host"] and run["finished_at"]
    rows = {(x["symbol"], x["timeframe"]): x for x in embedded_store.list_results(out["run_id"])}
    assert rows[("GOOG", "d1")]["artifact_sha256"] == r["artifact_sha256"]
    assert (
        rows[("GOOG", "d1")]["metrics"]["ensemble"]["test_accuracy"]
        == r["metrics"]["ensemble"]["test_accuracy"]
    )
    assert rows[("GSPC", "d1")]["status"] == "failed"
    versions = embedded_store.list_model_versions("GOOG", "d1")
    assert [v["artifact_sha256"] for v in versions] == [r["artifact_sha256"]]


def test_intraday_pairs_train_end_to_end(
    embedded_store: SqliteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """m15, h1 and h4 on real intraday bars: each timeframe's horizon, split and trading calendar."""
    for tf in ("m15", "h1", "h4"):
        embedded_store.upsert_bars("SPY", tf, ml_test_bars("SPY", tf, last=700))
    embedded_store.upsert_symbols(["SPY"])
    code, out = run_json(
        ["--symbol", "SPY", "--timeframes", "m15", "h1", "h4", "--target-bars", TARGET], capsys
    )
    assert code == 0, out
    specs = Settings().timeframes
    by_tf = {r["timeframe"]: r for r in out["results"]}
    assert set(by_tf) == {"m15", "h1", "h4"}
    for tf, r in by_tf.items():
        h = specs[tf].horizon_bars
        assert r["status"] == "succeeded" and r["horizon_bars"] == h
        assert r["n_train"] + r["n_valid"] + r["n_test"] + 2 * h == 400 - h
        trading = r["metrics"]["trading"]
        assert trading["horizon"] == h and trading["bars_per_year"] == specs[tf].bars_per_year
        assert sha256_file(r["artifact_file"]) == r["artifact_sha256"]


def test_artifact_reloads_to_the_same_probabilities(embedded_store: SqliteStore, ml_env: Path) -> None:
    load(embedded_store, "GOOG", "d1", 700)
    settings = Settings()
    prep = prepare_pair(embedded_store, PairRequest("GOOG", "d1", target_bars=450), settings)
    fitted = fit_pair(prep, settings)
    run = run_loop.start_run(embedded_store, settings, {"symbols": ["GOOG"]}, "api")
    trained_at = pd.Timestamp("2026-01-02", tz="UTC").to_pydatetime()
    packed = pack_fit(prep, fitted, run_id=run.run_id, trained_at=trained_at)
    result = persist_pair(
        embedded_store, prep, packed, run_id=run.run_id, models_dir=ml_env / "models", duration_s=0.0
    )
    model = load_ensemble(result.artifact_file, expected_sha256=result.artifact_sha256)
    assert model.classes == ("BEARISH", "NEUTRAL", "BULLISH")
    # the lock the environment was installed from, beside the library versions
    assert model.metadata["lock_sha256"] == sha256_file(
        Path(__file__).resolve().parents[1] / "requirements.lock"
    )
    assert model.metadata["library_versions"]["scikit-learn"]
    x_test = prep.x[prep.split.test]
    # the reloaded bundle applies the members' calibration, the weights and the decision rule
    expected = fitted.test_proba
    np.testing.assert_allclose(model.predict_proba(x_test), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(model.decide(model.predict_proba(x_test)), fitted.test.preds["ensemble"])
    raw = blend({n: m.predict_proba(x_test) for n, m in fitted.models.items()}, fitted.weights)
    assert not np.allclose(raw, expected)  # calibration is not a no-op
    assert np.allclose(model.predict_proba(x_test).sum(axis=1), 1.0)
    frame = pd.DataFrame(x_test, columns=list(model.feature_names))
    np.testing.assert_allclose(
        model.predict_proba(frame[list(reversed(frame.columns))]), expected, rtol=1e-12, atol=1e-15
    )


def test_tampered_artifact_is_refused_before_unpickling(embedded_store, ml_env, monkeypatch) -> None:
    load(embedded_store, "GSPC", "d1", 700)
    out = train_ensemble_for_symbol_timeframe(embedded_store, "GSPC", "d1", target_bars=400)
    path, sha = Path(out["models_path"]), out["artifact_sha256"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    def never(*a, **k):
        raise AssertionError("unpickled a file whose hash did not match")

    monkeypatch.setattr("ml.src.training.artifacts.joblib.load", never)
    with pytest.raises(ArtifactError, match="sha256"):
        load_ensemble(path, expected_sha256=sha)


def test_seed_api_shape(embedded_store: SqliteStore) -> None:
    load(embedded_store, "IXIC", "d1", 700)
    out = train_ensemble_for_symbol_timeframe(
        db=embedded_store, symbol="IXIC", timeframe="d1", target_bars=400
    )
    assert out["success"] is True
    assert 0 <= out["models"]["rf"]["valid_accuracy"] <= 1 and 0 <= out["models"]["gb"]["valid_accuracy"] <= 1
    assert set(out["weights"]) == {"rf", "gb"}
    assert Path(out["models_path"]).is_file()


@freeze_time("2026-03-04 05:06:07", tick=True)
def test_artifact_name_and_times_are_utc(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "IBM", "d1", 700)
    code, out = run_json(["--symbol", "IBM", "--timeframes", "d1", "--target-bars", TARGET], capsys)
    assert code == 0
    assert out["started_at"].startswith("2026-03-04T05:06") and out["started_at"].endswith("+00:00")
    assert "IBM_d1_20260304T0506" in Path(out["results"][0]["artifact_path"]).name


def test_as_of_ignores_later_bars(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "GSPC", "d1", 1200)
    as_of = "2017-06-30T23:59:59Z"
    code, out = run_json(
        ["--symbol", "GSPC", "--timeframes", "d1", "--target-bars", TARGET, "--as-of", as_of], capsys
    )
    assert code == 0
    split = out["results"][0]["split"]
    assert pd.Timestamp(split["test_end"]) <= pd.Timestamp(as_of)


def test_lookback_limits_the_window(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "GSPC", "d1", 1500)
    code, out = run_json(["--symbol", "GSPC", "--timeframes", "d1", "--lookback", "730"], capsys)
    assert code == 0
    r = out["results"][0]
    last = sample_bars("GSPC", "d1").ts.iloc[-1]
    assert pd.Timestamp(r["split"]["train_start"]) >= last - pd.Timedelta(days=730)
    assert r["n_train"] + r["n_valid"] + r["n_test"] < 500


def test_short_history_is_skipped_and_a_missing_class_fails_clearly(
    embedded_store, capsys, monkeypatch
) -> None:
    load(embedded_store, "GOOG", "w1", 281)
    load(embedded_store, "IBM", "d1", 700)
    monkeypatch.setenv("ML_THRESHOLD_MODE", "fixed")
    monkeypatch.setenv("ML_TIMEFRAMES", '{"d1": {"threshold": 0.45}}')
    code, out = run_json(
        ["--symbols", "GOOG", "IBM", "--timeframes", "w1", "d1", "--target-bars", TARGET], capsys
    )
    assert code == 1  # IBM/d1 failed; a skipped pair alone would exit 0
    by_pair = {(r["symbol"], r["timeframe"]): r for r in out["results"]}
    short = by_pair[("GOOG", "w1")]
    # computed, not guessed: 120 warm-up + 4 unlabelled + 2 x 4 purged + 150 rows (30+ per slice at 60/20/20)
    assert short["status"] == "skipped"
    assert short["error"].startswith("GOOG/w1: insufficient history: 281 bars, needs 282 (")
    assert "IBM/d1: class BEARISH, BULLISH has no samples in train" in by_pair[("IBM", "d1")]["error"]
    assert by_pair[("IBM", "d1")]["status"] == "failed"
    assert not list(Path(embedded_store.path).parent.joinpath("models").rglob("*.joblib"))


def test_the_minimum_history_trains(embedded_store, capsys) -> None:
    """Exactly the computed minimum trains (every slice gets its 30 rows), and so does a 400-bar h4 history."""
    load(embedded_store, "GOOG", "w1", 282)
    embedded_store.upsert_bars("MSFT", "h4", ml_test_bars("MSFT", "h4", last=400))
    code, out = run_json(["--pairs", "GOOG:w1", "MSFT:h4"], capsys)
    assert code == 0, out
    by_pair = {(r["symbol"], r["timeframe"]): r for r in out["results"]}
    short = by_pair[("GOOG", "w1")]
    assert short["status"] == "succeeded" and min(short[k] for k in ("n_train", "n_valid", "n_test")) == 30
    # 400 - 120 warm-up - 3 unlabelled - 6 purged = 271 rows: 162 train (114 with the old 200-bar warm-up)
    h4 = by_pair[("MSFT", "h4")]
    assert h4["status"] == "succeeded" and h4["n_train"] == 162


def test_gap_and_nan_bars_fail_the_pair() -> None:
    spec = Settings().timeframes["d1"]
    bars = sample_bars("GOOG", "d1", first=300)
    with_gap = pd.concat([bars.iloc[:100], bars.iloc[130:]], ignore_index=True)  # a 6-week hole
    with pytest.raises(PairFailure, match=r"GOOG/d1: gap of \d+\.\d days between bars"):
        check_bars(with_gap, "GOOG/d1", spec)
    with_nan = bars.copy()
    with_nan.loc[50, "close"] = np.nan
    with pytest.raises(PairFailure, match="has NaN or inf values"):
        check_bars(with_nan, "GOOG/d1", spec)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--timeframes", "m5"], "invalid choice"),
        (["--symbol", "AAPL", "--all"], "not allowed with"),
        (["--symbol", "AAPL", "--lookback", "-3"], "--lookback must be a positive"),
        (["--symbol", "AAPL", "--as-of", "yesterday-ish"], "--as-of"),
        (["--symbol", "AA PL!"], "invalid symbol"),
        (["--target-bars", "0"], "--target-bars must be >= 1"),
    ],
)
def test_bad_usage_exits_2_with_one_line(argv, message, ml_env, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err


def test_invalid_settings_exit_2(ml_env, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ML_TRAIN_FRACTION", "0.9")
    assert main(["--symbol", "AAPL"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("invalid settings:") and "\n" not in err


def test_all_with_empty_store_is_usage_error(ml_env, capsys) -> None:
    assert main(["--all"]) == 2
    assert "no active symbols" in capsys.readouterr().err


def test_help_explains_every_flag(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--symbol",
        "--symbols",
        "--all",
        "--timeframes",
        "--lookback",
        "--target-bars",
        "--as-of",
        "--workers",
        "--json",
        "--pooled-models",
        "Exit codes",
    ):
        assert flag in text


def test_parallel_workers_match_sequential(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "GSPC", "d1", 700)
    load(embedded_store, "GSPC", "w1", 700)
    argv = ["--symbol", "GSPC", "--timeframes", "d1", "w1", "--target-bars", TARGET, "--force"]
    code1, seq = run_json([*argv, "--workers", "1"], capsys)
    code2, par = run_json([*argv, "--workers", "2"], capsys)
    assert code1 == code2 == 0
    for a, b in zip(seq["results"], par["results"], strict=True):
        assert a["weights"] == pytest.approx(b["weights"])
        assert a["metrics"]["ensemble"]["test_accuracy"] == b["metrics"]["ensemble"]["test_accuracy"]


def test_summary_table_on_stdout(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "IXIC", "w1", 700)
    assert main(["--symbol", "IXIC", "--timeframes", "w1", "--target-bars", TARGET, "--quiet"]) == 0
    out = capsys.readouterr().out
    for column in ("ens_bal", "maj_bal", "per_bal", "ens_ll", "pri_ll", "ic_p", "sharpe", "sh_bh", "verdict"):
        assert column in out
    assert "IXIC" in out and "1 succeeded" in out


def test_job_module_runs_as_the_design_names_it() -> None:
    """`python -m ml.src.training.ensemble_training_job` is the training command (ml.src.cli.train)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ml.src.training.ensemble_training_job", "--timeframes", "d2"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: argument --timeframes: invalid choice: 'd2' (choose from 'm15', 'h1', 'h4', 'd1', 'w1') (see --help)"
    ]


def test_an_unexpected_fit_error_fails_only_that_pair(embedded_store, capsys, monkeypatch) -> None:
    load(embedded_store, "GOOG", "d1", 700)
    load(embedded_store, "GOOG", "w1", 446)
    real_fit = worker.fit_pair

    def flaky_fit(prep, settings, n_threads=1):
        if prep.request.timeframe == "d1":
            raise RuntimeError("boom\nwith a second line")
        return real_fit(prep, settings, n_threads=n_threads)

    monkeypatch.setattr(worker, "fit_pair", flaky_fit)
    code, out = run_json(["--symbol", "GOOG", "--timeframes", "d1", "w1", "--target-bars", "240"], capsys)
    assert code == 1
    by_tf = {r["timeframe"]: r for r in out["results"]}
    assert by_tf["d1"]["status"] == "failed" and by_tf["d1"]["error"] == "GOOG/d1: fit failed: boom"
    assert by_tf["w1"]["status"] == "succeeded"


def test_no_selection_flag_trains_the_universe(embedded_store: SqliteStore, capsys) -> None:
    """Right after `make run` the flagless job trains what is loaded (it used to train SPY QQQ AAPL: exit 1)."""
    load(embedded_store, "GOOG", "d1", 600)
    code, out = run_json(["--timeframes", "d1", "w1", "--target-bars", TARGET], capsys)
    assert code == 0
    by_pair = {(r["symbol"], r["timeframe"]): r for r in out["results"]}
    assert set(by_pair) == {("GOOG", "d1"), ("GOOG", "w1")}
    assert by_pair[("GOOG", "d1")]["status"] == "succeeded" and by_pair[("GOOG", "d1")]["n_train"] > 0
    assert by_pair[("GOOG", "w1")]["status"] == "skipped"  # a pair of the universe without bars
    assert by_pair[("GOOG", "w1")]["error"] == "no bars in the embedded store"


def test_no_selection_flag_on_an_empty_store_says_how_to_load(ml_env, capsys) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "no active symbols" in err and "make run" in err and "\n" not in err


def test_named_pairs_without_bars_name_what_is_loaded(embedded_store: SqliteStore, capsys) -> None:
    load(embedded_store, "GOOG", "d1", 600)
    load(embedded_store, "IBM", "w1", 600)
    assert main(["--symbols", "AAPL", "SPY", "--timeframes", "d1", "w1", "-q"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: no bars for AAPL/d1 AAPL/w1 SPY/d1 SPY/w1; the embedded store has bars for GOOG (d1), IBM (w1)"
        in err
    )


def test_ml_default_symbols_still_names_the_symbols(embedded_store: SqliteStore, capsys, monkeypatch) -> None:
    load(embedded_store, "GOOG", "d1", 600)
    monkeypatch.setenv("ML_DEFAULT_SYMBOLS", "AAPL")
    code, out = run_json(["--timeframes", "d1"], capsys)
    assert code == 1
    assert [(r["symbol"], r["status"]) for r in out["results"]] == [("AAPL", "failed")]


def test_as_of_in_the_past_after_a_later_training_says_force_retrains(
    embedded_store: SqliteStore, capsys
) -> None:
    load(embedded_store, "GSPC", "d1", 1200)
    code, out = run_json(["--symbol", "GSPC", "--timeframes", "d1", "--target-bars", TARGET], capsys)
    assert code == 0 and out["results"][0]["status"] == "succeeded"
    data_end = out["results"][0]["split"]["data_end"]
    as_of = "2017-06-30T23:59:59Z"
    argv = ["--symbol", "GSPC", "--timeframes", "d1", "--target-bars", TARGET, "--as-of", as_of]
    code, out = run_json(argv, capsys)
    assert code == 0
    r = out["results"][0]
    assert r["status"] == "skipped"
    assert r["error"] == (
        "no new bars up to --as-of 2017-06-30T23:59:59+00:00 (latest 2017-06-30T13:30:00+00:00): the pair's "
        f"latest model was trained on bars up to {pd.Timestamp(data_end).isoformat()}; --force to train as of "
        "2017-06-30T23:59:59+00:00 anyway"
    )
    code, out = run_json([*argv, "--force"], capsys)
    assert code == 0 and out["results"][0]["status"] == "succeeded"
    assert pd.Timestamp(out["results"][0]["split"]["data_end"]) <= pd.Timestamp(as_of)
