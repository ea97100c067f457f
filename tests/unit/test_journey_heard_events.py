"""``machine.heard_events``: the event names a waiting run can react to.

The journey runner does not even build the input for a run of a live journey, on its version, when the event's
name is not among them (``JourneyRunner._deaf``): so every transition of such a run with such an event must
be ignored, leaving the run as it was. Checked on every event input of the machine's random journeys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

import tests.unit.test_journey_machine as machine_tests
from spotzee.domain.journeys import EventSeen, JourneyEnv, JourneyInput, Outcome, RunState, heard_events, transition
from spotzee.schemas.journey_models import JourneyDefinition
from tests.unit.test_journey_machine import ACTIONS, CONTACTS, PROPERTY_SETTINGS, STARTS, define, play, random_journeys


@PROPERTY_SETTINGS
@given(journey=random_journeys(), contact=CONTACTS, start=STARTS, script=st.lists(ACTIONS, max_size=16))
def test_a_run_ignores_every_event_its_journey_does_not_hear(
    journey: JourneyDefinition, contact: dict[str, Any], start: datetime, script: list[tuple[Any, ...]]
) -> None:
    heard = heard_events(journey)

    def checked(
        journey: JourneyDefinition, state: RunState | None, event: JourneyInput, now: datetime, env: JourneyEnv
    ) -> Outcome:
        outcome = transition(journey, state, event, now, env)
        deaf = (
            isinstance(event, EventSeen)
            and state is not None
            and state.journey_version == journey.version
            and event.name not in heard
        )
        if deaf:
            assert outcome.ignored is not None
            assert outcome.state is state
            assert not outcome.effects
        return outcome

    with mock.patch.object(machine_tests, "transition", checked):
        play(journey, contact, start, script)


def test_heard_events_are_the_awaited_events_and_the_exit_events() -> None:
    journey = define(
        {
            "wait": {
                "type": "wait_for_event",
                "event": "purchase",
                "within": {"value": 1, "unit": "day"},
                "yes": "done",
                "timeout": "done",
            },
            "done": {"type": "exit"},
        },
        exit_when=[{"type": "event", "event": "quit"}, {"type": "segment_exited", "segment_id": "seg"}],
    )
    assert heard_events(journey) == frozenset({"purchase", "quit"})
    assert heard_events(define({"done": {"type": "exit"}})) == frozenset()
