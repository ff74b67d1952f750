"""Model health per (symbol, timeframe): compare each pair's latest run with its history and live record.

    python -m ml.src.monitoring.report [--symbol S] [--timeframe TF] [--json] [--fail-on-flag] [--html DIR]

RETRAIN: the latest test metric fell by more than `retrain_drop` below the mean of the previous
         `history_runs` runs, or the champion is missing or older than the timeframe's `max_model_age_days`.
DISABLE: the champion has not beaten its baselines in each of the last `disable_runs` runs.
LIVE:    with at least `monitor_live_min_forecasts` realised forecasts, the live balanced accuracy is not above
         the best live baseline on the same rows (chance = the majority class's, or persistence).

What a pair shows (`shown`, the table's and the HTML report's flags) is those flags plus what contradicts an
all-clear: NO-SKILL / WORSE (the latest verdict) and BELOW-BASELINE (the champion did not beat its best
baseline in the latest run, before DISABLE's `disable_runs` runs are there). OK only when none applies.

The RETRAIN / DISABLE thresholds are read from the store's `monitoring_settings` row, which every training run
publishes from its settings and which the `model_health` view reads too: the report and the view apply one rule
with one set of thresholds (supabase/migrations/20261202001200_champion_views_and_health_flags.sql is the SQL
twin of assess_pair; tests check they agree). LIVE comes from the forecasts (`forecast_performance` in SQL).

Scores are compared like with like (the model's balanced accuracy with the baselines' balanced accuracy), and
each pair shows its latest verdict (skill / no-skill / worse, see ml.src.training.verdict). Beside the live
record each pair shows its latest finished replay (`replay` in --json: the replay's record and verdict; rep_n,
replay balanced accuracy, rep_verdict and its q-value across the replay's pairs in the table).

--html DIR also writes the static report with pictures (ml/src/monitoring/html_report.py).
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from config.settings import TIMEFRAMES, Settings
from ml.src.data.identifiers import IdentifierError, check_pair
from ml.src.data.records import MonitoringThresholds, thresholds_from_settings
from ml.src.data.store import TrainingStore
from ml.src.inference.live_record import LiveRecord, summarise

log = logging.getLogger("ml.monitoring")


@dataclass
class PairHealth:
    symbol: str
    timeframe: str
    metric: str
    runs: int
    latest_at: str | None
    latest: float | None
    history_mean: float | None
    champion_trained_at: str | None
    champion_expired: bool
    runs_below_baselines: int
    verdict: str | None = None  # the latest result's skill / no-skill / worse
    verdict_q: float | None = (
        None  # its Benjamini-Hochberg q-value across that run's pairs (None: not recorded)
    )
    flags: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    live: dict[str, Any] | None = None  # LiveRecord.to_dict() of the pair's forecasts
    # the champion vs its best baseline in the latest run (None: not scored)
    beats_baselines: bool | None = None
    # the pair's latest finished replay (replay_summary): its record and verdict, beside the live record
    replay: dict[str, Any] | None = None

    @property
    def shown(self) -> list[str]:
        """The flags a reader sees: never OK beside a no-skill / worse verdict or a champion below a baseline."""
        out = list(self.flags)
        if self.verdict in ("no-skill", "worse"):
            out.append(self.verdict.upper())
        if self.beats_baselines is False and "DISABLE" not in out:
            out.append("BELOW-BASELINE")
        return out or ["OK"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shown": self.shown}


def _num(value: Any) -> float | None:
    """A JSON number as float; anything else (string, bool, null, missing) is None (SQL: ml_json_number)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rules(rules: MonitoringThresholds | Settings) -> MonitoringThresholds:
    return rules if isinstance(rules, MonitoringThresholds) else thresholds_from_settings(rules)


def champion_vs_baselines(result: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    """The champion's score and the best baseline's, on that run's comparison window when there was one."""
    promo = result.get("promotion") or {}
    metrics = result.get("metrics") or {}
    if promo.get("decision") == "challenger" and promo.get("champion") is not None:
        champion = _num(promo.get("champion"))
    else:  # this run's model became (or is the first) champion: its own test score
        champion = _num(promo.get("challenger"))
        if champion is None:
            champion = _num(metrics.get("ensemble", {}).get(metric))
    baselines = [_num(v) for v in (promo.get("baselines") or {}).values()]
    if not any(b is not None for b in baselines):
        # "baseline" is the majority baseline's key in results written before issue 9 named it "majority"
        baselines = [_num(metrics.get(k, {}).get(metric)) for k in ("majority", "baseline", "persistence")]
    best = max((b for b in baselines if b is not None), default=None)
    return champion, best


def assess_live(health: PairHealth, live: LiveRecord, settings: Settings) -> None:
    """The LIVE flag: enough realised forecasts, and a live balanced accuracy not above the best baseline's."""
    health.live = live.to_dict()
    best = live.best_baseline
    if (
        live.n_realised < settings.monitor_live_min_forecasts
        or live.balanced_accuracy is None
        or best is None
    ):
        return
    if live.balanced_accuracy <= best:
        health.flags.append("LIVE")
        health.reasons.append(
            f"live balanced accuracy {live.balanced_accuracy:.3f} over {live.n_realised} realised forecasts "
            f"does not beat its baselines (chance {live.chance_balanced_accuracy or 0:.3f}, persistence "
            f"{live.persistence_balanced_accuracy or 0:.3f})"
        )


def assess_pair(
    history: list[dict[str, Any]],
    champion: dict[str, Any] | None,
    rules: MonitoringThresholds | Settings,
    now: datetime,
    forecasts: list[dict[str, Any]] | None = None,
    settings: Settings | None = None,
) -> PairHealth:
    """history: the pair's succeeded results, oldest first; rules: the thresholds (or settings to take them
    from); forecasts: the pair's forecast rows (LIVE, with `settings`' monitor_live_min_forecasts)."""
    t = _rules(rules)
    metric = t.metric
    last = history[-1]
    symbol, tf = last["symbol"], last["timeframe"]
    scores = [_num((r.get("metrics") or {}).get("ensemble", {}).get(metric)) for r in history]
    latest = scores[-1]
    previous = [s for s in scores[-1 - t.history_runs : -1] if s is not None]
    mean_prev = sum(previous) / len(previous) if previous else None
    health = PairHealth(
        symbol=symbol,
        timeframe=tf,
        metric=metric,
        runs=len(history),
        latest_at=str(last.get("started_at")),
        latest=latest,
        history_mean=mean_prev,
        champion_trained_at=None,
        champion_expired=False,
        runs_below_baselines=0,
        verdict=((last.get("metrics") or {}).get("verdict") or {}).get("verdict"),
        verdict_q=_num(((last.get("metrics") or {}).get("verdict") or {}).get("q_value")),
    )
    if latest is not None and mean_prev is not None and latest < mean_prev - t.retrain_drop:
        health.flags.append("RETRAIN")
        health.reasons.append(
            f"{metric} fell to {latest:.3f} from a mean of {mean_prev:.3f} over the previous {len(previous)} run(s)"
        )
    max_age = timedelta(days=t.max_model_age_days[tf])
    if champion is None:
        health.champion_expired = True
        health.reasons.append("no champion")
    else:
        trained = pd.Timestamp(champion["trained_at"])
        health.champion_trained_at = trained.isoformat()
        if pd.Timestamp(now) - trained > max_age:
            health.champion_expired = True
            health.reasons.append(f"champion trained {trained.isoformat()} is older than {max_age.days} days")
    if health.champion_expired and "RETRAIN" not in health.flags:
        health.flags.append("RETRAIN")

    n = t.disable_runs
    below = 0
    for r in history[-n:]:
        champ, best = champion_vs_baselines(r, metric)
        if champ is not None and best is not None and champ <= best:
            below += 1
    health.runs_below_baselines = below
    champ, best = champion_vs_baselines(last, metric)
    if champ is not None and best is not None:
        health.beats_baselines = champ > best
        if not health.beats_baselines and "DISABLE" not in health.flags:
            health.reasons.append(
                f"champion {metric} {champ:.3f} does not beat its best baseline {best:.3f} in the latest run"
            )
    if len(history) >= n and below == n:
        health.flags.append("DISABLE")
        health.reasons.append(f"champion did not beat its baselines in any of the last {n} runs")
    if forecasts:
        live_settings = settings or (rules if isinstance(rules, Settings) else Settings())
        assess_live(health, summarise(forecasts), live_settings)
    return health


def stored_pair(row: dict[str, Any], table: str, refused: list[str] | None = None) -> tuple[str, str] | None:
    """The row's (symbol, timeframe) if both are valid identifiers, else None (with a warning, and a line in
    `refused`): a row another tool wrote must never name a file or a folder (../../x)."""
    try:
        return check_pair(row.get("symbol"), row.get("timeframe"))
    except IdentifierError as exc:
        line = f"{table} row {row.get('id', '?')} ignored: {exc}"
        if refused is None:
            log.warning("%s", line)
        elif line not in refused:
            refused.append(line)
        return None


def thresholds_in_force(store: TrainingStore, settings: Settings) -> MonitoringThresholds:
    """The store's published thresholds (what the model_health view uses); the settings' if none yet."""
    return store.read_monitoring_thresholds() or thresholds_from_settings(settings)


def build_report(
    store: TrainingStore,
    settings: Settings,
    symbol: str | None = None,
    timeframe: str | None = None,
    now: datetime | None = None,
    refused: list[str] | None = None,
) -> list[PairHealth]:
    """Every pair's health; rows with an invalid symbol or timeframe are left out (a line each in `refused`)."""
    now = now or datetime.now(UTC)
    rules = thresholds_in_force(store, settings)
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.results_history(symbol, timeframe):
        key = stored_pair(row, "training_results", refused)
        if key is not None:
            by_pair[key].append(row)
    forecasts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.list_forecasts(symbol, timeframe):
        key = stored_pair(row, "ml_forecasts", refused)
        if key is not None:
            forecasts[key].append(row)
    out = []
    for (sym, tf), rows in sorted(by_pair.items(), key=lambda kv: (kv[0][0], TIMEFRAMES.index(kv[0][1]))):
        health = assess_pair(
            rows, store.get_champion(sym, tf), rules, now, forecasts.get((sym, tf)), settings
        )
        health.replay = replay_summary(store.latest_replay(sym, tf))
        out.append(health)
    return out


def replay_summary(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the health report shows of a pair's latest replay (store.latest_replay): which replay, its bars,
    cadence and counts, its record (the replay's --json `record`, verdict included) and its verdict."""
    if row is None:
        return None
    record = row.get("record") or {}
    return {
        "replay_id": str(row.get("replay_id")),
        "first_bar_ts": row.get("first_bar_ts"),
        "last_bar_ts": row.get("last_bar_ts"),
        "retrain_every": row.get("retrain_every"),
        "retrains": row.get("retrains"),
        "promotions": row.get("promotions"),
        "n_forecasts": row.get("n_forecasts"),
        "n_realised": row.get("n_realised"),
        "record": record,
        "verdict": record.get("verdict"),
    }


def _fmt(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


def table(rows: list[PairHealth]) -> str:
    head = (
        f"{'symbol':<8} {'tf':<4} {'runs':>4} {'latest':>7} {'hist':>7} {'below':>5} {'verdict':<8} {'q':>5} "
        f"{'live_n':>6} {'live':>6}  {'flags':<20} {'rep_n':>5} {'replay':>6} {'rep_verdict':<11} {'rep_q':>5} reasons"
    )
    lines = [head, "-" * len(head)]
    for h in rows:
        live = h.live or {}
        rep = h.replay or {}
        rec, rv = rep.get("record") or {}, rep.get("verdict") or {}
        lines.append(
            f"{h.symbol:<8} {h.timeframe:<4} {h.runs:>4} {_fmt(h.latest):>7} {_fmt(h.history_mean):>7} "
            f"{h.runs_below_baselines:>5} {h.verdict or '-':<8} {_fmt(h.verdict_q):>5} {live.get('n_realised', 0):>6} "
            f"{_fmt(live.get('balanced_accuracy')):>6}  {','.join(h.shown):<20} {rep.get('n_realised') or 0:>5} "
            f"{_fmt(rec.get('balanced_accuracy')):>6} {rv.get('verdict') or '-':<11} {_fmt(rv.get('q_value')):>5} "
            f"{'; '.join(h.reasons)}"
        )
    if not rows:
        lines.append("no succeeded training results yet")
    return "\n".join(lines)


if __name__ == "__main__":
    from ml.src.cli.report import main

    sys.exit(main())
