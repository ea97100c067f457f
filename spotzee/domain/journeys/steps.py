"""What each step does when a run arrives (``arrive``) and when its timer fires (``resume``).

Steps that take no time (send, gate, experiment, balancer with room, update, event, a delay
already due) return ``Go``; delays, waits and full balancers return ``Park``; exit and link
return ``End``. Every effect id derives from the step's current visit, so replays repeat ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from spotzee.domain.journeys.context import End, Go, Park, Result, Walk
from spotzee.domain.journeys.effects import (
    BalancerTaken,
    EmitEvent,
    EnterJourney,
    SendMessage,
    UpdateContact,
    VariantAssigned,
)
from spotzee.domain.journeys.inputs import EventData
from spotzee.domain.journeys.routing import Full, limited, round_robin, variant_for
from spotzee.domain.journeys.timing import instant_of, next_time_of_day
from spotzee.domain.segments.operators import read_path, shifted
from spotzee.schemas import structs
from spotzee.schemas.journey_models import (
    DelayStep,
    EventStep,
    ExitStep,
    ExperimentStep,
    GateStep,
    LimitedBalancerStep,
    LinkStep,
    RoundRobinBalancerStep,
    SendStep,
    StepNode,
    UpdateStep,
    WaitForEventStep,
)


def arrive(walk: Walk, step_id: str, step: StepNode) -> Result:
    """The run has just entered ``step_id`` (its visit already counted)."""
    return _ARRIVALS[type(step)](walk, step_id, step)  # by class: one lookup, not a chain of isinstance


def resume(walk: Walk, step_id: str, step: StepNode) -> Result:
    """The run's timer at ``step_id`` is due: a delay is over, a wait timed out, a full balancer
    tries again."""
    if isinstance(step, DelayStep):
        return Go(step.next, {"waited": True})
    if isinstance(step, WaitForEventStep):
        return Go(step.timeout, {"branch": "timeout"})
    if isinstance(step, RoundRobinBalancerStep | LimitedBalancerStep):
        return _balance(walk, step_id, step)
    # Only a definition changed under a waiting run can get here (see ``machine._migrate``).
    return End("not_a_waiting_step")


def _gate(walk: Walk, step_id: str, step: GateStep) -> Result:
    matched = walk.env.evaluate_rule(step.rule)
    return Go(step.yes if matched else step.no, {"branch": "yes" if matched else "no"})


def _wait(walk: Walk, step_id: str, step: WaitForEventStep) -> Result:
    return Park(walk.now + step.within.timedelta(), {"event": step.event})


def _exit(walk: Walk, step_id: str, step: ExitStep) -> Result:
    return End("exit_step")


def _send(walk: Walk, step_id: str, step: SendStep) -> Result:
    send_id = walk.position(step_id)
    variables = walk.state.variables.template_data()
    walk.effects.append(
        SendMessage(
            send_id=send_id, channel=step.channel, template_id=step.template_id, step_id=step_id, variables=variables
        )
    )
    return Go(step.next, {"send_id": send_id})


def _delay(walk: Walk, step_id: str, step: DelayStep) -> Result:
    if step.duration is not None:
        target = walk.now + step.duration.timedelta()
    elif step.until_time is not None:
        target = next_time_of_day(walk.now, step.until_time.time, step.until_time.weekdays, walk.zone())
    else:
        found = _date_target(walk, step)
        if found is None:
            return Go(step.next, {"skipped": "no date"})
        target = found
    if target <= walk.now:  # a zero duration, a date in the past: no waiting
        return Go(step.next, {"skipped": "due"})
    return Park(target)


def _date_target(walk: Walk, step: DelayStep) -> datetime | None:
    spec = step.until_date
    assert spec is not None
    if spec.source == "contact":
        raw = read_path(dict(walk.env.contact), spec.path)
    else:
        raw = read_path(walk.state.variables.event.get("properties") or {}, spec.path)
    at = instant_of(raw, walk.zone())
    if at is None or spec.offset is None:
        return at
    return shifted(at, spec.offset.timedelta())


def _experiment(walk: Walk, step_id: str, step: ExperimentStep) -> Result:
    names = {v.name: v for v in step.variants}
    chosen = names.get(walk.state.assignments.get(step_id, ""))
    if chosen is None:  # first time here (or the variant was removed by an edit): draw
        chosen = variant_for(walk.state.journey_id, step_id, walk.state.contact_id, step.variants)
        state = walk.state  # the walk's own copy; its dicts may be shared: replaced, not changed
        state.assignments = {**state.assignments, step_id: chosen.name}
        state.variables = state.variables.with_step(step_id, {"variant": chosen.name})
        walk.effects.append(VariantAssigned(step_id=step_id, variant=chosen.name))
    return Go(chosen.next, {"variant": chosen.name})


def _balance(walk: Walk, step_id: str, step: RoundRobinBalancerStep | LimitedBalancerStep) -> Result:
    choice = (
        round_robin(step_id, step, walk.count)
        if isinstance(step, RoundRobinBalancerStep)
        else limited(step_id, step, walk.count, walk.now)
    )
    if isinstance(choice, Full):
        return Park(choice.retry_at, {"reason": "all paths full"})
    walk.take(choice.key)
    walk.effects.append(
        BalancerTaken(step_id=step_id, path=choice.path, period_start=choice.period_start, counter_key=choice.key)
    )
    return Go(choice.path, {"path": choice.path})


Data = Callable[[], Mapping[str, Any]]


def _lazy(build: Data) -> Data:
    """``build``, called once on first use (a step's Liquid variables: most values hold no Liquid)."""
    built: list[Mapping[str, Any]] = []

    def data() -> Mapping[str, Any]:
        if not built:
            built.append(build())
        return built[0]

    return data


def _rendered(value: Any, render: Callable[[str, Mapping[str, Any]], str], data: Data) -> Any:
    """String values rendered as Liquid, at any depth; other values as they are.

    A string without ``{`` holds no Liquid markup (outputs and tags all open with one): it is its
    own rendering, so neither the renderer nor the variables (``data``, built on first use) are
    needed for it."""
    if isinstance(value, str):
        return render(value, data()) if "{" in value else value
    if isinstance(value, dict):
        return {key: _rendered(item, render, data) for key, item in value.items()}
    if isinstance(value, list):
        return [_rendered(item, render, data) for item in value]
    return value


def _update(walk: Walk, step_id: str, step: UpdateStep) -> Result:
    data = _lazy(walk.liquid_data)
    values = {path: _rendered(value, walk.env.render, data) for path, value in step.set.items()}
    walk.effects.append(UpdateContact(set=values, unset=list(step.unset)))
    return Go(step.next)


def _event(walk: Walk, step_id: str, step: EventStep) -> Result:
    properties = _rendered(step.properties, walk.env.render, _lazy(walk.liquid_data))
    walk.effects.append(EmitEvent(message_id=walk.position(step_id), name=step.name, properties=properties))
    return Go(step.next)


def _link(walk: Walk, step_id: str, step: LinkStep) -> Result:
    at = walk.now + (step.delay.timedelta() if step.delay is not None else timedelta(0))
    trigger = walk.state.variables.event
    walk.effects.append(
        EnterJourney(
            journey_id=step.journey_id,
            at=at,
            entry_id=walk.position(step_id),
            event=structs.convert(trigger, EventData) if trigger else None,
        )
    )
    return End("link", {"journey_id": step.journey_id})


_ARRIVALS: dict[type, Callable[[Walk, str, Any], Result]] = {
    SendStep: _send,
    DelayStep: _delay,
    GateStep: _gate,
    ExperimentStep: _experiment,
    RoundRobinBalancerStep: _balance,
    LimitedBalancerStep: _balance,
    UpdateStep: _update,
    EventStep: _event,
    LinkStep: _link,
    WaitForEventStep: _wait,
    ExitStep: _exit,
}
