"""A run: one contact's pass through one journey, and what a transition returns.

``RunState`` is a table value (``journey_runs``): a msgspec Struct whose JSON is the one the
pydantic model wrote. Values read from a table are shared with the runtime's cache, so nothing
here is changed in place once stored: a transition works on its own shallow copy and replaces the
lists and dicts it changes (copy on write; ``machine.transition``).

These Structs hold plain data (no reference cycle can run through them): ``gc=False`` keeps them out of
the cyclic collector, which would otherwise rescan every run held in the runtime's state cache.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from spotzee.domain.journeys.effects import Effect
from spotzee.domain.journeys.inputs import Wake
from spotzee.schemas.structs import Struct

RunStatus = Literal["active", "waiting", "exited"]
SEEN_LIMIT: Final = 100  # consumed message ids kept to recognise a redelivered event


class RunVariables(Struct, kw_only=True, gc=False):
    """What templates and Liquid values read about the run.

    - ``event``: the triggering event (``name``, ``properties``, ``message_id``, ``timestamp``),
      ``{}`` when the trigger had none;
    - ``journey``: per step id -- ``journey.<wait step>`` is the event a ``wait_for_event`` step
      received (same shape as ``event``), ``journey.<experiment step>.variant`` the variant drawn.
    """

    event: dict[str, Any] = msgspec.field(default_factory=dict)
    journey: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def template_data(self) -> dict[str, Any]:
        """``event`` and ``journey`` for templates. Shared, not copied: run variables are never
        changed in place (a step that adds one builds new dicts), so effects built from them keep
        their values when the run moves on."""
        return {"event": self.event, "journey": self.journey}

    def with_step(self, step_id: str, values: dict[str, Any]) -> RunVariables:
        """The variables with ``journey.<step_id>`` set (a copy: these may be shared)."""
        return RunVariables(event=self.event, journey={**self.journey, step_id: values})


class RunState(Struct, kw_only=True, gc=False):
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
    entered_at: datetime
    updated_at: datetime
    wake_at: datetime | None = None
    variables: RunVariables = msgspec.field(default_factory=RunVariables)
    assignments: dict[str, str] = msgspec.field(default_factory=dict)  # experiment step -> variant
    visits: dict[str, int] = msgspec.field(default_factory=dict)
    seen: list[str] = msgspec.field(default_factory=list)  # message ids consumed, latest last (bounded)
    exited_at: datetime | None = None
    exit_reason: str | None = None

    def timer(self) -> Wake | None:
        """The Wake to deliver at ``wake_at`` while the run waits."""
        if self.status != "waiting" or self.wake_at is None:
            return None
        return Wake(step_id=self.step_id, visit=self.visit)

    def remember(self, message_id: str | None) -> None:
        """Add a consumed message id (a new list: only ever called on a transition's own copy)."""
        if message_id is not None:
            self.seen = [*self.seen, message_id][-SEEN_LIMIT:]


class Outcome(Struct, kw_only=True, gc=False):
    """What ``transition`` returns: the state to store, the effects to carry out, when to wake.

    ``ignored`` is set (and nothing changed) when the input did not apply: a replay, a stale
    timer, an event nobody waits for.
    """

    state: RunState | None
    effects: list[Effect] = msgspec.field(default_factory=list)
    wake_at: datetime | None = None
    ignored: str | None = None

    @property
    def timer(self) -> Wake | None:
        return None if self.state is None else self.state.timer()
