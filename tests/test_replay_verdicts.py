"""The replay as the verdict basis (issue 19, item 4), on both stores, on the shipped sample bars.

A replay judges each pair on its own realised forecasts (basis "replay": ensemble against the better of majority
and persistence, log loss against the prior) with Benjamini-Hochberg q-values across the replay's pairs, in
--json and in the stored record; the training job then judges a pair on the rows of its latest finished replay
that ends at or before the run's data end, else on walk-forward, else on the test slice.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from ml.src.cli.replay import main as replay_main
from ml.src.cli.train import main as train_main
from ml.src.data.store import TrainingStore
from ml.src.training.stats import benjamini_hochberg
from ml.src.training.verdict import judge_replay, replay_priors
from tests.factories import sample_bars

pytestmark = pytest.mark.slow


def _load(store: TrainingStore, tickers: dict[str, str], first: int) -> None:
    for ticker, source in tickers.items():
        store.upsert_bars(ticker, "d1", sample_bars(source, "d1", first=first))
    store.upsert_symbols(list(tickers))


def _replay(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = replay_main([*argv, "--json", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def _train(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = train_main([*argv, "--target-bars", "400", "--force", "--json", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_a_replay_judges_each_pair_on_its_rows_with_q_values_across_its_pairs(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    store, settings, tag = env["store"], env["settings"], env["tag"]
    tickers = {f"A{tag}": "GOOG", f"B{tag}": "IBM", f"C{tag}": "GSPC"}
    _load(store, tickers, first=700)
    out = _replay(capsys, "--pairs", *(f"{t}:d1" for t in tickers), "--last", "80", "--retrain-every", "20")
    pairs = {p["symbol"]: p for p in out["pairs"]}
    assert all(p["status"] == "succeeded" for p in pairs.values()), [p["error"] for p in pairs.values()]
    verdicts = {t: pairs[t]["record"]["verdict"] for t in tickers}
    for t, v in verdicts.items():
        rec = pairs[t]["record"]
        assert v["basis"] == "replay" and "replay_id" not in v  # the record's own replay
        assert v["n"] == pairs[t]["n_realised"] == rec["n"]
        # the numbers a user reads in the record: ensemble - the better baseline, prior - ensemble log loss
        best = max(rec["majority_balanced_accuracy"], rec["persistence_balanced_accuracy"])
        assert v["balanced_accuracy_diff"] == pytest.approx(rec["balanced_accuracy"] - best, abs=1e-12)
        assert v["log_loss_gain"] == pytest.approx(rec["prior_log_loss"] - rec["log_loss"], abs=1e-12)
        assert v["fdr"] == settings.verdict_fdr and v["verdict"] in ("skill", "no-skill", "worse")
    ps = [verdicts[t]["p_value"] for t in tickers]
    assert [verdicts[t]["q_value"] for t in tickers] == pytest.approx(benjamini_hochberg(ps), abs=1e-15)

    # the stored record carries the same verdict; the stored rows alone judge the pair to the same numbers
    stored = {r["symbol"]: r for r in store.list_replay_pairs(out["replay_id"])}
    for t in tickers:
        assert stored[t]["record"]["verdict"] == verdicts[t]
        latest = store.latest_replay(t, "d1")
        assert latest is not None and latest["replay_id"] == out["replay_id"]
        priors = replay_priors(latest["forecasts"], latest["steps"])
        assert priors is not None
        again = judge_replay(
            latest["forecasts"], priors, horizon=pairs[t]["horizon_bars"], z=verdicts[t]["z"], fdr=0.1
        )
        assert again is not None
        assert again.p_value == verdicts[t]["p_value"] and again.n == verdicts[t]["n"]
        assert again.balanced_accuracy.diff == verdicts[t]["balanced_accuracy_diff"]


def test_the_job_judges_on_the_latest_replay_that_ends_by_its_data_end(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    store, tag = env["store"], env["tag"]
    tickers = {f"D{tag}": "GOOG", f"E{tag}": "IBM"}
    _load(store, tickers, first=700)
    pairs_arg = ["--pairs", *(f"{t}:d1" for t in tickers)]

    before = _train(capsys, *pairs_arg)  # no replay yet: the test slice
    assert {r["metrics"]["verdict"]["basis"] for r in before["results"]} == {"test"}
    walk = _train(capsys, *pairs_arg, "--walk-forward", "2")  # folds: walk-forward
    assert {r["metrics"]["verdict"]["basis"] for r in walk["results"]} == {"walk_forward"}

    rep = _replay(capsys, *pairs_arg, "--last", "60", "--retrain-every", "30")
    replayed = {p["symbol"]: p["record"]["verdict"] for p in rep["pairs"]}
    after = _train(capsys, *pairs_arg, "--walk-forward", "2")
    got = {r["symbol"]: r["metrics"]["verdict"] for r in after["results"]}
    for t in tickers:
        v = got[t]
        assert (v["basis"], v["replay_id"]) == ("replay", rep["replay_id"])
        # the same rows as the replay's own verdict; the q-value is the run's (BH over the run's pairs)
        assert (v["n"], v["p_value"]) == (replayed[t]["n"], replayed[t]["p_value"])
        assert v["balanced_accuracy_diff"] == replayed[t]["balanced_accuracy_diff"]
    ps = [got[t]["p_value"] for t in tickers]
    assert [got[t]["q_value"] for t in tickers] == pytest.approx(benjamini_hochberg(ps), abs=1e-15)
    # ... in the ledger too
    ledger = {r["symbol"]: r for r in store.list_results(after["run_id"])}
    for t in tickers:
        metrics = ledger[t]["metrics"]
        metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
        assert metrics["verdict"]["basis"] == "replay" and metrics["verdict"]["q_value"] == got[t]["q_value"]

    # a run as of a bar before the replay's last: the replay would bring in bars after the run's data
    last_bar = min(pd.Timestamp(p["last_bar_ts"]) for p in rep["pairs"])
    as_of = _train(
        capsys, *pairs_arg, "--walk-forward", "2", "--as-of", (last_bar - pd.Timedelta(days=10)).isoformat()
    )
    assert {r["metrics"]["verdict"]["basis"] for r in as_of["results"]} == {"walk_forward"}
    assert store.latest_replay(next(iter(tickers)), "d1", through=last_bar - pd.Timedelta(days=10)) is None


def test_stored_rows_without_their_priors_are_not_judged_and_persistence_needs_every_label() -> None:
    from ml.src.training.verdict import PairedRows

    t0, t1 = "2026-01-05T21:00:00+00:00", "2026-01-06T21:00:00+00:00"
    forecasts = [
        {
            "bar_ts": t0,
            "trained_through": t0,
            "label": "BULLISH",
            "realised_label": "BULLISH",
            "persistence_label": "BEARISH",
            "p_bearish": 0.2,
            "p_neutral": 0.3,
            "p_bullish": 0.5,
        },
        {
            "bar_ts": t1,
            "trained_through": t0,
            "label": "NEUTRAL",
            "realised_label": "BEARISH",
            "persistence_label": None,
            "p_bearish": 0.3,
            "p_neutral": 0.4,
            "p_bullish": 0.3,
        },
        {
            "bar_ts": t1,
            "trained_through": t1,
            "label": "NEUTRAL",
            "realised_label": None,
            "persistence_label": "NEUTRAL",
            "p_bearish": 0.3,
            "p_neutral": 0.4,
            "p_bullish": 0.3,
        },
    ]
    promoted = {"trained_through": t0, "status": "promoted", "reason": "first", "prior": [0.5, 0.2, 0.3]}
    second = {"trained_through": t1, "status": "promoted", "reason": "expired", "prior": [0.1, 0.6, 0.3]}
    assert replay_priors(forecasts, [promoted, second]) == [[0.5, 0.2, 0.3], [0.5, 0.2, 0.3], [0.1, 0.6, 0.3]]
    # a replay stored before its steps kept the prior: no baselines, no verdict (the job keeps its own basis)
    assert replay_priors(forecasts, [{**promoted, "prior": None}, second]) is None
    rows = PairedRows.from_replay(forecasts, [[0.5, 0.2, 0.3]] * 3)
    assert len(rows) == 2  # the unrealised forecast is no evidence
    assert list(rows.codes) == [2, 0] and list(rows.model_pred) == [2, 1]
    assert list(rows.baseline_preds) == ["majority"]  # one realised row has no persistence label
    assert list(rows.baseline_preds["majority"]) == [0, 0]  # the prior's majority class, BEARISH
    assert judge_replay(forecasts[2:], [[0.1, 0.6, 0.3]], horizon=5, z=2.0) is None
