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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.settings import Settings
from ml.src.common.stop import request_stop, stop_requested
from ml.src.data.identifiers import IdentifierError, check_pair
from ml.src.data.records import RunOutcome, RunRecord, thresholds_from_settings
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training.artifacts import ArtifactError, ensure_models_dir, sweep_orphan_bundles, sweep_temp_files
from ml.src.training.executors import ExecutorError, PairExecutor, open_executor, worker_count
from ml.src.training.leases import LeaseRenewer, acquire_run_leases, holder_name, lease_name
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
from ml.src.training.registry import decide_promotion, prune_versions
from ml.src.training.run_report import RunReport
from ml.src.training.universe import PairOptions, PlannedPair, cross, named_pairs
from ml.src.training.verdict import apply_fdr_dicts, judge_replay, replay_priors
from ml.src.training.worker import FitSpec, PackedFit, fit_task, library_versions

__all__ = ["finish_run", "run_job", "settle_verdicts", "start_run", "train_pairs", "worker_count"]

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
        for i, req in enumerate(requests):
            if stop_requested():
                break
            prep, t0 = self.prepare(i, req)
            if prep is not None:
                key = f"fit-{req.symbol}-{req.timeframe}"
                self.pending[self.pool.submit(fit_task, prep, spec, key=key)] = (i, prep, t0)
            self.collect(block=False)
            # at most 2 prepared pairs per slot in flight: bounded memory here, and no worker waits for work
            while len(self.pending) >= 2 * self.pool.slots:
                self.collect(block=True)
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


def settle_verdicts(
    store: TrainingStore,
    results: Sequence[PairResult],
    run_id: str,
    fdr: float,
    warn: Callable[[str], None],
) -> int:
    """The run's verdicts under false-discovery control, once its pairs are done.

    First each pair's verdict moves to the densest evidence it has (densest_verdict): the rows of the pair's
    latest finished replay that ends at or before the run's data end, when there is one, else what the pair was
    judged on (walk-forward when folds ran, else the test slice).

    The Benjamini-Hochberg q-values of the succeeded pairs' p-values (apply_fdr: skill needs q <= fdr) replace
    each result's metrics.verdict in memory (what --json and the summary print) and in the ledger, all pairs in
    one store call (record_verdicts: every verdict or none). A store failure is a warning: the ledger then keeps
    the verdicts written with the pairs (q_value null, never skill). Returns the number of pairs settled.
    """
    judged = {
        (r.symbol, r.timeframe): r
        for r in results
        if r.status == "succeeded" and r.metrics and isinstance(r.metrics.get("verdict"), dict)
    }
    if not judged:
        return 0
    for r in judged.values():
        assert r.metrics is not None
        r.metrics["verdict"] = densest_verdict(store, r, r.metrics["verdict"], warn)
    settled = apply_fdr_dicts({k: r.metrics["verdict"] for k, r in judged.items() if r.metrics}, fdr)
    for key, r in judged.items():
        assert r.metrics is not None
        r.metrics["verdict"] = settled[key]
    try:
        store.record_verdicts(run_id, settled)
    except StoreError as exc:
        warn(f"could not record the run's q-values (verdicts stay as written with each pair): {exc}")
    return len(settled)


def densest_verdict(
    store: TrainingStore, result: PairResult, verdict: dict[str, Any], warn: Callable[[str], None]
) -> dict[str, Any]:
    """The pair's verdict on the densest honest evidence: the replay rows of its latest finished replay that
    covers no bar after the run's own data end (basis "replay"), else `verdict` (walk-forward or test) as it
    is. A replay with no realised row, or stored without its steps' priors, leaves `verdict` as it is; so does a
    store failure (a warning)."""
    data_end = (result.split or {}).get("data_end")
    if data_end is None or result.horizon_bars is None:
        return verdict
    try:
        latest = store.latest_replay(result.symbol, result.timeframe, through=pd.Timestamp(data_end))
    except StoreError as exc:
        warn(
            f"{result.symbol}/{result.timeframe}: could not read its latest replay (verdict on {verdict.get('basis')}): {exc}"
        )
        return verdict
    if latest is None or latest.get("horizon_bars") != result.horizon_bars:
        return verdict
    forecasts = latest["forecasts"]
    priors = replay_priors(forecasts, latest.get("steps") or [])
    if priors is None:
        return verdict
    replayed = judge_replay(
        forecasts,
        priors,
        horizon=result.horizon_bars,
        z=float(verdict["z"]),
        fdr=verdict.get("fdr"),
        replay_id=str(latest["replay_id"]),
    )
    if replayed is None:
        return verdict
    return replayed.to_dict()


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


def run_scope(
    planned: Sequence[PlannedPair], options: PairOptions, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """What the run covers, as recorded in its ledger row (and hashed into its config)."""
    return {
        "symbols": list(dict.fromkeys(p.request.symbol for p in planned)),
        "timeframes": list(dict.fromkeys(p.request.timeframe for p in planned)),
        "as_of": options.as_of.isoformat() if options.as_of else None,
        "lookback_days": options.lookback_days,
        "target_bars": options.target_bars,
        "force": options.force,
        **(extra or {}),
    }


@dataclass
class RunSession:
    """One run in the ledger, from its start row to its final status: its leases, the results of its pairs
    as they finish (kept if the run is cut short), its warnings, and the end it records whatever happens."""

    store: TrainingStore
    settings: Settings
    report: RunReport
    planned: list[PlannedPair]
    progress: Callable[[int, int, PairResult], None] | None = None
    done: dict[int, PairResult] = field(default_factory=dict)  # planned index -> result
    names: list[str] = field(default_factory=list)  # the leases this run holds
    unreleased: list[str] = field(default_factory=list)  # release failed: tried again after the final status
    io_start: float = 0.0

    @property
    def run_id(self) -> str:
        return self.report.run_id

    @property
    def holder(self) -> str:
        return holder_name(self.run_id)

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.report.warnings.append(message)

    def tell(self, i: int, result: PairResult) -> None:
        self.done[i] = result
        if self.progress:
            self.progress(len(self.done), len(self.planned), result)

    def record(self, i: int, result: PairResult) -> None:
        """A pair decided without training (or not trained at all): its row, then its place in the report."""
        try:
            self.store.record_result(result.to_record(self.run_id))
        except StoreError as exc:
            req = self.planned[i].request
            self.warn(f"{req.symbol}/{req.timeframe}: could not record the {result.status} pair: {exc}")
        self.tell(i, result)

    def acquire(self, requests: Sequence[PairRequest]) -> bool:
        """Take the leases of the pairs to train; False (the run recorded as skipped) when another run holds one."""
        self.names = [lease_name(r.symbol, r.timeframe) for r in requests]
        if not self.names:
            return True
        grant = acquire_run_leases(
            self.store, self.names, self.holder, self.settings.lease_ttl_s, self.run_id
        )
        if not grant.acquired:
            self.names = []
            until = grant.expires_at.isoformat() if grant.expires_at else "?"
            self.report.locked_by = f"lease {grant.name} is held by {grant.holder} until {until}"
            self.report.error = f"another run is active: {self.report.locked_by}"
            finish_run(self.store, self.report, status="skipped")
            return False
        if grant.taken_over:
            abandon_taken_over(self.store, grant.taken_over, self.run_id, self.warn)
        return True

    def record_decided(self) -> None:
        """Pairs decided before training (universe pairs without bars, invalid symbols): recorded as they are."""
        for i, p in enumerate(self.planned):
            if p.status is not None:
                req = p.request
                result = (
                    skipped_result(req, p.reason or "skipped", 0.0)
                    if p.status == "skipped"
                    else failed_result(req, p.reason or "failed", 0.0)
                )
                try:
                    check_pair(req.symbol, req.timeframe)
                except IdentifierError:
                    # both schemas refuse an invalid identifier (a row of the symbols table written by another
                    # tool): the failure is the run's warning, never a ledger row a reader would build a path from
                    self.warn(
                        f"{result.error} (not recorded in training_results: the ledger holds valid identifiers only)"
                    )
                    self.tell(i, result)
                    continue
                self.record(i, result)

    def lost(self, reason: str) -> None:
        log.error("run %s: %s; stopping after the pair in progress", self.run_id, reason)
        self.report.error = reason
        request_stop()

    def train(self, to_train: list[int], workers: int | None, dask_address: str | None) -> None:
        """Fit the pairs to train on the executor the settings choose, renewing the leases meanwhile."""
        requests = [self.planned[i].request for i in to_train]
        by_pair = {(r.symbol, r.timeframe): i for i, r in zip(to_train, requests, strict=True)}
        try:
            n_workers = worker_count(self.settings, workers, len(requests))
            address = dask_address or self.settings.dask_address  # a Dask cluster, local processes, or here
            try:
                executor = open_executor(
                    self.settings, workers=n_workers, n_pairs=len(requests), dask_address=address
                )
            except ExecutorError as exc:
                self.report.error = str(exc)
                log.error("run %s: %s", self.run_id, exc)
                for i in to_train:
                    req = self.planned[i].request
                    self.record(
                        i, failed_result(req, f"{req.symbol}/{req.timeframe}: not trained: {exc}", 0.0)
                    )
                return
            self.report.executor = executor.describe()
            log.info(
                "run %s: %d pair(s) to train (%d recorded without training) on %s (%d slot(s)), %s store",
                self.run_id,
                len(requests),
                len(self.planned) - len(requests),
                executor.kind,
                executor.slots,
                self.store.name,
            )
            renewer = LeaseRenewer(
                self.store,
                self.names,
                self.holder,
                self.settings.lease_ttl_s,
                self.lost,
                self.run_id,
                self.warn,
            )
            with executor, renewer:
                train_pairs(
                    self.store,
                    self.settings,
                    requests,
                    run_id=self.run_id,
                    executor=executor,
                    progress=lambda n, of, r: self.tell(by_pair[(r.symbol, r.timeframe)], r),
                    warn=self.warn,
                )
        finally:
            self.release()

    def release(self) -> None:
        try:
            self.store.release_leases(self.names, self.holder)
        except StoreError as exc:  # retried after the final status (end); else they expire
            self.warn(f"could not release the run's leases: {exc}")
            self.unreleased = self.names

    def end(self, status: str | None = None, error: str | None = None, settle: bool = True) -> None:
        """Collect the results, settle the verdicts (q-values need every pair), record the final status."""
        report = self.report
        report.results = [self.done[i] for i in sorted(self.done)]
        if settle:
            try:
                settle_verdicts(self.store, report.results, self.run_id, self.settings.verdict_fdr, self.warn)
            except Exception:
                if status != "failed":
                    raise
                log.exception("run %s: could not settle the verdicts", self.run_id)
        if error is not None:
            report.error = error
        report.store_io_s = self.store.io_seconds - self.io_start
        finish_run(self.store, report, status=status)
        retry_release(self.store, self.unreleased, self.holder, self.run_id)


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
    ensure_models_dir(settings.models_dir)
    io_start = store.io_seconds
    report = start_run(store, settings, run_scope(planned, options, scope_extra), trigger)
    session = RunSession(store, settings, report, planned, progress, io_start=io_start)
    total = len(planned)
    try:
        start_sweeps(store, settings, report.run_id, session.warn)
        to_train = [i for i, p in enumerate(planned) if p.status is None]
        if not session.acquire([planned[i].request for i in to_train]):
            return report
        session.record_decided()
        if to_train:
            session.train(to_train, workers, dask_address)
        if stop_requested():
            report.interrupted = True
            report.error = report.error or f"interrupted after {len(session.done)} of {total} pair(s)"
        session.end(status="interrupted" if report.interrupted else None)
    except KeyboardInterrupt:
        # A second Ctrl-C: stop at once, but the run row still says how it ended.
        report.interrupted = True
        error = f"aborted by a second interrupt after {len(session.done)} of {total} pair(s)"
        session.end(status="interrupted", error=error, settle=False)
        raise
    except Exception as exc:  # a bug or a store failure outside any pair: recorded, never left `running`
        log.exception("run %s failed", report.run_id)
        # the pairs that did succeed still get their q-values (among themselves)
        session.end(status="failed", error=f"run failed: {type(exc).__name__}: {one_line(exc)}")
    return report
