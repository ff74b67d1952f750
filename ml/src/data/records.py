"""Rows the pipeline writes to the store, as typed records (column names match the Postgres schema)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

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
