"""What moves a run: the inputs of ``transition`` (a union discriminated on ``type``).

Each input is safe to deliver twice; the machine recognises a replay and ignores it
(``Outcome.ignored`` says why):

- ``Enter`` for a run that exists already (``run_id`` is deterministic, see ``run_id_for``);
- ``Wake`` whose ``step_id``/``visit`` is not where the run waits now (the timer is stale), or
  that comes before the run's ``wake_at``;
- ``EventSeen`` whose ``message_id`` the run consumed already (kept in ``RunState.seen``);
- anything for a run that has exited.

Inputs and ``EventData`` are msgspec Structs (schemas/structs.py): built by the caller with
tz-aware UTC datetimes, never re-validated; plain data, untracked by the cyclic collector (``gc=False``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec

from spotzee.schemas.structs import Struct, Tagged, to_builtins

MAX_RUN_ID = 256


class EventData(Struct, kw_only=True, gc=False):
    """An event as runs keep it (the trigger, waited events) and templates read it."""

    name: str
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    message_id: str | None = None
    timestamp: datetime | None = None

    def as_variables(self) -> dict[str, Any]:
        """Plain JSON values (the timestamp in RFC 3339): what templates and the run's variables hold."""
        variables: dict[str, Any] = to_builtins(self)
        return variables


class Enter(Tagged, tag="enter", kw_only=True, gc=False):
    """Start a run (the caller has checked ``may_enter`` and the trigger)."""

    type: ClassVar[str] = "enter"
    run_id: str  # 1-256 characters, no ``:`` (position ids join run, step and visit with it)
    contact_id: str
    event: EventData | None = None  # what triggered it: ``event`` in templates
    at: datetime  # when the trigger happened (``RunState.entered_at``)

    def __post_init__(self) -> None:
        if not 0 < len(self.run_id) <= MAX_RUN_ID or ":" in self.run_id:
            raise ValueError(f"invalid run id {self.run_id!r}: 1-{MAX_RUN_ID} characters, no ':'")


class Wake(Tagged, tag="wake", kw_only=True, gc=False):
    """A timer fired. It names the position it was set for: a timer set for an earlier position
    (the run moved on, or came back to the same step later: another ``visit``) is stale."""

    type: ClassVar[str] = "wake"
    step_id: str
    visit: int


class EventSeen(Tagged, tag="event_seen", kw_only=True, gc=False):
    """The contact performed an event: for ``wait_for_event`` steps and ``exit_when``."""

    type: ClassVar[str] = "event_seen"
    name: str
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    message_id: str
    timestamp: datetime

    def data(self) -> EventData:
        return EventData(
            name=self.name, properties=self.properties, message_id=self.message_id, timestamp=self.timestamp
        )


class SegmentExited(Tagged, tag="segment_exited", kw_only=True, gc=False):
    """The contact left a segment (for ``exit_when: segment_exited``)."""

    type: ClassVar[str] = "segment_exited"
    segment_id: str


class Exit(Tagged, tag="exit", kw_only=True, gc=False):
    """End the run now (journey archived, contact erased, an operator's request)."""

    type: ClassVar[str] = "exit"
    reason: str = "forced"


JourneyInput = Enter | Wake | EventSeen | SegmentExited | Exit
