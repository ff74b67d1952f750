"""Verdicts under false-discovery control, end to end (issue 19 item 4): a run of several real sample pairs on
each store; every succeeded pair's q-value is Benjamini-Hochberg over the run's p-values, in --json, in the ledger
(training_results and model_versions) and in the summary table, and the label follows the FDR rule."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ml.src.cli.train import main
from ml.src.data.local_db import SqliteStore
from ml.src.data.store import StoreError, TrainingStore
from ml.src.data.supabase_db import SupabaseStore
from ml.src.training.stats import benjamini_hochberg
from tests.factories import sample_bars

PAIRS = (("GOOG", "d1"), ("IBM", "d1"), ("GSPC", "d1"), ("IXIC", "w1"))
ARGV = [
    "--pairs",
    *(f"{s}:{tf}" for s, tf in PAIRS),
    "--target-bars",
    "400",
    "--walk-forward",
    "2",
    "--force",
]


def _load(store: TrainingStore) -> None:
    for symbol, tf in PAIRS:
        store.upsert_bars(symbol, tf, sample_bars(symbol, tf, last=700))
    store.upsert_symbols([s for s, _ in PAIRS])


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code = main([*ARGV, *extra, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def _rule(v: dict[str, Any]) -> str:
    """The verdict rule of ml.src.training.verdict, from the recorded numbers."""
    z, se, ll_se = v["z"], v["balanced_accuracy_se"], v["log_loss_gain_se"]
    if (se is not None and v["balanced_accuracy_diff"] < -max(z * se, 1e-9)) or (
        ll_se is not None and v["log_loss_gain"] < -max(z * ll_se, 1e-9)
    ):
        return "worse"
    beats = se is not None and v["balanced_accuracy_diff"] > max(z * se, 1e-9)
    return "skill" if beats and v["log_loss_gain"] > 0 and v["q_value"] <= v["fdr"] else "no-skill"


def _check_run(store: TrainingStore, out: dict[str, Any], fdr: float) -> None:
    results = [r for r in out["results"] if r["status"] == "succeeded"]
    assert len(results) == len(PAIRS), [r.get("error") for r in out["results"]]
    verdicts = {(r["symbol"], r["timeframe"]): r["metrics"]["verdict"] for r in results}
    ps = [v["p_value"] for v in verdicts.values()]
    assert all(0 <= p <= 1 for p in ps) and len(set(ps)) > 1
    expected = dict(zip(verdicts, benjamini_hochberg(ps), strict=True))
    for key, v in verdicts.items():
        assert v["q_value"] == pytest.approx(expected[key], rel=1e-12), key
        assert v["fdr"] == fdr and v["basis"] == "walk_forward" and v["verdict"] == _rule(v)
    # the ledger holds the same final verdicts (nothing half-written): result rows and their model versions
    rows = {(r["symbol"], r["timeframe"]): r for r in store.list_results(out["run_id"])}
    for key, v in verdicts.items():
        assert rows[key]["metrics"]["verdict"] == pytest.approx(v), key
        version = next(m for m in store.list_model_versions(*key) if m["run_id"] == out["run_id"])
        assert version["metrics"]["verdict"] == pytest.approx(v), key


def test_q_values_are_benjamini_hochberg_over_the_runs_p_values_embedded(
    embedded_store: SqliteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    _load(embedded_store)
    code, out = _run(capsys)
    assert code == 0
    _check_run(embedded_store, out, fdr=0.1)
    # the summary table shows p and q beside the verdict
    assert main([*ARGV, "--quiet"]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("symbol"))
    assert header.split()[-4:] == ["verdict", "p", "q", "secs"]
    assert "Benjamini-Hochberg q-value" in text and "q <= the FDR 0.1" in text


def test_the_fdr_setting_and_a_failed_write_back(
    embedded_store: SqliteStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _load(embedded_store)
    monkeypatch.setenv("ML_VERDICT_FDR", "0.5")

    def refuse(self: SqliteStore, run_id: str, verdicts: Any) -> int:
        raise StoreError("database is locked")

    monkeypatch.setattr(SqliteStore, "record_verdicts", refuse)
    code, out = _run(capsys)
    assert code == 0
    # --json still carries the run's q-values (computed in memory); the warning says the ledger lacks them
    qs = [r["metrics"]["verdict"]["q_value"] for r in out["results"]]
    ps = [r["metrics"]["verdict"]["p_value"] for r in out["results"]]
    assert qs == pytest.approx(benjamini_hochberg(ps))
    assert all(r["metrics"]["verdict"]["fdr"] == 0.5 for r in out["results"])
    assert any("could not record the run's q-values" in w for w in out["warnings"]), out["warnings"]
    # the ledger keeps the verdicts written with each pair: no q-value, never skill
    for row in embedded_store.list_results(out["run_id"]):
        v = row["metrics"]["verdict"]
        assert v["q_value"] is None and v["verdict"] in ("no-skill", "worse") and v["p_value"] is not None


@pytest.mark.slow
def test_q_values_are_benjamini_hochberg_over_the_runs_p_values_supabase(
    supabase_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = SupabaseStore(supabase_env["SUPABASE_URL"], supabase_env["SUPABASE_SERVICE_ROLE_KEY"])
    try:
        _load(store)
        code, out = _run(capsys)
        assert code == 0 and out["store"] == "supabase"
        _check_run(store, out, fdr=0.1)
    finally:
        store.close()
