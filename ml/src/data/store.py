"""The store interface the pipeline depends on; implementations: local_db (SQLite) and supabase_db.

`store_factory.open_store` picks one from the settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    LeaseGrant,
    ModelVersionRecord,
    ResultRecord,
    RunOutcome,
    RunRecord,
)

BAR_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")


class StoreError(RuntimeError):
    """A store operation failed; the message is one line, safe to log (no secrets)."""


class StoreUnavailable(StoreError):
    """The store could not be reached (after retries): transient by nature."""


def empty_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS[1:]})
    frame.insert(0, "ts", pd.Series(dtype="datetime64[ns, UTC]"))
    return frame


class TrainingStore(ABC):
    """Bars, the feature cache, the run ledger and the model registry.

    Timestamps in and out are tz-aware UTC. Bars come back ascending by ts with BAR_COLUMNS.
    """

    name: str = "store"
    io_seconds: float = 0.0  # wall time spent inside store calls, for the I/O share of a run

    # --- market data -------------------------------------------------------------------------------
    @abstractmethod
    def read_bars(
        self,
        symbol: str,
        timeframe: str,
        *,
        end: datetime | None = None,
        start: datetime | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """The latest `limit` bars with start <= ts <= end, returned in ascending ts order."""

    @abstractmethod
    def upsert_bars(self, symbol: str, timeframe: str, bars: pd.DataFrame) -> int:
        """Insert or replace bars on (symbol, timeframe, ts); returns rows written."""

    @abstractmethod
    def count_bars(self, symbol: str, timeframe: str) -> int: ...

    @abstractmethod
    def upsert_symbols(self, tickers: Iterable[str], active: bool = True) -> None: ...

    @abstractmethod
    def list_active_symbols(self) -> list[str]: ...

    # --- feature cache -----------------------------------------------------------------------------
    @abstractmethod
    def read_feature_cache(
        self, symbol: str, timeframe: str, version: str, start: datetime, end: datetime
    ) -> pd.DataFrame:
        """Cached rows with start <= ts <= end: a `ts` column plus one column per feature, ascending."""

    @abstractmethod
    def upsert_feature_cache(self, symbol: str, timeframe: str, version: str, features: pd.DataFrame) -> int:
        """Write rows (a `ts` column plus feature columns, all finite); returns rows written."""

    # --- run ledger and registry -------------------------------------------------------------------
    @abstractmethod
    def start_run(self, run: RunRecord) -> None: ...

    @abstractmethod
    def finish_run(self, run_id: str, outcome: RunOutcome) -> None: ...

    @abstractmethod
    def record_result(self, result: ResultRecord, model_version: ModelVersionRecord | None = None) -> None:
        """Write a result row and, for a trained pair, its model version: both or neither."""

    @abstractmethod
    def get_run(self, run_id: str) -> dict | None: ...

    @abstractmethod
    def list_results(self, run_id: str) -> list[dict]: ...

    @abstractmethod
    def list_model_versions(self, symbol: str, timeframe: str) -> list[dict]:
        """Model versions of a pair, newest first."""

    @abstractmethod
    def get_champion(self, symbol: str, timeframe: str) -> dict | None:
        """The pair's champion model version, or None."""

    @abstractmethod
    def prune_model_versions(self, symbol: str, timeframe: str, keep: int) -> list[dict]:
        """Delete non-champion versions beyond the newest `keep`; returns the deleted rows (for their files)."""

    @abstractmethod
    def results_history(self, symbol: str | None = None, timeframe: str | None = None) -> list[dict]:
        """Succeeded results (with their run's started_at), oldest first; optionally for one pair."""

    @abstractmethod
    def last_trained_bar_ts(self, symbol: str, timeframe: str) -> datetime | None:
        """The last bar (`split.data_end`) the pair's latest successful training used, or None."""

    @abstractmethod
    def heartbeat(self, run_id: str) -> None:
        """Stamp the run's heartbeat_at: a `running` row with an old heartbeat belongs to a dead process."""

    @abstractmethod
    def mark_runs_abandoned(self, run_ids: Sequence[str], reason: str) -> int:
        """Runs still `running` whose holder died: set status abandoned; returns how many changed."""

    # --- leases: one run at a time per (symbol, timeframe) ------------------------------------------
    @abstractmethod
    def acquire_leases(
        self, names: Sequence[str], holder: str, ttl_s: int, run_id: str | None = None
    ) -> LeaseGrant:
        """Take every named lease or none. A lease is free if absent, expired, or already held by `holder`."""

    @abstractmethod
    def renew_leases(self, names: Sequence[str], holder: str, ttl_s: int) -> int:
        """Extend the named leases still held by `holder`; fewer than len(set(names)) means one was lost."""

    @abstractmethod
    def release_leases(self, names: Sequence[str], holder: str) -> int: ...

    # --- forecasts of the champions and their live record ---------------------------------------------------
    @abstractmethod
    def insert_forecast(self, forecast: ForecastRecord) -> bool:
        """Write one forecast unless (symbol, timeframe, bar_ts, model_version_id) exists; True if written."""

    @abstractmethod
    def list_forecasts(
        self, symbol: str | None = None, timeframe: str | None = None, *, unrealised_only: bool = False
    ) -> list[dict]:
        """Forecast rows, ascending by (symbol, timeframe, bar_ts, id); optionally only those not yet realised."""

    @abstractmethod
    def record_forecast_outcomes(self, outcomes: Sequence[ForecastOutcome]) -> int:
        """Fill the realised columns of forecasts still unrealised; returns how many rows changed."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> TrainingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def normalise_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars with BAR_COLUMNS, float prices, tz-aware UTC ts, ascending."""
    frame = bars.loc[:, list(BAR_COLUMNS)].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    for col in BAR_COLUMNS[1:]:
        frame[col] = frame[col].astype("float64")
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def feature_payload(
    symbol: str, timeframe: str, features: pd.DataFrame
) -> tuple[pd.Series, list[dict[str, float]]]:
    """(ts, one {feature: value} dict per row) for the cache; refuses NaN/inf, which JSON cannot carry."""
    cols = [c for c in features.columns if c != "ts"]
    values = features[cols].to_numpy(dtype="float64")
    if not np.isfinite(values).all():
        raise StoreError(f"{symbol}/{timeframe}: refusing to cache non-finite feature values")
    ts = pd.to_datetime(features["ts"], utc=True)
    return ts, [dict(zip(cols, row, strict=True)) for row in values.tolist()]


def unique_upper(symbols: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for s in symbols:
        seen.setdefault(s.strip().upper(), None)
    return list(seen)
