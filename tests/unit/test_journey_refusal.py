"""``machine.refusal``: what the journey runner asks before building a transition's world.

The runner skips a run's transition when ``refusal`` gives a reason, so that reason must be exactly
what the transition would say: checked on every input of the machine's random journeys, and on the
cases it exists for (a waiting run and the events it does not wait for).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

import tests.unit.test_journey_machine as machine_tests
from spotzee.domain.journeys import (
    EventSeen,
    Exit,
    JourneyEnv,
    JourneyInput,
    Outcome,
    RunState,
    SegmentExited,
    Wake,
    refusal,
    transition,
)
from spotzee.schemas.journey_models import JourneyDefinition
from tests.unit.test_journey_machine import (
    ACTIONS,
    CONTACTS,
    PROPERTY_SETTINGS,
    STARTS,
    T0,
    Harness,
    define,
    play,
    random_journeys,
)


@contextmanager
def refusals_checked(told: list[str]) -> Iterator[None]:
    """Every transition of the machine's tests preceded by ``refusal``, which must agree with it."""

    def checked(
        journey: JourneyDefinition, state: RunState | None, event: JourneyInput, now: datetime, env: JourneyEnv
    ) -> Outcome:
        reason = None if state is None else refusal(journey, state, event, now)
        outcome = transition(journey, state, event, now, env)
        if reason is not None:
            assert outcome.ignored == reason
            assert outcome.state is state
            told.append(reason)
        return outcome

    with mock.patch.object(machine_tests, "transition", checked):
        yield


@PROPERTY_SETTINGS
@given(journey=random_journeys(), contact=CONTACTS, start=STARTS, script=st.lists(ACTIONS, max_size=16))
def test_a_refusal_is_what_the_transition_says(
    journey: JourneyDefinition, contact: dict[str, Any], start: datetime, script: list[tuple[Any, ...]]
) -> None:
    told: list[str] = []
    with refusals_checked(told):
        play(journey, contact, start, script)


WAIT = {
    "wait": {
        "type": "wait_for_event",
        "event": "purchase",
        "within": {"value": 1, "unit": "day"},
        "yes": "done",
        "timeout": "done",
    },
    "done": {"type": "exit"},
}


def test_a_waiting_run_refuses_what_it_does_not_wait_for_and_nothing_else() -> None:
    journey = define(WAIT, exit_when=[{"type": "segment_exited", "segment_id": "seg"}])
    h = Harness(journey)
    h.enter()
    run = h.run
    assert run.status == "waiting"

    def seen(name: str, message_id: str = "m1") -> EventSeen:
        return EventSeen(name=name, message_id=message_id, timestamp=T0)

    assert refusal(journey, run, seen("login"), T0) == "not the awaited event"
    assert refusal(journey, run, SegmentExited(segment_id="other"), T0) == "no exit_when on this segment"
    assert refusal(journey, run, Wake(step_id="wait", visit=run.visit - 1), T0) == "stale timer"
    assert refusal(journey, run, Wake(step_id="wait", visit=run.visit), T0) == "timer is early"
    # These move the run: only the transition can tell.
    assert refusal(journey, run, seen("purchase"), T0) is None
    assert refusal(journey, run, SegmentExited(segment_id="seg"), T0) is None
    assert refusal(journey, run, Exit(), T0) is None
    assert run.wake_at is not None
    assert refusal(journey, run, Wake(step_id="wait", visit=run.visit), run.wake_at) is None
    # An edited journey migrates the run first (it may end it): not told from the stored run.
    edited = define(WAIT, version=2)
    assert refusal(edited, run, seen("login"), T0) is None
    assert transition(edited, run, seen("login"), T0, h.env()).ignored == "not the awaited event"
