"""A faust codec for the pydantic schemas: topics carry the same JSON as everywhere else."""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs
from pydantic import BaseModel, TypeAdapter

from spotzee.schemas.analytics_models import AnalyticsRecord, analytics_record_adapter
from spotzee.schemas.records import EventsRecord, events_record_adapter

ANALYTICS_CODEC = "spotzee-analytics"
EVENTS_CODEC = "spotzee-events"


class PydanticCodec(codecs.Codec):
    """Encodes pydantic models (or anything the adapter takes) as JSON; decodes to the model."""

    def __init__(self, adapter: TypeAdapter[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapter = adapter

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, BaseModel):
            return obj.model_dump_json().encode()
        return self.adapter.dump_json(obj)

    def _loads(self, s: bytes) -> Any:
        return self.adapter.validate_json(s)


def register() -> None:
    """Make the codecs available by name to faust topics (idempotent)."""
    codecs.register(ANALYTICS_CODEC, PydanticCodec(analytics_record_adapter))
    codecs.register(EVENTS_CODEC, PydanticCodec(events_record_adapter))


def decode_analytics(raw: bytes) -> AnalyticsRecord:
    return analytics_record_adapter.validate_json(raw)


def decode_events(raw: bytes) -> EventsRecord:
    return events_record_adapter.validate_json(raw)
