"""What one (symbol, timeframe) pair was asked to do and what it produced.

Kept free of the heavy learners (scikit-learn, LightGBM) so the CLI, the report and the store can use these
types without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ml.src.data.records import ResultRecord


@dataclass(frozen=True)
class PairRequest:
    symbol: str
    timeframe: str
    as_of: datetime | None = None
    lookback_days: float | None = None
    target_bars: int | None = None
    force: bool = False
    # False for a pair of the universe (--all, the scheduler): no bars or too little history is then a skip,
    # not a failure; a pair the user named (--symbol/--symbols/--pairs) fails.
    explicit: bool = True


@dataclass
class PairResult:
    """What a pair produced; `to_json()` is the shape of `--json` results and of `training_results`."""

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
    artifact_path: str | None = None  # relative to ML_MODELS_DIR, as in the ledger
    artifact_sha256: str | None = None
    artifact_signature: str | None = None
    artifact_file: str | None = None  # the absolute path on this host (not in the ledger)
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    walk_forward: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    worker: dict[str, Any] | None = None  # which worker process fitted it, and its peak memory (not stored)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["duration_s"] = round(self.duration_s, 3)
        out["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return out

    def to_record(self, run_id: str) -> ResultRecord:
        # the result row has exactly ResultRecord's columns; PairResult adds only in-memory timings
        values = {f.name: getattr(self, f.name) for f in fields(ResultRecord) if f.name != "run_id"}
        values["duration_s"] = round(self.duration_s, 3)
        return ResultRecord(run_id=run_id, **values)


def skipped_result(req: PairRequest, reason: str, duration_s: float) -> PairResult:
    return PairResult(
        symbol=req.symbol, timeframe=req.timeframe, status="skipped", error=reason, duration_s=duration_s
    )


def failed_result(req: PairRequest, error: str, duration_s: float, horizon: int | None = None) -> PairResult:
    return PairResult(
        symbol=req.symbol,
        timeframe=req.timeframe,
        status="failed",
        error=error,
        horizon_bars=horizon,
        duration_s=duration_s,
    )
