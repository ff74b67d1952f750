"""The nightly training schedule: APScheduler cron jobs that run the ensemble training job in-process.

    python -m ml.src.scheduler                   # run for ever (SIGTERM / Ctrl-C: finish the pair, stop)
    python -m ml.src.scheduler --print-schedule  # the jobs and their next fire times; needs no store
    python -m ml.src.scheduler --once            # run every group now, one after another

Two jobs, both in UTC, from the settings' cron strings:

* `train-daily` (ML_SCHEDULE_DAILY_CRON, default `30 22 * * mon-fri`): the intraday and daily timeframes after
  the US close on trading weekdays; with ML_SCHEDULE_SKIP_HOLIDAYS it does not fire on NYSE full-day holidays.
* `train-weekly` (ML_SCHEDULE_WEEKLY_CRON, default `0 14 * * sat`): the weekly timeframes once a week.

A fire more than ML_SCHEDULE_MISFIRE_GRACE_HOURS late (the host was asleep, or the previous run was still going)
does not run; it is recorded in the run ledger as a 'skipped' scheduled run, and a job that raises is recorded
as 'failed'. Runs themselves are recorded by the training job. The jobs share one worker thread, so they never
train side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_SCHEDULER_STARTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
    SchedulerEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from pydantic import ValidationError

from config.settings import Settings, settings_error_line
from ml.src.data.records import RunOutcome, RunRecord
from ml.src.data.store import TrainingStore, open_store
from ml.src.scheduler.market_calendar import NEW_YORK, HolidaySkippingTrigger
from ml.src.training import ensemble_training_job

__all__ = [
    "DAILY_JOB_ID",
    "WEEKLY_JOB_ID",
    "GracefulStop",
    "JobSpec",
    "RunLedgerListener",
    "ScheduleError",
    "ScheduledTraining",
    "build_parser",
    "build_scheduler",
    "configure_logging",
    "format_schedule",
    "install_signal_handlers",
    "job_defaults",
    "job_specs",
    "ledger_entries",
    "main",
    "next_fire_times",
    "run_once",
    "serve",
    "train_timeframes",
    "worst_exit_code",
]

log = logging.getLogger("ml.scheduler")

DAILY_JOB_ID = "train-daily"
WEEKLY_JOB_ID = "train-weekly"

EXIT_OK = ensemble_training_job.EXIT_OK
EXIT_FAILED = ensemble_training_job.EXIT_FAILED
EXIT_USAGE = ensemble_training_job.EXIT_USAGE
EXIT_LOCKED = ensemble_training_job.EXIT_LOCKED
EXIT_INTERRUPTED = ensemble_training_job.EXIT_INTERRUPTED

# `--once` exits with the worst code of its groups: interrupted > bad usage > failed > locked (retry later) > ok.
_SEVERITY: dict[int, int] = {EXIT_OK: 0, EXIT_LOCKED: 1, EXIT_FAILED: 2, EXIT_USAGE: 3, EXIT_INTERRUPTED: 4}

Runner = Callable[[Sequence[str]], int]
StoreFactory = Callable[[], TrainingStore]

# The job id of the work in progress on this thread, for log lines (see JobIdFilter).
_JOB_ID: contextvars.ContextVar[str] = contextvars.ContextVar("scheduler_job_id", default="-")


class ScheduleError(ValueError):
    """A schedule setting that does not parse (a bad cron expression)."""


# ---------------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class JobSpec:
    """One scheduled group: which timeframes, when (a 5-field cron expression in UTC), holiday-aware or not."""

    job_id: str
    cron: str
    timeframes: tuple[str, ...]
    skip_holidays: bool = False

    def trigger(self) -> BaseTrigger:
        if self.skip_holidays:
            return HolidaySkippingTrigger.from_crontab(self.cron, timezone=UTC)
        return CronTrigger.from_crontab(self.cron, timezone=UTC)


def job_specs(settings: Settings) -> list[JobSpec]:
    """The scheduled groups; a group with no timeframes is not scheduled. Raises ScheduleError on a bad cron."""
    specs = [
        # Default `30 22 * * mon-fri`: 22:30 UTC = 17:30 EST / 18:30 EDT, after the 16:00 New York close all
        # year round (UTC has no DST, so New York sees the run an hour later in summer than in winter).
        JobSpec(
            DAILY_JOB_ID,
            settings.schedule_daily_cron,
            tuple(settings.schedule_daily_timeframes),
            skip_holidays=settings.schedule_skip_holidays,
        ),
        # Default `0 14 * * sat`: Saturday 14:00 UTC = 09:00 EST / 10:00 EDT, after the week's last session.
        # No holiday check: a weekly run is never skipped because of the day it happens to fall on.
        JobSpec(WEEKLY_JOB_ID, settings.schedule_weekly_cron, tuple(settings.schedule_weekly_timeframes)),
    ]
    for spec, field in zip(specs, ("schedule_daily_cron", "schedule_weekly_cron"), strict=True):
        try:
            spec.trigger()
        except ValueError as exc:
            raise ScheduleError(f"{field}: {spec.cron!r} is not a valid cron expression: {exc}") from exc
    return [s for s in specs if s.timeframes]


def job_defaults(settings: Settings) -> dict[str, Any]:
    """APScheduler job defaults: a fire up to the grace time late still runs; a backlog runs once; no overlap."""
    return {
        "misfire_grace_time": round(settings.schedule_misfire_grace_hours * 3600),
        "coalesce": True,
        "max_instances": 1,
    }


def train_timeframes(timeframes: Sequence[str]) -> int:
    """The default runner: train every active symbol on these timeframes, in this process; the exit code."""
    argv = ["--all", "--timeframes", *timeframes, "--trigger", "scheduled", "--quiet"]
    return ensemble_training_job.main(argv)


class ScheduledTraining:
    """The job function of one group: runs the runner and returns (and logs) its exit code."""

    def __init__(self, spec: JobSpec, runner: Runner, stopping: threading.Event) -> None:
        self.spec = spec
        self.runner = runner
        self.stopping = stopping

    def __call__(self) -> int:
        token = _JOB_ID.set(self.spec.job_id)
        try:
            if self.stopping.is_set():
                log.warning("not starting: the scheduler is stopping")
                return EXIT_INTERRUPTED
            # A stop left over from an earlier run (its lease was lost) must not end this run at once ...
            ensemble_training_job.clear_stop()
            if self.stopping.is_set():  # ... but a signal that arrived meanwhile must still count
                ensemble_training_job.request_stop()
            log.info("training timeframes %s", " ".join(self.spec.timeframes))
            t0 = time.monotonic()
            code = int(self.runner(self.spec.timeframes))
            took = time.monotonic() - t0
            if code == EXIT_OK:
                log.info("finished in %.0fs (exit 0)", took)
            elif code == EXIT_LOCKED:
                # the training job recorded this run as skipped itself
                log.info("another run holds an overlapping lease: nothing trained (exit 75)")
            elif code == EXIT_INTERRUPTED:
                log.warning("interrupted after %.0fs (exit 130)", took)
            elif code == EXIT_USAGE:
                log.error("training refused to start: bad usage or settings (exit 2)")
            else:
                log.error(
                    "training finished in %.0fs with exit code %d: a pair or the run failed", took, code
                )
            return code
        finally:
            _JOB_ID.reset(token)


# -------------------------------------------------------------------------------------------- run ledger
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
        if not isinstance(event, JobEvent):
            return
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


# --------------------------------------------------------------------------------------------- scheduler
def build_scheduler(
    settings: Settings,
    runner: Runner | None = None,
    *,
    scheduler_cls: type[BaseScheduler] = BlockingScheduler,
    executor: BaseExecutor | None = None,
    store_factory: StoreFactory | None = None,
    stopping: threading.Event | None = None,
) -> BaseScheduler:
    """A scheduler (not started) with the training jobs and the run-ledger listener.

    runner(timeframes) -> exit code does the training (default: train_timeframes, i.e. the training job's main);
    the executor defaults to one worker thread; store_factory opens the ledger's store (default: open_store).
    `stopping` is set by the signal handler: a queued job then returns at once instead of training.
    """
    specs = job_specs(settings)
    stopping = stopping if stopping is not None else threading.Event()
    scheduler = scheduler_cls(
        timezone=UTC,
        jobstores={"default": MemoryJobStore()},
        executors={"default": executor if executor is not None else ThreadPoolExecutor(max_workers=1)},
        job_defaults=job_defaults(settings),
    )
    for spec in specs:
        scheduler.add_job(
            ScheduledTraining(spec, runner or train_timeframes, stopping),
            trigger=spec.trigger(),
            id=spec.job_id,
            name=spec.job_id,
            replace_existing=True,
        )
    scheduler.add_listener(
        RunLedgerListener(settings, {s.job_id: s for s in specs}, store_factory), RunLedgerListener.MASK
    )
    return scheduler


def next_fire_times(
    job_or_trigger: Job | BaseTrigger | JobSpec, start: datetime, n: int = 3
) -> list[datetime]:
    """The next `n` fire times at or after `start` (an aware datetime; naive means UTC)."""
    if isinstance(job_or_trigger, JobSpec):
        trigger = job_or_trigger.trigger()
    elif isinstance(job_or_trigger, Job):
        trigger = job_or_trigger.trigger
    else:
        trigger = job_or_trigger
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    times: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and len(times) < n:
        times.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def _both_zones(moment: datetime) -> str:
    ny = moment.astimezone(NEW_YORK)
    return f"{moment.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC = {ny:%a %Y-%m-%d %H:%M %Z} (America/New_York)"


def format_schedule(specs: Iterable[JobSpec], start: datetime, n: int = 3) -> str:
    lines: list[str] = []
    for spec in specs:
        holidays = ", skips NYSE holidays" if spec.skip_holidays else ""
        lines.append(
            f"{spec.job_id}: cron '{spec.cron}' (UTC), timeframes {' '.join(spec.timeframes)}{holidays}"
        )
        lines.extend(f"  {_both_zones(t)}" for t in next_fire_times(spec, start, n))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ running
def worst_exit_code(codes: Iterable[int]) -> int:
    """The most severe code: 130 interrupted > 2 usage > 1 failed (or any unknown code) > 75 locked > 0."""
    return max(codes, key=lambda c: _SEVERITY.get(c, _SEVERITY[EXIT_FAILED]), default=EXIT_OK)


SignalHandler = Callable[[int, FrameType | None], Any]


def install_signal_handlers(handler: SignalHandler) -> Callable[[], None]:
    """SIGTERM and SIGINT -> handler; returns a function restoring the previous ones (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


class GracefulStop:
    """The long-running scheduler's SIGTERM / Ctrl-C handler.

    Asks the training in progress to finish its pair and stop (ensemble_training_job.request_stop), then shuts
    the scheduler down with wait=True, which waits for that run to return. The shutdown happens on a helper
    thread: blocking inside a signal handler could deadlock on a scheduler lock the interrupted main thread
    holds. serve() joins that thread before it returns.
    """

    def __init__(self, scheduler: BaseScheduler, stopping: threading.Event) -> None:
        self.scheduler = scheduler
        self.stopping = stopping
        self._thread: threading.Thread | None = None

    def __call__(self, signum: int, frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set():
            log.warning("%s: already stopping, waiting for the pair in progress", name)
            return
        self.stopping.set()
        log.warning("%s: finishing the pair in progress, then shutting the scheduler down", name)
        ensemble_training_job.request_stop()
        self._thread = threading.Thread(target=self.shutdown, name="scheduler-shutdown", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        # not started yet (then on_started stops it) or already stopped: nothing to do
        with contextlib.suppress(SchedulerNotRunningError):
            self.scheduler.shutdown(wait=True)

    def on_started(self, event: SchedulerEvent) -> None:
        """Listener for EVENT_SCHEDULER_STARTED: a signal that came before start() still stops the scheduler."""
        if self.stopping.is_set():
            self.shutdown()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def serve(
    settings: Settings,
    runner: Runner | None = None,
    *,
    store_factory: StoreFactory | None = None,
    scheduler_cls: type[BaseScheduler] = BlockingScheduler,
) -> int:
    """Run the scheduler until SIGTERM / Ctrl-C; 0 once the run in progress (if any) has finished."""
    stopping = threading.Event()
    scheduler = build_scheduler(
        settings, runner, scheduler_cls=scheduler_cls, store_factory=store_factory, stopping=stopping
    )
    stopper = GracefulStop(scheduler, stopping)
    scheduler.add_listener(stopper.on_started, EVENT_SCHEDULER_STARTED)
    now = datetime.now(UTC)
    for spec in job_specs(settings):
        first = next_fire_times(spec, now, 1)
        token = _JOB_ID.set(spec.job_id)
        log.info(
            "cron '%s' (UTC), timeframes %s; next run %s",
            spec.cron,
            " ".join(spec.timeframes),
            _both_zones(first[0]) if first else "never",
        )
        _JOB_ID.reset(token)
    restore = install_signal_handlers(stopper)
    try:
        scheduler.start()  # blocks until GracefulStop shuts the scheduler down
    finally:
        restore()
    stopper.wait()
    log.info("scheduler stopped")
    return EXIT_OK


def run_once(
    settings: Settings,
    runner: Runner | None = None,
    *,
    store_factory: StoreFactory | None = None,
) -> int:
    """Run every scheduled group now, one after another; the worst exit code.

    After SIGTERM / Ctrl-C, or after a group that was interrupted, the remaining groups do not start. While a
    group trains, the training job's own handlers are in force (a second Ctrl-C aborts at once: exit 130).
    """
    specs = job_specs(settings)
    stopping = threading.Event()
    ledger = RunLedgerListener(settings, {s.job_id: s for s in specs}, store_factory)

    def on_signal(signum: int, frame: FrameType | None = None) -> None:
        log.warning("%s: finishing the pair in progress, then stopping", signal.Signals(signum).name)
        stopping.set()
        ensemble_training_job.request_stop()

    codes: list[int] = []
    restore = install_signal_handlers(on_signal)
    try:
        for spec in specs:
            if stopping.is_set():
                log.warning("not starting %s: stopping", spec.job_id)
                continue
            job = ScheduledTraining(spec, runner or train_timeframes, stopping)
            started = datetime.now(UTC)
            try:
                code = job()
            except KeyboardInterrupt:
                # the training job's own handler (it runs on this main thread) raises on a second Ctrl-C
                log.warning("aborted", extra={"job_id": spec.job_id})
                code = EXIT_INTERRUPTED
            except Exception as exc:
                log.exception("the run raised", extra={"job_id": spec.job_id})
                ledger(JobExecutionEvent(EVENT_JOB_ERROR, spec.job_id, "once", started, exception=exc))
                code = EXIT_FAILED
            codes.append(code)
            if code == EXIT_INTERRUPTED:
                stopping.set()
    finally:
        restore()
    return worst_exit_code(codes)


# ------------------------------------------------------------------------------------------------ logging
class JobIdFilter(logging.Filter):
    """Gives every record a `job_id`: its own, the job an APScheduler message is about, or this thread's job."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            job_id = _JOB_ID.get()
            args = record.args if isinstance(record.args, tuple) else ()
            for arg in args:
                if isinstance(arg, Job):
                    job_id = arg.id
                    break
            record.job_id = job_id
        return True


def configure_logging(verbose: bool = False) -> Callable[[], None]:
    """Scheduler, training and APScheduler lines to stderr, each with its job id; returns an undo function.

    The handler sits on the `ml` and `apscheduler` loggers (not propagating to the root) because the training
    job re-configures the root logger on every run. Levels: the scheduler INFO (DEBUG with verbose),
    APScheduler INFO, training whatever the training job sets (warnings with --quiet).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(job_id)s]: %(message)s"))
    handler.addFilter(JobIdFilter())
    changes: list[tuple[logging.Logger, int | None]] = [
        (logging.getLogger("ml"), None),
        (logging.getLogger("apscheduler"), logging.INFO),
        (logging.getLogger("ml.scheduler"), logging.DEBUG if verbose else logging.INFO),
    ]
    saved = [(lg, lg.level, lg.propagate) for lg, _ in changes]
    for lg, level in changes:
        if level is not None:
            lg.setLevel(level)
    for lg in (logging.getLogger("ml"), logging.getLogger("apscheduler")):
        lg.addHandler(handler)
        lg.propagate = False

    def restore() -> None:
        for lg in (logging.getLogger("ml"), logging.getLogger("apscheduler")):
            lg.removeHandler(handler)
        for lg, level, propagate in saved:
            lg.setLevel(level)
            lg.propagate = propagate

    return restore


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml.src.scheduler",
        description=(
            "Run the nightly training on a schedule (APScheduler, UTC cron from ML_SCHEDULE_* settings): "
            "train-daily after the US close on NYSE trading days, train-weekly once a week. SIGTERM or "
            "Ctrl-C lets the pair in progress finish, marks the run interrupted and stops."
        ),
        epilog=(
            "Exit codes: 0 ok (and after SIGTERM when running for ever); 2 invalid settings; with --once the "
            "worst of the training job's codes (1 failed, 75 another run active, 130 interrupted)."
        ),
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--print-schedule",
        action="store_true",
        help="list the jobs and their next three fire times (UTC and New York), then exit",
    )
    mode.add_argument(
        "--once", action="store_true", help="run every scheduled group now, one after another, then exit"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging from the scheduler")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        settings = Settings()
        specs = job_specs(settings)
    except ValidationError as exc:
        print(settings_error_line(exc), file=sys.stderr)
        return EXIT_USAGE
    except ScheduleError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not specs:
        print(
            "invalid settings: schedule_daily_timeframes and schedule_weekly_timeframes are both empty: "
            "nothing to schedule",
            file=sys.stderr,
        )
        return EXIT_USAGE

    if args.print_schedule:
        print(format_schedule(specs, datetime.now(UTC)))
        return EXIT_OK

    restore_logging = configure_logging(args.verbose)
    try:
        if args.once:
            return run_once(settings)
        return serve(settings)
    finally:
        restore_logging()
