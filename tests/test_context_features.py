"""Market context (ML_CONTEXT_SYMBOLS, issue 20) on real bars: joined as of each bar's close, never a later bar;
prefix-invariant; a pair whose context symbol lacks bars trains without it and says so in one line. With the
ex_ante_vol labels and the vol features on too, the trained champion forecasts with the same columns."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.features.context import context_columns, context_features, joined_index
from ml.src.features.technical_indicators import FEATURE_COLUMNS, VOL_FEATURE_COLUMNS
from ml.src.inference.forecast_job import run_forecasts
from ml.src.training.labels import ex_ante_scale
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import prepare_pair
from ml.src.training.registry import load_champion
from ml.src.training.run_loop import run_job
from tests.factories import ml_test_bars, sample_bars


def test_intraday_bars_join_the_daily_context_bar_closed_before_them() -> None:
    pair = ml_test_bars("AAPL", "h1", last=1500)
    spy = ml_test_bars("SPY", "d1", last=400)
    idx = joined_index(pair["ts"], "h1", spy["ts"], "d1")
    assert (idx >= 0).all()
    pair_close = (pair["ts"] + timedelta(hours=1)).reset_index(drop=True)
    joined_close = (spy["ts"].iloc[idx] + timedelta(days=1)).reset_index(drop=True)
    next_close = (spy["ts"].iloc[np.minimum(idx + 1, len(spy) - 1)] + timedelta(days=1)).reset_index(
        drop=True
    )
    # the joined daily bar has closed by the hourly bar's close; the next daily bar has not
    assert (joined_close <= pair_close).all()
    assert (next_close > pair_close).all()
    # every hour of a session sees the previous session's daily bar, never the one still trading
    day = pair["ts"].dt.normalize()
    same_day = spy["ts"].iloc[idx].dt.normalize().to_numpy() == day.to_numpy()
    assert not same_day.any()
    # the numbers a model reads: AAPL's 2021-03-15 15:00Z hour carries SPY's 1-bar return of Friday 2021-03-12
    # (394.06 / 393.53), not Monday's, whose session is still trading
    feats = context_features(pair, "h1", spy, "d1", "SPY")
    row = int(np.flatnonzero(pair["ts"] == pd.Timestamp("2021-03-15T15:00:00Z"))[0])
    s = spy.set_index("ts")["close"]
    friday = np.log(s[pd.Timestamp("2021-03-12T14:30:00Z")] / s[pd.Timestamp("2021-03-11T14:30:00Z")])
    assert friday == pytest.approx(np.log(394.06 / 393.53), rel=1e-12)
    assert feats["ctx_SPY_ret_1"].iloc[row] == pytest.approx(friday, rel=1e-12)


def test_daily_bars_join_the_context_bar_of_the_same_session() -> None:
    ibm, gspc = sample_bars("IBM", "d1"), sample_bars("GSPC", "d1")
    idx = joined_index(ibm["ts"], "d1", gspc["ts"], "d1")
    known = idx >= 0
    # same session (same opening instant) where GSPC has it, else the latest earlier one
    assert (gspc["ts"].iloc[idx[known]].to_numpy() <= ibm["ts"][known].to_numpy()).all()
    both = ibm["ts"].isin(gspc["ts"]).to_numpy()
    assert (gspc["ts"].iloc[idx[both]].to_numpy() == ibm["ts"][both].to_numpy()).all()
    assert not known[ibm["ts"] < gspc["ts"].iloc[0]].any()  # before the context's first bar: nothing


@pytest.mark.parametrize(
    ("symbol", "tf", "ctx_tf", "n"), [("IBM", "d1", "d1", 900), ("AAPL", "h1", "d1", 1500)]
)
def test_context_features_are_prefix_invariant_and_ignore_later_context_bars(
    symbol: str, tf: str, ctx_tf: str, n: int
) -> None:
    if tf == "d1":
        pair, ctx, name = sample_bars(symbol, tf, last=n), sample_bars("GSPC", ctx_tf), "GSPC"
        ctx = ctx[ctx["ts"] <= pair["ts"].iloc[-1]].reset_index(drop=True)
    else:
        pair, ctx, name = ml_test_bars(symbol, tf, last=n), ml_test_bars("SPY", ctx_tf, last=500), "SPY"
    full = context_features(pair, tf, ctx, ctx_tf, name).to_numpy()
    assert np.isfinite(full[200:]).all()
    for k in (1, 61, 200, 777, n - 1):
        head = pair.iloc[:k]
        # later pair bars never change a row ...
        got = context_features(head, tf, ctx, ctx_tf, name).to_numpy()
        assert np.array_equal(got, full[:k], equal_nan=True), f"first {k} rows"
        # ... nor do context bars that closed after it: cut them off, or move them wildly
        close_k = head["ts"].iloc[-1] + (timedelta(hours=1) if tf == "h1" else timedelta(days=1))
        later = (ctx["ts"] + timedelta(days=1)) > close_k
        cut = context_features(head, tf, ctx[~later].reset_index(drop=True), ctx_tf, name).to_numpy()
        assert np.array_equal(cut, full[:k], equal_nan=True), f"first {k} rows without later context"
        moved = ctx.copy()
        moved.loc[later, ["open", "high", "low", "close"]] *= 3.0
        got = context_features(head, tf, moved, ctx_tf, name).to_numpy()
        assert np.array_equal(got, full[:k], equal_nan=True), f"first {k} rows, later context moved"


def test_context_columns_pin_their_definitions() -> None:
    ibm, gspc = sample_bars("IBM", "d1", last=800), sample_bars("GSPC", "d1")
    gspc = gspc[gspc["ts"] <= ibm["ts"].iloc[-1]].reset_index(drop=True)
    f = context_features(ibm, "d1", gspc, "d1", "GSPC")
    assert (
        tuple(f.columns)
        == context_columns("GSPC")
        == (
            "ctx_GSPC_ret_1",
            "ctx_GSPC_ret_5",
            "ctx_GSPC_ret_20",
            "ctx_GSPC_rv_20",
            "ctx_GSPC_corr_60",
            "ctx_GSPC_beta_60",
            "ctx_GSPC_rel_strength_20",
        )
    )
    merged = ibm[["ts", "close"]].merge(gspc[["ts", "close"]], on="ts", how="left", suffixes=("", "_g"))
    assert merged["close_g"].iloc[-70:].notna().all()  # the last 70 sessions are in both files
    a = np.log(merged["close"].to_numpy()[-61:])
    b = np.log(merged["close_g"].to_numpy()[-61:])
    ra, rb = np.diff(a), np.diff(b)
    last = f.iloc[-1]
    assert last["ctx_GSPC_ret_1"] == pytest.approx(rb[-1], rel=1e-12)
    assert last["ctx_GSPC_corr_60"] == pytest.approx(np.corrcoef(ra, rb)[0, 1], rel=1e-9)
    assert last["ctx_GSPC_beta_60"] == pytest.approx(np.cov(ra, rb)[0, 1] / np.var(rb, ddof=1), rel=1e-9)
    assert last["ctx_GSPC_rel_strength_20"] == pytest.approx((a[-1] - a[-21]) - (b[-1] - b[-21]), rel=1e-9)


def _store_with(embedded_store: SqliteStore, gspc: pd.DataFrame | None) -> SqliteStore:
    embedded_store.upsert_bars("IBM", "d1", sample_bars("IBM", "d1", last=900))
    if gspc is not None:
        embedded_store.upsert_bars("GSPC", "d1", gspc)
    return embedded_store


def test_prepare_pair_joins_the_context_columns(embedded_store: SqliteStore) -> None:
    gspc = sample_bars("GSPC", "d1")
    store = _store_with(embedded_store, gspc)
    settings = Settings(_env_file=None, context_symbols=["GSPC"])  # type: ignore[call-arg]
    prep = prepare_pair(store, PairRequest("IBM", "d1", target_bars=700), settings)
    assert prep.context == ("GSPC",) and prep.notes == ()
    assert prep.feature_names == (*FEATURE_COLUMNS, *context_columns("GSPC"))
    bars = store.read_bars("IBM", "d1")
    direct = context_features(bars, "d1", gspc[gspc["ts"] <= bars["ts"].iloc[-1]], "d1", "GSPC")
    rows = bars["ts"].isin(prep.ts).to_numpy()
    np.testing.assert_array_equal(prep.x[:, len(FEATURE_COLUMNS) :], direct.to_numpy()[rows])


@pytest.mark.parametrize(
    ("gspc", "note"),
    [
        (None, "IBM/d1: context GSPC has no d1 bars between 2009-11-25 and 2013-03-01: trained without it"),
        (  # GSPC's sample bars begin 2009-01-27, inside IBM's window: missing for its first rows
            "sample",
            r"IBM/d1: context GSPC/d1 lacks bars for \d+ of \d+ rows \(bars 2009-01-27.*\): trained without it",
        ),
    ],
)
def test_a_pair_whose_context_lacks_bars_trains_without_it_and_says_so(
    embedded_store: SqliteStore, gspc: str | None, note: str
) -> None:
    bars = sample_bars("GSPC", "d1", first=1200) if gspc else None
    store = _store_with(embedded_store, bars)
    settings = Settings(_env_file=None, context_symbols=["GSPC"])  # type: ignore[call-arg]
    if gspc:
        # a window that starts before the context's first bar
        store.upsert_bars("IBM", "d1", sample_bars("IBM", "d1"))
    target = 2000 if gspc else 700
    prep = prepare_pair(store, PairRequest("IBM", "d1", target_bars=target), settings)
    assert prep.context == () and prep.feature_names == FEATURE_COLUMNS
    assert len(prep.notes) == 1 and pd.Series(prep.notes).str.fullmatch(note).all(), prep.notes
    # the training run goes on with the pair and says so once, in the run's warnings
    report = run_job(store, settings, ["IBM"], ["d1"], workers=1, target_bars=target, force=True)
    assert [r.status for r in report.results] == ["succeeded"]
    assert [w for w in report.warnings if "context" in w] == list(prep.notes)


def test_a_champion_with_context_ex_ante_labels_and_vol_features_forecasts_with_them(
    ml_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_CONTEXT_SYMBOLS", "GSPC")
    monkeypatch.setenv("ML_THRESHOLD_MODE", "ex_ante_vol")
    monkeypatch.setenv("ML_VOL_FEATURES", "true")
    settings = Settings()
    assert settings.context_symbols == ["GSPC"] and settings.vol_features
    store = SqliteStore(ml_env / "store.sqlite3")
    try:
        ixic, gspc = sample_bars("IXIC", "d1"), sample_bars("GSPC", "d1")
        store.upsert_bars("IXIC", "d1", ixic.iloc[:1200])
        store.upsert_bars("GSPC", "d1", gspc)
        store.upsert_symbols(["IXIC", "GSPC"])
        report = run_job(store, settings, ["IXIC"], ["d1"], workers=1, target_bars=900)
        assert [r.status for r in report.results] == ["succeeded"], report.results[0].error
        model = load_champion("IXIC", "d1", settings=settings, store=store)
        assert model.feature_names == (*FEATURE_COLUMNS, *VOL_FEATURE_COLUMNS, *context_columns("GSPC"))
        assert model.metadata["feature_version"] == "ta-v2+vol1"
        assert model.metadata["thresholds"]["mode"] == "ex_ante_vol"
        assert model.metadata["context"] == {"symbols": ["GSPC"], "notes": []}
        out = run_forecasts(store, settings, [("IXIC", "d1")])
        assert [r.status for r in out.results] == ["written"], out.results[0].reason
        [row] = store.list_forecasts("IXIC", "d1")
        # the stored thresholds are this bar's own: +/- k x its ex-ante volatility of the 5-bar return
        scale = ex_ante_scale(ixic["close"].to_numpy()[:1200], 5)[-1]
        assert row["threshold_upper"] == pytest.approx(0.5 * scale, rel=1e-12)
        assert row["threshold_lower"] == pytest.approx(-0.5 * scale, rel=1e-12)
        # without the context setting the champion is another feature set: refused, not fed wrong columns
        monkeypatch.delenv("ML_CONTEXT_SYMBOLS")
        out = run_forecasts(store, Settings(), [("IXIC", "d1")])
        assert out.results[0].status == "skipped" and "different feature list" in (
            out.results[0].reason or ""
        )
    finally:
        store.close()


def test_a_champion_with_context_is_replaced_when_the_context_runs_out_of_bars(ml_env) -> None:
    settings = Settings(_env_file=None, context_symbols=["GSPC"], local_db=ml_env / "store.sqlite3")  # type: ignore[call-arg]
    store = SqliteStore(ml_env / "store.sqlite3")
    try:
        ixic, gspc = sample_bars("IXIC", "d1"), sample_bars("GSPC", "d1")
        store.upsert_bars("IXIC", "d1", ixic.iloc[:1200])
        store.upsert_bars(
            "GSPC", "d1", gspc.iloc[:1210]
        )  # context bars end 10 sessions after the first run's
        first = run_job(store, settings, ["IXIC"], ["d1"], workers=1, target_bars=900)
        assert [r.status for r in first.results] == ["succeeded"] and first.warnings == []
        store.upsert_bars("IXIC", "d1", ixic.iloc[1200:1300])  # 100 more sessions; GSPC's stop after 10
        second = run_job(store, settings, ["IXIC"], ["d1"], workers=1, target_bars=900)
        assert [r.status for r in second.results] == ["succeeded"], second.results[0].error
        # 90 window rows after GSPC's last bar; the first 8 of them (12 days: d1's 10-day max gap + 2 bars) may
        # still join it, the other 82 have no context bar recent enough
        [note] = [w for w in second.warnings if "context" in w]
        assert note.startswith("IXIC/d1: context GSPC/d1 lacks bars for 82 of 900 rows (bars ")
        assert note.endswith(f" .. {gspc['ts'].iloc[1209].isoformat()}): trained without it")
        promotion = second.results[0].promotion or {}
        assert promotion["promote"] and promotion["reason"] == (
            "current champion has other columns (context GSPC; this run none)"
        )
    finally:
        store.close()
