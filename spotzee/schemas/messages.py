"""Messages on their way: the ``sends`` topic, and transitions on ``journey-advance``.

msgspec Structs (schemas/structs.py): written by the contact processor, decoded by the delivery
agents and the sink without re-validation. Their JSON is the one the pydantic models wrote
(``type`` first, snake_case, datetimes in RFC 3339 with ``Z``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import orjson

from spotzee.schemas.analytics_models import MessageRow
from spotzee.schemas.message_data import TrackData
from spotzee.schemas.records import IngestedMessage
from spotzee.schemas.structs import Tagged, encode


class SendCommand(Tagged, tag="send", kw_only=True):
    """A message to deliver (``sends``, key ``project:contact``). ``send_id`` is deterministic
    (run, step, visit): a send_id reaches a provider at most once."""

    type: ClassVar[str] = "send"
    project_id: str
    contact_id: str
    send_id: str
    channel: str
    template_id: str
    journey_id: str
    run_id: str
    step_id: str
    variables: dict[str, Any]  # ``event`` and ``journey`` for the template; ``contact`` is read at send time
    queued_at: datetime


class JourneyAdvance(Tagged, tag="journey_advance", kw_only=True):
    """One transition of a run (``journey-advance``): what entered, completed, waits or exited."""

    type: ClassVar[str] = "journey_advance"
    project_id: str
    contact_id: str
    journey_id: str
    journey_version: int
    run_id: str
    step_id: str
    visit: int
    kind: str
    at: datetime
    detail: dict[str, Any]


def message_row(command: SendCommand, status: str, at: datetime, detail: dict[str, Any] | None = None) -> MessageRow:
    """The ``messages`` history row of a send at one status (queued, retrying, sent, failed ...)."""
    return MessageRow(
        project_id=command.project_id,
        send_id=command.send_id,
        contact_id=command.contact_id,
        channel=command.channel,
        template_id=command.template_id,
        journey_id=command.journey_id,
        run_id=command.run_id,
        step_id=command.step_id,
        status=status,
        at=at,
        detail=orjson.dumps(detail or {}, default=str).decode(),
    )


def track_record(  # noqa: PLR0913 -- the fields of a Segment track call Spotzee makes itself
    *,
    project_id: str,
    message_id: str,
    user_id: str,
    event: str,
    properties: dict[str, Any],
    received_at: datetime,
    forwarded_to: str,
) -> IngestedMessage:
    """A track event Spotzee sends its own contact (a journey's ``event`` step, a delivery outcome).

    ``raw`` is the message as the ingestion API would have kept it: every field of a track call,
    camelCase, in the API model's order (the ``raw`` column reads the same as for an API event)."""
    raw = {
        "messageId": None,
        "userId": user_id,
        "anonymousId": None,
        "timestamp": None,
        "originalTimestamp": None,
        "sentAt": None,
        "context": {},
        "integrations": {},
        "writeKey": None,
        "type": "track",
        "event": event,
        "properties": properties,
    }
    return IngestedMessage(
        project_id=project_id,
        message_id=message_id,
        received_at=received_at,
        message=TrackData(user_id=user_id, event=event, properties=properties),
        raw=encode(raw).decode(),
        forwarded_to=forwarded_to,
    )
