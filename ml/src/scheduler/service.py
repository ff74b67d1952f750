"""Running the schedule: the job function of a group, the APScheduler process, `--once`, signals, logging.

The jobs share one worker thread, so groups never train side by side. The training job is imported only when a
group runs, so printing the schedule never loads the learners.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_SCHEDULER_STARTED, JobExecutionEvent, SchedulerEvent
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from config.settings import Settings
from ml.src.common.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE
from ml.src.common.log_setup import quiet_http_clients
from ml.src.common.stop import clear_stop, request_stop
from ml.src.scheduler.jobs import JobSpec, both_zones, job_defaults, job_specs, next_fire_times
from ml.src.scheduler.ledger import RunLedgerListener, StoreFactory

log = logging.getLogger("ml.scheduler")

# `--once` exits with the worst code of its groups: interrupted > bad usage > failed > locked (retry later) > ok.
_SEVERITY: dict[int, int] = {EXIT_OK: 0, EXIT_LOCKED: 1, EXIT_FAILED: 2, EXIT_USAGE: 3, EXIT_INTERRUPTED: 4}

Runner = Callable[[Sequence[str]], int]
# replayer(timeframes, last) -> exit code: replays every active pair's last `last` bars on the timeframes
ReplayRunner = Callable[[Sequence[str], int], int]

# The job id of the work in progress on this thread, for log lines (see JobIdFilter).
_JOB_ID: contextvars.ContextVar[str] = contextvars.ContextVar("scheduler_job_id", default="-")


class ScheduledTraining:
    """The job function of one group: runs the runner (training groups), then the forecaster, and returns (and
    logs) the worst exit code. A forecast-only group runs just the forecaster."""

    def __init__(
        self,
        spec: JobSpec,
        runner: Runner,
        stopping: threading.Event,
        forecaster: Runner | None = None,
        forecast_after_training: bool = True,
        replayer: ReplayRunner | None = None,
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.stopping = stopping
        self.forecaster = forecaster
        self.forecast_after_training = forecast_after_training
        self.replayer = replayer

    def __call__(self) -> int:
        token = _JOB_ID.set(self.spec.job_id)
        try:
            if self.stopping.is_set():
                log.warning("not starting: the scheduler is stopping")
                return EXIT_INTERRUPTED
            # A stop left over from an earlier run (its lease was lost) must not end this run at once ...
            clear_stop()
            if self.stopping.is_set():  # ... but a signal that arrived meanwhile must still count
                request_stop()
            if self.spec.kind == "forecast":
                return self._forecast()
            if self.spec.kind == "replay":
                return self._replay()
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
            if self.forecast_after_training and code not in (EXIT_INTERRUPTED, EXIT_USAGE):
                code = worst_exit_code([code, self._forecast()])
            return code
        finally:
            _JOB_ID.reset(token)

    def _replay(self) -> int:
        if self.replayer is None:
            log.warning("no replay runner given: nothing replayed")
            return EXIT_OK
        last = int(self.spec.last or 1)
        log.info("replaying the last %d bars of timeframes %s", last, " ".join(self.spec.timeframes))
        t0 = time.monotonic()
        code = int(self.replayer(self.spec.timeframes, last))
        if code == EXIT_OK:
            log.info("replay done in %.0fs (exit 0)", time.monotonic() - t0)
        else:
            log.error("replay finished in %.0fs with exit code %d", time.monotonic() - t0, code)
        return code

    def _forecast(self) -> int:
        if self.forecaster is None or self.stopping.is_set():
            return EXIT_OK
        log.info("forecasting timeframes %s", " ".join(self.spec.timeframes))
        t0 = time.monotonic()
        code = int(self.forecaster(self.spec.timeframes))
        if code == EXIT_OK:
            log.info("forecasts done in %.0fs (exit 0)", time.monotonic() - t0)
        else:
            log.error("forecasts finished with exit code %d", code)
        return code


def build_scheduler(
    settings: Settings,
    runner: Runner,
    *,
    scheduler_cls: type[BaseScheduler] = BlockingScheduler,
    executor: BaseExecutor | None = None,
    store_factory: StoreFactory | None = None,
    stopping: threading.Event | None = None,
    forecaster: Runner | None = None,
    replayer: ReplayRunner | None = None,
) -> BaseScheduler:
    """A scheduler (not started) with the training jobs and the run-ledger listener.

    runner(timeframes) -> exit code does the training, forecaster(timeframes) the forecasts (None: none),
    replayer(timeframes, last) the scheduled replay (None: none); the command line (ml.src.cli.schedule) passes
    the training, forecast and replay commands, tests pass fakes;
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
    forecast = forecaster
    for spec in specs:
        scheduler.add_job(
            ScheduledTraining(
                spec,
                runner,
                stopping,
                forecast,
                settings.schedule_forecast_after_training,
                replayer,
            ),
            trigger=spec.trigger(),
            id=spec.job_id,
            name=spec.job_id,
            replace_existing=True,
        )
    # Missed or failed fires of the training groups become run-ledger rows; forecast fires are not training runs.
    training = {s.job_id: s for s in specs if s.kind == "train"}
    scheduler.add_listener(RunLedgerListener(settings, training, store_factory), RunLedgerListener.MASK)
    return scheduler


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

    Asks the training in progress to finish its pair and stop (request_stop), then shuts
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
        request_stop()
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
    runner: Runner,
    *,
    store_factory: StoreFactory | None = None,
    scheduler_cls: type[BaseScheduler] = BlockingScheduler,
    forecaster: Runner | None = None,
    replayer: ReplayRunner | None = None,
) -> int:
    """Run the scheduler until SIGTERM / Ctrl-C; 0 once the run in progress (if any) has finished."""
    stopping = threading.Event()
    scheduler = build_scheduler(
        settings,
        runner,
        scheduler_cls=scheduler_cls,
        store_factory=store_factory,
        stopping=stopping,
        forecaster=forecaster,
        replayer=replayer,
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
            both_zones(first[0]) if first else "never",
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
    runner: Runner,
    *,
    store_factory: StoreFactory | None = None,
    forecaster: Runner | None = None,
    replayer: ReplayRunner | None = None,
) -> int:
    """Run every scheduled group now, one after another (each training group followed by its forecasts, then the
    forecast-only group); the worst exit code.

    After SIGTERM / Ctrl-C, or after a group that was interrupted, the remaining groups do not start. While a
    group trains, the training job's own handlers are in force (a second Ctrl-C aborts at once: exit 130).
    """
    specs = job_specs(settings)
    stopping = threading.Event()
    ledger = RunLedgerListener(settings, {s.job_id: s for s in specs if s.kind == "train"}, store_factory)
    forecast = forecaster

    def on_signal(signum: int, frame: FrameType | None = None) -> None:
        log.warning("%s: finishing the pair in progress, then stopping", signal.Signals(signum).name)
        stopping.set()
        request_stop()

    codes: list[int] = []
    restore = install_signal_handlers(on_signal)
    try:
        for spec in specs:
            if stopping.is_set():
                log.warning("not starting %s: stopping", spec.job_id)
                continue
            job = ScheduledTraining(
                spec,
                runner,
                stopping,
                forecast,
                settings.schedule_forecast_after_training,
                replayer,
            )
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
    quiet_http_clients()  # the ledger's store calls: no line per HTTP request
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
