"""Contact state (what the contact processor stores: Structs) and the contact API models (pydantic).

``ContactPublic`` is the edge twin of ``ContactState``: the same fields, checked to agree by
tests/unit/test_struct_models.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from pydantic import Field

from spotzee.schemas.common import JSONObject, Model, UTCDateTime
from spotzee.schemas.structs import Struct, to_builtins

FIRST_CLASS_FIELDS = ("email", "phone", "timezone", "locale")
# Push devices kept per contact: a phone re-installing an app gets a new token each time, so the
# list is bounded; beyond it the device seen least recently is dropped (docs/contacts.md, Devices).
MAX_DEVICES = 20
MAX_DEVICE_TOKEN_CHARS = 4096  # FCM tokens are ~160 characters, APNs 64 hex; longer is not a token
DeviceType = Literal["ios", "android", "other"]


class EventStats(Struct, kw_only=True):
    """Behavioural counters for one event name."""

    count: int = 0
    first_at: datetime
    last_at: datetime


class RecentEvent(Struct, kw_only=True):
    message_id: str
    type: str
    event: str
    timestamp: datetime
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class Device(Struct, kw_only=True):
    """A push token the contact's app reported (an event's ``context.device.token``)."""

    token: str
    type: str = "other"  # ``ios``, ``android`` (``context.device.type``), else ``other``
    first_seen: datetime
    last_seen: datetime


class ContactState(Struct, kw_only=True):
    """Everything the contact processor keeps about one contact (a table value: see schemas/structs.py)."""

    project_id: str
    id: str
    user_id: str | None = None
    anonymous_ids: list[str] = msgspec.field(default_factory=list)
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    events: dict[str, EventStats] = msgspec.field(default_factory=dict)
    recent_events: list[RecentEvent] = msgspec.field(default_factory=list)
    devices: list[Device] = msgspec.field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    version: int = 0


class AliasState(Struct, kw_only=True):
    """Left behind at an id that was merged into another contact: later events are forwarded."""

    project_id: str
    id: str
    merged_into: str
    merged_at: datetime


class FieldChange(Struct, kw_only=True):
    """One attribute change, as recorded in the ``contact_changes`` history."""

    path: str
    old: Any = None
    new: Any = None


class EventStatsPublic(Model):
    count: int
    first_at: UTCDateTime
    last_at: UTCDateTime


class RecentEventPublic(Model):
    message_id: str
    type: str
    event: str
    timestamp: UTCDateTime
    properties: JSONObject


class DevicePublic(Model):
    token: str
    type: DeviceType
    first_seen: UTCDateTime
    last_seen: UTCDateTime


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
    events: dict[str, EventStatsPublic]
    recent_events: list[RecentEventPublic]
    devices: list[DevicePublic] = Field(default_factory=list)
    created_at: UTCDateTime
    updated_at: UTCDateTime
    version: int

    @classmethod
    def from_state(cls, state: ContactState) -> ContactPublic:
        return cls.model_validate(to_builtins(state))


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
