"""Segment-spec messages accepted by the ingestion API (a discriminated union on ``type``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import Field, model_validator

from spotzee.schemas.common import CamelModel, Identifier, JSONObject, UTCDateTime

MAX_ID_LENGTH = 512
MAX_EVENT_DEPTH = 32
"""Levels of JSON nesting in one event (the event object is level 1, ``properties`` level 2, ...).

Deeper payloads are refused at ingestion: stored records wrap an event a few levels deeper, and a
JSON reader's own limit (orjson's is 255) must never be what refuses it later, in the processor."""


EARLIEST_TIMESTAMP: Final = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP: Final = datetime(2200, 1, 1, tzinfo=UTC)
"""Event times (``timestamp``, ``originalTimestamp``, ``sentAt`` and the skew-corrected time) must lie
in [1900-01-01, 2200-01-01) UTC: ClickHouse's DateTime64 holds 1900-2299, and nothing real happens
outside it. Out-of-range times are refused at ingestion (400), never clamped: a clamped time is a lie."""


def timestamp_problem(value: datetime) -> str | None:
    if value < EARLIEST_TIMESTAMP or value >= LATEST_TIMESTAMP:
        return f"must be between {EARLIEST_TIMESTAMP.date()} and {LATEST_TIMESTAMP.date()} (UTC)"
    return None


def too_deep(value: Any, max_depth: int = MAX_EVENT_DEPTH) -> list[str | int] | None:
    """The location of the first object or array nested deeper than ``max_depth``, or None.

    Iterative, so a hostile payload cannot exhaust the interpreter's stack while being checked;
    each node remembers only its parent, so the common (valid) case builds no paths."""
    stack: list[tuple[Any, int, int, str | int]] = [(value, 1, -1, "")]
    seen: list[tuple[int, str | int]] = []  # (parent index, key) of every container visited
    while stack:
        node, depth, parent, key = stack.pop()
        if not isinstance(node, dict | list):
            continue
        seen.append((parent, key))
        if depth > max_depth:
            where: list[str | int] = []
            index = len(seen) - 1
            while index > 0:
                index, step = seen[index]
                where.append(step)
            return where[::-1]
        here = len(seen) - 1
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((child, depth + 1, here, name) for name, child in items if isinstance(child, dict | list))
    return None


class _Message(CamelModel):
    message_id: Annotated[Identifier | None, Field(max_length=MAX_ID_LENGTH)] = None
    user_id: Annotated[Identifier | None, Field(max_length=MAX_ID_LENGTH)] = None
    anonymous_id: Annotated[Identifier | None, Field(max_length=MAX_ID_LENGTH)] = None
    timestamp: UTCDateTime | None = None
    original_timestamp: UTCDateTime | None = None
    sent_at: UTCDateTime | None = None
    context: JSONObject = Field(default_factory=dict)
    integrations: JSONObject = Field(default_factory=dict)
    write_key: str | None = None

    @model_validator(mode="after")
    def _needs_identity(self) -> _Message:
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        return self

    @property
    def contact_id(self) -> str:
        """The contact a message is about: the app's userId, else its anonymousId."""
        return self.user_id or self.anonymous_id or ""


class TrackMessage(_Message):
    type: Literal["track"] = "track"
    event: Annotated[str, Field(min_length=1, max_length=512)]
    properties: JSONObject = Field(default_factory=dict)


class IdentifyMessage(_Message):
    type: Literal["identify"] = "identify"
    traits: JSONObject = Field(default_factory=dict)


class PageMessage(_Message):
    type: Literal["page"] = "page"
    name_: Annotated[str | None, Field(alias="name", max_length=512)] = None
    category: str | None = None
    properties: JSONObject = Field(default_factory=dict)


class ScreenMessage(_Message):
    type: Literal["screen"] = "screen"
    name_: Annotated[str | None, Field(alias="name", max_length=512)] = None
    category: str | None = None
    properties: JSONObject = Field(default_factory=dict)


class GroupMessage(_Message):
    type: Literal["group"] = "group"
    group_id: Annotated[Identifier, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    traits: JSONObject = Field(default_factory=dict)


class AliasMessage(_Message):
    """``previousId`` (an anonymousId or a former userId) becomes ``userId``."""

    type: Literal["alias"] = "alias"
    previous_id: Annotated[Identifier, Field(min_length=1, max_length=MAX_ID_LENGTH)]

    @model_validator(mode="after")
    def _needs_user(self) -> AliasMessage:
        if not self.user_id:
            raise ValueError("alias requires userId")
        return self


SegmentMessage = Annotated[
    TrackMessage | IdentifyMessage | PageMessage | ScreenMessage | GroupMessage | AliasMessage,
    Field(discriminator="type"),
]

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")


def event_name(message: SegmentMessage) -> str:
    """The name behavioural state is counted under: the track event, else the call type."""
    if isinstance(message, TrackMessage):
        return message.event
    return message.type
