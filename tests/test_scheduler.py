"""The nightly schedule: fire times (DST, weekends, NYSE holidays), misfires, the run ledger, the CLI, signals.

Nothing here trains: the job runner is injected (or the training job's main is monkeypatched).
"""

from __future__ import annotations

import pickle
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, EVENT_SCHEDULER_STARTED
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from freezegun import freeze_time

from config.settings import Settings
from ml.src.cli import schedule as cli
from ml.src.cli import train as job_cli
from ml.src.common.market_calendar import (
    NEW_YORK,
    HolidaySkippingTrigger,
    is_nyse_holiday,
    is_nyse_trading_day,
)
from ml.src.data.local_db import SqliteStore
from ml.src.data.store import StoreError
from ml.src.scheduler import jobs, ledger, service

DAILY_TFS = ("m15", "h1", "h4", "d1")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ny_hhmm(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).strftime("%H:%M %Z")


def spec(settings: Settings, job_id: str) -> jobs.JobSpec:
    return next(s for s in jobs.job_specs(settings) if s.job_id == job_id)


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from training_runs order by started_at")]
    finally:
        conn.close()


class ManualScheduler(BaseScheduler):
    """A scheduler that only processes jobs when the test calls _process_jobs() (under a frozen clock)."""

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)


class FakeRunner:
    def __init__(self, code: int | Callable[[Sequence[str]], int] = 0) -> None:
        self.code = code
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, timeframes: Sequence[str]) -> int:
        self.calls.append(tuple(timeframes))
        return self.code(timeframes) if callable(self.code) else self.code


@pytest.fixture()
def settings(ml_env: Path) -> Settings:
    return Settings()


@pytest.fixture()
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "s.sqlite3"


@pytest.fixture()
def manual(
    settings: Settings, ledger_path: Path
) -> Iterator[Callable[..., tuple[ManualScheduler, FakeRunner]]]:
    """build_scheduler with a synchronous executor, a fake runner and the ledger in a real embedded store."""
    made: list[BaseScheduler] = []

    def make(runner: FakeRunner | None = None, **overrides: Any) -> tuple[ManualScheduler, FakeRunner]:
        runner = runner or FakeRunner()
        s = settings.model_copy(update=overrides) if overrides else settings
        scheduler = service.build_scheduler(
            s,
            runner,
            scheduler_cls=ManualScheduler,
            executor=DebugExecutor(),
            store_factory=lambda: SqliteStore(ledger_path),
        )
        assert isinstance(scheduler, ManualScheduler)
        made.append(scheduler)
        scheduler.start()
        return scheduler, runner

    yield make
    for scheduler in made:
        if scheduler.running:
            scheduler.shutdown(wait=False)


# ------------------------------------------------------------------------------------------- job set-up
def test_job_ids_and_defaults(settings: Settings) -> None:
    scheduler = service.build_scheduler(settings, FakeRunner())
    assert isinstance(scheduler, BlockingScheduler)
    assert scheduler.timezone == UTC
    assert scheduler._job_defaults == {"misfire_grace_time": 6 * 3600, "coalesce": True, "max_instances": 1}
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"train-daily", "train-weekly", "forecast-intraday"}
    assert isinstance(jobs["forecast-intraday"].trigger, HolidaySkippingTrigger)
    assert jobs["forecast-intraday"].func.spec.timeframes == ("m15", "h1", "h4")
    assert jobs["forecast-intraday"].func.spec.kind == "forecast"
    assert isinstance(jobs["train-daily"].trigger, HolidaySkippingTrigger)
    assert isinstance(jobs["train-weekly"].trigger, CronTrigger)
    assert jobs["train-daily"].func.spec.timeframes == DAILY_TFS
    assert jobs["train-weekly"].func.spec.timeframes == ("w1",)


def test_started_jobs_carry_the_defaults(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]],
) -> None:
    scheduler, _ = manual(schedule_misfire_grace_hours=1.5)
    jobs = scheduler.get_jobs()
    assert {j.id for j in jobs} == {"train-daily", "train-weekly", "forecast-intraday"}
    for job in jobs:
        assert job.misfire_grace_time == 5400
        assert job.coalesce is True
        assert job.max_instances == 1


def test_skip_holidays_off_uses_the_plain_cron(settings: Settings) -> None:
    s = settings.model_copy(update={"schedule_skip_holidays": False})
    assert isinstance(spec(s, "train-daily").trigger(), CronTrigger)
    times = jobs.next_fire_times(spec(s, "train-daily"), utc("2026-11-26T00:00:00"), 1)
    assert times == [utc("2026-11-26T22:30:00")]  # Thanksgiving, when asked to


def test_empty_timeframes_are_not_scheduled(settings: Settings) -> None:
    s = settings.model_copy(update={"schedule_weekly_timeframes": [], "schedule_forecast_timeframes": []})
    assert [x.job_id for x in jobs.job_specs(s)] == ["train-daily"]
    s = settings.model_copy(update={"schedule_forecast_cron": ""})  # no separate forecast job
    assert [x.job_id for x in jobs.job_specs(s)] == ["train-daily", "train-weekly"]


def test_bad_cron_is_a_schedule_error(settings: Settings) -> None:
    s = settings.model_copy(update={"schedule_daily_cron": "30 25 * * mon-fri"})
    with pytest.raises(jobs.ScheduleError, match="schedule_daily_cron"):
        jobs.job_specs(s)


# ------------------------------------------------------------------------------------------ fire times
def test_dst_start_keeps_utc_and_shifts_new_york(settings: Settings) -> None:
    # US DST begins Sunday 2026-03-08: 22:30 UTC is 17:30 EST before, 18:30 EDT after
    times = jobs.next_fire_times(spec(settings, "train-daily"), utc("2026-03-05T00:00:00"), 4)
    assert times == [utc(f"2026-03-{d}T22:30:00") for d in ("05", "06", "09", "10")]
    assert [ny_hhmm(t) for t in times] == ["17:30 EST", "17:30 EST", "18:30 EDT", "18:30 EDT"]
    weekly = jobs.next_fire_times(spec(settings, "train-weekly"), utc("2026-03-05T00:00:00"), 2)
    assert weekly == [utc("2026-03-07T14:00:00"), utc("2026-03-14T14:00:00")]
    assert [ny_hhmm(t) for t in weekly] == ["09:00 EST", "10:00 EDT"]


def test_dst_end_keeps_utc_and_shifts_new_york(settings: Settings) -> None:
    # US DST ends Sunday 2026-11-01
    times = jobs.next_fire_times(spec(settings, "train-daily"), utc("2026-10-29T00:00:00"), 4)
    assert times == [
        utc(t) for t in ("2026-10-29T22:30", "2026-10-30T22:30", "2026-11-02T22:30", "2026-11-03T22:30")
    ]
    assert [ny_hhmm(t) for t in times] == ["18:30 EDT", "18:30 EDT", "17:30 EST", "17:30 EST"]
    weekly = jobs.next_fire_times(spec(settings, "train-weekly"), utc("2026-10-29T00:00:00"), 2)
    assert weekly == [utc("2026-10-31T14:00:00"), utc("2026-11-07T14:00:00")]
    assert [ny_hhmm(t) for t in weekly] == ["10:00 EDT", "09:00 EST"]


def test_friday_to_monday(settings: Settings) -> None:
    after_friday_run = utc("2026-03-13T22:30:00")
    trigger = spec(settings, "train-daily").trigger()
    assert trigger.get_next_fire_time(after_friday_run, after_friday_run) == utc("2026-03-16T22:30:00")


@pytest.mark.parametrize(
    ("start", "expected", "holiday"),
    [
        ("2026-11-25", ["2026-11-25", "2026-11-27", "2026-11-30"], "Thanksgiving (Thu 2026-11-26)"),
        ("2026-12-24", ["2026-12-24", "2026-12-28", "2026-12-29"], "Christmas (Fri 2026-12-25)"),
        ("2026-04-02", ["2026-04-02", "2026-04-06", "2026-04-07"], "Good Friday (2026-04-03)"),
        ("2026-06-18", ["2026-06-18", "2026-06-22", "2026-06-23"], "Juneteenth (Fri 2026-06-19)"),
        ("2027-06-17", ["2027-06-17", "2027-06-21", "2027-06-22"], "Juneteenth observed (Fri 2027-06-18)"),
        (
            "2026-07-02",
            ["2026-07-02", "2026-07-06", "2026-07-07"],
            "Independence Day observed (Fri 2026-07-03)",
        ),
        ("2026-01-16", ["2026-01-16", "2026-01-20", "2026-01-21"], "Martin Luther King Jr. Day (2026-01-19)"),
        ("2021-06-17", ["2021-06-17", "2021-06-18", "2021-06-21"], "none: Juneteenth is a holiday from 2022"),
        (
            "2021-12-30",
            ["2021-12-30", "2021-12-31", "2022-01-03"],
            "none: no Friday close for a Saturday 1 Jan",
        ),
        ("2026-11-27", ["2026-11-27", "2026-11-30", "2026-12-01"], "none: the early close is a trading day"),
    ],
)
def test_daily_job_skips_nyse_holidays(
    settings: Settings, start: str, expected: list[str], holiday: str
) -> None:
    times = jobs.next_fire_times(spec(settings, "train-daily"), utc(f"{start}T00:00:00"), 3)
    assert times == [utc(f"{d}T22:30:00") for d in expected], holiday


def test_weekly_job_fires_on_saturdays_through_holiday_weeks(settings: Settings) -> None:
    times = jobs.next_fire_times(spec(settings, "train-weekly"), utc("2026-11-23T00:00:00"), 6)
    assert [t.date() for t in times] == [date(2026, 11, 28) + timedelta(weeks=i) for i in range(6)]
    assert all(t.weekday() == 5 and (t.hour, t.minute) == (14, 0) for t in times)


def test_nyse_calendar() -> None:
    for day in (
        date(2026, 11, 26),
        date(2026, 12, 25),
        date(2026, 4, 3),
        date(2026, 6, 19),
        date(2026, 7, 3),
    ):
        assert is_nyse_holiday(day) and not is_nyse_trading_day(day)
    for day in (date(2026, 11, 27), date(2026, 7, 2), date(2021, 6, 18), date(2021, 12, 31)):
        assert not is_nyse_holiday(day) and is_nyse_trading_day(day)
    assert not is_nyse_trading_day(date(2026, 11, 28))  # a Saturday


def test_holiday_date_is_the_new_york_date() -> None:
    # 02:00 UTC on Friday 2026-11-27 is still Thanksgiving evening in New York
    trigger = HolidaySkippingTrigger.from_crontab("0 2 * * *")
    assert trigger.get_next_fire_time(None, utc("2026-11-26T12:00:00")) == utc("2026-11-28T02:00:00")


def test_trigger_pickles(settings: Settings) -> None:
    trigger = spec(settings, "train-daily").trigger()
    clone = pickle.loads(pickle.dumps(trigger))
    assert isinstance(clone, HolidaySkippingTrigger)
    start = utc("2026-11-20T00:00:00")
    assert jobs.next_fire_times(clone, start, 10) == jobs.next_fire_times(trigger, start, 10)
    assert "nyse_trading_days" in str(clone)


# ----------------------------------------------------------------------------- misfires and the ledger
def test_misfire_inside_grace_time_runs(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]], ledger_path: Path
) -> None:
    with freeze_time("2026-03-06 20:00:00") as clock:  # Friday
        scheduler, runner = manual()
        assert scheduler.get_job("train-daily").next_run_time == utc("2026-03-06T22:30:00")
        clock.move_to("2026-03-07 04:00:00")  # 5.5 h late, grace 6 h
        scheduler._process_jobs()
    assert runner.calls == [DAILY_TFS]
    assert scheduler.get_job("train-daily").next_run_time == utc("2026-03-09T22:30:00")
    assert not ledger_path.exists() or ledger_rows(ledger_path) == []


def test_misfire_outside_grace_time_is_recorded_as_skipped(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]], ledger_path: Path
) -> None:
    with freeze_time("2026-03-06 20:00:00") as clock:
        scheduler, runner = manual()
        clock.move_to("2026-03-07 05:00:00")  # 6.5 h late
        scheduler._process_jobs()
    assert runner.calls == []
    [row] = ledger_rows(ledger_path)
    assert row["status"] == "skipped"
    assert row["trigger"] == "scheduled"
    assert row["started_at"] == "2026-03-06T22:30:00.000000Z"
    assert row["finished_at"] == "2026-03-07T05:00:00.000000Z"
    assert (
        row["error"]
        == "missed: scheduled for 2026-03-06T22:30:00 UTC, more than 6 h late (misfire_grace_time)"
    )
    assert row["host"] and row["pid"]
    store = SqliteStore(ledger_path)
    try:
        run = store.get_run(row["run_id"])
    finally:
        store.close()
    assert run is not None
    assert run["scope"] == {
        "job_id": "train-daily",
        "timeframes": list(DAILY_TFS),
        "scheduled_for": "2026-03-06T22:30:00+00:00",
    }
    assert scheduler.get_job("train-daily").next_run_time == utc("2026-03-09T22:30:00")


def test_backlog_coalesces_into_one_run(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]], ledger_path: Path
) -> None:
    with freeze_time("2026-03-09 20:00:00") as clock:  # Monday
        scheduler, runner = manual()
        clock.move_to("2026-03-12 23:00:00")  # Mon, Tue, Wed and Thu 22:30 are all due; Thu is 30 min late
        scheduler._process_jobs()
    assert runner.calls == [DAILY_TFS]
    assert scheduler.get_job("train-daily").next_run_time == utc("2026-03-13T22:30:00")
    assert not ledger_path.exists() or ledger_rows(ledger_path) == []


def test_stale_backlog_is_one_skipped_run(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]], ledger_path: Path
) -> None:
    with freeze_time("2026-03-09 20:00:00") as clock:
        scheduler, runner = manual()
        clock.move_to("2026-03-13 06:00:00")  # Mon..Thu missed, the latest (Thu 22:30) 7.5 h ago
        scheduler._process_jobs()
    assert runner.calls == []
    [row] = ledger_rows(ledger_path)
    assert row["status"] == "skipped"
    assert row["started_at"] == "2026-03-12T22:30:00.000000Z"


def test_job_error_is_recorded_as_failed(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]], ledger_path: Path
) -> None:
    def boom(timeframes: Sequence[str]) -> int:
        raise RuntimeError("database on fire\nsecond line of detail")

    with freeze_time("2026-03-06 22:29:00") as clock:
        scheduler, runner = manual(FakeRunner(boom))
        clock.move_to("2026-03-06 22:30:05")
        scheduler._process_jobs()
    assert runner.calls == [DAILY_TFS]
    [row] = ledger_rows(ledger_path)
    assert row["status"] == "failed"
    assert row["trigger"] == "scheduled"
    assert row["error"] == "RuntimeError: database on fire"
    assert row["started_at"] == "2026-03-06T22:30:00.000000Z"


def test_nonzero_exit_code_is_logged_not_recorded(
    manual: Callable[..., tuple[ManualScheduler, FakeRunner]],
    ledger_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with freeze_time("2026-03-06 22:29:00") as clock:
        scheduler, runner = manual(FakeRunner(1))
        clock.move_to("2026-03-06 22:30:05")
        with caplog.at_level("INFO", logger="ml.scheduler"):
            scheduler._process_jobs()
    assert runner.calls == [DAILY_TFS]
    assert any(r.levelname == "ERROR" and "exit code 1" in r.getMessage() for r in caplog.records)
    assert not ledger_path.exists() or ledger_rows(ledger_path) == []


def test_ledger_failure_is_logged_not_raised(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    def broken_store() -> SqliteStore:
        raise StoreError("store unreachable")

    with freeze_time("2026-03-06 20:00:00") as clock:
        scheduler = service.build_scheduler(
            settings,
            FakeRunner(),
            scheduler_cls=ManualScheduler,
            executor=DebugExecutor(),
            store_factory=broken_store,
        )
        scheduler.start()
        clock.move_to("2026-03-07 05:00:00")
        with caplog.at_level("WARNING", logger="ml.scheduler"):
            scheduler._process_jobs()  # does not raise
        scheduler.shutdown(wait=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "ml.scheduler"]
    assert any("could not record" in m and "store unreachable" in m for m in messages)
    assert all(
        getattr(r, "job_id", None) == "train-daily" for r in caplog.records if r.name == "ml.scheduler"
    )


def test_real_background_scheduler_runs_and_records_misses(settings: Settings, ledger_path: Path) -> None:
    """The production executor (one worker thread) and a real scheduler thread, woken under a frozen clock."""
    runner = FakeRunner()
    executed, missed = threading.Semaphore(0), threading.Semaphore(0)
    with freeze_time("2026-03-06 20:00:00") as clock:  # Friday
        scheduler = service.build_scheduler(
            settings.model_copy(update={"schedule_forecast_cron": ""}),  # training fires only
            runner,
            scheduler_cls=BackgroundScheduler,
            store_factory=lambda: SqliteStore(ledger_path),
        )
        scheduler.add_listener(lambda e: executed.release(), EVENT_JOB_EXECUTED)
        scheduler.add_listener(lambda e: missed.release(), EVENT_JOB_MISSED)
        scheduler.start()
        try:
            clock.move_to("2026-03-06 22:30:01")  # on time
            scheduler.wakeup()
            assert executed.acquire(timeout=10)
            assert runner.calls == [DAILY_TFS]
            # asleep from Saturday morning to Tuesday 05:00: Saturday's weekly run is 39 h late, Monday's daily
            # run 6.5 h; both are missed (the ledger listener runs before this test's listeners)
            clock.move_to("2026-03-10 05:00:00")
            scheduler.wakeup()
            assert missed.acquire(timeout=10) and missed.acquire(timeout=10)
        finally:
            scheduler.shutdown(wait=True)
    assert runner.calls == [DAILY_TFS]
    rows = ledger_rows(ledger_path)
    assert [(r["status"], r["started_at"]) for r in rows] == [
        ("skipped", "2026-03-07T14:00:00.000000Z"),
        ("skipped", "2026-03-09T22:30:00.000000Z"),
    ]
    assert "more than 6 h late" in rows[0]["error"]


# ------------------------------------------------------------------------------------------------- CLI
def test_print_schedule(
    ml_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_store(*args: object) -> None:
        raise AssertionError("--print-schedule must not open a store")

    monkeypatch.setattr(ledger, "open_store", no_store)
    with freeze_time("2026-11-24 12:00:00"):
        assert cli.main(["--print-schedule"]) == 0
    out = capsys.readouterr().out
    assert "train-daily: cron '30 22 * * mon-fri' (UTC), timeframes m15 h1 h4 d1, skips NYSE holidays" in out
    assert "train-weekly: cron '0 14 * * sat' (UTC), timeframes w1" in out
    assert (
        "forecast-intraday: cron '5,20,35,50 13-21 * * mon-fri' (UTC), forecasts only, timeframes m15 h1 h4, "
        "skips NYSE holidays" in out
    )
    lines = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert lines[6:] == [
        "Tue 2026-11-24 13:05 UTC = Tue 2026-11-24 08:05 EST (America/New_York)",
        "Tue 2026-11-24 13:20 UTC = Tue 2026-11-24 08:20 EST (America/New_York)",
        "Tue 2026-11-24 13:35 UTC = Tue 2026-11-24 08:35 EST (America/New_York)",
    ]
    assert lines[:6] == [
        "Tue 2026-11-24 22:30 UTC = Tue 2026-11-24 17:30 EST (America/New_York)",
        "Wed 2026-11-25 22:30 UTC = Wed 2026-11-25 17:30 EST (America/New_York)",
        "Fri 2026-11-27 22:30 UTC = Fri 2026-11-27 17:30 EST (America/New_York)",  # Thanksgiving skipped
        "Sat 2026-11-28 14:00 UTC = Sat 2026-11-28 09:00 EST (America/New_York)",
        "Sat 2026-12-05 14:00 UTC = Sat 2026-12-05 09:00 EST (America/New_York)",
        "Sat 2026-12-12 14:00 UTC = Sat 2026-12-12 09:00 EST (America/New_York)",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ML_SCHEDULE_MISFIRE_GRACE_HOURS": "0"}, "invalid settings: schedule_misfire_grace_hours:"),
        ({"ML_SCHEDULE_DAILY_TIMEFRAMES": "d1 y1"}, "invalid settings: schedule_daily_timeframes:"),
        ({"ML_SCHEDULE_WEEKLY_CRON": "0 14 * * funday"}, "invalid settings: schedule_weekly_cron:"),
        (
            {"ML_SCHEDULE_DAILY_TIMEFRAMES": "[]", "ML_SCHEDULE_WEEKLY_TIMEFRAMES": "[]"},
            "invalid settings: schedule_daily_timeframes and schedule_weekly_timeframes are both empty",
        ),
    ],
)
def test_invalid_settings_exit_2_with_one_line(
    ml_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["--print-schedule"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message)
    assert "\n" not in err


def fake_training_main(codes: dict[str, int], calls: list[list[str]]) -> Callable[[list[str]], int]:
    def fake(argv: list[str]) -> int:
        calls.append(argv)
        return codes["w1" if "w1" in argv else "daily"]

    return fake


@pytest.mark.parametrize(
    ("daily", "weekly", "worst", "runs"),
    [(0, 0, 0, 2), (0, 1, 1, 2), (75, 0, 75, 2), (1, 75, 1, 2), (2, 1, 2, 2), (130, 0, 130, 1)],
)
def test_once_runs_every_group_and_returns_the_worst_code(
    ml_env: Path, monkeypatch: pytest.MonkeyPatch, daily: int, weekly: int, worst: int, runs: int
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(job_cli, "main", fake_training_main({"daily": daily, "w1": weekly}, calls))
    assert cli.main(["--once"]) == worst
    expected = [
        ["--all", "--timeframes", *DAILY_TFS, "--trigger", "scheduled", "--quiet"],
        ["--all", "--timeframes", "w1", "--trigger", "scheduled", "--quiet"],
    ]
    assert calls == expected[:runs]  # after an interrupted group the rest do not start


def test_once_records_a_crash_and_goes_on(ml_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = FakeRunner(lambda tfs: 0 if "w1" in tfs else 1 // 0)
    assert service.run_once(Settings(), runner) == 1
    assert runner.calls == [DAILY_TFS, ("w1",)]
    [row] = ledger_rows(ml_env / "store.sqlite3")  # the default store of the settings (ml_env's)
    assert (row["status"], row["trigger"]) == ("failed", "scheduled")
    assert row["error"] == "ZeroDivisionError: integer division or modulo by zero"


def test_once_abort_is_130_and_stops(ml_env: Path) -> None:
    def aborted(timeframes: Sequence[str]) -> int:
        raise KeyboardInterrupt  # what the training job's handler raises on a second Ctrl-C

    runner = FakeRunner(aborted)
    assert service.run_once(Settings(), runner) == 130
    assert runner.calls == [DAILY_TFS]


def test_worst_exit_code() -> None:
    assert service.worst_exit_code([]) == 0
    assert service.worst_exit_code([0, 75, 1]) == 1
    assert service.worst_exit_code([75, 0]) == 75
    assert service.worst_exit_code([1, 130, 2]) == 130
    assert service.worst_exit_code([0, 3]) == 3  # an unknown code counts as a failure


# ---------------------------------------------------------------------------------------------- signals
def deliver(signum: signal.Signals = signal.SIGTERM) -> Any:
    """Call the installed handler directly, as the interpreter would on a real signal; returns the handler."""
    handler = signal.getsignal(signum)
    assert callable(handler)
    handler(signum, None)
    return handler


@pytest.fixture()
def stop_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(service, "request_stop", lambda: calls.append("request_stop"))
    return calls


def test_sigterm_while_idle_stops_the_scheduler(
    ml_env: Path, monkeypatch: pytest.MonkeyPatch, stop_calls: list[str]
) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    real_build = service.build_scheduler
    installed: list[Any] = []

    def build(*args: Any, **kwargs: Any) -> BaseScheduler:
        scheduler = real_build(*args, **kwargs)

        def on_started(event: object) -> None:  # the scheduler is up: a SIGTERM "arrives"
            installed.append(deliver(signal.SIGTERM))
            assert signal.getsignal(signal.SIGINT) is installed[0]
            deliver(signal.SIGINT)  # a second signal only logs

        scheduler.add_listener(on_started, EVENT_SCHEDULER_STARTED)
        return scheduler

    monkeypatch.setattr(service, "build_scheduler", build)
    assert cli.main([]) == 0  # returns: the BlockingScheduler was shut down
    assert isinstance(installed[0], service.GracefulStop)
    assert stop_calls == ["request_stop"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigterm_during_a_run_waits_for_it(
    ml_env: Path, monkeypatch: pytest.MonkeyPatch, stop_calls: list[str]
) -> None:
    stop_seen = threading.Event()

    def request_stop() -> None:
        stop_calls.append("request_stop")
        stop_seen.set()

    monkeypatch.setattr(service, "request_stop", request_stop)
    finished: list[str] = []

    def training(timeframes: Sequence[str]) -> int:
        # SIGTERM arrives mid-run; the handler asks the job to stop after the pair in progress
        deliver(signal.SIGTERM)
        assert stop_seen.wait(10)
        time.sleep(0.3)  # the pair in progress takes a while yet
        finished.append("finished the pair in progress")
        return 130

    real_build = service.build_scheduler

    def build(settings: Settings, runner: Any = None, **kwargs: Any) -> BaseScheduler:
        scheduler = real_build(settings, FakeRunner(training), **kwargs)
        scheduler.modify_job("train-daily", next_run_time=datetime.now(UTC))  # due as soon as it starts
        return scheduler

    monkeypatch.setattr(service, "build_scheduler", build)
    assert cli.main([]) == 0
    assert finished == ["finished the pair in progress"]  # shutdown(wait=True) waited for the run
    assert stop_calls == ["request_stop"]


def test_sigterm_under_once_stops_after_the_group(
    ml_env: Path, monkeypatch: pytest.MonkeyPatch, stop_calls: list[str]
) -> None:
    def training(timeframes: Sequence[str]) -> int:
        deliver(signal.SIGTERM)
        return 130 if stop_calls else 0

    runner = FakeRunner(training)
    monkeypatch.setattr(cli, "train_timeframes", runner)
    assert cli.main(["--once"]) == 130
    assert runner.calls == [DAILY_TFS]  # the weekly group did not start
    assert stop_calls == ["request_stop"]


def test_graceful_stop_before_start(stop_calls: list[str], settings: Settings) -> None:
    stopping = threading.Event()
    scheduler = service.build_scheduler(
        settings, FakeRunner(), scheduler_cls=BackgroundScheduler, stopping=stopping
    )
    stopper = service.GracefulStop(scheduler, stopping)
    scheduler.add_listener(stopper.on_started, EVENT_SCHEDULER_STARTED)
    stopper(signal.SIGINT, None)  # before start: nothing to shut down yet
    stopper.wait(10)
    scheduler.start()  # ... so start() stops at once
    assert not scheduler.running
    assert stop_calls == ["request_stop"]


# ---------------------------------------------------------------------------------------------- logging
def test_log_lines_carry_the_job_id(capsys: pytest.CaptureFixture[str], settings: Settings) -> None:
    def training(timeframes: Sequence[str]) -> int:
        import logging

        logging.getLogger("ml.training").warning("AAPL/d1 failed: not enough bars")
        return 1

    restore = service.configure_logging()
    try:
        job = service.ScheduledTraining(
            spec(settings, "train-daily"), FakeRunner(training), threading.Event()
        )
        assert job() == 1
    finally:
        restore()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 3
    assert all("[train-daily]" in line for line in lines)
    assert "ml.training [train-daily]: AAPL/d1 failed" in err


# ------------------------------------------------------------------------------------------------ forecasts
def test_each_training_group_is_followed_by_its_forecasts(ml_env: Path) -> None:
    trained, forecast = FakeRunner(lambda tfs: 1 if "w1" in tfs else 0), FakeRunner(0)
    assert service.run_once(Settings(), trained, forecaster=forecast) == 1
    assert trained.calls == [DAILY_TFS, ("w1",)]
    # after train-daily, after train-weekly, then the forecast-only group
    assert forecast.calls == [DAILY_TFS, ("w1",), ("m15", "h1", "h4")]


def test_forecast_exit_code_counts_and_an_interrupted_group_forecasts_nothing(ml_env: Path) -> None:
    forecast = FakeRunner(lambda tfs: 1 if "w1" in tfs else 0)
    assert service.run_once(Settings(), FakeRunner(0), forecaster=forecast) == 1
    interrupted, forecast = FakeRunner(130), FakeRunner(0)
    assert service.run_once(Settings(), interrupted, forecaster=forecast) == 130
    assert forecast.calls == []


def test_forecasts_after_training_can_be_turned_off(ml_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_SCHEDULE_FORECAST_AFTER_TRAINING", "false")
    monkeypatch.setenv("ML_SCHEDULE_FORECAST_CRON", "")
    forecast = FakeRunner(0)
    assert service.run_once(Settings(), FakeRunner(0), forecaster=forecast) == 0
    assert forecast.calls == []


def test_the_intraday_forecast_job_fires_on_its_own_cron(settings: Settings, ledger_path: Path) -> None:
    forecast = FakeRunner(0)
    s = settings.model_copy(update={"schedule_forecast_cron": "*/15 * * * *"})
    with freeze_time("2026-11-24T14:00:00Z") as clock:
        scheduler = service.build_scheduler(
            s,
            FakeRunner(0),
            scheduler_cls=ManualScheduler,
            executor=DebugExecutor(),
            store_factory=lambda: SqliteStore(ledger_path),
            forecaster=forecast,
        )
        scheduler.start()
        clock.tick(timedelta(minutes=15))
        scheduler._process_jobs()
        clock.tick(timedelta(hours=9))  # far past the grace time: a missed forecast fire is no training run
        scheduler._process_jobs()
        scheduler.shutdown(wait=False)
    assert forecast.calls[0] == ("m15", "h1", "h4")
    assert not ledger_path.exists()  # the ledger was never even opened


def test_the_default_forecaster_runs_the_forecast_job(ml_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.src.cli import forecast as forecast_job

    calls: list[list[str]] = []
    monkeypatch.setattr(forecast_job, "main", lambda argv: calls.append(argv) or 0)
    assert cli.forecast_timeframes(["h1", "d1"]) == 0
    assert calls == [["--all", "--timeframes", "h1", "d1", "--quiet"]]


# ------------------------------------------------------------------------------------------------ the replay
class FakeReplayer:
    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.calls: list[tuple[tuple[str, ...], int]] = []

    def __call__(self, timeframes: Sequence[str], last: int) -> int:
        self.calls.append((tuple(timeframes), last))
        return self.code


def test_the_replay_is_off_by_default(settings: Settings) -> None:
    assert settings.schedule_replay_cron == ""
    assert jobs.REPLAY_JOB_ID not in [s.job_id for s in jobs.job_specs(settings)]
    replayer = FakeReplayer()
    assert service.run_once(settings, FakeRunner(0), forecaster=FakeRunner(0), replayer=replayer) == 0
    assert replayer.calls == []


def test_the_weekly_replay_of_the_last_n_bars_fires_on_its_cron(
    ml_env: Path, ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_SCHEDULE_REPLAY_CRON", "0 18 * * sun")
    monkeypatch.setenv("ML_SCHEDULE_REPLAY_LAST", "120")
    monkeypatch.setenv("ML_SCHEDULE_REPLAY_TIMEFRAMES", "d1")
    s = Settings()
    replay = spec(s, jobs.REPLAY_JOB_ID)
    assert (replay.kind, replay.timeframes, replay.last) == ("replay", ("d1",), 120)
    # Sundays 18:00 UTC, once a week
    assert jobs.next_fire_times(replay, utc("2026-11-24T00:00:00"), 2) == [
        utc("2026-11-29T18:00:00"),
        utc("2026-12-06T18:00:00"),
    ]
    assert (
        "replay: cron '0 18 * * sun' (UTC), replay of the last 120 bars, timeframes d1"
        in jobs.format_schedule([replay], utc("2026-11-24T00:00:00"))
    )
    replayer, trained = FakeReplayer(1), FakeRunner(0)
    with freeze_time("2026-11-29T17:59:00Z") as clock:
        scheduler = service.build_scheduler(
            s,
            trained,
            scheduler_cls=ManualScheduler,
            executor=DebugExecutor(),
            store_factory=lambda: SqliteStore(ledger_path),
            replayer=replayer,
        )
        scheduler.start()
        clock.tick(timedelta(minutes=1))
        scheduler._process_jobs()
        scheduler.shutdown(wait=False)
    assert replayer.calls == [(("d1",), 120)] and trained.calls == []  # a Sunday: no training group fired
    # --once runs it after the other groups; its exit code counts
    replayer = FakeReplayer(1)
    assert service.run_once(s, FakeRunner(0), forecaster=FakeRunner(0), replayer=replayer) == 1
    assert replayer.calls == [(("d1",), 120)]


def test_the_default_replayer_runs_the_replay_command(ml_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.src.cli import replay as replay_cli

    calls: list[list[str]] = []
    monkeypatch.setattr(replay_cli, "main", lambda argv: calls.append(argv) or 0)
    assert cli.replay_timeframes(["d1", "w1"], 250) == 0
    assert calls == [["--all", "--timeframes", "d1", "w1", "--last", "250", "--quiet"]]
