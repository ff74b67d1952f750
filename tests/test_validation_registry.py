"""Walk-forward, trading read, promotion gate, retention, load_champion and monitoring, on the shipped real bars."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from freezegun import freeze_time

from config.settings import Settings
from ml.src.cli import report as report_cli
from ml.src.cli.train import main
from ml.src.data.local_db import SqliteStore
from ml.src.monitoring import report as monitoring
from ml.src.training import registry, run_loop
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import fit_pair, persist_pair, prepare_pair
from ml.src.training.registry import ChampionError, decide_promotion, load_champion
from ml.src.training.walk_forward import fold_bounds
from ml.src.training.worker import pack_fit
from tests.factories import sample_bars

pytestmark = pytest.mark.slow

TARGET = "400"


def load(store: SqliteStore, symbol: str, tf: str, last: int) -> None:
    store.upsert_bars(symbol, tf, sample_bars(symbol, tf, last=last))
    store.upsert_symbols([symbol])


def run(capsys, *argv: str) -> dict:
    code = main([*argv, "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, 1), out
    return out


def test_fold_bounds_are_ordered_blocks_after_enough_history() -> None:
    bounds = fold_bounds(495, folds=3, horizon=5, min_rows=30)
    assert bounds == [(249, 331), (331, 413), (413, 495)]
    with pytest.raises(ValueError, match="rows per fold"):
        fold_bounds(200, folds=5, horizon=5, min_rows=30)


def test_walk_forward_folds_never_see_their_test_rows(embedded_store, capsys) -> None:
    load(embedded_store, "GSPC", "d1", 800)
    out = run(capsys, "--symbol", "GSPC", "--timeframes", "d1", "--target-bars", "500", "--walk-forward", "3")
    r = out["results"][0]
    wf = r["walk_forward"]
    assert [f["fold"] for f in wf["folds"]] == [0, 1, 2] and all("error" not in f for f in wf["folds"])
    starts = [f["test_start"] for f in wf["folds"]]
    assert starts == sorted(starts)
    # the purge: h labelled rows lie between a fold's history and its test block
    labelled = sample_bars("GSPC", "d1", last=800)["ts"].map(lambda t: t.isoformat()).tolist()
    for f in wf["folds"]:
        assert labelled.index(f["test_start"]) - labelled.index(f["history_end"]) == 5 + 1
    for f in wf["folds"]:
        # fit + purge + valid + purge precede the fold's first test row
        assert f["n_fit"] + f["n_valid"] + 2 * 5 <= 495 and f["n_test"] >= 30
        assert 0 <= f["metrics"]["ensemble"]["balanced_accuracy"] <= 1
        assert f["history_end"] < f["test_start"]
        assert sum(f["weights"].values()) == pytest.approx(1)
        # vol thresholds are refitted on each fold's own fit rows
        assert f["thresholds"]["mode"] == "vol" and sum(f["class_shares"]["test"].values()) == pytest.approx(
            1
        )
    s = wf["summary"]
    assert s["n_folds_ok"] == 3
    for name in ("ensemble", "equal_weight", "rf", "gb", "majority", "persistence", "prior"):
        assert {"balanced_accuracy_mean", "balanced_accuracy_std", "log_loss_mean"} <= set(s[name]), name
        assert ("ic_mean" in s[name]) == (name in ("ensemble", "equal_weight", "rf", "gb"))
    assert s["ensemble"]["balanced_accuracy_mean"] == pytest.approx(
        np.mean([f["metrics"]["ensemble"]["balanced_accuracy"] for f in wf["folds"]])
    )
    assert s["majority"]["log_loss_mean"] is None and s["prior"]["log_loss_mean"] > 0
    # the verdict is taken on the pooled walk-forward rows
    assert r["metrics"]["verdict"]["basis"] == "walk_forward"
    assert r["metrics"]["verdict"]["n"] == sum(f["n_test"] for f in wf["folds"])
    assert wf["pooled"]["ensemble"]["ic_pvalue"] is not None
    stored = embedded_store.list_results(out["run_id"])[0]
    assert stored["walk_forward"]["summary"]["n_folds_ok"] == 3
    # the trading read and IC travel with every result
    t = r["metrics"]["trading"]
    assert set(t) >= {"gross", "net", "buy_and_hold", "fee_bps", "slippage_bps"}
    assert t["net"]["total_return"] <= t["gross"]["total_return"] + 1e-12
    assert -1 <= r["metrics"]["ic"]["test"] <= 1


def _challenger(store: SqliteStore, calls: str) -> tuple[Settings, object, object]:
    """A real challenger on real bars whose test-slice calls are replaced by known-bad or known-good ones.

    On real bars no honest model is reliably better or worse than another on 77 rows (that is the point of
    the gate), so the two directions of the rule are exercised with calls whose quality is certain; the
    window, the champion's artifact, its decisions and the baselines all come from the real pipeline.
    """
    settings = Settings()
    prep = prepare_pair(store, PairRequest("IXIC", "d1", target_bars=400, force=True), settings)
    fitted = fit_pair(prep, settings)
    truth = prep.codes[prep.split.test]
    fitted.test.preds["ensemble"] = (truth + 1) % 3 if calls == "wrong" else truth.copy()
    return settings, prep, fitted


def gate(p: dict) -> bool:
    """The documented rule, read back from a recorded decision."""
    assert p["difference"] == pytest.approx(p["challenger"] - p["champion"])
    return p["difference"] > p["z"] * p["std_error"] and p["challenger"] > max(p["baselines"].values())


def test_worse_model_never_replaces_the_champion(embedded_store, capsys) -> None:
    load(embedded_store, "IXIC", "d1", 700)
    first = run(capsys, "--symbol", "IXIC", "--timeframes", "d1", "--target-bars", TARGET)["results"][0]
    assert (
        first["promotion"]["decision"] == "champion"
        and first["promotion"]["reason"] == "first version of the pair"
    )

    # the same data again: a tie is not a win
    again = run(capsys, "--symbol", "IXIC", "--timeframes", "d1", "--target-bars", TARGET, "--force")[
        "results"
    ][0]
    p = again["promotion"]
    assert p["decision"] == "challenger" and "not above" in p["reason"] and not gate(p)
    assert p["difference"] == 0.0 and p["challenger"] == p["champion"]

    settings, prep, fitted = _challenger(embedded_store, "wrong")
    decision = decide_promotion(embedded_store, prep, fitted, settings)
    assert not decision.promote and not gate(decision.to_dict())
    assert decision.challenger == 0.0 < decision.champion and decision.difference < 0
    assert decision.window["n"] >= 30
    champs = [v for v in embedded_store.list_model_versions("IXIC", "d1") if v["is_champion"]]
    assert [c["artifact_sha256"] for c in champs] == [first["artifact_sha256"]]


def test_better_model_is_promoted_and_pointer_moves(embedded_store, ml_env, capsys) -> None:
    load(embedded_store, "IXIC", "d1", 700)
    first = run(capsys, "--symbol", "IXIC", "--timeframes", "d1", "--target-bars", TARGET)["results"][0]
    settings, prep, fitted = _challenger(embedded_store, "right")
    decision = decide_promotion(embedded_store, prep, fitted, settings)
    p = decision.to_dict()
    assert decision.promote and gate(p) and p["decision"] == "champion", p
    assert p["challenger"] == pytest.approx(1.0) and p["difference"] > 1.645 * p["std_error"]
    # the champion's reported score is its score on that window, beside the baselines' on the same rows
    assert p["champion"] < 1.0 and set(p["baselines"]) == {"majority", "persistence"}
    run_id = run_loop.start_run(embedded_store, settings, {"symbols": ["IXIC"]}, "api").run_id
    packed = pack_fit(prep, fitted, run_id=run_id, trained_at=datetime.now(UTC))
    result = persist_pair(
        embedded_store,
        prep,
        packed,
        run_id=run_id,
        models_dir=ml_env / "models",
        duration_s=0.0,
        promotion=decision,
    )
    versions = embedded_store.list_model_versions("IXIC", "d1")
    assert [v["is_champion"] for v in versions] == [True, False]
    assert versions[0]["artifact_sha256"] == result.artifact_sha256 != first["artifact_sha256"]
    stored = embedded_store.list_results(run_id)[0]["promotion"]
    assert stored["difference"] == p["difference"] and stored["std_error"] == p["std_error"]


def test_retention_keeps_champion_and_newest(embedded_store, monkeypatch, capsys) -> None:
    load(embedded_store, "GSPC", "d1", 700)
    monkeypatch.setenv("ML_KEEP_VERSIONS", "2")
    results = [
        run(capsys, "--symbol", "GSPC", "--timeframes", "d1", "--target-bars", TARGET, "--force")["results"][
            0
        ]
        for _ in range(4)
    ]
    versions = embedded_store.list_model_versions("GSPC", "d1")
    kept = {v["artifact_sha256"] for v in versions}
    champion = [v for v in versions if v["is_champion"]]
    assert len(champion) == 1 and champion[0]["artifact_sha256"] == results[0]["artifact_sha256"]
    assert kept == {
        results[0]["artifact_sha256"],
        results[2]["artifact_sha256"],
        results[3]["artifact_sha256"],
    }
    assert Path(results[0]["artifact_file"]).is_file()
    assert not Path(results[1]["artifact_file"]).exists()


def test_load_champion_checks_age_and_features(embedded_store, monkeypatch, capsys) -> None:
    load(embedded_store, "IBM", "w1", 700)
    with pytest.raises(ChampionError, match="no champion"):
        load_champion("IBM", "w1", store=embedded_store)
    r = run(capsys, "--symbol", "IBM", "--timeframes", "w1", "--target-bars", TARGET)["results"][0]
    model = load_champion("IBM", "w1", store=embedded_store)
    assert model.metadata["run_id"] and model.classes == ("BEARISH", "NEUTRAL", "BULLISH")
    with (
        freeze_time(datetime.now(UTC) + timedelta(days=46)),
        pytest.raises(ChampionError, match="older than 45"),
    ):
        load_champion("IBM", "w1", store=embedded_store)
    # same columns, another feature-set version (the values differ): refused too
    current = registry.FEATURE_SET_VERSION
    monkeypatch.setattr(registry, "FEATURE_SET_VERSION", "ta-next")
    with pytest.raises(ChampionError, match=rf"different feature list or version \({current}\)"):
        load_champion("IBM", "w1", store=embedded_store)
    monkeypatch.setattr(registry, "FEATURE_SET_VERSION", current)
    monkeypatch.setattr(registry, "FEATURE_COLUMNS", ("only_one_feature",))
    with pytest.raises(ChampionError, match="different feature list"):
        load_champion("IBM", "w1", store=embedded_store)
    assert Path(r["artifact_file"]).is_file()


def _history(store: SqliteStore, capsys, symbol: str, tf: str, as_ofs: list[str]) -> list[dict]:
    load(store, symbol, tf, 1400)
    for as_of in as_ofs:
        run(capsys, "--symbol", symbol, "--timeframes", tf, "--target-bars", TARGET, "--as-of", as_of)
    return store.results_history(symbol, tf)


def test_monitoring_rules_on_real_history(embedded_store, capsys) -> None:
    hist = _history(
        embedded_store, capsys, "GSPC", "d1", ["2016-06-30", "2017-06-30", "2018-06-29", "2018-12-31"]
    )
    assert len(hist) == 4
    champion = embedded_store.get_champion("GSPC", "d1")
    now = datetime.now(UTC)
    scores = [h["metrics"]["ensemble"]["test_balanced_accuracy"] for h in hist]
    mean_prev = float(np.mean(scores[:-1]))

    strict = Settings(monitor_retrain_drop=0.0, monitor_disable_runs=1)
    h = monitoring.assess_pair(hist, champion, strict, now)
    assert ("RETRAIN" in h.flags) == (scores[-1] < mean_prev)
    assert h.latest == pytest.approx(scores[-1]) and h.history_mean == pytest.approx(mean_prev)

    lenient = Settings(monitor_retrain_drop=1.0, monitor_disable_runs=1)
    assert "RETRAIN" not in monitoring.assess_pair(hist, champion, lenient, now).flags
    expired = monitoring.assess_pair(hist, champion, lenient, now + timedelta(days=15))
    assert "RETRAIN" in expired.flags and expired.champion_expired

    champ, best = monitoring.champion_vs_baselines(hist[-1], "test_balanced_accuracy")
    h1 = monitoring.assess_pair(hist, champion, lenient, now)
    assert ("DISABLE" in h1.flags) == (champ <= best)
    all_runs = Settings(monitor_retrain_drop=1.0, monitor_disable_runs=4)
    below = sum(
        c <= b for c, b in (monitoring.champion_vs_baselines(r, "test_balanced_accuracy") for r in hist)
    )
    h4 = monitoring.assess_pair(hist, champion, all_runs, now)
    assert h4.runs_below_baselines == below and ("DISABLE" in h4.flags) == (below == 4)


def test_monitoring_cli(embedded_store, capsys) -> None:
    _history(embedded_store, capsys, "IXIC", "w1", ["2017-12-29", "2018-12-31"])
    assert report_cli.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["symbol"], r["timeframe"], r["runs"]) for r in rows] == [("IXIC", "w1", 2)]
    assert report_cli.main([]) == 0
    assert "IXIC" in capsys.readouterr().out


def test_monitoring_cli_shows_the_verdicts_q_value(embedded_store, capsys) -> None:
    hist = _history(embedded_store, capsys, "IXIC", "w1", ["2018-12-31"])
    verdict = hist[-1]["metrics"]["verdict"]
    assert verdict["q_value"] == pytest.approx(verdict["p_value"])  # alone in its run: q = p
    assert report_cli.main(["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["verdict"], row["verdict_q"]) == (verdict["verdict"], pytest.approx(verdict["q_value"]))
    assert report_cli.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if line.startswith("symbol")).split()
    assert head[head.index("verdict") + 1] == "q"
    ixic = next(line for line in lines if line.startswith("IXIC"))
    assert f"{verdict['verdict']} {verdict['q_value']:.3f}" in " ".join(ixic.split())
