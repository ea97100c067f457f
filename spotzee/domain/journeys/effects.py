"""What a transition asks the caller to do (a union discriminated on ``type``).

Every effect can be carried out more than once without harm: sends and emitted events carry
deterministic ids (``<run_id>:<step_id>:<visit>``), contact updates set values, counters are
keyed by ``counter_key`` and the history rows (``StepRecorded``) by run, step, visit and kind.

Effects live for one transition (the caller carries them out at once): msgspec Structs, cheap to
build, compared by value in tests; plain data, so untracked by the cyclic collector (``gc=False``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from spotzee.domain.journeys.inputs import EventData
from spotzee.schemas.journey_models import Channel
from spotzee.schemas.structs import Tagged


def position_id(run_id: str, step_id: str, visit: int) -> str:
    """``<run_id>:<step_id>:<visit>``: one step's visit in one run (run and step ids hold no ``:``)."""
    return f"{run_id}:{step_id}:{visit}"


def balancer_key(step_id: str, path: str | None = None, period_start: datetime | None = None) -> str:
    """The counter a balancer reads: per step for ``round_robin``; per path and period for ``limited``."""
    if path is None:
        return step_id
    stamp = "" if period_start is None else period_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{step_id}:{path}:{stamp}"


class SendMessage(Tagged, tag="send_message", kw_only=True, gc=False):
    """Hand a message to delivery; ``send_id`` is delivered at most once."""

    type: ClassVar[str] = "send_message"
    send_id: str
    channel: Channel
    template_id: str
    step_id: str
    variables: dict[str, Any]  # ``event`` and ``journey`` for the template (``contact`` is read at send time)


class UpdateContact(Tagged, tag="update_contact", kw_only=True, gc=False):
    type: ClassVar[str] = "update_contact"
    set: dict[str, Any] = msgspec.field(default_factory=dict)
    unset: list[str] = msgspec.field(default_factory=list)


class EmitEvent(Tagged, tag="emit_event", kw_only=True, gc=False):
    """Ingest a track event for the contact; ``message_id`` dedupes it at ingestion."""

    type: ClassVar[str] = "emit_event"
    message_id: str
    name: str
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class EnterJourney(Tagged, tag="enter_journey", kw_only=True, gc=False):
    """Enter the contact into another journey at ``at`` (through its entrance rules).

    ``entry_id`` is a stable trigger key for ``run_id_for``; ``event`` is this run's trigger.
    """

    type: ClassVar[str] = "enter_journey"
    journey_id: str
    at: datetime
    entry_id: str
    event: EventData | None = None


StepKind = Literal["entered", "completed", "waiting", "exited"]


class StepRecorded(Tagged, tag="step_recorded", kw_only=True, gc=False):
    """One line of the run's history (journey-advance topic, ClickHouse)."""

    type: ClassVar[str] = "step_recorded"
    step_id: str
    visit: int
    kind: StepKind
    at: datetime
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class VariantAssigned(Tagged, tag="variant_assigned", kw_only=True, gc=False):
    type: ClassVar[str] = "variant_assigned"
    step_id: str
    variant: str


class BalancerTaken(Tagged, tag="balancer_taken", kw_only=True, gc=False):
    """A contact took ``path``: the caller adds 1 to the counter ``counter_key``."""

    type: ClassVar[str] = "balancer_taken"
    step_id: str
    path: str
    period_start: datetime | None = None  # None: round_robin
    counter_key: str


Effect = SendMessage | UpdateContact | EmitEvent | EnterJourney | StepRecorded | VariantAssigned | BalancerTaken
