"""Journeys inside the contact processor: triggers, runs, timers and effects.

A run belongs to one contact, so it lives in that contact's partition next to its state:
- ``journey_runs``: ``<contact key>\\0<run id>`` -> RunState (waiting runs; an exited run is
  deleted, its history is in ``journey_steps``);
- ``journey_entries``: ``<contact key>\\0<journey id>`` -> EntranceHistory (entrance rules);
- ``journey_counters``: balancer counters (``balancer_key``) -> count.

Inputs: a track event (``EventSeen`` for every waiting run, then event triggers), the contact's
segment transitions (``SegmentExited``, segment triggers), ``JourneyEntry`` records (API, link,
schedule) and ``JourneyWake`` timers. Effects become records: ``SendCommand`` on ``sends``
(and a ``queued`` row in ``messages``), a transition on ``journey-advance`` (and a
``journey_steps`` row), events and entries back on ``events``, attribute updates through the
contact reducer. Every effect carries a deterministic id, so a replayed batch repeats none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

import orjson

from spotzee.domain import journeys as machine
from spotzee.domain.segments import compile, evaluate
from spotzee.domain.segments.engine import matches
from spotzee.domain.segments.facts import EventFact, MembershipContext
from spotzee.domain.segments.membership import ContactSegments
from spotzee.domain.templates import contact_variables, event_variables, render_string
from spotzee.errors import SpotzeeError
from spotzee.schemas.analytics_models import JourneyStepRow
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.events import TrackMessage
from spotzee.schemas.journey_models import JourneyDefinition, JourneyStatus, ScheduledTrigger
from spotzee.schemas.messages import JourneyAdvance, SendCommand, message_row
from spotzee.schemas.records import IngestedMessage, JourneyEntry, JourneyWake
from spotzee.schemas.rules import RuleNode
from spotzee.schemas.segment_models import HistoryFact
from spotzee.streams import topics
from spotzee.streams.interface import Context, Table
from spotzee.streams.quarantine import decode
from spotzee.streams.record_codec import dumps, loads
from spotzee.streams.segment_processor import MEMBERSHIPS

log = logging.getLogger(__name__)

JOURNEY_RUNS = "journey_runs"
JOURNEY_ENTRIES = "journey_entries"
JOURNEY_COUNTERS = "journey_counters"
TABLES = (JOURNEY_RUNS, JOURNEY_ENTRIES, JOURNEY_COUNTERS)
SEP = "\x00"
PAUSED_RECHECK = timedelta(minutes=1)  # how often a paused journey's due timers look again

UpdateContact = Callable[[Context, ContactState, dict[str, Any], str], ContactState]


class JourneyRegistry:
    """The journeys a process knows (latest definition of each), fed like the segment registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._journeys: dict[str, JourneyDefinition] = {}

    def load(self, items: Iterator[tuple[str, bytes]]) -> None:
        for key, raw in items:
            self.on_definition(key, raw)

    def on_definition(self, key: str, value: bytes | None) -> None:
        if value is None or not key.startswith("journey/"):
            return
        journey = decode(key, value, JourneyDefinition.model_validate_json)  # unreadable: quarantined, skipped
        if isinstance(journey, JourneyDefinition):
            self.apply(journey)

    def apply(self, journey: JourneyDefinition) -> None:
        with self._lock:
            known = self._journeys.get(journey.id)
            if known is None or (known.version, known.updated_at) <= (journey.version, journey.updated_at):
                self._journeys[journey.id] = journey

    def get(self, journey_id: str) -> JourneyDefinition | None:
        return self._journeys.get(journey_id)

    def all(self) -> list[JourneyDefinition]:
        with self._lock:
            return list(self._journeys.values())

    def live(self, project_id: str) -> list[JourneyDefinition]:
        return [j for j in self._journeys.values() if j.project_id == project_id and j.status == JourneyStatus.live]


@dataclass(frozen=True)
class SegmentTransition:
    segment_id: str
    entered: bool
    change_id: str


class _Counters(Mapping[str, int]):
    """One journey's balancer counters, read from the partition's table on demand."""

    def __init__(self, table: Table, prefix: str) -> None:
        self.table = table
        self.prefix = prefix

    def __getitem__(self, key: str) -> int:
        raw = self.table.get(self.prefix + key)
        if raw is None:
            raise KeyError(key)
        return int(raw)

    def __iter__(self) -> Iterator[str]:
        return (key[len(self.prefix) :] for key, _ in self.table.scan_prefix(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class JourneyRunner:
    def __init__(self, registry: JourneyRegistry, update_contact: UpdateContact) -> None:
        self.registry = registry
        self.update_contact = update_contact
        self._compiled: dict[int, Any] = {}

    # -- inputs ---------------------------------------------------------------------------------

    def on_event(self, ctx: Context, contact: ContactState, fact: HistoryFact) -> None:
        """A track event: waiting runs see it first (waits, exits), then triggers may enter."""
        seen = machine.EventSeen(
            name=fact.name, properties=fact.properties, message_id=fact.message_id, timestamp=fact.timestamp
        )
        # Each run (and each new one) sees the contact as the previous transitions left it.
        for run in self._runs(ctx, contact):
            contact = self._apply(ctx, contact, run.journey_id, run, seen)
        for journey in self.registry.live(contact.project_id):
            if machine.event_triggers(journey.trigger, fact.name, fact.properties):
                event = machine.EventData(
                    name=fact.name, properties=fact.properties, message_id=fact.message_id, timestamp=fact.timestamp
                )
                contact = self._enter(ctx, contact, journey, _Trigger(fact.message_id, event, ctx.clock.now()))

    def on_segments(self, ctx: Context, contact: ContactState, transitions: list[SegmentTransition]) -> None:
        for transition in transitions:
            if not transition.entered:
                exited = machine.SegmentExited(segment_id=transition.segment_id)
                for run in self._runs(ctx, contact):
                    contact = self._apply(ctx, contact, run.journey_id, run, exited)
            change: Literal["entered", "exited"] = "entered" if transition.entered else "exited"
            for journey in self.registry.live(contact.project_id):
                if machine.segment_triggers(journey.trigger, transition.segment_id, change):
                    key = f"segment:{transition.segment_id}:{change}:{transition.change_id}"
                    event = machine.EventData(
                        name=f"segment_{change}", properties={"segment_id": transition.segment_id}
                    )
                    contact = self._enter(ctx, contact, journey, _Trigger(key, event, ctx.clock.now()))

    def on_entry(self, ctx: Context, contact: ContactState, record: JourneyEntry) -> None:
        journey = self.registry.get(record.journey_id)
        if journey is None or journey.status != JourneyStatus.live or journey.project_id != record.project_id:
            log.info("entry %s into journey %s dropped: not live", record.entry_id, record.journey_id)
            return
        event = None
        if record.event is not None:
            event = machine.EventData.model_validate(record.event)
        elif record.payload is not None:
            event = machine.EventData(name="journey_entry", properties=record.payload)
        if record.occurrence is not None:  # a schedule's: once per occurrence, even after the run exited
            if not isinstance(journey.trigger, ScheduledTrigger):
                log.info("entry %s into journey %s dropped: no longer scheduled", record.entry_id, journey.id)
                return
            key = machine.schedule_key(journey.id, record.occurrence)
            self._enter(ctx, contact, journey, _Trigger(key, event, record.at, record.occurrence))
            return
        self._enter(ctx, contact, journey, _Trigger(f"entry:{record.entry_id}", event, record.at))

    def on_wake(self, ctx: Context, contact: ContactState | None, record: JourneyWake) -> None:
        if contact is None:
            return
        raw = ctx.table(JOURNEY_RUNS).get(_run_key(contact, record.run_id))
        if raw is None:
            return  # the run ended meanwhile: a stale timer
        run = loads(machine.RunState, raw)
        self._apply(ctx, contact, run.journey_id, run, machine.Wake(step_id=record.step_id, visit=record.visit))

    def on_leave(self, ctx: Context, contact: ContactState, reason: str) -> None:
        """The contact is erased or merged away: its runs end and its journey state goes."""
        for run in self._runs(ctx, contact):
            contact = self._apply(ctx, contact, run.journey_id, run, machine.Exit(reason=reason))
        entries = ctx.table(JOURNEY_ENTRIES)
        for key, _ in list(entries.scan_prefix(_contact_key(contact) + SEP)):
            entries.delete(key)

    # -- runs -----------------------------------------------------------------------------------

    def _runs(self, ctx: Context, contact: ContactState) -> list[machine.RunState]:
        return [
            loads(machine.RunState, raw) for _, raw in ctx.table(JOURNEY_RUNS).scan_prefix(_contact_key(contact) + SEP)
        ]

    def _enter(
        self, ctx: Context, contact: ContactState, journey: JourneyDefinition, trigger: _Trigger
    ) -> ContactState:
        """Start a run if the entrance rules allow; the contact as the run's first transition left it."""
        occurrence = trigger.occurrence
        entries = ctx.table(JOURNEY_ENTRIES)
        history_key = f"{_contact_key(contact)}{SEP}{journey.id}"
        raw = entries.get(history_key)
        history = loads(machine.EntranceHistory, raw) if raw is not None else machine.EntranceHistory()
        run_id = machine.run_id_for(journey.id, contact.id, trigger.key)
        if run_id in history.active_run_ids or ctx.table(JOURNEY_RUNS).get(_run_key(contact, run_id)) is not None:
            return contact  # a replayed trigger
        if occurrence is not None:
            if machine.repeated_occurrence(history, occurrence):
                return contact  # this occurrence (or a later one) was handled for the contact already
            history = machine.record_occurrence(history, occurrence)
        now = ctx.clock.now()
        if not machine.may_enter(journey, history, now):
            if occurrence is not None:  # considered once: a repeat of the occurrence stays refused
                entries.set(history_key, dumps(history))
            return contact
        entries.set(history_key, dumps(machine.record_entry(history, run_id, now)))
        enter = machine.Enter(run_id=run_id, contact_id=contact.id, event=trigger.event, at=trigger.at)
        return self._apply(ctx, contact, journey.id, None, enter)

    def _apply(
        self,
        ctx: Context,
        contact: ContactState,
        journey_id: str,
        run: machine.RunState | None,
        input: machine.JourneyInput,
    ) -> ContactState:
        """One transition of a run; the contact as its effects (``update`` steps) left it."""
        journey = self.registry.get(journey_id)
        if journey is None:
            return contact  # a definition this process doesn't know (yet): the run waits for it
        now = ctx.clock.now()
        counters = ctx.table(JOURNEY_COUNTERS)
        env = machine.JourneyEnv(
            evaluate_rule=lambda rule: self._gate(ctx, contact, rule, now),
            render=_render,
            contact=contact_variables(contact),
            timezone=contact.timezone,
            default_timezone=journey.timezone or "UTC",
            balancer_counts=_Counters(counters, _counter_prefix(journey)),
        )
        if run is not None and journey.status == JourneyStatus.archived:
            input = machine.Exit(reason="journey_archived")  # archiving ends the runs in flight
        elif run is not None and journey.status != JourneyStatus.live and not isinstance(input, machine.Exit):
            # Paused (or back to draft): runs hold. A due timer is re-armed; events pass unseen.
            if isinstance(input, machine.Wake) and run.wake_at is not None:
                _arm(ctx, contact, run.run_id, input, now + PAUSED_RECHECK)
            return contact
        outcome = machine.transition(journey, run, input, now, env)
        if outcome.ignored is not None or outcome.state is None:
            return contact
        state = outcome.state
        runs = ctx.table(JOURNEY_RUNS)
        key = _run_key(contact, state.run_id)
        if state.status == "exited":
            runs.delete(key)
            self._record_exit(ctx, contact, journey.id, state.run_id, now)
        else:
            runs.set(key, dumps(state))
        wake = outcome.timer
        if wake is not None and outcome.wake_at is not None:
            _arm(ctx, contact, state.run_id, wake, outcome.wake_at)
        elif run is not None and run.wake_at is not None:
            ctx.cancel(_timer_id(contact, state.run_id))
        carrying = _Carrying(ctx, journey, state, now)
        for seq, effect in enumerate(outcome.effects):
            contact = self._carry_out(carrying, contact, effect, seq)
        return contact

    def _record_exit(self, ctx: Context, contact: ContactState, journey_id: str, run_id: str, now: datetime) -> None:
        entries = ctx.table(JOURNEY_ENTRIES)
        history_key = f"{_contact_key(contact)}{SEP}{journey_id}"
        raw = entries.get(history_key)
        if raw is not None:
            entries.set(history_key, dumps(machine.record_exit(loads(machine.EntranceHistory, raw), run_id, now)))

    # -- effects --------------------------------------------------------------------------------

    def _carry_out(self, carrying: _Carrying, contact: ContactState, effect: machine.Effect, seq: int) -> ContactState:
        ctx, journey, run, now = carrying
        key = _contact_key(contact)
        pid = contact.project_id
        if isinstance(effect, machine.SendMessage):
            command = SendCommand(
                project_id=pid,
                contact_id=contact.id,
                send_id=effect.send_id,
                channel=effect.channel,
                template_id=effect.template_id,
                journey_id=journey.id,
                run_id=run.run_id,
                step_id=effect.step_id,
                variables=effect.variables,
                queued_at=now,
            )
            ctx.emit(topics.SENDS, key, dumps(command))
            ctx.emit(topics.ANALYTICS, key, dumps(message_row(command, "queued", now)))
        elif isinstance(effect, machine.UpdateContact):
            traits: dict[str, Any] = dict(effect.set)
            traits.update({path: None for path in effect.unset})
            return self.update_contact(ctx, contact, traits, f"journey:{run.run_id}")
        elif isinstance(effect, machine.EmitEvent):
            message = TrackMessage.model_validate(
                {"userId": contact.user_id or contact.id, "event": effect.name, "properties": effect.properties}
            )
            ingested = IngestedMessage(
                project_id=pid,
                message_id=effect.message_id,
                received_at=now,
                message=message,
                raw=message.model_dump_json(by_alias=True),
                forwarded_to=contact.id,
            )
            ctx.emit(topics.EVENTS, key, dumps(ingested))
        elif isinstance(effect, machine.EnterJourney):
            entry = JourneyEntry(
                project_id=pid,
                id=contact.id,
                journey_id=effect.journey_id,
                entry_id=effect.entry_id,
                event=effect.event.as_variables() if effect.event is not None else None,
                create_contact=False,
                at=effect.at,
            )
            if effect.at > now:
                ctx.schedule(f"journey-link:{key}:{effect.entry_id}", effect.at, topics.EVENTS, key, dumps(entry))
            else:
                ctx.emit(topics.EVENTS, key, dumps(entry))
        elif isinstance(effect, machine.BalancerTaken):
            counters = ctx.table(JOURNEY_COUNTERS)
            key = _counter_prefix(journey) + effect.counter_key
            counters.set(key, str(int(counters.get(key) or b"0") + 1).encode())
        elif isinstance(effect, machine.StepRecorded | machine.VariantAssigned):
            self._record_step(carrying, contact, effect, seq)
        return contact

    @staticmethod
    def _record_step(
        carrying: _Carrying, contact: ContactState, effect: machine.StepRecorded | machine.VariantAssigned, seq: int
    ) -> None:
        ctx, journey, run, now = carrying
        if isinstance(effect, machine.StepRecorded):
            step_id, visit, kind, at, detail = effect.step_id, effect.visit, str(effect.kind), effect.at, effect.detail
        else:
            visit = run.visits.get(effect.step_id, run.visit)
            step_id, kind, at, detail = effect.step_id, "variant", now, {"variant": effect.variant}
        advance = JourneyAdvance(
            project_id=contact.project_id,
            contact_id=contact.id,
            journey_id=journey.id,
            journey_version=run.journey_version,
            run_id=run.run_id,
            step_id=step_id,
            visit=visit,
            kind=kind,
            at=at,
            detail=detail,
        )
        key = _contact_key(contact)
        ctx.emit(topics.JOURNEY_ADVANCE, key, dumps(advance))
        row = JourneyStepRow(
            **advance.model_dump(exclude={"type", "detail"}), seq=seq, detail=orjson.dumps(detail, default=str).decode()
        )
        ctx.emit(topics.ANALYTICS, key, dumps(row))

    # -- gate rules ---------------------------------------------------------------------------

    def _gate(self, ctx: Context, contact: ContactState, rule: RuleNode, now: datetime) -> bool:
        """A gate's rule for this contact now. Event conditions read the segment trackers when a
        segment keeps the same condition (complete for this contact); otherwise the contact's
        recent events (bounded: ``SPOTZEE_RECENT_EVENTS_PER_CONTACT``)."""
        compiled = self._compiled.get(id(rule))
        if compiled is None:
            compiled = self._compiled.setdefault(id(rule), compile(rule))
        raw = ctx.table(MEMBERSHIPS).get(_contact_key(contact))
        cs = loads(ContactSegments, raw) if raw is not None else ContactSegments()
        context = MembershipContext(lists=frozenset(cs.lists), segments=frozenset(cs.members))
        if set(compiled.trackers) <= set(cs.complete):
            return bool(matches(compiled, cs.state, contact, now, context))
        facts = [EventFact(name=e.event, timestamp=e.timestamp, properties=e.properties) for e in contact.recent_events]
        return evaluate(rule, contact, facts, now, context)


def _render(template: str, variables: Mapping[str, Any]) -> str:
    scope = dict(variables)
    scope["event"] = event_variables(variables.get("event")) or {}  # as templates see it
    try:
        return render_string(template, scope)
    except SpotzeeError as exc:  # an update/event value that can't render stays as written
        log.warning("journey value not rendered: %s", exc)
        return template


class _Trigger(NamedTuple):
    """What enters a contact into a journey: the key its run id is made of, the run's ``event``,
    when, and the occurrence when a schedule fired it (entered once per occurrence)."""

    key: str
    event: machine.EventData | None
    at: datetime
    occurrence: datetime | None = None


class _Carrying(NamedTuple):
    """A run's transition whose effects are being carried out, and when it was made."""

    ctx: Context
    journey: JourneyDefinition
    run: machine.RunState
    now: datetime


def _timer_id(contact: ContactState, run_id: str) -> str:
    return f"journey:{_run_key(contact, run_id)}"  # one timer per run: arming again replaces it


def _arm(ctx: Context, contact: ContactState, run_id: str, wake: machine.Wake, at: datetime) -> None:
    """Deliver ``wake`` to the run at ``at`` (a ``JourneyWake`` through the events topic)."""
    record = JourneyWake(
        project_id=contact.project_id, id=contact.id, run_id=run_id, step_id=wake.step_id, visit=wake.visit
    )
    ctx.schedule(_timer_id(contact, run_id), at, topics.EVENTS, _contact_key(contact), dumps(record))


def _counter_prefix(journey: JourneyDefinition) -> str:
    return f"{journey.project_id}:{journey.id}:"


def _contact_key(contact: ContactState) -> str:
    return f"{contact.project_id}:{contact.id}"


def _run_key(contact: ContactState, run_id: str) -> str:
    return f"{_contact_key(contact)}{SEP}{run_id}"
