"""The NYSE trading calendar and a cron trigger that skips NYSE full-day holidays.

Named `market_calendar` rather than `calendar` so that running a file of this package directly can never shadow
the standard library's `calendar` module.

Holidays come from the `holidays` package (`holidays.financial_holidays("NYSE")`): New Year's Day, Martin Luther
King Jr. Day, Washington's Birthday, Good Friday, Memorial Day, Juneteenth (from 2022), Independence Day, Labor
Day, Thanksgiving and Christmas with the exchange's weekend observance rules (Saturday -> Friday, Sunday ->
Monday, but no Friday 31 December close for a Saturday New Year's Day), plus one-off closures such as national
days of mourning. Early-close days (13:00) are trading days and are not skipped.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import holidays
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

log = logging.getLogger("ml.scheduler")

NEW_YORK = ZoneInfo("America/New_York")

# Consecutive holiday fire times skipped before giving up, so a cron that (nearly) only fires on holidays cannot
# search for ever; a weekday cron meets one holiday at a time.
MAX_SKIPS = 1000


@lru_cache(maxsize=64)
def nyse_holidays(year: int) -> dict[date, str]:
    """NYSE full-day closures of one year: date -> name."""
    return dict(holidays.financial_holidays("NYSE", years=year).items())


def nyse_holiday_name(day: date) -> str | None:
    """The name of the NYSE holiday on `day` (a New York calendar date), or None on any other day."""
    return nyse_holidays(day.year).get(day)


def is_nyse_holiday(day: date) -> bool:
    return nyse_holiday_name(day) is not None


def is_nyse_trading_day(day: date) -> bool:
    """A weekday that is not an NYSE full-day holiday."""
    return day.weekday() < 5 and not is_nyse_holiday(day)


def new_york_date(moment: datetime) -> date:
    """The calendar date in New York at an aware instant (the exchange's own date)."""
    return moment.astimezone(NEW_YORK).date()


class HolidaySkippingTrigger(BaseTrigger):
    """Fires like the wrapped cron trigger, except at instants whose New York date is an NYSE holiday.

    A fire time that falls on a holiday is replaced by the cron trigger's next fire time after it (repeatedly),
    so `30 22 * * mon-fri` fires on the next trading weekday instead of on Thanksgiving or Good Friday.
    Picklable (a cron trigger and nothing else), so it also works with persistent job stores.
    """

    def __init__(self, cron: CronTrigger, expression: str | None = None) -> None:
        self.cron = cron
        self.expression = expression

    @classmethod
    def from_crontab(cls, expression: str, timezone: tzinfo = UTC) -> HolidaySkippingTrigger:
        return cls(CronTrigger.from_crontab(expression, timezone=timezone), expression)

    @property
    def timezone(self) -> tzinfo:
        return self.cron.timezone

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = self.cron.get_next_fire_time(previous_fire_time, now)
        for _ in range(MAX_SKIPS):
            if fire is None:
                return None
            name = nyse_holiday_name(new_york_date(fire))
            if name is None:
                return fire
            log.debug("skipping %s: %s (NYSE holiday)", fire.isoformat(), name)
            # previous = the holiday fire time, now just after it: the cron trigger's next fire time after it
            fire = self.cron.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        log.error("no non-holiday fire time within %d fire times of %s: %s", MAX_SKIPS, now.isoformat(), self)
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"version": 1, "cron": self.cron, "expression": self.expression}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("version", 1) > 1:
            raise ValueError(
                f"Got serialized data for version {state['version']} of {type(self).__name__}, "
                "but only version 1 can be handled"
            )
        self.cron = state["cron"]
        self.expression = state.get("expression")

    def __str__(self) -> str:
        return f"nyse_trading_days[{self.cron}]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ({self.cron!r})>"
