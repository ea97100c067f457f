"""A run: one contact's pass through one journey, and what a transition returns."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import Field

from spotzee.domain.journeys.effects import Effect
from spotzee.domain.journeys.inputs import Wake
from spotzee.schemas.common import Model, UTCDateTime

RunStatus = Literal["active", "waiting", "exited"]
SEEN_LIMIT: Final = 100  # consumed message ids kept to recognise a redelivered event


class RunVariables(Model):
    """What templates and Liquid values read about the run.

    - ``event``: the triggering event (``name``, ``properties``, ``message_id``, ``timestamp``),
      ``{}`` when the trigger had none;
    - ``journey``: per step id -- ``journey.<wait step>`` is the event a ``wait_for_event`` step
      received (same shape as ``event``), ``journey.<experiment step>.variant`` the variant drawn.
    """

    event: dict[str, Any] = Field(default_factory=dict)
    journey: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def template_data(self) -> dict[str, Any]:
        """A copy: effects built from it must not change when the run moves on."""
        return copy.deepcopy({"event": self.event, "journey": self.journey})


class RunState(Model):
    """Stored per (contact, run).

    ``status``: ``waiting`` at ``step_id`` (a delay, a wait, a full balancer) until ``wake_at`` or
    an event; ``exited`` for good. ``active`` only exists inside a transition, while the run
    moves through steps that take no time; a stored run is never active.
    ``visits`` counts the visits of each step (a step is visited again through a loop): the visit
    makes send ids unique and tells a stale timer from the current one.
    """

    run_id: str
    journey_id: str
    journey_version: int
    contact_id: str
    status: RunStatus
    step_id: str
    step_type: str = ""  # the step's type (``balancer:<mode>``): checked when the journey is edited
    visit: int = 0
    entered_at: UTCDateTime
    updated_at: UTCDateTime
    wake_at: UTCDateTime | None = None
    variables: RunVariables = Field(default_factory=RunVariables)
    assignments: dict[str, str] = Field(default_factory=dict)  # experiment step -> variant
    visits: dict[str, int] = Field(default_factory=dict)
    seen: list[str] = Field(default_factory=list)  # message ids consumed, latest last (bounded)
    exited_at: UTCDateTime | None = None
    exit_reason: str | None = None

    def timer(self) -> Wake | None:
        """The Wake to deliver at ``wake_at`` while the run waits."""
        if self.status != "waiting" or self.wake_at is None:
            return None
        return Wake(step_id=self.step_id, visit=self.visit)

    def remember(self, message_id: str | None) -> None:
        if message_id is not None:
            self.seen = [*self.seen, message_id][-SEEN_LIMIT:]


class Outcome(Model):
    """What ``transition`` returns: the state to store, the effects to carry out, when to wake.

    ``ignored`` is set (and nothing changed) when the input did not apply: a replay, a stale
    timer, an event nobody waits for.
    """

    state: RunState | None
    effects: list[Effect] = Field(default_factory=list)
    wake_at: datetime | None = None
    ignored: str | None = None

    @property
    def timer(self) -> Wake | None:
        return None if self.state is None else self.state.timer()
