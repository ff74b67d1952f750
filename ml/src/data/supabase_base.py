"""The Supabase store's foundation: the official `supabase` client talking to PostgREST
(`<SUPABASE_URL>/rest/v1`), its retries and paging, and how rows are made JSON. supabase_db.SupabaseStore
builds on it.

- Every read pages through PostgREST's row cap (1000 on hosted Supabase, possibly lower) with keyset
  pagination on the key, stopping on an empty page, so a lower server cap never truncates silently.
- Writes go in batches with `returning=minimal`.
- Transient failures (gateway 5xx, timeouts, connection errors) are retried with bounded exponential backoff;
  anything else surfaces at once as StoreError carrying the SQLSTATE and a one-line message.
- The service key never appears in a log line or an error message.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
import numpy as np
import pandas as pd
from postgrest.exceptions import APIError
from postgrest.types import ReturnMethod

from ml.src.data.feature_chunks import (
    FeatureChunk,
)
from ml.src.data.store import (
    StoreError,
    StoreUnavailable,
    TrainingStore,
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


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime | pd.Timestamp):
        return format_ts(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing metric is null
    return value


class SupabaseBase(TrainingStore):
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
    def from_settings(cls, settings: StoreSettings) -> Self:
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
