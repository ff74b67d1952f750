"""Where the per-pair fits run: one interface, three places.

* `InProcessExecutor`: this process, one pair after another. For runs too small to pay for a pool (see
  `Settings.pool_min_pairs`), for `--workers 1` and for the Python API.
* `ProcessPoolPairExecutor`: local worker processes forked from a server that imported the learners once.
* `dask_executor.DaskPairExecutor`: the workers of a Dask distributed cluster (`--dask ADDRESS`).

`run_loop.train_pairs` submits `worker.fit_task(prep, spec)` and waits on the `concurrent.futures.Future` every
executor returns, by the same code whichever executor it is.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, TypeVar

from ml.src.training.executor_base import ExecutorError, PairExecutor

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("ml.training")

T = TypeVar("T")

__all__ = [
    "ExecutorError",
    "InProcessExecutor",
    "PairExecutor",
    "ProcessPoolPairExecutor",
    "open_executor",
    "worker_count",
]


class InProcessExecutor(PairExecutor):
    """Runs each task at once, here; the returned future is already done."""

    kind = "in-process"

    @property
    def slots(self) -> int:
        return 1

    def submit(self, fn: Callable[..., T], /, *args: Any, key: str | None = None) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # the run loop records it as the pair's failure
            fut.set_exception(exc)
        return fut


# What the fork server imports before forking workers: the learners, and the guard that ends it with the job.
ORPHAN_GUARD = "ml.src.training.orphan_guard"


def _forkserver_preload() -> list[str]:
    from ml.src.training.worker import PRELOAD_MODULES

    return [*PRELOAD_MODULES, ORPHAN_GUARD]


def _init_worker(job_pid: int) -> None:
    """Pool worker start: ignore Ctrl-C, and exit when the job (or the fork server) dies (see orphan_guard)."""
    from ml.src.training.orphan_guard import die_with_parent, watch_process

    # Ctrl-C goes to the whole process group: the parent decides (finish the pair, then stop), not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    watch_process(job_pid)


def _chain(inner: Future[T], outer: Future[T]) -> None:
    def copy(f: Future[T]) -> None:
        if f.cancelled():
            outer.cancel()
        elif f.exception() is not None:
            outer.set_exception(f.exception())
        else:
            outer.set_result(f.result())

    inner.add_done_callback(copy)


class ProcessPoolPairExecutor(PairExecutor):
    """Local worker processes, one thread each, forked from a server that preloaded the learners.

    The workers are started by a background thread, so the main process goes on reading bars and computing
    features while the fork server imports scikit-learn and LightGBM (~1.5 s of CPU) on another core; tasks
    submitted before the workers are up wait in a local queue.
    """

    kind = "process-pool"

    def __init__(self, workers: int) -> None:
        from ml.src.training.worker import warm_up

        self._workers = max(1, workers)
        ctx = None
        if sys.platform != "win32":
            ctx = get_context("forkserver")
            ctx.set_forkserver_preload(_forkserver_preload())
        self._pool = ProcessPoolExecutor(
            max_workers=self._workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
        )
        self._lock = threading.Lock()
        self._ready = False
        self._queued: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._warm_error: BaseException | None = None
        self._warm_thread = threading.Thread(
            target=self._warm, args=(warm_up,), name="pool-start", daemon=True
        )
        self._warm_thread.start()

    @property
    def slots(self) -> int:
        return self._workers

    def _warm(self, warm_up: Callable[[], str]) -> None:
        try:
            # one no-op per worker: the pool spawns a process per submit while none is idle
            for _ in range(self._workers):
                self._pool.submit(warm_up)
        except BaseException as exc:  # a broken pool: every queued task fails with this error
            self._warm_error = exc
        with self._lock:
            self._ready = True
            queued, self._queued = self._queued, []
        for outer, fn, args in queued:
            self._forward(outer, fn, args)

    def _forward(self, outer: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._warm_error is not None:
            outer.set_exception(self._warm_error)
            return
        try:
            _chain(self._pool.submit(fn, *args), outer)
        except Exception as exc:
            outer.set_exception(exc)

    def submit(self, fn: Callable[..., T], /, *args: Any, key: str | None = None) -> Future[T]:
        outer: Future[T] = Future()
        with self._lock:
            if not self._ready:
                self._queued.append((outer, fn, args))
                return outer
        self._forward(outer, fn, args)
        return outer

    def close(self, cancel: bool = False) -> None:
        self._warm_thread.join()
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "slots": self.slots, "start_method": "forkserver"}


def start_pool_server() -> None:
    """Start the fork server that local pool workers fork from, without waiting for it.

    It imports the learners (~2 s of CPU) on another core while this process is still importing pandas,
    opening the store and reading bars; a pool opened later reuses it. Called by the command line as soon as
    its flags say a local pool is likely; harmless if the run ends up fitting in-process.
    """
    if sys.platform == "win32":
        return
    from multiprocessing import forkserver

    get_context("forkserver").set_forkserver_preload(_forkserver_preload())
    forkserver.ensure_running()


def worker_count(settings: Settings, requested: int | None, n_pairs: int) -> int:
    """Local worker processes: --workers, else ML_WORKERS; 0 = one per core; never more than pairs."""
    n = requested if requested is not None else settings.workers
    if n <= 0:
        n = os.cpu_count() or 1
    return max(1, min(n, n_pairs))


def open_executor(
    settings: Settings, *, workers: int, n_pairs: int, dask_address: str | None = None
) -> PairExecutor:
    """The executor for a run: Dask when an address is given, else a local pool when it pays, else here.

    A local pool pays once a run has at least `settings.pool_min_pairs` pairs (measured: below that, the fork
    server's import of the learners costs more wall time than a second core saves).
    """
    if dask_address:
        from ml.src.training.dask_executor import DaskPairExecutor

        return DaskPairExecutor(dask_address, settings)
    if workers <= 1 or n_pairs < settings.pool_min_pairs:
        return InProcessExecutor()
    return ProcessPoolPairExecutor(workers)
