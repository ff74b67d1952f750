"""Fits on a Dask distributed cluster (`--dask ADDRESS` / ML_DASK_ADDRESS), behind the PairExecutor interface.

Only this module imports `distributed` (~0.8 s of CPU), and only when a run asks for a cluster.

What crosses the wire: the prepared pair (feature matrix, labels, split; no credentials) and a FitSpec whose
settings are the fit group only (`Settings.fit`); back comes a PackedFit (metrics and the artifact's bytes). The
store stays in this process, so a worker never needs, holds or logs the store's service key.

Trust: a worker runs inside the trust boundary. Its results are unpickled in this process, which holds the
store's service key and ML_ARTIFACT_KEY, and the bundle bytes it returns are signed here. So the job only
talks to a scheduler over `tls://` with mutual TLS configured through Dask's own settings
(`distributed.comm.tls.ca-file`, `.client.cert`, `.client.key`, `distributed.comm.require-encryption`), and
refuses a plain `tcp://` address (or a bare host:port) unless ML_DASK_ALLOW_INSECURE=1 (`check_dask_address`).

A worker that dies mid-task: the scheduler reschedules its tasks on the other workers (up to
`distributed.scheduler.allowed-failures` deaths per task, default 3; past that the pair fails with
`KilledWorker` in one line). If no worker is left for `dask_no_worker_timeout_s`, the pairs still waiting fail
with one line. Artifacts and rows are written by this process after a task succeeded, so a dead worker leaves
nothing half-written.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, TypeVar

from ml.src.training.executor_base import ExecutorError, PairExecutor

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("ml.training")

T = TypeVar("T")


class InsecureDaskAddress(ValueError):
    """A Dask address the job must not use: plain TCP without ML_DASK_ALLOW_INSECURE, or TLS without certs."""


TLS_SETTINGS = (
    "distributed.comm.tls.ca-file",
    "distributed.comm.tls.client.cert",
)


def check_dask_address(address: str, allow_insecure: bool = False) -> str:
    """The address, stripped, if the job may send work there; InsecureDaskAddress (one line) otherwise.

    `tls://` needs the client's certificate and the CA in Dask's settings (mutual TLS). Anything else
    (`tcp://`, `ws://`, a bare host:port, which Dask reads as tcp) is refused unless `allow_insecure`.
    """
    address = address.strip()
    scheme = address.split("://", 1)[0].lower() if "://" in address else "tcp"
    if scheme != "tls":
        if allow_insecure:
            log.warning("Dask scheduler %s without TLS (ML_DASK_ALLOW_INSECURE=1)", address)
            return address
        raise InsecureDaskAddress(
            f"Dask address {address!r} is not TLS: whoever reaches a plain {scheme}:// scheduler can run code in "
            "this job and get its bytes signed; use tls:// with mutual TLS (distributed.comm.tls.* settings, "
            "see docs/scaling-out.md), or set ML_DASK_ALLOW_INSECURE=1 on a trusted network"
        )
    import dask.config

    missing = [name for name in TLS_SETTINGS if not dask.config.get(name, None)]
    if missing:
        env = ", ".join("DASK_" + n.upper().replace(".", "__").replace("-", "_") for n in missing)
        raise InsecureDaskAddress(
            f"Dask address {address!r} is TLS but {', '.join(missing)} is not set ({env}): mutual TLS needs the "
            "CA and this job's certificate"
        )
    return address


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class DaskPairExecutor(PairExecutor):
    kind = "dask"

    def __init__(self, address: str, settings: Settings) -> None:
        try:
            address = check_dask_address(address, settings.dask_allow_insecure)
        except InsecureDaskAddress as exc:
            raise ExecutorError(str(exc)) from None
        from distributed import Client
        from distributed.security import Security

        self.address = address
        self._no_worker_timeout_s = settings.dask_no_worker_timeout_s
        try:
            # Security() reads distributed.comm.tls.* and require-encryption from Dask's settings
            self._client = Client(
                address,
                timeout=settings.dask_connect_timeout_s,
                set_as_default=False,
                security=Security(),
            )
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {_one_line(exc)}") from exc
        try:
            self._client.wait_for_workers(1, timeout=settings.dask_connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            self._client.close()
            raise ExecutorError(
                f"the Dask scheduler at {address} has no worker after {settings.dask_connect_timeout_s:g} s"
            ) from exc
        workers = self._client.scheduler_info(n_workers=-1)["workers"]
        self._slots = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
        self._n_workers = len(workers)
        self._lock = threading.Lock()
        self._outstanding: dict[Future[Any], Any] = {}  # our future -> Dask's
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch_workers, name="dask-watchdog", daemon=True)
        self._watchdog.start()
        log.info("Dask scheduler %s: %d worker(s), %d thread(s)", address, self._n_workers, self._slots)

    @property
    def slots(self) -> int:
        return self._slots

    def submit(self, fn: Callable[..., T], /, *args: Any, key: str | None = None) -> Future[T]:
        outer: Future[T] = Future()
        task_key = f"{key or getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:12]}"
        # pure=False: every pair is its own task, never deduplicated; the arguments travel inside the task,
        # so the scheduler can rerun it elsewhere when a worker dies (scattered data would die with it)
        dfut = self._client.submit(fn, *args, key=task_key, pure=False)
        with self._lock:
            self._outstanding[outer] = dfut

        def done(f: Any) -> None:
            with self._lock:
                self._outstanding.pop(outer, None)
            if outer.done():
                return
            try:
                if f.status == "finished":
                    outer.set_result(f.result())
                elif f.status == "cancelled":
                    outer.set_exception(CancelledError(f"Dask task {task_key} was cancelled"))
                else:
                    exc = f.exception()
                    if type(exc).__name__ == "KilledWorker":  # say what happened, in the first line
                        exc = ExecutorError(f"KilledWorker: {_one_line(exc).split(': ', 1)[-1]}")
                    outer.set_exception(exc)
            except BaseException as exc:  # the result could not be fetched (the scheduler went away)
                if not outer.done():
                    outer.set_exception(exc)

        dfut.add_done_callback(done)
        return outer

    def _watch_workers(self) -> None:
        """Fail what is still waiting when the cluster has had no worker for the configured time."""
        empty_since: float | None = None
        while not self._stop.wait(1.0):
            try:
                n = len(self._client.scheduler_info(n_workers=-1)["workers"])
            except Exception:  # the scheduler itself is gone: count it as no worker
                n = 0
            if n:
                empty_since = None
                continue
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since < self._no_worker_timeout_s:
                continue
            with self._lock:
                stuck = list(self._outstanding.items())
                self._outstanding.clear()
            for outer, dfut in stuck:
                dfut.cancel()
                if not outer.done():
                    outer.set_exception(
                        ExecutorError(f"no Dask worker at {self.address} for {self._no_worker_timeout_s:g} s")
                    )
            empty_since = None

    def close(self, cancel: bool = False) -> None:
        self._stop.set()
        if cancel:
            with self._lock:
                futures = list(self._outstanding.values())
            if futures:
                self._client.cancel(futures)
        self._watchdog.join(timeout=5)
        self._client.close()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "slots": self.slots, "workers": self._n_workers, "address": self.address}
