"""What a replay produced, per pair: its forecasts (one per replayed bar) and the record they add up to.

Plain dataclasses, free of the learners, so the command line, the stores and the report can use them. The
`--json` shape of a pair is `PairReplay.to_json()`; the store keeps the same fields (ml_replay_pairs,
ml_replay_forecasts: supabase/migrations/20261216001900_replay_record.sql and ml/src/data/local_db.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ml.src.common.exit_codes import EXIT_FAILED, EXIT_OK

PAIR_STATUSES = ("succeeded", "skipped", "failed")


def _num(x: float | None) -> float | None:
    """None for NaN/inf: strict JSON, and a column the store can hold."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class ReplayForecast:
    """One replayed bar: what the champion of that moment forecast, and (once h bars later exist) what happened.

    `trained_through` is the last bar the forecasting model saw (its training window's `data_end`), never after
    `bar_ts`. The thresholds are the forecasting model's, as in the live record (ml_forecasts)."""

    bar_ts: datetime
    trained_through: datetime
    p_bearish: float
    p_neutral: float
    p_bullish: float
    label: str
    bar_close: float
    threshold_lower: float | None
    threshold_upper: float | None
    persistence_label: str | None = None
    realised_return: float | None = None
    realised_label: str | None = None

    @property
    def direction_score(self) -> float:
        return self.p_bullish - self.p_bearish

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["bar_ts"] = self.bar_ts.isoformat()
        out["trained_through"] = self.trained_through.isoformat()
        out["direction_score"] = self.direction_score
        return out


@dataclass(frozen=True)
class ReplayScores:
    """The replay's record over its realised forecasts, with the baselines scored on the same rows.

    hit_rate: share of directional calls right on rows that moved (metrics.hit_rate); balanced_accuracy and the
    persistence (label of the h bars up to the bar) and majority (the forecasting model's training majority)
    baselines' (metrics.label_metrics); log_loss beside prior_log_loss (the forecasting model's training class
    mix as the forecast); ic (Spearman of P(bull) - P(bear) with the realised return) and its block-permutation
    p-value (stats.ic_with_pvalue); net Sharpe of trading the calls and of buy-and-hold after costs
    (trading_metrics, non-overlapping holds)."""

    n: int
    hit_rate: float | None
    hit_rows: int
    balanced_accuracy: float | None
    log_loss: float | None
    prior_log_loss: float | None
    ic: float | None
    ic_p_value: float | None
    persistence_balanced_accuracy: float | None
    majority_balanced_accuracy: float | None
    net_sharpe: float | None
    buy_and_hold_net_sharpe: float | None
    net_total_return: float | None = None
    buy_and_hold_net_total_return: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RetrainStep:
    """One retrain point: the bar it trained through, whether the gate promoted it, and why (or why it failed)."""

    trained_through: datetime
    status: str  # "promoted" | "kept" (champion kept) | "failed" (could not train: champion kept)
    reason: str
    # a promoted model's training class mix (bearish, neutral, bullish): the prior and majority baselines of the
    # forecasts it made, so the replay's verdict can be judged again from the stored rows alone
    prior: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trained_through": self.trained_through.isoformat(),
            "status": self.status,
            "reason": self.reason,
        }
        if self.prior is not None:
            out["prior"] = [float(x) for x in self.prior]
        return out


@dataclass
class PairReplay:
    symbol: str
    timeframe: str
    status: str
    error: str | None = None
    retrain_every: int | None = None
    horizon_bars: int | None = None
    retrains: int = 0  # retrain points that trained a model
    promotions: int = 0  # of those, how many the gate made champion (the first always)
    failed_retrains: int = 0
    n_forecasts: int = 0
    n_realised: int = 0
    first_bar_ts: datetime | None = None
    last_bar_ts: datetime | None = None
    record: ReplayScores | None = None
    # the replay's verdict on this pair (verdict.Verdict.to_dict, basis "replay"): its q-value is across the
    # replay's succeeded pairs once they are all done (replay.settle_replay_verdicts); None until judged
    verdict: dict[str, Any] | None = None
    steps: list[RetrainStep] = field(default_factory=list)
    forecasts: list[ReplayForecast] = field(default_factory=list)
    duration_s: float = 0.0
    cpu_s: float = 0.0

    def record_json(self) -> dict[str, Any] | None:
        """The record as --json and the store keep it: the scores, and the verdict under `verdict`."""
        if self.record is None:
            return None
        out = self.record.to_json()
        if self.verdict is not None:
            out["verdict"] = self.verdict
        return out

    def to_row(self, replay_id: str) -> dict[str, Any]:
        """The ml_replay_pairs row (timestamps as datetimes; `record` and `steps` as JSON values)."""
        return {
            "replay_id": replay_id,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "status": self.status,
            "error": self.error,
            "retrain_every": self.retrain_every,
            "horizon_bars": self.horizon_bars,
            "retrains": self.retrains,
            "promotions": self.promotions,
            "failed_retrains": self.failed_retrains,
            "n_forecasts": self.n_forecasts,
            "n_realised": self.n_realised,
            "first_bar_ts": self.first_bar_ts,
            "last_bar_ts": self.last_bar_ts,
            "record": self.record_json(),
            "steps": [s.to_json() for s in self.steps],
            "duration_s": round(self.duration_s, 3),
        }

    def forecast_rows(self) -> list[dict[str, Any]]:
        """The ml_replay_forecasts rows of this pair (without replay_id, symbol, timeframe)."""
        return [
            {
                "bar_ts": f.bar_ts,
                "trained_through": f.trained_through,
                "horizon_bars": self.horizon_bars,
                "p_bearish": f.p_bearish,
                "p_neutral": f.p_neutral,
                "p_bullish": f.p_bullish,
                "label": f.label,
                "direction_score": f.direction_score,
                "bar_close": f.bar_close,
                "threshold_lower": f.threshold_lower,
                "threshold_upper": f.threshold_upper,
                "persistence_label": f.persistence_label,
                "realised_return": f.realised_return,
                "realised_label": f.realised_label,
            }
            for f in self.forecasts
        ]

    def to_json(self, with_forecasts: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "status": self.status,
            "error": self.error,
            "retrain_every": self.retrain_every,
            "horizon_bars": self.horizon_bars,
            "retrains": self.retrains,
            "promotions": self.promotions,
            "failed_retrains": self.failed_retrains,
            "n_forecasts": self.n_forecasts,
            "n_realised": self.n_realised,
            "first_bar_ts": self.first_bar_ts.isoformat() if self.first_bar_ts else None,
            "last_bar_ts": self.last_bar_ts.isoformat() if self.last_bar_ts else None,
            "record": self.record_json(),
            "steps": [s.to_json() for s in self.steps],
            "duration_s": round(self.duration_s, 3),
        }
        if with_forecasts:
            out["forecasts"] = [f.to_json() for f in self.forecasts]
        return out


@dataclass
class ReplayReport:
    replay_id: str
    started_at: datetime
    pairs: list[PairReplay] = field(default_factory=list)
    finished_at: datetime | None = None
    executor: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    error: str | None = None

    def finish(self, finished_at: datetime) -> None:
        self.finished_at = finished_at
        if self.status == "running":
            self.status = "failed" if any(p.status == "failed" for p in self.pairs) else "succeeded"

    def exit_code(self) -> int:
        return EXIT_FAILED if self.status != "succeeded" else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "status": self.status,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "executor": self.executor,
            "pairs": [p.to_json() for p in self.pairs],
        }
