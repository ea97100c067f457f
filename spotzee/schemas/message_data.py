"""Segment-spec messages as the processor keeps them: the Struct twins of ``schemas/events.py``.

The API validates a message with the pydantic models of ``events.py`` (the contract: camelCase,
OpenAPI, 400s with the path) and hands the processor this form, decoded without re-validation.
Field names are the snake_case names of the edge models (``name_`` included: the JSON the records
always had); Segment fields Spotzee does not know are kept only in the event's ``raw`` bytes.
tests/unit/test_struct_models.py checks that the two sides agree on every field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec

from spotzee.schemas.structs import Tagged, convert


class _Data(Tagged, kw_only=True):
    message_id: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    integrations: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def contact_id(self) -> str:
        """The contact a message is about: the app's userId, else its anonymousId."""
        return self.user_id or self.anonymous_id or ""


class TrackData(_Data, tag="track", kw_only=True):
    type: ClassVar[str] = "track"
    event: str
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class IdentifyData(_Data, tag="identify", kw_only=True):
    type: ClassVar[str] = "identify"
    traits: dict[str, Any] = msgspec.field(default_factory=dict)


class PageData(_Data, tag="page", kw_only=True):
    type: ClassVar[str] = "page"
    name_: str | None = None
    category: str | None = None
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class ScreenData(_Data, tag="screen", kw_only=True):
    type: ClassVar[str] = "screen"
    name_: str | None = None
    category: str | None = None
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class GroupData(_Data, tag="group", kw_only=True):
    type: ClassVar[str] = "group"
    group_id: str
    traits: dict[str, Any] = msgspec.field(default_factory=dict)


class AliasData(_Data, tag="alias", kw_only=True):
    type: ClassVar[str] = "alias"
    previous_id: str


MessageData = TrackData | IdentifyData | PageData | ScreenData | GroupData | AliasData


def message_data(message: Any) -> MessageData:
    """An edge model (``events.SegmentMessage``, already validated) in the processor's form."""
    fields = message.model_dump(exclude={"write_key"})
    return convert(fields, MessageData)  # type: ignore[arg-type]


def event_name(message: MessageData) -> str:
    """The name behavioural state is counted under: the track event, else the call type."""
    if isinstance(message, TrackData):
        return message.event
    return message.type
