"""Segment-spec messages accepted by the ingestion API (a discriminated union on ``type``).

Two readings of the same messages: the pydantic models are the contract (OpenAPI, the 4xx with the
field path); the msgspec ``*Wire`` Structs at the end are what ingestion reads a request with first,
a strict subset of what the models accept (see ``_Wire``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType
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


# -- the wire form: what ingestion's fast path decodes (api/ingest_routes.py) ---------------------

_WireId = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | int
_WireName = Annotated[str, msgspec.Meta(max_length=512)]


class _Wire(msgspec.Struct, rename="camel", tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """A message as msgspec reads it from its bytes, in one C pass, before any pydantic model.

    Everything it accepts the models accept, with the same values; what it refuses goes to the models,
    which accept it or name the error. So it is stricter: a number is an id only when it is an integer
    (the models also take an integral float), times are text (parsed by ingestion, RFC 3339 only), and
    a key it does not declare is refused rather than skipped -- the snake_case spellings the models also
    take (``user_id``), or a field msgspec would not read at all: every byte of an accepted message has
    been decoded, so it is valid JSON by the same rules as the models' reader. The fields of other
    message types and Segment's common fields Spotzee does not use are declared (``Any``, then dropped,
    as the models drop their extras) so that the messages SDKs send stay on the fast path.
    ``tests/unit/test_ingest_fast_path.py`` checks the subset property on generated messages."""

    message_id: _WireId | None = None
    user_id: _WireId | None = None
    anonymous_id: _WireId | None = None
    timestamp: str | None = None
    original_timestamp: str | None = None
    sent_at: str | UnsetType | None = UNSET  # absent, the batch's ``sentAt`` applies; null stays null
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}
    write_key: str | None = None
    # another message type's fields (overridden by the type that has them)
    event: Any = None
    properties: Any = None
    traits: Any = None
    name_: Any = msgspec.field(default=None, name="name")
    category: Any = None
    group_id: Any = None
    previous_id: Any = None
    # Segment's common fields that Spotzee keeps only in the event's raw bytes
    channel: Any = None
    version: Any = None
    received_at: Any = None
    options: Any = None
    metadata: Any = msgspec.field(default=None, name="_metadata")


class TrackWire(_Wire, tag="track", kw_only=True):
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    properties: dict[str, Any] = {}


class IdentifyWire(_Wire, tag="identify", kw_only=True):
    traits: dict[str, Any] = {}


class PageWire(_Wire, tag="page", kw_only=True):
    name_: _WireName | None = msgspec.field(default=None, name="name")
    category: str | None = None
    properties: dict[str, Any] = {}


class ScreenWire(_Wire, tag="screen", kw_only=True):
    name_: _WireName | None = msgspec.field(default=None, name="name")
    category: str | None = None
    properties: dict[str, Any] = {}


class GroupWire(_Wire, tag="group", kw_only=True):
    group_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)] | int
    traits: dict[str, Any] = {}


class AliasWire(_Wire, tag="alias", kw_only=True):
    previous_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)] | int


WireMessage = TrackWire | IdentifyWire | PageWire | ScreenWire | GroupWire | AliasWire
WIRE_TYPES: Final[dict[str, type[WireMessage]]] = {
    "track": TrackWire,
    "identify": IdentifyWire,
    "page": PageWire,
    "screen": ScreenWire,
    "group": GroupWire,
    "alias": AliasWire,
}
