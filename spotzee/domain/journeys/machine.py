"""The journey state machine: ``transition(journey, state, input, now, env) -> Outcome``.

Pure: no clock, no storage; ``now`` and ``env`` are given. A transition moves the run through
every step that takes no time until it waits (delay, wait_for_event, full balancer) or ends
(exit, link, exit_when, forced), and returns the new state, the effects and the next wake-up.

How the caller keeps this exactly-once on at-least-once delivery:

- store ``Outcome.state`` and carry out ``Outcome.effects`` (each carries a deterministic id);
- arm one timer per run: at ``Outcome.wake_at`` deliver ``Outcome.timer`` (a ``Wake`` naming
  the step and visit it was set for). Old timers need no cancelling: a Wake for another
  position, or early, is ignored;
- an input applied twice is recognised (``Outcome.ignored``) and changes nothing; see
  ``inputs`` for how each kind is recognised.

Copy on write: the ``state`` given may be shared (a table value in the runtime's cache), so a
transition works on a shallow copy and replaces, never changes, the lists and dicts it touches
(``visits``, ``seen``, ``assignments``, ``variables``).

A definition edited while runs wait (``journey.version`` ahead of the run's): the run stays at
its step when the new version still has that step with the same type, else it exits
(``journey_changed``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from spotzee.domain.journeys.context import End, Go, Park, Result, Walk
from spotzee.domain.journeys.entrance import exit_event_matches
from spotzee.domain.journeys.env import JourneyEnv
from spotzee.domain.journeys.inputs import Enter, EventSeen, Exit, JourneyInput, SegmentExited, Wake
from spotzee.domain.journeys.runs import Outcome, RunState, RunVariables
from spotzee.domain.journeys.steps import arrive, resume
from spotzee.domain.journeys.timing import utc
from spotzee.domain.segments.operators import filters_pass
from spotzee.schemas import structs
from spotzee.schemas.journey_models import (
    ExitOnEvent,
    ExitOnSegmentExited,
    JourneyDefinition,
    JourneyStatus,
    LimitedBalancerStep,
    RoundRobinBalancerStep,
    StepNode,
    WaitForEventStep,
)


def transition(
    journey: JourneyDefinition, state: RunState | None, input: JourneyInput, now: datetime, env: JourneyEnv
) -> Outcome:
    """Apply one input to one run. ``state`` is not modified; the outcome holds a new one.

    ``journey`` is the run's journey (its current version); ``state`` None before ``Enter``.
    """
    now = utc(now)
    if isinstance(input, Enter):
        return _enter(journey, state, input, now, env)
    if state is None:
        return Outcome(state=None, ignored="no such run")
    if state.status == "exited":
        return _ignored(state, "run has exited")
    if state.journey_id != journey.id:
        raise ValueError(f"run {state.run_id} belongs to journey {state.journey_id}, not {journey.id}")
    reason = _refusal(journey, state, input, now)
    if reason is not None:
        return _ignored(state, reason)
    walk = Walk(journey, structs.replace(state), now, env)  # a shallow copy: see the module's docstring
    if not _migrate(walk):
        return _finish(walk)
    reason = _on_input(walk, input)
    return _ignored(state, reason) if reason is not None else _finish(walk)


def refusal(journey: JourneyDefinition, state: RunState, input: JourneyInput, now: datetime) -> str | None:
    """Why ``transition(journey, state, input, now, env)`` would ignore ``input`` (and need no ``env``), as
    far as the stored run tells without a copy; None when only the transition can tell.

    Most inputs a waiting run gets are events it does not wait for: the caller asks this first and
    skips building the transition's world for them."""
    if isinstance(input, Enter):
        return None
    if state.status == "exited":
        return "run has exited"
    if state.journey_id != journey.id:
        return None  # the transition raises: not for this function to hide
    return _refusal(journey, state, input, utc(now))


def heard_events(journey: JourneyDefinition) -> frozenset[str]:
    """The event names a run of ``journey`` (on its version) can react to: those its ``wait_for_event``
    steps wait for and its ``exit_when`` conditions exit on. ``refusal`` refuses an ``EventSeen`` of any
    other name ("not waiting for an event" or "not the awaited event"): the caller may skip such runs."""
    waits = (step.event for step in journey.steps.values() if type(step) is WaitForEventStep)
    exits = (c.event for c in journey.exit_when if isinstance(c, ExitOnEvent))
    return frozenset((*waits, *exits))


def _refusal(journey: JourneyDefinition, state: RunState, input: JourneyInput, now: datetime) -> str | None:
    """``refusal`` of a run of ``journey`` that has not exited, ``now`` in UTC. Read only. An edited journey
    migrates the run first (which may end it), so only a run on the journey's version is told here."""
    if state.journey_version != journey.version:
        return None
    if isinstance(input, EventSeen):
        return _event_refusal(journey, state, input, now)
    if isinstance(input, SegmentExited) and not _exits_on_segment(journey, input.segment_id):
        return "no exit_when on this segment"
    if isinstance(input, Wake):
        return _wake_refusal(state, input, now)
    return None


def _exits_on_segment(journey: JourneyDefinition, segment_id: str) -> bool:
    exits = journey.exit_when  # most journeys have none: no generator built for them (asked per run per input)
    return bool(exits) and any(isinstance(c, ExitOnSegmentExited) and c.segment_id == segment_id for c in exits)


TIMER_EARLY: Final = "timer is early"  # the run's own timer, before its wake_at: the caller arms it again


def _wake_refusal(state: RunState, wake: Wake, now: datetime) -> str | None:
    if state.status != "waiting" or (wake.step_id, wake.visit) != (state.step_id, state.visit):
        return "stale timer"
    if state.wake_at is None or now < state.wake_at:
        return TIMER_EARLY
    return None


def _on_input(walk: Walk, input: Exit | SegmentExited | EventSeen | Wake) -> str | None:
    """Carry out ``input`` on a run (``Enter`` aside); the reason to ignore it otherwise."""
    if isinstance(input, Exit):
        _exit(walk, input.reason)
        return None
    if isinstance(input, SegmentExited):
        if not _exits_on_segment(walk.journey, input.segment_id):
            return "no exit_when on this segment"
        _exit(walk, f"segment_exited:{input.segment_id}")
        return None
    if isinstance(input, EventSeen):
        return _on_event(walk, input)
    return _on_wake(walk, input)


def _enter(journey: JourneyDefinition, state: RunState | None, enter: Enter, now: datetime, env: JourneyEnv) -> Outcome:
    if state is not None:
        return _ignored(state, "run exists already")
    if journey.status != JourneyStatus.live:
        return Outcome(state=None, ignored=f"journey is {journey.status.value}")
    run = RunState(
        run_id=enter.run_id,
        journey_id=journey.id,
        journey_version=journey.version,
        contact_id=enter.contact_id,
        status="active",
        step_id=journey.start,
        entered_at=enter.at,
        updated_at=now,
        variables=RunVariables(event=enter.event.as_variables() if enter.event is not None else {}),
    )
    walk = Walk(journey, run, now, env)
    _walk_from(walk, journey.start)
    return _finish(walk)


def _on_event(walk: Walk, event: EventSeen) -> str | None:
    """Exit conditions first, then a wait for this event; the reason to ignore it otherwise."""
    state = walk.state
    refusal = _event_refusal(walk.journey, state, event, walk.now)
    if refusal is not None:
        return refusal
    if _exits_on(walk.journey, event):
        state.remember(event.message_id)
        _exit(walk, f"event:{event.name}")
        return None
    step = walk.journey.steps[state.step_id]
    assert isinstance(step, WaitForEventStep)  # see _event_refusal
    state.remember(event.message_id)
    state.variables = state.variables.with_step(state.step_id, event.data().as_variables())
    _settle_and_walk(walk, state.step_id, Go(step.yes, {"branch": "yes", "message_id": event.message_id}))
    return None


def _event_refusal(journey: JourneyDefinition, state: RunState, event: EventSeen, now: datetime) -> str | None:
    """Why ``event`` leaves the run as it is; None when it ends the run (``exit_when``) or is the
    event the run waits for. Reads only: ``transition`` asks before copying the run."""
    if event.message_id in state.seen:
        return "event already consumed"
    if _exits_on(journey, event):
        return None
    step = journey.steps[state.step_id]
    if state.status != "waiting" or type(step) is not WaitForEventStep:  # by class: no ABC isinstance
        return "not waiting for an event"
    if event.name != step.event or not filters_pass(step.where, event.properties):
        return "not the awaited event"
    if state.wake_at is not None and now >= state.wake_at:
        return "the wait has timed out"  # the timer is due and takes the timeout branch
    return None


def _exits_on(journey: JourneyDefinition, event: EventSeen) -> bool:
    exits = journey.exit_when  # see _exits_on_segment
    return bool(exits) and any(exit_event_matches(c, event.name, event.properties) for c in exits)


def _on_wake(walk: Walk, wake: Wake) -> str | None:
    state = walk.state
    reason = _wake_refusal(state, wake, walk.now)
    if reason is not None:
        return reason
    _settle_and_walk(walk, state.step_id, resume(walk, state.step_id, walk.journey.steps[state.step_id]))
    return None


def _walk_from(walk: Walk, step_id: str) -> None:
    """Enter ``step_id`` and keep going through steps that take no time.

    Validation rejects zero-delay cycles, so no step is entered twice in one walk and the number
    of steps bounds it; the bound is kept as a guard against definitions that skipped validation.
    """
    budget = len(walk.journey.steps)
    current: str | None = step_id
    while current is not None:
        if budget == 0:
            _exit(walk, "zero_delay_loop")
            return
        budget -= 1
        state = walk.state
        visit = state.visits.get(current, 0) + 1
        state.visits = {**state.visits, current: visit}
        state.step_id, state.visit, state.status, state.wake_at = current, visit, "active", None
        step = walk.journey.steps[current]
        state.step_type = step_kind(step)
        walk.record(current, "entered", {"type": step.type})
        current = _settle(walk, current, arrive(walk, current, step))


def _settle_and_walk(walk: Walk, step_id: str, result: Result) -> None:
    following = _settle(walk, step_id, result)
    if following is not None:
        _walk_from(walk, following)


def _settle(walk: Walk, step_id: str, result: Result) -> str | None:
    """Record what the step did; the step to enter next, if the run goes on now."""
    if isinstance(result, Go):
        walk.record(step_id, "completed", {**result.detail, "next": result.next})
        return result.next
    if isinstance(result, Park):
        state = walk.state
        state.status, state.wake_at = "waiting", result.wake_at
        walk.record(step_id, "waiting", {**result.detail, "wake_at": result.wake_at.isoformat()})
        return None
    assert isinstance(result, End)
    _exit(walk, result.reason, result.detail)
    return None


def _exit(walk: Walk, reason: str, detail: dict[str, Any] | None = None) -> None:
    state = walk.state
    walk.record(state.step_id, "exited", {**(detail or {}), "reason": reason})
    state.status, state.wake_at, state.exited_at, state.exit_reason = "exited", None, walk.now, reason


def _migrate(walk: Walk) -> bool:
    """Move a run onto the journey's current version; False (and exited) if its step is gone."""
    state, journey = walk.state, walk.journey
    if state.journey_version == journey.version:
        return True
    # The run's own version is gone from the journey we are given: compare the step by type.
    step = journey.steps.get(state.step_id)
    state.journey_version = journey.version
    if step is not None and step_kind(step) == state.step_type:
        return True
    _exit(walk, "journey_changed")
    return False


def step_kind(step: StepNode) -> str:
    """What a run waiting at ``step`` relies on: its type (and a balancer's mode)."""
    if type(step) is RoundRobinBalancerStep or type(step) is LimitedBalancerStep:  # no ABC isinstance per step
        return f"balancer:{step.mode}"
    return step.type


def _finish(walk: Walk) -> Outcome:
    state = walk.state
    state.updated_at = walk.now
    return Outcome(state=state, effects=walk.effects, wake_at=state.wake_at if state.status == "waiting" else None)


def _ignored(state: RunState, reason: str) -> Outcome:
    return Outcome(state=state, wake_at=state.wake_at if state.status == "waiting" else None, ignored=reason)
