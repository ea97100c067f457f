"""Shared model configuration and small types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel

JSONObject = dict[str, Any]


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (ClickHouse's come back naive); aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    try:
        return as_utc(value)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise ValueError("date is out of range once converted to UTC") from None


def _id_string(value: Any) -> Any:
    """Segment accepts numeric ids and treats them as strings."""
    if isinstance(value, bool):
        raise ValueError("must be a string or a number")
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


UTCDateTime = Annotated[datetime, AfterValidator(_utc)]
Identifier = Annotated[str, BeforeValidator(_id_string)]


class Model(BaseModel):
    """Internal contract: snake_case, strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class CamelModel(BaseModel):
    """Wire model for Segment-spec payloads: camelCase names, unknown fields kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
