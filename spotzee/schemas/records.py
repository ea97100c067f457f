"""Records on the ``events`` topic: ingested messages and the contact processor's own commands.

Every record is keyed ``project_id:contact_id`` so that one partition owner is the single writer
of that contact's state.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from spotzee.schemas.common import JSONObject, Model, UTCDateTime
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.schemas.segment_models import ListMembership, SegmentBarrier, SegmentRefresh, SegmentWake


class IngestedMessage(Model):
    """A Segment-spec message accepted by the API, with the project it belongs to."""

    type: Literal["ingest"] = "ingest"
    project_id: str
    message_id: str
    received_at: UTCDateTime
    message: SegmentMessage
    raw: str = Field(description="The message as received (JSON), kept for the raw column.")
    forwarded_to: str | None = Field(default=None, description="Set when re-keyed to the merged contact.")

    @property
    def contact_id(self) -> str:
        return self.forwarded_to or self.message.contact_id


class MergeRequest(Model):
    """Sent to ``source_id``'s partition: hand your profile over to ``target_id``."""

    type: Literal["merge_request"] = "merge_request"
    project_id: str
    source_id: str
    target_id: str
    requested_at: UTCDateTime

    @property
    def contact_id(self) -> str:
        return self.source_id


class MergeIn(Model):
    """Sent back to ``target_id``'s partition with the source profile (None when it had none)."""

    type: Literal["merge_in"] = "merge_in"
    project_id: str
    source_id: str
    target_id: str
    source_state: ContactState | None
    merged_at: UTCDateTime
    source_segments: str | None = Field(default=None, description="The source's segment state (JSON).")

    @property
    def contact_id(self) -> str:
        return self.target_id


class ContactPatch(Model):
    """An admin API change of attributes (same semantics as identify traits)."""

    type: Literal["contact_patch"] = "contact_patch"
    project_id: str
    id: str
    traits: JSONObject
    requested_at: UTCDateTime
    request_id: str
    only_existing: bool = Field(
        default=False, description="Change only a contact that exists: an unsubscribe link never re-creates one."
    )
    only_created_ms: int | None = Field(
        default=None,
        description="...and only the contact created at this instant (epoch ms): an erased id used again later "
        "is someone else.",
    )

    @property
    def contact_id(self) -> str:
        return self.id


class ContactErase(Model):
    """GDPR erase of one id (a contact, or an alias left behind by a merge)."""

    type: Literal["contact_erase"] = "contact_erase"
    project_id: str
    id: str
    requested_at: UTCDateTime
    request_id: str
    only_if_merged_into: list[str] | None = Field(
        default=None,
        description="Cascaded erase of a merged id: erase it only if it is still merged into one of these ids.",
    )

    @property
    def contact_id(self) -> str:
        return self.id


class DedupeSweep(Model):
    """Timer-driven: drop this contact's messageId dedupe entries older than the window."""

    type: Literal["dedupe_sweep"] = "dedupe_sweep"
    project_id: str
    id: str

    @property
    def contact_id(self) -> str:
        return self.id


class JourneyEntry(Model):
    """Enter a contact into a journey: the API (``/journeys/{id}/enter``), a ``link`` step, a
    schedule. ``entry_id`` makes the run id, so a replayed entry starts nothing twice (a
    schedule's: ``schedule:<journey id>:<occurrence>``, the trigger key itself)."""

    type: Literal["journey_entry"] = "journey_entry"
    project_id: str
    id: str
    journey_id: str
    entry_id: str
    payload: JSONObject | None = None  # API: ``event.properties`` for templates
    event: JSONObject | None = None  # a link: the linking run's triggering event, as it was
    create_contact: bool = True  # API entries create missing contacts; a link or a schedule never does
    at: UTCDateTime
    occurrence: UTCDateTime | None = None  # a schedule's entry: the occurrence it is for

    @property
    def contact_id(self) -> str:
        return self.id


class JourneyBarrier(Model):
    """A journey as it was just written, appended to every partition after the write.

    Workers also learn definitions from the ``definitions`` topic, but only eventually; this
    record is ordered in each partition before anything appended after the write (an event that
    triggers it, an API entry), so no worker drops such a record as "not live" (the registry keeps
    the newest of what it saw: a replayed, older barrier changes nothing)."""

    type: Literal["journey_barrier"] = "journey_barrier"
    project_id: str
    definition: JourneyDefinition

    @property
    def contact_id(self) -> str:  # a synthetic key part, never a contact
        return f"journey:{self.definition.id}"


class JourneyWake(Model):
    """A run's timer fired (the step and visit it was set for)."""

    type: Literal["journey_wake"] = "journey_wake"
    project_id: str
    id: str
    run_id: str
    step_id: str
    visit: int

    @property
    def contact_id(self) -> str:
        return self.id


EventsRecord = Annotated[
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
    | JourneyWake,
    Field(discriminator="type"),
]
events_record_adapter: TypeAdapter[EventsRecord] = TypeAdapter(EventsRecord)


def record_key(record: EventsRecord) -> str:
    """The partitioning key: ``project_id:contact_id``."""
    return f"{record.project_id}:{record.contact_id}"
