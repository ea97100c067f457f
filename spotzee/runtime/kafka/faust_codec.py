"""The faust codecs of Spotzee's topics: they carry the same JSON as everywhere else.

Values are msgspec Structs (records, analytics rows) or pydantic models, encoded by
``record_codec.dumps``; decoding is msgspec's, into the topic's tagged union, without re-validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from faust.serializers import codecs
from pydantic import BaseModel

from spotzee.schemas.analytics_models import AnalyticsRecord
from spotzee.schemas.analytics_models import decode_analytics as _decode_analytics
from spotzee.schemas.records import EventsRecord, decode_record
from spotzee.schemas.structs import encode
from spotzee.streams.record_codec import dumps

ANALYTICS_CODEC = "spotzee-analytics"
EVENTS_CODEC = "spotzee-events"


class RecordCodec(codecs.Codec):
    """Encodes a Struct, a pydantic model or builtins as JSON (bytes pass through); decodes with ``decode``."""

    def __init__(self, decode: Callable[[bytes], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decode = decode

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, msgspec.Struct | BaseModel):
            return dumps(obj)
        return encode(obj)

    def _loads(self, s: bytes) -> Any:
        return self.decode(s)


def register() -> None:
    """Make the codecs available by name to faust topics (idempotent)."""
    codecs.register(ANALYTICS_CODEC, RecordCodec(decode_analytics))
    codecs.register(EVENTS_CODEC, RecordCodec(decode_events))


def decode_analytics(raw: bytes) -> AnalyticsRecord:
    return _decode_analytics(raw)


def decode_events(raw: bytes) -> EventsRecord:
    return decode_record(raw)
