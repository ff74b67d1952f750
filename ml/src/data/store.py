"""The store interface the pipeline depends on; implementations: local_db (SQLite) and supabase_db.

`store_factory.open_store` picks one from the settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ml.src.data.bar_checks import first_future_bar
from ml.src.data.errors import StoreError
from ml.src.data.feature_chunks import FeatureChunk, feature_matrix, split_into_chunks
from ml.src.data.identifiers import IdentifierError, check_pair, check_symbol
from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    LeaseGrant,
    ModelVersionRecord,
    MonitoringThresholds,
    ReplayPairRows,
    ResultRecord,
    RunOutcome,
    RunRecord,
    TrainedData,
)

BAR_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")


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

    def upsert_bars(self, symbol: str, timeframe: str, bars: pd.DataFrame) -> int:
        """Insert or replace bars on (symbol, timeframe, ts); returns rows written. Validated here, once for
        both backends (identifiers, values, order, no bar after now), then written by the backend's hook."""
        symbol, timeframe = checked_pair(symbol, timeframe)
        return self._write_bars(symbol, timeframe, normalise_bars(bars))

    @abstractmethod
    def _write_bars(self, symbol: str, timeframe: str, frame: pd.DataFrame) -> int:
        """Hook: write bars already checked and normalised by upsert_bars."""

    @abstractmethod
    def count_bars(self, symbol: str, timeframe: str) -> int: ...

    @abstractmethod
    def bar_revision(self, symbol: str, timeframe: str) -> int | None:
        """The pair's data revision: bumped (by triggers, whoever writes) whenever one of its bars is inserted,
        changed or deleted; None when the store does not track it (bars exposed through a view)."""

    @abstractmethod
    def pairs_with_bars(self, symbols: Sequence[str], timeframes: Sequence[str]) -> set[tuple[str, str]]:
        """The (symbol, timeframe) pairs of symbols x timeframes that have at least one bar."""

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

    def upsert_feature_cache(
        self,
        symbol: str,
        timeframe: str,
        version: str,
        features: pd.DataFrame,
        revision: int | None = None,
    ) -> int:
        """Write rows (a `ts` column plus feature columns, all finite); returns rows written.

        With `revision` (the bar_revision read before the bars the features were computed from), nothing is
        written if the pair's bars changed since: features of replaced bars never enter the cache.
        """
        symbol, timeframe = checked_pair(symbol, timeframe)
        if features.empty:
            return 0
        ts, cols, values = feature_matrix(f"{symbol}/{timeframe}", features)
        return self._write_feature_chunks(
            symbol, timeframe, version, split_into_chunks(timeframe, ts, cols, values), revision
        )

    @abstractmethod
    def _write_feature_chunks(
        self, symbol: str, timeframe: str, version: str, chunks: list[FeatureChunk], revision: int | None
    ) -> int:
        """Hook: write checked chunks (the pair's identifiers and finite values checked by the caller)."""

    # --- run ledger and registry -------------------------------------------------------------------
    @abstractmethod
    def start_run(self, run: RunRecord) -> None: ...

    @abstractmethod
    def finish_run(self, run_id: str, outcome: RunOutcome) -> None: ...

    def record_result(self, result: ResultRecord, model_version: ModelVersionRecord | None = None) -> None:
        """Write a result row and, for a trained pair, its model version: both or neither."""
        if result.status == "succeeded" or model_version is not None:
            checked_pair(result.symbol, result.timeframe)
        if model_version is not None:
            checked_pair(model_version.symbol, model_version.timeframe)
        self._write_result(result, model_version)

    @abstractmethod
    def _write_result(self, result: ResultRecord, model_version: ModelVersionRecord | None) -> None:
        """Hook: the result row and the model version in one transaction."""

    @abstractmethod
    def record_verdicts(self, run_id: str, verdicts: Mapping[tuple[str, str], dict[str, Any]]) -> int:
        """Replace metrics.verdict of the run's succeeded results (and of their model versions) for each
        (symbol, timeframe) given, all in one transaction: every pair's verdict or none. Returns the number
        of result rows changed. The run's q-values are known only once its pairs are done."""

    @abstractmethod
    def get_run(self, run_id: str) -> dict | None: ...

    @abstractmethod
    def find_result(self, run_id: str, symbol: str, timeframe: str) -> dict | None:
        """The run's result row for a pair, or None: how a write whose reply was lost is reconciled."""

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
    def artifact_paths(self) -> set[str]:
        """Every artifact path a ledger row names (model versions and results), as recorded."""

    @abstractmethod
    def results_history(
        self, symbol: str | None = None, timeframe: str | None = None, *, include_failed: bool = False
    ) -> list[dict]:
        """Succeeded results (with their run's started_at), oldest first; optionally for one pair.
        With `include_failed`, failed results too (the report's "latest run" of a pair)."""

    def last_training(self, symbol: str, timeframe: str) -> TrainedData | None:
        """The last bar (`split.data_end`) and data revision (`split.data_revision`) of the pair's latest
        successful training, or None when it was never trained."""
        row = self._last_training_row(symbol, timeframe)
        if row is None:
            return None
        end, revision = row
        return TrainedData(
            data_end=pd.Timestamp(end).to_pydatetime() if end else None,
            revision=int(revision) if revision is not None else None,
        )

    @abstractmethod
    def _last_training_row(self, symbol: str, timeframe: str) -> tuple[Any, Any] | None:
        """Hook: (split.data_end, split.data_revision) of the latest succeeded result, as stored, or None."""

    @abstractmethod
    def heartbeat(self, run_id: str) -> None:
        """Stamp the run's heartbeat_at: a `running` row with an old heartbeat belongs to a dead process."""

    @abstractmethod
    def mark_runs_abandoned(self, run_ids: Sequence[str], reason: str) -> int:
        """Runs still `running` whose holder died: set status abandoned; returns how many changed."""

    @abstractmethod
    def abandon_stale_runs(self, ttl_s: int, reason: str, exclude: str | None = None) -> list[str]:
        """Mark `abandoned` every run still `running` whose heartbeat (else start) is older than ttl_s;
        returns their ids."""

    # --- monitoring thresholds: one row read by the report and the model_health view ---------------------
    @abstractmethod
    def read_monitoring_thresholds(self) -> MonitoringThresholds | None: ...

    @abstractmethod
    def publish_monitoring_thresholds(
        self, thresholds: MonitoringThresholds, by: str | None = None
    ) -> None: ...

    # --- leases: one run at a time per (symbol, timeframe) ------------------------------------------
    @abstractmethod
    def acquire_leases(
        self,
        names: Sequence[str],
        holder: str,
        ttl_s: int,
        run_id: str | None = None,
        reclaim: Sequence[str] = (),
    ) -> LeaseGrant:
        """Take every named lease or none. A lease is free if absent, expired, already held by `holder`, held
        for a run that already has a final status (its release was lost), or held by one of `reclaim` (holders
        the caller proved dead). `taken_over` lists the others' leases taken, each with its `reason`:
        'expired', 'finished' or 'holder gone'."""

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
    def list_outcome_candidates(self, symbol: str, timeframe: str, revision: int | None) -> list[dict]:
        """The pair's forecasts whose outcome the bars may (re)determine: those not yet realised, and (given the
        pair's bar revision) those realised from another revision. Ascending by (bar_ts, id)."""

    @abstractmethod
    def record_forecast_outcomes(self, outcomes: Sequence[ForecastOutcome]) -> int:
        """Write the realised columns of forecasts not yet realised, or realised from an older bar revision than
        the outcome's (a recomputation after a corrected bar); returns how many rows changed. An outcome with no
        revision fills unrealised rows only."""

    @abstractmethod
    def stamp_outcome_revision(self, forecast_ids: Sequence[int], revision: int) -> int:
        """Mark realised outcomes as computed from `revision` (recomputed and found unchanged); returns how many
        rows changed. Rows already at a newer revision are left alone."""

    # --- replays: the nightly loop re-run over history, stored apart from the live record ---------------------
    @abstractmethod
    def start_replay(self, replay_id: str, started_at: datetime, config: dict, scope: dict) -> None:
        """Create the ml_replays row (status running)."""

    def record_replay_pair(self, replay_id: str, pair: ReplayPairRows) -> None:
        """Write one pair's replay row and all its forecasts in one transaction (a retry replaces them)."""
        checked_pair(pair.symbol, pair.timeframe)
        self._write_replay_pair(replay_id, pair)

    @abstractmethod
    def _write_replay_pair(self, replay_id: str, pair: ReplayPairRows) -> None:
        """Hook: the checked pair's replay row and its forecasts, in one transaction."""

    @abstractmethod
    def finish_replay(
        self, replay_id: str, status: str, finished_at: datetime, error: str | None = None
    ) -> None: ...

    @abstractmethod
    def get_replay(self, replay_id: str) -> dict | None: ...

    @abstractmethod
    def list_replay_pairs(self, replay_id: str) -> list[dict]:
        """The replay's pair rows (record and steps decoded), by (symbol, timeframe)."""

    @abstractmethod
    def list_replay_forecasts(self, replay_id: str, symbol: str, timeframe: str) -> list[dict]:
        """One pair's replayed forecasts, ascending by bar_ts (timestamps as ISO strings)."""

    @abstractmethod
    def record_replay_verdicts(
        self, replay_id: str, verdicts: Mapping[tuple[str, str], dict[str, Any]]
    ) -> int:
        """Set `record.verdict` of the replay's pairs (their q-values are known once every pair is done), all
        or none; returns how many pair rows changed."""

    def latest_replay(
        self, symbol: str, timeframe: str, through: datetime | pd.Timestamp | None = None
    ) -> dict | None:
        """The pair's row of its latest finished replay (by the replay's start) in which the pair succeeded,
        with its forecasts under "forecasts" (ascending by bar_ts); with `through`, only replays whose last
        replayed bar is at or before it (nothing from after a run's own data). None when there is none."""
        checked_pair(symbol, timeframe)
        replay_id = self._latest_replay_id(symbol, timeframe, None if through is None else format_ts(through))
        if replay_id is None:
            return None
        rows = [
            r
            for r in self.list_replay_pairs(replay_id)
            if (r["symbol"], r["timeframe"]) == (symbol, timeframe)
        ]
        if not rows:
            return None
        return {**rows[0], "forecasts": self.list_replay_forecasts(replay_id, symbol, timeframe)}

    @abstractmethod
    def _latest_replay_id(self, symbol: str, timeframe: str, through: str | None) -> str | None:
        """Hook: the id of latest_replay's replay (`through` as the stores' UTC text), or None."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> TrainingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked_pair(symbol: str, timeframe: str) -> tuple[str, str]:
    """The store's guard: only valid identifiers (ml.src.data.identifiers) are written."""
    try:
        return check_pair(symbol, timeframe)
    except IdentifierError as exc:
        raise StoreError(str(exc)) from None


def checked_symbol(symbol: str) -> str:
    try:
        return check_symbol(symbol)
    except IdentifierError as exc:
        raise StoreError(str(exc)) from None


def normalise_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars with BAR_COLUMNS, float prices, tz-aware UTC ts at microsecond precision, ascending.

    Both stores keep timestamps to the microsecond, so a sub-microsecond part is dropped here, and two bars that
    then share a timestamp are refused (StoreError) rather than silently stored as one; so is a bar dated after
    now.
    """
    frame = bars.loc[:, list(BAR_COLUMNS)].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.floor("us")
    for col in BAR_COLUMNS[1:]:
        frame[col] = frame[col].astype("float64")
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    dup = frame["ts"].duplicated().to_numpy()
    if dup.any():
        raise StoreError(
            f"two bars share ts {frame['ts'].iloc[int(np.argmax(dup))].isoformat()} "
            "(timestamps are stored to the microsecond)"
        )
    now = datetime.now(UTC)
    future = first_future_bar(frame["ts"], now)
    if future is not None:  # a bar that has not happened yet would be trained on and block forecasts
        raise StoreError(
            f"bar at {frame['ts'].iloc[future].isoformat()} is in the future "
            f"(now {now.isoformat(timespec='seconds')}): not written"
        )
    return frame


# Both stores write timestamps as this text (microseconds, Z): SQLite compares them as strings, PostgREST parses them.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_ts(value: datetime | pd.Timestamp) -> str:
    """A tz-aware instant as the stores' UTC text; a naive one is refused (time is UTC and tz-aware everywhere)."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise StoreError(f"naive timestamp {value!r}: timestamps must be tz-aware UTC")
    return ts.tz_convert("UTC").strftime(TS_FORMAT)
