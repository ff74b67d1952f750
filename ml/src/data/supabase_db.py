"""Supabase store: the official `supabase` client talking to PostgREST (`<SUPABASE_URL>/rest/v1`).

- Every read pages through PostgREST's row cap (1000 on hosted Supabase, possibly lower) with keyset
  pagination on the key, stopping on an empty page, so a lower server cap never truncates silently.
- Writes go in batches with `returning=minimal`.
- Transient failures (gateway 5xx, timeouts, connection errors) are retried with bounded exponential backoff;
  anything else surfaces at once as StoreError carrying the SQLSTATE and a one-line message.
- The service key never appears in a log line or an error message.
"""

from __future__ import annotations

import base64
import logging
import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
import pandas as pd
from postgrest.exceptions import APIError, APIErrorFromJSON
from postgrest.types import CountMethod, ReturnMethod
from pydantic import ValidationError

from ml.src.data.feature_chunks import (
    FeatureChunk,
    chunks_to_frame,
    merge_chunks,
    timestamps_to_us,
)
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
)
from ml.src.data.store import (
    BAR_COLUMNS,
    StoreError,
    StoreUnavailable,
    TrainingStore,
    checked_symbol,
    empty_bars,
    format_ts,
)

if TYPE_CHECKING:
    from config.settings import StoreSettings

log = logging.getLogger("ml.store.supabase")

T = TypeVar("T")

PAGE_SIZE = 1000  # hosted Supabase's default max_rows; a lower server cap still pages correctly
WRITE_BATCH = 1000  # well under nginx/Kong body limits (~7000 bar rows break a 1 MB limit)
TRANSIENT_HTTP = frozenset({"408", "425", "429", "500", "502", "503", "504", "520", "522", "524"})
# SQLSTATEs worth another try: serialization failure, deadlock, too many connections, statement timeout,
# the server shutting down or restarting under the request (admin/crash shutdown, cannot connect now)
TRANSIENT_SQLSTATE = frozenset(
    {
        "40001",
        "40P01",
        "53300",
        "57014",
        "57P01",
        "57P02",
        "57P03",
        "08000",
        "08003",
        "08006",
        "PGRST000",
        "PGRST001",
        "PGRST002",
        "PGRST003",
    }
)


def classify_api_error(code: str, message: object, details: object = None) -> tuple[bool, str]:
    """(worth another try, the one-line reason) for an error PostgREST answered.

    An empty code is PostgREST losing its database connection under an in-flight request (a Postgres
    restart answers `400 {"code": ""}` with no message): transient, and the reason says so, since the
    line would otherwise be empty.
    """
    text = " ".join(str(message or "").split())
    if not code:
        return True, text or "PostgREST answered an error without a code (its database connection was lost?)"
    transient = code in TRANSIENT_HTTP or code in TRANSIENT_SQLSTATE
    reason = f"SQLSTATE {code}: {text}" if text else f"SQLSTATE {code} (no message)"
    if details and not transient:
        reason += f" ({details})"
    return transient, reason


def parse_chunk_stream(data: bytes) -> list[FeatureChunk]:
    """The chunks of a feature_chunks_read result (layout in its migration, 20261210001600)."""
    out: list[FeatureChunk] = []
    view, pos = memoryview(data), 0
    while pos < len(data):
        if pos + 16 > len(data):
            raise StoreError("feature cache read: truncated chunk header")
        start_us, n_rows, n_names = struct.unpack_from(">qii", view, pos)
        pos += 16
        columns = bytes(view[pos : pos + n_names]).decode("utf-8").split(",")
        pos += n_names
        n_ts, n_values = 8 * n_rows, 8 * n_rows * len(columns)
        if pos + n_ts + n_values > len(data):
            raise StoreError("feature cache read: truncated chunk data")
        ts_data, values_data = view[pos : pos + n_ts], view[pos + n_ts : pos + n_ts + n_values]
        out.append(FeatureChunk.from_bytes(start_us, columns, bytes(ts_data), bytes(values_data)))
        pos += n_ts + n_values
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | pd.Timestamp):
        return format_ts(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing metric is null
    return value


class SupabaseStore(TrainingStore):
    name = "supabase"

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        http_client: httpx.Client | None = None,
    ) -> None:
        from supabase import ClientOptions, create_client  # ~0.4 s import: only when Supabase is used

        self.url = url.rstrip("/")
        self._key = key
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        # Our own httpx client: explicit timeout, closed on close(); the client's built-in GET retry is off
        # because this class owns the retry policy (bounded, and for writes too).
        # (tests may pass a real client with a wrapping transport, e.g. one that loses replies)
        self._http = http_client or httpx.Client(timeout=httpx.Timeout(timeout_s))
        try:
            self.client = create_client(
                self.url, key, ClientOptions(httpx_client=self._http, postgrest_client_retry=False)
            )
        except Exception as exc:  # bad URL etc.
            self._http.close()
            raise StoreError(self._clean(f"cannot create Supabase client for {self.url}: {exc}")) from None

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> SupabaseStore:
        if not settings.supabase_url or settings.supabase_service_role_key is None:
            raise StoreError("Supabase store needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        return cls(
            settings.supabase_url,
            settings.supabase_service_role_key.get_secret_value(),
            timeout_s=settings.db_timeout_s,
            max_retries=settings.db_max_retries,
            backoff_s=settings.db_backoff_s,
        )

    def close(self) -> None:
        self._http.close()

    # --- the one place that talks to the network -------------------------------------------------
    def _clean(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text.replace(self._key, "***") if self._key else text

    def _call(self, what: str, fn: Callable[[], T], *, on_retry_conflict_ok: bool = False) -> T:
        t0 = time.perf_counter()
        try:
            return self._call_with_retries(what, fn, on_retry_conflict_ok)
        finally:
            self.io_seconds += time.perf_counter() - t0

    def _call_with_retries(self, what: str, fn: Callable[[], T], on_retry_conflict_ok: bool) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except APIError as exc:
                code = str(exc.code or "")
                if on_retry_conflict_ok and attempt > 0 and code == "23505":
                    # an earlier attempt landed before its response was lost: the write is done
                    return None  # type: ignore[return-value]
                transient, reason = classify_api_error(code, exc.message, exc.details)
                if not transient or attempt >= self.max_retries:
                    cls = StoreUnavailable if transient else StoreError
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise cls(self._clean(f"supabase {what} failed{tries}: {reason}")) from None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                text = " ".join(str(exc).split())
                reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
                if attempt >= self.max_retries:
                    raise StoreUnavailable(
                        self._clean(f"supabase {what} failed after {attempt + 1} attempts: {reason}")
                    ) from None
            delay = self.backoff_s * (2**attempt)
            log.warning(
                "supabase %s: transient failure (%s), retry %d/%d in %.1fs",
                what,
                self._clean(reason),
                attempt + 1,
                self.max_retries,
                delay,
            )
            self._sleep(delay)
            attempt += 1

    def _table(self, name: str) -> Any:
        return self.client.table(name)

    def _rpc(self, what: str, fn: str, params: dict[str, Any]) -> Any:
        """Call a SQL function; its JSON result, untyped."""
        return self._call(what, lambda: self.client.rpc(fn, params).execute()).data

    def _select_keyset(
        self,
        what: str,
        table: str,
        columns: str,
        filters: Sequence[tuple[str, str, Any]],
        key: str,
        descending: bool,
        limit: int | None,
    ) -> list[dict[str, Any]]:
        """All rows matching `filters`, ordered by the unique `key`, paged by key (no offset drift)."""
        rows: list[dict[str, Any]] = []
        last: Any = None
        while limit is None or len(rows) < limit:
            page = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(rows))

            def fetch(last: Any = last, page: int = page) -> Any:
                q = self._table(table).select(columns)
                for op, col, value in filters:
                    q = getattr(q, op)(col, value)
                if last is not None:
                    q = q.lt(key, last) if descending else q.gt(key, last)
                return q.order(key, desc=descending).limit(page).execute()

            data = self._call(what, fetch).data or []
            if not data:
                break
            rows.extend(data)
            last = data[-1][key]
        return rows

    def _write_batches(self, what: str, table: str, rows: list[dict[str, Any]], on_conflict: str) -> int:
        for i in range(0, len(rows), WRITE_BATCH):
            batch = rows[i : i + WRITE_BATCH]

            def upsert(batch: list[dict[str, Any]] = batch) -> Any:
                return (
                    self._table(table)
                    .upsert(batch, on_conflict=on_conflict, returning=ReturnMethod.minimal)
                    .execute()
                )

            self._call(what, upsert)
        return len(rows)

    # --- market data ------------------------------------------------------------------------------
    def read_bars(self, symbol, timeframe, *, end=None, start=None, limit=None) -> pd.DataFrame:
        filters: list[tuple[str, str, Any]] = [("eq", "symbol", symbol), ("eq", "timeframe", timeframe)]
        if end is not None:
            filters.append(("lte", "ts", format_ts(end)))
        if start is not None:
            filters.append(("gte", "ts", format_ts(start)))
        rows = self._select_keyset(
            f"read bars {symbol}/{timeframe}",
            "ohlc_bars",
            ",".join(BAR_COLUMNS),
            filters,
            "ts",
            descending=True,
            limit=limit,
        )
        if not rows:
            return empty_bars()
        frame = pd.DataFrame.from_records(rows[::-1], columns=list(BAR_COLUMNS))
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
        for col in BAR_COLUMNS[1:]:
            frame[col] = frame[col].astype("float64")
        return frame

    def _write_bars(self, symbol: str, timeframe: str, frame: pd.DataFrame) -> int:
        ts = [format_ts(t) for t in frame["ts"]]
        values = frame[list(BAR_COLUMNS[1:])].to_numpy(dtype="float64")
        rows = [
            {
                "symbol": symbol,
                "timeframe": timeframe,
                "ts": t,
                "open": v[0],
                "high": v[1],
                "low": v[2],
                "close": v[3],
                "volume": v[4],
            }
            for t, v in zip(ts, values.tolist(), strict=True)
        ]
        return self._write_batches(
            f"upsert bars {symbol}/{timeframe}", "ohlc_bars", rows, "symbol,timeframe,ts"
        )

    def count_bars(self, symbol, timeframe) -> int:
        res = self._call(
            f"count bars {symbol}/{timeframe}",
            lambda: (
                self._table("ohlc_bars")
                .select("ts", count=CountMethod.exact, head=True)
                .eq("symbol", symbol)
                .eq("timeframe", timeframe)
                .execute()
            ),
        )
        return int(res.count or 0)

    def upsert_symbols(self, tickers: Iterable[str], active: bool = True) -> None:
        rows = [{"ticker": checked_symbol(t), "active": active} for t in tickers]
        self._write_batches("upsert symbols", "symbols", rows, "ticker")

    def list_active_symbols(self) -> list[str]:
        rows = self._select_keyset(
            "list symbols",
            "symbols",
            "ticker",
            [("eq", "active", True)],
            "ticker",
            descending=False,
            limit=None,
        )
        return [r["ticker"] for r in rows]

    def bar_revision(self, symbol, timeframe) -> int | None:
        res = self._call(
            f"read bar revision {symbol}/{timeframe}",
            lambda: (
                self._table("bar_revisions")
                .select("revision")
                .eq("symbol", symbol)
                .eq("timeframe", timeframe)
                .execute()
            ),
        )
        return int(res.data[0]["revision"]) if res.data else None

    def pairs_with_bars(self, symbols, timeframes) -> set[tuple[str, str]]:
        params = {"p_symbols": list(dict.fromkeys(symbols)), "p_timeframes": list(dict.fromkeys(timeframes))}
        data = self._rpc("list pairs with bars", "pairs_with_bars", params)
        return {(str(s), str(tf)) for s, tf in (data or [])}

    # --- feature cache ----------------------------------------------------------------------------
    def _rpc_bytes(self, what: str, fn: str, params: dict[str, Any]) -> bytes:
        """Call a SQL function returning bytea and take its result as raw bytes (no JSON, no base64).

        The official client's own request (its URL, keys and session), sent with `Accept: application/octet-stream`,
        which PostgREST answers with the bytea as the body."""

        def call() -> bytes:
            builder = self.client.rpc(fn, params)
            builder.request.headers["Accept"] = "application/octet-stream"
            response = builder.request.send(httpx.Headers())
            if not response.is_success:
                try:
                    raise APIError(dict(APIErrorFromJSON.model_validate_json(response.content)))
                except ValidationError:
                    raise APIError(
                        {"message": response.text[:200], "code": str(response.status_code)}
                    ) from None
            return bytes(response.content)

        return self._call(what, call)

    def _get_chunks(
        self,
        symbol: str,
        timeframe: str,
        version: str,
        start: Any,
        end: Any,
        chunk_starts: list[str] | None = None,
    ) -> list[FeatureChunk]:
        params = {
            "p_symbol": symbol,
            "p_timeframe": timeframe,
            "p_version": version,
            "p_start": format_ts(start),
            "p_end": format_ts(end),
            "p_chunk_starts": chunk_starts,
        }
        data = self._rpc_bytes(f"read feature cache {symbol}/{timeframe}", "feature_chunks_read", params)
        return parse_chunk_stream(data)

    def read_feature_cache(self, symbol, timeframe, version, start, end) -> pd.DataFrame:
        chunks = self._get_chunks(symbol, timeframe, version, start, end)
        bounds = timestamps_to_us([pd.Timestamp(start), pd.Timestamp(end)])
        return chunks_to_frame(chunks, int(bounds[0]), int(bounds[1]))

    @staticmethod
    def _chunk_json(c: FeatureChunk) -> dict[str, Any]:
        return {
            "chunk_start": format_ts(c.chunk_start),
            "first_ts": format_ts(c.first_ts),
            "last_ts": format_ts(c.last_ts),
            "n_rows": c.n_rows,
            "columns": list(c.columns),
            "ts": base64.b64encode(c.ts_bytes()).decode("ascii"),
            "values": base64.b64encode(c.values_bytes()).decode("ascii"),
        }

    def _write_feature_chunks(
        self, symbol: str, timeframe: str, version: str, chunks: list[FeatureChunk], revision: int | None
    ) -> int:
        what = f"write feature cache {symbol}/{timeframe}"

        def put(batch: list[FeatureChunk], replace: bool) -> dict[str, Any]:
            params = {
                "p_symbol": symbol,
                "p_timeframe": timeframe,
                "p_version": version,
                "p_revision": revision,
                "p_chunks": [self._chunk_json(c) for c in batch],
                "p_replace": replace,
            }
            return dict(self._rpc(what, "feature_chunks_put", params) or {})

        # Most writes append a night's rows to a chunk (done in SQL); only chunks whose stored rows overlap the new
        # ones come back, to be merged here and replaced.
        out = put(chunks, False)
        if out.get("stale"):
            return 0
        overlaps = set(out.get("overlaps") or [])
        if overlaps:
            mine = [
                c
                for c in chunks
                if format_ts(c.chunk_start) in {format_ts(pd.Timestamp(o)) for o in overlaps}
            ]
            stored = {
                c.chunk_start_us: c
                for c in self._get_chunks(
                    symbol,
                    timeframe,
                    version,
                    mine[0].chunk_start,
                    mine[-1].last_ts,
                    [format_ts(c.chunk_start) for c in mine],
                )
            }
            merged = [merge_chunks(stored.get(c.chunk_start_us), c) for c in mine]
            if put(merged, True).get("stale"):
                return 0
        return sum(c.n_rows for c in chunks)

    # --- run ledger and registry ------------------------------------------------------------------
    def start_run(self, run: RunRecord) -> None:
        row = _jsonable(run.to_row())
        self._call(
            f"record run {run.run_id}",
            lambda: self._table("training_runs").insert(row, returning=ReturnMethod.minimal).execute(),
            on_retry_conflict_ok=True,
        )

    def finish_run(self, run_id, outcome: RunOutcome) -> None:
        row = _jsonable(outcome.to_row())
        self._call(
            f"finish run {run_id}",
            lambda: (
                self._table("training_runs")
                .update(row, returning=ReturnMethod.minimal)
                .eq("run_id", run_id)
                .execute()
            ),
        )

    def _write_result(self, result: ResultRecord, model_version: ModelVersionRecord | None) -> None:
        # One SQL function, one transaction: the result row and its model version land together or not at all.
        params = {
            "p_result": _jsonable(result.to_row()),
            "p_model_version": _jsonable(model_version.to_row()) if model_version else None,
        }
        self._call(
            f"record result {result.symbol}/{result.timeframe}",
            lambda: self.client.rpc("record_training_result", params).execute(),
            on_retry_conflict_ok=True,
        )

    def record_verdicts(self, run_id: str, verdicts: Mapping[tuple[str, str], dict[str, Any]]) -> int:
        if not verdicts:
            return 0
        # One SQL function, one transaction: every pair's verdict or none (and a retry writes the same values).
        params = {
            "p_run_id": run_id,
            "p_verdicts": [
                {"symbol": symbol, "timeframe": timeframe, "verdict": _jsonable(verdict)}
                for (symbol, timeframe), verdict in verdicts.items()
            ],
        }
        return int(self._rpc(f"record the verdicts of run {run_id}", "record_verdicts", params) or 0)

    def get_run(self, run_id) -> dict | None:
        res = self._call(
            f"read run {run_id}",
            lambda: self._table("training_runs").select("*").eq("run_id", run_id).execute(),
        )
        return res.data[0] if res.data else None

    def find_result(self, run_id, symbol, timeframe) -> dict | None:
        res = self._call(
            f"read back result {symbol}/{timeframe}",
            lambda: (
                self._table("training_results")
                .select("*")
                .eq("run_id", run_id)
                .eq("symbol", symbol)
                .eq("timeframe", timeframe)
                .execute()
            ),
        )
        return res.data[0] if res.data else None

    def list_results(self, run_id) -> list[dict]:
        return self._select_keyset(
            f"read results of {run_id}",
            "training_results",
            "*",
            [("eq", "run_id", run_id)],
            "id",
            descending=False,
            limit=None,
        )

    def list_model_versions(self, symbol, timeframe) -> list[dict]:
        return self._select_keyset(
            f"read model versions {symbol}/{timeframe}",
            "model_versions",
            "*",
            [("eq", "symbol", symbol), ("eq", "timeframe", timeframe)],
            "id",
            descending=True,
            limit=None,
        )

    def get_champion(self, symbol, timeframe) -> dict | None:
        res = self._call(
            f"read champion {symbol}/{timeframe}",
            lambda: (
                self._table("model_versions")
                .select("*")
                .eq("symbol", symbol)
                .eq("timeframe", timeframe)
                .eq("is_champion", True)
                .execute()
            ),
        )
        return res.data[0] if res.data else None

    def prune_model_versions(self, symbol, timeframe, keep) -> list[dict]:
        params = {"p_symbol": symbol, "p_timeframe": timeframe, "p_keep": int(keep)}
        data = self._rpc(f"prune model versions {symbol}/{timeframe}", "prune_model_versions", params)
        return list(data or [])

    def artifact_paths(self) -> set[str]:
        paths: set[str] = set()
        for table in ("model_versions", "training_results"):
            rows = self._select_keyset(
                f"read artifact paths of {table}",
                table,
                "id,artifact_path",
                [("like", "artifact_path", "%")],  # non-null paths only
                "id",
                descending=False,
                limit=None,
            )
            paths.update(str(r["artifact_path"]) for r in rows if r.get("artifact_path"))
        return paths

    def results_history(self, symbol=None, timeframe=None, *, include_failed=False) -> list[dict]:
        filters: list[tuple[str, str, Any]] = (
            [("in_", "status", ["succeeded", "failed"])]
            if include_failed
            else [("eq", "status", "succeeded")]
        )
        if symbol is not None:
            filters.append(("eq", "symbol", symbol))
        if timeframe is not None:
            filters.append(("eq", "timeframe", timeframe))
        rows = self._select_keyset(
            "read results history",
            "training_results",
            "*,training_runs(started_at)",
            filters,
            "id",
            descending=False,
            limit=None,
        )
        for r in rows:
            r["started_at"] = (r.pop("training_runs") or {}).get("started_at")
        return sorted(rows, key=lambda r: (r["started_at"] or "", r["id"]))

    def _last_training_row(self, symbol: str, timeframe: str) -> tuple[Any, Any] | None:
        res = self._call(
            f"read last training {symbol}/{timeframe}",
            lambda: (
                self._table("training_results")
                .select("data_end:split->>data_end,data_revision:split->>data_revision")
                .eq("symbol", symbol)
                .eq("timeframe", timeframe)
                .eq("status", "succeeded")
                .order("id", desc=True)
                .limit(1)
                .execute()
            ),
        )
        return (res.data[0]["data_end"], res.data[0]["data_revision"]) if res.data else None

    def heartbeat(self, run_id: str) -> None:
        # the database clock, like the sweep that reads it (abandon_stale_runs)
        self._rpc(f"heartbeat {run_id}", "run_heartbeat", {"p_run_id": run_id})

    def mark_runs_abandoned(self, run_ids: Sequence[str], reason: str) -> int:
        if not run_ids:
            return 0
        res = self._call(
            "mark runs abandoned",
            lambda: (
                self._table("training_runs")
                .update(
                    {
                        "status": "abandoned",
                        "error": reason,
                        "finished_at": format_ts(pd.Timestamp.now(tz="UTC")),
                    }
                )
                .in_("run_id", list(run_ids))
                .eq("status", "running")
                .execute()
            ),
        )
        return len(res.data or [])

    # --- forecasts ---------------------------------------------------------------------------------------
    def insert_forecast(self, forecast: ForecastRecord) -> bool:
        row = _jsonable(forecast.to_row())
        # insert ... on conflict do nothing: PostgREST returns only the rows it inserted
        res = self._call(
            f"write forecast {forecast.symbol}/{forecast.timeframe}",
            lambda: (
                self._table("ml_forecasts")
                .upsert(
                    row,
                    on_conflict="symbol,timeframe,bar_ts,model_version_id",
                    ignore_duplicates=True,
                    returning=ReturnMethod.representation,
                )
                .execute()
            ),
        )
        return bool(res is not None and res.data)

    def list_forecasts(self, symbol=None, timeframe=None, *, unrealised_only=False) -> list[dict]:
        filters: list[tuple[str, str, Any]] = []
        if symbol is not None:
            filters.append(("eq", "symbol", symbol))
        if timeframe is not None:
            filters.append(("eq", "timeframe", timeframe))
        if unrealised_only:
            filters.append(("is_", "realised_return", "null"))
        rows = self._select_keyset(
            "read forecasts", "ml_forecasts", "*", filters, "id", descending=False, limit=None
        )
        return sorted(rows, key=lambda r: (r["symbol"], r["timeframe"], pd.Timestamp(r["bar_ts"]), r["id"]))

    def list_outcome_candidates(self, symbol, timeframe, revision) -> list[dict]:
        filters: list[tuple[str, str, Any]] = [("eq", "symbol", symbol), ("eq", "timeframe", timeframe)]
        if revision is None:
            filters.append(("is_", "realised_return", "null"))
        else:  # postgrest's or_(filters, reference_table): not yet realised, or realised from another revision
            rev = int(revision)
            filters.append(
                (
                    "or_",
                    f"realised_return.is.null,realised_revision.is.null,realised_revision.neq.{rev}",
                    None,
                )
            )
        rows = self._select_keyset(
            "read forecast outcomes", "ml_forecasts", "*", filters, "id", descending=False, limit=None
        )
        return sorted(rows, key=lambda r: (pd.Timestamp(r["bar_ts"]), r["id"]))

    def record_forecast_outcomes(self, outcomes: Sequence[ForecastOutcome]) -> int:
        changed = 0
        now = format_ts(pd.Timestamp.now(tz="UTC"))
        for o in outcomes:
            row = _jsonable({**o.to_row(), "realised_at": None if o.realised_return is None else now})
            # Not yet realised, or (with a revision) realised before revisions or from an older one. One plain
            # filter per call: PostgREST applies an or= filter of a PATCH to the returned rows too, which the
            # update itself made fail it, so the reply would not say whether a row changed.
            conditions: list[tuple[str, str, Any]] = [("is_", "realised_return", "null")]
            if o.realised_revision is not None:
                conditions += [
                    ("is_", "realised_revision", "null"),
                    ("lt", "realised_revision", o.realised_revision),
                ]
            for op, col, value in conditions:

                def update(
                    row: dict[str, Any] = row,
                    fid: int = o.forecast_id,
                    op: str = op,
                    col: str = col,
                    value: Any = value,
                ) -> Any:
                    q = self._table("ml_forecasts").update(row).eq("id", fid)
                    return getattr(q, op)(col, value).execute()

                res = self._call(f"record forecast outcome {o.forecast_id}", update)
                if res.data:
                    changed += 1
                    break
        return changed

    def stamp_outcome_revision(self, forecast_ids, revision) -> int:
        ids = [int(i) for i in forecast_ids]
        rev = int(revision)
        changed = 0
        for k in range(0, len(ids), 200):  # ids travel in the URL: bounded batches
            chunk = ids[k : k + 200]
            for op, value in (("is_", "null"), ("lt", rev)):  # plain filters: see record_forecast_outcomes

                def stamp(chunk: list[int] = chunk, op: str = op, value: Any = value) -> Any:
                    q = (
                        self._table("ml_forecasts")
                        .update({"realised_revision": rev})
                        .in_("id", chunk)
                        .not_.is_("realised_return", "null")
                    )
                    return getattr(q, op)("realised_revision", value).execute()

                res = self._call("stamp forecast outcomes", stamp)
                changed += len(res.data or [])
        return changed

    # --- replays ------------------------------------------------------------------------------------------
    def start_replay(self, replay_id, started_at, config, scope) -> None:
        row = _jsonable(
            {
                "replay_id": replay_id,
                "started_at": started_at,
                "status": "running",
                "config": config,
                "scope": scope,
            }
        )
        self._call(
            f"start replay {replay_id}",
            lambda: self._table("ml_replays").insert(row, returning=ReturnMethod.minimal).execute(),
            on_retry_conflict_ok=True,
        )

    def _write_replay_pair(self, replay_id: str, pair: ReplayPairRows) -> None:
        # One SQL function, one transaction: the pair's row and every forecast, or nothing (a retry replaces them).
        params = {
            "p_pair": _jsonable(pair.to_row(replay_id)),
            "p_forecasts": _jsonable(pair.forecast_rows()),
        }
        self._rpc(f"record replay {pair.symbol}/{pair.timeframe}", "record_replay_pair", params)

    def finish_replay(self, replay_id, status, finished_at, error=None) -> None:
        row = _jsonable({"status": status, "finished_at": finished_at, "error": error})
        self._call(
            f"finish replay {replay_id}",
            lambda: (
                self._table("ml_replays")
                .update(row, returning=ReturnMethod.minimal)
                .eq("replay_id", replay_id)
                .execute()
            ),
        )

    @staticmethod
    def _replay_row(row: dict[str, Any]) -> dict[str, Any]:
        for key in (
            "started_at",
            "finished_at",
            "first_bar_ts",
            "last_bar_ts",
            "created_at",
            "bar_ts",
            "trained_through",
        ):
            if row.get(key) is not None:
                row[key] = pd.Timestamp(row[key]).isoformat()
        return row

    def get_replay(self, replay_id) -> dict | None:
        res = self._call(
            f"read replay {replay_id}",
            lambda: self._table("ml_replays").select("*").eq("replay_id", replay_id).execute(),
        )
        return self._replay_row(res.data[0]) if res.data else None

    def list_replay_pairs(self, replay_id) -> list[dict]:
        rows = self._select_keyset(
            f"read replay {replay_id}",
            "ml_replay_pairs",
            "*",
            [("eq", "replay_id", replay_id)],
            "id",
            descending=False,
            limit=None,
        )
        return sorted((self._replay_row(r) for r in rows), key=lambda r: (r["symbol"], r["timeframe"]))

    def list_replay_forecasts(self, replay_id, symbol, timeframe) -> list[dict]:
        filters: list[tuple[str, str, Any]] = [
            ("eq", "replay_id", replay_id),
            ("eq", "symbol", symbol),
            ("eq", "timeframe", timeframe),
        ]
        rows = self._select_keyset(
            f"read replay forecasts {symbol}/{timeframe}",
            "ml_replay_forecasts",
            "*",
            filters,
            "id",
            descending=False,
            limit=None,
        )
        return sorted((self._replay_row(r) for r in rows), key=lambda r: pd.Timestamp(r["bar_ts"]))

    def record_replay_verdicts(self, replay_id, verdicts) -> int:
        if not verdicts:
            return 0
        # One SQL function, one transaction: every pair's verdict or none.
        params = {
            "p_replay_id": replay_id,
            "p_verdicts": [
                {"symbol": symbol, "timeframe": timeframe, "verdict": _jsonable(verdict)}
                for (symbol, timeframe), verdict in verdicts.items()
            ],
        }
        return int(
            self._rpc(f"record the verdicts of replay {replay_id}", "record_replay_verdicts", params) or 0
        )

    def _latest_replay_id(self, symbol, timeframe, through) -> str | None:
        filters: list[tuple[str, str, Any]] = [
            ("eq", "symbol", symbol),
            ("eq", "timeframe", timeframe),
            ("eq", "status", "succeeded"),
        ]
        if through is not None:
            filters.append(("lte", "last_bar_ts", through))
        pairs = self._select_keyset(
            f"read replays of {symbol}/{timeframe}",
            "ml_replay_pairs",
            "id,replay_id",
            filters,
            "id",
            descending=True,
            limit=None,
        )
        ids = sorted({str(p["replay_id"]) for p in pairs})
        if not ids:
            return None
        res = self._call(
            f"read replays of {symbol}/{timeframe}",
            lambda: (
                self._table("ml_replays")
                .select("replay_id,started_at,finished_at")
                .in_("replay_id", ids)
                .in_("status", ["succeeded", "failed"])
                .not_.is_("finished_at", "null")
                .execute()
            ),
        )
        done = sorted(
            res.data or [],
            key=lambda r: (pd.Timestamp(r["started_at"]), pd.Timestamp(r["finished_at"])),
            reverse=True,
        )
        return str(done[0]["replay_id"]) if done else None

    def abandon_stale_runs(self, ttl_s: int, reason: str, exclude: str | None = None) -> list[str]:
        params = {"p_ttl_seconds": int(ttl_s), "p_reason": reason, "p_exclude": exclude}
        return [str(r) for r in (self._rpc("sweep stale runs", "abandon_stale_runs", params) or [])]

    # --- monitoring thresholds ---------------------------------------------------------------------------
    def read_monitoring_thresholds(self) -> MonitoringThresholds | None:
        res = self._call(
            "read monitoring settings",
            lambda: self._table("monitoring_settings").select("*").eq("id", 1).execute(),
        )
        return MonitoringThresholds.from_row(res.data[0]) if res.data else None

    def publish_monitoring_thresholds(self, thresholds: MonitoringThresholds, by: str | None = None) -> None:
        row = {
            **thresholds.to_row(),
            "id": 1,
            "updated_by": by,
            "updated_at": format_ts(pd.Timestamp.now(tz="UTC")),
        }
        self._write_batches("publish monitoring settings", "monitoring_settings", [row], "id")

    # --- leases: SQL functions, the database clock decides expiry -------------------------------------
    def acquire_leases(self, names, holder, ttl_s, run_id=None, reclaim=()) -> LeaseGrant:
        params: dict[str, Any] = {
            "p_names": sorted(set(names)),
            "p_holder": holder,
            "p_ttl_seconds": int(ttl_s),
            "p_run_id": run_id,
        }
        if reclaim:
            params["p_reclaim"] = sorted(set(reclaim))
        data = self._rpc("acquire leases", "acquire_leases", params)
        expires = pd.Timestamp(data["expires_at"]).to_pydatetime() if data.get("expires_at") else None
        if not data.get("acquired"):
            return LeaseGrant(
                acquired=False, name=data.get("name"), holder=data.get("holder"), expires_at=expires
            )
        return LeaseGrant(
            acquired=True,
            names=tuple(data.get("names") or ()),
            holder=holder,
            expires_at=expires,
            taken_over=tuple(data.get("taken_over") or ()),
        )

    def renew_leases(self, names, holder, ttl_s) -> int:
        params = {"p_names": sorted(set(names)), "p_holder": holder, "p_ttl_seconds": int(ttl_s)}
        return int(self._rpc("renew leases", "renew_leases", params))

    def release_leases(self, names, holder) -> int:
        params = {"p_names": sorted(set(names)), "p_holder": holder}
        return int(self._rpc("release leases", "release_leases", params))
