"""Records on the ``analytics`` topic: rows for ClickHouse history and history mutations.

The sink turns these into inserts (rows) or idempotent statements (mutations), in order. The records
are msgspec Structs (schemas/structs.py): the sink decodes every one of them, so they carry no
per-row validation; their JSON is the one the pydantic models wrote (``type`` first, datetimes in
RFC 3339 with ``Z``). Datetimes are built tz-aware in UTC by the processors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, TypeAlias

from pydantic import Field

from spotzee.schemas.common import Model
from spotzee.schemas.structs import Tagged, convert, decoder, encode


class EventRow(Tagged, tag="event", gc=False):
    type: ClassVar[str] = "event"
    project_id: str
    message_id: str
    event_type: str
    event: str
    contact_id: str
    user_id: str
    anonymous_id: str
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    properties: str
    traits: str
    context: str
    raw: str


class ContactChangeRow(Tagged, tag="contact_change", gc=False):
    type: ClassVar[str] = "contact_change"
    project_id: str
    contact_id: str
    change_id: str
    changed_at: datetime
    source: str
    path: str
    old_value: str
    new_value: str


class AliasRow(Tagged, tag="alias", gc=False):
    """``alias_id`` now belongs to ``contact_id`` (the latest row per alias wins)."""

    type: ClassVar[str] = "alias"
    project_id: str
    alias_id: str
    contact_id: str
    merged_at: datetime


class AuditRow(Tagged, tag="audit", gc=False):
    type: ClassVar[str] = "audit"
    audit_id: str
    organisation_id: str
    project_id: str
    actor_key_id: str
    action: str
    target: str
    at: datetime
    before: str
    after: str


class DeadLetterRow(Tagged, tag="dead_letter", gc=False):
    type: ClassVar[str] = "dead_letter"
    project_id: str
    dead_letter_id: str
    topic: str
    partition: int
    offset: int
    key: str
    error: str
    payload: str
    at: datetime


class SegmentChangeRow(Tagged, tag="segment_membership", gc=False):
    """History of segment membership (``segment_changes``): one row per entered/exited."""

    type: ClassVar[str] = "segment_membership"
    project_id: str
    segment_id: str
    contact_id: str
    version: int
    change: str  # entered | exited
    at: datetime
    cause: str
    change_id: str


class JourneyStepRow(Tagged, tag="journey_step", gc=False):
    """``journey_steps``: every transition of every run (entered/completed/waiting/exited ...)."""

    type: ClassVar[str] = "journey_step"
    project_id: str
    journey_id: str
    journey_version: int
    run_id: str
    contact_id: str
    step_id: str
    visit: int
    kind: str
    at: datetime
    seq: int  # order among the rows of one transition (they share ``at``)
    detail: str  # JSON


class MessageRow(Tagged, tag="message", gc=False):
    """``messages``: one row per send and status change (queued, sent, failed, suppressed)."""

    type: ClassVar[str] = "message"
    project_id: str
    send_id: str
    contact_id: str
    channel: str
    template_id: str
    journey_id: str
    run_id: str
    step_id: str
    status: str
    at: datetime
    detail: str  # JSON


class EraseHistory(Tagged, tag="erase_history", gc=False):
    """Delete every history row of these contact ids (GDPR erase)."""

    type: ClassVar[str] = "erase_history"
    project_id: str
    contact_ids: list[str]


AnalyticsRecord: TypeAlias = (
    EventRow
    | ContactChangeRow
    | AliasRow
    | AuditRow
    | DeadLetterRow
    | SegmentChangeRow
    | JourneyStepRow
    | MessageRow
    | EraseHistory
)
_record = decoder(AnalyticsRecord)


def decode_analytics(data: bytes | str) -> AnalyticsRecord:
    """One record from its JSON (the ``type`` field picks the class)."""
    record: AnalyticsRecord = _record.decode(data)
    return record


class _AnalyticsRecordAdapter:
    """The part of pydantic's ``TypeAdapter`` that callers of the old ``analytics_record_adapter`` use."""

    def validate_json(self, data: bytes | str) -> AnalyticsRecord:
        return decode_analytics(data)

    def validate_python(self, value: Any) -> AnalyticsRecord:
        if isinstance(value, RECORD_CLASSES):
            return value
        return convert(value, AnalyticsRecord)  # type: ignore[arg-type]

    def dump_json(self, record: AnalyticsRecord) -> bytes:
        return encode(record)


analytics_record_adapter = _AnalyticsRecordAdapter()

RECORD_CLASSES = (
    EventRow,
    ContactChangeRow,
    AliasRow,
    AuditRow,
    DeadLetterRow,
    SegmentChangeRow,
    JourneyStepRow,
    MessageRow,
    EraseHistory,
)
ROW_TYPES = (
    "event",
    "contact_change",
    "alias",
    "audit",
    "dead_letter",
    "segment_membership",
    "journey_step",
    "message",
)


class SqlQuery(Model):
    query: Annotated[str, Field(min_length=1, max_length=100_000)]


class SqlResult(Model):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
