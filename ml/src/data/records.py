"""Rows the pipeline writes to the store, as typed records (column names match the Postgres schema)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from config.settings import Settings

RUN_STATUSES = ("running", "succeeded", "partial", "failed", "interrupted", "skipped", "abandoned")
RESULT_STATUSES = ("succeeded", "failed", "skipped")
TRIGGERS = ("manual", "scheduled", "api")


@dataclass(frozen=True)
class RunRecord:
    """A job run as it starts: one row in `training_runs`."""

    run_id: str
    started_at: datetime
    status: str = "running"
    trigger: str = "manual"
    host: str | None = None
    pid: int | None = None
    git_sha: str | None = None
    package_versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    scope: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: the update applied to its `training_runs` row."""

    status: str
    finished_at: datetime
    n_pairs: int = 0
    n_succeeded: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    error: str | None = None
    # bookkeeping problems that did not stop the run (retention, heartbeat, sweeps, ...), one line each
    warnings: list[str] | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResultRecord:
    """One (symbol, timeframe) outcome of a run: one row in `training_results`."""

    run_id: str
    symbol: str
    timeframe: str
    status: str
    error: str | None = None
    horizon_bars: int | None = None
    n_train: int | None = None
    n_valid: int | None = None
    n_test: int | None = None
    split: dict[str, Any] | None = None
    weights: dict[str, float] | None = None
    metrics: dict[str, Any] | None = None
    artifact_path: str | None = None
    artifact_sha256: str | None = None
    artifact_signature: str | None = None
    duration_s: float | None = None
    walk_forward: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelVersionRecord:
    """A persisted model bundle: one row in `model_versions`."""

    symbol: str
    timeframe: str
    run_id: str
    artifact_path: str
    artifact_sha256: str
    feature_version: str
    trained_at: datetime
    artifact_signature: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    is_champion: bool = False

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LeaseGrant:
    """The answer to acquire_leases: all named leases taken, or the first one held by someone else."""

    acquired: bool
    names: tuple[str, ...] = ()
    holder: str | None = None  # on conflict: who holds `name`
    name: str | None = None
    expires_at: datetime | None = None
    taken_over: tuple[dict[str, Any], ...] = ()  # expired leases of dead holders: name, holder, run_id


FORECAST_LABELS = ("BEARISH", "NEUTRAL", "BULLISH")


@dataclass(frozen=True)
class ForecastRecord:
    """A champion's forecast at one closed bar: one row in `ml_forecasts`.

    Unique per (symbol, timeframe, bar_ts, model_version_id): writing it again changes nothing. `bar_close` and
    the label thresholds are kept so the realised outcome is judged exactly as the model's training labels were;
    `persistence_label` (the label of the return over the h bars up to bar_ts) is the live baseline.
    """

    symbol: str
    timeframe: str
    bar_ts: datetime
    horizon_bars: int
    target_ts: datetime
    p_bearish: float
    p_neutral: float
    p_bullish: float
    label: str
    direction_score: float
    model_version_id: int
    model_trained_at: datetime
    model_run_id: str | None = None
    model_sha256: str | None = None
    bar_close: float | None = None
    threshold_lower: float | None = None
    threshold_upper: float | None = None
    persistence_label: str | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ForecastOutcome:
    """What happened after a forecast: the close h bars after its bar, the return and its label, and the pair's
    bar revision they were computed from (a later revision recomputes them). All realised_* None clears an
    outcome whose bars were corrected into ones that determine none (a bar deleted or now refused)."""

    forecast_id: int
    realised_bar_ts: datetime | None
    realised_close: float | None
    realised_return: float | None
    realised_label: str | None
    realised_revision: int | None = None

    def to_row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("forecast_id")
        return out


@dataclass(frozen=True)
class TrainedData:
    """What the pair's latest successful training was trained on: its last bar and the data revision."""

    data_end: datetime | None
    revision: int | None


@dataclass(frozen=True)
class MonitoringThresholds:
    """The monitoring rule's thresholds: one row (`monitoring_settings`) read by the report and the view."""

    metric: str
    retrain_drop: float
    disable_runs: int
    history_runs: int
    max_model_age_days: dict[str, float]

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MonitoringThresholds:
        return cls(
            metric=str(row["metric"]),
            retrain_drop=float(row["retrain_drop"]),
            disable_runs=int(row["disable_runs"]),
            history_runs=int(row["history_runs"]),
            max_model_age_days={str(k): float(v) for k, v in dict(row["max_model_age_days"]).items()},
        )


def thresholds_from_settings(settings: Settings) -> MonitoringThresholds:
    """The monitoring thresholds a job with these settings publishes (and a new embedded store starts with)."""
    return MonitoringThresholds(
        metric=settings.promotion_metric,
        retrain_drop=float(settings.monitor_retrain_drop),
        disable_runs=int(settings.monitor_disable_runs),
        history_runs=int(settings.monitor_history_runs),
        max_model_age_days={tf: float(spec.max_model_age_days) for tf, spec in settings.timeframes.items()},
    )


class ReplayPairRows(Protocol):
    """What a store writes of one replayed pair (training.replay_record.PairReplay is one): its row and the rows
    of its forecasts. A protocol here, so the store layer does not import the training layer."""

    symbol: str
    timeframe: str

    def to_row(self, replay_id: str) -> dict[str, Any]: ...

    def forecast_rows(self) -> list[dict[str, Any]]: ...
