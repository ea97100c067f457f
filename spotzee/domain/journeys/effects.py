"""What a transition asks the caller to do (a union discriminated on ``type``).

Every effect can be carried out more than once without harm: sends and emitted events carry
deterministic ids (``<run_id>:<step_id>:<visit>``), contact updates set values, counters are
keyed by ``counter_key`` and the history rows (``StepRecorded``) by run, step, visit and kind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from spotzee.domain.journeys.inputs import EventData
from spotzee.schemas.common import JSONObject, Model, UTCDateTime
from spotzee.schemas.journey_models import Channel


def position_id(run_id: str, step_id: str, visit: int) -> str:
    """``<run_id>:<step_id>:<visit>``: one step's visit in one run (run and step ids hold no ``:``)."""
    return f"{run_id}:{step_id}:{visit}"


def balancer_key(step_id: str, path: str | None = None, period_start: datetime | None = None) -> str:
    """The counter a balancer reads: per step for ``round_robin``; per path and period for ``limited``."""
    if path is None:
        return step_id
    stamp = "" if period_start is None else period_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{step_id}:{path}:{stamp}"


class SendMessage(Model):
    """Hand a message to delivery; ``send_id`` is delivered at most once."""

    type: Literal["send_message"] = "send_message"
    send_id: str
    channel: Channel
    template_id: str
    step_id: str
    variables: JSONObject  # ``event`` and ``journey`` for the template (``contact`` is read at send time)


class UpdateContact(Model):
    type: Literal["update_contact"] = "update_contact"
    set: JSONObject = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class EmitEvent(Model):
    """Ingest a track event for the contact; ``message_id`` dedupes it at ingestion."""

    type: Literal["emit_event"] = "emit_event"
    message_id: str
    name: str
    properties: JSONObject = Field(default_factory=dict)


class EnterJourney(Model):
    """Enter the contact into another journey at ``at`` (through its entrance rules).

    ``entry_id`` is a stable trigger key for ``run_id_for``; ``event`` is this run's trigger.
    """

    type: Literal["enter_journey"] = "enter_journey"
    journey_id: str
    at: UTCDateTime
    entry_id: str
    event: EventData | None = None


StepKind = Literal["entered", "completed", "waiting", "exited"]


class StepRecorded(Model):
    """One line of the run's history (journey-advance topic, ClickHouse)."""

    type: Literal["step_recorded"] = "step_recorded"
    step_id: str
    visit: int
    kind: StepKind
    at: UTCDateTime
    detail: dict[str, Any] = Field(default_factory=dict)


class VariantAssigned(Model):
    type: Literal["variant_assigned"] = "variant_assigned"
    step_id: str
    variant: str


class BalancerTaken(Model):
    """A contact took ``path``: the caller adds 1 to the counter ``counter_key``."""

    type: Literal["balancer_taken"] = "balancer_taken"
    step_id: str
    path: str
    period_start: UTCDateTime | None = None  # None: round_robin
    counter_key: str


Effect = Annotated[
    SendMessage | UpdateContact | EmitEvent | EnterJourney | StepRecorded | VariantAssigned | BalancerTaken,
    Field(discriminator="type"),
]
