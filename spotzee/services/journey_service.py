"""Journeys as the API sees them: drafts, versions and the draft → live → paused → archived life.

Editing a live (or paused) journey stores a new version and keeps its status; the processor runs
every run on the current version, so a run in flight moves onto the new one with its next input
(it stays at its step if the new version has that step with the same type, else it exits with
``journey_changed``: ``domain/journeys/machine.py``, docs/journeys.md "Editing a live journey").
Publishing, and editing a live or paused journey, check what the journey refers to: templates
(and that their channel matches the send step), segments, lists and linked journeys must exist
in the project.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from spotzee.domain.segments import segment_references
from spotzee.errors import Conflict, InvalidInput, LogUnavailable
from spotzee.schemas.journey_models import (
    ApiTrigger,
    ExitOnSegmentExited,
    GateStep,
    JourneyCreate,
    JourneyDefinition,
    JourneyEnterRequest,
    JourneyStatus,
    LinkStep,
    ScheduledTrigger,
    SegmentTrigger,
    SendStep,
    StepNode,
    TriggerNode,
)
from spotzee.schemas.records import JourneyBarrier, JourneyEntry
from spotzee.schemas.template_models import TemplateDefinition
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.catalogue import Catalogue, Definitions, Kind
from spotzee.services.segment_service import Segments, list_references
from spotzee.services.template_service import TEMPLATE
from spotzee.streams.interface import Clock
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.record_codec import dumps

JOURNEY = Kind("journey", JourneyDefinition, "jrn")
# Which lifecycle moves are allowed from which status.
MOVES: dict[str, tuple[JourneyStatus, frozenset[JourneyStatus]]] = {
    "publish": (JourneyStatus.live, frozenset({JourneyStatus.draft, JourneyStatus.paused})),
    "pause": (JourneyStatus.paused, frozenset({JourneyStatus.live})),
    "archive": (JourneyStatus.archived, frozenset({JourneyStatus.draft, JourneyStatus.live, JourneyStatus.paused})),
}

log = logging.getLogger(__name__)


class Journeys(Definitions[JourneyDefinition, JourneyDefinition]):
    """Checks that need the id (a link to itself needs a delay) fail as 400 when a version is made."""

    def __init__(self, catalogue: Catalogue, clock: Clock, segments: Segments, registry: JourneyRegistry) -> None:
        super().__init__(catalogue, clock, JOURNEY, JourneyDefinition)
        self.runtime = catalogue.runtime
        self.segments = segments
        self.registry = registry  # the embedded processor's: a write is live there at once

    async def create(self, actor: ApiKey, body: JourneyCreate) -> JourneyDefinition:
        item = self.first_version(actor, {**body.model_dump(mode="json"), "status": JourneyStatus.draft})
        await self.write(actor, "create", item, None)
        return item

    async def update(self, actor: ApiKey, journey_id: str, body: JourneyCreate) -> JourneyDefinition:
        current = self.get(actor.project, journey_id)
        if current.status == JourneyStatus.archived:
            raise Conflict(f"journey {journey_id} is archived: it can't be edited")
        item = self.validated(
            {
                **body.model_dump(mode="json"),
                "id": current.id,
                "project_id": current.project_id,
                "version": current.version + 1,
                "status": current.status,
                "created_at": current.created_at,
                "updated_at": self.clock.now(),
            }
        )
        if item.status != JourneyStatus.draft:
            self._check_references(item)  # a live journey's new version is live at once
        await self.write(actor, "update", item, current)
        return item

    async def move(self, actor: ApiKey, journey_id: str, action: str) -> JourneyDefinition:
        current = self.get(actor.project, journey_id)
        target, allowed = MOVES[action]
        if current.status not in allowed:
            raise Conflict(f"journey {journey_id} is {current.status.value}: it can't {action}")
        if target == JourneyStatus.live:
            self._check_references(current)
        item = current.model_copy(update={"status": target, "updated_at": self.clock.now()})
        await self.write(actor, action, item, current)
        return item

    async def enter(self, actor: ApiKey, journey_id: str, body: JourneyEnterRequest) -> int:
        """``POST /journeys/{id}/enter``: one ``JourneyEntry`` per contact (a missing contact is
        created). The idempotency key makes the run ids: the same call twice enters once."""
        journey = self.get(actor.project, journey_id)
        if not isinstance(journey.trigger, ApiTrigger):
            raise Conflict(
                f"journey {journey_id} is entered by its {journey.trigger.type} trigger, not through the API"
            )
        if journey.status != JourneyStatus.live:
            raise Conflict(f"journey {journey_id} is {journey.status.value}: publish it first")
        key = body.idempotency_key or uuid.uuid4().hex
        now = self.clock.now()
        records = [
            (
                f"{journey.project_id}:{contact_id}",
                dumps(
                    JourneyEntry(
                        project_id=journey.project_id,
                        id=contact_id,
                        journey_id=journey.id,
                        entry_id=f"api:{key}",
                        payload=body.payload,
                        at=now,
                    )
                ),
            )
            for contact_id in body.ids
        ]
        await self.runtime.append(records)
        return len(records)

    def _check_references(self, journey: JourneyDefinition) -> None:
        project_id = journey.project_id
        known = _Known(
            templates={t.id: t for t in self.catalogue.all(TEMPLATE, project_id)},
            segments={d.id for d in self.segments.live(project_id)},
            lists={item.id for item in self.segments.lists(project_id)},
            journeys={j.id for j in self.all(project_id)},
        )
        problems = list(known.problems(journey))
        if problems:
            raise InvalidInput(
                "; ".join(f"{p}: {r}" for p, r in problems),
                details=[{"path": p, "reason": r} for p, r in problems],
            )

    async def write(self, actor: ApiKey, verb: str, item: JourneyDefinition, before: JourneyDefinition | None) -> None:
        await super().write(actor, verb, item, before)
        if item.status != JourneyStatus.draft:  # what is appended from now on sees this version
            barrier = JourneyBarrier.of(item)
            try:
                await self.runtime.broadcast(f"{item.project_id}:journey:{item.id}", dumps(barrier))
            except LogUnavailable as exc:  # the write stands: workers get it from the definitions store
                log.warning("journey %s stored, but its barrier was not appended: %s", item.id, exc)
        self.registry.apply(item)  # after the barrier: this process's scheduler enters nobody before it

    def audit(self, item: JourneyDefinition) -> object:
        return {"version": item.version, "status": item.status.value, "name": item.name}

    def audit_before(self, item: JourneyDefinition) -> object:
        return {"version": item.version, "status": item.status.value}


@dataclass(frozen=True)
class _Known:
    """What a journey's project holds: the ids its references must name."""

    templates: dict[str, TemplateDefinition]
    segments: set[str]
    lists: set[str]
    journeys: set[str]

    def problems(self, journey: JourneyDefinition) -> Iterator[tuple[str, str]]:
        """(path, reason) of every reference to something the project does not hold, in
        definition order: trigger, exit conditions, steps."""
        yield from self._trigger(journey.trigger)
        for i, condition in enumerate(journey.exit_when):
            if isinstance(condition, ExitOnSegmentExited) and condition.segment_id not in self.segments:
                yield f"exit_when.{i}.segment_id", f"segment {condition.segment_id} does not exist"
        for step_id, step in journey.steps.items():
            yield from self._step(f"steps.{step_id}", step)

    def _trigger(self, trigger: TriggerNode) -> Iterator[tuple[str, str]]:
        if isinstance(trigger, SegmentTrigger) and trigger.segment_id not in self.segments:
            yield "trigger.segment_id", f"segment {trigger.segment_id} does not exist"
        if isinstance(trigger, ScheduledTrigger):
            audience = trigger.audience
            if audience.segment_id is not None and audience.segment_id not in self.segments:
                yield "trigger.audience.segment_id", f"segment {audience.segment_id} does not exist"
            if audience.list_id is not None and audience.list_id not in self.lists:
                yield "trigger.audience.list_id", f"list {audience.list_id} does not exist"

    def _step(self, path: str, step: StepNode) -> Iterator[tuple[str, str]]:
        if isinstance(step, SendStep):
            template = self.templates.get(step.template_id)
            if template is None:
                yield f"{path}.template_id", f"template {step.template_id} does not exist"
            elif template.channel != step.channel:
                yield f"{path}.template_id", f"template {step.template_id} is a {template.channel} template"
        elif isinstance(step, GateStep):
            for ref in sorted(segment_references(step.rule) - self.segments):
                yield f"{path}.rule", f"segment {ref} does not exist"
            for ref in sorted(list_references(step.rule) - self.lists):
                yield f"{path}.rule", f"list {ref} does not exist"
        elif isinstance(step, LinkStep) and step.journey_id not in self.journeys:
            yield f"{path}.journey_id", f"journey {step.journey_id} does not exist"
