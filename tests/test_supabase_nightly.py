"""Issue 8 against the real local Supabase stack (official client -> gateway -> PostgREST -> PostgreSQL): the pair
universe, a bar corrected by plain SQL, a lost reply, the champion views and the health flags, quiet logs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from config.settings import Settings
from ml.src.cli.train import main
from ml.src.data.records import ModelVersionRecord, MonitoringThresholds, ResultRecord, RunRecord
from ml.src.data.supabase_db import SupabaseStore
from ml.src.monitoring.report import build_report
from ml.src.training.registry import load_champion
from ml.src.training.run_loop import run_job
from ml.src.training.universe import universe_pairs
from tests.factories import sample_bars

pytestmark = pytest.mark.slow


@pytest.fixture()
def store(supabase_env: dict[str, str]) -> Any:
    with SupabaseStore(supabase_env["SUPABASE_URL"], supabase_env["SUPABASE_SERVICE_ROLE_KEY"]) as s:
        yield s


def ticker() -> str:
    return "N" + uuid.uuid4().hex[:10].upper()


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


# ---- 1. the universe ---------------------------------------------------------------------------------------------------


def test_the_universe_trains_what_exists_and_a_bad_row_fails_alone(store: SupabaseStore, pg) -> None:
    has_bars, no_bars = ticker(), ticker()
    bad = has_bars[:8] + "/B"
    store.upsert_bars(has_bars, "w1", sample_bars("IBM", "w1", last=500))
    store.upsert_symbols([has_bars, no_bars])
    with pytest.raises(psycopg.errors.CheckViolation, match="symbols_ticker_format"):
        pg.execute("insert into symbols (ticker) values (%s)", (bad,))  # refused by the table now
    with pg.transaction():  # a row from before the check (20261216001700_identifier_checks.sql: NOT VALID)
        pg.execute("alter table symbols drop constraint symbols_ticker_format")
        pg.execute("insert into symbols (ticker) values (%s)", (bad,))
        pg.execute(
            "alter table symbols add constraint symbols_ticker_format"
            " check ((ticker collate \"C\") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid"
        )
    active = [s for s in store.list_active_symbols() if s in (has_bars, no_bars, bad)]
    assert sorted(active) == sorted([has_bars, no_bars, bad])
    report = run_job(store, Settings(), pairs=universe_pairs(store, active, ["w1", "d1"]), workers=1)
    by = {(r.symbol, r.timeframe): r for r in report.results}
    assert by[(has_bars, "w1")].status == "succeeded"
    assert (
        by[(has_bars, "d1")].status == "skipped"
        and by[(has_bars, "d1")].error == "no bars in the supabase store"
    )
    assert by[(no_bars, "w1")].status == "skipped" and by[(no_bars, "d1")].status == "skipped"
    assert by[(bad, "w1")].status == "failed" and "invalid symbol" in (by[(bad, "w1")].error or "")
    rows = pg.execute(
        "select symbol, timeframe, status from training_results where run_id = %s order by 1, 2",
        (report.run_id,),
    ).fetchall()
    assert len(rows) == 4 and bad not in {r[0] for r in rows}  # the ledger holds valid identifiers only
    warnings = pg.execute(
        "select warnings from training_runs where run_id = %s", (report.run_id,)
    ).fetchone()[0]
    assert sum(f"invalid symbol '{bad}'" in w and "not recorded" in w for w in warnings) == 2  # w1 and d1
    assert pg.execute("select status from training_runs where run_id = %s", (report.run_id,)).fetchone() == (
        "partial",
    )
    # the feature cache is on by default on Supabase too: the trained pair's 500 bars less the 120-bar warm-up
    assert pg.execute("select sum(n_rows) from feature_chunks where symbol = %s", (has_bars,)).fetchone() == (
        380,
    )


# ---- 2. a bar corrected by plain SQL ---------------------------------------------------------------------------------------


def test_a_bar_corrected_by_sql_retrains_to_the_result_of_a_fresh_load(
    store: SupabaseStore, pg, monkeypatch
) -> None:
    monkeypatch.setenv("ML_FEATURE_CACHE", "on")  # with the cache, so the triggers must keep it honest
    corrected_symbol, fresh_symbol = ticker(), ticker()
    bars = sample_bars("IXIC", "d1", last=800)
    store.upsert_bars(corrected_symbol, "d1", bars)
    first = run_job(store, Settings(), [corrected_symbol], ["d1"], workers=1).results[0]
    assert first.status == "succeeded"
    cached = pg.execute(
        "select sum(n_rows) from feature_chunks where symbol = %s", (corrected_symbol,)
    ).fetchone()[0]
    assert cached == 500

    at = bars["ts"].iloc[-150].to_pydatetime()
    pg.execute(  # another writer: an admin in the SQL editor, another loader
        "update ohlc_bars set close = low where symbol = %s and timeframe = 'd1' and ts = %s",
        (corrected_symbol, at),
    )
    left = pg.execute(
        "select coalesce(sum(n_rows), 0), max(last_ts) from feature_chunks where symbol = %s",
        (corrected_symbol,),
    ).fetchone()
    assert left[0] < 500 and (
        left[1] is None or left[1] < at
    )  # the trigger dropped the features from there on

    second = run_job(store, Settings(), [corrected_symbol], ["d1"], workers=1).results[0]  # no --force
    assert second.status == "succeeded", second.error

    fixed = bars.copy()
    fixed.loc[fixed["ts"] == bars["ts"].iloc[-150], "close"] = fixed.loc[
        fixed["ts"] == bars["ts"].iloc[-150], "low"
    ]
    store.upsert_bars(fresh_symbol, "d1", fixed)
    fresh = run_job(store, Settings(), [fresh_symbol], ["d1"], workers=1).results[0]
    assert fresh.status == "succeeded"
    assert canonical(second.weights) == canonical(fresh.weights)
    assert canonical(second.metrics) == canonical(fresh.metrics)
    assert canonical(first.metrics) != canonical(second.metrics)  # the correction mattered

    third = run_job(store, Settings(), [corrected_symbol], ["d1"], workers=1).results[0]
    assert third.status == "skipped" and (third.error or "").startswith("no new bars")


# ---- 6. a lost reply ------------------------------------------------------------------------------------------------------


class LoseTheRecordReply(httpx.BaseTransport):
    """The real HTTP transport, but the first reply to a trained pair's record_training_result is lost: the
    request reached PostgREST (and the database committed), then the client times out waiting."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/rpc/record_training_result") and self.lost == 0:
            body = json.loads(request.content or b"{}")
            if body.get("p_model_version"):
                response.read()
                response.close()
                self.lost += 1
                raise httpx.ReadTimeout("timed out waiting for the reply", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_reply_lost_after_commit_is_reconciled_on_supabase(supabase_env: dict[str, str], pg) -> None:
    symbol = ticker()
    transport = LoseTheRecordReply()
    client = httpx.Client(transport=transport, timeout=30)
    with SupabaseStore(
        supabase_env["SUPABASE_URL"],
        supabase_env["SUPABASE_SERVICE_ROLE_KEY"],
        max_retries=0,
        http_client=client,
    ) as store:
        store.upsert_bars(symbol, "w1", sample_bars("GSPC", "w1", last=500))
        report = run_job(store, Settings(), [symbol], ["w1"], workers=1)
        r = report.results[0]
        assert transport.lost == 1
        assert r.status == "succeeded" and Path(r.artifact_file or "").is_file()
        assert any("had been committed (read back)" in w for w in report.warnings)
        assert load_champion(symbol, "w1", store=store).metadata["run_id"] == report.run_id
    row = pg.execute(
        "select artifact_path, warnings from training_runs r join model_versions m using (run_id)"
        " where m.symbol = %s",
        (symbol,),
    ).fetchone()
    assert row[0] == r.artifact_path and any("read back" in w for w in row[1])


# ---- views ------------------------------------------------------------------------------------------------------------------


def test_latest_models_is_the_champion_with_its_own_training_time(store: SupabaseStore, pg) -> None:
    symbol = ticker()
    store.upsert_bars(symbol, "w1", sample_bars("GOOG", "w1"))
    first = run_job(store, Settings(), [symbol], ["w1"], workers=1)
    again = run_job(store, Settings(), [symbol], ["w1"], workers=1, force=True)  # a tie: a challenger
    assert again.results[0].promotion and again.results[0].promotion["decision"] == "challenger"
    row = pg.execute(
        "select run_id::text, trained_at, artifact_path from latest_models where symbol = %s", (symbol,)
    ).fetchone()
    champion = pg.execute(
        "select run_id::text, trained_at from model_versions where symbol = %s and is_champion", (symbol,)
    ).fetchone()
    started = pg.execute(
        "select started_at from training_runs where run_id = %s", (first.run_id,)
    ).fetchone()[0]
    assert row[0] == first.run_id == champion[0]
    assert row[1] == champion[1] and row[1] != started
    assert row[2] == first.results[0].artifact_path and not row[2].startswith("/")


def _history(
    store: SupabaseStore, symbol: str, runs: list[dict[str, Any]], champion_age_days: float | None
) -> None:
    now = datetime.now(UTC)
    for i, spec in enumerate(runs):
        run_id = str(uuid.uuid4())
        store.start_run(RunRecord(run_id=run_id, started_at=now - timedelta(days=len(runs) - i)))
        result = ResultRecord(
            run_id=run_id,
            symbol=symbol,
            timeframe="d1",
            status="succeeded",
            metrics={
                "ensemble": {"test_balanced_accuracy": spec["score"]},
                "baseline": {"test_balanced_accuracy": spec.get("majority", 0.33)},
                "persistence": {"test_balanced_accuracy": spec.get("persistence", 0.30)},
            },
            promotion=spec.get("promotion"),
        )
        version = None
        if champion_age_days is not None and i == 0:
            version = ModelVersionRecord(
                symbol=symbol,
                timeframe="d1",
                run_id=run_id,
                artifact_path=f"{symbol}/d1/x.joblib",
                artifact_sha256="ab" * 32,
                feature_version="v",
                trained_at=now - timedelta(days=champion_age_days),
                is_champion=True,
            )
        store.record_result(result, version)


def test_model_health_flags_are_the_reports_flags(store: SupabaseStore, pg) -> None:
    challenger = {
        "decision": "challenger",
        "champion": 0.35,
        "challenger": 0.36,
        "baselines": {"majority": 0.4},
    }
    scenarios: dict[str, tuple[list[dict[str, Any]], float | None]] = {
        "ok": ([{"score": 0.50}, {"score": 0.52}, {"score": 0.51}], 1),
        "drop": ([{"score": 0.60}, {"score": 0.62}, {"score": 0.61}, {"score": 0.45}], 1),
        "below": ([{"score": 0.5, "promotion": challenger}] * 3, 1),
        "expired": ([{"score": 0.50}, {"score": 0.50}], 30),
        "no champion": ([{"score": 0.50}], None),
        "zero challenger": (
            [{"score": 0.5, "promotion": {"decision": "champion", "challenger": 0.0}}] * 3,
            1,
        ),
        "null scores": (
            [{"score": None}, {"score": "n/a"}, {"score": 0.4, "majority": None, "persistence": None}],
            1,
        ),
        "both": ([{"score": 0.7}, {"score": 0.7}] + [{"score": 0.3, "promotion": challenger}] * 3, 2),
    }
    symbols = {name: ticker() for name in scenarios}
    for name, (runs, age) in scenarios.items():
        _history(store, symbols[name], runs, age)

    saved = store.read_monitoring_thresholds()
    assert saved is not None
    strict = MonitoringThresholds("test_balanced_accuracy", 0.05, 3, 5, saved.max_model_age_days)
    lenient = MonitoringThresholds(
        "test_balanced_accuracy", 0.5, 4, 2, {**saved.max_model_age_days, "d1": 60.0}
    )
    try:
        for rules in (strict, lenient):
            store.publish_monitoring_thresholds(rules, by="test")
            flags_seen = set()
            for name, symbol in symbols.items():
                (mine,) = build_report(store, Settings(), symbol=symbol)
                view = pg.execute(
                    "select flags, runs, latest_score, previous_mean_score, runs_below_baselines, champion_expired"
                    " from model_health where symbol = %s",
                    (symbol,),
                ).fetchone()
                assert view[0] == mine.flags, name
                assert (view[1], view[4], view[5]) == (
                    mine.runs,
                    mine.runs_below_baselines,
                    mine.champion_expired,
                ), name
                assert (
                    view[2] == pytest.approx(mine.latest) if mine.latest is not None else view[2] is None
                ), name
                assert (
                    view[3] == pytest.approx(mine.history_mean)
                    if mine.history_mean is not None
                    else view[3] is None
                )
                flags_seen.add(tuple(mine.flags))
            if rules is strict:  # the scenarios cover every outcome
                assert flags_seen == {(), ("RETRAIN",), ("DISABLE",), ("RETRAIN", "DISABLE")}
    finally:
        store.publish_monitoring_thresholds(saved)


# ---- logs ---------------------------------------------------------------------------------------------------------------------


def test_http_requests_are_not_logged_by_default(supabase_env: dict[str, str], capsys) -> None:
    symbol = ticker()
    assert main(["--pairs", f"{symbol}:d1"]) == 1  # INFO level; the pair has no bars (fails: it was named)
    err = capsys.readouterr().err
    assert "HTTP Request" not in err and "httpx" not in err
    assert f"{symbol}/d1: no bars in the supabase store" in err
