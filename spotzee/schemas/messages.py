"""Messages on their way: the ``sends`` topic, and transitions on ``journey-advance``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import orjson

from spotzee.schemas.analytics_models import MessageRow
from spotzee.schemas.common import JSONObject, Model, UTCDateTime


class SendCommand(Model):
    """A message to deliver (``sends``, key ``project:contact``). ``send_id`` is deterministic
    (run, step, visit): a send_id reaches a provider at most once."""

    type: Literal["send"] = "send"
    project_id: str
    contact_id: str
    send_id: str
    channel: str
    template_id: str
    journey_id: str
    run_id: str
    step_id: str
    variables: JSONObject  # ``event`` and ``journey`` for the template; ``contact`` is read at send time
    queued_at: UTCDateTime


class JourneyAdvance(Model):
    """One transition of a run (``journey-advance``): what entered, completed, waits or exited."""

    type: Literal["journey_advance"] = "journey_advance"
    project_id: str
    contact_id: str
    journey_id: str
    journey_version: int
    run_id: str
    step_id: str
    visit: int
    kind: str
    at: UTCDateTime
    detail: JSONObject


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
