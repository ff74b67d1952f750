"""When a bar has closed, and which bar lies h bars later, in trading time.

A bar is stored under its opening instant `ts`; its values are known only once it closes. A bar followed by a
later bar in the store has closed (at the latest when the next one opened). For the newest bar the close is
estimated from the pair's own session grid:

* the grid is the set of New York times of day at which the pair's recent bars open (for example 09:30, 10:00,
  11:00 ... 15:00 for clock-aligned hourly bars, or just 09:30 for daily bars), and the days it trades on are
  NYSE trading days (weekends and NYSE holidays skipped) unless its history has bars on weekends;
* an intraday bar closes when the next grid slot opens, but no later than the 16:00 New York session close of
  its own day when it opened before that close (the last hourly bar of a day);
* a daily bar closes at 16:00 New York on its trading day: its own date when it opens before 16:00 on a trading
  day, else the next trading day (bars stamped 00:00 UTC, the evening before in New York, belong to the next
  session); a weekly bar at 16:00 on the last NYSE trading day of that day's week;
* a pair whose history trades on weekends (in New York and in UTC) is taken to trade round the clock.

Early-close days (13:00) are not modelled: such a bar is taken to close at 16:00, so a forecast waits a little
longer than it had to, never less. The same grid gives `target_ts`, the opening instant of the bar h bars after a
forecast's bar (h slots later in trading time, not h x the bar length in wall-clock time); the bar actually
reached is recorded with the outcome (`realised_bar_ts`), so any difference is visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from ml.src.common.market_calendar import NEW_YORK, is_nyse_trading_day

SESSION_CLOSE = time(16, 0)
_MAX_DAYS = 3660  # ten years of stepping: no grid needs more


@dataclass(frozen=True)
class SessionGrid:
    """The New York times of day a pair's bars open at, and whether it trades only on NYSE trading days."""

    slots: tuple[time, ...]
    exchange_days: bool = True

    @classmethod
    def from_history(cls, ts: Sequence[datetime] | pd.Series) -> SessionGrid:
        utc = pd.DatetimeIndex(pd.to_datetime(pd.Series(ts), utc=True))
        local = utc.tz_convert(NEW_YORK)
        if len(local) == 0:
            return cls(slots=(time(9, 30),))
        slots = tuple(sorted({t.replace(tzinfo=None) for t in local.time}))
        # Weekend trading only when a bar is on a weekend in New York AND in UTC: a Monday bar stamped 00:00 UTC
        # is Sunday evening in New York, and is not one.
        weekend = bool(((local.day_of_week >= 5) & (utc.day_of_week >= 5)).any())
        return cls(slots=slots, exchange_days=not weekend)

    def trades_on(self, day: date) -> bool:
        return is_nyse_trading_day(day) if self.exchange_days else True

    def _at(self, day: date, slot: time) -> datetime:
        return datetime.combine(day, slot, tzinfo=NEW_YORK).astimezone(UTC)

    def next_open(self, moment: datetime) -> datetime:
        """The first grid slot strictly after `moment`."""
        local = moment.astimezone(NEW_YORK)
        day = local.date()
        for _ in range(_MAX_DAYS):
            if self.trades_on(day):
                for slot in self.slots:
                    at = self._at(day, slot)
                    if at > moment:
                        return at
            day += timedelta(days=1)
        raise ValueError(f"no trading slot within {_MAX_DAYS} days after {moment.isoformat()}")

    def step(self, moment: datetime, n: int) -> datetime:
        at = moment
        for _ in range(n):
            at = self.next_open(at)
        return at


def _week_days(day: date) -> list[date]:
    monday = day - timedelta(days=day.weekday())
    return [monday + timedelta(days=k) for k in range(7)]


def _session_day(local: datetime, grid: SessionGrid) -> date:
    """The trading day a daily or weekly bar opening at `local` (New York time) belongs to: its own date before
    the 16:00 close on a trading day, else the next trading day (vendors stamping 00:00 UTC, i.e. the evening
    before in New York, included)."""
    day = local.date()
    if local.time() < SESSION_CLOSE and grid.trades_on(day):
        return day
    day += timedelta(days=1)
    for _ in range(14):
        if grid.trades_on(day):
            return day
        day += timedelta(days=1)
    return day


def bar_close_time(ts: datetime, timeframe: str, grid: SessionGrid) -> datetime:
    """The instant the bar opened at `ts` has closed by (an upper bound; see the module docstring)."""
    ts = pd.Timestamp(ts).to_pydatetime()
    local = ts.astimezone(NEW_YORK)
    if not grid.exchange_days:  # round-the-clock markets: a bar closes when the next one opens
        return ts + {"d1": timedelta(days=1), "w1": timedelta(days=7)}.get(timeframe, grid.next_open(ts) - ts)
    if timeframe in ("d1", "w1"):
        day = _session_day(local, grid)
        if timeframe == "w1":
            day = [d for d in _week_days(day) if grid.trades_on(d) and d >= day][-1]
        close = datetime.combine(day, SESSION_CLOSE, tzinfo=NEW_YORK).astimezone(UTC)
        return close if close > ts else ts + timedelta(days=7 if timeframe == "w1" else 1)
    nxt = grid.next_open(ts)
    if local.time() < SESSION_CLOSE:
        session_close = datetime.combine(local.date(), SESSION_CLOSE, tzinfo=NEW_YORK).astimezone(UTC)
        return min(nxt, session_close)
    return nxt


def latest_closed_index(
    ts: pd.Series, timeframe: str, now: datetime, grid: SessionGrid | None = None
) -> int | None:
    """Position in `ts` (ascending bar opening instants, all <= now) of the newest bar closed at `now`."""
    if len(ts) == 0:
        return None
    grid = grid or SessionGrid.from_history(ts)
    last = len(ts) - 1
    if bar_close_time(ts.iloc[last], timeframe, grid) <= now:
        return last
    return last - 1 if last >= 1 else None  # a later bar exists, so this one has closed


def target_ts(bar_ts: datetime, timeframe: str, horizon: int, grid: SessionGrid) -> datetime:
    """Opening instant of the bar `horizon` bars after `bar_ts`, in the pair's trading time."""
    bar_ts = pd.Timestamp(bar_ts).to_pydatetime()
    if timeframe == "w1":
        local = bar_ts.astimezone(NEW_YORK)
        start = local.date() + timedelta(days=7 * horizon)
        for day in _week_days(start):
            if grid.trades_on(day):
                return datetime.combine(day, local.time(), tzinfo=NEW_YORK).astimezone(UTC)
        return (local + timedelta(days=7 * horizon)).astimezone(UTC)
    return grid.step(bar_ts, horizon)
