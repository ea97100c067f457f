"""Contact state (what the contact processor stores) and the contact API models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spotzee.schemas.common import JSONObject, Model, UTCDateTime

FIRST_CLASS_FIELDS = ("email", "phone", "timezone", "locale")


class EventStats(Model):
    """Behavioural counters for one event name."""

    count: int = 0
    first_at: UTCDateTime
    last_at: UTCDateTime


class RecentEvent(Model):
    message_id: str
    type: str
    event: str
    timestamp: UTCDateTime
    properties: JSONObject = Field(default_factory=dict)


class ContactState(Model):
    """Everything the contact processor keeps about one contact."""

    project_id: str
    id: str
    user_id: str | None = None
    anonymous_ids: list[str] = Field(default_factory=list)
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    traits: JSONObject = Field(default_factory=dict)
    groups: dict[str, JSONObject] = Field(default_factory=dict)
    first_seen: UTCDateTime | None = None
    last_seen: UTCDateTime | None = None
    events: dict[str, EventStats] = Field(default_factory=dict)
    recent_events: list[RecentEvent] = Field(default_factory=list)
    created_at: UTCDateTime
    updated_at: UTCDateTime
    version: int = 0


class AliasState(Model):
    """Left behind at an id that was merged into another contact: later events are forwarded."""

    project_id: str
    id: str
    merged_into: str
    merged_at: UTCDateTime


class FieldChange(Model):
    """One attribute change, as recorded in the ``contact_changes`` history."""

    path: str
    old: Any = None
    new: Any = None


class ContactPublic(Model):
    id: str
    project_id: str
    user_id: str | None
    anonymous_ids: list[str]
    email: str | None
    phone: str | None
    timezone: str | None
    locale: str | None
    traits: JSONObject
    groups: dict[str, JSONObject]
    first_seen: UTCDateTime | None
    last_seen: UTCDateTime | None
    events: dict[str, EventStats]
    recent_events: list[RecentEvent]
    created_at: UTCDateTime
    updated_at: UTCDateTime
    version: int

    @classmethod
    def from_state(cls, state: ContactState) -> ContactPublic:
        return cls.model_validate(state.model_dump())


class ContactUpdate(Model):
    """``PATCH /api/v1/contacts/{id}``: first-class fields and traits; ``null`` removes."""

    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    traits: JSONObject = Field(default_factory=dict)

    def as_traits(self) -> JSONObject:
        """One traits dict, with only the first-class fields the caller actually sent."""
        merged: JSONObject = dict(self.traits)
        for name in FIRST_CLASS_FIELDS:
            if name in self.model_fields_set:
                merged[name] = getattr(self, name)
        return merged


class ContactAccepted(Model):
    status: Literal["accepted"] = "accepted"
    id: str
