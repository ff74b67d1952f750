"""One run at a time per (symbol, timeframe): named leases in the store, renewed while a run works."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence

from ml.src.data.records import LeaseGrant
from ml.src.data.store import StoreError, TrainingStore

log = logging.getLogger("ml.leases")


def lease_name(symbol: str, timeframe: str) -> str:
    return f"train:{symbol}:{timeframe}"


def holder_name(run_id: str) -> str:
    """Who holds a lease: enough to find the process (host, pid) and its ledger row (run id)."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def holder_gone_here(holder: str | None) -> bool:
    """True when `holder` (host:pid:run) names this host and a process that no longer exists.

    Only a holder on this host can be checked (its pid means nothing elsewhere); a pid that is alive, or that
    this process cannot signal (another user's), counts as alive. A reused pid keeps the lease until its TTL,
    which is the safe side. Hosts that share a hostname but not a pid namespace (containers given the same
    hostname) must not share a store.
    """
    parts = (holder or "").split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid in (0, os.getpid()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive under another user
        return False
    return False


def acquire_run_leases(
    store: TrainingStore, names: Sequence[str], holder: str, ttl_s: int, run_id: str | None
) -> LeaseGrant:
    """acquire_leases, taking over the leases of holders on this host whose process is gone.

    The store names one conflicting holder per refusal: each dead one is added to `reclaim` and the call
    repeated, at most once per distinct holder, so a live holder anywhere still refuses the whole set.
    """
    reclaim: list[str] = []
    grant = store.acquire_leases(names, holder, ttl_s, run_id)
    while not grant.acquired and grant.holder not in reclaim and holder_gone_here(grant.holder):
        assert grant.holder is not None
        log.warning(
            "lease %s: its holder %s is gone from this host; taking it over", grant.name, grant.holder
        )
        reclaim.append(grant.holder)
        grant = store.acquire_leases(names, holder, ttl_s, run_id, reclaim=reclaim)
    return grant


class LeaseRenewer:
    """Renews the leases every ttl/3 seconds in a daemon thread; calls on_lost if one was taken from us."""

    def __init__(
        self,
        store: TrainingStore,
        names: Sequence[str],
        holder: str,
        ttl_s: int,
        on_lost: Callable[[str], None],
        run_id: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.store, self.names, self.holder, self.ttl_s = store, list(names), holder, ttl_s
        self.on_lost, self.run_id = on_lost, run_id
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-renewer", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                renewed = self.store.renew_leases(self.names, self.holder, self.ttl_s)
                if self.run_id:
                    self.store.heartbeat(self.run_id)
            except StoreError as exc:  # keep trying: the lease is still ours until someone takes it over
                if self.on_error is not None:
                    self.on_error(f"lease renewal or heartbeat failed: {exc}")
                else:
                    log.warning("lease renewal failed: %s", exc)
                continue
            if renewed < len(set(self.names)):
                self.on_lost(f"lost {len(set(self.names)) - renewed} lease(s) to another run")
                return

    def __enter__(self) -> LeaseRenewer:
        if self.run_id:
            try:
                self.store.heartbeat(self.run_id)
            except StoreError as exc:
                if self.on_error is None:
                    raise
                self.on_error(f"heartbeat failed: {exc}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
