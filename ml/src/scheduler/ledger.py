"""Scheduled runs that did not happen (missed, overlapping) or crashed become rows in the run ledger."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
    SchedulerEvent,
)

from config.settings import Settings
from ml.src.data.records import RunOutcome, RunRecord
from ml.src.data.store import TrainingStore
from ml.src.data.store_factory import open_store
from ml.src.scheduler.jobs import JobSpec

log = logging.getLogger("ml.scheduler")

StoreFactory = Callable[[], TrainingStore]


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def ledger_entries(event: JobEvent, grace_hours: float) -> list[tuple[datetime, str, str]]:
    """(scheduled_for, status, error) per run the event says did not happen or failed; [] for other events."""
    if event.code == EVENT_JOB_MISSED and isinstance(event, JobExecutionEvent):
        when = event.scheduled_run_time
        reason = f"missed: scheduled for {_utc_text(when)} UTC, more than {grace_hours:g} h late (misfire_grace_time)"
        return [(when, "skipped", reason)]
    if event.code == EVENT_JOB_ERROR and isinstance(event, JobExecutionEvent):
        return [(event.scheduled_run_time, "failed", _one_line(event.exception))]
    if event.code == EVENT_JOB_MAX_INSTANCES and isinstance(event, JobSubmissionEvent):
        return [
            (
                when,
                "skipped",
                f"skipped: scheduled for {_utc_text(when)} UTC while the previous {event.job_id} run was still "
                "running (max_instances=1)",
            )
            for when in event.scheduled_run_times
        ]
    return []


class RunLedgerListener:
    """Scheduler listener: a missed, overlapping or crashed scheduled run becomes a row in the run ledger.

    The store is opened per event (events are rare; a connection opened days earlier may be stale) and closed
    again. A store failure is logged, never raised.
    """

    MASK = EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES

    def __init__(
        self,
        settings: Settings,
        specs: Mapping[str, JobSpec],
        store_factory: StoreFactory | None = None,
    ) -> None:
        self.settings = settings
        self.specs = dict(specs)
        self.store_factory: StoreFactory = store_factory or (lambda: open_store(settings))
        self._lock = threading.Lock()

    def __call__(self, event: SchedulerEvent) -> None:
        if not isinstance(event, JobEvent) or event.job_id not in self.specs:
            return  # only the training groups' fires are runs of the ledger
        try:
            self.record(event)
        except Exception as exc:
            log.error("could not record the event in the run ledger: %s", exc, extra={"job_id": event.job_id})

    def record(self, event: JobEvent) -> list[str]:
        """Write the event's ledger rows; returns their run ids. Raises on a store failure."""
        entries = ledger_entries(event, self.settings.schedule_misfire_grace_hours)
        if not entries:
            return []
        extra = {"job_id": event.job_id}
        for _, status, error in entries:
            level = logging.ERROR if status == "failed" else logging.WARNING
            log.log(level, "%s; recording a '%s' scheduled run", error, status, extra=extra)
        spec = self.specs.get(event.job_id)
        timeframes = list(spec.timeframes) if spec else []
        run_ids: list[str] = []
        with self._lock, self.store_factory() as store:
            for when, status, error in entries:
                run_id = str(uuid.uuid4())
                store.start_run(
                    RunRecord(
                        run_id=run_id,
                        started_at=when.astimezone(UTC),
                        status=status,
                        trigger="scheduled",
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        scope={
                            "job_id": event.job_id,
                            "timeframes": timeframes,
                            "scheduled_for": when.astimezone(UTC).isoformat(),
                        },
                    )
                )
                store.finish_run(
                    run_id, RunOutcome(status=status, finished_at=datetime.now(UTC), error=error)
                )
                run_ids.append(run_id)
        log.info("recorded run(s) %s", ", ".join(run_ids), extra=extra)
        return run_ids
