"""Segment-spec messages accepted by the ingestion API (a discriminated union on ``type``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spotzee.schemas.common import CamelModel, Identifier, JSONObject, UTCDateTime

MAX_ID_LENGTH = 512


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
