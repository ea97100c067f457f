"""Segments and lists: definitions, API models, and what the processor emits about membership.

Definitions live in the definitions store (key ``segment/<id>``, ``list/<id>``). A segment's
``version`` grows on every edit; membership rows carry the version that decided them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from pydantic import Field

from spotzee.schemas.common import Identifier, Model, UTCDateTime
from spotzee.schemas.limits import QuarantinedDefinition
from spotzee.schemas.rules import SegmentCreate, SegmentRule
from spotzee.schemas.structs import Struct, Tagged

# -- definitions ------------------------------------------------------------------------------


class SegmentStatus(StrEnum):
    building = "building"  # the current version is being evaluated over existing contacts
    ready = "ready"
    deleted = "deleted"


class BuildProgress(Model):
    total: int = 0
    done: int = 0


class SegmentDefinition(Model):
    type: Literal["segment"] = "segment"
    id: str
    project_id: str
    name: str
    description: str | None = None
    rule: SegmentRule
    version: int
    status: SegmentStatus
    progress: BuildProgress = Field(default_factory=BuildProgress)
    created_at: UTCDateTime
    updated_at: UTCDateTime
    ready_at: UTCDateTime | None = None


class ListDefinition(Model):
    type: Literal["list"] = "list"
    id: str
    project_id: str
    name: str
    description: str | None = None
    created_at: UTCDateTime
    deleted: bool = False


# -- API ----------------------------------------------------------------------------------------

SegmentUpdate = SegmentCreate  # PUT replaces name, description and rule


class SegmentPublic(Model):
    id: str
    project_id: str
    name: str
    description: str | None
    rule: SegmentRule
    version: int
    status: SegmentStatus
    progress: BuildProgress
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None


class SegmentList(Model):
    items: list[SegmentPublic]
    quarantined: list[QuarantinedDefinition]  # stored but unreadable: see docs/api.md


class SegmentCount(Model):
    count: int
    status: SegmentStatus
    version: int


class MemberPublic(Model):
    id: str
    since: datetime
    version: int


class MembersPage(Model):
    items: list[MemberPublic]
    next_cursor: str | None


class ContactSegmentPublic(Model):
    id: str
    name: str
    since: datetime
    version: int


class ContactSegmentsPublic(Model):
    items: list[ContactSegmentPublic]


class SegmentPreviewRequest(Model):
    rule: SegmentRule
    sample: Annotated[int, Field(ge=0, le=100)] = 10


class SegmentPreview(Model):
    count: int
    contacts_evaluated: int
    sample: list[str]


class ListCreate(Model):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str | None, Field(max_length=2000)] = None


class ListPublic(Model):
    id: str
    project_id: str
    name: str
    description: str | None
    created_at: datetime
    count: int


class ListMembersChange(Model):
    ids: Annotated[list[Identifier], Field(min_length=1, max_length=10_000)]


class ListMembersChanged(Model):
    accepted: int


class ImportRowError(Model):
    row: int  # 1-based data row (CSV: not counting the header)
    field: str | None
    error: str


class ImportResult(Model):
    accepted: int
    rejected: int
    errors: list[ImportRowError]


# -- records on the events topic ----------------------------------------------------------------


class HistoryFact(Struct, kw_only=True):
    """One past or live event as segments see it, with its messageId (dedupes seed vs live)."""

    message_id: str
    name: str
    timestamp: datetime
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class SegmentBarrier(Tagged, tag="segment_barrier", kw_only=True):
    """Sent to every partition after a definition changed: from here on the partition's processor
    evaluates ``definition`` (a processor may learn it earlier from the definitions store)."""

    type: ClassVar[str] = "segment_barrier"
    project_id: str
    id: str  # a synthetic key part, never a contact
    definition: msgspec.Raw  # the SegmentDefinition's JSON, validated by pydantic when applied (rare)

    @classmethod
    def of(cls, definition: SegmentDefinition, key: str) -> SegmentBarrier:
        return cls(
            project_id=definition.project_id, id=key, definition=msgspec.Raw(definition.model_dump_json().encode())
        )

    def parsed(self) -> SegmentDefinition:
        return SegmentDefinition.model_validate_json(bytes(self.definition))

    @property
    def contact_id(self) -> str:
        return self.id


class SegmentRefresh(Tagged, tag="segment_refresh", kw_only=True):
    """Backfill of one contact for one segment version: its past events from ClickHouse, in
    chunks; on the ``last`` chunk the segment's missing trackers are built and it is evaluated.

    Seeded (``seeds`` not null): the slots ClickHouse aggregated for the trackers with matching
    history ({tracker key: slot}, the others start empty), cut for clocks from ``seeded_at`` on;
    ``facts`` then serve the ``replayed`` trackers only. A ``sweep`` (``id`` is synthetic, one per
    partition after every seed) ends the version's backfill for every contact without a seed."""

    type: ClassVar[str] = "segment_refresh"
    project_id: str
    id: str
    segment_id: str
    version: int
    tracker_keys: list[str]
    facts: list[HistoryFact] = msgspec.field(default_factory=list)
    last: bool = True
    seeds: msgspec.Raw = msgspec.Raw(b"null")
    replayed: list[str] = msgspec.field(default_factory=list)
    seeded_at: datetime | None = None
    sweep: bool = False

    @property
    def contact_id(self) -> str:
        return self.id


class SegmentWake(Tagged, tag="segment_wake", kw_only=True):
    """Timer-driven: re-evaluate this contact's time-dependent segments."""

    type: ClassVar[str] = "segment_wake"
    project_id: str
    id: str

    @property
    def contact_id(self) -> str:
        return self.id


class ListMembership(Tagged, tag="list_membership", kw_only=True):
    """Add a contact to a list (creating the contact when missing) or remove it."""

    type: ClassVar[str] = "list_membership"
    project_id: str
    id: str
    list_id: str
    member: bool
    traits: dict[str, Any] = msgspec.field(default_factory=dict)  # from an import row
    requested_at: datetime
    request_id: str

    @property
    def contact_id(self) -> str:
        return self.id


# -- outputs ------------------------------------------------------------------------------------


class SegmentChange(Tagged, tag="segment_change", kw_only=True):
    """``segment-changes``: a contact entered or exited a segment (version that decided it)."""

    type: ClassVar[str] = "segment_change"
    project_id: str
    contact_id: str
    segment_id: str
    version: int
    change: Literal["entered", "exited"]
    at: datetime
    cause: str
    change_id: str  # "<contact id>#<n>": the contact's n-th transition; equal on a replayed batch


class Member(Struct, kw_only=True):
    """Value of a ``segment_members`` row (key ``project:segment_id\\x00contact_id``)."""

    since: datetime
    version: int


def change_id(contact_id: str, seq: int) -> str:
    return f"{contact_id}#{seq}"
