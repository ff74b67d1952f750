"""The replay (python -m ml.src.training.replay) on both stores, on the shipped sample bars.

Every replay here goes through the command line (`main`), trains real models at each retrain point and reads its
forecasts back from the store's replay tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import balanced_accuracy_score

from config.settings import Settings
from ml.src.cli.replay import main
from ml.src.data.store import TrainingStore
from ml.src.inference.forecast_job import run_forecasts
from ml.src.training.labels import CLASS_CODES
from ml.src.training.replay_loop import default_retrain_every, retrain_points
from tests.factories import sample_bars

pytestmark = pytest.mark.slow


def load(store: TrainingStore, ticker: str, tf: str, bars: pd.DataFrame) -> None:
    store.upsert_bars(ticker, tf, bars)
    store.upsert_symbols([ticker])


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--json", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_replay_forecasts_every_bar_causally_with_realised_outcomes_of_the_stored_bars(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    store, settings, tag = env["store"], env["settings"], env["tag"]
    ticker = f"R{tag}"
    bars = sample_bars("GOOG", "d1", first=700)
    load(store, ticker, "d1", bars)
    n, last, k, h = len(bars), 120, 21, settings.timeframes["d1"].horizon_bars

    out = replay(capsys, "--pairs", f"{ticker}:d1", "--last", str(last), "--retrain-every", str(k))
    (pair,) = out["pairs"]
    assert pair["status"] == "succeeded", pair["error"]
    assert (pair["retrain_every"], pair["horizon_bars"]) == (k, h)
    points = retrain_points(n, last, k)
    assert points == [580, 601, 622, 643, 664, 685]
    assert pair["retrains"] == len(points) and 1 <= pair["promotions"] <= len(points)

    # one forecast per replayed bar, in order
    fc = pair["forecasts"]
    assert pair["n_forecasts"] == len(fc) == last
    assert [pd.Timestamp(f["bar_ts"]) for f in fc] == list(bars["ts"].iloc[n - last :])
    # nothing from a bar's future: each forecast's model was trained through a retrain point at or before it
    point_ts = set(bars["ts"].iloc[points])
    for f in fc:
        assert pd.Timestamp(f["trained_through"]) <= pd.Timestamp(f["bar_ts"])
        assert pd.Timestamp(f["trained_through"]) in point_ts
    # the first replayed bar is forecast by the model trained through it
    assert fc[0]["trained_through"] == fc[0]["bar_ts"]
    # realised return = close[t + h] / close[t] - 1 of the stored bars; none for the last h bars
    close = bars["close"].to_numpy()
    for i, f in enumerate(fc):
        t = n - last + i
        if t + h < n:
            assert f["realised_return"] == close[t + h] / close[t] - 1.0
            lower, upper = f["threshold_lower"], f["threshold_upper"]
            r = f["realised_return"]
            want = "BULLISH" if r > upper else "BEARISH" if r < lower else "NEUTRAL"
            assert f["realised_label"] == want
        else:
            assert f["realised_return"] is None and f["realised_label"] is None
        assert abs(f["p_bearish"] + f["p_neutral"] + f["p_bullish"] - 1.0) < 1e-9
    assert pair["n_realised"] == last - h

    # the record is what the forecasts say
    done = [f for f in fc if f["realised_label"] is not None]
    y = [CLASS_CODES[f["realised_label"]] for f in done]
    pred = [CLASS_CODES[f["label"]] for f in done]
    rec = pair["record"]
    assert rec["n"] == last - h
    assert rec["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    moved = [(a, b) for a, b in zip(y, pred, strict=True) if a != 1 and b != 1]
    assert rec["hit_rows"] == len(moved)
    assert rec["hit_rate"] == pytest.approx(np.mean([a == b for a, b in moved]), abs=1e-12)
    persist = [CLASS_CODES[f["persistence_label"]] for f in done]
    assert rec["persistence_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, persist))
    p_true = [f[f"p_{f['realised_label'].lower()}"] for f in done]
    assert rec["log_loss"] == pytest.approx(float(np.mean(-np.log(p_true))), abs=1e-12)
    assert rec["prior_log_loss"] > 0
    score = [f["p_bullish"] - f["p_bearish"] for f in done]
    ic = spearmanr(score, [f["realised_return"] for f in done]).statistic
    assert rec["ic"] == pytest.approx(ic, abs=1e-9)
    for key in ("ic", "ic_p_value", "net_sharpe", "buy_and_hold_net_sharpe", "majority_balanced_accuracy"):
        assert key in rec

    # stored apart from the live record, exactly as printed
    rid = out["replay_id"]
    assert store.get_replay(rid)["status"] == "succeeded"
    (row,) = store.list_replay_pairs(rid)
    assert (row["n_forecasts"], row["n_realised"], row["retrains"], row["promotions"]) == (
        last,
        last - h,
        pair["retrains"],
        pair["promotions"],
    )
    assert row["record"]["balanced_accuracy"] == rec["balanced_accuracy"]
    stored = store.list_replay_forecasts(rid, ticker, "d1")
    assert len(stored) == last
    for s, f in zip(stored, fc, strict=True):
        assert pd.Timestamp(s["bar_ts"]) == pd.Timestamp(f["bar_ts"])
        assert pd.Timestamp(s["trained_through"]) == pd.Timestamp(f["trained_through"])
        assert (s["p_bearish"], s["p_neutral"], s["p_bullish"]) == (
            f["p_bearish"],
            f["p_neutral"],
            f["p_bullish"],
        )
        assert (s["label"], s["realised_label"]) == (f["label"], f["realised_label"])
        assert s["realised_return"] == f["realised_return"]

    if env["kind"] == "supabase":  # the replay_performance view reads the same record off the stored rows
        view = store.client.table("replay_performance").select("*").eq("replay_id", rid).execute().data
        (v,) = view
        assert (v["n_forecasts"], v["n_realised"], v["retrains"]) == (last, last - h, pair["retrains"])
        assert v["balanced_accuracy"] == pytest.approx(rec["balanced_accuracy"], abs=1e-12)
        assert v["hit_rate"] == pytest.approx(rec["hit_rate"], abs=1e-12)
        assert v["persistence_balanced_accuracy"] == pytest.approx(rec["persistence_balanced_accuracy"])
        assert v["ic"] == pytest.approx(rec["ic"], abs=1e-9)
        assert v["net_sharpe"] == pytest.approx(rec["net_sharpe"])

    # a replay creates no live champion, no model version, no live forecast and no model file
    assert store.get_champion(ticker, "d1") is None
    assert store.list_model_versions(ticker, "d1") == []
    assert store.list_forecasts(ticker, "d1") == []
    run = run_forecasts(store, settings, [(ticker, "d1")])
    (result,) = run.results
    assert result.status == "skipped" and "no champion" in (result.reason or "")
    models = env["tmp"] / "models"
    assert not models.exists() or not any(p.is_file() for p in models.rglob("*"))


def test_a_store_cut_200_bars_earlier_gives_the_same_forecasts_for_the_bars_both_cover(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    store, tag = env["store"], env["tag"]
    full, cut = f"F{tag}", f"C{tag}"
    bars = sample_bars("IBM", "d1", first=700)
    load(store, full, "d1", bars)
    load(store, cut, "d1", bars.iloc[:500])
    # both replays start at bar 440: the full store replays 260 bars, the cut one 60
    a = replay(capsys, "--pairs", f"{full}:d1", "--last", "260", "--retrain-every", "21")["pairs"][0]
    b = replay(capsys, "--pairs", f"{cut}:d1", "--last", "60", "--retrain-every", "21")["pairs"][0]
    assert a["status"] == b["status"] == "succeeded"
    assert len(b["forecasts"]) == 60 and b["retrains"] == 3
    shared = a["forecasts"][:60]
    assert [f["bar_ts"] for f in shared] == [f["bar_ts"] for f in b["forecasts"]]
    for x, y in zip(shared, b["forecasts"], strict=True):
        assert (x["p_bearish"], x["p_neutral"], x["p_bullish"]) == (
            y["p_bearish"],
            y["p_neutral"],
            y["p_bullish"],
        )
        assert (x["label"], x["trained_through"]) == (y["label"], y["trained_through"])
    assert len({f["trained_through"] for f in b["forecasts"]}) >= 2  # more than one model is compared
    # the cut store has no future for its last h bars; the full store realises them
    h = b["horizon_bars"]
    assert all(f["realised_return"] is None for f in b["forecasts"][-h:])
    assert all(f["realised_return"] is not None for f in shared[-h:])


def test_the_gate_keeps_a_champion_that_is_not_beaten_and_it_keeps_forecasting(
    embedded_store: TrainingStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store, ticker = embedded_store, "KEPT"  # the gate is store-independent: one store is enough
    load(store, ticker, "d1", sample_bars("GSPC", "d1", first=700))
    # every 5 bars: well inside max_model_age_days (14 days), so each retrain faces the paired comparison
    pair = replay(capsys, "--pairs", f"{ticker}:d1", "--last", "60", "--retrain-every", "5")["pairs"][0]
    steps = pair["steps"]
    assert len(steps) == pair["retrains"] == 12
    assert steps[0]["status"] == "promoted" and steps[0]["reason"] == "first version of the pair"
    kept = [s for s in steps if s["status"] == "kept"]
    assert kept, "with 12 retrains over 60 bars at least one challenger must fail the gate"
    assert pair["promotions"] == sum(s["status"] == "promoted" for s in steps) < pair["retrains"]
    # every bar is forecast by the latest PROMOTED model at or before it, never by a kept challenger
    promoted = [pd.Timestamp(s["trained_through"]) for s in steps if s["status"] == "promoted"]
    for f in pair["forecasts"]:
        bar = pd.Timestamp(f["bar_ts"])
        assert pd.Timestamp(f["trained_through"]) == max(p for p in promoted if p <= bar)


def test_workers_2_gives_exactly_the_in_process_replay(
    embedded_store: TrainingStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store, tag = embedded_store, "P"  # the executor is store-independent: one store is enough
    pairs = [f"A{tag}:d1", f"B{tag}:w1"]
    load(store, f"A{tag}", "d1", sample_bars("IXIC", "d1", first=600))
    load(store, f"B{tag}", "w1", sample_bars("GSPC", "w1", first=600))
    args = ("--pairs", *pairs, "--last", "60", "--retrain-every", "20")
    here = replay(capsys, *args, "--workers", "1")
    pool = replay(capsys, *args, "--workers", "2")
    assert here["executor"]["kind"] == "in-process" and pool["executor"]["kind"] == "process-pool"
    for a, b in zip(here["pairs"], pool["pairs"], strict=True):
        assert a["status"] == b["status"] == "succeeded"
        assert a["forecasts"] == b["forecasts"]
        assert a["record"] == b["record"] and a["steps"] == b["steps"]


def test_default_cadence_is_the_schedules() -> None:
    settings = Settings()
    assert {tf: default_retrain_every(settings, tf) for tf in ("m15", "h1", "h4", "d1", "w1")} == {
        "m15": 26,  # the daily group trains once per trading day: 26 fifteen-minute bars
        "h1": 7,
        "h4": 2,
        "d1": 1,
        "w1": 1,  # the weekly group: once a week
    }
    # a timeframe in no group is retrained when its champion would expire: 14 days of d1 bars
    off = settings.model_copy(update={"schedule_daily_timeframes": ["h1"]})
    assert default_retrain_every(off, "d1") == round(252 / 365.25 * 14)


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str], ml_env: Path) -> None:
    assert main(["--last", "0"]) == 2
    assert "--last must be >= 1" in capsys.readouterr().err
    assert main(["--pairs", "GOOG:d1", "--timeframes", "d1"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--pairs",
        "--symbols",
        "--timeframes",
        "--all",
        "--last",
        "--retrain-every",
        "--json",
        "--workers",
        "--dask",
        "Exit codes",
    ):
        assert flag in text


def test_a_named_pair_without_bars_fails_the_replay(
    capsys: pytest.CaptureFixture[str], embedded_store: Any
) -> None:
    code = main(["--pairs", "NOPE:d1", "--json", "-q"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == "failed"
    assert out["pairs"][0]["status"] == "failed" and "no bars" in out["pairs"][0]["error"]


def test_a_dask_cluster_gives_exactly_the_in_process_replay(
    embedded_store: TrainingStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import dask.config

    from tests.plugins.dask_cluster import local_cluster

    load(embedded_store, "DASKR", "d1", sample_bars("GOOG", "d1", first=600))
    args = ("--pairs", "DASKR:d1", "--last", "42", "--retrain-every", "21")
    here = replay(capsys, *args, "--workers", "1")
    with local_cluster(tmp_path / "dask", 2) as cluster, dask.config.set(cluster.client_config):
        remote = replay(capsys, *args, "--dask", cluster.address)
    assert remote["executor"]["kind"] == "dask" and remote["executor"]["workers"] == 2
    (a,), (b,) = here["pairs"], remote["pairs"]
    assert a["status"] == b["status"] == "succeeded" and a["retrains"] == 2
    assert a["forecasts"] == b["forecasts"] and a["record"] == b["record"] and a["steps"] == b["steps"]


def test_history_before_the_first_window_changes_nothing_and_the_first_model_is_the_jobs(
    embedded_store: TrainingStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # the replay reads last + target_bars + warm-up bars: a store holding only those gives the same replay as
    # one holding 1,000 bars more (features are prefix-invariant), and its first window is the job's
    bars = sample_bars("GSPC", "d1", first=1800)
    load(embedded_store, "LONG", "d1", bars)
    load(embedded_store, "SHORT", "d1", bars.iloc[-(60 + 500 + 120) :])
    a = replay(capsys, "--pairs", "LONG:d1", "--last", "60", "--retrain-every", "30")["pairs"][0]
    b = replay(capsys, "--pairs", "SHORT:d1", "--last", "60", "--retrain-every", "30")["pairs"][0]
    assert a["status"] == b["status"] == "succeeded" and a["retrains"] == 2
    assert a["forecasts"] == b["forecasts"] and a["record"] == b["record"]

    # the first replayed bar's model is the one the training job builds as of that bar: same probabilities
    from ml.src.features.technical_indicators import FEATURE_COLUMNS, add_technical_features
    from ml.src.training.registry import load_champion
    from ml.src.training.run_loop import run_job

    settings = Settings()
    short = bars.iloc[-(60 + 500 + 120) :].reset_index(drop=True)
    k = len(short) - 60
    t0 = short["ts"].iloc[k].to_pydatetime()
    job = run_job(embedded_store, settings, ["SHORT"], ["d1"], as_of=t0, force=True, workers=1)
    assert [r.status for r in job.results] == ["succeeded"]
    model = load_champion("SHORT", "d1", settings=settings, store=embedded_store, now=t0)
    assert pd.Timestamp(model.metadata["split"]["data_end"]) == pd.Timestamp(
        b["forecasts"][0]["trained_through"]
    )
    x = add_technical_features(short.iloc[: k + 1]).iloc[[-1]].loc[:, list(FEATURE_COLUMNS)]
    p = model.predict_proba(x)[0]
    f = b["forecasts"][0]
    assert (f["p_bearish"], f["p_neutral"], f["p_bullish"]) == (p[0], p[1], p[2])


def test_the_replay_refuses_settings_it_would_not_train_like_the_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay cuts windows from the default features and labels: with another set it would record a loop
    the job does not run, so it refuses in one line (exit 2) before opening the store."""
    for name, value in (
        ("ML_VOL_FEATURES", "true"),
        ("ML_CONTEXT_SYMBOLS", "GSPC"),
        ("ML_THRESHOLD_MODE", "ex_ante_vol"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            m.setenv("ML_LOCAL_DB", "/nonexistent/never-opened.sqlite3")
            assert main(["--pairs", "GOOG:d1", "--last", "10"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "default features and labels only" in err[0], err
