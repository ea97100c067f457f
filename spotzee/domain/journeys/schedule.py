"""When a scheduled journey fires next: ``cron`` (croniter) or ``rrule`` (dateutil), in a time zone.

Both are walked in naive wall-clock time of the zone and each occurrence mapped to UTC by
``local_to_utc``: croniter's own zone arithmetic misplaces occurrences around DST changes, and
wall-clock walking is what a marketer means by "every Monday at 09:00". Consequences: an
occurrence skipped by the clocks going forward fires shifted by the gap (02:30 -> 03:30), one
repeated by the clocks going back fires once (the first time). An ``rrule`` whose DTSTART is in
UTC (``Z``) or names a ``TZID`` is walked in that zone by dateutil itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from spotzee.domain.journeys.timing import local_to_utc, resolve_zone, utc
from spotzee.schemas.journey_models import ScheduledTrigger, parse_rrule

MAX_STEPS: Final = 100_000  # occurrences examined per call; a schedule past that is treated as ended


def next_fire(trigger: ScheduledTrigger, after: datetime, tz: str = "UTC") -> datetime | None:
    """The first occurrence strictly after ``after`` (UTC), or None when the schedule has ended.

    ``tz`` is the fallback zone (the journey's, else the project's) when the trigger names none.
    """
    after = utc(after)
    zone = resolve_zone(trigger.timezone, tz)
    if trigger.cron is not None:
        return _first_after(_cron_walls(trigger.cron, _start_wall(after, zone)), zone, after)
    assert trigger.rrule is not None  # the model holds exactly one of them
    rules = parse_rrule(trigger.rrule)
    if _aware(trigger.rrule):
        found = rules.after(after)
        return None if found is None else utc(found)
    return _first_after(rules.xafter(_start_wall(after, zone), inc=True), zone, after)


def _start_wall(after: datetime, zone: ZoneInfo) -> datetime:
    """Where to start walking: the wall time of ``after``, moved back by a DST gap that just
    happened (a wall time inside the gap maps to an instant after it, so it may still be due)."""
    jump = after.astimezone(zone).utcoffset() or timedelta(0)
    before = (after - timedelta(days=1)).astimezone(zone).utcoffset() or timedelta(0)
    wall = after.astimezone(zone).replace(tzinfo=None)
    return wall - max(jump - before, timedelta(0))


def _cron_walls(expression: str, start: datetime) -> Iterator[datetime]:
    walker = croniter(expression, start)
    try:
        while True:
            yield walker.get_next(datetime)
    except CroniterBadDateError:  # no further date matches (e.g. 30 February)
        return


@lru_cache(maxsize=256)
def _aware(text: str) -> bool:
    first = next(iter(parse_rrule(text)), None)
    return first is not None and first.tzinfo is not None


def _first_after(walls: Iterator[datetime], zone: ZoneInfo, after: datetime) -> datetime | None:
    """The earliest mapped occurrence after ``after``.

    Mapping is monotonic except inside a DST gap, where a shifted occurrence can land later than
    the next ones: after finding one, keep looking while wall times are before its real local time.
    """
    best: datetime | None = None
    best_wall: datetime | None = None
    for count, wall in enumerate(walls):
        if count >= MAX_STEPS or (best_wall is not None and wall >= best_wall):
            break
        at = local_to_utc(wall, zone)
        if at > after and (best is None or at < best):
            best, best_wall = at, at.astimezone(zone).replace(tzinfo=None)
    return None if best is None else best.astimezone(UTC)
