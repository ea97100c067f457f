"""The working state of one transition, and what a step does with the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from spotzee.domain.journeys.effects import Effect, StepKind, StepRecorded, position_id
from spotzee.domain.journeys.env import JourneyEnv
from spotzee.domain.journeys.runs import RunState
from spotzee.domain.journeys.timing import resolve_zone
from spotzee.schemas.journey_models import JourneyDefinition

# What a step did. One per step visited: frozen msgspec Structs, cheaper to build than dataclasses (and,
# plain data, left untracked by the cyclic collector: gc=False).


class Go(msgspec.Struct, frozen=True, gc=False):
    """The step is done: continue at ``next`` in this same transition."""

    next: str
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class Park(msgspec.Struct, frozen=True, gc=False):
    """The run waits at this step until ``wake_at`` (or an event)."""

    wake_at: datetime
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class End(msgspec.Struct, frozen=True, gc=False):
    """The run ends here."""

    reason: str
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


Result = Go | Park | End


@dataclass(slots=True)
class Walk:
    """One transition in progress: a private (shallow) copy of the run it may change, and the effects
    so far. The copy's lists and dicts may be shared with the stored run: replace them, never change
    them in place."""

    journey: JourneyDefinition
    state: RunState
    now: datetime
    env: JourneyEnv
    effects: list[Effect] = field(default_factory=list)
    taken: dict[str, int] = field(default_factory=dict)  # balancer counters taken in this transition

    def record(self, step_id: str, kind: StepKind, detail: dict[str, Any]) -> None:
        visit = self.state.visits.get(step_id, 0)
        self.effects.append(StepRecorded(step_id=step_id, visit=visit, kind=kind, at=self.now, detail=detail))

    def position(self, step_id: str) -> str:
        """The id of the current visit of ``step_id``: sends, emitted events and links use it."""
        return position_id(self.state.run_id, step_id, self.state.visits.get(step_id, 0))

    def count(self, key: str) -> int:
        return self.env.balancer_counts.get(key, 0) + self.taken.get(key, 0)

    def take(self, key: str) -> None:
        self.taken[key] = self.taken.get(key, 0) + 1

    def zone(self) -> ZoneInfo:
        return resolve_zone(self.env.timezone, self.journey.timezone, self.env.default_timezone)

    def liquid_data(self) -> dict[str, Any]:
        return {"contact": dict(self.env.contact), **self.state.variables.template_data()}
