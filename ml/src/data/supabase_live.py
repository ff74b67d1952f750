"""The Supabase store's live record and replays: forecasts, their realised outcomes, and replayed pairs (kept
apart from the live record), through PostgREST and the replay's SQL function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from postgrest.types import ReturnMethod

from ml.src.data.records import (
    ForecastOutcome,
    ForecastRecord,
    ReplayPairRows,
)
from ml.src.data.store import (
    format_ts,
)

if TYPE_CHECKING:
    pass


from ml.src.data.supabase_base import SupabaseBase, jsonable


class SupabaseLiveRecord(SupabaseBase):
    """Forecasts, outcomes and replays on Supabase."""

    # --- forecasts ---------------------------------------------------------------------------------------
    def insert_forecast(self, forecast: ForecastRecord) -> bool:
        row = jsonable(forecast.to_row())
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
            row = jsonable({**o.to_row(), "realised_at": None if o.realised_return is None else now})
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
        row = jsonable(
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
            "p_pair": jsonable(pair.to_row(replay_id)),
            "p_forecasts": jsonable(pair.forecast_rows()),
        }
        self._rpc(f"record replay {pair.symbol}/{pair.timeframe}", "record_replay_pair", params)

    def finish_replay(self, replay_id, status, finished_at, error=None) -> None:
        row = jsonable({"status": status, "finished_at": finished_at, "error": error})
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
                {"symbol": symbol, "timeframe": timeframe, "verdict": jsonable(verdict)}
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
