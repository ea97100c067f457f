"""Records on the ``analytics`` topic: rows for ClickHouse history and history mutations.

The sink turns these into inserts (rows) or idempotent statements (mutations), in order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from spotzee.schemas.common import Model, UTCDateTime


class EventRow(Model):
    type: Literal["event"] = "event"
    project_id: str
    message_id: str
    event_type: str
    event: str
    contact_id: str
    user_id: str
    anonymous_id: str
    timestamp: UTCDateTime
    original_timestamp: UTCDateTime | None
    sent_at: UTCDateTime | None
    received_at: UTCDateTime
    properties: str
    traits: str
    context: str
    raw: str


class ContactChangeRow(Model):
    type: Literal["contact_change"] = "contact_change"
    project_id: str
    contact_id: str
    change_id: str
    changed_at: UTCDateTime
    source: str
    path: str
    old_value: str
    new_value: str


class AliasRow(Model):
    """``alias_id`` now belongs to ``contact_id`` (the latest row per alias wins)."""

    type: Literal["alias"] = "alias"
    project_id: str
    alias_id: str
    contact_id: str
    merged_at: UTCDateTime


class AuditRow(Model):
    type: Literal["audit"] = "audit"
    audit_id: str
    organisation_id: str
    project_id: str
    actor_key_id: str
    action: str
    target: str
    at: UTCDateTime
    before: str
    after: str


class DeadLetterRow(Model):
    type: Literal["dead_letter"] = "dead_letter"
    project_id: str
    dead_letter_id: str
    topic: str
    partition: int
    offset: int
    key: str
    error: str
    payload: str
    at: UTCDateTime


class SegmentChangeRow(Model):
    """History of segment membership (``segment_changes``): one row per entered/exited."""

    type: Literal["segment_membership"] = "segment_membership"
    project_id: str
    segment_id: str
    contact_id: str
    version: int
    change: str  # entered | exited
    at: UTCDateTime
    cause: str
    change_id: str


class JourneyStepRow(Model):
    """``journey_steps``: every transition of every run (entered/completed/waiting/exited ...)."""

    type: Literal["journey_step"] = "journey_step"
    project_id: str
    journey_id: str
    journey_version: int
    run_id: str
    contact_id: str
    step_id: str
    visit: int
    kind: str
    at: UTCDateTime
    seq: int  # order among the rows of one transition (they share ``at``)
    detail: str  # JSON


class MessageRow(Model):
    """``messages``: one row per send and status change (queued, sent, failed, suppressed)."""

    type: Literal["message"] = "message"
    project_id: str
    send_id: str
    contact_id: str
    channel: str
    template_id: str
    journey_id: str
    run_id: str
    step_id: str
    status: str
    at: UTCDateTime
    detail: str  # JSON


class EraseHistory(Model):
    """Delete every history row of these contact ids (GDPR erase)."""

    type: Literal["erase_history"] = "erase_history"
    project_id: str
    contact_ids: list[str]


AnalyticsRecord = Annotated[
    EventRow
    | ContactChangeRow
    | AliasRow
    | AuditRow
    | DeadLetterRow
    | SegmentChangeRow
    | JourneyStepRow
    | MessageRow
    | EraseHistory,
    Field(discriminator="type"),
]
analytics_record_adapter: TypeAdapter[AnalyticsRecord] = TypeAdapter(AnalyticsRecord)

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
