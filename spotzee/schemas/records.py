"""Records on the ``events`` topic: ingested messages and the contact processor's own commands.

Every record is keyed ``project_id:contact_id`` so that one partition owner is the single writer
of that contact's state. Records are msgspec Structs (schemas/structs.py): written by Spotzee,
decoded by the processor without re-validation, one tagged union on ``type``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec

from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.schemas.message_data import MessageData
from spotzee.schemas.segment_models import ListMembership, SegmentBarrier, SegmentRefresh, SegmentWake
from spotzee.schemas.structs import Tagged, decode


class IngestedMessage(Tagged, tag="ingest", kw_only=True):
    """A Segment-spec message accepted by the API, with the project it belongs to."""

    type: ClassVar[str] = "ingest"
    project_id: str
    message_id: str
    received_at: datetime
    message: MessageData
    raw: str  # the message as received (JSON), kept for the raw column
    forwarded_to: str | None = None  # set when re-keyed to the merged contact

    @property
    def contact_id(self) -> str:
        return self.forwarded_to or self.message.contact_id


class MergeRequest(Tagged, tag="merge_request", kw_only=True):
    """Sent to ``source_id``'s partition: hand your profile over to ``target_id``."""

    type: ClassVar[str] = "merge_request"
    project_id: str
    source_id: str
    target_id: str
    requested_at: datetime

    @property
    def contact_id(self) -> str:
        return self.source_id


class MergeIn(Tagged, tag="merge_in", kw_only=True):
    """Sent back to ``target_id``'s partition with the source profile (None when it had none)."""

    type: ClassVar[str] = "merge_in"
    project_id: str
    source_id: str
    target_id: str
    source_state: ContactState | None
    merged_at: datetime
    source_segments: str | None = None  # the source's segment state (JSON)

    @property
    def contact_id(self) -> str:
        return self.target_id


class ContactPatch(Tagged, tag="contact_patch", kw_only=True):
    """An admin API change of attributes (same semantics as identify traits)."""

    type: ClassVar[str] = "contact_patch"
    project_id: str
    id: str
    traits: dict[str, Any]
    requested_at: datetime
    request_id: str
    # Change only a contact that exists: an unsubscribe link never re-creates one...
    only_existing: bool = False
    # ...and only the contact created at this instant (epoch ms): an erased id used again later is someone else.
    only_created_ms: int | None = None
    # Push tokens to take off the contact (a provider reported them unregistered).
    remove_devices: list[str] = msgspec.field(default_factory=list)

    @property
    def contact_id(self) -> str:
        return self.id


class ContactErase(Tagged, tag="contact_erase", kw_only=True):
    """GDPR erase of one id (a contact, or an alias left behind by a merge)."""

    type: ClassVar[str] = "contact_erase"
    project_id: str
    id: str
    requested_at: datetime
    request_id: str
    # A cascaded erase of a merged id: erase it only if it is still merged into one of these ids.
    only_if_merged_into: list[str] | None = None

    @property
    def contact_id(self) -> str:
        return self.id


class DedupeSweep(Tagged, tag="dedupe_sweep", kw_only=True):
    """Timer-driven: drop this contact's messageId dedupe entries older than the window."""

    type: ClassVar[str] = "dedupe_sweep"
    project_id: str
    id: str

    @property
    def contact_id(self) -> str:
        return self.id


class JourneyEntry(Tagged, tag="journey_entry", kw_only=True):
    """Enter a contact into a journey: the API (``/journeys/{id}/enter``), a ``link`` step, a
    schedule. ``entry_id`` makes the run id, so a replayed entry starts nothing twice (a
    schedule's: ``schedule:<journey id>:<occurrence>``, the trigger key itself)."""

    type: ClassVar[str] = "journey_entry"
    project_id: str
    id: str
    journey_id: str
    entry_id: str
    payload: dict[str, Any] | None = None  # API: ``event.properties`` for templates
    event: dict[str, Any] | None = None  # a link: the linking run's triggering event, as it was
    create_contact: bool = True  # API entries create missing contacts; a link or a schedule never does
    at: datetime
    occurrence: datetime | None = None  # a schedule's entry: the occurrence it is for

    @property
    def contact_id(self) -> str:
        return self.id


class JourneyBarrier(Tagged, tag="journey_barrier", kw_only=True):
    """A journey as it was just written, appended to every partition after the write.

    Workers also learn definitions from the ``definitions`` topic, but only eventually; this
    record is ordered in each partition before anything appended after the write (an event that
    triggers it, an API entry), so no worker drops such a record as "not live" (the registry keeps
    the newest of what it saw: a replayed, older barrier changes nothing)."""

    type: ClassVar[str] = "journey_barrier"
    project_id: str
    definition: msgspec.Raw  # the JourneyDefinition's JSON, validated by pydantic when applied (rare)

    @classmethod
    def of(cls, definition: JourneyDefinition) -> JourneyBarrier:
        return cls(project_id=definition.project_id, definition=msgspec.Raw(definition.model_dump_json().encode()))

    def parsed(self) -> JourneyDefinition:
        return JourneyDefinition.model_validate_json(bytes(self.definition))

    @property
    def contact_id(self) -> str:  # a synthetic key part, never a contact
        return f"journey:{decode(_Identified, self.definition).id}"


class _Identified(msgspec.Struct):
    id: str


class JourneyWake(Tagged, tag="journey_wake", kw_only=True):
    """A run's timer fired (the step and visit it was set for)."""

    type: ClassVar[str] = "journey_wake"
    project_id: str
    id: str
    run_id: str
    step_id: str
    visit: int

    @property
    def contact_id(self) -> str:
        return self.id


EventsRecord = (
    IngestedMessage
    | MergeRequest
    | MergeIn
    | ContactPatch
    | ContactErase
    | DedupeSweep
    | SegmentBarrier
    | SegmentRefresh
    | SegmentWake
    | ListMembership
    | JourneyEntry
    | JourneyBarrier
    | JourneyWake
)


def decode_record(data: bytes) -> EventsRecord:
    """One record of the ``events`` topic, as written by Spotzee (no re-validation)."""
    return decode(EventsRecord, data)  # type: ignore[arg-type]


def record_key(record: EventsRecord) -> str:
    """The partitioning key: ``project_id:contact_id``."""
    return f"{record.project_id}:{record.contact_id}"
