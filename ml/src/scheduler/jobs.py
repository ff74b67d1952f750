"""The scheduled groups: which timeframes train when (5-field cron in UTC, optionally NYSE-holiday aware)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from config.settings import ScheduleSettings
from ml.src.common.market_calendar import NEW_YORK, HolidaySkippingTrigger

DAILY_JOB_ID = "train-daily"
WEEKLY_JOB_ID = "train-weekly"
FORECAST_JOB_ID = "forecast-intraday"
REPLAY_JOB_ID = "replay"


class ScheduleError(ValueError):
    """A schedule setting that does not parse (a bad cron expression)."""


@dataclass(frozen=True)
class JobSpec:
    """One scheduled group: which timeframes, when (a 5-field cron expression in UTC), holiday-aware or not.

    kind "train" trains the timeframes (then forecasts them, with schedule_forecast_after_training); kind
    "forecast" only forecasts them; kind "replay" replays every active pair's last `last` bars on them.
    """

    job_id: str
    cron: str
    timeframes: tuple[str, ...]
    skip_holidays: bool = False
    kind: str = "train"
    last: int | None = None  # kind "replay": the bars each pair's replay walks

    def trigger(self) -> BaseTrigger:
        if self.skip_holidays:
            return HolidaySkippingTrigger.from_crontab(self.cron, timezone=UTC)
        return CronTrigger.from_crontab(self.cron, timezone=UTC)


def job_specs(settings: ScheduleSettings) -> list[JobSpec]:
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
    fields = ["schedule_daily_cron", "schedule_weekly_cron"]
    if settings.schedule_forecast_cron.strip():
        # Intraday forecasts between trainings: bars close all day, the champions are retrained nightly.
        specs.append(
            JobSpec(
                FORECAST_JOB_ID,
                settings.schedule_forecast_cron.strip(),
                tuple(settings.schedule_forecast_timeframes),
                skip_holidays=settings.schedule_skip_holidays,
                kind="forecast",
            )
        )
        fields.append("schedule_forecast_cron")
    if settings.schedule_replay_cron.strip():
        # The replay of the last N bars (off by default): the verdicts' densest evidence, refreshed.
        specs.append(
            JobSpec(
                REPLAY_JOB_ID,
                settings.schedule_replay_cron.strip(),
                tuple(settings.schedule_replay_timeframes),
                kind="replay",
                last=settings.schedule_replay_last,
            )
        )
        fields.append("schedule_replay_cron")
    for spec, field in zip(specs, fields, strict=True):
        try:
            spec.trigger()
        except ValueError as exc:
            raise ScheduleError(f"{field}: {spec.cron!r} is not a valid cron expression: {exc}") from exc
    return [s for s in specs if s.timeframes]


def job_defaults(settings: ScheduleSettings) -> dict[str, Any]:
    """APScheduler job defaults: a fire up to the grace time late still runs; a backlog runs once; no overlap."""
    return {
        "misfire_grace_time": round(settings.schedule_misfire_grace_hours * 3600),
        "coalesce": True,
        "max_instances": 1,
    }


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


def both_zones(moment: datetime) -> str:
    ny = moment.astimezone(NEW_YORK)
    return f"{moment.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC = {ny:%a %Y-%m-%d %H:%M %Z} (America/New_York)"


def format_schedule(specs: Iterable[JobSpec], start: datetime, n: int = 3) -> str:
    lines: list[str] = []
    for spec in specs:
        holidays = ", skips NYSE holidays" if spec.skip_holidays else ""
        what = {"forecast": "forecasts only, ", "replay": f"replay of the last {spec.last} bars, "}.get(
            spec.kind, ""
        )
        lines.append(
            f"{spec.job_id}: cron '{spec.cron}' (UTC), {what}timeframes {' '.join(spec.timeframes)}{holidays}"
        )
        lines.extend(f"  {both_zones(t)}" for t in next_fire_times(spec, start, n))
    return "\n".join(lines)
