"""Who enters a journey: trigger matching, entrance rules and run ids (pure helpers for the caller).

The caller keeps one ``EntranceHistory`` per (contact, journey) next to the runs, asks
``may_enter`` before delivering ``Enter``, and folds ``record_entry`` / ``record_exit`` into the
history when a run starts or exits. ``run_id_for`` makes a trigger's run id deterministic, so a
redelivered trigger produces the same ``Enter`` and the machine ignores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import msgspec

from spotzee.domain.journeys.timing import utc
from spotzee.domain.segments.operators import filters_pass
from spotzee.schemas.journey_models import (
    EventTrigger,
    ExitNode,
    ExitOnEvent,
    JourneyDefinition,
    JourneyStatus,
    SegmentTrigger,
    TriggerNode,
)
from spotzee.schemas.structs import Struct, replace


class EntranceHistory(Struct, kw_only=True, gc=False):
    """Per (contact, journey): how often the contact entered and which runs are still going.
    Plain data: ``gc=False`` keeps the histories in the state cache out of the cyclic collector's scans.

    A table value (``journey_entries``), shared with the runtime's cache once read: the functions
    below return a new history, never change the one they are given."""

    entries: int = 0
    active_run_ids: list[str] = msgspec.field(default_factory=list)
    last_entered_at: datetime | None = None
    last_exited_at: datetime | None = None
    # The latest scheduled occurrence this contact was considered for (entered or refused by the
    # rules): an entry of that occurrence or an earlier one is a repeat, even after the run exited.
    last_occurrence: datetime | None = None


def entrance_refusal(journey: JourneyDefinition, history: EntranceHistory, now: datetime) -> str | None:
    """Why the contact may not enter now, or None if it may."""
    if journey.status != JourneyStatus.live:
        return f"journey is {journey.status.value}"
    rules = journey.entrance
    if rules.max_entries is not None and history.entries >= rules.max_entries:
        return f"entered {history.entries} times (max_entries {rules.max_entries})"
    if rules.reentry == "never" and history.entries > 0:
        return "entered before (reentry: never)"
    if rules.reentry == "after_exit" and history.active_run_ids:
        return "a run is still going (reentry: after_exit)"
    last = history.last_entered_at
    if rules.cooldown is not None and last is not None and utc(now) < last + rules.cooldown.timedelta():
        return "entered too recently (cooldown)"
    return None


def may_enter(journey: JourneyDefinition, history: EntranceHistory, now: datetime) -> bool:
    return entrance_refusal(journey, history, now) is None


def record_entry(history: EntranceHistory, run_id: str, at: datetime) -> EntranceHistory:
    """The history once ``run_id`` has entered (idempotent: an entry already counted stays one)."""
    if run_id in history.active_run_ids:
        return history
    return replace(
        history,
        entries=history.entries + 1,
        active_run_ids=[*history.active_run_ids, run_id],
        last_entered_at=utc(at),
    )


def record_exit(history: EntranceHistory, run_id: str, at: datetime) -> EntranceHistory:
    """The history once ``run_id`` has exited (idempotent)."""
    if run_id not in history.active_run_ids:
        return history
    remaining = [rid for rid in history.active_run_ids if rid != run_id]
    return replace(history, active_run_ids=remaining, last_exited_at=utc(at))


def schedule_key(journey_id: str, occurrence: datetime) -> str:
    """The trigger key of a scheduled occurrence: ``schedule:<journey id>:<ISO instant, UTC>``."""
    return f"schedule:{journey_id}:{occurrence_iso(occurrence)}"


def occurrence_iso(occurrence: datetime) -> str:
    return utc(occurrence).isoformat().replace("+00:00", "Z")


def repeated_occurrence(history: EntranceHistory, occurrence: datetime) -> bool:
    """Whether the contact was already considered for this occurrence (or a later one)."""
    return history.last_occurrence is not None and utc(occurrence) <= history.last_occurrence


def record_occurrence(history: EntranceHistory, occurrence: datetime) -> EntranceHistory:
    if repeated_occurrence(history, occurrence):
        return history
    return replace(history, last_occurrence=utc(occurrence))


def run_id_for(journey_id: str, contact_id: str, trigger_key: str) -> str:
    """A run id determined by what triggered it.

    ``trigger_key``: the event's message id, ``segment:<id>:<entered|exited>:<change id>``, the
    scheduled occurrence (ISO instant), the API call's idempotency key, a link's ``entry_id``.
    """
    digest = hashlib.sha256("\0".join((journey_id, contact_id, trigger_key)).encode()).hexdigest()
    return f"run_{digest[:32]}"


def event_triggers(trigger: TriggerNode, name: str, properties: Mapping[str, Any]) -> bool:
    """Whether a track event enters the contact (an ``event`` trigger with passing filters)."""
    return (
        isinstance(trigger, EventTrigger)
        and trigger.event == name
        and (not trigger.where or filters_pass(trigger.where, dict(properties)))
    )


def segment_triggers(trigger: TriggerNode, segment_id: str, change: Literal["entered", "exited"]) -> bool:
    return isinstance(trigger, SegmentTrigger) and trigger.segment_id == segment_id and trigger.on == change


def exit_event_matches(condition: ExitNode, name: str, properties: Mapping[str, Any]) -> bool:
    return (
        isinstance(condition, ExitOnEvent)
        and condition.event == name
        and filters_pass(condition.where, dict(properties))
    )
