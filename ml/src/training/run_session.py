"""One run in the ledger, from its start row to its final status: the row, the start-of-run sweeps, its leases,
the pairs decided without training, and the end it records whatever happens (RunSession)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import Settings
from ml.src.common.stop import request_stop
from ml.src.data.identifiers import IdentifierError, check_pair
from ml.src.data.records import RunOutcome, RunRecord, thresholds_from_settings
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training.artifacts import sweep_orphan_bundles, sweep_temp_files
from ml.src.training.executors import ExecutorError, open_executor, worker_count
from ml.src.training.leases import LeaseRenewer, acquire_run_leases, holder_name, lease_name
from ml.src.training.pair_result import PairRequest, PairResult, failed_result, skipped_result
from ml.src.training.pair_scheduler import train_pairs
from ml.src.training.run_report import RunReport
from ml.src.training.universe import PairOptions, PlannedPair
from ml.src.training.worker import library_versions

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
    # settles the run's verdicts once its pairs are done (run_loop.settle_verdicts); None: never
    settle_verdicts: (
        Callable[[TrainingStore, list[PairResult], str, float, Callable[[str], None]], int] | None
    ) = None

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
        if settle and self.settle_verdicts is not None:
            try:
                self.settle_verdicts(
                    self.store, report.results, self.run_id, self.settings.verdict_fdr, self.warn
                )
            except Exception:
                if status != "failed":
                    raise
                log.exception("run %s: could not settle the verdicts", self.run_id)
        if error is not None:
            report.error = error
        report.store_io_s = self.store.io_seconds - self.io_start
        finish_run(self.store, report, status=status)
        retry_release(self.store, self.unreleased, self.holder, self.run_id)
