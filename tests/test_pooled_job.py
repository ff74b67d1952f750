"""Models that learn across symbols in the job (ML_POOLED_MODELS, issue 20 item 3), on the shipped sample bars.

Each pair's pooled candidate learns from no row of any pair whose label was not yet known when the pair's last
train label was; local vs pooled is chosen by the promotion gate's paired rule on the rows both predicted out of
sample, and the choice is recorded per pair: in --json, the ledger's result row and model version, and the
bundle, whose model is the one chosen.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from config.settings import Settings
from ml.src.cli.train import main as train_main
from ml.src.data.local_db import SqliteStore
from ml.src.data.store import TrainingStore
from ml.src.training import models
from ml.src.training.artifacts import load_ensemble
from ml.src.training.metrics import balanced_accuracy_rows
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import prepare_pair
from ml.src.training.pooled_pair import (
    fit_pair_local_or_pooled,
    fit_pooled_pair,
    pool_member,
    pool_peers,
)
from tests.factories import sample_bars

pytestmark = pytest.mark.slow

# two calendars among the shipped d1 files: GSPC and IXIC end 2018-12-31, IBM and GOOG 2013-03-01
SOURCES = {"GSPC": "A", "IXIC": "B", "IBM": "C", "GOOG": "D"}


def _load(store: TrainingStore, tag: str, last: int = 700) -> dict[str, str]:
    tickers = {f"{prefix}{tag}": source for source, prefix in SOURCES.items()}
    for ticker, source in tickers.items():
        store.upsert_bars(ticker, "d1", sample_bars(source, "d1", last=last))
    store.upsert_symbols(list(tickers))
    return tickers


def _train(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = train_main([*argv, "--target-bars", "400", "--force", "--json", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def _latest_run(store: TrainingStore, table: str) -> str:
    match = re.search(r"^run ([0-9a-f-]{36}) ", table, re.M)
    assert match is not None, table
    return match.group(1)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_local_vs_pooled_selection_is_recorded_per_pair(
    env: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    store, tag = env["store"], env["tag"]
    tickers = _load(store, tag)
    monkeypatch.setenv("ML_POOLED_MODELS", "true")
    monkeypatch.setenv("ML_PROMOTION_Z", "0")  # any paired gain wins: both outcomes occur on these bars
    out = _train(capsys, "--pairs", *(f"{t}:d1" for t in tickers), "--walk-forward", "2")
    results = {r["symbol"]: r for r in out["results"]}
    assert {r["status"] for r in results.values()} == {"succeeded"}
    ledger = {r["symbol"]: r for r in store.list_results(out["run_id"])}
    settings = Settings()
    selected = {}
    for t, r in results.items():
        choice = r["metrics"]["pooling"]
        selected[t] = choice["selected"]
        # the peers: the other pairs of the timeframe with rows known by this pair's train end (GSPC's and
        # IXIC's last 700 bars start after IBM's and GOOG's end)
        later = {f"A{tag}", f"B{tag}"}
        expected = {o for o in tickers if o != t and (t in later or o not in later)}
        assert set(choice["peers"]) == {f"{o}/d1" for o in expected}
        assert all(n >= settings.min_rows_per_split for n in choice["peers"].values())
        # the choice is the gate's rule on the recorded numbers: pooled - local > z x s.e., baselines beaten
        assert choice["difference"] == pytest.approx(choice["pooled"] - choice["local"], abs=1e-12)
        wins = (
            choice["std_error"] is not None
            and choice["difference"] > choice["z"] * choice["std_error"]
            and all(choice["pooled"] > b for b in choice["baselines"].values())
        )
        assert choice["selected"] == ("pooled" if wins else "local"), choice
        assert choice["n_rows"] > r["n_test"]  # walk-forward blocks and the test slice
        # the ledger says which, in the result row and the model version
        assert _json(ledger[t]["metrics"])["pooling"] == choice
        versions = store.list_model_versions(t, "d1")
        assert _json(versions[0]["metrics"])["pooling"] == choice
        # the bundle holds the chosen model: it reproduces the recorded test score on the pair's test rows
        model = load_ensemble(Path(r["artifact_file"]), expected_sha256=r["artifact_sha256"])
        assert model.metadata["pooling"]["selected"] == choice["selected"]
        prep = prepare_pair(store, PairRequest(t, "d1", target_bars=400), settings)
        test = prep.split.test
        pred = model.decide(model.predict_proba(prep.x[test]))
        score = float(balanced_accuracy_rows(prep.codes[test], pred).sum())
        assert score == pytest.approx(r["metrics"]["ensemble"]["test_balanced_accuracy"], abs=1e-12)
    assert set(selected.values()) == {"local", "pooled"}, selected
    if env["kind"] == "supabase":  # the SQL docs/validation.md gives reads the same choice
        import psycopg

        doc = (Path(__file__).resolve().parents[1] / "docs" / "validation.md").read_text()
        query = re.search(r"`(select symbol, timeframe, metrics->'pooling'[^`]*)`", doc)
        assert query is not None
        sql = query.group(1).replace("'…'", "%s")
        stack = request.getfixturevalue("supabase_stack")
        with psycopg.connect(stack["DATABASE_URL"]) as conn:
            rows = conn.execute(sql, (out["run_id"],)).fetchall()
        assert {sym: sel for sym, _, sel in rows} == selected

    # the summary table says which per pair, with the same numbers (the flag stands for the setting)
    monkeypatch.setenv("ML_POOLED_MODELS", "false")
    pairs = [f"{t}:d1" for t in tickers]
    code = train_main(
        ["--pairs", *pairs, "--walk-forward", "2", "--target-bars", "400", "--force", "--pooled-models"]
    )
    table = capsys.readouterr().out
    assert code == 0
    again = {
        r["symbol"]: _json(r["metrics"])["pooling"] for r in store.list_results(_latest_run(store, table))
    }
    for t, choice in again.items():
        line = next(x for x in table.splitlines() if x.startswith(f"  pooling {t}/d1 "))
        assert f"kept {choice['selected']}: pooled - local {choice['difference']:+.4f}" in line
        assert f", {choice['n_rows']} rows)" in line

    # without it the job is local only, and says nothing about pooling
    monkeypatch.setenv("ML_POOLED_MODELS", "true")
    plain = _train(capsys, "--pairs", *pairs, "--no-pooled-models")
    assert all("pooling" not in r["metrics"] for r in plain["results"])


def test_a_pooled_fit_never_sees_any_pairs_rows_from_the_pairs_valid_or_test_period(
    embedded_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tickers = _load(embedded_store, "", last=700)
    preps = [prepare_pair(embedded_store, PairRequest(t, "d1", target_bars=400), settings) for t in tickers]
    # every feature row of every pair -> the time its label became known (row + h)
    label_end: dict[bytes, pd.Timestamp] = {}
    for p in preps:
        h = p.spec.horizon_bars
        for i in range(len(p.returns) - h):
            label_end[p.x[i].tobytes()] = p.ts.iloc[i + h]
    fits: list[dict[str, np.ndarray]] = []
    real = models.fit_ensemble

    def spy(
        x: np.ndarray, codes: np.ndarray, fit: slice, valid: slice, parts: dict, *a: Any, **k: Any
    ) -> Any:
        fits.append({"fit": x[fit].copy(), "valid": x[valid].copy(), "test": x[parts["test"]].copy()})
        return real(x, codes, fit, valid, parts, *a, **k)

    monkeypatch.setattr(models, "fit_ensemble", spy)
    target = preps[0]  # GSPC: IXIC shares its calendar, IBM and GOOG ended years before its train end
    peers = pool_peers(target, preps)
    assert [m.label for m in peers] == ["B/d1", "C/d1", "D/d1"]
    fitted, used = fit_pooled_pair(target, peers, settings)
    assert len(fits) == 1
    s, h = target.split, target.spec.horizon_bars
    cutoff = target.ts.iloc[s.train.stop - 1 + h]
    learnt = fits[0]["fit"]
    ends = [label_end[row.tobytes()] for row in learnt]
    assert max(ends) <= cutoff  # no label of any pair reaches past the pair's last train label
    own = {target.x[i].tobytes() for i in range(s.train.stop)}
    assert len(learnt) == s.train.stop + sum(used.values())
    assert sum(r.tobytes() not in own for r in learnt) == sum(used.values()) > 2 * s.train.stop
    # IXIC's rows up to the cutoff only (its later rows are the pair's valid and test period); all of IBM's
    assert s.train.stop - h <= used["B/d1"] <= s.train.stop + h
    assert used["C/d1"] == len(preps[2].returns) - preps[2].spec.horizon_bars
    # calibration, weights and scores on the pair's own valid and test rows
    np.testing.assert_array_equal(fits[0]["valid"], target.x[s.valid])
    np.testing.assert_array_equal(fits[0]["test"], target.x[s.test])
    assert fitted.test.rows.tolist() == list(range(s.test.start, s.test.stop))
    # the baselines it is read beside are the pair's own (its train mix), as the local fit's
    own_mix = np.bincount(target.codes[s.train], minlength=3) / s.n_train
    np.testing.assert_allclose(fitted.test.probas["prior"][0], own_mix)
    assert fitted.metrics["prior"]["class_mix"] == pytest.approx(own_mix.tolist())


def test_peers_are_the_same_timeframes_other_pairs_with_the_same_columns(
    embedded_store: SqliteStore,
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tickers = _load(embedded_store, "", last=700)
    preps = [prepare_pair(embedded_store, PairRequest(t, "d1", target_bars=400), settings) for t in tickers]
    embedded_store.upsert_bars("A", "w1", sample_bars("GSPC", "w1", last=500))
    weekly = prepare_pair(embedded_store, PairRequest("A", "w1", target_bars=400), settings)
    other_columns = replace(preps[3], feature_names=(*preps[3].feature_names, "extra"))
    everything = [*preps[:3], other_columns, weekly]
    assert [m.label for m in pool_peers(preps[0], everything)] == ["B/d1", "C/d1"]
    assert pool_peers(weekly, everything) == []
    assert pool_member(preps[1]).label == "B/d1"

    # a pair alone in its timeframe is local, and says why
    alone = fit_pair_local_or_pooled(weekly, [], settings)
    assert alone.metrics["pooling"]["selected"] == "local"
    assert alone.metrics["pooling"]["reason"] == "no other pair of the timeframe with the same columns"
    assert alone.bundle_extras["pooling"] == {"selected": "local", "peers": {}}
