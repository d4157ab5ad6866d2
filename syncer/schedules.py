"""``schedule:`` in a sync definition: a cron expression or ``every <n><unit>``, and its ticks.

A *tick* is one scheduled moment, as whole epoch seconds (UTC). Replicas must agree on every
tick without talking to each other, so both forms are anchored to fixed points: cron
expressions are evaluated in UTC, and intervals count from the Unix epoch (``every 10m`` ticks
at :00, :10, :20... whenever the daemon was started). The claim table (``syncer.claims``) then
lets exactly one replica run each tick.

The triggers are APScheduler 3 triggers, so the daemon hands them to its scheduler as they are;
the tick arithmetic here is also usable on its own with any clock (tests pass datetimes).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

_EVERY = re.compile(
    r"^every\s+(\d+)\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|"
    r"h|hr|hrs|hour|hours|d|day|days)$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# How far back ``latest_tick`` looks for the previous tick of a cron expression: a little more
# than a leap year, so "once a year" expressions are found too.
_MAX_LOOKBACK = dt.timedelta(days=367)


class ScheduleError(ValueError):
    """The ``schedule:`` text is neither a cron expression nor ``every <n><unit>``."""


@dataclass(frozen=True)
class Schedule:
    """A parsed ``schedule:``; ``interval`` is set (seconds) for ``every ...`` forms."""

    expression: str
    trigger: BaseTrigger
    interval: int | None = None

    def next_tick(self, after: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``after``."""
        after = _utc(after)
        if self.interval is not None:
            n = math.floor((after - EPOCH).total_seconds() / self.interval) + 1
            return EPOCH + dt.timedelta(seconds=n * self.interval)
        start = after.replace(microsecond=0) + dt.timedelta(seconds=1)
        found = self.trigger.get_next_fire_time(None, start)
        if found is None:  # pragma: no cover - cron expressions always have a next time
            raise ScheduleError(f"schedule {self.expression!r} has no future tick")
        return _utc(found)

    def latest_tick(self, now: dt.datetime) -> dt.datetime | None:
        """The most recent tick at or before ``now`` (None if there was none in a year).

        When the daemon wakes late, or several ticks passed while it could not run, this is
        the one tick it runs: missed ticks coalesce into a single run.
        """
        now = _utc(now)
        if self.interval is not None:
            n = math.floor((now - EPOCH).total_seconds() / self.interval)
            return EPOCH + dt.timedelta(seconds=n * self.interval)
        window = dt.timedelta(seconds=61)
        first: dt.datetime | None = None
        while window <= _MAX_LOOKBACK * 2:
            candidate = self.trigger.get_next_fire_time(None, now - window)
            if candidate is not None and _utc(candidate) <= now:
                first = _utc(candidate)
                break
            window *= 2
        if first is None:
            return None
        while True:  # walk forward to the last tick that is not in the future
            following = self.next_tick(first)
            if following > now:
                return first
            first = following

    def ticks_between(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        """Every tick in ``(start, end]``, oldest first."""
        ticks = []
        tick = self.next_tick(start)
        while tick <= _utc(end):
            ticks.append(tick)
            tick = self.next_tick(tick)
        return ticks


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def tick_id(tick: dt.datetime) -> int:
    """A tick as whole epoch seconds: what the claim table stores."""
    return int((_utc(tick) - EPOCH).total_seconds())


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekday(value: str) -> int:
    """A cron weekday (0 or 7 = Sunday ... 6 = Saturday, or a three-letter name) as 0-6."""
    lowered = value.lower()
    if lowered in _DAY_NAMES:
        return _DAY_NAMES.index(lowered)
    if not value.isdigit() or int(value) > 7:
        raise ValueError(f"day of week {value!r} is not 0-7 or mon..sun")
    return int(value) % 7


def cron_weekdays(field: str) -> str:
    """The day-of-week field of a crontab line rewritten as APScheduler day names.

    APScheduler 3 counts weekdays from Monday = 0, so ``from_crontab('0 6 * * 1-5')`` would run
    Tuesday to Saturday; crontab(5) counts Sunday = 0 (or 7). Names mean the same to both, so
    every weekday given is spelled out by name.
    """
    if field in ("*", "?"):
        return field
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"day of week step {step_text!r} is not a positive number")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, _, high = span.partition("-")
            first, last = _weekday(low), _weekday(high)
            if high == "7":
                last = 7  # 5-7: Friday to Sunday
            if last < first:
                raise ValueError(f"day of week range {span!r} runs backwards")
        else:
            first = _weekday(span)
            last = 6 if step else first
        days.update(day % 7 for day in range(first, last + 1, step or 1))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def parse_schedule(text: str) -> Schedule:
    """``every 30s`` / ``every 10m`` / ``every 2h`` / ``every 1d``, or a 5-field cron line (UTC).

    Raises ScheduleError with a message fit to follow ``<file>: schedule:``.
    """
    expression = " ".join(text.split())
    if not expression:
        raise ScheduleError("is empty; use a cron expression or e.g. 'every 10m'")
    match = _EVERY.match(expression)
    if match:
        count = int(match.group(1))
        if count < 1:
            raise ScheduleError(f"{text!r}: the interval must be at least 1")
        seconds = count * _UNIT_SECONDS[match.group(2)[0].lower()]
        trigger = IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=UTC)
        return Schedule(expression, trigger, seconds)
    if expression.lower().startswith("every"):
        raise ScheduleError(
            f"{text!r} is not an interval; write e.g. 'every 30s', 'every 10m', 'every 2h'"
        )
    if len(expression.split(" ")) != 5:
        raise ScheduleError(
            f"{text!r} is not a cron expression (5 fields: minute hour day month weekday)"
            " nor an interval such as 'every 10m'"
        )
    fields = expression.split(" ")
    try:
        fields[4] = cron_weekdays(fields[4])
        cron = CronTrigger.from_crontab(" ".join(fields), timezone=UTC)
    except ValueError as exc:
        raise ScheduleError(f"{text!r} is not a valid cron expression ({exc})") from None
    return Schedule(expression, cron)
