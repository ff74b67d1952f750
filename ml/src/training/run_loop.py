"""The run loop: record a run, take its leases, train its pairs, record the outcome.

prepare (store I/O, in this process) -> fit + pack (worker.fit_task, on whatever executor the run uses: this
process, a local pool or a Dask cluster) -> persist (here). A pair that fails is recorded with a one-line reason and the others go on. Bookkeeping problems (retention,
heartbeats, sweeps, a lost reply reconciled) are recorded as the run's warnings and never stop it, and every
way out of a run (done, interrupted, a second Ctrl-C, an unexpected exception) writes its final status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import Settings
from ml.src.data.records import RunOutcome, RunRecord
from ml.src.data.store import StoreError, TrainingStore
from ml.src.inference.outcomes import fill_outcomes_quietly
from ml.src.monitoring.thresholds import thresholds_from_settings
from ml.src.training.artifacts import ArtifactError, ensure_models_dir, sweep_orphan_bundles, sweep_temp_files
from ml.src.training.executors import ExecutorError, PairExecutor, open_executor, worker_count
from ml.src.training.leases import LeaseRenewer, acquire_run_leases, holder_name, lease_name
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
from ml.src.training.registry import decide_promotion, prune_versions
from ml.src.training.run_report import RunReport
from ml.src.training.stop import request_stop, stop_requested
from ml.src.training.universe import PairOptions, PlannedPair, cross, named_pairs
from ml.src.training.worker import FitSpec, PackedFit, fit_task, library_versions, secret_free

__all__ = ["finish_run", "run_job", "start_run", "train_pairs", "worker_count"]

log = logging.getLogger("ml.training")


# ------------------------------------------------------------------------------------------------- helpers
def utcnow() -> datetime:
    return datetime.now(UTC)


def git_sha() -> str | None:
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def one_line(exc: BaseException) -> str:
    """An exception as one line for the ledger (its first line; the traceback goes to the log)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------- run
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
    there are enough pairs, else this process) and closed at the end. A pair that fails is recorded as failed and the others go on. A pair of the universe (not explicit) with no
    bars or too little history is recorded as skipped. Bookkeeping problems go to `warn` (default: the log).
    """
    total = len(requests)
    results: dict[int, PairResult] = {}
    done = 0

    def note(message: str) -> None:
        if warn is not None:
            warn(message)
        else:
            log.warning("%s", message)

    def finish(i: int, result: PairResult) -> None:
        nonlocal done
        results[i] = result
        if result.status != "succeeded":
            try:
                store.record_result(result.to_record(run_id))
            except StoreError as exc:
                note(f"{result.symbol}/{result.timeframe}: could not record the {result.status} pair: {exc}")
        done += 1
        if progress:
            progress(done, total, result)

    def persist(i: int, prep: PreparedPair, fitted: PackedFit, t0: float) -> None:
        req = prep.request
        try:
            decision = decide_promotion(store, prep, fitted, settings)
            result = persist_pair(
                store,
                prep,
                fitted,
                run_id=run_id,
                models_dir=settings.models_dir,
                duration_s=time.perf_counter() - t0,
                promotion=decision,
                artifact_key=(
                    settings.artifact_key.get_secret_value() if settings.artifact_key is not None else None
                ),
                warn=note,
            )
        except (StoreError, OSError, ArtifactError) as exc:
            result = failed_result(req, f"{req.symbol}/{req.timeframe}: {exc}", time.perf_counter() - t0)
        else:
            result.worker = {"id": fitted.worker, "peak_rss_mb": round(fitted.worker_peak_rss_mb, 1)}
            retention = prune_versions(
                store, req.symbol, req.timeframe, settings.keep_versions, settings.models_dir
            )
            for problem in retention.errors:
                note(problem)
            log.debug(
                "%s/%s: %s (%s); %d old version(s) pruned",
                req.symbol,
                req.timeframe,
                "champion" if decision.promote else "challenger",
                decision.reason,
                retention.pruned,
            )
        finish(i, result)

    def fit_failed(i: int, req: PairRequest, exc: BaseException, t0: float) -> None:
        log.error("%s/%s: fit failed", req.symbol, req.timeframe, exc_info=exc)
        reason = f"{req.symbol}/{req.timeframe}: fit failed: {one_line(exc)}"
        finish(i, failed_result(req, reason, time.perf_counter() - t0))

    def prepare(i: int, req: PairRequest) -> tuple[PreparedPair | None, float]:
        t0 = time.perf_counter()
        try:
            reason = no_new_bars_reason(store, req)
            if reason is not None:
                finish(i, skipped_result(req, reason, time.perf_counter() - t0))
                return None, t0
            fill_outcomes_quietly(store, req.symbol, req.timeframe)  # new bars may realise earlier forecasts
            prep = prepare_pair(store, req, settings)
            for line in prep.notes:  # e.g. a context symbol without bars: the pair trains without it
                note(line)
            return prep, t0
        except PairSkipped as exc:  # some bars, fewer than the minimum history: nothing to fix, wait for bars
            finish(i, skipped_result(req, str(exc), time.perf_counter() - t0))
        except NotEnoughHistory as exc:
            if req.explicit:  # a pair the user named: they should hear it has nothing to train on
                horizon = settings.timeframes[req.timeframe].horizon_bars
                finish(i, failed_result(req, str(exc), time.perf_counter() - t0, horizon))
            else:  # a pair of the universe (--all, the scheduler): nothing to train yet
                finish(i, skipped_result(req, str(exc), time.perf_counter() - t0))
        except (PairFailure, StoreError) as exc:
            horizon = settings.timeframes[req.timeframe].horizon_bars
            finish(i, failed_result(req, str(exc), time.perf_counter() - t0, horizon))
        except Exception as exc:  # a bug must not stop the other pairs; the reason still gets recorded
            log.exception("%s/%s: unexpected error while preparing", req.symbol, req.timeframe)
            finish(
                i,
                failed_result(
                    req,
                    f"{req.symbol}/{req.timeframe}: {type(exc).__name__}: {one_line(exc)}",
                    time.perf_counter() - t0,
                ),
            )
        return None, t0

    own = executor is None
    pool = executor or open_executor(settings, workers=workers, n_pairs=total)
    # what travels to the workers: the prepared arrays and secret-free settings, never the store or a key
    spec = FitSpec(
        settings=secret_free(settings), run_id=run_id, n_threads=1, compress=settings.artifact_compress
    )
    pending: dict[Future[PackedFit], tuple[int, PreparedPair, float]] = {}

    def collect(block: bool) -> None:
        if not pending:
            return
        ready, _ = wait(list(pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in sorted(ready, key=lambda f: pending[f][0]):
            i, prep, t0 = pending.pop(fut)
            try:
                packed = fut.result()
            except Exception as exc:
                fit_failed(i, prep.request, exc, t0)
                continue
            persist(i, prep, packed, t0)

    try:
        for i, req in enumerate(requests):
            if stop_requested():
                break
            prep, t0 = prepare(i, req)
            if prep is not None:
                key = f"fit-{req.symbol}-{req.timeframe}"
                pending[pool.submit(fit_task, prep, spec, key=key)] = (i, prep, t0)
            collect(block=False)
            # at most 2 prepared pairs per slot in flight: bounded memory here, and no worker waits for work
            while len(pending) >= 2 * pool.slots:
                collect(block=True)
        while pending:
            collect(block=True)
    finally:
        if own:
            pool.close(cancel=bool(pending))
    return [results[i] for i in sorted(results)]


def start_run(store: TrainingStore, settings: Settings, scope: dict[str, Any], trigger: str) -> RunReport:
    config = {**settings.public_dict(), "scope": scope}
    run = RunRecord(
        run_id=str(uuid.uuid4()),
        started_at=utcnow(),
        trigger=trigger,
        host=socket.gethostname(),
        pid=os.getpid(),
        git_sha=git_sha(),
        package_versions=library_versions(),
        config=config,
        config_hash=config_hash(config),
        scope=scope,
    )
    store.start_run(run)
    return RunReport(run_id=run.run_id, started_at=run.started_at, store=store.name)


def finish_run(store: TrainingStore, report: RunReport, status: str | None = None) -> None:
    report.finished_at = utcnow()
    report.status = status or report.final_status()
    c = report.counts
    outcome = RunOutcome(
        status=report.status,
        finished_at=report.finished_at,
        n_pairs=len(report.results),
        n_succeeded=c["succeeded"],
        n_failed=c["failed"],
        n_skipped=c["skipped"],
        error=report.error,
        warnings=list(report.warnings) or None,
    )
    try:
        store.finish_run(report.run_id, outcome)
    except StoreError as exc:
        log.error("run %s: could not record the run's end: %s", report.run_id, exc)
        report.error = report.error or f"could not record the run's end: {exc}"


def abandon_taken_over(
    store: TrainingStore, taken_over: Sequence[dict[str, Any]], run_id: str, warn: Callable[[str], None]
) -> None:
    """Mark abandoned the still-running runs whose leases this run took (expired, or their process gone)."""
    why = {
        "expired": "its lease expired",
        "holder gone": "its process is gone from this host",
        "finished": "it had finished",
    }
    by_reason: dict[str, list[str]] = {}
    for t in taken_over:
        if t.get("run_id"):
            by_reason.setdefault(str(t.get("reason") or "expired"), []).append(str(t["run_id"]))
    n = 0
    try:
        for reason, ids in by_reason.items():
            if reason != "finished":  # a finished run keeps its final status
                n += store.mark_runs_abandoned(
                    ids, f"abandoned: {why.get(reason, reason)} and run {run_id} took over its lease"
                )
    except StoreError as exc:
        warn(f"could not mark the runs of taken-over leases abandoned: {exc}")
        return
    log.warning("took over %d lease(s); %d run(s) marked abandoned", len(taken_over), n)


def retry_release(store: TrainingStore, names: Sequence[str], holder: str, run_id: str) -> None:
    """Release leases whose release failed during the run, now that its final status is written.

    Should this fail too, the next acquire still takes them over (their run has a final status)."""
    if not names:
        return
    try:
        store.release_leases(names, holder)
        log.info("run %s: released its %d lease(s) on the second try", run_id, len(set(names)))
    except StoreError as exc:
        log.error("run %s: could not release its leases after recording its end: %s", run_id, exc)


def start_sweeps(store: TrainingStore, settings: Settings, run_id: str, warn: Callable[[str], None]) -> None:
    """Bookkeeping at the start of a run; a failure is a warning, never a reason not to train.

    - Runs still `running` whose heartbeat is older than the lease TTL died without recording their end
      (kill -9, power loss, a crash after their leases were released): mark them `abandoned`.
    - Temp files older than the lease TTL were left by a process killed while saving: delete them.
    - Bundles older than the lease TTL that no ledger row names were renamed into place by a process killed
      before its row landed: delete them, and say how many.
    - Publish the monitoring thresholds this job runs with (the model_health view and the report read them).
    """
    ttl = settings.lease_ttl_s
    try:
        dead = store.abandon_stale_runs(
            ttl, f"abandoned: no heartbeat for {ttl} s (lease TTL); swept by run {run_id}", exclude=run_id
        )
        if dead:
            log.warning("marked %d run(s) without a heartbeat abandoned: %s", len(dead), ", ".join(dead))
    except StoreError as exc:
        warn(f"could not sweep stale runs: {exc}")
    removed, errors = sweep_temp_files(settings.models_dir, ttl)
    if removed:
        log.info("removed %d orphan temp file(s) under %s", len(removed), settings.models_dir)
    for problem in errors:
        warn(problem)
    try:
        named = store.artifact_paths()
    except StoreError as exc:  # without the ledger's list, no bundle can be proved an orphan
        warn(f"could not sweep orphan bundles: {exc}")
    else:
        orphans, errors = sweep_orphan_bundles(settings.models_dir, named, ttl)
        if orphans:
            log.warning(
                "removed %d orphan bundle(s) under %s: older than %d s (lease TTL) and named by no ledger row",
                len(orphans),
                settings.models_dir,
                ttl,
            )
        for problem in errors:
            warn(problem)
    try:
        store.publish_monitoring_thresholds(thresholds_from_settings(settings), by=run_id)
    except StoreError as exc:
        warn(f"could not publish the monitoring thresholds: {exc}")


def run_job(
    store: TrainingStore,
    settings: Settings,
    symbols: Sequence[str] = (),
    timeframes: Sequence[str] = (),
    *,
    pairs: Sequence[PlannedPair] | None = None,
    as_of: datetime | None = None,
    lookback_days: float | None = None,
    target_bars: int | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    force: bool = False,
    trigger: str = "manual",
    progress: Callable[[int, int, PairResult], None] | None = None,
    scope_extra: dict[str, Any] | None = None,
) -> RunReport:
    """Record a run, take the leases of its pairs, train them, release the leases, record the outcome.

    The pairs are `pairs` (see universe.py) or else every symbol x timeframe, as named pairs. The models
    directory is checked (writable) before anything is recorded or computed: ArtifactError.
    """
    options = PairOptions(as_of=as_of, lookback_days=lookback_days, target_bars=target_bars, force=force)
    planned = list(pairs) if pairs is not None else named_pairs(cross(symbols, timeframes), options)
    scope = {
        "symbols": list(dict.fromkeys(p.request.symbol for p in planned)),
        "timeframes": list(dict.fromkeys(p.request.timeframe for p in planned)),
        "as_of": as_of.isoformat() if as_of else None,
        "lookback_days": lookback_days,
        "target_bars": target_bars,
        "force": force,
        **(scope_extra or {}),
    }
    ensure_models_dir(settings.models_dir)
    io_start = store.io_seconds
    report = start_run(store, settings, scope, trigger)
    done: dict[int, PairResult] = {}  # planned index -> result, as they finish (kept if the run is cut short)
    total = len(planned)

    def warn(message: str) -> None:
        log.warning("%s", message)
        report.warnings.append(message)

    def tell(i: int, result: PairResult) -> None:
        done[i] = result
        if progress:
            progress(len(done), total, result)

    unreleased: list[str] = []  # leases whose release failed: tried again once the final status is written
    holder = holder_name(report.run_id)
    try:
        start_sweeps(store, settings, report.run_id, warn)
        to_train = [i for i, p in enumerate(planned) if p.status is None]
        requests = [planned[i].request for i in to_train]
        names = [lease_name(r.symbol, r.timeframe) for r in requests]
        if names:
            grant = acquire_run_leases(store, names, holder, settings.lease_ttl_s, report.run_id)
            if not grant.acquired:
                until = grant.expires_at.isoformat() if grant.expires_at else "?"
                report.locked_by = f"lease {grant.name} is held by {grant.holder} until {until}"
                report.error = f"another run is active: {report.locked_by}"
                finish_run(store, report, status="skipped")
                return report
            if grant.taken_over:
                abandon_taken_over(store, grant.taken_over, report.run_id, warn)

        # Pairs decided before training (universe pairs without bars, invalid symbols): recorded as they are.
        for i, p in enumerate(planned):
            if p.status is None:
                continue
            req = p.request
            result = (
                skipped_result(req, p.reason or "skipped", 0.0)
                if p.status == "skipped"
                else failed_result(req, p.reason or "failed", 0.0)
            )
            try:
                store.record_result(result.to_record(report.run_id))
            except StoreError as exc:
                warn(f"{req.symbol}/{req.timeframe}: could not record the {result.status} pair: {exc}")
            tell(i, result)

        def lost(reason: str) -> None:
            log.error("run %s: %s; stopping after the pair in progress", report.run_id, reason)
            report.error = reason
            request_stop()

        if requests:
            n_workers = worker_count(settings, workers, len(requests))
            by_pair = {(r.symbol, r.timeframe): i for i, r in zip(to_train, requests, strict=True)}

            def on_result(n: int, of: int, result: PairResult) -> None:
                tell(by_pair[(result.symbol, result.timeframe)], result)

            try:
                # fits run on a Dask cluster (--dask / ML_DASK_ADDRESS), local processes, or here
                address = dask_address or settings.dask_address
                try:
                    executor = open_executor(
                        settings, workers=n_workers, n_pairs=len(requests), dask_address=address
                    )
                except ExecutorError as exc:
                    report.error = str(exc)
                    log.error("run %s: %s", report.run_id, exc)
                    for i in to_train:
                        req = planned[i].request
                        failed = failed_result(req, f"{req.symbol}/{req.timeframe}: not trained: {exc}", 0.0)
                        try:
                            store.record_result(failed.to_record(report.run_id))
                        except StoreError as again:
                            warn(f"{req.symbol}/{req.timeframe}: could not record the failed pair: {again}")
                        tell(i, failed)
                else:
                    report.executor = executor.describe()
                    log.info(
                        "run %s: %d pair(s) to train (%d recorded without training) on %s (%d slot(s)), %s store",
                        report.run_id,
                        len(requests),
                        total - len(requests),
                        executor.kind,
                        executor.slots,
                        store.name,
                    )
                    with (
                        executor,
                        LeaseRenewer(store, names, holder, settings.lease_ttl_s, lost, report.run_id, warn),
                    ):
                        train_pairs(
                            store,
                            settings,
                            requests,
                            run_id=report.run_id,
                            executor=executor,
                            progress=on_result,
                            warn=warn,
                        )
            finally:
                try:
                    store.release_leases(names, holder)
                except StoreError as exc:  # retried after the final status (below); else they expire
                    warn(f"could not release the run's leases: {exc}")
                    unreleased = names
        report.results = [done[i] for i in sorted(done)]
        if stop_requested():
            report.interrupted = True
            report.error = report.error or f"interrupted after {len(done)} of {total} pair(s)"
        report.store_io_s = store.io_seconds - io_start
        finish_run(store, report, status="interrupted" if report.interrupted else None)
        retry_release(store, unreleased, holder, report.run_id)
    except KeyboardInterrupt:
        # A second Ctrl-C: stop at once, but the run row still says how it ended.
        report.results = [done[i] for i in sorted(done)]
        report.interrupted = True
        report.error = f"aborted by a second interrupt after {len(done)} of {total} pair(s)"
        finish_run(store, report, status="interrupted")
        retry_release(store, unreleased, holder, report.run_id)
        raise
    except Exception as exc:  # a bug or a store failure outside any pair: recorded, never left `running`
        log.exception("run %s failed", report.run_id)
        report.results = [done[i] for i in sorted(done)]
        report.error = f"run failed: {type(exc).__name__}: {one_line(exc)}"
        report.store_io_s = store.io_seconds - io_start
        finish_run(store, report, status="failed")
        retry_release(store, unreleased, holder, report.run_id)
    return report
