"""What moves a run: the inputs of ``transition`` (a union discriminated on ``type``).

Each input is safe to deliver twice; the machine recognises a replay and ignores it
(``Outcome.ignored`` says why):

- ``Enter`` for a run that exists already (``run_id`` is deterministic, see ``run_id_for``);
- ``Wake`` whose ``step_id``/``visit`` is not where the run waits now (the timer is stale), or
  that comes before the run's ``wake_at``;
- ``EventSeen`` whose ``message_id`` the run consumed already (kept in ``RunState.seen``);
- anything for a run that has exited.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from spotzee.schemas.common import JSONObject, Model, UTCDateTime


class EventData(Model):
    """An event as runs keep it (the trigger, waited events) and templates read it."""

    name: str
    properties: JSONObject = Field(default_factory=dict)
    message_id: str | None = None
    timestamp: UTCDateTime | None = None

    def as_variables(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Enter(Model):
    """Start a run (the caller has checked ``may_enter`` and the trigger)."""

    type: Literal["enter"] = "enter"
    run_id: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^:]+$")]
    contact_id: str
    event: EventData | None = None  # what triggered it: ``event`` in templates
    at: UTCDateTime  # when the trigger happened (``RunState.entered_at``)


class Wake(Model):
    """A timer fired. It names the position it was set for: a timer set for an earlier position
    (the run moved on, or came back to the same step later: another ``visit``) is stale."""

    type: Literal["wake"] = "wake"
    step_id: str
    visit: int


class EventSeen(Model):
    """The contact performed an event: for ``wait_for_event`` steps and ``exit_when``."""

    type: Literal["event_seen"] = "event_seen"
    name: str
    properties: JSONObject = Field(default_factory=dict)
    message_id: str
    timestamp: UTCDateTime

    def data(self) -> EventData:
        return EventData(
            name=self.name, properties=self.properties, message_id=self.message_id, timestamp=self.timestamp
        )


class SegmentExited(Model):
    """The contact left a segment (for ``exit_when: segment_exited``)."""

    type: Literal["segment_exited"] = "segment_exited"
    segment_id: str


class Exit(Model):
    """End the run now (journey archived, contact erased, an operator's request)."""

    type: Literal["exit"] = "exit"
    reason: str = "forced"


JourneyInput = Annotated[Enter | Wake | EventSeen | SegmentExited | Exit, Field(discriminator="type")]
