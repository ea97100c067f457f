"""Clock arithmetic for delays and balancers: time zones, times of day, dates, periods."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from spotzee.domain.segments.operators import as_instant
from spotzee.schemas.journey_models import WEEKDAYS

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def resolve_zone(*names: str | None) -> ZoneInfo:
    """The first valid IANA zone among ``names`` (a contact's zone may be junk), else UTC."""
    for name in names:
        zone = _zone(name) if name else None
        if zone is not None:
            return zone
    return ZoneInfo("UTC")


def utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def local_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time in ``zone`` as a UTC instant.

    ``fold=0``: a time repeated when clocks go back is its first occurrence; a time skipped when
    they go forward lands as far past the gap's start as it was meant to (02:30 -> 03:30).
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def next_time_of_day(now: datetime, hhmm: str, weekdays: Collection[str] | None, zone: ZoneInfo) -> datetime:
    """The first ``HH:MM`` in ``zone`` strictly after ``now``, on one of ``weekdays`` (None: any)."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    today = now.astimezone(zone).date()
    for days in range(9):  # 7 days cover every weekday; 2 more for a time skipped by DST on the day
        day = today + timedelta(days=days)
        if weekdays is not None and WEEKDAYS[day.weekday()] not in weekdays:
            continue
        candidate = local_to_utc(datetime.combine(day, time(hour, minute)), zone)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: some allowed weekday comes within 9 days")


def instant_of(value: Any, zone: ZoneInfo) -> datetime | None:
    """A date read from data: ISO datetimes as instants (naive: UTC), bare dates at local midnight."""
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, date):
        return local_to_utc(datetime.combine(value, time()), zone)
    if isinstance(value, str) and _DATE_ONLY.match(value):
        try:
            return local_to_utc(datetime.combine(date.fromisoformat(value), time()), zone)
        except ValueError:
            return None
    if isinstance(value, str):
        return as_instant(value)
    return None


def period_start(now: datetime, period: timedelta) -> datetime:
    """The start of the period holding ``now``: periods tile time from the Unix epoch, in UTC."""
    return EPOCH + ((now - EPOCH) // period) * period
