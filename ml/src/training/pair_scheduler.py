"""The pairs of a run in flight: each prepared here (store I/O), fitted and packed on the executor, persisted
here as its fit comes back (PairScheduler; train_pairs opens an executor for a call that brings none)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from config.settings import Settings
from ml.src.common.stop import stop_requested
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training.artifacts import ArtifactError
from ml.src.training.executors import PairExecutor, open_executor
from ml.src.training.outcomes import fill_outcomes_quietly
from ml.src.training.pair_result import PairRequest, PairResult, failed_result, skipped_result
from ml.src.training.pipeline import (
    NotEnoughHistory,
    PairFailure,
    PairSkipped,
    PreparedPair,
    no_new_bars_reason,
    persist_pair,
    prepare_pair,
)
from ml.src.training.pooled_pair import pool_peers
from ml.src.training.registry import decide_promotion, prune_versions
from ml.src.training.worker import FitSpec, PackedFit, fit_pooled_task, fit_task

log = logging.getLogger("ml.training")


def one_line(exc: BaseException) -> str:
    """An exception as one line for the ledger (its first line; the traceback goes to the log)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------- run
@dataclass
class PairScheduler:
    """The pairs of a run in flight: each is prepared here (store I/O), fitted and packed on the executor, and
    persisted here as its fit comes back. A pair's problem is its own result; the others go on."""

    store: TrainingStore
    settings: Settings
    run_id: str
    pool: PairExecutor
    total: int
    progress: Callable[[int, int, PairResult], None] | None = None
    warn: Callable[[str], None] | None = None
    results: dict[int, PairResult] = field(default_factory=dict)
    pending: dict[Future[PackedFit], tuple[int, PreparedPair, float]] = field(default_factory=dict)

    def run(self, requests: Sequence[PairRequest]) -> list[PairResult]:
        # what travels to the workers: the prepared arrays and the fit settings, never the store or a key
        spec = FitSpec(
            settings=self.settings.fit,
            run_id=self.run_id,
            n_threads=1,
            compress=self.settings.artifact_compress,
        )
        if self.settings.pooled_models:
            return self.run_pooled(requests, spec)
        for i, req in enumerate(requests):
            if stop_requested():
                break
            prep, t0 = self.prepare(i, req)
            if prep is not None:
                key = f"fit-{req.symbol}-{req.timeframe}"
                self.pending[self.pool.submit(fit_task, prep, spec, key=key)] = (i, prep, t0)
            self.collect(block=False)
            self.bound_in_flight()
        while self.pending:
            self.collect(block=True)
        return [self.results[i] for i in sorted(self.results)]

    def bound_in_flight(self) -> None:
        # at most 2 prepared pairs per slot in flight: bounded memory here, and no worker waits for work
        while len(self.pending) >= 2 * self.pool.slots:
            self.collect(block=True)

    def run_pooled(self, requests: Sequence[PairRequest], spec: FitSpec) -> list[PairResult]:
        """ML_POOLED_MODELS: every pair is prepared first, since a pair's pooled candidate learns from the
        other pairs of its timeframe (their rows known by its train end: pooled_pair.py); then each pair's
        local and pooled fits run on the executor as one task, and the winner is persisted."""
        prepared: list[tuple[int, PreparedPair, float]] = []
        for i, req in enumerate(requests):
            if stop_requested():
                break
            prep, t0 = self.prepare(i, req)
            if prep is not None:
                prepared.append((i, prep, t0))
        preps = [p for _, p, _ in prepared]
        for i, prep, t0 in prepared:
            if stop_requested():
                break
            req = prep.request
            peers = pool_peers(prep, preps)
            key = f"fit-{req.symbol}-{req.timeframe}"
            self.pending[self.pool.submit(fit_pooled_task, prep, peers, spec, key=key)] = (i, prep, t0)
            self.collect(block=False)
            self.bound_in_flight()
        while self.pending:
            self.collect(block=True)
        return [self.results[i] for i in sorted(self.results)]

    def note(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)
        else:
            log.warning("%s", message)

    def finish(self, i: int, result: PairResult) -> None:
        self.results[i] = result
        if result.status != "succeeded":
            try:
                self.store.record_result(result.to_record(self.run_id))
            except StoreError as exc:
                self.note(
                    f"{result.symbol}/{result.timeframe}: could not record the {result.status} pair: {exc}"
                )
        if self.progress:
            self.progress(len(self.results), self.total, result)

    def prepare(self, i: int, req: PairRequest) -> tuple[PreparedPair | None, float]:
        t0 = time.perf_counter()
        try:
            reason = no_new_bars_reason(self.store, req)
            if reason is not None:
                self.finish(i, skipped_result(req, reason, time.perf_counter() - t0))
                return None, t0
            fill_outcomes_quietly(self.store, req.symbol, req.timeframe)  # new bars may realise forecasts
            prep = prepare_pair(self.store, req, self.settings)
            for line in prep.notes:  # e.g. a context symbol without bars: the pair trains without it
                self.note(line)
            return prep, t0
        except Exception as exc:
            self.finish(i, self.unprepared(req, exc, time.perf_counter() - t0))
        return None, t0

    def unprepared(self, req: PairRequest, exc: Exception, elapsed: float) -> PairResult:
        """The result of a pair that could not be prepared: skipped when it only lacks bars (and nobody named it)."""
        horizon = self.settings.timeframes[req.timeframe].horizon_bars
        if isinstance(exc, PairSkipped):  # some bars, fewer than the minimum history: wait for bars
            return skipped_result(req, str(exc), elapsed)
        if isinstance(exc, NotEnoughHistory):
            # a pair the user named should hear it has nothing to train on; one of the universe is skipped
            if req.explicit:
                return failed_result(req, str(exc), elapsed, horizon)
            return skipped_result(req, str(exc), elapsed)
        if isinstance(exc, PairFailure | StoreError):
            return failed_result(req, str(exc), elapsed, horizon)
        # a bug must not stop the other pairs; the reason still gets recorded
        log.error("%s/%s: unexpected error while preparing", req.symbol, req.timeframe, exc_info=exc)
        return failed_result(
            req, f"{req.symbol}/{req.timeframe}: {type(exc).__name__}: {one_line(exc)}", elapsed
        )

    def collect(self, block: bool) -> None:
        if not self.pending:
            return
        ready, _ = wait(list(self.pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in sorted(ready, key=lambda f: self.pending[f][0]):
            i, prep, t0 = self.pending.pop(fut)
            try:
                packed = fut.result()
            except Exception as exc:
                req = prep.request
                log.error("%s/%s: fit failed", req.symbol, req.timeframe, exc_info=exc)
                reason = f"{req.symbol}/{req.timeframe}: fit failed: {one_line(exc)}"
                self.finish(i, failed_result(req, reason, time.perf_counter() - t0))
                continue
            self.finish(i, self.persist(prep, packed, t0))

    def persist(self, prep: PreparedPair, fitted: PackedFit, t0: float) -> PairResult:
        req, settings = prep.request, self.settings
        try:
            decision = decide_promotion(self.store, prep, fitted, settings)
            result = persist_pair(
                self.store,
                prep,
                fitted,
                run_id=self.run_id,
                models_dir=settings.models_dir,
                duration_s=time.perf_counter() - t0,
                promotion=decision,
                artifact_key=(
                    settings.artifact_key.get_secret_value() if settings.artifact_key is not None else None
                ),
                warn=self.note,
            )
        except (StoreError, OSError, ArtifactError) as exc:
            return failed_result(req, f"{req.symbol}/{req.timeframe}: {exc}", time.perf_counter() - t0)
        result.worker = {"id": fitted.worker, "peak_rss_mb": round(fitted.worker_peak_rss_mb, 1)}
        retention = prune_versions(
            self.store, req.symbol, req.timeframe, settings.keep_versions, settings.models_dir
        )
        for problem in retention.errors:
            self.note(problem)
        log.debug(
            "%s/%s: %s (%s); %d old version(s) pruned",
            req.symbol,
            req.timeframe,
            "champion" if decision.promote else "challenger",
            decision.reason,
            retention.pruned,
        )
        return result


def train_pairs(
    store: TrainingStore,
    settings: Settings,
    requests: Sequence[PairRequest],
    *,
    run_id: str,
    workers: int = 1,
    executor: PairExecutor | None = None,
    progress: Callable[[int, int, PairResult], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[PairResult]:
    """Prepare each pair (store I/O, here), fit and pack it on the executor, persist it (here).

    Without an `executor` one is opened for the call (open_executor: a local pool of `workers` processes when
    there are enough pairs, else this process) and closed at the end. A pair that fails is recorded as failed
    and the others go on. A pair of the universe (not explicit) with no bars or too little history is recorded
    as skipped. Bookkeeping problems go to `warn` (default: the log).
    """
    pool = executor or open_executor(settings, workers=workers, n_pairs=len(requests))
    batch = PairScheduler(store, settings, run_id, pool, len(requests), progress, warn)
    try:
        return batch.run(requests)
    finally:
        if executor is None:
            pool.close(cancel=bool(batch.pending))
