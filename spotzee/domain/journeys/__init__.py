"""Journeys, the pure core: the run state machine and the helpers around it.

- ``transition(journey, state, input, now, env) -> Outcome(state, effects, wake_at)`` (``machine``);
  inputs ``Enter``, ``Wake``, ``EventSeen``, ``SegmentExited``, ``Exit`` (``inputs``); effects
  ``SendMessage``, ``UpdateContact``, ``EmitEvent``, ``EnterJourney``, ``StepRecorded``,
  ``VariantAssigned``, ``BalancerTaken`` (``effects``); the run ``RunState`` (``state``); the
  injected world ``JourneyEnv`` (``env``);
- entrance: ``may_enter`` / ``entrance_refusal`` over an ``EntranceHistory``, ``record_entry``,
  ``record_exit``, ``run_id_for``, ``event_triggers``, ``segment_triggers``; scheduled
  occurrences: ``schedule_key``, ``repeated_occurrence``, ``record_occurrence`` (``entrance``);
- schedules: ``next_fire(trigger, after, tz)`` (``schedule``).

Definitions are ``spotzee.schemas.journey_models``; rule and filter semantics are the segments'.
No I/O and no clock here: time comes in as ``now``.
"""

from spotzee.domain.journeys.effects import (
    BalancerTaken,
    Effect,
    EmitEvent,
    EnterJourney,
    SendMessage,
    StepRecorded,
    UpdateContact,
    VariantAssigned,
    balancer_key,
    position_id,
)
from spotzee.domain.journeys.entrance import (
    EntranceHistory,
    entrance_refusal,
    event_triggers,
    exit_event_matches,
    may_enter,
    occurrence_iso,
    record_entry,
    record_exit,
    record_occurrence,
    repeated_occurrence,
    run_id_for,
    schedule_key,
    segment_triggers,
)
from spotzee.domain.journeys.env import JourneyEnv
from spotzee.domain.journeys.inputs import Enter, EventData, EventSeen, Exit, JourneyInput, SegmentExited, Wake
from spotzee.domain.journeys.machine import TIMER_EARLY, heard_events, refusal, step_kind, transition
from spotzee.domain.journeys.routing import variant_for
from spotzee.domain.journeys.runs import Outcome, RunState, RunVariables
from spotzee.domain.journeys.schedule import next_fire

__all__ = [
    "TIMER_EARLY",
    "BalancerTaken",
    "Effect",
    "EmitEvent",
    "Enter",
    "EnterJourney",
    "EntranceHistory",
    "EventData",
    "EventSeen",
    "Exit",
    "JourneyEnv",
    "JourneyInput",
    "Outcome",
    "RunState",
    "RunVariables",
    "SegmentExited",
    "SendMessage",
    "StepRecorded",
    "UpdateContact",
    "VariantAssigned",
    "Wake",
    "balancer_key",
    "entrance_refusal",
    "event_triggers",
    "exit_event_matches",
    "heard_events",
    "may_enter",
    "next_fire",
    "occurrence_iso",
    "position_id",
    "record_entry",
    "record_exit",
    "record_occurrence",
    "refusal",
    "repeated_occurrence",
    "run_id_for",
    "schedule_key",
    "segment_triggers",
    "step_kind",
    "transition",
    "variant_for",
]
