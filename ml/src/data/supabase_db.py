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
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
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
    LeaseGrant,
    ModelVersionRecord,
    MonitoringThresholds,
    ResultRecord,
    RunOutcome,
    RunRecord,
)
from ml.src.data.store import (
    BAR_COLUMNS,
    checked_symbol,
    empty_bars,
    format_ts,
)

if TYPE_CHECKING:
    pass


from ml.src.data.supabase_base import classify_api_error, jsonable, parse_chunk_stream
from ml.src.data.supabase_live import SupabaseLiveRecord

__all__ = ["SupabaseStore", "classify_api_error"]


class SupabaseStore(SupabaseLiveRecord):
    """The Supabase store: market data, the feature cache, the run ledger and registry, monitoring thresholds,
    leases (forecasts and replays: SupabaseLiveRecord; the client and its retries: SupabaseBase)."""

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
        row = jsonable(run.to_row())
        self._call(
            f"record run {run.run_id}",
            lambda: self._table("training_runs").insert(row, returning=ReturnMethod.minimal).execute(),
            on_retry_conflict_ok=True,
        )

    def finish_run(self, run_id, outcome: RunOutcome) -> None:
        row = jsonable(outcome.to_row())
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
            "p_result": jsonable(result.to_row()),
            "p_model_version": jsonable(model_version.to_row()) if model_version else None,
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
                {"symbol": symbol, "timeframe": timeframe, "verdict": jsonable(verdict)}
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
